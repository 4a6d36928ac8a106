"""The attack registry: ``register_attack``, ``list_attacks``, ``create_attack``.

Attack modules register with :func:`register_attack`; this module imports none of them, so
an attack module can import it while :mod:`ppfr.attacks` is still initialising.
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
