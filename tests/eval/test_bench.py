"""`ppfr bench orl` / run_orl_bench with tiny presets on a slice of ORL (seconds, not hours)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import ppfr.experiments.bench
import ppfr.experiments.presets
from ppfr.cli.bench import bench_app
from ppfr.data.base import TensorFaces
from ppfr.data.orl import load_orl, split_identities
from ppfr.errors import InputError
from ppfr.eval.openset import evaluate_open_set
from ppfr.experiments.merge import mean_std
from ppfr.experiments.plots import label_groups, write_frontier
from ppfr.experiments.tables import bench_table
from tests.conftest import TINY, TINY_MINUSFACE

runner = CliRunner()
app = typer.Typer()  # throwaway app: the real one mounts bench_app the same way
app.add_typer(bench_app, name="bench")


@app.callback()
def _root() -> None:
    """Keep `bench` a sub-command."""


@pytest.fixture()
def tiny_bench(monkeypatch):
    """Tiny presets, one epoch per stage; padded ORL cut to 2 training / 5 test images per
    identity (5 x 10 people give 100 impostor pairs: enough for TAR@FAR=1e-2)."""
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_MODELS", {
        "arcface": TINY, "minusface": {**TINY_MINUSFACE, "train_repeats": 1}})  # fmt: skip
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_EPOCHS", {
        "arcface": {"recognizer": 1}, "minusface": {"residue": 1, "protected": 1}})  # fmt: skip
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_ATTACK", {"width": 2, "epochs": 1})
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_LINKAGE", {"epochs": 1})
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_IDENTITY", {"width": 2, "epochs": 1})
    calls = []

    def small_orl(ids, aligned=False):
        calls.append((list(ids), aligned))
        full = load_orl(ids, aligned=False)  # padding is instant; YuNet alignment is not
        keep = 2 if len(ids) > 10 else 5
        idx = [i for i in range(len(full)) if i % 10 < keep]
        return TensorFaces(full.faces[idx], full.labels[idx], full.classes)

    monkeypatch.setattr(ppfr.experiments.bench, "load_orl", small_orl)
    return calls


def test_bench_over_two_splits(tiny_bench, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "orl", "--methods", "arcface,minusface", "--splits", "2", "--seed", "4"]
    res = runner.invoke(app, [*args, "--out", str(out), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "bench.json").read_text())
    assert json.loads((tmp_path / "b.json").read_text()) == results

    # every split holds out its own 10 identities, disjoint from its 30 training ones,
    # and asks for the aligned faces
    assert results["settings"]["split_seeds"] == [4, 5]
    tests = []
    for split in results["splits"]:
        train, test = split_identities(10, split["seed"])
        assert (split["train_identities"], split["test_identities"]) == (train, test)
        assert not set(train) & set(test) and len(train) == 30 and len(test) == 10
        tests.append(test)
    assert tests[0] != tests[1]
    expected = [ids for seed in (4, 5) for ids in split_identities(10, seed)]  # train, test
    assert [ids for ids, _ in tiny_bench] == expected
    assert all(aligned for _, aligned in tiny_bench)

    # aggregates are numpy's mean and (population) std over the per-split figures
    for name, agg in results["methods"].items():
        per = [s["methods"][name] for s in results["splits"]]
        for key in ("accuracy", "auc", "train_seconds", "protect_ms", "embed_ms",
                    "recovery_ssim", "recovery_leakage", "viewing_leakage", "linkage_auc",
                    "linkage_rank1", "identity_rank1", "identity_leakage"):  # fmt: skip
            vals = [p[key] for p in per]
            assert agg[key]["values"] == vals
            assert agg[key]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
            assert agg[key]["std"] == pytest.approx(np.std(vals), abs=1e-12)
        tar = [p["tar_at_far"]["0.01"] for p in per]
        assert None not in tar and agg["tar_at_far"]["0.01"]["mean"] == pytest.approx(np.mean(tar))
        # 100 impostor pairs cannot measure a FAR of 1e-3: None, not a made-up number
        assert agg["tar_at_far"]["0.001"]["mean"] is None
        assert all(p["pairs"] == 200 and p["protect_ms"] > 0 for p in per)
        assert all(Path(p["model_dir"], "ppfr.toml").is_file() for p in per)
    assert results["methods"]["minusface"]["bytes_sent"] == 3 * 112 * 112 * 4

    table = bench_table(results)
    assert (out / "bench.md").read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    assert cells[0][4] == "TAR@FAR=1e-3 (%)" and [c[4] for c in cells[1:]] == ["n/a", "n/a"]
    assert [c[0] for c in cells[1:]] == ["arcface", "minusface"]
    assert cells[0][-4:] == ["linkage AUC", "linkage rank-1 (%)", "identity-guided rank-1 (%)",
                             "identity-guided leakage (%)"]  # fmt: skip
    assert all(c[-4] != "n/a" and c[-1] != "n/a" for c in cells[1:])
    assert "minusface" in res.output and "bench.md" in res.output
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "bench.partial.json").exists()  # only a run that did not finish keeps it


def test_bench_refuses_bad_arguments(tiny_bench):
    for methods, why in [("partialfac", "no demo preset"), ("arcface,arcface", "more than once")]:
        res = runner.invoke(app, ["bench", "orl", "--methods", methods])
        assert res.exit_code == 2 and why in res.output, res.output
    res = runner.invoke(app, ["bench", "orl", "--methods", "arcface", "--epochs", "0"])
    assert res.exit_code == 2 and "epoch_scale" in res.output
    assert not tiny_bench  # nothing was loaded, let alone trained


def test_frontier_plots_only_what_was_measured(tmp_path):
    def stat(v):
        return {"mean": v, "std": 0.01 if v is not None else None, "values": [v]}

    results = {"settings": {"test_identities": 10}, "methods": {
        "a": {"accuracy": stat(0.9), "linkage_auc": stat(0.8), "recovery_rank1": stat(0.5)},
        "b": {"accuracy": stat(0.7), "linkage_auc": stat(None), "recovery_rank1": stat(0.1)},
    }}  # fmt: skip
    assert write_frontier(results, tmp_path / "f.png") == tmp_path / "f.png"
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    bare = {"settings": {"test_identities": 10}, "methods": {"a": {"accuracy": stat(0.9)}}}
    assert write_frontier(bare, tmp_path / "g.png") is None and not (tmp_path / "g.png").exists()


def test_frontier_labels_coinciding_points_together():
    # three methods at 100 % rank-1 near 91 % accuracy, two far from them and each other
    points = [(91.6, 100.0), (90.5, 99.8), (91.2, 100.0), (48.7, 26.7), (88.2, 92.2)]
    assert label_groups(points) == [[0, 1, 2], [3], [4]]
    assert label_groups([(1.0, 1.0), (1.0, 1.0)]) == [[0, 1]] and label_groups([]) == []


def test_mean_std_is_none_aware():
    assert mean_std([0.5, 0.7]) == {"mean": 0.6, "std": pytest.approx(0.1), "values": [0.5, 0.7]}
    assert mean_std([0.5, None])["mean"] is None and mean_std([])["std"] is None


def _record(seed, methods, acc=0.9, attack=None, **fig):
    """A bench.json as run_orl_bench writes it, one split, made-up figures."""
    from ppfr.experiments.merge import aggregate

    figs = {
        m: {"accuracy": acc + i / 100, "auc": 0.95, "train_seconds": 10.0, "protect_ms": 1.0,
            "embed_ms": 2.0, "tar_at_far": {"0.01": 0.5}, "pairs": 200, "bytes_sent": 4,
            "linkage_auc": 0.6 + seed / 100, **fig}
        for i, m in enumerate(methods)
    }  # fmt: skip
    return {
        "benchmark": "orl",
        "settings": {"epoch_scale": 1.0, "test_identities": 10, "aligned": True, "device": "cpu",
                     "attack": attack or {"width": 8, "epochs": 10}, "methods": list(methods),
                     "split_seeds": [seed], "presets": {m: {"model": m} for m in methods}},
        "splits": [{"seed": seed, "test_identities": [seed], "methods": figs}],
        "methods": {m: aggregate([f]) for m, f in figs.items()},
    }  # fmt: skip


def test_merge_averages_splits_from_separate_runs(tmp_path):
    from ppfr.experiments.merge import merge_results

    runs = [_record(1, ["arcface", "minusface"]), _record(0, ["arcface", "minusface"], acc=0.8)]
    runs.append(_record(2, ["arcface", "minusface"], acc=0.7, key_placed=1.0))
    merged = merge_results(runs)
    assert merged["settings"]["split_seeds"] == [0, 1, 2] and merged["settings"]["splits"] == 3
    acc = merged["methods"]["minusface"]["accuracy"]
    assert acc["values"] == pytest.approx([0.81, 0.91, 0.71])
    assert acc["mean"] == pytest.approx(np.mean([0.81, 0.91, 0.71]))
    assert acc["std"] == pytest.approx(np.std([0.81, 0.91, 0.71]))
    assert merged["methods"]["arcface"]["linkage_auc"]["values"] == pytest.approx([0.6, 0.61, 0.62])
    # a figure only one split has is not averaged as if the others had it
    assert "key_placed" not in merged["methods"]["minusface"]
    assert merged["settings"]["merged"]["duplicates"] == []

    # the same seed from two runs: the union of their methods, a repeat reported
    extra = _record(1, ["arcface", "fracface"], acc=0.5)
    both = merge_results([runs[0], extra], methods=["arcface", "minusface", "fracface"])
    assert both["settings"]["split_seeds"] == [1]
    assert both["methods"]["fracface"]["accuracy"]["values"] == [pytest.approx(0.51)]
    (dup,) = both["settings"]["merged"]["duplicates"]
    assert (dup["method"], dup["kept_accuracy"], dup["dropped_accuracy"]) == ("arcface", 0.9, 0.5)

    with pytest.raises(InputError, match="fracface has no figures on split seed"):
        merge_results([runs[0], runs[1], extra])
    with pytest.raises(InputError, match="attack="):
        merge_results([runs[0], _record(0, ["arcface"], attack={"width": 64, "epochs": 20})])
    with pytest.raises(InputError, match="not an ORL bench"):
        merge_results([runs[0], {"benchmark": "lfw"}])
    with pytest.raises(InputError, match="no benchmark records"):
        merge_results([])


def test_bench_merge_command(tmp_path):
    paths = []
    for seed, acc in ((0, 0.8), (1, 0.9)):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "bench.json").write_text(json.dumps(_record(seed, ["arcface"], acc=acc)))
        paths.append(str(d))
    out = tmp_path / "merged"
    res = runner.invoke(app, ["bench", "merge", *paths, "--out", str(out)])
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "bench.json").read_text())
    assert merged["methods"]["arcface"]["accuracy"]["mean"] == pytest.approx(0.85)
    assert "85.00 ± 5.00" in (out / "bench.md").read_text()
    assert (out / "frontier.png").is_file()  # linkage AUC is there to plot
    (tmp_path / "bad.json").write_text("{not json")
    res = runner.invoke(app, ["bench", "merge", str(tmp_path / "bad.json"), "--out", str(out)])
    assert res.exit_code != 0 and "not a JSON file" in res.output
    res = runner.invoke(app, ["bench", "merge", str(tmp_path / "nowhere"), "--out", str(out)])
    assert res.exit_code != 0 and "no bench.json" in res.output


def test_a_run_killed_half_way_keeps_what_it_measured(tiny_bench, tmp_path, monkeypatch):
    real = ppfr.experiments.bench._train_and_score

    def dies_on_minusface(method, *args, **kwargs):
        if method == "minusface":
            raise MemoryError("killed")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(ppfr.experiments.bench, "_train_and_score", dies_on_minusface)
    out = tmp_path / "bench"
    with pytest.raises(MemoryError):
        ppfr.experiments.bench.run_orl_bench(
            ["arcface", "minusface"], splits=1, seed=4, out=out, progress=False, log=lambda _: None
        )
    partial = json.loads((out / "bench.partial.json").read_text())
    assert partial["partial"] is True and not (out / "bench.json").exists()
    (split,) = partial["splits"]
    assert split["seed"] == 4 and list(split["methods"]) == ["arcface"]
    # what it kept is what the saved arcface scores on the split's held-out faces
    arcface = split["methods"]["arcface"]
    test_set = ppfr.experiments.bench.load_orl(split["test_identities"], aligned=True)
    want, _ = evaluate_open_set(ppfr.load(arcface["model_dir"]), test_set, seed=4)
    assert arcface["accuracy"] == want.accuracy and arcface["auc"] == want.auc
    assert "recovery_leakage" in split["methods"]["arcface"]
