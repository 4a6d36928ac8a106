"""The cluster scenario behind tests/serve/cluster/test_cluster.py; prints nothing, writes JSON.

Run it only inside a network namespace that holds nothing but ``lo`` (the test does:
``unshare -n sh -c 'ip link set lo up && exec python scenario.py ...'``): Ray binds some
of its servers to the machine's address otherwise. One 3-node Ray cluster (one CPU each,
75 MB object stores, no dashboard) serves every part, to keep the suite's time down:

1. ``equality``: the sharded matcher, called directly from this driver, against a
   single-process Matcher on the same store, for K = 1, 2, 3 (several templates per
   subject), before and after writes applied in place; verify on the subject's shard.
2. ``http``: ``ppfr serve --cluster ADDRESS --shards 3 --replicas 2`` (the real CLI, as a
   subprocess) on 127.0.0.1: OpenAPI and error answers as in one process; read-your-writes
   (enrol / delete, then the next identify and verify).
3. ``node_loss``: a burst of enrolments (gallery g1) and identifies (static gallery g2,
   whose right answer is known, and g1); a worker node holding a shard is removed mid-burst.
   Every identify answer is recorded (status, Retry-After, whether the list is whole), then
   the shards' new nodes and the store's contents.
4. ``sockets``: ``ss -tlnpH`` while everything runs (and again after the loss).

Every failure is recorded in the report, not raised, so the test can say which part broke.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import ray
import torch
from ray.cluster_utils import Cluster

import ppfr
from ppfr.errors import InputError, UnknownNameError
from ppfr.serve.app import Unavailable, create_app
from ppfr.serve.auth import create_key
from ppfr.serve.cluster.matcher import ShardedMatcher
from ppfr.serve.cluster.shard import ShardSet, ShardSpec
from ppfr.serve.matching import Matcher
from ppfr.serve.store import open_store
from ppfr.serve.wire import encode_representation
from ppfr.templates import SlerpFace

NODE = {"num_cpus": 1, "object_store_memory": 75 * 2**20, "node_ip_address": "127.0.0.1"}
# find a dead node in about 4 s instead of Ray's default 30 s or so (not faster: on two
# busy cores a live raylet can miss a second or two of heartbeats)
HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 4,
}
SHARDS, REPLICAS, PER_SUBJECT = 3, 2, 2
REPLICA_RESOURCE = "ppfr-replica"
SRC = Path(__file__).resolve().parents[3] / "src"


def same(a: list, b: list, tol: float = 1e-5) -> bool:
    """Same subjects in the same order, scores within ``tol``, for every query."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if [s for s, _ in x] != [s for s, _ in y]:
            return False
        if any(abs(float(p) - float(q)) > tol for (_, p), (_, q) in zip(x, y, strict=True)):
            return False
    return True


def as_pairs(results: list[dict]) -> list[list[tuple[str, float]]]:
    return [[(c["subject"], c["score"]) for c in r["candidates"]] for r in results]


