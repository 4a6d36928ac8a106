"""ppfr.runtime.tune_allocator: freed tensors are reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import ppfr
from ppfr import runtime

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's (elsewhere tune_allocator does nothing)",
)

# allocate, fill and free a 256 MiB tensor a few times; count the minor page faults of the
# last repeats. The first few fault in either way: a freed block sits a few bytes short of
# the next 64-byte-aligned request of the same size, so the heap grows until freed blocks
# coalesce (a training loop reaches this steady state within its first steps).
_CHILD = """
import json, resource, sys, torch, ppfr
tuned = ppfr.tune_allocator()["tuned"]
for _ in range(4):
    torch.empty(64 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(64 << 20).fill_(1.0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _child(switch: str) -> dict:
    env = {**os.environ, runtime.ENV_SWITCH: switch}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_process_reuses_freed_blocks_without_page_faults():
    plain, tuned = _child("0"), _child("1")
    assert plain == {"tuned": False, "faults": plain["faults"]}
    assert tuned["tuned"] is True
    pages = 3 * (256 << 20) // 4096
    # glibc's default: every repeat is a fresh mmap, faulted in page by page (huge pages,
    # where the kernel gives them, cut the count, so only a floor is asserted)
    assert plain["faults"] > pages // 1000
    # tuned: the freed block is reused; a few pages of bookkeeping at most
    assert tuned["faults"] < max(50, plain["faults"] // 20)


def test_switch_off_and_idempotence(monkeypatch):
    monkeypatch.setattr(runtime, "_result", None)
    monkeypatch.setenv(runtime.ENV_SWITCH, "0")
    assert ppfr.tune_allocator() == {"tuned": False, "reason": "off (PPFR_TUNE_ALLOCATOR=0)"}
    monkeypatch.delenv(runtime.ENV_SWITCH)
    first = ppfr.tune_allocator()
    assert ppfr.tune_allocator() is first  # settings are applied once per process
    assert first["tuned"] is (runtime._glibc() is not None)
