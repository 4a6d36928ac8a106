"""Gallery storage and identification: enrolment throughput, identify latency, scoring cost.

Run:  python benchmarks/bench_gallery.py --sizes 10000,100000,1000000
      python benchmarks/bench_gallery.py --stream-sizes 100000,1000000 --backends none

For each backend (SQLite file; PostgreSQL, a throwaway local server started here unless
``--postgres-url`` is given) and each gallery size ``n``: enrol ``n`` random unit 512-d
templates (2 per subject), SlerpFace-protected with fresh keys, in bulk transactions of
``--batch`` rows; then time ``Matcher.identify`` for single queries (p50/p99 over
``--queries`` queries, each a noisy copy of an enrolled template, so rank-1 accuracy is a
sanity check) and for a batch of 32. At ``--plain-sizes`` the same templates are also
enrolled unprotected and searched with FAISS ``IndexFlatIP``. Last, the per-pair cost of
SlerpFace scoring (the matcher's cached path and ``SlerpFace.scores``) against the FLOP
count and the machine's measured single-precision matmul rate.

``--stream-sizes``: SlerpFace identification against the memory bound. For each size (a
SQLite gallery, reused from ``--workdir`` when it already holds the rows) and each
``--stream-dtypes`` storage type of the matcher's index: single-query ``identify`` p50/p99
interleaved with a plain streaming read (a sum) of the very arrays the index holds, so
both see the same machine state; the ratio is the figure of merit. User/system CPU time of
the identify loop comes from ``getrusage``: a high system share means page faults.
``--stream-kernels numba,torch`` times each scoring kernel of the index in turn on the
same snapshot (the fused numba kernel is the default; ``torch`` is the eager path).

Everything random is seeded. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

import ppfr  # noqa: E402
from ppfr.serve import Matcher, open_store  # noqa: E402
from ppfr.templates import SlerpFace, SlerpFaceIndex  # noqa: E402

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
    """ns per (query, template) pair and GFLOP/s of the streamed index and SlerpFace.scores."""
    sf = SlerpFace(DIM)
    g = torch.Generator().manual_seed(3)
    t = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=1)
    k = sf.draw_keys(n, generator=g)
    p = sf.protect(t, k)
    index = SlerpFaceIndex(sf, p, k)
    G = sf.num_groups
    # index: 4 dot products per group (8*D) + ~14 scalar operations per group (2 of them
    # transcendental: arccos, and sin on two angles counted once), one FLOP each
    flops_index = 8 * DIM + 14 * G
    # SlerpFace.scores builds the index on every call (an argsort of every key) and scores
    out = []
    for m in (1, 32):
        q = t[:m] + 0.01
        for label, fn in (
            ("matcher (streamed index)", lambda q=q: index.scores(q)),
            ("SlerpFace.scores (index rebuilt per call)", lambda q=q: sf.scores(q, p, k)),
        ):
            fn()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            ns = 1e9 * best / (m * n)
            out.append(dict(path=label, m=m, ns=ns, flops=flops_index, gflops=flops_index / ns))
    return out


def read_once(index: SlerpFaceIndex) -> float:
    """Seconds to stream every array the index holds once (a sum: one add per value).

    Half storage is read as float32 words (the same bytes, half as many values; denormals
    flushed), so the time is that of moving the bytes, not of converting them.
    """
    blocks = index.blocks
    if blocks.dtype == torch.float16:
        blocks = blocks.view(torch.float32)
    t0 = time.perf_counter()
    float(blocks.sum()) + float(index.scalars.sum())
    return time.perf_counter() - t0


def stream_bench(args, sf: SlerpFace, workdir: Path) -> list[dict]:
    """Identify p50 against the read-once time of the index, per size and storage type."""
    torch.set_flush_denormal(True)
    rows = []
    for n in args.stream_sizes:
        path = workdir / f"stream{n}.db"
        store = open_store(f"sqlite:///{path}")
        gallery = f"stream{n}"
        have = store.stats(gallery).templates
        if have != n:
            if have:
                raise SystemExit(f"{path} holds {have} rows, not {n}: remove it first")
            t0 = time.perf_counter()
            enrol(store, gallery, n, args.batch, sf, protect=True)
            print(f"# enrolled {n:,} in {time.perf_counter() - t0:.0f} s", flush=True)
        count = args.queries if n < 1_000_000 else args.queries_1m
        q, names = queries(n, count, sf, seed=0, batch=args.batch)
        for dtype in args.stream_dtypes:
            gc.collect()
            base = rss_mib()
            matcher = Matcher(store, sf, index_dtype=dtype)
            t0 = time.perf_counter()
            index = matcher.snapshot(gallery).slerp
            snap_s = time.perf_counter() - t0
            mem = rss_mib() - base
            for kernel in args.stream_kernels:
                index.kernel = kernel  # the same stored arrays, scored by the other loop
                matcher.identify(gallery, q[:1], top_k=5)  # warm-up
                lat, reads, hits = [], [], 0
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                for i in range(len(q)):
                    t0 = time.perf_counter()
                    res = matcher.identify(gallery, q[i : i + 1], top_k=5)
                    lat.append(1000 * (time.perf_counter() - t0))
                    hits += res[0][0][0] == names[i]
                    reads.append(1000 * read_once(index))
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
                row = dict(
                    n=n, dtype=str(dtype).replace("torch.", ""), kernel=kernel,
                    mib=index.nbytes / 2**20, snap_s=snap_s, mem=mem, p50=percentile(lat, 50),
                    p99=percentile(lat, 99), read=percentile(reads, 50), acc=hits / len(q),
                    nq=len(q), user=user, system=system, load=os.getloadavg()[0],
                )  # fmt: skip
                row["ratio"] = row["p50"] / row["read"]
                rows.append(row)
                print(row, flush=True)
            del matcher, index
            gc.collect()
        store.close()
    return rows


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
    ap.add_argument("--stream-sizes", default="", help="identify vs read-once, e.g. 100000")
    ap.add_argument("--stream-dtypes", default="float32,float16", help="index storage types")
    ap.add_argument("--stream-kernels", default="numba", help="index scoring kernels: numba,torch")
    args = ap.parse_args()
    ppfr.tune_allocator()  # freed buffers stay in the process: no page faults per request
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.plain_sizes = {int(s) for s in args.plain_sizes.split(",") if s}
    args.stream_sizes = [int(s) for s in args.stream_sizes.split(",") if s]
    args.stream_dtypes = [getattr(torch, d) for d in args.stream_dtypes.split(",") if d]
    args.stream_kernels = [k for k in args.stream_kernels.split(",") if k]
    if not set(args.stream_kernels) <= {"numba", "torch"}:
        raise SystemExit(f"--stream-kernels takes numba and/or torch, got {args.stream_kernels}")
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
    if args.stream_sizes:
        stream = stream_bench(args, sf, workdir)
        print(
            "\n| templates | index storage | kernel | index (MiB) | snapshot load (s) "
            "| identify p50 (ms) | identify p99 (ms) | read once, p50 (ms) | p50 / read "
            "| user / system CPU (s) | system share | rank-1 (queries) | load avg |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in stream:
            print(
                f"| {r['n']:,} | {r['dtype']} | {r['kernel']} | {r['mib']:,.0f} "
                f"| {r['snap_s']:.1f} "
                f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['read']:.1f} | {r['ratio']:.2f} "
                f"| {r['user']:.1f} / {r['system']:.2f} "
                f"| {100 * r['system'] / max(r['user'] + r['system'], 1e-9):.1f}% "
                f"| {r['acc']:.2f} ({r['nq']}) | {r['load']:.1f} |"
            )
        print()
    for backend in (b for b in args.backends.split(",") if b != "none"):
        if backend == "sqlite":
            counter = iter(range(10**6))
            url = lambda: f"sqlite:///{workdir / f'g{next(counter)}.db'}"  # noqa: E731
            run_backend("SQLite", url, args, sf, rows)
        elif backend == "postgresql":
            if args.postgres_url:
                url = args.postgres_url
            else:
                from ppfr.serve.store._pgserver import TempPostgres

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
    if not rows:  # --backends none: the stream table above is all
        return

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
