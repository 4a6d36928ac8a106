r"""MinusFace: privacy-preserving face recognition by trainable feature subtraction.

Mi et al., CVPR 2024. The client turns a face :math:`X` into frequency channels
:math:`x = e(X)` (:mod:`ppfr.freq`), *regenerates* them with a U-Net :math:`x' = g(x)`
and keeps the **residue** :math:`r = x - x'`: what the generator could not rebuild.

**Stage 1** trains :math:`g` together with a recognizer :math:`f` that reads the
192-channel residue:

.. math:: \mathcal{L} = 5\,\lVert X - (2\,d(x') - 1)\rVert_1
          + 1\,\mathrm{ArcFace}(f(r), y)

The L1 term makes :math:`g` regenerate the face; the identity term makes the residue keep
what identifies the person. The generator learns at half the recognizer's rate. The L1 term
reads :math:`d` after its clamp to [0, 1], so a residue large enough to saturate a block gets
no gradient back from it, and at the demo budget stage 1 learns such spikes;
``pixel_clamp=False`` reads it before the clamp (docs/privacy.md, "Repairing stage 1", has
what that and other stage-1 variants did).

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

**Hardening options** (ours; docs/privacy.md, "Hiding where the residue is"). The shuffle
leaves every position where it was, so where the residue has energy traces the face.
``equalise`` scales each position's 192 values to one root mean square before the shuffle
(in stage 1 too unless ``equalise_stage1`` is off); ``tile_grid`` puts the tiles of
:math:`X_p` in a fresh random order per image and call (:mod:`ppfr.remap`; decode is
position-local, so this moves the residue's positions). Neither kept recognition at the demo
budget (docs/results.md); both are off by default. ``adversary_weight`` trains an inverter
in stage 1 to rebuild the face from :math:`X_p` and the generator against it (a reversed
gradient, :func:`reverse_gradient`): at the demo budget it removed the outline and met the
privacy targets on one split, at a large cost in accuracy (docs/privacy.md, "Repairing
stage 1", with the other stage-1 variants: ``pixel_clamp``, ``stage1_reads``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ppfr import freq, remap
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
    pixel_weight: float = 5.0
    identity_weight: float = 1.0
    #: stage 1's pixel loss compares the face with d(x') after d's clamp to [0, 1] (True);
    #: False compares before it, so a residue that saturates a block still gets a gradient
    #: back. Unclamped, the demo-budget residue died out instead (docs/privacy.md,
    #: "Repairing stage 1")
    pixel_clamp: bool = True
    #: what stage 1's recognizer reads. "residue" (the paper): a separate recognizer f reads
    #: the 192-channel residue, and stage 2 trains f_p from scratch. "protected" (ours):
    #: stage 1 trains f_p itself on X_p as protect makes it (shuffled and decoded, before
    #: the clamp), so the generator learns to put identity where the shuffle keeps it;
    #: stage 2 goes on training f_p, with its head, on the real X_p
    stage1_reads: str = "residue"
    #: hardening (docs/privacy.md, "Repairing stage 1"): an inverter trained in stage 1 to
    #: rebuild the face from X_p, the generator trained against it through a reversed
    #: gradient, with this weight (0: off; then no inverter is built)
    adversary_weight: float = 0.0
    adversary_width: int = 8
    generator_lr_scale: float = 0.5
    coef_scale: float = 128.0
    #: g(x) = x + U(x) with U's output layer initialised small, so g starts near the
    #: identity and the residue near zero (see the module docstring); False: g = U
    generator_skip: bool = True
    #: hardening (docs/privacy.md, "Hiding where the residue is"): scale every position's
    #: 192 residue values to the same root mean square ``equalise_rms`` (coefficient units),
    #: so the residue's energy no longer traces the face's outline
    equalise: bool = False
    equalise_rms: float = 24.0
    #: whether stage 1's recognizer f reads the equalised residue too (False: only protect
    #: equalises, so stage 1 trains as plain MinusFace and f_p learns the equalised X_p)
    equalise_stage1: bool = True
    #: hardening: cut X_p into ``tile_grid`` x ``tile_grid`` tiles and put them in a fresh
    #: random order per image and call (0: off; the grid must divide 112)
    tile_grid: int = 0
    #: stage 2 keeps the frozen generator's last features of every training image (and
    #: of its mirror) when they fit in this many MiB, so an epoch only shuffles and decodes
    #: (:class:`FeatureCache`); 0 turns it off. Training-time only: protect never uses it
    feature_cache_mb: int = 1024

    def __post_init__(self) -> None:
        if self.shuffles < 1 or self.train_repeats < 1:
            raise InputError("shuffles and train_repeats must be at least 1")
        if self.stage1_reads not in ("residue", "protected"):
            raise InputError(
                f"stage1_reads must be 'residue' or 'protected', got {self.stage1_reads!r}"
            )
        if self.equalise_rms <= 0:
            raise InputError(f"equalise_rms must be positive, got {self.equalise_rms}")
        if self.adversary_weight < 0 or self.adversary_width < 1:
            raise InputError(
                f"adversary_weight must be at least 0 and adversary_width at least 1, got "
                f"{self.adversary_weight} and {self.adversary_width}"
            )
        if self.feature_cache_mb < 0:
            raise InputError(
                f"feature_cache_mb must be 0 (off) or more, got {self.feature_cache_mb}"
            )
        if self.tile_grid < 0 or (self.tile_grid and freq.SIZE % self.tile_grid):
            raise InputError(
                f"tile_grid must be 0 (off) or divide {freq.SIZE}, got {self.tile_grid}"
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


def equalise_scale(power: Tensor, rms: float) -> Tensor:
    r"""The gain that brings a position of mean square ``power`` to root mean square ``rms``:
    :math:`s = \mathrm{rms} / \sqrt{\mathrm{power} + (0.02\,\mathrm{rms})^2}`.

    The floor keeps the gain (and its gradient) bounded where the residue is near zero; such
    positions are lifted fifty-fold, not to ``rms``.

    Example:
        >>> float(equalise_scale(torch.tensor(4.0), 24.0)) > 11.9
        True
    """
    return rms * torch.rsqrt(power.clamp_min(0) + (0.02 * rms) ** 2)


class MinusFaceClient(nn.Module):
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
        self.equalise = cfg.equalise
        self.equalise_rms = cfg.equalise_rms
        self.tile_grid = cfg.tile_grid
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

    def equalised(self, r: Tensor) -> Tensor:
        """The residue as protect shuffles it: with ``equalise``, every position scaled to the
        root mean square ``equalise_rms`` (:func:`equalise_scale`); else ``r`` itself."""
        if not self.equalise:
            return r
        return r * equalise_scale(r.square().mean(1, keepdim=True), self.equalise_rms)

    def remap(self, p: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """With ``tile_grid``, the tiles of ``p`` in a fresh random order per image (decode is
        position-local, so moving tiles of X_p moves the residue's); else ``p`` itself."""
        if not self.tile_grid:
            return p
        order = remap.random_tile_orders(len(p), self.tile_grid, generator, p.device)
        return remap.remap_tiles(p, order, self.tile_grid)

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X_p = d(shuffle(r)): (B, 3n, 112, 112) in [0, 1], a fresh shuffle per image and call."""
        step = self._faces_per_pass()
        if len(x) > step:  # see _faces_per_pass
            return torch.cat([self.protect(part, generator) for part in x.split(step)])
        if self._composed():
            return self.protect_hidden(self.hidden(x), generator)
        return self.send(self.equalised(self.residue(x)), generator)

    def send(
        self, r: Tensor, generator: torch.Generator | None = None, *, clamp: bool = True
    ) -> Tensor:
        """X_p from a residue ``r`` as protect treats it (already equalised): ``shuffles``
        views, each shuffled and decoded, their tiles moved, stacked. ``clamp=False`` skips
        the decode's clamp (stage 1 trains through it).

        Shape:
            r :math:`(B, 192, 112, 112)` -> :math:`(B, 3n, 112, 112)`
        """
        views = [
            freq.decode(shuffle_channels(r, generator), clamp=clamp) for _ in range(self.shuffles)
        ]
        return torch.cat([self.remap(v, generator) for v in views], dim=1)

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
        return torch.cat([self.remap(v, generator) for v in self._decode_hidden(h, generator)], 1)

    def _decode_hidden(self, h: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """The protected views without the 192-channel tensors: the output layer, negated
        and with its rows in the shuffled order, goes straight to pixels through
        ``freq.decode_linear``. Equal to the plain path up to float rounding
        (``tests/methods/test_minusface.py``), for the same draws of ``generator``."""
        g = self.generator
        scale = -g.input_scale  # r = -U = -(out(h)) * input_scale
        weight = g.out.weight.flatten(1) * scale
        bias = g.out.bias * scale
        gain = None
        if self.equalise:  # |r|^2 per position from h: r = W h + b, a shuffle keeps |r|
            gram, wb = weight.T @ weight, weight.T @ bias
            power = torch.einsum("bihw,ij,bjhw->bhw", h, gram, h)
            power = power + 2 * torch.einsum("bjhw,j->bhw", h, wb) + bias.square().sum()
            gain = equalise_scale(power.unsqueeze(1) / freq.NUM_CHANNELS, self.equalise_rms)
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

    def forward(self, x: Tensor) -> Tensor:
        return self.protect(x)


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
    def __init__(self, model: MinusFace) -> None:
        super().__init__()
        cfg = model.config
        self.client = model._part("client")
        self.head = model._part("train")["head"]
        self.reads_protected = cfg.stage1_reads == "protected"
        if self.reads_protected:  # f_p itself, through its input scaling
            self.recognizer = model._part("server")
        else:
            self.recognizer = model._part("train")["recognizer"]
        self.scale, self.w_pix, self.w_id = cfg.coef_scale, cfg.pixel_weight, cfg.identity_weight
        self.equalise = cfg.equalise_stage1
        self.clamp = cfg.pixel_clamp
        self.w_adv = cfg.adversary_weight
        self.adversary = model._part("train")["adversary"] if self.w_adv else None

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        _, f_regen, r = self.client.regenerate(x)
        # clamped (the default): where a large residue saturates d's clamp this loss has no
        # gradient left to shrink it (docs/privacy.md, "Repairing stage 1")
        pixel = F.l1_loss(2 * freq.decode(f_regen, clamp=self.clamp) - 1, x)
        # the recognizer reads the residue as protect sends it: equalised, its tiles moved
        # (a fresh order per image and step, so it learns what f_p must: to read them
        # unordered); with stage1_reads="protected" also shuffled and decoded (unclamped,
        # for the same reason as the pixel loss)
        seen = self.client.equalised(r) if self.equalise else r
        sent = None  # X_p before the clamp, for f_p and the adversary alike
        if self.reads_protected or self.adversary is not None:
            sent = self.client.send(seen, clamp=False)
        if self.reads_protected:
            embedding = self.recognizer(sent)
        else:
            embedding = self.recognizer(self.client.remap(seen) / self.scale)
        identity = self.head(embedding, y)
        loss = self.w_pix * pixel + self.w_id * identity
        logs = {"pixel": float(pixel.detach()), "id": float(identity.detach())}
        if self.adversary is not None:
            # X_p as sent (clamped) in the forward pass, the gradient straight through the
            # clamp, and reversed into the generator: the adversary learns to rebuild the
            # face, the generator to make that hard
            p = reverse_gradient(sent + (sent.clamp(0.0, 1.0) - sent).detach())
            # standardised per image, as the recovery attack's inverter standardises its
            # input: shrinking X_p towards a constant must not fool it
            mean, std = p.mean((1, 2, 3), keepdim=True), p.std((1, 2, 3), keepdim=True)
            guess = self.adversary((p - mean) / (std + 1e-3))
            adversary = F.l1_loss(2 * torch.sigmoid(guess) - 1, x)
            loss = loss + self.w_adv * adversary
            logs["adv"] = float(adversary.detach())
        return loss, logs


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def reverse_gradient(x: Tensor) -> Tensor:
    """The identity, whose gradient is negated: what follows minimises a loss that what
    precedes it maximises (one optimiser step trains both sides of the game).

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> (3 * reverse_gradient(x)).sum().backward()
        >>> x.grad.tolist()
        [-3.0, -3.0]
    """
    return _ReverseGradient.apply(x)


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
        if cfg.stage1_reads == "protected":  # f_p and its head train in both stages
            parts = {"head": build_head(cfg)}
        else:
            parts = {
                "recognizer": build_recognizer(cfg, freq.NUM_CHANNELS),  # f, stage 1
                "head": build_head(cfg),
                "protected_head": build_head(cfg),  # f_p's head, stage 2
            }
        if cfg.adversary_weight:  # stage 1's inverter: X_p (3n maps) -> face
            parts["adversary"] = UNet(3 * cfg.shuffles, 3, width=cfg.adversary_width)
        return nn.ModuleDict(parts)

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
        step1 = _Stage1(self)
        stage1 = Stage(
            "residue",
            step1,
            [
                self.param_group(client, lr_scale=cfg.generator_lr_scale),
                self.param_group(
                    step1.recognizer,
                    train["head"],
                    *([step1.adversary] if cfg.adversary_weight else []),
                ),
            ],
        )
        head2 = train["head"] if cfg.stage1_reads == "protected" else train["protected_head"]
        cache = FeatureCache(client, cfg.feature_cache_mb)
        stage2 = Stage(
            "protected",
            RecognizerStep(cache.protect, server, head2),
            [self.param_group(server, head2)],
            frozen=[client],
            repeats=cfg.train_repeats,
            begin=cache.fill,
        )
        return [stage1, stage2]
