"""Shared scoring of attack outputs: images that stand for faces, against the faces.

Every attack ends the same way: SSIM and PSNR of its image against the original face, the
judge's identity leakage on balanced (attack image of A, original of B) pairs, and rank-1
identification of attack images against a gallery of originals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from torch import Tensor

from ppfr.attacks.metrics import psnr_per_image, ssim_per_image, to_unit_range
from ppfr.errors import InputError
from ppfr.judge import get_judge
from ppfr.methods._checks import check_faces

#: PSNR of an image identical to its face is infinite; reports cap it here to stay JSON-safe
PSNR_CAP = 100.0


def check_labels(faces: Tensor, labels: Any, what: str) -> np.ndarray:
    faces = check_faces(faces, what)
    labels = np.asarray(labels).ravel()
    if len(labels) != len(faces):
        raise InputError(f"{what}: {len(faces)} faces but {len(labels)} labels")
    return labels


def score_images(
    images: Tensor, faces: Tensor, labels: np.ndarray, *, seed: int, judge: Any = None
) -> dict[str, float]:
    """Score attack ``images`` ((N, 3, 112, 112) in [0, 1]) against ``faces`` (in [-1, 1]).

    Returns ``ssim``, ``psnr`` (means over faces, PSNR capped at :data:`PSNR_CAP`),
    ``leakage`` (judge verification accuracy on balanced (image of A, original of B) pairs,
    threshold cross-validated; 0.5 is chance) and ``rank1`` (images of all but the first face
    of each identity as probes, the originals of those first faces as the gallery).
    """
    if judge is None:
        judge = get_judge()
    images = images.detach().float().cpu().clamp(0.0, 1.0)
    ssim, psnr = _pixel_scores(images, faces)

    # embed once; leakage and rank1 accept precomputed embeddings
    e_img = judge.embed(images, value_range=(0.0, 1.0))
    e_orig = judge.embed(faces, value_range=(-1.0, 1.0))
    leakage = judge.leakage(e_img, e_orig, labels, seed=int(seed))
    _, first = np.unique(labels, return_index=True)
    probe = np.setdiff1d(np.arange(len(labels)), first)
    rank1 = (
        judge.rank1(e_img[probe], labels[probe], e_orig[first], labels[first])
        if len(probe) and len(first) > 1
        else math.nan
    )
    return {
        "ssim": ssim,
        "psnr": psnr,
        "leakage": float(leakage),
        "rank1": float(rank1),
    }


def average_face_scores(aux: Tensor, faces: Tensor) -> dict[str, float]:
    """SSIM and PSNR of the attacker's average face against each of ``faces``, averaged.

    The floor of an inversion attack: an inverter that learns nothing from the protected
    representation still outputs roughly the mean of the faces it was trained on (the L1
    minimiser is their median, a close neighbour), and aligned faces share enough layout
    that this scores far above zero. A reconstruction is only informative by how far it
    rises above this floor (docs/privacy.md). Both tensors are (N, 3, 112, 112) in [-1, 1].

    Returns ``floor_ssim`` and ``floor_psnr`` (capped at :data:`PSNR_CAP`).
    """
    aux = check_faces(aux, "average face (attacker's faces)")
    faces = check_faces(faces, "average face (victims)")
    mean = to_unit_range(aux.detach().float().cpu(), (-1.0, 1.0)).mean(0, keepdim=True)
    ssim, psnr = _pixel_scores(mean.expand(len(faces), -1, -1, -1).contiguous(), faces)
    return {"floor_ssim": ssim, "floor_psnr": psnr}


def _pixel_scores(images: Tensor, faces: Tensor) -> tuple[float, float]:
    """Mean SSIM and mean PSNR (capped at :data:`PSNR_CAP`) of ``images`` in [0, 1] against
    ``faces`` in [-1, 1]."""
    originals = to_unit_range(faces.detach().float().cpu(), (-1.0, 1.0))
    psnrs = np.minimum(psnr_per_image(images, originals), PSNR_CAP)
    return float(np.mean(ssim_per_image(images, originals))), float(np.mean(psnrs))


def method_name(model: Any) -> str:
    return str(getattr(model, "name", type(model).__name__))


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Run ``model`` in eval mode (batch-norm statistics untouched), restoring its mode after."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()
