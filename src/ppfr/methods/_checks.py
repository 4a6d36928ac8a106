"""Input checks of the model API: the faces ``protect`` takes, the representations ``embed``
takes. Each raises :class:`~ppfr.errors.InputError` with what was expected and what came."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ppfr.errors import InputError


def check_faces(x: Any, what: str = "protect") -> Tensor:
    """Validate a batch of aligned faces: float (B, 3, 112, 112) in [-1, 1]."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what}: expected a torch.Tensor of faces, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{what}: expected float faces in [-1, 1], got {x.dtype} "
            "(convert uint8 images with ppfr.data.images.to_tensor)"
        )
    if x.ndim != 4 or x.shape[1:] != (3, 112, 112):
        raise InputError(f"{what}: expected faces of shape (B, 3, 112, 112), got {tuple(x.shape)}")
    check_range(x, -1.0, 1.0, what)
    return x


def check_range(x: Tensor, lo: float, hi: float, what: str) -> None:
    if x.numel() == 0:
        return
    vmin, vmax = torch.aminmax(x.detach())
    if not (torch.isfinite(vmin) and torch.isfinite(vmax)):
        raise InputError(f"{what}: input contains NaN or infinite values")
    tol = 1e-3 * (hi - lo)
    if vmin < lo - tol or vmax > hi + tol:
        raise InputError(
            f"{what}: values must be in [{lo:g}, {hi:g}], "
            f"got [{float(vmin):.4g}, {float(vmax):.4g}]"
        )


def check_representation(
    p: Any,
    method: str,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None,
    what: str = "embed",
    layout: str = "",
) -> Tensor:
    """Validate a batch of ``method``'s protected representations: float (B, *shape), finite,
    and within ``value_range`` (None: any finite value). ``layout``, when given, says in the
    shape error how the values are arranged (DuetFace's packed rows)."""
    if not isinstance(p, Tensor) or not p.is_floating_point():
        got = p.dtype if isinstance(p, Tensor) else type(p).__name__
        raise InputError(f"{what}: expected a float tensor, got {got}")
    if p.ndim != len(shape) + 1 or tuple(p.shape[1:]) != tuple(shape):
        note = f" ({layout})" if layout else ""
        raise InputError(
            f"{what}: {method} expects representations of shape "
            f"(B, {', '.join(map(str, shape))}){note}, "
            f"got {tuple(p.shape)}"
        )
    if value_range is None:
        check_range(p, -math.inf, math.inf, what)
    else:
        check_range(p, *value_range, what)
    return p
