"""The viewing attack: look at the protected representation itself as if it were a face.

Brief, section 4: the protected representation, shown as an image, must show nothing
recognisable, neither to a person (SSIM/PSNR against the original) nor to a standard face
recognizer (identity leakage measured by the independent judge).

How a representation becomes an image (the *view*), in order of precedence:

1. If the model defines ``view(p)`` it is used: it must map a batch of representations to
   (N, 3, 112, 112) images in [0, 1]. Methods whose representation is not an image
   (PartialFace's 27 channels of DCT coefficients, DCTDP's 189) define it, choosing the
   natural picture of their data (for example decoding the coefficients with ``d``).
2. A 3-channel representation is an image already: it is mapped from the model's
   ``representation_range`` to [0, 1] (ArcFace: the face itself; MinusFace: X_p).
3. A 3n-channel representation made of ``n`` stacked images shows its first 3 channels,
   mapped the same way; every group of 3 is an equally protected image, so the first
   stands for all. A method says its representation is stacked images through its config's
   ``shuffles = n`` (MinusFace with ``n`` stacked shuffles); a channel count that merely
   divides by 3 is not enough (PartialFace's 27 and DCTDP's 189 channels do, and are DCT
   coefficients, not pictures).
4. Anything else raises :class:`~ppfr.errors.InputError`, asking the method for a ``view``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppfr.attacks import register_attack
from ppfr.attacks.metrics import psnr_per_image, ssim_per_image, to_unit_range
from ppfr.errors import InputError
from ppfr.methods.base import check_faces

#: PSNR of a view identical to its face is infinite; reports cap it here to stay JSON-safe
PSNR_CAP = 100.0
FACE_SHAPE = (3, 112, 112)


@register_attack("viewing")
class ViewingAttack:
    """Shows the protected representation as an image and scores it against the face.

    Args:
        batch_size: faces protected at a time (bounds memory for frequency methods).
    """

    name = "viewing"

    def __init__(self, batch_size: int = 16) -> None:
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)

    # ---- the view
    def view_representation(self, model: Any, p: Tensor) -> Tensor:
        """Protected representations (N, C, 112, 112) -> images (N, 3, 112, 112) in [0, 1]."""
        custom = getattr(model, "view", None)
        if callable(custom):
            v = custom(p)
        else:
            stacked = getattr(getattr(model, "config", None), "shuffles", 1)
            if p.ndim != 4 or p.shape[1] not in (3, 3 * stacked):
                raise InputError(
                    f"the viewing attack cannot show a {getattr(model, 'name', 'model')} "
                    f"representation of shape {tuple(p.shape[1:])} as an image: the method "
                    "needs a view(p) method returning (N, 3, 112, 112) images in [0, 1]"
                )
            lo_hi = getattr(model, "representation_range", (0.0, 1.0))
            v = to_unit_range(p[:, :3].float(), lo_hi)
        if not isinstance(v, Tensor) or v.ndim != 4 or tuple(v.shape[1:]) != FACE_SHAPE:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise InputError(f"a view must be an (N, 3, 112, 112) tensor, got {got}")
        return v.clamp(0.0, 1.0)

    @torch.no_grad()
    def view(self, model: Any, faces: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Protect ``faces`` ((N, 3, 112, 112) in [-1, 1]) and show each as an image.

        Returns (N, 3, 112, 112) float32 on the CPU, in [0, 1]. The model runs in eval mode
        (its mode is restored afterwards).
        """
        faces = check_faces(faces, "viewing attack")
        device = getattr(model, "device", torch.device("cpu"))
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()
        try:
            views = [
                self.view_representation(
                    model, model.protect(faces[i : i + self.batch_size].to(device), generator)
                )
                .float()
                .cpu()
                for i in range(0, len(faces), self.batch_size)
            ]
        finally:
            if was_training:
                model.train()
        if not views:
            return torch.empty(0, *FACE_SHAPE)
        return torch.cat(views)

    # ---- the scores
    def run(
        self,
        model: Any,
        faces: Tensor,
        labels: Any,
        *,
        seed: int = 0,
        judge: Any = None,
    ) -> dict[str, Any]:
        """Score the views of ``faces`` (identities ``labels``); JSON-friendly dict.

        Keys: ``ssim`` and ``psnr`` (mean over faces, view vs its own face in [0, 1]; PSNR
        capped at :data:`PSNR_CAP`), ``leakage`` (the judge's verification accuracy on
        balanced (view of A, original of B) pairs, threshold cross-validated; 0.5 is
        chance), ``rank1`` (views of all but the first face of each identity as probes,
        the originals of those first faces as the gallery), plus ``attack``, ``method``,
        ``n`` and ``seed``. ``seed`` seeds the method's per-image randomness and the pairs.
        """
        faces = check_faces(faces, "viewing attack")
        labels = np.asarray(labels).ravel()
        if len(labels) != len(faces):
            raise InputError(f"{len(faces)} faces but {len(labels)} labels")
        if judge is None:
            from ppfr.judge import get_judge

            judge = get_judge()
        views = self.view(model, faces, torch.Generator().manual_seed(int(seed)))
        originals = to_unit_range(faces.detach().float().cpu(), (-1.0, 1.0))

        ssims = ssim_per_image(views, originals)
        psnrs = np.minimum(psnr_per_image(views, originals), PSNR_CAP)

        # embed once; leakage and rank1 accept precomputed embeddings
        e_view = judge.embed(views, value_range=(0.0, 1.0))
        e_orig = judge.embed(faces, value_range=(-1.0, 1.0))
        leakage = judge.leakage(e_view, e_orig, labels, seed=int(seed))

        _, first = np.unique(labels, return_index=True)
        probe = np.setdiff1d(np.arange(len(labels)), first)
        rank1 = (
            judge.rank1(e_view[probe], labels[probe], e_orig[first], labels[first])
            if len(probe) and len(first) > 1
            else math.nan
        )
        return {
            "attack": self.name,
            "method": str(getattr(model, "name", type(model).__name__)),
            "n": int(len(faces)),
            "seed": int(seed),
            "ssim": float(np.mean(ssims)),
            "psnr": float(np.mean(psnrs)),
            "leakage": float(leakage),
            "rank1": float(rank1),
        }


__all__ = ["PSNR_CAP", "ViewingAttack"]
