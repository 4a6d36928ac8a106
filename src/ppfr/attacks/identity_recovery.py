r"""Identity-guided recovery: the recovery attack with an identity term in its loss.

The published recovery attack trains its U-Net inverter with L1 alone, which pulls every
reconstruction towards the average face where the representation is ambiguous; SSIM then
calls the method private while the identity may still be there. FracFace (NeurIPS 2025)
scores MinusFace's reconstructions by identity similarity as well as SSIM for that reason,
and identity-guided inversions (FaceLinkGen, arXiv 2602.02914) optimise for it. This attack
adds the attacker's recognizer :math:`R` to the recovery loss:

.. math:: \mathcal{L} = \lVert \hat x - x \rVert_1
          + \lambda \bigl(1 - \cos(R(\hat x), R(x))\bigr),

with :math:`\hat x` the reconstruction and :math:`x` the attacker's own face (both mapped
to [-1, 1] for :math:`R`). :math:`R` is frozen (its weights never change) but
differentiable: the gradient of the identity term flows through it into the inverter. It
is never the judge (:mod:`ppfr.attacks._recognizer`); by default it is the unprotected
ArcFace trained on the attacker's identities. Everything else is the recovery attack:
same inverter, same fresh protection randomness every epoch, and the reconstructions are
scored by the judge exactly as recovery's are (SSIM, PSNR, leakage, rank-1, the
average-face floor; :func:`ppfr.attacks._scoring.score_images`). Because the judge never
took part in training, a high leakage here means the identity transfers to an independent
recognizer, not that the inverter learnt to fool one network.

Example:
    >>> from ppfr.attacks import create_attack
    >>> attack = create_attack("identity-recovery", recognizer=arcface_model, width=8)
    >>> report = attack.run(model, victims, labels, aux=own_faces, seed=0)  # doctest: +SKIP
    >>> report["rank1"], report["leakage"]                                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ppfr.attacks._inversion import InversionAttack, inversion_input
from ppfr.attacks._recognizer import (
    DEFAULT_RECOGNIZER_EPOCHS,
    AttackerRecognizer,
    attacker_recognizer,
)
from ppfr.attacks._registry import register_attack
from ppfr.attacks.base import IdentityRecoveryReport
from ppfr.errors import InputError


@register_attack("identity-recovery")
class IdentityRecoveryAttack(InversionAttack):
    """Recovery with the loss ``L1 + identity_weight * (1 - cos(R(recon), R(face)))``.

    Args:
        recognizer: the attacker's recognizer ``R`` (a ppfr model, a bundle directory, a
            torch module, or ``None`` to train an unprotected ArcFace on the attacker's
            labelled faces); it must be differentiable in torch, so not an ONNX file.
        identity_weight: ``lambda``, the weight of the identity term.
        recognizer_epochs: epochs of the recognizer trained when ``recognizer`` is None.
        **kwargs: inverter settings, as for :class:`~ppfr.attacks.recovery.RecoveryAttack`.

    Shape:
        - faces: :math:`(N, 3, 112, 112)` in [-1, 1]; reconstructions:
          :math:`(N, 3, 112, 112)` in [0, 1]
    """

    name = "identity-recovery"

    def __init__(
        self,
        recognizer: Any = None,
        *,
        identity_weight: float = 0.5,
        recognizer_epochs: int = DEFAULT_RECOGNIZER_EPOCHS,
        **kwargs: Any,
    ) -> None:
        if not float(identity_weight) >= 0:
            raise InputError(f"identity_weight must be >= 0, got {identity_weight}")
        super().__init__(**kwargs)
        self.recognizer_source = recognizer
        self.identity_weight = float(identity_weight)
        self.recognizer_epochs = int(recognizer_epochs)
        self.recognizer: AttackerRecognizer | None = None
        self._target: Tensor | None = None
        self._terms: list[tuple[int, float, float]] = []

    def features(self, model: Any, faces: Tensor, generator: torch.Generator) -> Tensor:
        return inversion_input(model, model.protect(faces, generator))

    def prepare(self, model: Any, aux: Tensor, aux_labels: Any, seed: int) -> None:
        if self.recognizer is None:
            self.recognizer = attacker_recognizer(
                self.recognizer_source,
                aux=aux,
                aux_labels=aux_labels,
                seed=seed,
                epochs=self.recognizer_epochs,
                progress=self.progress,
            )
        if not self.recognizer.differentiable:
            raise InputError(
                f"identity-guided recovery needs a recognizer it can differentiate; "
                f"{self.recognizer.name} is an ONNX file (use a ppfr bundle or model)"
            )
        # R(original) once: the faces do not change between epochs, only their protection
        self._target = self.recognizer.embed(aux.float().cpu())
        self._terms = []

    def loss(self, output: Tensor, target: Tensor, idx: Tensor) -> Tensor:
        l1 = F.l1_loss(output, target)
        if self.identity_weight == 0:
            self._terms.append((len(idx), float(l1.detach()), float("nan")))
            return l1
        assert self.recognizer is not None and self._target is not None
        with self.recognizer.frozen():
            e = self.recognizer.embed_grad(output * 2 - 1)  # R reads faces in [-1, 1]
        ident = (1.0 - (e.cpu() * self._target[idx]).sum(dim=1)).mean()
        self._terms.append((len(idx), float(l1.detach()), float(ident.detach())))
        return l1 + self.identity_weight * ident

    def last_epoch_terms(self, batches_per_epoch: int) -> dict[str, float]:
        """Mean L1 and identity term (``1 - cos``) over the last epoch's batches."""
        last = self._terms[-batches_per_epoch:]
        n = sum(k for k, _, _ in last) or 1
        return {
            "train_pixel_l1": sum(k * a for k, a, _ in last) / n,
            "train_identity": sum(k * b for k, _, b in last) / n,
        }

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
    ) -> IdentityRecoveryReport:
        """As :meth:`InversionAttack.run`, plus ``train_pixel_l1`` and ``train_identity``
        (last epoch's mean of each loss term) and ``recognizer`` (its name):
        an :class:`~ppfr.attacks.base.IdentityRecoveryReport`."""
        report = super().run(
            model, victims, labels, aux=aux, aux_labels=aux_labels, seed=seed, judge=judge
        )
        assert aux is not None and self.recognizer is not None  # run() refuses aux=None
        batches = -(-len(aux) // self.batch_size)
        return IdentityRecoveryReport(
            **{f.name: getattr(report, f.name) for f in fields(report)},
            **self.last_epoch_terms(batches),
            recognizer=self.recognizer.name,
        )

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "identity_weight": self.identity_weight}


__all__ = ["IdentityRecoveryAttack"]
