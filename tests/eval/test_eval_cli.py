"""`ppfr eval` on .bin packs made from real ORL faces, through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import ppfr
from ppfr.cli.eval import eval_cmd
from ppfr.data.binpack import read_bin, write_bin
from ppfr.eval import evaluate_pairs

runner = CliRunner()
app = typer.Typer()  # throwaway app: the real one mounts eval_cmd the same way


@app.callback()
def _root() -> None:
    """Keep `eval` a sub-command."""


app.command("eval")(eval_cmd)


@pytest.fixture(scope="module")
def pack(tmp_path_factory, orl4):
    """24 pairs of 4 ORL people, genuine and impostor alternating (every fold sees both)."""
    faces, issame = [], []
    for i in range(4):
        for k in (0, 2, 4):
            faces += [orl4.faces[10 * i + k], orl4.faces[10 * i + k + 1]]  # same subject
            faces += [orl4.faces[10 * i + k + 1], orl4.faces[10 * ((i + 1) % 4) + k]]  # other
            issame += [True, False]
    path = tmp_path_factory.mktemp("packs") / "mini.bin"
    write_bin(path, torch.stack(faces), issame, format="png")
    return path


def test_eval_prints_table_and_writes_json(bundle, pack, tmp_path):
    out = tmp_path / "res" / "eval.json"
    args = ["eval", "--model", str(bundle), "--bin", str(pack), "--json", str(out)]
    res = runner.invoke(app, [*args, "--batch-size", "16", "--seed", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "mini.bin" in res.output and "AUC" in res.output
    report = json.loads(out.read_text())
    assert {"model", "method", "client_fingerprint", "seed", "batch_size", "results"} <= set(report)
    assert report["method"] == "minusface" and report["seed"] == 3 and report["batch_size"] == 16
    (r,) = report["results"]
    assert r["pack"] == str(pack) and r["name"] == "mini"
    assert {"accuracy", "std", "auc", "tar_at_far", "num_pairs", "folds"} <= set(r)
    assert set(r["tar_at_far"]) == {"0.001", "0.0001"}
    assert r["num_pairs"] == 24 and r["num_genuine"] == 12 and len(r["folds"]) == 10
    # the protocol's accuracy is the mean of the ten held-out folds' (each fold's pairs)
    folds = r["folds"]
    assert sum(f["num_pairs"] for f in folds) == 24
    assert r["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in folds]), abs=1e-12)
    assert r["std"] == pytest.approx(np.std([f["accuracy"] for f in folds]), abs=1e-12)
    # the command is exactly evaluate_pairs (protect + embed, flip-sum) with the given seed
    direct = evaluate_pairs(ppfr.load(bundle), read_bin(pack), batch_size=16, seed=3).to_dict()
    assert r["accuracy"] == direct["accuracy"] and r["folds"] == direct["folds"]
    assert r["auc"] == pytest.approx(direct["auc"])


def test_bad_packs_exit_2_naming_the_file(bundle, pack, tmp_path):
    data = pack.read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"JUNK" * 100)
    tiny = tmp_path / "tiny.bin"
    write_bin(tiny, np.zeros((8, 112, 112, 3), np.uint8), [True, False] * 2, format="png")
    for bad, why in [(truncated, "truncated"), (garbage, "not a pickle"), (tiny, "needs at least")]:
        # the good pack comes first: bad packs are found before any evaluation starts
        args = ["eval", "--model", str(bundle), "--bin", str(pack), "--bin", str(bad)]
        res = runner.invoke(app, [*args, "--no-progress"])
        assert res.exit_code == 2, res.output
        assert bad.name in res.output and why in res.output
        assert "Traceback" not in res.output and "mini:" not in res.output
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--bin", str(pack)])
    assert res.exit_code == 2 and "no such model directory" in res.output
    client_only = ppfr.load(bundle, part="client").save(tmp_path / "client")
    res = runner.invoke(app, ["eval", "--model", str(client_only), "--bin", str(pack)])
    assert res.exit_code == 2 and "client and server parts" in res.output, res.output
