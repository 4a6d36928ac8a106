r"""MinusFace: privacy-preserving face recognition by trainable feature subtraction.

Mi et al., CVPR 2024. The client turns a face :math:`X` into frequency channels
:math:`x = e(X)` (:mod:`ppfr.freq`), *regenerates* them with a U-Net :math:`x' = g(x)`
and keeps the **residue** :math:`r = x - x'`: what the generator could not rebuild.

**Stage 1** trains :math:`g` together with a recognizer :math:`f` that reads the
192-channel residue:

.. math:: \mathcal{L} = 5\,\lVert X - (2\,d(x') - 1)\rVert_1
          + 1\,\mathrm{ArcFace}(f(r), y)

The L1 term makes :math:`g` regenerate the face; the identity term makes the residue keep
what identifies the person. The generator learns at half the recognizer's rate.

**Protection.** The residue channels are put in a random order :math:`\theta` (one of 192!
orders), drawn anew for every image and every call, then decoded:
:math:`X_p = d(\mathrm{shuffle}_\theta(r))`, a 3x112x112 image in [0, 1] that looks like
noise. With ``shuffles = n`` the client sends ``n`` independent shuffles stacked as
``3n`` channels (more accuracy, more bytes).

**Stage 2** freezes :math:`g` and trains a new recognizer :math:`f_p` from scratch on
:math:`X_p` (given to it as :math:`2X_p - 1`); every training image is shuffled anew
``train_repeats`` (r = 3) times per epoch.

Where the public code and the paper differ we follow the paper (generator learning
rate half the recognizer's; ArcFace head). Our choices: :math:`f` and :math:`g` see the
coefficients divided by ``coef_scale`` (128) because raw coefficients reach several
hundred; the stage-1 recognizer and both heads are training-only (the ``train`` part).
The generator is parameterised as :math:`g(x) = x + U(x)` with the U-Net :math:`U`'s output
layer initialised small (``generator_skip``): the same function class as a plain U-Net, but
training starts from a near-perfect regeneration and a near-zero residue, and the identity
loss has to *put* identity into the residue, rather than the pixel loss having to take the
face out of it. With a plain U-Net and a CPU-sized budget, the regeneration stays poor,
the residue keeps the face's low frequencies, and the recovery attack reconstructs faces
from :math:`X_p` (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._registry import register_method
from ppfr.methods.base import (
    Method,
    Recognition,
    RecognizerConfig,
    RecognizerStep,
    Rescale,
    Stage,
    build_head,
    build_recognizer,
    check_faces,
)
from ppfr.nets import create_generator

#: with ``generator_skip``, U's output layer starts at this fraction of its default init
SKIP_INIT_SCALE = 0.01


@dataclass
class MinusFaceConfig(RecognizerConfig):
    generator: str = "unet"
    #: U-Net base width: 64 is the public code's 64..1024 network; 16 (16..256) is our
    #: default, sized for protecting on a small CPU (docs/benchmarks.md)
    generator_width: int = 16
    #: n: independent shuffles the client stacks into one representation (3n channels)
    shuffles: int = 1
    #: r: shuffles of every training image per stage-2 epoch
    train_repeats: int = 3
    pixel_weight: float = 5.0
    identity_weight: float = 1.0
    generator_lr_scale: float = 0.5
    coef_scale: float = 128.0
    #: g(x) = x + U(x) with U's output layer initialised small, so g starts near the
    #: identity and the residue near zero (see the module docstring); False: g = U
    generator_skip: bool = True

    def __post_init__(self) -> None:
        if self.shuffles < 1 or self.train_repeats < 1:
            raise InputError("shuffles and train_repeats must be at least 1")


def shuffle_channels(r: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Put each image's channels in its own uniformly random order.

    Shape:
        - r: :math:`(B, C, H, W)`; output: same

    Example:
        >>> r = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 1, 1)
        >>> s = shuffle_channels(r, torch.Generator().manual_seed(0))
        >>> sorted(s[0].flatten().tolist()) == [0.0, 1.0, 2.0, 3.0]
        True
    """
    b, c = r.shape[:2]
    device = generator.device if generator is not None else r.device
    # argsort of i.i.d. uniforms is a uniform random permutation per row
    order = torch.rand(b, c, generator=generator, device=device).argsort(dim=1).to(r.device)
    return r[torch.arange(b, device=r.device)[:, None], order]


