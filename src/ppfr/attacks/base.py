"""The one contract every attack keeps: :class:`Attack`, and the reports it returns.

Every registered attack is a class with a ``name`` and one entry point::

    report = attack.run(model, victims, labels, aux=own_faces, aux_labels=own_labels,
                        seed=0, judge=None)

``victims`` are the faces attacked ((N, 3, 112, 112) in [-1, 1]) and ``labels`` their
identities; ``aux`` and ``aux_labels`` are the attacker's own faces and identities (people
other than the victims), which an attack that trains needs and the others accept and ignore;
``seed`` draws every random choice; ``judge`` is the independent face recognizer that scores
leakage (default :func:`ppfr.judge.get_judge`; the linkage attack scores in the attacker's
own recognizer's space instead).

The result is a typed report, one dataclass per kind of attack (:class:`ViewingReport`,
:class:`InversionReport`, :class:`IdentityRecoveryReport`, :class:`LinkageReport`,
:class:`TemplateInversionReport`). :meth:`AttackReport.to_dict` gives the JSON that
``ppfr attack --json`` writes and the demo's report stores, key for key in a fixed order; a
report also reads like that dict (``report["ssim"]``, ``report.get("rank1")``, ``dict(report)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

__all__ = [
    "Attack",
    "AttackReport",
    "IdentityRecoveryReport",
    "InversionReport",
    "LinkageReport",
    "TemplateInversionReport",
    "ViewingReport",
]


@dataclass(kw_only=True)
class AttackReport(Mapping[str, Any]):
    """What every attack reports, and the mapping view of its JSON (:meth:`to_dict`).

    Attributes:
        attack: the attack's registered name.
        method: the attacked model's method name.
        n: victim faces scored.
        seed: the seed of the run.
        extra: entries a caller adds after the run (``ppfr attack`` adds ``model`` and the
            share of tiles or key its first step placed); they come last in :meth:`to_dict`.
    """

    #: the JSON keys in order; ``"settings"`` stands for the attack's settings, inlined
    ORDER: ClassVar[tuple[str, ...]] = ("attack", "method", "n", "seed")
    #: keys left out of the JSON while their value is None
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    attack: str
    method: str
    n: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the dict the attacks returned before it was typed)."""
        out: dict[str, Any] = {}
        for key in self.ORDER:
            value = getattr(self, key)
            if key == "settings":
                out.update(value)
            elif not (value is None and key in self.OPTIONAL):
                out[key] = value
        out.update(self.extra)
        return out

    # ---- read like the dict: report["ssim"], report.get(...), dict(report), {**report}
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(kw_only=True)
class ViewingReport(AttackReport):
    """The viewing attack: the protected representation shown as an image.

    Attributes:
        ssim, psnr: of the views against the faces (means; PSNR capped at
            :data:`ppfr.attacks._scoring.PSNR_CAP`).
        leakage: the judge's verification accuracy on (view of A, original of B) pairs.
        rank1: views of all but each person's first face identified against those firsts.
    """

    ORDER: ClassVar[tuple[str, ...]] = (
        "attack", "method", "n", "seed", "ssim", "psnr", "leakage", "rank1",
    )  # fmt: skip

    ssim: float
    psnr: float
    leakage: float
    rank1: float


@dataclass(kw_only=True)
class InversionReport(AttackReport):
    """An inversion attack (``recovery``, ``adaptive``): reconstructions of the victims.

    Attributes:
        aux: the attacker's faces the inverter trained on.
        ssim, psnr, leakage, rank1: of the reconstructions, as :class:`ViewingReport`'s.
        floor_ssim, floor_psnr: what the attacker's average face scores without looking at
            anything (:func:`ppfr.attacks._scoring.average_face_scores`).
        train_l1: last epoch's training loss.
        fit_seconds: training time.
        settings: the attack's settings (width, epochs, batch size, ...), inlined in the JSON.
    """

    ORDER: ClassVar[tuple[str, ...]] = (
        "attack", "method", "n", "aux", "seed", "ssim", "psnr", "leakage", "rank1",
        "floor_ssim", "floor_psnr", "train_l1", "fit_seconds", "settings",
    )  # fmt: skip

    aux: int
    ssim: float
    psnr: float
    leakage: float
    rank1: float
    floor_ssim: float
    floor_psnr: float
    train_l1: float
    fit_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class IdentityRecoveryReport(InversionReport):
    """Identity-guided recovery: :class:`InversionReport` plus its loss terms.

    Attributes:
        train_pixel_l1, train_identity: last epoch's mean of each loss term.
        recognizer: the attacker's recognizer (its name).
    """

    ORDER: ClassVar[tuple[str, ...]] = (
        *InversionReport.ORDER, "train_pixel_l1", "train_identity", "recognizer",
    )  # fmt: skip

    train_pixel_l1: float
    train_identity: float
    recognizer: str


@dataclass(kw_only=True)
class LinkageReport(AttackReport):
    """The linkage attack: protected faces linked to photos by identity.

    Attributes:
        aux: the attacker's faces the student trained on.
        accuracy, auc, tar_at_far, rank1, pairs, genuine, impostor: the student's links
            (:func:`ppfr.attacks.linkage.linkage_scores`).
        recognizer_accuracy, recognizer_auc, recognizer_tar_at_far, recognizer_rank1: the
            recognizer's photos against each other, the bound a perfect student reaches.
        chance_rank1: one over the victims' identities.
        recognizer: the attacker's recognizer (its name).
        train_loss: last epoch's mean ``1 - cos``.
        fit_seconds: training time.
        settings: the attack's settings, inlined in the JSON.
    """

    ORDER: ClassVar[tuple[str, ...]] = (
        "attack", "method", "n", "aux", "seed", "accuracy", "auc", "tar_at_far", "rank1",
        "pairs", "genuine", "impostor", "recognizer_accuracy", "recognizer_auc",
        "recognizer_tar_at_far", "recognizer_rank1", "chance_rank1", "recognizer",
        "train_loss", "fit_seconds", "settings",
    )  # fmt: skip

    aux: int
    accuracy: float
    auc: float
    tar_at_far: dict[str, float | None]
    rank1: float
    pairs: int
    genuine: int
    impostor: int
    recognizer_accuracy: float
    recognizer_auc: float
    recognizer_tar_at_far: dict[str, float | None]
    recognizer_rank1: float
    chance_rank1: float
    recognizer: str
    train_loss: float
    fit_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class TemplateInversionReport(AttackReport):
    """Template inversion: faces decoded from stolen (raw or SlerpFace-protected) templates.

    Attributes:
        protected: whether the stolen templates were SlerpFace-protected.
        ssim, psnr, leakage, rank1: of the decoded faces, as :class:`ViewingReport`'s.
        final_l1: the decoder's last training epoch's L1 (``run`` only; left out of the JSON
            of a bare ``evaluate``).
    """

    ORDER: ClassVar[tuple[str, ...]] = (
        "attack", "method", "protected", "n", "seed", "ssim", "psnr", "leakage", "rank1",
        "final_l1",
    )  # fmt: skip
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"final_l1"})

    protected: bool
    ssim: float
    psnr: float
    leakage: float
    rank1: float
    final_l1: float | None = None


class Attack(ABC):
    """An attack on a method's protection, registered by ``name``
    (:func:`ppfr.attacks.register_attack`)."""

    #: the registered name (``ppfr attack --attack NAME``)
    name: ClassVar[str]

    @abstractmethod
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
    ) -> AttackReport:
        """Attack ``victims`` (identities ``labels``) of ``model``; the module docstring
        says what each argument is."""
