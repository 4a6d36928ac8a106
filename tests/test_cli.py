"""The `ppfr` command line, end to end on real ORL faces and tiny models."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ppfr
import ppfr.data.orl
import ppfr.experiments.demo
import ppfr.experiments.presets
from ppfr.attacks import ViewingAttack, create_attack
from ppfr.attacks._scoring import average_face_scores
from ppfr.cli import app
from ppfr.cli.attack import attack_data
from ppfr.data.base import TensorFaces
from ppfr.data.images import load_face, save_image, to_uint8
from ppfr.experiments.demo import attack_model, run_demo, score_model
from ppfr.experiments.presets import ORL_FARS, DemoPresets
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
    # what the client itself makes of the image with the same seed, in one batch
    faces = torch.stack([load_face(p) for p in images])
    client = ppfr.load(bundle, part="client")
    with torch.inference_mode():
        want = client.protect(faces, generator=torch.Generator().manual_seed(1))
    assert rep.shape == (3, 112, 112)
    np.testing.assert_array_equal(rep, want[0].numpy())
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


#: presets small enough for a test: one epoch per stage, width-2 attack networks
TINY_PRESETS = DemoPresets(
    models={"arcface": TINY, "minusface": {**TINY_MINUSFACE, "train_repeats": 1}},
    epochs={"arcface": {"recognizer": 1}, "minusface": {"residue": 1, "protected": 1}},
    attack={"width": 2, "epochs": 1},
    linkage={"epochs": 1},
    identity={"width": 2, "epochs": 1},
)


def _json(x) -> str:
    """``x`` as canonical JSON text (NaN compares equal to NaN here, unlike in a dict)."""
    return json.dumps(json.loads(x) if isinstance(x, str) else x, sort_keys=True)


@pytest.mark.slow
@pytest.mark.timeout(900)  # trains 2 models and 6 attack networks, then reruns 3
def test_demo_end_to_end(tmp_path, monkeypatch):
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
    results = run_demo(tmp_path, presets=TINY_PRESETS, progress=False, log=lambda _: None)
    assert _json((tmp_path / "report.json").read_text()) == _json(results)
    assert set(results["methods"]) == {"arcface", "minusface"}
    assert loaded == [True, True]  # the demo asks for the aligned faces
    data = results["data"]
    assert not set(data["train_identities"]) & set(data["test_identities"])
    train_set = small_orl(data["train_identities"], aligned=True)
    test_set = small_orl(data["test_identities"], aligned=True)

    # every figure recomputed from the report's inputs: the saved models, the faces, seed 0
    models = {m: ppfr.load(r["model_dir"]) for m, r in results["methods"].items()}
    for name, r in results["methods"].items():
        want = score_model(models[name], test_set, seed=0, extra_fars=ORL_FARS)
        for key in ("accuracy", "std", "auc", "tar_at_far", "pairs", "bytes_sent"):
            assert r[key] == want[key], (name, key)
        # the attacks rerun: all of them on the product (MinusFace), the viewing on ArcFace
        attacks = {"viewing": ViewingAttack().run(models[name], test_set.stack(),
                                                  test_set.labels, seed=0).to_dict()}  # fmt: skip
        if name == "minusface":
            attacks, _ = attack_model(
                models[name], train_set, test_set, seed=0, progress=False,
                recognizer=models["arcface"], presets=TINY_PRESETS,
            )  # fmt: skip
            assert set(attacks) == set(r["attacks"])
        for attack, scores in attacks.items():
            timed = {"fit_seconds"}
            got = {k: v for k, v in r["attacks"][attack].items() if k not in timed}
            want = {k: v for k, v in scores.items() if k not in timed}
            assert _json(got) == _json(want), (name, attack)
        # the recovery floor: the attacker's average face against each victim
        floor = average_face_scores(train_set.stack(), test_set.stack())
        assert r["attacks"]["recovery"]["floor_ssim"] == floor["floor_ssim"]
    # the unprotected baseline shows the face itself to the viewing attack
    assert results["methods"]["arcface"]["attacks"]["viewing"]["ssim"] > 0.99
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # plot + one grid per method
    assert "minusface" in page and "recovery leakage" in page
    assert "| minusface |" in (tmp_path / "results.md").read_text()


def test_demo_command_runs_the_shipped_presets(tmp_path, monkeypatch):
    """``ppfr demo`` passes the shipped presets to run_demo and prints its tables."""
    (tmp_path / "report.json").write_text("{}")
    calls = []

    def fake_run_demo(out, methods, **kwargs):
        calls.append((methods, kwargs))
        r = {"accuracy": 0.9, "std": 0.01, "auc": 0.95, "tar_at_far": {"0.01": 0.5},
             "train_seconds": 3.0, "protect_ms": 1.0, "embed_ms": 2.0, "bytes_sent": 150528,
             "attacks": {"viewing": {"ssim": 0.1, "leakage": 0.5}}}  # fmt: skip
        return {"methods": {m: r for m in methods}, "seconds": 60.0}

    monkeypatch.setattr(ppfr.experiments.demo, "run_demo", fake_run_demo)
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--methods", "arcface"])
    assert res.exit_code == 0, res.output
    ((methods, kwargs),) = calls
    assert methods == ("arcface",) and kwargs["presets"] == DemoPresets()
    assert "90.00 ± 1.00" in res.output and "150,528" in res.output
    monkeypatch.undo()  # the real run_demo refuses a method without a preset before training
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
    assert report["model"] == str(bundle) and grid.stat().st_size > 1000
    # the scores are the recovery attack's on the same split, run directly
    victims, labels, aux, aux_labels = attack_data("orl", 4, 0)
    direct = create_attack("recovery", width=2, epochs=1, progress=False).run(
        ppfr.load(bundle, part="client"), victims, labels, aux=aux, aux_labels=aux_labels
    )
    for key in ("ssim", "psnr", "leakage", "rank1", "floor_ssim", "floor_psnr", "train_l1"):
        assert report[key] == direct[key], key
    assert "leakage" in res.output

    res = runner.invoke(app, [*args, "--attack", "viewin"])
    assert res.exit_code == 2 and "unknown attack" in res.output
    res = runner.invoke(app, [*args, "--test-identities", "40"])
    assert res.exit_code == 2 and "test-identities" in res.output
