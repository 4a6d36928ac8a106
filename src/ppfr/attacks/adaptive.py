r"""An adaptive attack on per-call randomness: order-invariant statistics over many views.

The published recovery attack inverts one protected representation. MinusFace's protection
rests on the channel order :math:`\theta` being unknown and drawn anew for every call; but
the same face protected many times gives many views, and the *average* over orders does not
depend on any one order: since :math:`d` is linear (up to its final clamp),

.. math:: \mathbb{E}_\theta\, d(\mathrm{shuffle}_\theta(r)) = d(\bar r\,\mathbf{1}^\top),
          \qquad \bar r(i, j) = \tfrac{1}{192}\textstyle\sum_c r_c(i, j),

a fixed function of the residue, and the per-pixel spread across views is another. The same
holds for PartialFace's random subset choice and for DCTDP's Laplace noise, which averages
away. This attack sees ``views`` protections of each face, reduces them to per-element
mean and standard deviation over the views (invariant to the order in which the views, or
the channels within each, were drawn), and trains the recovery attack's inverter on those.

When does an attacker get many views of one face? A client that re-protects on every retry
or every frame of a video, a replayed enrolment, and MinusFace's own ``shuffles = n``
variant, which stacks ``n`` independent shuffles of one residue into a single message: each
stacked image counts as a view. With ``views = 1`` and no stacking this attack reduces to
the recovery attack (the spread is zero).

Example:
    >>> from ppfr.attacks import create_attack
    >>> attack = create_attack("adaptive", views=8, width=16, epochs=20)
    >>> report = attack.run(model, victims, labels, aux=own_faces)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ppfr.attacks._inversion import InversionAttack, inversion_input
from ppfr.attacks._registry import register_attack
from ppfr.errors import InputError


def stacked_views(model: Any, x: Tensor) -> Tensor:
    """Split one representation's inverter input into its stacked views: (N, n, C/n, H, W).

    A method whose representation stacks ``n`` equally protected images says so with its
    config's ``shuffles = n`` (MinusFace); otherwise ``n = 1``.
    """
    n = int(getattr(getattr(model, "config", None), "shuffles", 1) or 1)
    if x.shape[1] % n:
        n = 1
    return x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:])


@register_attack("adaptive")
class AdaptiveAttack(InversionAttack):
    """Invert order-invariant statistics of several protections of each face.

    Args:
        views: protections of each face the attacker observes (each a fresh call).
        **kwargs: inverter settings, as for :class:`~ppfr.attacks.recovery.RecoveryAttack`.
    """

    name = "adaptive"

    def __init__(self, views: int = 8, **kwargs: Any) -> None:
        if int(views) < 1:
            raise InputError(f"views must be at least 1, got {views}")
        super().__init__(**kwargs)
        self.views = int(views)

    def features(self, model: Any, faces: Tensor, generator: torch.Generator) -> Tensor:
        v = torch.cat(
            [
                stacked_views(model, inversion_input(model, model.protect(faces, generator)))
                for _ in range(self.views)
            ],
            dim=1,
        )
        std = v.std(dim=1, unbiased=False)
        return torch.cat([v.mean(dim=1), std], dim=1)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "views": self.views}


__all__ = ["AdaptiveAttack", "stacked_views"]
