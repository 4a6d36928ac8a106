"""The recovery attack: learn to invert the client's protection (docs/privacy.md).

The published attack. The attacker knows the method and holds the client bundle, so it can
protect faces of its own, but it does not know the per-image randomness of the victims'
protections (MinusFace's channel order, PartialFace's subset, DCTDP's noise). It protects
its own faces (auxiliary identities, disjoint from the victims), drawing fresh randomness
every epoch, and trains a U-Net inverter with an L1 loss on (protected, original) pairs;
then it inverts the victims' protected representations.

Scores: SSIM and PSNR of the reconstruction against the victim's face, identity leakage
(the judge's verification accuracy on (reconstruction of A, original of B) pairs, 50% is
chance) and rank-1 identification of reconstructions among the victims' originals. An
unprotected model must leak (high SSIM, leakage near 100%), or the attack is too weak for a
protected method's numbers to mean anything.

Example:
    >>> from ppfr.attacks import create_attack
    >>> attack = create_attack("recovery", width=16, epochs=20)
    >>> report = attack.run(model, victims, labels, aux=own_faces, seed=0)  # doctest: +SKIP
    >>> images = attack.reconstruct(model, victims[:4])                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ppfr.attacks._inversion import InversionAttack, inversion_input
from ppfr.attacks._registry import register_attack


@register_attack("recovery")
class RecoveryAttack(InversionAttack):
    """Invert one protected representation per face (what the server receives)."""

    name = "recovery"

    def features(self, model: Any, faces: Tensor, generator: torch.Generator) -> Tensor:
        return inversion_input(model, model.protect(faces, generator))


__all__ = ["RecoveryAttack"]
