r"""ISO/IEC 24745 properties of protected templates: unlinkability, renewability.

Unlinkability (Gomez-Barrero et al., "General Framework to Evaluate Unlinkability in
Biometric Template Protection Systems", IEEE TIFS 2018). Two protected templates are
compared with some score :math:`s` (the system's own comparator, or whatever an adversary
uses). *Mated* pairs come from the same person protected under different keys (two
databases, or a template and its renewal), *non-mated* pairs from different persons. With
:math:`\mathrm{LR}(s) = p(s \mid H_m) / p(s \mid H_{nm})` and the prior ratio
:math:`\omega = p(H_m) / p(H_{nm})`, the local measure is

.. math:: D_\leftrightarrow(s) = p(H_m \mid s) - p(H_{nm} \mid s)
          = \frac{\omega\,\mathrm{LR}(s) - 1}{\omega\,\mathrm{LR}(s) + 1}
          \quad\text{where } \omega\,\mathrm{LR}(s) > 1,\ 0 \text{ elsewhere}

(how much more likely a pair scoring :math:`s` is mated than not), and the global one

.. math:: D^{\mathrm{sys}}_\leftrightarrow = \int D_\leftrightarrow(s)\, p(s \mid H_m)\, ds

in [0, 1]: 0 when mated and non-mated scores are distributed alike (fully unlinkable), 1
when they never overlap (fully linkable). The paper's default is :math:`\omega = 1`.

How it is computed here. Both score densities are Gaussian kernel density estimates (Scott's
bandwidth, the larger of the two samples' so neither is over-sharp) on a common grid that
covers every score plus three bandwidths; :math:`D_\leftrightarrow` is evaluated as
:math:`(\omega p_m - p_{nm}) / (\omega p_m + p_{nm})`, which equals the LR form and stays
finite where :math:`p_{nm} = 0`; the integral is a Riemann sum over the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ppfr.errors import InputError

__all__ = ["Unlinkability", "kde", "unlinkability"]

_TINY = 1e-300  # density below which the local measure is set to 0 (no pairs score there)


@dataclass(frozen=True)
class Unlinkability:
    """Result of :func:`unlinkability`.

    Attributes:
        d_sys: global measure :math:`D^{\\mathrm{sys}}_\\leftrightarrow` in [0, 1].
        grid: score values the densities were evaluated at, (B,).
        local: :math:`D_\\leftrightarrow(s)` on the grid, (B,).
        mated_density, nonmated_density: the two estimated densities on the grid, (B,).
        omega: the prior ratio used.
    """

    d_sys: float
    grid: np.ndarray
    local: np.ndarray
    mated_density: np.ndarray
    nonmated_density: np.ndarray
    omega: float

    def to_dict(self) -> dict[str, Any]:
        return {"d_sys": self.d_sys, "omega": self.omega, "max_local": float(self.local.max())}


def _scores(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64).ravel()
    if a.size < 2:
        raise InputError(f"{what}: need at least two scores, got {a.size}")
    if not np.isfinite(a).all():
        raise InputError(f"{what}: scores contain NaN or infinite values")
    return a


def _scott(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) * len(a) ** (-1 / 5)


def kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel density of ``samples`` on ``grid`` (blocked so memory stays small).

    Shape:
        samples ``(n,)``, grid ``(B,)`` -> ``(B,)``.
    """
    out = np.zeros(len(grid))
    norm = 1.0 / (len(samples) * bandwidth * np.sqrt(2 * np.pi))
    for lo in range(0, len(samples), 4096):
        z = (grid[:, None] - samples[None, lo : lo + 4096]) / bandwidth
        out += np.exp(-0.5 * z * z).sum(1)
    return out * norm


def unlinkability(
    mated: Any, nonmated: Any, *, omega: float = 1.0, bins: int = 2048
) -> Unlinkability:
    """:math:`D^{\\mathrm{sys}}_\\leftrightarrow` from mated and non-mated comparison scores.

    Args:
        mated: scores of same-person pairs protected under different keys, (n_m,).
        nonmated: scores of different-person pairs, (n_nm,).
        omega: prior ratio p(mated) / p(non-mated); 1 is the paper's default.
        bins: grid points for the density estimates.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(0, 1, 4000), rng.normal(0, 1, 4000)
    >>> unlinkability(a, b).d_sys < 0.1
    True
    >>> unlinkability(a + 20, b).d_sys > 0.99
    True
    """
    m = _scores(mated, "mated scores")
    nm = _scores(nonmated, "non-mated scores")
    if not (np.isfinite(omega) and omega > 0):
        raise InputError(f"omega must be a positive number, got {omega!r}")
    if int(bins) < 16:
        raise InputError(f"bins must be at least 16, got {bins!r}")
    spread = max(np.ptp(m), np.ptp(nm), 1e-12)
    # a constant sample would give a zero bandwidth; floor it at a tiny fraction of the range
    h = max(_scott(m), _scott(nm), 1e-3 * spread, 1e-12)
    lo = min(m.min(), nm.min()) - 3 * h
    hi = max(m.max(), nm.max()) + 3 * h
    grid = np.linspace(lo, hi, int(bins))
    step = grid[1] - grid[0]
    pm = kde(m, grid, h)
    pnm = kde(nm, grid, h)
    # renormalise on the grid so both integrate to 1 despite discretisation
    pm /= pm.sum() * step
    pnm /= pnm.sum() * step
    num, den = omega * pm - pnm, omega * pm + pnm
    local = np.where((num > 0) & (den > _TINY), num / np.maximum(den, _TINY), 0.0)
    d_sys = float(np.clip((local * pm).sum() * step, 0.0, 1.0))
    return Unlinkability(d_sys, grid, local, pm, pnm, float(omega))
