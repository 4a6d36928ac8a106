r"""The compiled SlerpFace scoring kernel, and the slerp weights as polynomials.

Per group, :math:`\alpha_g` is fixed, so the weights are
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
block then does the four products and this finish
(:meth:`~ppfr.templates.index.SlerpFaceIndex.scores`).


The kernel (:func:`_stream_scores_py`, compiled by numba on first use through
:class:`~ppfr._jit.LazyKernel`) is what :class:`~ppfr.templates.index.SlerpFaceIndex` runs
by default; where numba is missing or fails, the index scores with torch instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from ppfr._jit import LazyKernel

__all__ = ["FUSED", "fused_kernel", "slerp_weight_polynomials"]

#: degree of the Chebyshev interpolants of the slerp weights U_g(t), V_g(t) (module
#: docstring); the fused kernel spells out Horner's rule for exactly this degree
_POLY_DEGREE = 10


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

    Only ever run compiled (:func:`fused_kernel` binds the two intrinsics it calls).
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
FUSED = LazyKernel(_compile_fused)


def fused_kernel() -> Any:
    """The compiled kernel, or None where numba is missing or fails (``FUSED.error``)."""
    return FUSED.get()
