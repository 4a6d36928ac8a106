r"""PartialFace: privacy-preserving face recognition on random frequency components.

Mi et al., ICCV 2023. The client turns a face :math:`X` into 192 block-DCT channels
:math:`x = e(X)` (:mod:`ppfr.freq`; 64 per colour Y, Cb, Cr).

**Conceal what people see.** The low-frequency triangle :math:`u + v \le 3` of every colour
(channels 0, 1, 2, 3, 8, 9, 10, 16, 17, 24: about 95% of the visual energy) is dropped,
leaving :math:`x_h`, 54 channels per colour.

**Impede recovery.** :math:`x_h` is split by a fixed partition into ``m = 6`` subsets
:math:`S_0..S_5` of ``s = 9`` channels (:data:`SUBSETS`, raw channel indices of a colour
plane), and ``n = 3`` fixed orders of the 9 positions are allowed (:data:`PERMUTATIONS`).
For every image and every call the client draws one subset :math:`S` and one order
:math:`P` uniformly (one of :math:`m \times n = 18` *ranks*) and sends

.. math:: x_s = x_h \cdot S \cdot P \quad\in \mathbb{R}^{27 \times 112 \times 112},

channel ``colour * 9 + i`` holding channel ``S[P[i]]`` of that colour (the same subset and
order for the three colours). The server never learns which rank it received: its
recognizer :math:`f` reads :math:`x_s` alone.

**Training.** :math:`\min_\theta \ell(f(x_s; \theta), y)` with the ArcFace head, where
every training face may only use 3 of the 6 subsets (a fixed assignment, so no model ever
sees all of any face's high frequencies) and every face is drawn ``r`` times per epoch
(``train_repeats``; the paper's :math:`r = 18`) as independent samples.

Our choices, where the paper leaves them open:

- *Which 3 subsets a face may use.* The public code keys the choice on the identity label;
  the paper asks that no model sees all of any *face*, so ours keys it on the face itself:
  one of the :math:`\binom{6}{3} = 20` triples, picked by an integer hash of the
  flip-symmetrised image :math:`X + \mathrm{flip}(X)` rounded to 8-bit steps (exact in
  float arithmetic, so identical on every device, and the same for a face and its mirror
  image, which the trainer's flip augmentation produces).
- *Permutations.* The paper sets ``n = 6``; we follow the public code, which fixes the 3
  in :data:`PERMUTATIONS`.
- *Augmentation.* The paper's :math:`r = 18` (the public config says 3 and never reads it).
  It multiplies the cost of an epoch by 18: lower it with ``train_repeats`` for small runs.
- *Scale.* The kept channels' magnitudes differ by orders (the lowest kept frequencies
  carry far more of a face's energy than the highest), and
  a random rank puts any of them in any input slot, so a recognizer fed raw coefficients
  sees mostly the largest channel of each subset. The client therefore divides every
  channel by a fixed per-channel scale before sending: its root mean square over the
  training faces, estimated once by :meth:`PartialFace.prepare` (the trainer's data hook;
  up to ``scale_images`` faces, floored at 1e-3) and kept in a buffer of the client part
  (so bundles and checkpoints carry it). Before ``prepare`` every scale is
  ``coef_scale`` (0.25, about the overall RMS of the kept channels). The division is
  public and invertible, so it changes nothing an attacker holding the client can do.
  The sent values therefore have no a-priori bound: ``representation_range`` is None
  (raw coefficients are bounded by :data:`COEFFICIENT_BOUND`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._builders import Recognition, RecognizerConfig, build_recognizer
from ppfr.methods._checks import check_faces
from ppfr.methods._registry import register_method
from ppfr.methods._steps import RecognizerStep, Stage
from ppfr.methods.base import Client, Method

#: channels of one colour plane dropped as low frequency: u + v <= 3
LOW_FREQUENCY = tuple(freq.low_frequency_channels(3, colours=(0,)))
#: the fixed partition of the 54 kept channels of a colour plane
SUBSETS: tuple[tuple[int, ...], ...] = (
    (5, 34, 38, 21, 42, 55, 57, 50, 62),
    (45, 49, 54, 52, 19, 11, 47, 41, 63),
    (4, 60, 29, 13, 32, 61, 59, 33, 31),
    (48, 15, 35, 22, 27, 40, 14, 43, 18),
    (36, 39, 26, 6, 53, 23, 12, 20, 58),
    (46, 51, 56, 44, 25, 37, 28, 30, 7),
)
#: the fixed orders of a subset's 9 positions: sent position i holds subset position P[i]
PERMUTATIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8),
    (7, 3, 0, 6, 5, 4, 1, 2, 8),
    (4, 8, 6, 0, 2, 5, 3, 7, 1),
)
SUBSET_SIZE = 9
SENT_CHANNELS = 3 * SUBSET_SIZE  # 27


#: bound of |every coefficient| PartialFace sends, before its scaling: half the widest
#: range of its (AC, hence centred) channels (:func:`ppfr.freq.coefficient_range`)
COEFFICIENT_BOUND = float(freq.coefficient_range([c for s in SUBSETS for c in s]).max()) / 2


def rank_channels(subset: int, permutation: int) -> list[int]:
    """The 27 channel indices (of the 192) a rank sends, in the order it sends them.

    Example:
        >>> rank_channels(0, 0)[:3], rank_channels(0, 0)[9]
        ([5, 34, 38], 69)
    """
    s, p = SUBSETS[subset], PERMUTATIONS[permutation]
    return [c * 64 + s[p[i]] for c in range(3) for i in range(SUBSET_SIZE)]


def _check_constants() -> None:
    kept = sorted(c for s in SUBSETS for c in s)
    if kept != [c for c in range(64) if c not in LOW_FREQUENCY]:
        raise AssertionError("PartialFace subsets must partition the 54 kept channels")
    if any(sorted(p) != list(range(SUBSET_SIZE)) for p in PERMUTATIONS):
        raise AssertionError("PartialFace permutations must reorder 9 positions")


_check_constants()
#: RANKS[k, j] = rank_channels(k, j): (6, 3, 27)
RANKS = torch.tensor(
    [[rank_channels(k, j) for j in range(len(PERMUTATIONS))] for k in range(len(SUBSETS))]
)


@dataclass
class PartialFaceConfig(RecognizerConfig):
    #: r: independent random ranks of every training face per epoch (the paper's 18)
    train_repeats: int = 18
    #: subsets each training face may use (the paper: 3 of the 6)
    train_subsets: int = 3
    #: every channel's scale before ``prepare`` estimates them (kept channels' RMS ~0.2)
    coef_scale: float = 0.25
    #: training faces ``prepare`` samples to estimate the per-channel scales
    scale_images: int = 1024

    def __post_init__(self) -> None:
        if self.train_repeats < 1:
            raise InputError("train_repeats must be at least 1")
        if not 1 <= self.train_subsets <= len(SUBSETS):
            raise InputError(f"train_subsets must be in 1..{len(SUBSETS)}")
        if self.coef_scale <= 0 or self.scale_images < 1:
            raise InputError("coef_scale and scale_images must be positive")


def _draw(n: int, high: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    on = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=on).to(device)


@lru_cache(maxsize=8)
def _hash_weights(device: torch.device) -> Tensor:
    # fixed pseudo-random integer weights: the per-face subset assignment is a pure
    # function of the face, reproducible anywhere
    g = torch.Generator().manual_seed(20231001)
    return torch.randint(1, 2**20, (3 * freq.SIZE * freq.SIZE,), generator=g).to(device)


def face_triples(x: Tensor, k: int = 3) -> Tensor:
    """Index (into ``itertools.combinations(range(6), k)``) of the subsets each face may use.

    A hash of the face that a horizontal flip leaves unchanged: ``X + flip(X)`` is
    mirror-symmetric and computed exactly, rounded to 8-bit steps, then summed against
    fixed integer weights in int64 (exact, so the same on every device).

    Shape:
        - x: :math:`(B, 3, 112, 112)` in [-1, 1]; output: :math:`(B,)` long
    """
    q = torch.round((x + x.flip(-1)) * 127.5).long().flatten(1)
    h = (q * _hash_weights(x.device)).sum(1)
    return torch.remainder(h, len(_triples(k)))


@lru_cache(maxsize=8)
def _triples(k: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.combinations(range(len(SUBSETS)), k))


#: smallest per-channel scale an estimate may give (coefficient units)
MIN_SCALE = 1e-3


class PartialFaceClient(Client):
    """The device side: ``e``, the partition, the per-channel scales and the draw of a rank."""

    def __init__(self, coef_scale: float) -> None:
        super().__init__()
        self.register_buffer("channel_scale", torch.full((freq.NUM_CHANNELS,), coef_scale))

    def send(self, x: Tensor, subset: Tensor, permutation: Tensor) -> Tensor:
        """Faces -> the 27 channels of the given rank per face, each / its channel scale."""
        idx = RANKS.to(x.device)[subset, permutation]  # (B, 27)
        f = freq.encode(x)
        sent = f[torch.arange(len(x), device=x.device)[:, None], idx]
        return sent / self.channel_scale[idx][:, :, None, None]

    @torch.no_grad()
    def estimate_scales(
        self, dataset, images: int, generator: torch.Generator | None, batch_size: int = 32
    ) -> Tensor:
        """Root mean square of every channel over (a sample of) ``dataset``'s faces."""
        if len(dataset) == 0:
            raise InputError("PartialFace: cannot estimate channel scales from an empty dataset")
        total = torch.zeros(freq.NUM_CHANNELS, dtype=torch.float64)
        faces = 0
        for f in freq.sample_coefficients(
            dataset,
            images,
            generator=generator,
            device=self.channel_scale.device,
            batch_size=batch_size,
            check=lambda x: check_faces(x, "PartialFace scales"),
        ):
            total += f.double().square().sum((0, 2, 3)).cpu()
            faces += len(f)
        rms = (total / (faces * freq.SIZE * freq.SIZE)).sqrt().float()
        self.channel_scale.copy_(rms.clamp_min(MIN_SCALE))
        return self.channel_scale.clone()

    def protect_with_ranks(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        subset = _draw(len(x), len(SUBSETS), generator, x.device)
        permutation = _draw(len(x), len(PERMUTATIONS), generator, x.device)
        return self.send(x, subset, permutation), subset, permutation

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_s: (B, 27, 112, 112), one random rank per face and call, channels / their scale."""
        return self.protect_with_ranks(x, generator)[0]


class _TrainingRanks(nn.Module):
    """Training input: each face's rank drawn among its 3 allowed subsets, then scaled."""

    def __init__(self, client: PartialFaceClient, train_subsets: int) -> None:
        super().__init__()
        self.client, self.k = client, train_subsets

    def forward(self, x: Tensor) -> Tensor:
        allowed = torch.tensor(_triples(self.k), device=x.device)[face_triples(x, self.k)]
        pick = torch.randint(self.k, (len(x),), device=x.device)
        subset = allowed[torch.arange(len(x), device=x.device), pick]
        permutation = torch.randint(len(PERMUTATIONS), (len(x),), device=x.device)
        return self.client.send(x, subset, permutation)


@register_method
class PartialFace(Method):
    name = "partialface"
    Config = PartialFaceConfig
    representation_range = None

    def build_client(self) -> nn.Module:
        return PartialFaceClient(self.config.coef_scale)

    def build_server(self) -> nn.Module:
        return Recognition(build_recognizer(self.config, SENT_CHANNELS))

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (SENT_CHANNELS, freq.SIZE, freq.SIZE)

    def protect_with_ranks(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``protect``, also returning each face's subset (0..5) and permutation (0..2).

        The ranks never leave the device; this is for tests and white-box analyses.
        """
        return self._part("client").protect_with_ranks(check_faces(x), generator)

    def prepare(self, dataset, *, generator: torch.Generator | None = None) -> None:
        """Estimate the per-channel scales from the training faces (module docstring)."""
        self._part("client").estimate_scales(dataset, self.config.scale_images, generator)

    def view(self, p: Tensor, subset: int | Tensor = 0, permutation: int | Tensor = 0) -> Tensor:
        """The representation as a picture: its coefficients decoded with ``d``.

        The 27 channels, times their scales, are put back at the positions of a rank (the
        client's scales: a viewer holds the client software), every other channel
        (the dropped low frequencies and the 5 unsent subsets) is zero, and ``d`` decodes.
        A viewer does not know the rank a face drew, so by default the channels go where
        rank (S0, identity order) puts them; pass the true ``subset``/``permutation`` (ints
        or (N,) tensors) for the white-box picture of what the face sent.

        Shape:
            - p: :math:`(N, 27, 112, 112)`; output: :math:`(N, 3, 112, 112)` in [0, 1]
        """
        n = len(p)
        subset = torch.as_tensor(subset, device=p.device).expand(n)
        permutation = torch.as_tensor(permutation, device=p.device).expand(n)
        idx = RANKS.to(p.device)[subset, permutation]
        f = p.new_zeros(n, freq.NUM_CHANNELS, freq.SIZE, freq.SIZE)
        coef = p * self._part("client").channel_scale[idx][:, :, None, None]
        f.scatter_(1, idx[:, :, None, None].expand(-1, -1, freq.SIZE, freq.SIZE), coef)
        return freq.decode(f)

    def stages(self) -> list[Stage]:
        cfg = self.config
        server = self._part("server")
        head = self._part("train")["head"]
        prepare = _TrainingRanks(self._part("client"), cfg.train_subsets)
        return [
            Stage(
                "recognizer",
                RecognizerStep(prepare, server, head),
                [self.param_group(server, head)],
                repeats=cfg.train_repeats,
            )
        ]
