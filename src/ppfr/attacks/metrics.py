"""Image similarity metrics for privacy scoring: SSIM and PSNR on batches of faces.

Both take two batches of images shaped (N, 3, H, W) (or one (3, H, W) image), float in
[0, 1], as torch tensors or numpy arrays, and compare image ``i`` of ``a`` with image
``i`` of ``b``. They wrap scikit-image's ``structural_similarity`` (colour axis last,
``data_range=1.0``, default 7x7 uniform window) and ``peak_signal_noise_ratio``
(``data_range=1.0``); the batch score is the mean of the per-image scores.

PSNR of two identical images is infinite (zero error); :func:`psnr` returns ``inf`` then,
and callers that need finite numbers (JSON reports) cap it themselves.

>>> import numpy as np
>>> a = np.full((1, 3, 16, 16), 0.2)
>>> round(psnr(a, a + 0.1), 6)
20.0
>>> ssim(a, a)
1.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ppfr.errors import InputError

#: values may overshoot [0, 1] by this much (float rounding) before being refused
_SLACK = 1e-3
#: scikit-image's default SSIM window; images must be at least this large
_MIN_SIDE = 7


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what}: expected float images in [0, 1], got {x.dtype}")
    return x.astype(np.float64, copy=False)


def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_numpy(a, "first batch"), _as_numpy(b, "second batch")
    if a.ndim == 3:
        a = a[None]
    if b.ndim == 3:
        b = b[None]
    for x, what in ((a, "first batch"), (b, "second batch")):
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"{what}: expected images of shape (N, 3, H, W), got {x.shape}")
        if min(x.shape[2:]) < _MIN_SIDE:
            raise InputError(f"{what}: images must be at least {_MIN_SIDE}x{_MIN_SIDE} for SSIM")
        if x.size and not np.isfinite(x).all():
            raise InputError(f"{what}: images contain NaN or infinite values")
        if x.size and (x.min() < -_SLACK or x.max() > 1 + _SLACK):
            raise InputError(
                f"{what}: values must be in [0, 1], got [{x.min():.4g}, {x.max():.4g}] "
                "(map them with to_unit_range first)"
            )
    if a.shape != b.shape:
        raise InputError(f"the two batches differ in shape: {a.shape} and {b.shape}")
    if len(a) == 0:
        raise InputError("need at least one image to compare")
    return np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)


def to_unit_range(x: Any, value_range: tuple[float, float]) -> Any:
    """Map values from ``value_range = (lo, hi)`` to [0, 1] (clipped); tensors stay tensors.

    >>> to_unit_range(np.array([-1.0, 0.0, 1.0]), (-1, 1)).tolist()
    [0.0, 0.5, 1.0]
    """
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise InputError(f"value_range must be (low, high) with low < high, got {value_range}")
    y = (x - lo) / (hi - lo)
    return y.clamp(0.0, 1.0) if hasattr(y, "clamp") else np.clip(y, 0.0, 1.0)


def ssim_per_image(a: Any, b: Any) -> np.ndarray:
    """SSIM of each pair of images, float64 (N,); 1 means identical."""
    from skimage.metrics import structural_similarity

    a, b = _check_pair(a, b)
    return np.array(
        [
            structural_similarity(
                x.transpose(1, 2, 0), y.transpose(1, 2, 0), channel_axis=-1, data_range=1.0
            )
            for x, y in zip(a, b, strict=True)
        ],
        dtype=np.float64,
    )


def psnr_per_image(a: Any, b: Any) -> np.ndarray:
    """PSNR in dB of each pair of images, float64 (N,); ``inf`` where they are identical."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _check_pair(a, b)
    out = np.empty(len(a), np.float64)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        # zero error: skimage would divide by zero (with a warning); the answer is inf
        out[i] = math.inf if np.array_equal(x, y) else peak_signal_noise_ratio(x, y, data_range=1.0)
    return out


def ssim(a: Any, b: Any) -> float:
    """Mean SSIM over the batch (images in [0, 1], (N, 3, H, W))."""
    return float(np.mean(ssim_per_image(a, b)))


def psnr(a: Any, b: Any) -> float:
    """Mean PSNR in dB over the batch (images in [0, 1]); ``inf`` if any pair is identical."""
    return float(np.mean(psnr_per_image(a, b)))


__all__ = ["psnr", "psnr_per_image", "ssim", "ssim_per_image", "to_unit_range"]
