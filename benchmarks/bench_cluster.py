"""Sharded identification on Ray: latency and throughput against the number of shards.

Run:  python benchmarks/bench_cluster.py --db sqlite:////var/tmp/ppfr-bench/writes-1000000.db \
          --gallery bench1000000 --shards 1,2,4

Uses a SQLite gallery of SlerpFace-protected 512-d templates written by
``benchmarks/bench_writes.py`` (or bench_gallery.py). For each shard count K: a local Ray
instance (inside a network namespace holding only ``lo``: the script re-runs itself under
``unshare -n`` unless it already is in one), K shard actors of
:mod:`ppfr.serve.cluster.shard` with float16 indexes, each loading its partition once, and
a :class:`ppfr.serve.cluster.ShardedMatcher` in this process. Timed, single queries:

- identify p50/p99 at the caller, and each shard's own scan time (inside its actor);
- the fan-out and merge overhead: caller time minus the slowest shard's time, as a ratio
  to that shard's time (p50 over queries);
- throughput with ``--concurrency`` callers at once, and a batch of 32 queries in one call
  (each shard reads its index once for the whole batch).

On one machine the shards share its cores: with K above the core count the scans queue,
so per-shard time stops falling; on a cluster each shard has its own. Prints a markdown
table and a JSON line per K.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, only_loopback, rerun_in_namespace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="sqlite:////path/to/gallery.db")
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=4, help="Ray's logical CPUs (shards take 1)")
    args = ap.parse_args()
    if not only_loopback():
        rerun_in_namespace()

    import ray

    from ppfr.serve.cluster.matcher import ShardedMatcher
    from ppfr.serve.cluster.shard import ShardSet, ShardSpec
    from ppfr.templates import SlerpFace

    sf = SlerpFace(512)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(max(32, args.queries), 512, generator=g), dim=1)
    rows = []
    for k in [int(x) for x in args.shards.split(",")]:
        ray.init(
            num_cpus=max(args.cpus, k),
            include_dashboard=False,
            object_store_memory=200 * 2**20,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        spec = ShardSpec(
            service=f"bench{k}",
            shards=k,
            db_url=args.db,
            matcher_options={"index_dtype": torch.float16},
        )
        shards = ShardSet(spec, sf)
        t0 = time.perf_counter()
        where = shards.wait_ready(timeout=1800)
        load_s = time.perf_counter() - t0
        m = ShardedMatcher(shards, timeout=600)
        m.identify(args.gallery, q[:1])  # warm
        caller, slowest, overhead = [], [], []
        for i in range(args.queries):
            t0 = time.perf_counter()
            _, times = m.identify_timed(args.gallery, q[i : i + 1], top_k=5)
            wall = time.perf_counter() - t0
            caller.append(1000 * wall)
            slowest.append(1000 * max(times))
            overhead.append((wall - max(times)) / max(times))
        t0 = time.perf_counter()
        m.identify(args.gallery, q[:32], top_k=5)
        batch_ms = 1000 * (time.perf_counter() - t0) / len(q[:32])
        done = [0]
        stop_at = time.perf_counter() + 20

        def caller_loop(seed: int) -> None:
            i = seed
            while time.perf_counter() < stop_at:
                m.identify(args.gallery, q[i % len(q)][None], top_k=5)
                done[0] += 1
                i += args.concurrency

        t0 = time.perf_counter()
        threads = [threading.Thread(target=caller_loop, args=(s,)) for s in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tput = done[0] / (time.perf_counter() - t0)
        row = dict(
            shards=k,
            load_s=load_s,
            shard_load_s=[round(w["load_s"], 1) for w in where],
            p50=float(np.percentile(caller, 50)),
            p99=float(np.percentile(caller, 99)),
            shard_p50=float(np.percentile(slowest, 50)),
            overhead_p50=float(np.percentile(overhead, 50)),
            batch_ms=batch_ms,
            tput=tput,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        shards.stop()
        ray.shutdown()
    print(f"\n{machine()}; {args.gallery} in {args.db}; float16 shards; one machine\n")
    print(
        "| shards | load (s) | identify p50 / p99 (ms) | slowest shard's scan p50 (ms) "
        f"| fan-out + merge / slowest scan (p50) | identify/s, {args.concurrency} callers "
        "| batch of 32 (ms per query) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shards']} | {r['load_s']:.0f} | {r['p50']:.0f} / {r['p99']:.0f} "
            f"| {r['shard_p50']:.0f} | {100 * r['overhead_p50']:.1f} % | {r['tput']:.1f} "
            f"| {r['batch_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
