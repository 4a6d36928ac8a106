"""Privacy attacks on protected representations, looked up by name.

An attack takes a model (a registered method) and faces with their identities, and scores
how much of the face the method's protected representation gives away (docs/privacy.md):
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

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ppfr._registry import Registry

ATTACKS: Registry[Any] = Registry("attack")


def register_attack(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register an attack class (or builder) under ``name``."""
    return ATTACKS.register(name)


def list_attacks() -> list[str]:
    """Names of every registered attack."""
    return ATTACKS.names()


def create_attack(name: str, **config: Any) -> Any:
    """Build a registered attack; unknown names raise :class:`~ppfr.errors.UnknownNameError`."""
    return ATTACKS.build(name, **config)


# register the built-in attacks
from ppfr.attacks import (  # noqa: E402
    adaptive,
    identity_recovery,
    linkage,
    recovery,
    template_inversion,
    viewing,
)
from ppfr.attacks.adaptive import AdaptiveAttack  # noqa: E402
from ppfr.attacks.identity_recovery import IdentityRecoveryAttack  # noqa: E402
from ppfr.attacks.linkage import LinkageAttack  # noqa: E402
from ppfr.attacks.recovery import RecoveryAttack  # noqa: E402
from ppfr.attacks.template_inversion import TemplateInversionAttack  # noqa: E402
from ppfr.attacks.viewing import ViewingAttack  # noqa: E402

__all__ = [
    "ATTACKS",
    "AdaptiveAttack",
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
