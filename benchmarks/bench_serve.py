"""The service's server side: embed throughput, and requests through HTTP (in process).

Run:  python benchmarks/bench_serve.py
Untrained weights: throughput does not depend on the values. Rates are from the fastest of 7
runs (see :func:`rate`). For each model: ``embed``
representations/s at batch 1 and 32 (server bundle only, 2 torch threads), then through the
FastAPI app (``TestClient``, no network, SQLite in a temp folder): enrolments/s (one
representation per request) and identify representations/s (batch 32) against a gallery of
``--gallery`` subjects.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine
from fastapi.testclient import TestClient

import ppfr
from ppfr.serve.app import create_app
from ppfr.serve.auth import create_key
from ppfr.serve.store import open_store
from ppfr.serve.wire import encode_representation

torch.set_num_threads(2)

MODELS = {
    "demo (IR-18 x0.25, 512-d)": {"backbone_width": 0.25, "generator_width": 8},
    "default (IR-18, 512-d)": {},
}


def rate(fn, items: int, repeats: int = 7, warmup: int = 8) -> tuple[float, float]:
    """(items per wall-clock second, process CPU milliseconds per item) of ``fn``.

    ``warmup`` calls first (the first calls of a new model cost several times the CPU of
    later ones), then ``repeats``: wall clock from the fastest run, CPU time (all
    threads of this process: the app runs in process) the median. On a machine shared with
    other jobs wall-clock rates swing with the load; CPU time per item is the steadier
    measure of the work itself.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return items / float(np.min(wall)), 1000 * float(np.median(cpu)) / items


def fmt(r: tuple[float, float]) -> str:
    return f"{r[0]:.1f} / {r[1]:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gallery", type=int, default=200, help="subjects enrolled before identify")
    args = ap.parse_args()
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}\n")
    print("reps/s (fastest of 7, wall clock) / CPU ms per representation (median)\n")
    print("| server model | embed, batch 1 | embed, batch 32 | HTTP enrol (1 rep per request) "
          f"| HTTP identify (batch 32, {args.gallery} subjects) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label, cfg in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            full = ppfr.create("minusface", **cfg).eval()
            full.save(Path(tmp) / "m")
            server = ppfr.load(Path(tmp) / "m", part="server")
            with torch.inference_mode():
                p = full.protect(torch.rand(32, 3, 112, 112) * 2 - 1)
                e1 = rate(lambda: server.embed(p[:1]), 1)
                e32 = rate(lambda: server.embed(p), 32)
            db = f"sqlite:///{tmp}/g.db"
            with open_store(db) as store:
                _, key = create_key(store, ["bench"])
            http = TestClient(create_app(Path(tmp) / "m", db))
            h = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
            fp = full.fingerprint("client")
            one = encode_representation(p[:1], fp)
            n = [0]

            def enrol() -> None:
                n[0] += 1
                r = http.post(f"/v1/galleries/bench/subjects/s{n[0]}", content=one, headers=h)
                assert r.status_code == 200, r.text

            for _ in range(args.gallery - 7):
                enrol()
            enrol_rate = rate(enrol, 1, warmup=0)  # the last 8 enrolments
            body = encode_representation(p, fp)

            def identify() -> None:
                r = http.post("/v1/galleries/bench/identify", content=body, headers=h)
                assert r.status_code == 200, r.text

            ident = rate(identify, 32)
            print(f"| {label} | {fmt(e1)} | {fmt(e32)} | {fmt(enrol_rate)} | {fmt(ident)} |")


if __name__ == "__main__":
    main()
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
