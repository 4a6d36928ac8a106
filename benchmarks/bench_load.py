"""The service under load: throughput, latency and shedding at 1-64 concurrent clients.

Run:  python benchmarks/bench_load.py --clients 1,4,16,64 --seconds 30
      python benchmarks/bench_load.py --clients 16 --seconds 600 --gallery-size 100000  # soak
      python benchmarks/bench_load.py --cluster --shards 2 --replicas 2   # on Ray Serve

Starts the real service (``ppfr serve``, or ``ppfr serve --cluster local`` with
``--cluster``) on 127.0.0.1 over a fresh SQLite store, with an untrained MinusFace of the
demo's size (``--model-size demo``, IR-18 x0.25, what ``ppfr demo`` serves) or the default
size (the server's cost is the embedding, which training does not change), and
drives it from this process with ``--clients`` threads, each with its own HTTP connection:
one request in ten enrols a new subject, the rest identify (``--faces`` protected faces per
request). A gallery of ``--gallery-size`` SlerpFace-protected templates of the model's
dimension is written to the store before the service starts (synthetic templates: scoring
cost does not depend on what they encode), plus 10 people enrolled through the API.

Per concurrency level, bounded by ``--seconds`` and ``--max-requests``: requests answered,
throughput of accepted (2xx) requests, p50/p99 latency of accepted requests, 503s (shed,
each checked for ``Retry-After``), other 4xx/5xx and transport errors; the server's resident
memory (all its processes) before and after. The load generator shares the machine's cores
with the service: say so beside any figure. Loopback only: with ``--cluster`` the script
re-runs itself in a network namespace holding only ``lo`` (Ray binds to the machine's
address otherwise).

Everything random is seeded. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, only_loopback, rerun_in_namespace  # noqa: E402

import ppfr  # noqa: E402
from ppfr.experiments.presets import DEMO_MODELS  # noqa: E402
from ppfr.serve.auth import create_key  # noqa: E402
from ppfr.serve.store import open_store  # noqa: E402
from ppfr.serve.wire import MEDIA_TYPE, encode_representation  # noqa: E402
from ppfr.templates import SlerpFace  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (Ray starts several processes)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,rss="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for line in out.stdout.split("\n"):
        if line.strip():
            p, pp, r = map(int, line.split())
            children.setdefault(pp, []).append(p)
            rss[p] = r
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024


def prefill(db: str, model: ppfr.Method, n: int) -> None:
    """``n`` synthetic protected templates (2 per subject) in gallery ``g``, in bulk."""
    dim = int(model.config.embedding_size)
    sf = SlerpFace.from_model(model, dim)
    with open_store(db) as store:
        for lo in range(0, n, 20000):
            hi = min(n, lo + 20000)
            g = torch.Generator().manual_seed(lo)
            t = torch.nn.functional.normalize(torch.randn(hi - lo, dim, generator=g), dim=1)
            k = sf.draw_keys(hi - lo, generator=g)
            names = [f"bulk{i // 2:07d}" for i in range(lo, hi)]
            store.enroll_many("g", names, sf.protect(t, k).numpy(), k.numpy())


def start(args, bundle: Path, db: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from ppfr.cli import app; app()", "serve"]
    cmd += ["--model", str(bundle), "--db", db, "--port", str(port), "--log-level", "warning"]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    cmd += ["--max-queue", str(args.max_queue)]
    cmd += ["--queue-timeout", str(args.queue_timeout), "--index-dtype", args.index_dtype]
    if args.cluster:
        cmd += ["--cluster", "local", "--shards", str(args.shards)]
        cmd += ["--replicas", str(args.replicas), "--shard-cpus", str(args.shard_cpus)]
        cmd += ["--replica-cpus", str(args.replica_cpus)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(Path(tempfile.gettempdir()) / f"ppfr-load-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited; its log is {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the service did not start within 300 s")


class Level:
    """Counters of one concurrency level, shared by its client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: list[float] = []
        self.shed = self.shed_no_retry = self.other_4xx = self.other_5xx = self.transport = 0


