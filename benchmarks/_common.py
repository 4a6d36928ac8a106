"""Shared helpers for the benchmark scripts (timing, peak memory in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch


def per_item_ms(fn, batch: int, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds per item of a batch of ``batch``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000 * times[len(times) // 2] / batch


def peak_rss_mib(code: str) -> float:
    """Peak RSS growth (MiB) of ``code`` run in a fresh Python after importing torch.

    ``code`` runs after a baseline measurement, so imports do not count.
    """
    script = (
        "import torch, json\n"
        "torch.set_num_threads(2)\n"
        # VmHWM, not ru_maxrss: the latter survives fork+exec and would report the parent's
        "def _kb(): return int(next(l for l in open('/proc/self/status')"
        " if l.startswith('VmHWM')).split()[1])\n"
        f"{code.split('#--run--')[0]}\n"
        "base = _kb()\n"
        f"{code.split('#--run--')[1]}\n"
        "print(json.dumps((_kb() - base) / 1024))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def machine() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def only_loopback() -> bool:
    """True inside a network namespace whose only interface is ``lo``."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines() if line] == ["lo"]


def rerun_in_namespace() -> None:
    """Run this script again inside a fresh network namespace holding only ``lo``, and exit.

    Ray binds some of its servers to the machine's address whatever it is told; in such a
    namespace there is no address but 127.0.0.1 to bind to.
    """
    import os

    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    cmd = [*unshare, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    raise SystemExit(subprocess.call(cmd))
