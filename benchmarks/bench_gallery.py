"""Gallery storage and identification: enrolment throughput, identify latency, scoring cost.

Run:  python benchmarks/bench_gallery.py --sizes 10000,100000,1000000

For each backend (SQLite file; PostgreSQL, a throwaway local server started here unless
``--postgres-url`` is given) and each gallery size ``n``: enrol ``n`` random unit 512-d
templates (2 per subject), SlerpFace-protected with fresh keys, in bulk transactions of
``--batch`` rows; then time ``Matcher.identify`` for single queries (p50/p99 over
``--queries`` queries, each a noisy copy of an enrolled template, so rank-1 accuracy is a
sanity check) and for a batch of 32. At ``--plain-sizes`` the same templates are also
enrolled unprotected and searched with FAISS ``IndexFlatIP``. Last, the per-pair cost of
SlerpFace scoring (the matcher's cached path and ``SlerpFace.scores``) against the FLOP
count and the machine's measured single-precision matmul rate.

Everything random is seeded. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from ppfr.serve import Matcher, open_store  # noqa: E402
from ppfr.serve.matching import _KeyCache, _slerp_scores  # noqa: E402
from ppfr.slerpface import SlerpFace  # noqa: E402

DIM = 512
PER_SUBJECT = 2


def rss_mib() -> float:
    """Resident memory now (after returning freed heap pages to the OS)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batches(n: int, batch: int, sf: SlerpFace, seed: int, protect: bool = True):
    """Deterministic batches (subjects, raw templates, keys, protected) covering rows 0..n-1."""
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + lo)
        t = torch.nn.functional.normalize(torch.randn(hi - lo, DIM, generator=g), dim=1)
        subjects = [f"s{i // PER_SUBJECT:07d}" for i in range(lo, hi)]
        if protect:
            k = sf.draw_keys(hi - lo, generator=g)
            yield subjects, t, k, sf.protect(t, k)
        else:
            yield subjects, t, None, None


