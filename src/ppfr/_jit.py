"""Compiled CPU kernels (numba), built on first use, with a way back to torch.

A kernel is compiled (or loaded from numba's on-disk cache) the first time it is asked for.
Where numba is missing or the build fails, :meth:`LazyKernel.get` returns None and the
caller takes its PyTorch path; :attr:`LazyKernel.error` says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LazyKernel:
    """A kernel built by ``build()`` on first :meth:`get`; thread-safe, built at most once."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._tried = False
        self.kernel: Any = None
        #: why the kernel is unavailable (None while it is, or before the first get)
        self.error: str | None = None

    @classmethod
    def unavailable(cls, why: str) -> LazyKernel:
        """A kernel that is never built (tests of the fallback paths)."""
        k = cls(lambda: None)
        k._tried, k.error = True, why
        return k

    def get(self) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self.kernel = self._build()
                except Exception as e:  # no numba, or it cannot compile here: torch instead
                    self.error = f"{type(e).__name__}: {e}"
            return self.kernel
