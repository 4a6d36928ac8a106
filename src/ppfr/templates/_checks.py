"""Input checks shared by the SlerpFace scheme and its index."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppfr.errors import InputError

EPS = 1e-12  # floor of every norm we divide by


def check_matrix(x: Any, dim: int, what: str) -> Tensor:
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