class MinusFaceClient(nn.Module):
    """The device side: ``g``, and with ``e`` and ``d`` the residue and its protection."""

    def __init__(self, cfg: MinusFaceConfig) -> None:
        super().__init__()
        self.shuffles = cfg.shuffles
        self.generator = create_generator(
            cfg.generator,
            in_channels=freq.NUM_CHANNELS,
            out_channels=freq.NUM_CHANNELS,
            width=cfg.generator_width,
            input_scale=cfg.coef_scale,
        )
        self.skip = cfg.generator_skip
        if self.skip:  # start near the identity: a small, not zero, residue (a zero one
            # gives the recognizer all-zero features, whose normalisation has no gradient)
            out = self.generator.out
            with torch.no_grad():
                out.weight.mul_(SKIP_INIT_SCALE)
                out.bias.zero_()

    def regenerate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Faces -> (frequency channels x, regenerated channels x', residue x - x')."""
        f = freq.encode(x)
        u = self.generator(f)
        if self.skip:  # x' = x + U(x): the residue is -U(x), without cancellation error
            return f, f + u, -u
        return f, u, f - u

    def residue(self, x: Tensor) -> Tensor:
        return self.regenerate(x)[2]

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X_p = d(shuffle(r)): (B, 3n, 112, 112) in [0, 1], a fresh shuffle per image and call."""
        r = self.residue(x)
        views = [freq.decode(shuffle_channels(r, generator)) for _ in range(self.shuffles)]
        return torch.cat(views, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.protect(x)


class _Stage1(nn.Module):
    def __init__(self, model: MinusFace) -> None:
        super().__init__()
        cfg = model.config
        self.client = model._part("client")
        self.recognizer = model._part("train")["recognizer"]
        self.head = model._part("train")["head"]
        self.scale, self.w_pix, self.w_id = cfg.coef_scale, cfg.pixel_weight, cfg.identity_weight

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        _, f_regen, r = self.client.regenerate(x)
        pixel = F.l1_loss(2 * freq.decode(f_regen) - 1, x)
        identity = self.head(self.recognizer(r / self.scale), y)
        loss = self.w_pix * pixel + self.w_id * identity
        return loss, {"pixel": float(pixel.detach()), "id": float(identity.detach())}


@register_method
class MinusFace(Method):
    name = "minusface"
    Config = MinusFaceConfig

    def build_client(self) -> nn.Module:
        return MinusFaceClient(self.config)

    def build_server(self) -> nn.Module:
        # f_p reads 2 X_p - 1: X_p in [0, 1] mapped to [-1, 1]
        recognizer = build_recognizer(self.config, 3 * self.config.shuffles)
        return Recognition(recognizer, Rescale(divisor=0.5, shift=0.5))

    def build_train(self) -> nn.Module:
        return nn.ModuleDict(
            {
                "recognizer": build_recognizer(self.config, freq.NUM_CHANNELS),  # f, stage 1
                "head": build_head(self.config),
                "protected_head": build_head(self.config),  # f_p's head, stage 2
            }
        )

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (3 * self.config.shuffles, freq.SIZE, freq.SIZE)

    @property
    def stacked_images(self) -> int:
        return self.config.shuffles

    def residue(self, x: Tensor) -> Tensor:
        """The 192-channel residue r = e(X) - g(e(X)) (never leaves the device)."""
        return self._part("client").residue(check_faces(x, "residue"))

    def stages(self) -> list[Stage]:
        cfg = self.config
        client = self._part("client")
        server = self._part("server")
        train = self._part("train")
        stage1 = Stage(
            "residue",
            _Stage1(self),
            [
                self.param_group(client, lr_scale=cfg.generator_lr_scale),
                self.param_group(train["recognizer"], train["head"]),
            ],
        )
        stage2 = Stage(
            "protected",
            RecognizerStep(client, server, train["protected_head"]),
            [self.param_group(server, train["protected_head"])],
            frozen=[client],
            repeats=cfg.train_repeats,
        )
        return [stage1, stage2]
