r"""SlerpFace's streamed matching: :class:`SlerpFaceIndex`.

Matching one query against many stored templates needs, per group, only inner products of
the query with arrays fixed at enrolment. With :math:`c_g = \hat q_g \cdot \hat k_g`,
:math:`\theta_g = \arccos c_g` and the slerp weights scaled by :math:`\sin\theta_g` (the
score is invariant to a common positive scale of both), :math:`u = \sin((1-\alpha_g)\theta_g)`,
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

The weights :math:`u, v` are evaluated as polynomials in :math:`t = \cos(\theta_g/2)` by the
fused kernel (:mod:`ppfr.templates.kernel` derives them); the eager torch path
(:meth:`SlerpFaceIndex._finish`) uses the ratio :math:`v / u` directly. The direct form this
streams, and the notation, are in :mod:`ppfr.templates.slerpface`.

Numerics. The streamed form reaches the direct form's linear-interpolation limit without a
branch at :math:`\theta_g \to 0` (the ratio :math:`u : v \to (1-\alpha_g) : \alpha_g`;
:math:`\theta_g` is floored at :data:`_THETA_MIN`, which moves the ratio by about
:math:`10^{-9}`), and takes the linear weights where :math:`c_g = -1` exactly, as the direct
form does. The fused kernel takes the same exact fallback for every column where a group has
:math:`|c_g| > 1` (the nudged aligned or opposite key) or a vanishing denominator: the square
roots make those NaN.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ppfr.errors import InputError
from ppfr.templates import kernel as _kernel
from ppfr.templates._checks import check_matrix as _check_matrix

if TYPE_CHECKING:
    from ppfr.templates.slerpface import SlerpFace

__all__ = ["SlerpFaceIndex"]

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
#: bound on the interpolation error, relative to |(U, V)|, checked at construction
_FIT_TOL = 1e-7


class SlerpFaceIndex:
    r"""Protected templates and their keys, laid out so that a query streams them once.

    Per stored template and group :math:`g` it keeps four arrays of ``group_size`` values,
    the unit key :math:`\hat k_g`, the masked unit key :math:`M_g \odot \hat k_g`, the
    protected template :math:`p_g` and the keep mask :math:`M_g` (0/1), and two scalars,
    :math:`\hat k_g \cdot p_g` and :math:`\lVert M_g \odot \hat k_g \rVert^2`.

    Scoring. With ``kernel="numba"`` (the default where numba is installed), one compiled
    loop per call (:func:`ppfr.templates.kernel._stream_scores_py`) streams each block once:
    per group slab it accumulates the four products for a column range of the block from
    eight stored rows at a time, then, while they are still in L1, finishes the group's
    scores with the slerp weights as polynomials in :math:`t = \sqrt{(1 + c_g)/2}`
    (:mod:`ppfr.templates.kernel`): a square root, two Horner chains, a second square root
    and a division, all vectorised, instead of the eager passes below. float16 blocks are
    widened in the same loop (F16C), so no widened copy exists at all. ``kernel="torch"`` (or
    no numba) scores as follows.

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
        self.n = 0
        g, s, c = sf.num_groups, sf.group_size, self.block
        nb = -(-int(p.shape[0]) // c)
        self.blocks = torch.zeros(nb, g, s, len(_ARRAYS) * c, dtype=dtype)
        self.scalars = torch.zeros(nb, 2, g, c, dtype=torch.float32)
        # zero-padded columns of the last block: |Mk|^2 = 1 keeps their denominator
        # positive, so they score 0 instead of 0 / 0 (which would send the block's last
        # columns to the slow exact path on every query)
        self.scalars[:, 1] = 1.0
        self._fill(p, k)
        # (1 - alpha_g, alpha_g), shaped to broadcast over (2, G, m, columns)
        self._uv_fractions = torch.stack([1.0 - sf.alphas, sf.alphas]).view(2, g, 1, 1)
        # the fused kernel's polynomials; fit_error is their worst error relative to the
        # exact weights (about 1e-9; above _FIT_TOL, which no alpha_g in [0, 1] reaches,
        # the index would score with torch)
        self._coef, self.fit_error = _kernel.slerp_weight_polynomials(sf.alphas)
        if kernel != "torch" and (self.fit_error > _FIT_TOL or _kernel.fused_kernel() is None):
            if kernel == "numba":
                why = _kernel.FUSED.error or f"polynomial error {self.fit_error:.1e}"
                raise InputError(f"the numba kernel is unavailable here: {why}")
            kernel = "torch"
        self.kernel: str = kernel or "numba"

    def __len__(self) -> int:
        return self.n

    @property
    def capacity(self) -> int:
        """Templates the allocated blocks hold before :meth:`append` must grow them."""
        return self.blocks.shape[0] * self.block

    def append(self, protected: Any, keys: Any) -> None:
        """Add templates after the last one, in place: their scores are columns ``n`` onward.

        Rows go into the last block's free columns, then into new blocks. When the
        allocated blocks are full they grow by half (at least the blocks needed), so a
        series of appends copies each stored byte O(1) times overall. Scores of the rows
        already held do not change, and a caller scoring ``rows=slice(0, n_before)`` while
        this runs reads only rows that were complete before it began.

        Shape:
            protected, keys: ``(k, dim)``.
        """
        p = _check_matrix(protected, self.sf.dim, "protected templates").detach().cpu()
        k = _check_matrix(keys, self.sf.dim, "keys").detach().cpu()
        if p.shape[0] != k.shape[0]:
            raise InputError(
                f"need one key per protected template, got {p.shape[0]} templates "
                f"and {k.shape[0]} keys"
            )
        need = -(-(self.n + p.shape[0]) // self.block)
        nb = self.blocks.shape[0]
        if need > nb:
            grow = max(need, nb + -(-nb // 2))
            blocks = torch.zeros(grow, *self.blocks.shape[1:], dtype=self.dtype)
            scalars = torch.zeros(grow, *self.scalars.shape[1:], dtype=torch.float32)
            scalars[:, 1] = 1.0  # the padding convention of __init__
            blocks[:nb] = self.blocks
            scalars[:nb] = self.scalars
            # readers that already hold the old tensors keep reading them; new calls see
            # the grown ones, whose first n rows are identical
            self.blocks, self.scalars = blocks, scalars
        self._fill(p, k)

    def _fill(self, p: Tensor, k: Tensor) -> None:
        """Write rows ``p``, ``k`` (validated float32) at positions ``n`` onward; bump ``n``."""
        sf, c = self.sf, self.block
        start, end = self.n, self.n + int(p.shape[0])
        for b in range(start // c, -(-end // c)):
            lo, hi = max(start, b * c), min(end, (b + 1) * c)  # rows of block b
            a, z = lo - b * c, hi - b * c  # their columns in it
            kb, pb = k[lo - start : hi - start], p[lo - start : hi - start]
            k_hat = sf._unit(sf._groups(kb))  # (rows, G, s)
            mask = sf._keep_mask(kb).float()
            masked = k_hat * mask
            pg = sf._groups(pb)
            nudged = k_hat * (1.0 + _KEY_NUDGE)  # only for the cosine, see _finish
            for j, arr in enumerate((nudged, masked, pg, mask)):
                self.blocks[b, :, :, j * c + a : j * c + z] = arr.permute(1, 2, 0)
            self.scalars[b, 0, :, a:z] = (k_hat * pg).sum(-1).T
            self.scalars[b, 1, :, a:z] = (masked * masked).sum(-1).T
        self.n = end

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
        kernel = _kernel.fused_kernel()
        if kernel is None:  # kernel="numba" set by hand where it is unavailable
            raise InputError(f"the numba kernel is unavailable here: {_kernel.FUSED.error}")
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

        Rotates the query with each stored unit key
        (:meth:`~ppfr.templates.slerpface.SlerpFace._slerp`, which takes the linear limit
        where sin(theta) vanishes), masks, renormalises and takes the dot
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
