"""Merging the shards' top-k lists, and the ``ppfr serve`` options of the cluster (no Ray run)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ppfr.cli import app
from ppfr.errors import InputError
from ppfr.serve.cluster.merge import merge_top_k


def _ranked(best: dict[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(best.items(), key=lambda p: (-p[1], p[0]))[:k]


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("top_k", [1, 3, 50])
def test_merge_of_partitioned_top_k_is_the_global_top_k(shards, top_k):
    rng = np.random.default_rng(shards * 100 + top_k)
    m, names = 4, [f"s{i:02d}" for i in range(20)]
    owner = {s: int(rng.integers(shards)) for s in names}  # any partition of the subjects
    scores = rng.normal(size=(m, len(names)))
    parts = []
    for i in range(shards):
        parts.append(
            [
                _ranked(
                    {s: float(scores[q, j]) for j, s in enumerate(names) if owner[s] == i}, top_k
                )
                for q in range(m)
            ]
        )
    want = [_ranked({s: float(scores[q, j]) for j, s in enumerate(names)}, top_k) for q in range(m)]
    assert merge_top_k(parts, top_k) == want


def test_merge_orders_ties_by_name_and_keeps_empty_shards():
    parts = [[[("b", 0.5), ("d", 0.1)]], [[]], [[("a", 0.5), ("c", 0.7)]]]
    assert merge_top_k(parts, 3) == [[("c", 0.7), ("a", 0.5), ("b", 0.5)]]
    with pytest.raises(ValueError, match="queries"):
        merge_top_k([[[("a", 1.0)]], []], 1)


def test_shards_and_replicas_need_a_cluster(tmp_path):
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--shards", "2"])
    assert res.exit_code == 2
    assert "--shards and --replicas need --cluster" in res.output


def test_the_cluster_refuses_an_encrypted_gallery(tmp_path):
    # the sharded gallery rebuilds shards from the SQL store; encrypted galleries live in
    # the matching server's files (docs/templates.md, "Not on the Ray cluster")
    args = ["serve", "--model", str(tmp_path), "--cluster", "local"]
    args += ["--encrypted-dir", str(tmp_path / "enc"), "--keyholder-url", "http://127.0.0.1:1"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "--encrypted-dir does not apply" in res.output
    assert not (tmp_path / "enc").exists()


def test_replicas_take_one_unit_of_a_custom_resource(tmp_path):
    from ppfr.serve.cluster.service import build_application
    from ppfr.serve.cluster.shard import ShardSpec

    spec = ShardSpec("ppfr", 1, f"sqlite:///{tmp_path / 'g.db'}")
    for builtin in ("CPU", "GPU", ""):
        with pytest.raises(InputError, match="custom resource name"):
            build_application(tmp_path, spec.db_url, spec, replicas=1, replica_resource=builtin)
    # what Ray will place each replica by (Serve keeps it on the bound deployment)
    placed = build_application(tmp_path, spec.db_url, spec, replicas=2, replica_resource="ingress")
    assert placed._bound_deployment.ray_actor_options["resources"] == {"ingress": 1.0}  # noqa: SLF001
    anywhere = build_application(tmp_path, spec.db_url, spec, replicas=1)
    assert anywhere._bound_deployment.ray_actor_options["resources"] == {}  # noqa: SLF001


def test_ray_stays_out_of_the_core_and_a_missing_ray_names_the_extra(tmp_path):
    # one interpreter (PyTorch imports once): `import ppfr` and the single-process service
    # never load Ray; then, with Ray blocked, `ppfr serve --cluster` names the extra to install
    code = (
        "import sys, ppfr, ppfr.serve.app, ppfr.serve.matching, ppfr.cli\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
        "sys.stdout.flush()\n"
        "sys.modules['ray'] = None\n"
        f"ppfr.cli.app(['serve', '--model', {str(tmp_path)!r}, '--cluster', 'local'], "
        "prog_name='ppfr')\n"
    )
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "[]", run.stdout
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "pip install 'ppfr[cluster]'" in run.stderr