def client(
    url: str, token: str, bodies: list[bytes], level: Level, stop_at: float, budget, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MEDIA_TYPE}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        i = 0
        while time.monotonic() < stop_at and budget():
            body = bodies[int(rng.integers(len(bodies)))]
            if rng.random() < 0.1:
                path = f"/v1/galleries/g/subjects/load-{seed}-{i}"
            else:
                path = "/v1/galleries/g/identify"
            i += 1
            t0 = time.perf_counter()
            try:
                r = http.post(path, content=body)
            except httpx.HTTPError:
                with level.lock:
                    level.transport += 1
                continue
            ms = 1000 * (time.perf_counter() - t0)
            with level.lock:
                if r.status_code < 300:
                    level.ok.append(ms)
                elif r.status_code == 503:
                    level.shed += 1
                    level.shed_no_retry += "retry-after" not in r.headers
                elif r.status_code < 500:
                    level.other_4xx += 1
                else:
                    level.other_5xx += 1
            if r.status_code == 503:
                # a well-behaved client waits what Retry-After says, with jitter, as
                # ppfr.serve.client.Client does (retrying sooner only adds load to shed)
                time.sleep(float(r.headers.get("retry-after", 1)) * (0.5 + rng.random()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,4,16,64", help="concurrency levels")
    ap.add_argument("--seconds", type=float, default=30, help="per level")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per level, at most")
    ap.add_argument("--faces", type=int, default=4, help="protected faces per request")
    ap.add_argument("--gallery-size", type=int, default=0, help="synthetic templates first")
    ap.add_argument("--max-concurrent", type=int, default=0, help="0: the service's default")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--queue-timeout", type=float, default=0.5)
    ap.add_argument("--model-size", choices=["demo", "default"], default="demo")
    ap.add_argument("--index-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--cluster", action="store_true", help="serve on a local Ray cluster")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--shard-cpus", type=float, default=0.5, help="Ray CPUs per shard")
    ap.add_argument("--replica-cpus", type=float, default=0.5, help="Ray CPUs per replica")
    args = ap.parse_args()
    if args.cluster and not only_loopback():
        rerun_in_namespace()  # Ray on loopback only
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="ppfr-load-"))
    options = DEMO_MODELS["minusface"] if args.model_size == "demo" else {}
    model = ppfr.create("minusface", num_classes=10, **options)
    model.save(work / "model")
    db = f"sqlite:///{work / 'gallery.db'}"
    with open_store(db) as store:
        _, token = create_key(store, ["g"])
    if args.gallery_size:
        t0 = time.perf_counter()
        prefill(db, model, args.gallery_size)
        print(f"# gallery of {args.gallery_size:,} written in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(1)
    fp = model.fingerprint("client")
    with torch.inference_mode():
        bodies = [
            encode_representation(
                model.protect(
                    torch.rand(args.faces, 3, 112, 112, generator=g) * 2 - 1, generator=g
                ),
                fp,
            )
            for _ in range(10)
        ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(args, work / "model", db, port)
    rows = []
    try:
        with httpx.Client(base_url=url, headers={"Content-Type": MEDIA_TYPE}) as http:
            auth = {"Authorization": f"Bearer {token}"}
            for p in range(10):  # the people a real gallery starts with
                http.post(f"/v1/galleries/g/subjects/person{p}", content=bodies[p], headers=auth)
            # the first identify loads the gallery into the matcher: not part of a level
            t0 = time.perf_counter()
            r = http.post("/v1/galleries/g/identify", content=bodies[0], headers=auth, timeout=600)
            r.raise_for_status()
            print(f"# first identify (gallery load) {time.perf_counter() - t0:.1f} s", flush=True)
        for c in [int(x) for x in args.clients.split(",")]:
            level = Level()
            rss0 = tree_rss_mib(proc.pid)
            sent = [0]
            count_lock = threading.Lock()

            def budget(sent=sent, count_lock=count_lock) -> bool:
                with count_lock:
                    sent[0] += 1
                    return sent[0] <= args.max_requests

            stop_at = time.monotonic() + args.seconds
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            threads = [
                threading.Thread(
                    target=client, args=(url, token, bodies, level, stop_at, budget, s)
                )
                for s in range(c)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            ok = np.asarray(level.ok) if level.ok else np.asarray([np.nan])
            rows.append(
                dict(
                    clients=c,
                    answered=len(level.ok) + level.shed + level.other_4xx + level.other_5xx,
                    tput=len(level.ok) / wall,
                    p50=float(np.percentile(ok, 50)),
                    p99=float(np.percentile(ok, 99)),
                    shed=level.shed,
                    shed_no_retry=level.shed_no_retry,
                    e4=level.other_4xx,
                    e5=level.other_5xx,
                    transport=level.transport,
                    rss0=rss0,
                    rss1=tree_rss_mib(proc.pid),
                    wall=wall,
                    # the load generator's own CPU (it shares the cores with the service)
                    gen_user=cpu1.ru_utime - cpu0.ru_utime,
                    gen_sys=cpu1.ru_stime - cpu0.ru_stime,
                )
            )
            print(rows[-1], flush=True)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    mode = (
        f"cluster ({args.shards} shards, {args.replicas} replicas)"
        if args.cluster
        else "one process"
    )
    at_work = args.max_concurrent or ("1 per replica CPU" if args.cluster else "CPU count")
    print(
        f"\n{machine()}; ppfr {ppfr.__version__}; {mode}; {args.model_size} MinusFace; "
        f"gallery {args.gallery_size:,} + 10 ({args.index_dtype} index); "
        f"{args.faces} faces per request; gate {at_work} at work, "
        f"{args.max_queue} queued, {args.queue_timeout:g} s; load generator on the same cores\n"
    )
    print(
        "| clients | seconds | answered | accepted/s | p50 / p99 accepted (ms) "
        "| 503 (no Retry-After) | other 4xx / 5xx / transport | server RSS before / after (MiB) "
        "| generator CPU user / sys (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['wall']:.0f} | {r['answered']:,} | {r['tput']:.1f} "
            f"| {r['p50']:.0f} / {r['p99']:.0f} | {r['shed']:,} ({r['shed_no_retry']}) "
            f"| {r['e4']} / {r['e5']} / {r['transport']} | {r['rss0']:,.0f} / {r['rss1']:,.0f} "
            f"| {r['gen_user']:.1f} / {r['gen_sys']:.1f} |"
        )


if __name__ == "__main__":
    main()
