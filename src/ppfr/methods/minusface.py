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

How protect computes it. :math:`e`, the U-Net's first convolution, its last (1x1) layer, the
shuffle and :math:`d` are all linear, so with the default U-Net and ``generator_skip`` the
client never forms a 192-channel tensor: it applies the first convolution to the image
through :func:`ppfr.freq.encode_conv` and decodes the U-Net's last features through the
output layer with its rows in the shuffled order (:func:`ppfr.freq.decode_linear`). Same
result up to float rounding, about half the time (docs/benchmarks.md). Where gradients
must reach the generator (stage 1), the plain path runs.

**Stage 2** freezes :math:`g` and trains a new recognizer :math:`f_p` from scratch on
:math:`X_p` (given to it as :math:`2X_p - 1`); every training image is shuffled anew
``train_repeats`` (r = 3) times per epoch. The frozen U-Net's last features of each training
image are computed once (:class:`FeatureCache`), so an epoch only shuffles and decodes.

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

The hardening options we tried on top of the paper's method (equalising the residue,
shuffling tiles of :math:`X_p`, an adversary in stage 1, other stage-1 variants) are the
method ``minusface-hardened`` (:mod:`ppfr.methods.minusface_hardened`); none kept
recognition at the demo budget (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._builders import (
    Recognition,
    RecognizerConfig,
    Rescale,
    build_head,
    build_recognizer,
)
from ppfr.methods._checks import check_faces
from ppfr.methods._minusface_bundles import bundle_layout, read_settings
from ppfr.methods._registry import register_method
from ppfr.methods._steps import RecognizerStep, Stage
from ppfr.methods.base import Client, Method
from ppfr.nets import create_generator
from ppfr.nets.unet import UNet
from ppfr.remap import random_orders

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
    #: stage 1's loss: pixel_weight * L1(X, 2 d(x') - 1) + identity_weight * ArcFace(f(r))
    pixel_weight: float = 5.0
    identity_weight: float = 1.0
    #: the generator's learning rate relative to the recognizer's (the paper: half)
    generator_lr_scale: float = 0.5
    #: f and g see the frequency coefficients divided by this
    coef_scale: float = 128.0
    #: g(x) = x + U(x) with U's output layer initialised small, so g starts near the
    #: identity and the residue near zero (see the module docstring); False: g = U
    generator_skip: bool = True
    #: stage 2 keeps the frozen generator's last features of every training image (and
    #: of its mirror) when they fit in this many MiB, so an epoch only shuffles and decodes
    #: (:class:`FeatureCache`); 0 turns it off. Training-time only: protect never uses it
    feature_cache_mb: int = 1024

    def __post_init__(self) -> None:
        if self.shuffles < 1 or self.train_repeats < 1:
            raise InputError("shuffles and train_repeats must be at least 1")
        if self.feature_cache_mb < 0:
            raise InputError(
                f"feature_cache_mb must be 0 (off) or more, got {self.feature_cache_mb}"
            )


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
    order = random_orders(b, c, generator, r.device)
    # rows of the (B * C, H * W) view: index_select copies whole channels
    flat = (order + torch.arange(b, device=r.device)[:, None] * c).reshape(-1)
    return r.reshape(b * c, -1).index_select(0, flat).view_as(r)


class MinusFaceClient(Client):
    """The device side: ``g``, and with ``e`` and ``d`` the residue and its protection."""

    #: let protect compose the transform with the U-Net's first and last layers when it
    #: can (see the module docs); False always runs the plain path (for comparisons)
    composed: bool = True

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
        return f, f + u if self.skip else u, self._residue(f, u)

    def residue(self, x: Tensor) -> Tensor:
        f = freq.encode(x)
        return self._residue(f, self.generator(f))

    def _residue(self, f: Tensor, u: Tensor) -> Tensor:
        # with the skip, x' = x + U(x): the residue is -U(x), without cancellation error
        return -u if self.skip else f - u

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X_p = d(shuffle(r)): (B, 3n, 112, 112) in [0, 1], a fresh shuffle per image and call."""
        step = self._faces_per_pass()
        if len(x) > step:  # see _faces_per_pass
            return torch.cat([self.protect(part, generator) for part in x.split(step)])
        if self._composed():
            return self.protect_hidden(self.hidden(x), generator)
        return self.send(self.residue(x), generator)

    def send(
        self, r: Tensor, generator: torch.Generator | None = None, *, clamp: bool = True
    ) -> Tensor:
        """X_p from a residue ``r``: ``shuffles`` views, each shuffled and decoded, stacked.

        Shape:
            r :math:`(B, 192, 112, 112)` -> :math:`(B, 3n, 112, 112)`
        """
        return torch.cat(self.views(r, generator, clamp=clamp), dim=1)

    def views(
        self, r: Tensor, generator: torch.Generator | None = None, *, clamp: bool = True
    ) -> list[Tensor]:
        """The ``shuffles`` protected images of a residue, each its own shuffle, decoded
        (``clamp=False``: without the decode's clamp)."""
        return [
            freq.decode(shuffle_channels(r, generator), clamp=clamp) for _ in range(self.shuffles)
        ]

    def _faces_per_pass(self) -> int:
        """Faces per pass of the generator: its largest activation (the skip concatenation at
        full size, 2 x width maps of 112x112) stays under 16 MB, below glibc's 32 MB mmap
        cap, so a batch's buffers are reused from the heap rather than faulted in afresh on
        every call (docs/benchmarks.md, "Allocator"). A generator in training mode runs the
        batch whole: its batch norm would see each pass's statistics."""
        if self.generator.training:
            return 1 << 30
        width = self.generator.out.in_channels if isinstance(self.generator, UNet) else 16
        return max(1, (16 << 20) // (2 * width * freq.SIZE * freq.SIZE * 4))

    def _composed(self) -> bool:
        """Whether protect may take the composed path: the U-Net generator with the skip
        (r = -U(x), linear in U's last features), and no gradient wanted for its weights
        (the stem's composed kernel is cached, outside autograd)."""
        if not self.composed or not self.skip or not isinstance(self.generator, UNet):
            return False
        return not torch.is_grad_enabled() or not any(
            p.requires_grad for p in self.generator.parameters()
        )

    def hidden(self, x: Tensor) -> Tensor:
        r"""The U-Net's last features h for faces ``x``, its stem applied to the image through
        ``freq.encode_conv`` (the transform and the stem as one map). With the skip the
        residue is linear in them, :math:`r = -s\,(W h + b)` (s: ``input_scale``), so X_p
        follows from h alone (:meth:`protect_hidden`). Needs :meth:`_composed`.

        Shape:
            x :math:`(B, 3, 112, 112)` -> :math:`(B, w, 112, 112)`, w the U-Net's width
        """
        return self.generator.hidden(freq.encode_conv(x, self._stem_kernel(x), check_range=False))

    def protect_hidden(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X_p from the U-Net's last features (:meth:`hidden`): what protect sends, for the
        same draws of ``generator``, up to float rounding."""
        return torch.cat(self._decode_hidden(h, generator), 1)

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """The residue as an affine map of the U-Net's last features h: ``(W, b)`` with
        :math:`r = W h + b` at every position (the output layer times ``-input_scale``)."""
        g = self.generator
        scale = -g.input_scale  # r = -U = -(out(h)) * input_scale
        return g.out.weight.flatten(1) * scale, g.out.bias * scale

    def _decode_hidden(
        self, h: Tensor, generator: torch.Generator | None, gain: Tensor | None = None
    ) -> list[Tensor]:
        """The protected views without the 192-channel tensors: the output layer, negated
        and with its rows in the shuffled order, goes straight to pixels through
        ``freq.decode_linear`` (``gain``: a per-position factor of the residue). Equal to the
        plain path up to float rounding (``tests/methods/test_minusface.py``), for the same
        draws of ``generator``."""
        weight, bias = self.output_layer()
        views = []
        for _ in range(self.shuffles):
            order = random_orders(h.shape[0], freq.NUM_CHANNELS, generator, h.device)
            views.append(freq.decode_linear(h, weight[order], bias[order], scale=gain))
        return views

    def _stem_kernel(self, x: Tensor) -> Tensor:
        """``encode_conv_kernel`` of the stem (its input is the channels / input_scale),
        rebuilt only when the weights change (in-place updates bump ``_version``)."""
        w = self.generator.stem.weight
        key = (id(w), w.data_ptr(), w._version, x.dtype, x.device, self.generator.input_scale)
        cached = getattr(self, "_stem_cache", None)
        if cached is None or cached[0] != key:
            # a normal tensor even under inference_mode, so later autograd may save it
            with torch.inference_mode(False):
                kernel = freq.encode_conv_kernel(w.detach() / self.generator.input_scale)
                cached = (key, kernel.to(x.device, x.dtype))
            self._stem_cache = cached
        return cached[1]


class FeatureCache:
    """Stage 2's shortcut: the frozen generator's last features of the training images.

    In stage 2 the generator is frozen, so the U-Net's last features h of a training image
    (:meth:`MinusFaceClient.hidden`) are the same in every epoch and repeat; only the shuffle
    and the decode (``freq.decode_linear``) are drawn anew. :meth:`fill` computes h once for
    every image of the dataset and, when batches are mirrored, for its mirror, in dataset
    order and fixed passes (so a resumed run computes the same values); :meth:`protect`
    then looks each image of a batch up by its bytes and runs only
    :meth:`MinusFaceClient.protect_hidden`. A batch with an image it never saw, a generator
    whose weights changed, or features that would exceed ``budget_mb`` (nothing is cached
    then) fall back to the client's ``protect``. At the demo budget this removes the
    U-Net's share of stage 2 (docs/benchmarks.md).
    """

    def __init__(self, client: MinusFaceClient, budget_mb: int) -> None:
        self.client = client
        self.budget = int(budget_mb) << 20
        self.rows: dict[bytes, int] = {}
        self.features: Tensor | None = None
        self._weights: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def fill(self, dataset: Any, flip: bool) -> None:
        """Compute h for every image of ``dataset`` (and its mirror with ``flip``)."""
        self.rows, self.features = {}, None
        client = self.client.eval()
        if not client._composed() or not self.budget:
            return
        try:
            count = len(dataset) * (2 if flip else 1)
        except TypeError:  # a stream without a length: nothing to precompute
            return
        width = client.generator.out.in_channels
        if count * width * freq.SIZE * freq.SIZE * 4 > self.budget:
            return
        device = client.generator.out.weight.device
        features = torch.empty(count, width, freq.SIZE, freq.SIZE, device=device)
        loader = DataLoader(dataset, batch_size=client._faces_per_pass(), shuffle=False)
        row = 0
        with torch.no_grad():
            for x, _ in loader:
                x = x.to(device)
                for faces in (x, x.flip(-1)) if flip else (x,):
                    features[row : row + len(faces)] = client.hidden(faces)
                    for face in faces:
                        self.rows.setdefault(_digest(face), row)
                        row += 1
        self.features, self._weights = features, self._version()

    def protect(self, x: Tensor) -> Tensor:
        """X_p of a batch of training images, from the cached h where all are cached."""
        if self.features is not None and self._version() == self._weights:
            rows = [self.rows.get(_digest(face)) for face in x]
            if None not in rows:
                index = torch.tensor(rows, device=self.features.device)
                return self.client.protect_hidden(self.features.index_select(0, index))
        return self.client.protect(x)

    def _version(self) -> tuple[int, ...]:
        # in-place updates bump _version: a changed generator invalidates the features
        return tuple(p._version for p in self.client.generator.parameters())


def _digest(face: Tensor) -> bytes:
    """A 16-byte key of one image's exact values."""
    data = face.detach().to("cpu", copy=False).contiguous().numpy()
    return hashlib.blake2b(data, digest_size=16).digest()


class _Stage1(nn.Module):
    """Stage 1: the generator g and the recognizer f on the residue, on one loss."""

    def __init__(self, model: MinusFace) -> None:
        super().__init__()
        cfg = model.config
        self.client = model._part("client")
        self.head = model._part("train")["head"]
        self.recognizer = model._part("train")["recognizer"]
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
        cfg = self.config
        return nn.ModuleDict(
            {
                "recognizer": build_recognizer(cfg, freq.NUM_CHANNELS),  # f, stage 1
                "head": build_head(cfg),
                "protected_head": build_head(cfg),  # f_p's head, stage 2
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
        step = _Stage1(self)
        return [
            self._stage_one(step, step.recognizer, step.head),
            self._stage_two(self._part("train")["protected_head"]),
        ]

    def _stage_one(self, step: nn.Module, *trained: nn.Module) -> Stage:
        """Stage 1, "residue": ``step`` trains the generator (at ``generator_lr_scale``) and
        the ``trained`` modules."""
        client = self._part("client")
        return Stage(
            "residue",
            step,
            [
                self.param_group(client, lr_scale=self.config.generator_lr_scale),
                self.param_group(*trained),
            ],
        )

    def _stage_two(self, head: nn.Module) -> Stage:
        """Stage 2, "protected": the generator frozen, f_p and ``head`` trained on X_p, every
        image shuffled ``train_repeats`` times an epoch (through the :class:`FeatureCache`)."""
        cfg = self.config
        client = self._part("client")
        server = self._part("server")
        cache = FeatureCache(client, cfg.feature_cache_mb)
        return Stage(
            "protected",
            RecognizerStep(cache.protect, server, head),
            [self.param_group(server, head)],
            frozen=[client],
            repeats=cfg.train_repeats,
            begin=cache.fill,
        )

    # ---- bundles
    def config_dict(self) -> dict[str, Any]:
        """The config as bundles write it: in the layout of the bundles saved while the
        hardening options were settings of this method, at their off values, so a bundle
        and its fingerprints are what they were (:mod:`ppfr.methods._minusface_bundles`)."""
        return bundle_layout(asdict(self.config))

    @classmethod
    def bundle_settings(cls, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A "minusface" bundle with any hardening option on was saved before the options
        moved out: it loads as ``minusface-hardened`` (:func:`read_settings`)."""
        return read_settings(settings)
