"""Name -> builder registries, in the spirit of torchvision's model registry.

Each kind of thing (method, backbone, head, attack, ...) gets one :class:`Registry`;
builders register with a decorator and are looked up by name with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from difflib import get_close_matches
from typing import Any, Generic, TypeVar

from ppfr.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of builders.

    Example:
        >>> backbones = Registry("backbone")
        >>> @backbones.register("tiny")
        ... def tiny(**cfg): return cfg
        >>> backbones.build("tiny", a=1)
        {'a': 1}
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        key = name.lower()

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            if key in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[key] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        key = str(name).lower()
        if key not in self._builders:
            hint = get_close_matches(key, self._builders, n=1)
            more = f" Did you mean {hint[0]!r}?" if hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}.{more}"
            )
        return self._builders[key]

    def build(self, name: str, **config: Any) -> T:
        return self.get(name)(**config)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._builders
