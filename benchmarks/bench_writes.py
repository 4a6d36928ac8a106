"""The cost of writes on reads: identify right after an enrolment or a delete, vs steady.

Run:  python benchmarks/bench_writes.py --sizes 100000,1000000 --workdir /var/tmp/ppfr-bench

For each size ``n``: a SQLite gallery of ``n`` SlerpFace-protected 512-d templates (2 per
subject; reused from ``--workdir`` when it already holds them, else enrolled in bulk as in
bench_gallery.py), a :class:`ppfr.serve.Matcher` with a float16 index on one thread. Timed:

- the first identify (the one full load, from the store into the index);
- steady single-query identify, p50/p99 over ``--queries`` queries;
- ``--rounds`` rounds of (enrol one new subject, identify) and (delete a subject,
  identify): the write's own latency and the identify right after it, p50 and worst;
- a mixed run of ``--mixed`` requests or ``--mixed-seconds``, whichever ends first, one
  write in ten (alternating enrol and delete): its identify p50 per tenth of the run, wall
  clock and the thread's CPU time (flat = writes do not accumulate a cost; the CPU time is
  what to read on a machine shared with other jobs), resident memory once the gallery is
  loaded and at the end, and
  the full loads the matcher did (1 = none after the first).

User/system CPU of each phase comes from ``getrusage``. Everything random is seeded.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from bench_gallery import DIM, enrol, percentile, queries, rss_mib  # noqa: E402

import ppfr  # noqa: E402
from ppfr.serve import Matcher, open_store  # noqa: E402
from ppfr.templates import SlerpFace  # noqa: E402


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t0)


def one_template(sf: SlerpFace, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = torch.nn.functional.normalize(torch.randn(1, DIM, generator=g), dim=1)
    k = sf.draw_keys(1, generator=g)
    return sf.protect(t, k).numpy(), k.numpy()


def run(n: int, args, sf: SlerpFace, workdir: Path) -> dict:
    store = open_store(f"sqlite:///{workdir / f'writes-{n}.db'}")
    gallery = f"bench{n}"
    have = store.stats(gallery).templates
    if have == 0:
        t0 = time.perf_counter()
        enrol(store, gallery, n, 20000, sf, protect=True)
        print(f"# enrolled {n:,} in {time.perf_counter() - t0:.0f} s", flush=True)
    else:  # an earlier run's gallery, give or take the few subjects its writes changed
        print(f"# reusing {store.path}: {have:,} templates", flush=True)
    matcher = Matcher(store, sf, index_dtype=torch.float16)
    q, _ = queries(n, args.queries, sf, seed=0, batch=20000)
    _, load_ms = timed(lambda: matcher.identify(gallery, q[:1]))
    rss0 = rss_mib()  # the gallery loaded
    steady = [timed(lambda i=i: matcher.identify(gallery, q[i : i + 1]))[1] for i in range(len(q))]
    g = torch.Generator().manual_seed(n)
    after_enrol, after_delete, enrol_ms, delete_ms = [], [], [], []
    u0, s0 = cpu()
    for r in range(args.rounds):
        p, k = one_template(sf, g)
        _, ms = timed(lambda: store.enroll(gallery, f"new{r:05d}", p, k))
        enrol_ms.append(ms)
        after_enrol.append(timed(lambda: matcher.identify(gallery, q[r % len(q)][None]))[1])
        victim = f"s{r * 7919 % (n // 2):07d}"
        _, ms = timed(lambda: store.delete_subject(gallery, victim))
        delete_ms.append(ms)
        after_delete.append(timed(lambda: matcher.identify(gallery, q[r % len(q)][None]))[1])
    u1, s1 = cpu()
    # the mixed run: one write in ten requests
    done: list[tuple[float, float, float]] = []  # (start, wall ms, CPU ms) per identify
    start = time.perf_counter()
    for i in range(args.mixed):
        if time.perf_counter() - start > args.mixed_seconds:
            break
        if i % 10 == 9:
            if (i // 10) % 2:
                p, k = one_template(sf, g)
                store.enroll(gallery, f"mix{i:06d}", p, k)
            else:
                store.delete_subject(gallery, f"s{(i * 104729) % (n // 2):07d}")
            continue
        t0, c0 = time.perf_counter(), time.thread_time()
        matcher.identify(gallery, q[i % len(q)][None])
        done.append(
            (t0 - start, 1000 * (time.perf_counter() - t0), 1000 * (time.thread_time() - c0))
        )
    u2, s2 = cpu()
    span = max(t for t, _, _ in done) + 1e-9
    windows: list[list[tuple[float, float]]] = [[] for _ in range(10)]
    for t, wall, cpu_ms in done:
        windows[min(9, int(10 * t / span))].append((wall, cpu_ms))
    rss1 = rss_mib()
    snap = matcher.snapshot(gallery)
    store.close()
    return dict(
        n=n,
        load_s=load_ms / 1000,
        steady_p50=percentile(steady, 50),
        steady_p99=percentile(steady, 99),
        enrol_p50=percentile(enrol_ms, 50),
        after_enrol_p50=percentile(after_enrol, 50),
        after_enrol_max=max(after_enrol),
        delete_p50=percentile(delete_ms, 50),
        after_delete_p50=percentile(after_delete, 50),
        after_delete_max=max(after_delete),
        rounds_user=u1 - u0,
        rounds_sys=s1 - s0,
        windows=[percentile([a for a, _ in w], 50) for w in windows if w],
        cpu_windows=[percentile([b for _, b in w], 50) for w in windows if w],
        mixed_requests=len(done) * 10 // 9,
        mixed_s=span,
        mixed_user=u2 - u1,
        mixed_sys=s2 - s1,
        rss0=rss0,
        rss1=rss1,
        loads=matcher.loads[gallery],
        tail=snap.tail_n,
        dead=snap.n_main_dead,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000", help="gallery sizes, comma-separated")
    ap.add_argument("--workdir", default=None, help="where the SQLite files go (default: tmp)")
    ap.add_argument("--queries", type=int, default=50, help="steady single queries")
    ap.add_argument("--rounds", type=int, default=20, help="enrol+identify, delete+identify")
    ap.add_argument("--mixed", type=int, default=500, help="requests in the mixed run, at most")
    ap.add_argument("--mixed-seconds", type=float, default=600, help="... and seconds, at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sf = SlerpFace(DIM)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ppfr-writes-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [run(int(n), args, sf, workdir) for n in args.sizes.split(",")]
    print(f"\n{machine()}; ppfr {ppfr.__version__}; torch threads {args.threads}\n")
    print(
        "| templates | first identify (full load) | steady p50 / p99 (ms) "
        "| enrol, then identify p50 / worst (ms) | delete, then identify p50 / worst (ms) "
        "| after a write / steady (p50) | CPU user / sys (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = max(r["after_enrol_p50"], r["after_delete_p50"]) / r["steady_p50"]
        print(
            f"| {r['n']:,} | {r['load_s']:.1f} s | {r['steady_p50']:.1f} / {r['steady_p99']:.1f} "
            f"| {r['enrol_p50']:.1f} + {r['after_enrol_p50']:.1f} / {r['after_enrol_max']:.1f} "
            f"| {r['delete_p50']:.1f} + {r['after_delete_p50']:.1f} / "
            f"{r['after_delete_max']:.1f} | {ratio:.2f}x "
            f"| {r['rounds_user']:.1f} / {r['rounds_sys']:.2f} |"
        )
    print(
        "\n| templates | mixed run | identify p50 per tenth, wall (ms) "
        "| ... thread CPU (ms) | RSS loaded / at the end (MiB) | full loads "
        "| tail rows / tombstones at the end | CPU user / sys (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        w = " ".join(f"{x:.0f}" for x in r["windows"])
        c = " ".join(f"{x:.0f}" for x in r["cpu_windows"])
        print(
            f"| {r['n']:,} | {r['mixed_requests']:,} requests, {r['mixed_s']:.0f} s | {w} | {c} "
            f"| {r['rss0']:,.0f} / {r['rss1']:,.0f} | {r['loads']} "
            f"| {r['tail']} / {r['dead']} | {r['mixed_user']:.1f} / {r['mixed_sys']:.2f} |"
        )


if __name__ == "__main__":
    main()