def queries(n: int, count: int, sf: SlerpFace, seed: int, batch: int):
    """Noisy copies of ``count`` enrolled templates spread over the gallery + their subjects."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(count, n), replace=False))
    qs, names = [], []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        mine = rows[(rows >= lo) & (rows < hi)]
        if len(mine) == 0:
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + lo)
        t = torch.nn.functional.normalize(torch.randn(hi - lo, DIM, generator=g), dim=1)
        qs.append(t[mine - lo])
        names += [f"s{i // PER_SUBJECT:07d}" for i in mine]
    q = torch.cat(qs)
    g = torch.Generator().manual_seed(seed + 1)
    # cosine ~0.8 to the enrolled template: a new photo of the same person
    q = torch.nn.functional.normalize(q + 0.75 * torch.randn(q.shape, generator=g) / DIM**0.5, 1)
    perm = torch.randperm(len(q), generator=g)
    return q[perm], [names[i] for i in perm.tolist()]


def percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def disk_mib(store, url: str) -> float:
    if url.startswith("sqlite"):
        return (os.path.getsize(store.path) + os.path.getsize(store.keys_path)) / 2**20
    with store._tx() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        return cur.fetchone()[0] / 2**20


def enrol(store, gallery: str, n: int, batch: int, sf: SlerpFace, protect: bool) -> float:
    """Bulk enrolment; returns templates/s counting only the store calls."""
    spent = 0.0
    for subjects, t, k, p in batches(n, batch, sf, seed=0, protect=protect):
        rows = (p if protect else t).numpy()
        keys = k.numpy() if protect else None
        t0 = time.perf_counter()
        store.enroll_many(gallery, subjects, rows, keys)
        spent += time.perf_counter() - t0
    return n / spent


def single_enrol_ms(store, sf: SlerpFace, count: int = 50) -> tuple[float, float]:
    """Latency of durable one-template enrolments (one transaction each): p50, p99 ms."""
    g = torch.Generator().manual_seed(7)
    times = []
    for i in range(count):
        t = torch.nn.functional.normalize(torch.randn(1, DIM, generator=g), dim=1)
        k = sf.draw_keys(1, generator=g)
        p = sf.protect(t, k).numpy()
        t0 = time.perf_counter()
        store.enroll("latency", f"u{i}", p, k.numpy())
        times.append(1000 * (time.perf_counter() - t0))
    return percentile(times, 50), percentile(times, 99)


def time_identify(matcher: Matcher, gallery: str, q: torch.Tensor, names: list[str]):
    lat, hits = [], 0
    for i in range(len(q)):
        t0 = time.perf_counter()
        res = matcher.identify(gallery, q[i : i + 1], top_k=5)
        lat.append(1000 * (time.perf_counter() - t0))
        hits += res[0][0][0] == names[i]
    qb = q[:32]
    t0 = time.perf_counter()
    matcher.identify(gallery, qb, top_k=5)
    batch_ms = 1000 * (time.perf_counter() - t0) / len(qb)
    return percentile(lat, 50), percentile(lat, 99), batch_ms, hits / len(q)


def run_backend(name: str, url: str, args, sf: SlerpFace, rows: list[dict]) -> None:
    for n in args.sizes:
        store = open_store(url() if callable(url) else url)
        su = store.url if hasattr(store, "url") else f"sqlite:///{store.path}"
        gallery = f"bench{n}"
        tps = enrol(store, gallery, n, args.batch, sf, protect=True)
        one_p50, one_p99 = single_enrol_ms(store, sf) if n == args.sizes[0] else (None, None)
        gc.collect()
        base = rss_mib()
        matcher = Matcher(store, sf)
        t0 = time.perf_counter()
        matcher.snapshot(gallery)
        snap_s = time.perf_counter() - t0
        mem = rss_mib() - base
        count = args.queries if n < 1_000_000 else args.queries_1m
        q, names = queries(n, count, sf, seed=0, batch=args.batch)
        p50, p99, batch_ms, acc = time_identify(matcher, gallery, q, names)
        row = dict(
            backend=name, n=n, mode="SlerpFace", enrol_tps=tps, one_p50=one_p50,
            one_p99=one_p99, snap_s=snap_s, mem=mem, p50=p50, p99=p99, batch_ms=batch_ms,
            acc=acc, nq=len(q), disk=disk_mib(store, su),
        )  # fmt: skip
        rows.append(row)
        print(row, flush=True)
        del matcher
        gc.collect()
        if n in args.plain_sizes:
            plain = f"plain{n}"
            tps = enrol(store, plain, n, args.batch, sf, protect=False)
            gc.collect()
            base = rss_mib()
            matcher = Matcher(store, None, use_faiss=True)
            t0 = time.perf_counter()
            matcher.snapshot(plain)
            snap_s = time.perf_counter() - t0
            mem = rss_mib() - base
            q, names = queries(n, args.queries, sf, seed=0, batch=args.batch)
            p50, p99, batch_ms, acc = time_identify(matcher, plain, q, names)
            row = dict(
                backend=name, n=n, mode="plain, FAISS flat", enrol_tps=tps, one_p50=None,
                one_p99=None, snap_s=snap_s, mem=mem, p50=p50, p99=p99, batch_ms=batch_ms,
                acc=acc, nq=len(q), disk=None,
            )  # fmt: skip
            rows.append(row)
            print(row, flush=True)
            del matcher
            gc.collect()
        store.close()


def matmul_gflops() -> float:
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best / 1e9


def scoring_cost(n: int) -> list[dict]:
    """ns per (query, template) pair and GFLOP/s of the two SlerpFace scoring paths."""
    sf = SlerpFace(DIM)
    g = torch.Generator().manual_seed(3)
    t = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=1)
    k = sf.draw_keys(n, generator=g)
    p = sf.protect(t, k)
    cache = _KeyCache.build(sf, p, k)
    G = sf.num_groups
    # cached path: 4 dot products per group (8*D) + ~27 scalar ops per group (3 of them
    # transcendental: arccos, sin, cos), counted as one FLOP each
    flops_cached = 8 * DIM + 27 * G
    # SlerpFace.scores: per pair ~11*D (group dot, slerp combination, mask, renormalise,
    # final dot) + ~10 per group; plus an argsort of every key's groups on every call
    flops_ref = 11 * DIM + 10 * G
    out = []
    for m in (1, 32):
        q = t[:m] + 0.01
        for label, fn, flops in (
            ("matcher (key cache)", lambda q=q: _slerp_scores(sf, q, p, cache), flops_cached),
            ("SlerpFace.scores", lambda q=q: sf.scores(q, p, k), flops_ref),
        ):
            fn()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            ns = 1e9 * best / (m * n)
            out.append(dict(path=label, m=m, ns=ns, flops=flops, gflops=flops / ns))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--plain-sizes", default="1000000", help="sizes also run plain + FAISS")
    ap.add_argument("--postgres-url", default=None, help="default: a throwaway local server")
    ap.add_argument("--workdir", default=None, help="where the SQLite files go (default: tmp)")
    ap.add_argument("--batch", type=int, default=20000, help="rows per bulk transaction")
    ap.add_argument("--queries", type=int, default=100, help="single queries timed per size")
    ap.add_argument("--queries-1m", type=int, default=20, help="... at 1M templates and up")
    ap.add_argument("--scoring-n", type=int, default=20000, help="templates for the cost table")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.plain_sizes = {int(s) for s in args.plain_sizes.split(",") if s}
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    print(f"# {machine()}, torch threads {args.threads}, load avg {os.getloadavg()}")
    sf = SlerpFace(DIM)
    rows: list[dict] = []
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ppfr-bench-"))
    server = None
    for backend in args.backends.split(","):
        if backend == "sqlite":
            counter = iter(range(10**6))
            url = lambda: f"sqlite:///{workdir / f'g{next(counter)}.db'}"  # noqa: E731
            run_backend("SQLite", url, args, sf, rows)
        elif backend == "postgresql":
            if args.postgres_url:
                url = args.postgres_url
            else:
                from ppfr.serve._pgserver import TempPostgres

                server = TempPostgres()
                url = server.new_database
            try:
                run_backend("PostgreSQL", url, args, sf, rows)
            finally:
                if server is not None:
                    server.stop()
        for f in workdir.glob("g*.db"):
            f.unlink()
    print(f"\n# load avg at the end {os.getloadavg()}\n")

    def fmt(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    print(
        "| backend | templates | mode | bulk enrol (templates/s) | one enrolment p50/p99 (ms) "
        "| snapshot load (s) | snapshot RSS (MiB) | identify p50 (ms) | identify p99 (ms) "
        "| batch of 32 (ms/query) | rank-1 (queries) | on disk (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        one = "-" if r["one_p50"] is None else f"{r['one_p50']:.1f} / {r['one_p99']:.1f}"
        print(
            f"| {r['backend']} | {r['n']:,} | {r['mode']} | {r['enrol_tps']:,.0f} | {one} "
            f"| {r['snap_s']:.1f} | {r['mem']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['batch_ms']:.1f} | {r['acc']:.2f} ({r['nq']}) | {fmt(r['disk'], ',.0f')} |"
        )
    peak = matmul_gflops()
    print(f"\nsgemm 1024^3 on {args.threads} thread(s): {peak:.1f} GFLOP/s\n")
    print("| scoring path | queries per call | ns per (query, template) | FLOPs per pair "
          "| GFLOP/s | % of sgemm |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in scoring_cost(args.scoring_n):
        print(
            f"| {r['path']} | {r['m']} | {r['ns']:,.0f} | {r['flops']:,} | {r['gflops']:.2f} "
            f"| {100 * r['gflops'] / peak:.0f}% |"
        )


if __name__ == "__main__":
    main()
