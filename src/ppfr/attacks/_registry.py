"""The attack registry: ``register_attack``, ``list_attacks``, ``create_attack``.

Attack modules register with :func:`register_attack`; this module imports none of them, so
an attack module can import it while :mod:`ppfr.attacks` is still initialising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ppfr._registry import Registry
from ppfr.attacks.base import Attack

#: name -> attack class (each a subclass of :class:`~ppfr.attacks.base.Attack`; building one
#: with its settings gives the attack)
ATTACKS: Registry[Attack] = Registry("attack")

A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator: register an :class:`~ppfr.attacks.base.Attack` subclass as ``name``."""
    add = ATTACKS.register(name)

    def wrap(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"attack {name!r}: {cls!r} is not a subclass of ppfr.attacks.Attack")
        add(cls)
        return cls

    return wrap


def list_attacks() -> list[str]:
    """Names of every registered attack."""
    return ATTACKS.names()


def create_attack(name: str, **config: Any) -> Attack:
    """Build a registered attack; unknown names raise :class:`~ppfr.errors.UnknownNameError`."""
    return ATTACKS.build(name, **config)
