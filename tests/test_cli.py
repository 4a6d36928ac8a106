"""The `ppfr` command line, end to end on real ORL faces and tiny models."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import ppfr
import ppfr.data.orl
import ppfr.experiments.demo
import ppfr.experiments.presets
from ppfr.cli import app
from ppfr.data.base import TensorFaces
from ppfr.data.images import save_image, to_uint8
from tests.conftest import TINY, TINY_MINUSFACE

runner = CliRunner()


@pytest.fixture()
def images(tmp_path, orl4):
    paths = []
    for i in (0, 10, 20):
        p = tmp_path / f"face{i}.png"
        save_image(to_uint8(orl4.faces[i]), p)
        paths.append(p)
    return paths


def test_protect_writes_representations_and_views(bundle, images, tmp_path):
    out = tmp_path / "out"
    args = ["protect", *map(str, images), "--model", str(bundle), "--out", str(out), "--seed", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rep = np.load(out / "face0.npy")
    assert rep.shape == (3, 112, 112) and 0 <= rep.min() and rep.max() <= 1
    assert (out / "face0.png").is_file()
    # never overwrites silently; with --overwrite and the same seed the output repeats
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "outputs exist" in res.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert np.array_equal(np.load(out / "face0.npy"), rep)


def test_embed_writes_one_row_per_image(bundle, images, tmp_path):
    out = tmp_path / "emb.npy"
    res = runner.invoke(
        app, ["embed", *map(str, images), "--model", str(bundle), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    emb = np.load(out)
    assert emb.shape == (3, 64)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_bad_inputs_give_clear_errors(bundle, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    res = runner.invoke(
        app, ["protect", str(broken), "--model", str(bundle), "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "broken.png" in res.output and "cannot read image" in res.output
    big = tmp_path / "big.png"
    save_image(np.zeros((120, 100, 3), np.uint8), big)
    res = runner.invoke(app, ["protect", str(big), "--model", str(bundle), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "aligned 112x112" in res.output
    res = runner.invoke(
        app,
        [
            "embed",
            str(images[0]),
            "--model",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "e.npy"),
        ],
    )
    assert res.exit_code == 2 and "no such model directory" in res.output
    assert "Traceback" not in res.output


def test_train_from_a_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'method = "arcface"\nout = "%s"\n[model]\nbackbone_width = 0.125\nembedding_size = 64\n'
        '[data]\nsource = "orl-padded"\n[optim]\nepochs = 1\nbatch_size = 32\nmilestones = []\n'
        % (tmp_path / "run")
    )
    res = runner.invoke(app, ["train", str(cfg)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model" / "ppfr.toml").is_file()
    res = runner.invoke(app, ["train", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "no such config" in res.output
    # a kept client needs the stage to start at, and a stage that exists
    bundle = str(tmp_path / "run" / "model")
    res = runner.invoke(app, ["train", str(cfg), "--client", bundle])
    assert res.exit_code == 2 and "needs from_stage" in res.output
    res = runner.invoke(app, ["train", str(cfg), "--client", bundle, "--from-stage", "protected"])
    assert res.exit_code == 2 and "has stages ['recognizer']" in res.output


def test_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ppfr.experiments.presets,
        "DEMO_MODELS",
        {"arcface": TINY, "minusface": {**TINY_MINUSFACE, "train_repeats": 1}},
    )
    monkeypatch.setattr(
        ppfr.experiments.presets,
        "DEMO_EPOCHS",
        {"arcface": {"recognizer": 1}, "minusface": {"residue": 1, "protected": 1}},
    )
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_ATTACK", {"width": 2, "epochs": 1})
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_LINKAGE", {"epochs": 1})
    monkeypatch.setattr(ppfr.experiments.presets, "DEMO_IDENTITY", {"width": 2, "epochs": 1})
    loaded = []

    def small_orl(ids, aligned=False):
        # the demo's own split and loader, cut to 3 training / 5 held-out images per person
        # (alignment and the full-size run are checked elsewhere: tests/test_align.py, docs)
        loaded.append(aligned)
        full = ppfr.data.orl.load_orl(ids, aligned=aligned)
        keep = 3 if len(ids) > 10 else 5
        idx = [i for i in range(len(full)) if i % 10 < keep]
        return TensorFaces(full.faces[idx], full.labels[idx], full.classes)

    monkeypatch.setattr(ppfr.experiments.demo, "load_orl", small_orl)
    res = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "report.json").read_text())
    assert set(results["methods"]) == {"arcface", "minusface"}
    for r in results["methods"].values():
        assert 0.4 < r["accuracy"] <= 1 and r["protect_ms"] > 0
        assert 0 <= r["attacks"]["linkage"]["auc"] <= 1
        for attack in ("viewing", "recovery", "identity-recovery"):
            scores = r["attacks"][attack]
            assert 0 <= scores["leakage"] <= 1 and -1 <= scores["ssim"] <= 1
    # the unprotected baseline shows the face itself to the viewing attack
    assert results["methods"]["arcface"]["attacks"]["viewing"]["ssim"] > 0.99
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # plot + one grid per method
    assert "minusface" in page and "recovery leakage" in page
    assert not set(results["data"]["train_identities"]) & set(results["data"]["test_identities"])
    assert "| minusface |" in (tmp_path / "results.md").read_text()
    assert loaded == [True, True]  # the demo asks for the aligned faces
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--methods", "partialfac"])
    assert res.exit_code == 2 and "no demo preset" in res.output


def test_attack_command(bundle, tmp_path):
    out = tmp_path / "scores.json"
    grid = tmp_path / "grid.png"
    # 4 victim people, the attacker's own faces from the other 36: the judge (the slow part)
    # scores 40 reconstructions, the width-2 inverter trains one epoch on 360 faces
    args = ["attack", "--model", str(bundle), "--test-identities", "4", "--width", "2"]
    more = ["--attack", "recovery", "--epochs", "1", "--json", str(out), "--grid", str(grid)]
    res = runner.invoke(app, [*args, *more])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["attack"] == "recovery" and report["method"] == "minusface"
    assert report["n"] == 40 and report["aux"] == 360
    assert 0 <= report["leakage"] <= 1 and grid.stat().st_size > 1000
    assert "leakage" in res.output

    res = runner.invoke(app, [*args, "--attack", "viewin"])
    assert res.exit_code == 2 and "unknown attack" in res.output
    res = runner.invoke(app, [*args, "--test-identities", "40"])
    assert res.exit_code == 2 and "test-identities" in res.output
