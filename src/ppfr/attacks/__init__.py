"""Privacy attacks on protected representations, looked up by name.

An attack (:class:`~ppfr.attacks.base.Attack`) takes a model (a registered method) and faces
with their identities, and returns a typed report (:class:`~ppfr.attacks.base.AttackReport`,
``.to_dict()`` for JSON) of how much of the face the method's protected representation gives
away (docs/privacy.md):
SSIM and PSNR against the original, and identity leakage measured by the independent judge.
The identity attacks (``linkage``, ``identity-recovery``) use a face recognizer of the
attacker's own, never the judge (docs/privacy.md).

Example:
    >>> from ppfr.attacks import create_attack, list_attacks
    >>> "viewing" in list_attacks()
    True
    >>> attack = create_attack("viewing")
    >>> report = attack.run(model, faces, labels, seed=0)   # doctest: +SKIP
"""

from ppfr.attacks import (
    adaptive,
    identity_recovery,
    linkage,
    recovery,
    template_inversion,
    viewing,
)
from ppfr.attacks._registry import ATTACKS, create_attack, list_attacks, register_attack
from ppfr.attacks.adaptive import AdaptiveAttack
from ppfr.attacks.base import (
    Attack,
    AttackReport,
    IdentityRecoveryReport,
    InversionReport,
    LinkageReport,
    TemplateInversionReport,
    ViewingReport,
)
from ppfr.attacks.identity_recovery import IdentityRecoveryAttack
from ppfr.attacks.linkage import LinkageAttack
from ppfr.attacks.recovery import RecoveryAttack
from ppfr.attacks.template_inversion import TemplateInversionAttack
from ppfr.attacks.viewing import ViewingAttack

__all__ = [
    "ATTACKS",
    "AdaptiveAttack",
    "Attack",
    "AttackReport",
    "IdentityRecoveryReport",
    "InversionReport",
    "LinkageReport",
    "TemplateInversionReport",
    "ViewingReport",
    "IdentityRecoveryAttack",
    "LinkageAttack",
    "RecoveryAttack",
    "TemplateInversionAttack",
    "ViewingAttack",
    "create_attack",
    "adaptive",
    "identity_recovery",
    "linkage",
    "list_attacks",
    "recovery",
    "register_attack",
    "template_inversion",
    "viewing",
]
