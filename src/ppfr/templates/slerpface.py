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

Matching many stored templates at once streams them through a precomputed index
(:class:`~ppfr.templates.index.SlerpFaceIndex`, :mod:`ppfr.templates.index`, which derives
the streamed form); its compiled kernel and the slerp weights as polynomials are in
:mod:`ppfr.templates.kernel`.

Numerics. Where :math:`\sin \theta_g` is tiny (:math:`\hat t_g \approx \pm \hat k_g`, a
measure-zero event for Gaussian keys) the slerp weights are replaced by their limits
:math:`(1-\alpha_g, \alpha_g)` of the linear interpolation, and every normalisation divides
by a norm clamped away from zero, so outputs are always finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ppfr.errors import InputError
from ppfr.templates._checks import EPS as _EPS
from ppfr.templates._checks import check_matrix as _check_matrix
from ppfr.templates.index import SlerpFaceIndex

__all__ = [
    "SlerpFace",
    "SlerpFaceConfig",
    "expected_unrelated_score",
    "group_weights_from_templates",
]

_SIN_EPS = 1e-6  # below this sin(theta), slerp falls back to its linear-interpolation limit


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