# --- 1. equality -------------------------------------------------------------------------
def compare(checks: dict, tag: str, sharded, single, names: list[str], queries) -> None:
    """Sharded against single-process: identify at several k, and verify (gallery "eq")."""
    for top_k in (1, 5, 100):
        got = sharded.identify("eq", queries, top_k=top_k)
        want = single.identify("eq", queries, top_k=top_k)
        checks[f"{tag}_top{top_k}"] = same(got, want)
    checks[f"{tag}_verify"] = all(
        abs(sharded.verify("eq", queries[i], s) - single.verify("eq", queries[i], s)) <= 1e-5
        for i, s in enumerate(names[:: max(1, len(names) // 8)])
    )


def equality(tmp: Path, report: dict) -> None:
    out: dict[str, Any] = {"checks": {}}
    report["equality"] = out
    db = f"sqlite:///{tmp / 'equality.db'}"
    dim = 64
    protection = SlerpFace(dim)
    g = torch.Generator().manual_seed(7)

    def unit(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)

    store = open_store(db)
    subjects, templates = [], []
    for s in range(30):  # 1 to 4 templates per subject
        n = 1 + s % 4
        subjects += [f"p{s:02d}"] * n
        templates.append(unit(n))
    t = torch.cat(templates)
    keys = protection.draw_keys(len(t), generator=g)
    store.enroll_many("eq", subjects, protection.protect(t, keys).numpy(), keys.numpy())
    # queries: near enrolled templates (clear winners) and random ones (close races)
    queries = torch.cat(
        [torch.nn.functional.normalize(t[::7] + 0.3 * unit(len(t[::7])), dim=1), unit(6)]
    )
    single = Matcher(store, protection)
    checks = out["checks"]
    # the three shard sets (1 + 2 + 3 actors) start together: their imports overlap
    t0 = time.perf_counter()
    sets = {k: ShardSet(ShardSpec(f"eq{k}", k, db, num_cpus=0.1), protection) for k in (1, 2, 3)}
    try:
        matchers = {k: ShardedMatcher(shard_set, timeout=60) for k, shard_set in sets.items()}
        for shard_set in sets.values():
            shard_set.wait_ready(timeout=120)
        out["start_s"] = time.perf_counter() - t0
        for k, sharded in matchers.items():
            compare(checks, f"k{k}_start", sharded, single, store.subjects("eq"), queries)
            ranked, seconds = sharded.identify_timed("eq", queries, top_k=5)
            checks[f"k{k}_timed"] = same(ranked, single.identify("eq", queries, top_k=5)) and (
                len(seconds) == k
            )
            # writes applied in place by each shard: a new subject, more templates for an
            # old one, a delete
            extra = unit(3)
            ek = protection.draw_keys(3, generator=g)
            ep = protection.protect(extra, ek).numpy()
            store.enroll("eq", f"new{k}", ep[:2], ek[:2].numpy())
            store.enroll("eq", "p05", ep[2:], ek[2:].numpy())
            store.delete_subject("eq", f"p{10 + k:02d}")
            compare(checks, f"k{k}_after_writes", sharded, single, store.subjects("eq"), queries)
            try:
                sharded.verify("eq", queries[0], "nobody")
                checks[f"k{k}_unknown_subject"] = False
            except UnknownNameError:
                checks[f"k{k}_unknown_subject"] = True
            try:
                sharded.identify("eq", torch.zeros(1, dim + 1))
                checks[f"k{k}_wrong_dim"] = False
            except InputError:
                checks[f"k{k}_wrong_dim"] = True
            # a call that waited in a shard's queue past its deadline is dropped: 503 with
            # Retry-After, and the shard is not taken for lost (a 1 us deadline is always
            # past by the time an actor call arrives)
            hurried = ShardedMatcher(sets[k], timeout=60, queue_timeout=1e-6)
            try:
                hurried.identify("eq", queries)
                checks[f"k{k}_late_shed"] = False
            except Unavailable as e:
                checks[f"k{k}_late_shed"] = (
                    hurried.shed == 1 and e.retry_after > 0 and not hurried._down
                )
            compare(checks, f"k{k}_after_late", sharded, single, store.subjects("eq"), queries)
    finally:
        for shard_set in sets.values():
            shard_set.stop()
    store.close()


# --- 2. the HTTP service ------------------------------------------------------------------
class Http:
    """Requests against the service, with the local single-process expectation beside them."""

    def __init__(self, url: str, bundle: Path, db: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.headers = {**self.auth, "Content-Type": "application/octet-stream"}
        self.model = ppfr.load(bundle)
        self.fp = self.model.fingerprint("client")
        # the single-process service on the same store: its matcher is the reference
        self.local = create_app(bundle, db)
        self.svc = self.local.state.service

    def reps(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        faces = torch.rand(n, 3, 112, 112, generator=g) * 2 - 1
        with torch.inference_mode():
            return self.model.protect(faces, generator=g)

    def body(self, reps: torch.Tensor) -> bytes:
        return encode_representation(reps, self.fp)

    def enroll(self, gallery: str, subject: str, reps: torch.Tensor) -> httpx.Response:
        return self.http.post(
            f"/v1/galleries/{gallery}/subjects/{subject}",
            content=self.body(reps),
            headers=self.headers,
        )

    def identify(self, gallery: str, reps: torch.Tensor, top_k: int = 100) -> httpx.Response:
        return self.http.post(
            f"/v1/galleries/{gallery}/identify?top_k={top_k}",
            content=self.body(reps),
            headers=self.headers,
        )

    def verify(self, gallery: str, subject: str, rep: torch.Tensor) -> httpx.Response:
        return self.http.post(
            f"/v1/galleries/{gallery}/subjects/{subject}/verify",
            content=self.body(rep),
            headers=self.headers,
        )

    def expected(self, gallery: str, reps: torch.Tensor, top_k: int = 100) -> list:
        q = self.svc.embed(self.svc.representations(self.body(reps)))
        return self.svc.matcher.identify(gallery, q, top_k=top_k)


def start_service(address: str, bundle: Path, db: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-c",
        "from ppfr.cli import app; app()",
        "serve",
        "--cluster",
        address,
        "--shards",
        str(SHARDS),
        "--replicas",
        str(REPLICAS),
        "--shard-cpus",
        "0.25",
        "--replica-cpus",
        "0.25",
        "--replica-resource",
        REPLICA_RESOURCE,
        "--shard-timeout",
        "10",
        "--model",
        str(bundle),
        "--db",
        db,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    # a session of its own: no signal meant for this process group reaches it
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_health(url: str, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def sockets(tries: int = 10) -> list[list[str]]:
    """``[local address, process]`` of every listening TCP socket in this network namespace.

    ``ss`` names a socket's process by walking ``/proc/PID/fd``; a socket read while its
    process is still starting (or its fd table changing) comes back with no process. Such
    a reading is retried, so that every socket is reported with its owner.
    """
    out: list[list[str]] = []
    for _ in range(tries):
        run = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True)
        out = [
            [cols[3], " ".join(cols[5:])]
            for cols in (line.split() for line in run.stdout.splitlines())
            if len(cols) >= 4
        ]
        if all(process for _, process in out):
            break
        time.sleep(0.3)
    return out


def read_your_writes(h: Http, report: dict) -> None:
    out: dict[str, Any] = {"checks": {}, "failures": []}
    report["read_your_writes"] = out
    checks = out["checks"]
    # the same app: OpenAPI document and error answers
    checks["openapi_same"] = h.http.get("/openapi.json").json() == h.local.openapi()
    checks["no_key_401"] = h.http.get("/v1/galleries/g1/subjects").status_code == 401
    bad = encode_representation(h.reps(1, 99), "0" * 64)
    r = h.http.post("/v1/galleries/g1/identify", content=bad, headers=h.headers)
    checks["other_fingerprint_409"] = r.status_code == 409
    ok = True
    for i in range(4):
        reps = h.reps(PER_SUBJECT, seed=100 + i)
        r = h.enroll("g1", f"rw{i}", reps)
        ok &= r.status_code == 200
        # the very next request sees it, whichever replica and shard it goes to
        r = h.identify("g1", reps[:1])
        got = as_pairs(r.json()["results"]) if r.status_code == 200 else None
        want = h.expected("g1", reps[:1])
        if got is None or not same(got, want) or f"rw{i}" not in [s for s, _ in got[0]]:
            ok = False
            out["failures"].append(f"identify after enrol rw{i}: {r.status_code} {got} {want}")
        r = h.verify("g1", f"rw{i}", reps[:1])
        if r.status_code != 200:
            ok = False
            out["failures"].append(f"verify after enrol rw{i}: {r.status_code} {r.text}")
    checks["enrol_visible"] = ok
    ok = True
    for i in (0, 2):
        r = h.http.delete(f"/v1/galleries/g1/subjects/rw{i}", headers=h.auth)
        ok &= r.status_code == 200
        reps = h.reps(PER_SUBJECT, seed=100 + i)
        r = h.identify("g1", reps[:1])
        names = [c["subject"] for c in r.json()["results"][0]["candidates"]] if r.is_success else []
        if r.status_code != 200 or f"rw{i}" in names:
            ok = False
            out["failures"].append(f"identify after delete rw{i}: {r.status_code} {names}")
        r = h.verify("g1", f"rw{i}", reps[:1])
        if r.status_code != 404:
            ok = False
            out["failures"].append(f"verify after delete rw{i}: {r.status_code}")
    checks["delete_visible"] = ok


# --- 3. node loss ---------------------------------------------------------------------
def actor_nodes() -> dict[str, str]:
    """Alive actor name (shards and Serve replicas) -> node id, from Ray's control store."""
    out = {}
    for a in ray._private.state.actors().values():  # noqa: SLF001 - test-only introspection
        name = a.get("Name") or ""
        if a.get("State") == "ALIVE" and ("shard" in name or "SERVE_REPLICA" in name):
            out[name] = a["Address"]["NodeID"]
    return out


def node_loss(h: Http, cluster: Cluster, workers: list, report: dict) -> None:
    out: dict[str, Any] = {"identify": [], "enrol": []}
    report["node_loss"] = out
    # the static gallery g2 and its right answers
    static = h.reps(9, seed=500)
    for i in range(9):  # straight into the store: not what is being tested here
        h.svc.enroll("g2", f"st{i}", static[i : i + 1])
    probe = static[[0, 4, 8]]
    want_g2 = h.expected("g2", probe)

    before = actor_nodes()
    out["before"] = before
    shard_nodes = {n for name, n in before.items() if "shard" in name}
    replica_nodes = {n for name, n in before.items() if "SERVE_REPLICA" in name}
    ids = {w.node_id: w for w in workers}
    out["head"] = cluster.head_node.node_id
    out["replica_nodes"] = sorted(replica_nodes)
    # a worker holding a shard (and, with --replica-resource on the head, no replica)
    victim = ([n for n in ids if n in shard_nodes] or list(ids))[0]
    out["victim"] = victim
    out["victim_had_replica"] = victim in replica_nodes

    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()
    killed_at: list[float] = []
    bodies: dict[str, torch.Tensor] = {}

    def enroller() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            name = f"b{i:03d}"
            bodies[name] = h.reps(PER_SUBJECT, seed=1000 + i)
            attempted.append(name)
            t = time.monotonic()
            try:
                r = h.enroll("g1", name, bodies[name])
                status = r.status_code
            except httpx.HTTPError as e:
                status = f"{type(e).__name__}"
            if status == 200:
                acked.append(name)
            out["enrol"].append({"t": t, "status": status})
            i += 1

    def identifier() -> None:
        n = 0
        while not stop.is_set() and n < 2000:
            n += 1
            stop.wait(0.05)  # a steady stream, not a flood: the two cores run the cluster too
            for gallery in ("g2", "g1"):
                before_acked = set(acked)
                t = time.monotonic()
                try:
                    r = h.identify(gallery, probe if gallery == "g2" else probe[:1])
                except httpx.HTTPError as e:
                    out["identify"].append({"t": t, "gallery": gallery, "status": type(e).__name__})
                    continue
                rec: dict[str, Any] = {
                    "t": t,
                    "gallery": gallery,
                    "status": r.status_code,
                    "retry_after": r.headers.get("retry-after"),
                }
                if r.status_code == 200:
                    got = as_pairs(r.json()["results"])
                    if gallery == "g2":
                        rec["whole"] = same(got, want_g2)
                    else:
                        # everything acknowledged before the request was sent is there
                        names = {s for s, _ in got[0]}
                        rec["whole"] = before_acked <= names
                else:
                    rec["detail"] = r.text[:300]
                out["identify"].append(rec)

    threads = [threading.Thread(target=enroller), threading.Thread(target=identifier)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    out["acked_before_kill"] = len(acked)
    killed_at.append(time.monotonic())
    cluster.remove_node(ids[victim], allow_graceful=False)
    out["killed_at"] = killed_at[0]
    # until the whole gallery answers again, three times in a row, and a little longer
    recovered = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ok = [x for x in out["identify"] if x["t"] > killed_at[0] and x["gallery"] == "g2"]
        tail = ok[-3:]
        if len(tail) == 3 and all(x["status"] == 200 and x.get("whole") for x in tail):
            if recovered is None:
                recovered = tail[0]["t"] - killed_at[0]
            if time.monotonic() - killed_at[0] > 4:
                break
        time.sleep(0.1)
    out["recovered_after_s"] = recovered
    out["sockets_after"] = sockets()
    stop.set()
    for t in threads:
        t.join(60)
    after = actor_nodes()
    out["after"] = after
    out["dead_node"] = victim
    out["shards_after"] = sorted(name for name in after if "shard" in name)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    out["shards_on_alive_nodes"] = all(
        n in alive and n != victim for name, n in after.items() if "shard" in name
    )
    # the store: every acknowledged enrolment, whole
    store = h.svc.store  # the single-process app's own connection to the same store
    present = store.subjects("g1")
    out["acked"] = acked
    out["attempted"] = len(attempted)
    out["lost_acked"] = sorted(set(acked) - set(present))
    m = store.load("g1")
    counts = {s: int((m.subjects == s).sum()) for s in set(m.subjects)}
    out["incomplete"] = sorted(s for s, c in counts.items() if c != PER_SUBJECT)
    # and the service, after recovery, answers g1 exactly as one process does. Each replica
    # keeps its own record of which shards are down, so one may still answer 503 for a moment
    # after the other answered whole: the check follows Retry-After as a client does
    query = bodies[acked[-1]][:1] if acked else probe[:1]
    r = h.identify("g1", query)
    out["final_g1_503s"] = 0
    deadline = time.monotonic() + 30
    while r.status_code == 503 and time.monotonic() < deadline:
        out["final_g1_503s"] += 1
        time.sleep(float(r.headers.get("retry-after") or 1))
        r = h.identify("g1", query)
    out["final_g1_status"] = r.status_code
    out["final_g1_same"] = r.status_code == 200 and same(
        as_pairs(r.json()["results"]), h.expected("g1", query)
    )


# --- main ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--tmp", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"phases": {}, "errors": []}
    t0 = time.monotonic()

    def phase(name: str) -> None:
        report["phases"][name] = round(time.monotonic() - t0, 2)

    cluster = None
    proc = None
    try:
        cluster = Cluster(
            initialize_head=True,
            # the head alone declares the replicas' resource: a worker holds shards only, so
            # losing one loses shards, never a replica in mid-request (Serve's proxy answers
            # such a request 500 itself, whatever the gallery does)
            head_node_args={
                **NODE,
                "include_dashboard": False,
                "_system_config": HEALTH,
                "resources": {REPLICA_RESOURCE: REPLICAS},
            },
        )
        # connected before the workers start: Ray then knows this node's address and does not
        # probe the (absent) outside network for it once per node (about 1 s each)
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        workers = [cluster.add_node(**NODE) for _ in range(2)]
        phase("cluster_up")
        # the service starts (a process of its own) while the equality part runs here
        db = f"sqlite:///{args.tmp / 'service.db'}"
        with open_store(db) as store:
            _, token = create_key(store, ["g1", "g2"])
        url = f"http://127.0.0.1:{args.port}"
        log = args.tmp / "service.log"
        proc = start_service(cluster.address, args.bundle, db, args.port, log)
        try:
            equality(args.tmp, report)
        except Exception:  # noqa: BLE001 - recorded for the test
            report["errors"].append("equality: " + traceback.format_exc())
        phase("equality")
        up = wait_health(url, proc, 120)
        report["service_up"] = up
        phase("service_up")
        if not up:
            lines = [x for x in log.read_text().splitlines() if not x.lstrip().startswith("[")]
            report["errors"].append(
                f"service did not start (exit {proc.poll()}): " + "\n".join(lines)[-3000:]
            )
            return
        report["sockets"] = sockets()
        ip = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        report["interfaces"] = sorted({line.split()[1] for line in ip.splitlines() if line})
        h = Http(url, args.bundle, db, token)
        try:
            read_your_writes(h, report)
        except Exception:  # noqa: BLE001
            report["errors"].append("read_your_writes: " + traceback.format_exc())
        phase("read_your_writes")
        try:
            node_loss(h, cluster, workers, report)
        except Exception:  # noqa: BLE001
            report["errors"].append("node_loss: " + traceback.format_exc())
        phase("node_loss")
        proc.send_signal(signal.SIGTERM)  # as a service manager stops it
        try:
            report["service_exit"] = proc.wait(30)
        except subprocess.TimeoutExpired:
            report["service_exit"] = None
        report["service_log"] = log.read_text()[-3000:]
        phase("service_down")
    except Exception:  # noqa: BLE001
        report["errors"].append("scenario: " + traceback.format_exc())
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        phase("cluster_down")
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
