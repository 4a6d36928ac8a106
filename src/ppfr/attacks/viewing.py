"""The viewing attack: look at the protected representation itself as if it were a face.

The protected representation, shown as an image, must show nothing recognisable, neither to
a person (SSIM/PSNR against the original) nor to a standard face recognizer (identity
leakage measured by the independent judge); docs/privacy.md has the threat model.

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

from typing import Any

import torch
from torch import Tensor

from ppfr.attacks._registry import register_attack
from ppfr.attacks._scoring import (
    PSNR_CAP,
    check_labels,
    eval_mode,
    method_name,
    score_images,
)
from ppfr.attacks.base import Attack, ViewingReport
from ppfr.attacks.metrics import to_unit_range
from ppfr.errors import InputError
from ppfr.methods._checks import check_faces

FACE_SHAPE = (3, 112, 112)


@register_attack("viewing")
class ViewingAttack(Attack):
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
        with eval_mode(model):
            views = [
                self.view_representation(
                    model, model.protect(faces[i : i + self.batch_size].to(device), generator)
                )
                .float()
                .cpu()
                for i in range(0, len(faces), self.batch_size)
            ]
        if not views:
            return torch.empty(0, *FACE_SHAPE)
        return torch.cat(views)

    # ---- the scores
    def run(
        self,
        model: Any,
        victims: Tensor,
        labels: Any,
        *,
        aux: Tensor | None = None,
        aux_labels: Any = None,
        seed: int = 0,
        judge: Any = None,
    ) -> ViewingReport:
        """Score the views of ``victims`` (identities ``labels``).

        The report (:class:`~ppfr.attacks.base.ViewingReport`) has ``ssim``, ``psnr``,
        ``leakage`` and ``rank1`` (see :func:`ppfr.attacks._scoring.score_images`), plus
        ``attack``, ``method``, ``n`` and ``seed``. ``seed`` seeds the method's per-image
        randomness and the pairs. ``aux`` and ``aux_labels`` (the attacker's own faces) are
        accepted for the uniform attack API (:class:`~ppfr.attacks.base.Attack`) and not
        needed.
        """
        labels = check_labels(victims, labels, "viewing attack")
        views = self.view(model, victims, torch.Generator().manual_seed(int(seed)))
        scores = score_images(views, victims, labels, seed=seed, judge=judge)
        return ViewingReport(
            attack=self.name,
            method=method_name(model),
            n=int(len(victims)),
            seed=int(seed),
            **scores,
        )


__all__ = ["PSNR_CAP", "ViewingAttack"]
