"""Reading and converting face images.

Faces travel through ppfr as float tensors of shape (B, 3, 112, 112) in [-1, 1]
(``(x/255 - 0.5) / 0.5``), RGB. Files are read with Pillow; every failure is a
:class:`~ppfr.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ppfr.errors import DataError, InputError

FACE_SIZE = 112
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")


def _decode(src: Path | bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{name}: cannot read image ({e})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8, shape (H, W, 3)."""
    return _decode(Path(path), str(path))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) as RGB uint8, shape (H, W, 3)."""
    return _decode(bytes(data), name)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    return torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(3, H, W) float tensor in ``value_range`` -> RGB uint8 (H, W, 3)."""
    lo, hi = value_range
    y = (x.detach().float().cpu() - lo) / (hi - lo)
    return (y.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def load_face(path: str | Path) -> torch.Tensor:
    """Read an aligned 112x112 face file as (3, 112, 112) float32 in [-1, 1]."""
    img = read_image(path)
    if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
        raise DataError(
            f"{path}: expected an aligned {FACE_SIZE}x{FACE_SIZE} face, got "
            f"{img.shape[1]}x{img.shape[0]} (align it first with `ppfr align`)"
        )
    return to_tensor(img)


def save_image(img: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 (H, W, 3) image; the format follows the suffix."""
    Image.fromarray(img).save(path)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
