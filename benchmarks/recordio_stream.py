"""Memory and speed of reading RecordIO: streaming vs. random-access index.

Writes insightface-layout ``.rec``/``.idx`` pairs of 10k, 100k and 1M records (one small
pre-encoded 112x112 JPEG, about 1.1 kB, with a new label every 50 records) in a temporary
folder, then measures, each in a fresh subprocess so peaks do not mix:

* ``stream``: one pass of :func:`ppfr.data.recordio.iter_records` over the whole file;
* ``index``: building :class:`ppfr.data.recordio.RecordIOFaces` (reads the .idx and every
  record's header for its label), then 1,000 random ``load`` calls.

Peak memory is the growth of the process's peak RSS (``VmHWM`` in ``/proc/self/status``,
reset with ``/proc/self/clear_refs`` after imports), so the interpreter and torch do not
count. The temporary files are deleted at the end. Linux only.

Usage::

    PYTHONPATH=src python benchmarks/recordio_stream.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ppfr.data.binpack import encode_image  # noqa: E402
from ppfr.data.recordio import RecordIOFaces, RecordIOWriter, iter_records  # noqa: E402


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sample_jpeg() -> bytes:
    y, x = np.mgrid[0:112, 0:112]
    img = np.stack([(2 * x) % 256, (2 * y) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    return encode_image(img, quality=30)


def generate(rec: Path, n: int, jpeg: bytes) -> float:
    t = time.perf_counter()
    with RecordIOWriter(rec, rec.with_suffix(".idx")) as w:
        for i in range(n):
            w.write(jpeg, i // 50)
    return time.perf_counter() - t


def measure(mode: str, rec: Path) -> dict[str, float]:
    """Run in a fresh process: one measurement, printed as JSON."""
    exact = reset_peak()
    base = status_kb("VmRSS")
    t = time.perf_counter()
    out: dict[str, float] = {}
    if mode == "stream":
        count = size = 0
        for _label, data in iter_records(rec):
            count += 1
            size += len(data)
        out["records"] = count
    else:
        ds = RecordIOFaces(rec)
        out["records"] = len(ds)
        out["index_bytes"] = ds.nbytes
        out["build_s"] = time.perf_counter() - t
        out["build_peak_delta_kb"] = status_kb("VmHWM") - base
        torch.set_num_threads(1)  # as in a DataLoader worker; the host may be shared
        ds.load(0)  # first call pays for lazy imports and allocator warm-up
        rng = np.random.default_rng(0)
        t2 = time.perf_counter()
        for i in rng.integers(0, len(ds), 1000):
            ds.load(int(i))
        out["load_ms"] = (time.perf_counter() - t2) / 1000 * 1e3
    out["seconds"] = time.perf_counter() - t
    out["peak_delta_kb"] = status_kb("VmHWM") - base
    out["exact_peak"] = exact
    return out


def run_child(mode: str, rec: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--measure", mode, str(rec)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--workdir", default=None, help="where to put the temporary files")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "REC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    jpeg = sample_jpeg()
    tmp = Path(tempfile.mkdtemp(prefix="ppfr-recbench-", dir=args.workdir))
    rows = []
    try:
        for n in sizes:
            rec = tmp / f"train{n}.rec"
            write_s = generate(rec, n, jpeg)
            stream = run_child("stream", rec)
            index = run_child("index", rec)
            assert stream["records"] == index["records"] == n
            rows.append((n, rec.stat().st_size, write_s, stream, index))
            print(f"done {n:,}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"JPEG payload: {len(jpeg)} bytes; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs\n"
    )
    print(
        "| records | .rec size | write | stream: time | stream: peak RSS growth "
        "| index: build time | index: peak RSS growth | index arrays | arrays B/record "
        "| random load, per face | peak RSS growth after 1k loads |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, size, write_s, s, i in rows:
        print(
            f"| {n:,} | {size / 2**20:.0f} MiB | {write_s:.2f} s | {s['seconds']:.2f} s "
            f"({n / s['seconds'] / 1e6:.2f} M rec/s) | {mib(s['peak_delta_kb'])} "
            f"| {i['build_s']:.2f} s | {mib(i['build_peak_delta_kb'])} "
            f"| {i['index_bytes'] / 2**20:.2f} MiB | {i['index_bytes'] / n:.0f} "
            f"| {i['load_ms']:.2f} ms | {mib(i['peak_delta_kb'])} |"
        )
    if not all(r[3]["exact_peak"] and r[4]["exact_peak"] for r in rows):
        print("\n(peak RSS could not be reset: growth is measured from the post-import RSS)")


if __name__ == "__main__":
    main()
