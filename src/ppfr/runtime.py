"""Process-wide settings that make ppfr fast on ordinary machines.

Why this exists. glibc's ``malloc`` serves every allocation above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and hands it back to the kernel with ``munmap`` the
moment it is freed. ppfr's hot paths allocate such blocks on every step: a batch of 32
faces in the frequency domain is 32 x 192 x 112 x 112 float32 = 308 MB, and a MinusFace
training step makes several of them. Each fresh block is then faulted in page by page (4 KiB
at a time), so a step pays for hundreds of megabytes of minor page faults in the kernel. On
virtual machines, where a fault is expensive, that kernel (system) time rivals the
arithmetic itself; the measurements, with and without the tuning, are in
``docs/benchmarks.md`` ("Allocator").

:func:`tune_allocator` keeps freed memory in the process instead: it turns off mmap for
large blocks (``M_MMAP_MAX = 0``), so they come from the heap and are reused by the next
step, and stops the heap from being trimmed back to the kernel (``M_TRIM_THRESHOLD``). The
same as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` but callable
after start-up. The cost: the process keeps its peak heap resident until it exits (memory
freed by PyTorch is reused by PyTorch, not returned), which is what a training or serving
process wants.

Every ``ppfr`` command and the training engine call it; a program that imports ppfr as a
library calls it once, early::

    import ppfr
    ppfr.tune_allocator()

Set ``PPFR_TUNE_ALLOCATOR=0`` in the environment to leave the allocator alone (for example
to compare, or under a memory-constrained supervisor). On a libc other than glibc (macOS,
Windows, musl) the call does nothing and says so in its result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from functools import cache

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: heap growth step: fewer brk calls while the heap grows to its working size
_TOP_PAD = 64 << 20
#: never trim: the largest value mallopt accepts for the threshold (an int)
_NO_TRIM = 2**31 - 1

ENV_SWITCH = "PPFR_TUNE_ALLOCATOR"


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_result: dict[str, object] | None = None  # what the first enabling call did


def tune_allocator(enable: bool | None = None) -> dict[str, object]:
    """Keep large freed blocks in the process so hot loops stop paying for page faults.

    Idempotent and cheap; call it once, before the work starts. ``enable=None`` follows the
    environment (``PPFR_TUNE_ALLOCATOR=0`` turns it off), ``True`` / ``False`` decide
    explicitly (``False`` does nothing; glibc's defaults cannot be restored without a
    restart, so there is no undo).

    Returns:
        ``{"tuned": bool, "reason": str}``: whether the settings are in force, and why not.

    Example:
        >>> import ppfr
        >>> ppfr.tune_allocator()["tuned"] in (True, False)
        True
    """
    global _result
    if enable is None:
        enable = os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no")
    if _result is not None:
        return _result
    if not enable:
        return {"tuned": False, "reason": f"off ({ENV_SWITCH}=0)"}
    libc = _glibc()
    if libc is None:
        result = {"tuned": False, "reason": "not glibc: the system allocator is left as it is"}
    else:
        ok = (
            libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1
            and libc.mallopt(_M_TOP_PAD, _TOP_PAD) == 1
        )
        result = {"tuned": ok, "reason": "glibc mallopt" if ok else "mallopt refused a setting"}
    _result = result
    return result


__all__ = ["ENV_SWITCH", "tune_allocator"]
