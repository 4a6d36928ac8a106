r"""SlerpFace: face templates protected at rest by spherical linear interpolation.

Zhong, Mi et al., "SlerpFace: Face Template Protection via Spherical Linear Interpolation",
AAAI 2025 (docs/templates.md). A stored face template should be useless to whoever steals the
database: it must not reveal the face (irreversibility), templates of one person stored by two
services must not be linkable (unlinkability), and a leaked template must be replaceable by a
new one that does not match the old (renewability). SlerpFace gets these by rotating every
template towards a random key on the hypersphere and then dropping entries.

Groups. A template :math:`t \in \mathbb{R}^D` is cut into :math:`G = D / s` contiguous groups
of ``group_size`` :math:`s` values, :math:`t = (t_1, \dots, t_G)`. Each group has an
attention weight :math:`m_g \ge 0`, :math:`\sum_g m_g = 1`, saying how much it matters for
recognition. (The paper's network computes the weights from its last 7x7 feature map, 49
groups of 16; our templates are the backbone's D-dimensional embedding, so a group is a slice
of it. A model that can rate its groups exposes ``template_group_weights()``, see
:meth:`SlerpFace.from_model`; :func:`group_weights_from_templates` estimates weights from
labelled templates; with neither, the weights are uniform, :math:`m_g = 1/G`.)

Enrolment (:meth:`SlerpFace.protect`). Draw a key :math:`k \sim \mathcal{N}(0, I_D)` per
template (:meth:`SlerpFace.draw_keys`). Per group, with unit vectors
:math:`\hat t_g = t_g / \lVert t_g \rVert`, :math:`\hat k_g = k_g / \lVert k_g \rVert`,
:math:`\theta_g = \arccos(\hat t_g \cdot \hat k_g)` and :math:`\alpha_g = \alpha - m_g`
(:math:`\alpha = 0.9`), rotate the template towards the key:

.. math:: \tilde p_g = \frac{\sin((1 - \alpha_g)\theta_g)\, \hat t_g
          + \sin(\alpha_g \theta_g)\, \hat k_g}{\sin \theta_g}.

Groups that matter more (large :math:`m_g`) are rotated less. Then zero a fraction
:math:`d_g` of the group's entries, renormalise and weight:

.. math:: p_g = m_g \frac{M_g \odot \tilde p_g}{\lVert M_g \odot \tilde p_g \rVert},
          \qquad d_g = \min\!\big(d\,(2 - G m_g),\ 1 - 1/s\big)_{+}

so low-attention groups lose more entries (:math:`d_g > d` when :math:`m_g < 1/G`), the mean
of :math:`d_g` over groups is the configured ``drop`` :math:`d` (before the clip), uniform
weights drop exactly :math:`d` everywhere, and every group keeps at least one entry. The
number dropped is :math:`\mathrm{round}(d_g s)`. The stored record is :math:`(p, k)`.

Which entries are dropped. The mask :math:`M_g` is a deterministic function of the key, so
matching rebuilds it from the stored key and nothing else has to be stored: in each group the
entries with the smallest :math:`|k_i|` are dropped. The key is Gaussian and independent of
the face, so the ranks of :math:`|k_i|` are a uniformly random permutation: a fresh, uniformly
random pattern per key, as the paper's random dropout, and a new key gives a new pattern.
(The paper's matching rule "zero where p is zero" gives the same mask, barring exact zeros.)

Matching (:meth:`SlerpFace.scores`). A query template :math:`q` is rotated with the stored
key in the same way (same :math:`\alpha_g`), masked with the same :math:`M_g`, and each group
renormalised to unit length; the score is

.. math:: s(q, p) = \sum_g q'_g \cdot p_g = \sum_g m_g \cos(q'_g, \tilde p_g)

a weighted mean of per-group cosines, in [-1, 1], higher for the same person. Because both
sides are pulled towards the same key the scores of unrelated faces are also high (about
:math:`\sin^2(\alpha \pi / 2) \approx 0.97` for :math:`\alpha \approx 0.9` and a 512-d
template; 0.978 on ORL with the default drop, ``docs/templates.md``): the ordering
follows the cosine of the raw templates, but the range is compressed near 1, so a decision
threshold must be calibrated on protected scores, never reused from raw cosine similarity.

Why it protects. Given :math:`p` alone, the template sits close to a random Gaussian
direction (the key dominates), which is what an inversion model sees. Given :math:`p` *and*
:math:`k`, the rotation of the kept entries could be undone (slerp is invertible in the
plane of :math:`\hat t_g, \hat k_g`), but the dropped entries are gone; hence keys are stored
apart from the templates (deployment, ``ppfr.serve``) and ``drop`` controls how much of the
template survives even if both leak.

Streamed matching (:class:`SlerpFaceIndex`). Matching one query against many stored
templates needs, per group, only inner products of the query with arrays fixed at
enrolment. With :math:`c_g = \hat q_g \cdot \hat k_g`, :math:`\theta_g = \arccos c_g` and
the slerp weights scaled by :math:`\sin\theta_g` (the score is invariant to a common
positive scale of both), :math:`u = \sin((1-\alpha_g)\theta_g)`,
:math:`v = \sin(\alpha_g\theta_g)`, the masked rotated query is
:math:`M_g(u \hat q_g + v \hat k_g)` and

.. math:: s(q, p) = \sum_g \frac{u\, \hat q_g \cdot p_g + v\, \hat k_g \cdot p_g}
          {\sqrt{u^2\, \hat q_g^{2} \cdot M_g + 2uv\, \hat q_g \cdot (M_g \odot \hat k_g)
          + v^2 \lVert M_g \odot \hat k_g \rVert^2}}

(:math:`p_g` is zero outside :math:`M_g`, so :math:`M_g p_g = p_g`). Four per-template
arrays, :math:`\hat k`, :math:`M \odot \hat k`, :math:`p` and :math:`M` (as 0/1 values),
meet the query in four group-wise inner products; two per-group scalars,
:math:`\hat k_g \cdot p_g` and :math:`\lVert M_g \odot \hat k_g\rVert^2`, are fixed too.
The index stores them once, in blocks laid out so that each inner product is one batched
matrix product over contiguous memory, and a query reads every stored array exactly once
(docs/benchmarks.md measures it against a plain read of the same bytes).

The slerp weights as polynomials. Per group, :math:`\alpha_g` is fixed, so the weights are
functions of the cosine :math:`c_g` alone. With :math:`t = \cos(\theta_g/2) =
\sqrt{(1 + c_g)/2} \in [0, 1]` and the weights scaled by :math:`\sin\theta_g /
\sin(\theta_g/2) = 2t` instead (again a common positive factor),

.. math:: U_g(t) = \frac{\sin((1-\alpha_g)\theta)}{\sin(\theta/2)}, \qquad
          V_g(t) = \frac{\sin(\alpha_g\theta)}{\sin(\theta/2)}, \qquad
          \theta = 2 \arccos t,

.. math:: s(q, p) = \sum_g \frac{U\, \hat q_g \cdot p_g + V\, \hat k_g \cdot p_g}
          {\sqrt{U^2 \lVert M_g \hat q_g \rVert^2 + 2UV\, \hat q_g \cdot M_g \hat k_g
          + V^2 \lVert M_g \hat k_g \rVert^2}}.

Both are even in :math:`\theta` and so analytic in :math:`t` at :math:`t = 1`
(:math:`\theta = 0`); the denominator vanishes only at :math:`\theta = 2\pi k`; the one
singularity near :math:`[0, 1]` is the branch point of :math:`\arccos` at :math:`t = -1`,
whatever :math:`\alpha_g`. A Chebyshev interpolant of degree :data:`_POLY_DEGREE` on
:math:`[0, 1]` therefore converges like :math:`(3 + \sqrt 8)^{-n}`: its error is about
:math:`10^{-9}` of :math:`\lVert (U, V) \rVert` for every :math:`\alpha_g \in [0, 1)`
(measured at construction, :attr:`SlerpFaceIndex.fit_error`), below the float32 rounding of
its evaluation (about :math:`3 \cdot 10^{-7}`), where the previous form needed an arccos, two
sines and a division. (In the cosine itself the weights are not analytic at :math:`c = -1`,
where :math:`\theta \sim \sqrt{2(1 + c)}`; the square root absorbs that.) One pass per
block then does the four products and this finish, :meth:`SlerpFaceIndex.scores`.

Numerics. Where :math:`\sin \theta_g` is tiny (:math:`\hat t_g \approx \pm \hat k_g`, a
measure-zero event for Gaussian keys) the slerp weights are replaced by their limits
:math:`(1-\alpha_g, \alpha_g)` of the linear interpolation, and every normalisation divides
by a norm clamped away from zero, so outputs are always finite. The streamed form reaches
the same limit without a branch at :math:`\theta_g \to 0` (the ratio
:math:`u : v \to (1-\alpha_g) : \alpha_g`; :math:`\theta_g` is floored at
:data:`_THETA_MIN`, which moves the ratio by about :math:`10^{-9}`), and takes the linear
weights where :math:`c_g = -1` exactly, as the direct form does. The fused kernel takes
the same exact fallback for every column where a group has :math:`|c_g| > 1` (the nudged
aligned or opposite key) or a vanishing denominator: the square roots make those NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppfr._jit import LazyKernel
from ppfr.errors import InputError

__all__ = [
    "SlerpFace",
    "SlerpFaceConfig",
    "SlerpFaceIndex",
    "expected_unrelated_score",
    "group_weights_from_templates",
    "slerp_weight_polynomials",
]

_EPS = 1e-12  # floor of every norm we divide by
_SIN_EPS = 1e-6  # below this sin(theta), slerp falls back to its linear-interpolation limit
#: templates per stored block of :class:`SlerpFaceIndex`: large enough that the batched
#: products run at memory speed (per-call overhead shows below ~1,000 rows)
_BLOCK = 2048
#: bound on the per-call scoring buffers (about 8 floats per group, query and column)
_WORK_BYTES = 64 * 2**20
#: columns per pass of the element-wise part: its (G, m, _SUB) temporaries stay in L2
_SUB = 512
#: floor of theta in the streamed form: u, v > 0 and their ratio exact to ~1e-9
_THETA_MIN = 1e-4
#: relative excess of the stored unit key used for the cosine (see ``_finish``): a few
#: float32 ulps, more than the rounding of a 16-term dot product, so q = +-k lands outside
#: [-1, 1]; the exact branch divides it out
_KEY_NUDGE = 2.0**-20
#: arrays per template in an index block, in this order
_ARRAYS = ("k_hat", "masked_k_hat", "protected", "mask")
#: degree of the Chebyshev interpolants of the slerp weights U_g(t), V_g(t) (module
#: docstring); the fused kernel spells out Horner's rule for exactly this degree
_POLY_DEGREE = 10
#: bound on the interpolation error, relative to |(U, V)|, checked at construction
_FIT_TOL = 1e-7


@dataclass
class SlerpFaceConfig:
    """Settings of :class:`SlerpFace`.

    Attributes:
        group_size: values per group; the template dimension must be a multiple of it
            (a 512-d template -> 32 groups of 16).
        alpha: base rotation towards the key; group ``g`` uses ``alpha - m_g``.
        drop: mean fraction of entries zeroed per group; group ``g`` drops
            ``min(drop * (2 - G * m_g), 1 - 1/group_size)`` of its entries, so groups with
            below-average attention lose more (see the module docstring).
    """

    group_size: int = 16
    alpha: float = 0.9
    drop: float = 0.5

    def __post_init__(self) -> None:
        if int(self.group_size) != self.group_size or self.group_size < 1:
            raise InputError(f"group_size must be a positive integer, got {self.group_size!r}")
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if not 0.0 <= self.drop < 1.0:
            raise InputError(f"drop must lie in [0, 1), got {self.drop!r}")


def _check_matrix(x: Any, dim: int, what: str) -> Tensor:
    if isinstance(x, np.ndarray):  # stores hand back numpy matrices; accept them as they are
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{what} must have shape (n, {dim}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError(f"{what} contains NaN or infinite values")
    return x.float()


class SlerpFace:
    """SlerpFace protection of D-dimensional templates (module docstring has the math).

    Args:
        dim: template dimension D, a multiple of ``config.group_size``.
        config: settings; defaults to :class:`SlerpFaceConfig`.
        weights: group attention weights :math:`m_g`, shape ``(D // group_size,)``,
            non-negative; they are rescaled to sum to 1. ``None`` -> uniform ``1/G``.

    Example:
        >>> sf = SlerpFace(512)
        >>> g = torch.Generator().manual_seed(0)
        >>> t = torch.nn.functional.normalize(torch.randn(4, 512, generator=g), dim=1)
        >>> keys = sf.draw_keys(4, generator=g)
        >>> p = sf.protect(t, keys)
        >>> sf.scores(t, p, keys).shape
        torch.Size([4, 4])
    """

    def __init__(
        self, dim: int, config: SlerpFaceConfig | None = None, weights: Tensor | None = None
    ) -> None:
        self.config = config if config is not None else SlerpFaceConfig()
        gs = int(self.config.group_size)
        if int(dim) != dim or dim < 1 or dim % gs:
            raise InputError(
                f"template dimension {dim!r} must be a positive multiple of group_size {gs}"
            )
        self.dim = int(dim)
        self.group_size = gs
        self.num_groups = self.dim // gs
        if weights is None:
            w = torch.full((self.num_groups,), 1.0 / self.num_groups)
        else:
            w = torch.as_tensor(weights, dtype=torch.float32).detach().cpu().flatten()
            if w.numel() != self.num_groups:
                raise InputError(
                    f"weights must have {self.num_groups} entries (one per group), "
                    f"got shape {tuple(torch.as_tensor(weights).shape)}"
                )
            if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise InputError("weights must be finite, non-negative and not all zero")
            w = w / w.sum()
        self.weights = w  # (G,) m_g, sums to 1
        self.alphas = (self.config.alpha - w).clamp(0.0, 1.0)  # (G,) alpha_g = alpha - m_g
        frac = (self.config.drop * (2.0 - self.num_groups * w)).clamp(0.0, 1.0 - 1.0 / gs)
        self.drop_counts = torch.round(frac * gs).long()  # (G,) entries zeroed per group

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_model(cls, model: Any, dim: int, config: SlerpFaceConfig | None = None) -> SlerpFace:
        """Protection for ``model``'s templates, with its group weights when it rates them.

        A model (or any object) may expose ``template_group_weights() -> Tensor`` of shape
        ``(dim // group_size,)``; otherwise the weights are uniform.
        """
        get = getattr(model, "template_group_weights", None)
        weights = get() if callable(get) else None
        return cls(dim, config, weights)

    # ------------------------------------------------------------------------------- keys
    def draw_keys(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh keys, i.i.d. standard Gaussian.

        Shape:
            returns ``(n, dim)`` float32.
        """
        if int(n) != n or n < 0:
            raise InputError(f"number of keys must be a non-negative integer, got {n!r}")
        return torch.randn(int(n), self.dim, generator=generator, dtype=torch.float32)

    # --------------------------------------------------------------------------- internals
    def _groups(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-1], self.num_groups, self.group_size)

    def _keep_mask(self, keys: Tensor) -> Tensor:
        """Entries kept per group: all but the ``drop_counts[g]`` smallest ``|k_i|``.

        Shape:
            keys ``(n, dim)`` -> ``(n, G, group_size)`` bool.
        """
        kg = self._groups(keys).abs()
        # rank of each entry within its group, 0 = smallest |k|; ties broken by position.
        # One sort, then the inverse permutation by a scatter (cheaper than a second sort)
        order = kg.argsort(dim=-1, stable=True)
        positions = torch.arange(self.group_size).expand_as(order)
        ranks = torch.empty_like(order).scatter_(-1, order, positions)
        return ranks >= self.drop_counts.view(1, -1, 1)

    def _slerp(self, t_hat: Tensor, k_hat: Tensor) -> Tensor:
        """Per-group slerp of unit vectors towards unit keys by ``alpha_g`` (broadcasting).

        Shape:
            t_hat, k_hat ``(..., G, group_size)`` -> same shape.
        """
        cos = (t_hat * k_hat).sum(-1).clamp(-1.0, 1.0)  # (..., G)
        theta = torch.arccos(cos)
        sin = torch.sin(theta)
        a = self.alphas  # (G,)
        small = sin < _SIN_EPS
        safe_sin = torch.where(small, torch.ones_like(sin), sin)
        # theta -> 0 (or pi): the slerp weights tend to those of linear interpolation
        wt = torch.where(small, 1.0 - a, torch.sin((1.0 - a) * theta) / safe_sin)
        wk = torch.where(small, a.expand_as(sin), torch.sin(a * theta) / safe_sin)
        return wt.unsqueeze(-1) * t_hat + wk.unsqueeze(-1) * k_hat

    @staticmethod
    def _unit(x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    # ------------------------------------------------------------------------ public API
    def protect(self, templates: Tensor, keys: Tensor) -> Tensor:
        """Protected templates :math:`p`, one per (template, key) row pair.

        Shape:
            templates ``(n, dim)``, keys ``(n, dim)`` -> ``(n, dim)`` float32.
        """
        t = _check_matrix(templates, self.dim, "templates")
        k = _check_matrix(keys, self.dim, "keys")
        if t.shape[0] != k.shape[0]:
            raise InputError(
                f"need one key per template, got {t.shape[0]} templates and {k.shape[0]} keys"
            )
        t = t.detach().cpu()
        k = k.detach().cpu()
        rotated = self._slerp(self._unit(self._groups(t)), self._unit(self._groups(k)))
        kept = self._unit(rotated * self._keep_mask(k))
        protected = kept * self.weights.view(1, -1, 1)
        return protected.reshape(t.shape[0], self.dim)

    def scores(self, queries: Tensor, protected: Tensor, keys: Tensor) -> Tensor:
        """Similarity of every query to every protected template (higher = same person).

        Builds a :class:`SlerpFaceIndex` of the stored side (float32) and streams it; a
        caller that scores many queries against the same templates should build the index
        once with :meth:`index` instead.

        Shape:
            queries ``(m, dim)``, protected ``(n, dim)``, keys ``(n, dim)`` -> ``(m, n)``.
        """
        q = _check_matrix(queries, self.dim, "queries").detach().cpu()
        return self.index(protected, keys).scores(q)

    def index(
        self, protected: Tensor, keys: Tensor, dtype: torch.dtype = torch.float32
    ) -> SlerpFaceIndex:
        """The stored side of matching, precomputed for streaming (:class:`SlerpFaceIndex`).

        Args:
            protected: protected templates, as :meth:`protect` returned them.
            keys: their keys, row for row.
            dtype: storage type of the per-template arrays, ``torch.float32`` or
                ``torch.float16`` (half the memory; see docs/templates.md for its cost).

        Shape:
            protected ``(n, dim)``, keys ``(n, dim)``.
        """
        return SlerpFaceIndex(self, protected, keys, dtype=dtype)


class SlerpFaceIndex:
    r"""Protected templates and their keys, laid out so that a query streams them once.

    Per stored template and group :math:`g` it keeps four arrays of ``group_size`` values,
    the unit key :math:`\hat k_g`, the masked unit key :math:`M_g \odot \hat k_g`, the
    protected template :math:`p_g` and the keep mask :math:`M_g` (0/1), and two scalars,
    :math:`\hat k_g \cdot p_g` and :math:`\lVert M_g \odot \hat k_g \rVert^2`.

    Scoring. With ``kernel="numba"`` (the default where numba is installed), one compiled
    loop per call (:func:`_stream_scores_py`) streams each block once: per group slab it
    accumulates the four products for a column range of the block from eight stored rows at a
    time, then, while they are still in L1, finishes the group's scores with the slerp
    weights as polynomials in :math:`t = \sqrt{(1 + c_g)/2}` (module docstring): a square
    root, two Horner chains, a second square root and a division, all vectorised, instead of
    the eager passes below. float16 blocks are widened in the same loop (F16C), so no widened
    copy exists at all. ``kernel="torch"`` (or no numba) scores as follows.

    Scoring one block of templates against queries :math:`\hat q` (unit groups):

    1. two batched matrix products over the group axis read the block once:
       :math:`\hat q_g` against :math:`[\hat k_g, M_g \hat k_g, p_g]` gives
       :math:`c_g, \hat q_g \cdot M_g \hat k_g, \hat q_g \cdot p_g`, and
       :math:`\hat q_g^2` against :math:`M_g` gives :math:`\lVert M_g \hat q_g \rVert^2`;
    2. per (group, query, template), with :math:`\theta = \arccos c_g` and the slerp
       weights' ratio :math:`r = \sin(\alpha_g\theta) / \sin((1-\alpha_g)\theta)` (the score
       is invariant to scaling both weights, and :math:`\sin((1-\alpha_g)\theta) > 0`),

       .. math:: s_g = \frac{\hat q_g \cdot p_g + r\, \hat k_g \cdot p_g}
                 {\sqrt{\lVert M_g \hat q_g \rVert^2 + r\,(2\, \hat q_g \cdot M_g \hat k_g
                 + r \lVert M_g \hat k_g \rVert^2)}}

       and :math:`s = \sum_g s_g`; about a dozen element-wise passes over cache-resident
       ``(G, m, block)`` buffers that are allocated once per call.

    Layout: ``blocks[b]`` is ``(G, group_size, 4 * block)``; columns ``j * block`` to
    ``(j + 1) * block`` hold array ``j`` (:data:`_ARRAYS` order) of the block's templates,
    so each product reads contiguous rows and the first three arrays share one call.

    Args:
        sf: the protection the templates were made with (its weights set alpha_g).
        protected: protected templates; keys: their keys, row for row.
        dtype: storage type of the four arrays, ``torch.float32`` or ``torch.float16``
            (widened to float32 one block at a time while scoring; the scalars stay
            float32).
        block: templates per block (default :data:`_BLOCK`, or the gallery size if smaller).
        kernel: ``"numba"`` (fused, compiled), ``"torch"`` (eager), or ``None``: numba when
            it is installed and compiles here, else torch. Both give the direct form's
            scores to float32 rounding.

    Shape:
        protected ``(n, dim)``, keys ``(n, dim)``; :attr:`blocks`
        ``(ceil(n / block), G, group_size, 4 * block)`` (the last block zero-padded);
        :attr:`scalars` ``(ceil(n / block), 2, G, block)`` float32.

    Example:
        >>> sf = SlerpFace(64)
        >>> g = torch.Generator().manual_seed(0)
        >>> t = torch.nn.functional.normalize(torch.randn(5, 64, generator=g), dim=1)
        >>> k = sf.draw_keys(5, generator=g)
        >>> idx = sf.index(sf.protect(t, k), k)
        >>> idx.scores(t).shape
        torch.Size([5, 5])
    """

    def __init__(
        self,
        sf: SlerpFace,
        protected: Any,
        keys: Any,
        dtype: torch.dtype = torch.float32,
        block: int | None = None,
        kernel: str | None = None,
    ) -> None:
        if kernel not in (None, "numba", "torch"):
            raise InputError(f"kernel must be 'numba', 'torch' or None, got {kernel!r}")
        if dtype not in (torch.float32, torch.float16):
            raise InputError(f"index dtype must be torch.float32 or torch.float16, got {dtype}")
        if block is not None and (int(block) != block or block < 1):
            raise InputError(f"block must be a positive integer, got {block!r}")
        p = _check_matrix(protected, sf.dim, "protected templates").detach().cpu()
        k = _check_matrix(keys, sf.dim, "keys").detach().cpu()
        if p.shape[0] != k.shape[0]:
            raise InputError(
                f"need one key per protected template, got {p.shape[0]} templates "
                f"and {k.shape[0]} keys"
            )
        if block is None:  # a small gallery: one unpadded block, not 2,048 mostly empty columns
            block = max(1, min(_BLOCK, p.shape[0]))
        self.sf = sf
        self.dtype = dtype
        self.block = int(block)
        self.n = int(p.shape[0])
        g, s, c = sf.num_groups, sf.group_size, self.block
        nb = -(-self.n // c)
        self.blocks = torch.zeros(nb, g, s, len(_ARRAYS) * c, dtype=dtype)
        self.scalars = torch.zeros(nb, 2, g, c, dtype=torch.float32)
        # zero-padded columns of the last block: |Mk|^2 = 1 keeps their denominator
        # positive, so they score 0 instead of 0 / 0 (which would send the block's last
        # columns to the slow exact path on every query)
        self.scalars[:, 1] = 1.0
        for b in range(nb):
            lo, hi = b * c, min(self.n, (b + 1) * c)
            k_hat = sf._unit(sf._groups(k[lo:hi]))  # (rows, G, s)
            mask = sf._keep_mask(k[lo:hi]).float()
            masked = k_hat * mask
            pg = sf._groups(p[lo:hi])
            nudged = k_hat * (1.0 + _KEY_NUDGE)  # only for the cosine, see _finish
            for j, arr in enumerate((nudged, masked, pg, mask)):
                self.blocks[b, :, :, j * c : j * c + hi - lo] = arr.permute(1, 2, 0)
            self.scalars[b, 0, :, : hi - lo] = (k_hat * pg).sum(-1).T
            self.scalars[b, 1, :, : hi - lo] = (masked * masked).sum(-1).T
        # (1 - alpha_g, alpha_g), shaped to broadcast over (2, G, m, columns)
        self._uv_fractions = torch.stack([1.0 - sf.alphas, sf.alphas]).view(2, g, 1, 1)
        # the fused kernel's polynomials; fit_error is their worst error relative to the
        # exact weights (about 1e-9; above _FIT_TOL, which no alpha_g in [0, 1] reaches,
        # the index would score with torch)
        self._coef, self.fit_error = slerp_weight_polynomials(sf.alphas)
        if kernel != "torch" and (self.fit_error > _FIT_TOL or _fused_kernel() is None):
            if kernel == "numba":
                why = _FUSED.error or f"polynomial error {self.fit_error:.1e}"
                raise InputError(f"the numba kernel is unavailable here: {why}")
            kernel = "torch"
        self.kernel: str = kernel or "numba"

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays and scalars: what one query reads."""
        return self.blocks.numel() * self.blocks.element_size() + self.scalars.numel() * 4

    def scores(self, queries: Any, rows: slice | None = None) -> Tensor:
        """SlerpFace scores of every query against the stored templates (or ``rows`` of them).

        Equal, to float32 rounding, to the direct form (rotate the query with each key,
        mask, renormalise, dot) that the module docstring defines.

        Shape:
            queries ``(m, dim)`` -> ``(m, n)``, or ``(m, len(rows))`` with ``rows``.
        """
        sf = self.sf
        q = _check_matrix(queries, sf.dim, "queries").detach().cpu()
        m = q.shape[0]
        if rows is None:
            lo, hi = 0, self.n
        elif isinstance(rows, slice) and rows.step in (None, 1):
            lo, hi, _ = rows.indices(self.n)
            hi = max(lo, hi)
        else:
            raise InputError(f"rows must be a contiguous slice, got {rows!r}")
        if m and hi > lo and self.kernel == "numba":
            return self._fused_scores(q, lo, hi)
        out = torch.empty(m, hi - lo, dtype=torch.float32)
        if m == 0 or hi == lo:
            return out
        # many queries: a slice at a time, so the per-block buffers stay near 64 MiB
        step = max(1, _WORK_BYTES // (4 * sf.num_groups * 8 * self.block))
        for a in range(0, m, step):
            out[a : a + step] = self._scores(q[a : a + step], lo, hi)
        return out

    def _fused_scores(self, q: Tensor, lo: int, hi: int) -> Tensor:
        """Scores of validated queries against columns ``lo:hi`` by the fused kernel.

        Columns where a group was degenerate come back NaN or infinite and are redone by the
        direct form (:meth:`_direct_columns`).

        Shape:
            q ``(m, dim)`` float32 -> ``(m, hi - lo)``.
        """
        kernel = _fused_kernel()
        if kernel is None:  # kernel="numba" set by hand where it is unavailable
            raise InputError(f"the numba kernel is unavailable here: {_FUSED.error}")
        sf = self.sf
        q_hat = sf._unit(sf._groups(q)).contiguous()  # (m, G, s)
        blocks = self.blocks if self.dtype == torch.float32 else self.blocks.view(torch.int16)
        out = torch.zeros(q.shape[0], hi - lo, dtype=torch.float32)
        acc = np.empty((4, self.block), dtype=np.float32)  # the four products of one slab
        kernel(
            blocks.numpy(), self.scalars.numpy(), q_hat.numpy(), self._coef, lo, hi, acc,
            out.numpy(),
        )  # fmt: skip
        finite = torch.isfinite(out).all(dim=0)
        if not bool(finite.all()):
            cols = (~finite).nonzero().flatten()
            out[:, cols] = self._direct_columns(q_hat.transpose(0, 1), cols + lo)
        return out

    def _direct_columns(self, q_hat: Tensor, cols: Tensor) -> Tensor:
        """Direct-form scores (:meth:`_direct`) of the templates at indices ``cols``.

        Shape:
            q_hat ``(G, m, s)``; cols ``(k,)`` int64 -> ``(m, k)``.
        """
        c = self.block
        b, j = cols // c, cols % c

        def arr(i: int) -> Tensor:  # array i of those templates as (k, G, s)
            return self.blocks[b, :, :, i * c + j].float()

        return self._direct_form(q_hat, arr(0), arr(3), arr(2))

    def _scores(self, q: Tensor, lo: int, hi: int) -> Tensor:
        """Scores of validated queries against columns ``lo:hi``.

        Shape:
            q ``(m, dim)`` float32 -> ``(m, hi - lo)``.
        """
        sf = self.sf
        m = q.shape[0]
        out = torch.empty(m, hi - lo, dtype=torch.float32)
        q_hat = sf._unit(sf._groups(q)).transpose(0, 1).contiguous()  # (G, m, s)
        q_sq = q_hat * q_hat
        c = self.block
        b0, b1 = lo // c, -(-hi // c)
        if b1 - b0 == 1 and hi - lo < c // 4:
            # a few rows of one block (verification): score only their columns
            a, z = lo - b0 * c, hi - b0 * c
            cols = torch.cat([torch.arange(j * c + a, j * c + z) for j in range(len(_ARRAYS))])
            blk = self.blocks[b0][..., cols].contiguous()
            sc = self.scalars[b0][..., a:z].contiguous()
            work = _Workspace(sf.num_groups, sf.group_size, m, z - a, self.dtype)
            out[:] = self._block_scores(q_hat, q_sq, blk, sc, work)
            return out
        work = _Workspace(sf.num_groups, sf.group_size, m, c, self.dtype)
        for b in range(b0, b1):
            a, z = max(lo, b * c) - b * c, min(hi, (b + 1) * c) - b * c  # columns in range
            res = self._block_scores(q_hat, q_sq, self.blocks[b], self.scalars[b], work)
            out[:, b * c + a - lo : b * c + z - lo] = res[:, a:z]
        return out

    def _block_scores(
        self, q_hat: Tensor, q_sq: Tensor, blk: Tensor, sc: Tensor, w: _Workspace
    ) -> Tensor:
        """Scores of one block; returns a view of the workspace, valid until the next call.

        Shape:
            q_hat, q_sq ``(G, m, s)``; blk ``(G, s, 4 c)``; sc ``(2, G, c)`` -> ``(m, c)``.
        """
        c = sc.shape[-1]
        if blk.dtype == torch.float32:
            # the two products that read the block: (G, m, s) @ (G, s, 3c) and @ (G, s, c)
            torch.bmm(q_hat, blk[..., : 3 * c], out=w.dots3)
            torch.bmm(q_sq, blk[..., 3 * c :], out=w.mq2)
        else:
            # half storage: widen one group's slab at a time into a buffer that stays in
            # L2, so the widened copy never travels to memory and back
            for g in range(blk.shape[0]):
                w.wide.copy_(blk[g])
                torch.mm(q_hat[g], w.wide[:, : 3 * c], out=w.dots3[g])
                torch.mm(q_sq[g], w.wide[:, 3 * c :], out=w.mq2[g])
        # the element-wise part runs over column slices whose temporaries fit in L2: the
        # block itself has just streamed through the caches and evicted anything larger
        for x in range(0, c, _SUB):
            y = min(c, x + _SUB)
            finite = self._finish(
                w.dots3[..., x:y],
                w.dots3[..., c + x : c + y],
                w.dots3[..., 2 * c + x : 2 * c + y],
                w.mq2[..., x:y],
                sc[0, :, x:y].unsqueeze(1),
                sc[1, :, x:y].unsqueeze(1),
                w,
                w.out[:, x:y],
            )
            if not finite:  # a degenerate group somewhere in these columns: redo directly
                w.out[:, x:y] = self._direct(q_hat, blk, c, x, y)
        return w.out

    def _finish(
        self,
        cos: Tensor,
        qmk: Tensor,
        qp: Tensor,
        mq2: Tensor,
        kp: Tensor,
        mk2: Tensor,
        w: _Workspace,
        out: Tensor,
    ) -> bool:
        """Per-group scores from the four products, summed over groups into ``out``.

        Returns False when a group was degenerate (the caller then uses :meth:`_direct`).
        The stored unit key carries a factor ``1 + _KEY_NUDGE``, so a query group aligned
        with or opposite to its key (``cos = +-1``, where the slerp weights take their
        limit) lands outside [-1, 1]: arccos is NaN there and so is the sum, and no pass
        is spent looking for such groups.

        Shape:
            cos, qmk, qp, mq2 ``(G, m, x)``; kp, mk2 ``(G, 1, x)``; out ``(m, x)``.
        """
        x = cos.shape[-1]
        theta, uv, r, num = w.theta[..., :x], w.uv[..., :x], w.r[..., :x], w.num[..., :x]
        torch.arccos(cos, out=theta)
        torch.mul(theta, self._uv_fractions, out=uv).sin_()  # sin((1 - a) t), sin(a t)
        torch.div(uv[1], uv[0], out=r)  # r = sin(a theta) / sin((1 - a) theta)
        torch.addcmul(qp, r, kp, out=num)
        # denominator^2 = |Mq|^2 + r (2 q.Mk + r |Mk|^2), into theta (free now); a
        # vanishing one gives inf or NaN, caught below like the degenerate angles
        torch.mul(r, mk2, out=theta).add_(qmk, alpha=2.0).mul_(r).add_(mq2)
        num.mul_(theta.rsqrt_())
        torch.sum(num, dim=0, out=out)
        return math.isfinite(float(out.sum()))  # NaN and inf propagate through the sum

    def _direct(self, q_hat: Tensor, blk: Tensor, c: int, x: int, y: int) -> Tensor:
        """Scores of columns ``x:y`` of a block by the direct form (rare, exact fallback).

        Rotates the query with each stored unit key (:meth:`SlerpFace._slerp`, which takes
        the linear limit where sin(theta) vanishes), masks, renormalises and takes the dot
        product with the protected template, as the module docstring defines.

        Shape:
            q_hat ``(G, m, s)``; blk ``(G, s, 4 c)``, either storage type -> ``(m, y - x)``.
        """

        def cols(j: int) -> Tensor:  # array j of columns x:y as (y - x, G, s)
            return blk[..., j * c + x : j * c + y].permute(2, 0, 1).float()

        return self._direct_form(q_hat, cols(0), cols(3), cols(2))

    def _direct_form(
        self, q_hat: Tensor, nudged: Tensor, mask: Tensor, protected: Tensor
    ) -> Tensor:
        """The direct form from stored arrays: slerp, mask, renormalise, dot.

        Shape:
            q_hat ``(G, m, s)``; nudged (the stored unit keys), mask, protected
            ``(k, G, s)`` float32 -> ``(m, k)``.
        """
        sf = self.sf
        k_hat = nudged / (1.0 + _KEY_NUDGE)
        rotated = sf._slerp(q_hat.transpose(0, 1).unsqueeze(1), k_hat.unsqueeze(0))
        masked = sf._unit(rotated * mask)  # (m, k, G, s)
        return (masked * protected).sum(dim=(-1, -2))


class _Workspace:
    """Buffers reused across the blocks of one :meth:`SlerpFaceIndex.scores` call.

    Allocated once per call, so the block loop allocates nothing (no page faults in the
    hot path, whatever the allocator does with freed memory).

    Shape:
        dots3 ``(G, m, 3c)``; mq2 ``(G, m, c)``; theta, r, num ``(G, m, sub)`` and uv
        ``(2, G, m, sub)`` with ``sub = min(c, _SUB)``;
        out ``(m, c)``; wide ``(s, 4c)`` float32 (half storage only: one group's slab).
    """

    def __init__(self, g: int, s: int, m: int, c: int, dtype: torch.dtype) -> None:
        self.dots3 = torch.empty(g, m, 3 * c)
        self.mq2 = torch.empty(g, m, c)
        sub = min(c, _SUB)
        self.theta, self.r, self.num = torch.empty(3, g, m, sub)
        self.uv = torch.empty(2, g, m, sub)
        self.out = torch.empty(m, c)
        self.wide = torch.empty(s, len(_ARRAYS) * c) if dtype != torch.float32 else None


def _slerp_uv(t: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U(t), V(t) of the module docstring in float64, with their limits 2(1-a), 2a at t = 1."""
    theta = 2.0 * np.arccos(np.clip(t, -1.0, 1.0))
    half = np.sin(theta / 2.0)
    live = half > 1e-300
    safe = np.where(live, half, 1.0)
    u = np.where(live, np.sin((1.0 - a) * theta) / safe, 2.0 * (1.0 - a))
    v = np.where(live, np.sin(a * theta) / safe, 2.0 * a)
    return u, v


def slerp_weight_polynomials(
    alphas: Tensor, degree: int = _POLY_DEGREE
) -> tuple[np.ndarray, float]:
    r"""Per-group polynomials of the scaled slerp weights, and their worst relative error.

    :math:`U_g(t) = \sin((1-\alpha_g)\theta)/\sin(\theta/2)` and
    :math:`V_g(t) = \sin(\alpha_g\theta)/\sin(\theta/2)`, :math:`\theta = 2\arccos t`,
    interpolated at the ``degree + 1`` Chebyshev points of :math:`[0, 1]` and written in the
    monomial basis of :math:`z = 2t - 1 \in [-1, 1]` (Horner's rule in float32 then loses
    about :math:`3 \cdot 10^{-7}` of :math:`\lVert (U, V) \rVert`). The error is measured in
    float64 on 4,096 points of :math:`(0, 1]`, relative to :math:`\lVert (U, V) \rVert` (which
    vanishes only at :math:`t = 0` with :math:`\alpha_g \in \{0, 1\}`, a degenerate point the
    kernel never scores by polynomial).

    Shape:
        alphas ``(G,)`` -> coefficients ``(G, 2, degree + 1)`` float32, lowest power first.
    """
    from numpy.polynomial import chebyshev

    a = alphas.detach().double().cpu().numpy()[:, None]  # (G, 1)
    n = degree + 1
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)  # Chebyshev points in z
    u, v = _slerp_uv((nodes + 1.0) / 2.0, a)  # (G, n) each
    coef = np.empty((a.shape[0], 2, n))
    for g in range(a.shape[0]):
        for i, w in enumerate((u[g], v[g])):
            coef[g, i] = chebyshev.cheb2poly(chebyshev.chebfit(nodes, w, degree))
    t = np.arange(1, 4097) / 4096.0
    u, v = _slerp_uv(t, a)
    z = 2.0 * t - 1.0
    pu = np.polynomial.polynomial.polyval(z, coef[:, 0].T, tensor=True)  # (G, len(t))
    pv = np.polynomial.polynomial.polyval(z, coef[:, 1].T, tensor=True)
    err = np.hypot(pu - u, pv - v) / np.hypot(u, v)
    return np.ascontiguousarray(coef, dtype=np.float32), float(err.max())


# ---------------------------------------------------------------------------- fused kernel
_widen: Any = None  # numba intrinsics, bound by _compile_fused before the kernel compiles
_sqrt32: Any = None


def _stream_scores_py(blocks, scalars, q, coef, lo, hi, acc, out):  # pragma: no cover - numba
    """Scores of queries ``q`` against columns ``lo:hi`` of an index, added into ``out``.

    Only ever run compiled (:func:`_fused_kernel` binds the two intrinsics it calls).
    Per block and group the slab ``blocks[b, g]`` (``s`` rows of the four arrays) is read
    once, eight rows at a time, into the four products ``acc`` (each ``(w,)``, in L1); then
    the group's score, with the weights as polynomials in ``t = sqrt((1 + c) / 2)``, is added
    to ``out``. Every inner loop runs over contiguous columns and vectorises. ``_widen``
    turns a stored value (float32, or float16 bits as int16) into float32 (F16C);
    ``_sqrt32`` is LLVM's square root, which vectorises where ``math.sqrt`` (libm's
    ``sqrtf``) does not; ``error_model="numpy"`` drops the zero check Python's division
    would put in the loop. Degenerate groups make their column's sum NaN or infinite: the
    square roots do so for ``c < -1`` and for a vanishing denominator, and ``c > 1`` (the
    nudged aligned key) is set to NaN; the caller redoes those columns exactly.

    Shape:
        blocks ``(nb, G, s, 4 c)``; scalars ``(nb, 2, G, c)``; q ``(m, G, s)`` unit groups;
        coef ``(G, 2, 11)``; acc ``(4, c)`` scratch; out ``(m, hi - lo)`` zeros.
    """
    m, n_groups, s = q.shape
    c = scalars.shape[3]
    one, half, nan = np.float32(1.0), np.float32(0.5), np.float32(np.nan)
    for b in range(lo // c, (hi + c - 1) // c):
        ja = max(lo - b * c, 0)
        jz = min(hi - b * c, c)
        w = jz - ja
        o = b * c + ja - lo
        for g in range(n_groups):
            slab = blocks[b, g]
            kp = scalars[b, 0, g, ja:jz]
            mk2 = scalars[b, 1, g, ja:jz]
            cu = coef[g, 0]
            cv = coef[g, 1]
            # Horner's rule for degree 10 (_POLY_DEGREE), spelled out: an inner loop over
            # the coefficients would keep the column loop from vectorising
            u0, u1, u2, u3, u4, u5 = cu[0], cu[1], cu[2], cu[3], cu[4], cu[5]
            u6, u7, u8, u9, u10 = cu[6], cu[7], cu[8], cu[9], cu[10]
            v0, v1, v2, v3, v4, v5 = cv[0], cv[1], cv[2], cv[3], cv[4], cv[5]
            v6, v7, v8, v9, v10 = cv[6], cv[7], cv[8], cv[9], cv[10]
            for qi in range(m):
                for k in range(4):  # cos, q.Mk, q.p against q; |Mq|^2 against q^2
                    a = acc[k, :w]
                    for j in range(w):
                        a[j] = 0.0
                    x0k, x1k = k * c + ja, k * c + jz
                    i = 0
                    while i + 8 <= s:  # eight rows per pass over a: 1/8 of its traffic
                        x0, x1, x2, x3 = (
                            q[qi, g, i],
                            q[qi, g, i + 1],
                            q[qi, g, i + 2],
                            q[qi, g, i + 3],
                        )
                        x4, x5, x6, x7 = (
                            q[qi, g, i + 4],
                            q[qi, g, i + 5],
                            q[qi, g, i + 6],
                            q[qi, g, i + 7],
                        )
                        if k == 3:
                            x0, x1, x2, x3 = x0 * x0, x1 * x1, x2 * x2, x3 * x3
                            x4, x5, x6, x7 = x4 * x4, x5 * x5, x6 * x6, x7 * x7
                        r0, r1 = slab[i, x0k:x1k], slab[i + 1, x0k:x1k]
                        r2, r3 = slab[i + 2, x0k:x1k], slab[i + 3, x0k:x1k]
                        r4, r5 = slab[i + 4, x0k:x1k], slab[i + 5, x0k:x1k]
                        r6, r7 = slab[i + 6, x0k:x1k], slab[i + 7, x0k:x1k]
                        for j in range(w):
                            a[j] += (
                                x0 * _widen(r0[j]) + x1 * _widen(r1[j])
                                + x2 * _widen(r2[j]) + x3 * _widen(r3[j])
                            ) + (
                                x4 * _widen(r4[j]) + x5 * _widen(r5[j])
                                + x6 * _widen(r6[j]) + x7 * _widen(r7[j])
                            )  # fmt: skip
                        i += 8
                    while i < s:
                        x0 = q[qi, g, i]
                        if k == 3:
                            x0 = x0 * x0
                        r0 = slab[i, x0k:x1k]
                        for j in range(w):
                            a[j] += x0 * _widen(r0[j])
                        i += 1
                cos, qmk, qp, mq2 = acc[0, :w], acc[1, :w], acc[2, :w], acc[3, :w]
                res = out[qi, o : o + w]
                for j in range(w):
                    cs = cos[j]
                    t = _sqrt32(half * cs + half)  # NaN for c < -1
                    z = t + t - one
                    uu = u10 * z + u9
                    vv = v10 * z + v9
                    uu = uu * z + u8
                    vv = vv * z + v8
                    uu = uu * z + u7
                    vv = vv * z + v7
                    uu = uu * z + u6
                    vv = vv * z + v6
                    uu = uu * z + u5
                    vv = vv * z + v5
                    uu = uu * z + u4
                    vv = vv * z + v4
                    uu = uu * z + u3
                    vv = vv * z + v3
                    uu = uu * z + u2
                    vv = vv * z + v2
                    uu = uu * z + u1
                    vv = vv * z + v1
                    uu = uu * z + u0
                    vv = vv * z + v0
                    num = uu * qp[j] + vv * kp[j]
                    den = uu * (uu * mq2[j] + (vv + vv) * qmk[j]) + vv * vv * mk2[j]
                    sg = num / _sqrt32(den)  # inf or NaN where den vanishes
                    if cs > one:
                        sg = nan
                    res[j] += sg
    return 0


def _compile_fused() -> Any:
    """The numba-compiled :func:`_stream_scores_py`, built for both storage types."""
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def widen(typingctx, x):  # float16 bits (int16) or float32 -> float32
        if isinstance(x, types.Integer) and x.bitwidth == 16:

            def half_to_float(context, builder, sig, args):
                return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

            return types.float32(x), half_to_float
        if x == types.float32:
            return types.float32(x), lambda context, builder, sig, args: args[0]
        return None

    @intrinsic
    def sqrt32(typingctx, x):  # llvm.sqrt.f32: vectorisable, NaN below zero
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            fn = builder.module.declare_intrinsic("llvm.sqrt", [ir.FloatType()])
            return builder.call(fn, [args[0]])

        return types.float32(x), codegen

    global _widen, _sqrt32
    _widen, _sqrt32 = widen, sqrt32
    kernel = numba.njit(
        cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"}
    )(_stream_scores_py)
    # compile (or load from numba's cache) both storage types now, on one template, so a
    # machine where either fails scores with torch instead of failing a request. The
    # template: p = 1, the other arrays 0, both scalars 1; U = V = 1; query 1 -> score 2
    coef = np.zeros((1, 2, _POLY_DEGREE + 1), np.float32)
    coef[0, :, 0] = 1.0
    for stored in (np.float32(1.0), np.float16(1.0).view(np.int16)):
        blocks = np.zeros((1, 1, 1, 4), stored.dtype)
        blocks[..., 2] = stored
        out = np.zeros((1, 1), np.float32)
        kernel(
            blocks, np.ones((1, 2, 1, 1), np.float32), np.ones((1, 1, 1), np.float32), coef,
            0, 1, np.empty((4, 1), np.float32), out,
        )  # fmt: skip
        if out[0, 0] != 2.0:
            raise RuntimeError(f"the fused kernel scores {out[0, 0]} for 2 ({stored.dtype})")
    return kernel


#: the compiled :func:`_stream_scores_py` (None where numba is missing or fails)
_FUSED = LazyKernel(_compile_fused)


def _fused_kernel() -> Any:
    """The compiled kernel, or None where numba is missing or fails (``_FUSED.error``)."""
    return _FUSED.get()


def group_weights_from_templates(templates: Tensor, labels: Tensor, group_size: int = 16) -> Tensor:
    r"""Group attention weights estimated from labelled templates.

    For models that do not rate their groups, a group's weight is its share of the identity
    separation: with :math:`\Delta_g` the gap between the mean cosine of same-person and of
    different-person pairs of that group's slices,
    :math:`m_g = \max(\Delta_g, 0) / \sum_h \max(\Delta_h, 0)`. A stand-in for the
    paper's learned attention, computed once on training identities. (Slices of a linear
    embedding tend to be about equally informative, so this is often close to uniform; a
    sharper rule such as a softmax over standardised gaps exaggerates small differences, and
    on ORL it cost accuracy: groups given little weight drop almost all their entries.)

    Shape:
        templates ``(n, dim)``, labels ``(n,)`` -> ``(dim // group_size,)`` summing to 1.
    """
    if not isinstance(templates, Tensor) or templates.ndim != 2:
        raise InputError("templates must be a (n, dim) tensor")
    n, dim = templates.shape
    if dim % group_size:
        raise InputError(f"template dimension {dim} is not a multiple of group_size {group_size}")
    labels = torch.as_tensor(labels).flatten()
    if labels.numel() != n:
        raise InputError(f"need one label per template, got {labels.numel()} for {n}")
    same = labels.view(-1, 1) == labels.view(1, -1)
    off = ~torch.eye(n, dtype=torch.bool)
    if not (same & off).any() or not (~same).any():
        raise InputError("need at least two templates of one person and two different persons")
    g = templates.float().reshape(n, dim // group_size, group_size)
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    cos = torch.einsum("agk,bgk->gab", g, g)  # (G, n, n) per-group cosine
    gap = (cos[:, same & off].mean(1) - cos[:, ~same].mean(1)).clamp_min(0.0)
    if gap.sum() <= 0:
        raise InputError("no group separates identities better than chance")
    return gap / gap.sum()


def expected_unrelated_score(alpha: float) -> float:
    """Rough score of two unrelated templates under one key, ``sin(alpha * pi / 2) ** 2``.

    Templates and a Gaussian key are nearly orthogonal in high dimension (theta ~ pi/2), so
    both rotated groups are ~ ``cos(alpha pi/2) t + sin(alpha pi/2) k``; their dot product
    is dominated by the shared key part. Useful to read protected scores, not a threshold.
    """
    return math.sin(alpha * math.pi / 2) ** 2
