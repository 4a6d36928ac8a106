"""The service on a real 3-node Ray cluster, on loopback only (``ppfr.serve.cluster``).

Everything runs in ``scenario.py``, once per session, inside a network namespace that holds
only ``lo`` (``unshare -n``, or ``unshare -rn`` when not root): Ray binds some servers to
the machine's address otherwise, and the tests must not listen on any network. The
scenario starts one cluster (three nodes of one CPU, 75 MB object stores, no dashboard),
runs every part on it and writes a JSON report; each test here checks one part of it.
The whole directory costs about 81 CPU-seconds (every process counted): about 50-60 s on
two idle cores, more when the cores are shared (the budget is 90 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


@pytest.fixture(scope="module")
def report(bundle, tmp_path_factory) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("the cluster tests need Ray: pip install -e '.[cluster]'", pytrace=False)
    for tool in ("unshare", "ip", "ss"):
        if shutil.which(tool) is None:
            pytest.fail(f"the cluster tests need {tool} (util-linux, iproute2)", pytrace=False)
    tmp = tmp_path_factory.mktemp("cluster")
    out = tmp / "report.json"
    # a fresh network namespace holding only lo, brought up; nothing can reach outside it
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    cmd = [
        *unshare,
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        str(HERE / "scenario.py"),
        "--bundle",
        str(bundle),
        "--tmp",
        str(tmp),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    if not out.exists():
        pytest.fail(
            f"the scenario wrote no report (exit {run.returncode}):\n"
            f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}",
            pytrace=False,
        )
    rep = json.loads(out.read_text())
    print("cluster scenario phases (s since start):", rep["phases"])
    return rep


def test_scenario_ran_to_the_end(report):
    assert not report["errors"], "\n".join(report["errors"])
    assert report["service_up"]
    assert report["service_exit"] == 0, report.get("service_log")


def test_sharded_identify_equals_the_single_process_matcher(report):
    # K = 1, 2, 3; top 1, 5 and every subject; before and after writes applied in place;
    # verify on the subject's shard; unknown subject and wrong dimension raise as in one
    # process; a call past its shard deadline is answered 503 and leaves the shard up
    checks = report["equality"]["checks"]
    assert len(checks) == 48
    assert all(checks.values()), [k for k, v in checks.items() if not v]


def test_a_write_is_visible_to_the_next_request(report):
    rw = report["read_your_writes"]
    assert all(rw["checks"].values()), (rw["checks"], rw["failures"])


def test_node_loss_loses_no_acknowledged_enrolment_and_never_answers_in_part(report):
    n = report["node_loss"]
    killed = n["killed_at"]
    # the kill landed mid-burst: enrolments acknowledged before and after it
    assert n["acked_before_kill"] >= 4
    assert len(n["acked"]) > n["acked_before_kill"]
    # no acknowledged enrolment lost, none half-written
    assert n["lost_acked"] == [] and n["incomplete"] == []
    # identify: the whole right answer, or 503 with Retry-After; nothing else
    after = [x for x in n["identify"] if x["t"] >= killed]
    assert after, "no identify ran after the kill"
    # the replicas ran where --replica-resource put them, on the head: the lost worker held
    # shards only, so every answer comes from the service and the sharded gallery
    assert n["replica_nodes"] == [n["head"]] and not n["victim_had_replica"]
    other = [x for x in n["identify"] if x["status"] not in (200, 503)]
    assert not other, other[:3]
    assert all(x["whole"] for x in n["identify"] if x["status"] == 200)
    assert all(x["retry_after"] for x in n["identify"] if x["status"] == 503)
    # the lost shard came back on a surviving node and the gallery answers whole again
    assert n["recovered_after_s"] is not None
    assert n["shards_after"] == [f"ppfr-shard-{i}-of-3" for i in range(3)]
    assert n["shards_on_alive_nodes"]
    assert n["victim"] in n["before"].values() and n["victim"] not in n["after"].values()
    assert n["final_g1_same"], (n["final_g1_status"], n["final_g1_503s"])


def test_every_listening_socket_is_on_loopback(report):
    # the namespace holds nothing but lo, so nothing in it can be reached from outside
    assert report["interfaces"] == ["lo"]
    seen = report["sockets"] + report["node_loss"]["sockets_after"]
    print("listening sockets in the cluster's namespace:")
    for address, process in seen:
        print(f"  {address:28s} {process}")
    assert len(seen) > 10  # Ray's servers, the Serve proxy, the shards, the replicas...
    # Ray and our HTTP proxy bind 127.0.0.1. Ray Serve 2.60's replicas open their
    # inter-deployment gRPC server on [::]:0 whatever the configuration says
    # (ray/serve/_private/replica.py): that wildcard is why the cluster must run in a
    # namespace (or behind a firewall); here it can only be reached over lo.
    off = [
        (a, p)
        for a, p in seen
        if a.rsplit(":", 1)[0] not in LOOPBACK and not (a.startswith("*:") and "ServeRepli" in p)
    ]
    assert not off, off
    http = [a for a, p in report["sockets"] if "ProxyActor" in p and a.endswith(":8123")]
    assert http == ["127.0.0.1:8123"]
