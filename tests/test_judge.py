"""The SFace judge: model loading, input handling, ORL verification, leakage, rank-1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ppfr.data.images import save_image, to_tensor
from ppfr.data.orl import aligned_orl, orl_image, orl_root
from ppfr.errors import InputError
from ppfr.judge import (
    DEFAULT_THRESHOLD,
    Judge,
    balanced_pairs,
    best_threshold,
    get_judge,
    load_sface,
    verification_accuracy,
)


@pytest.fixture(scope="module")
def judge() -> Judge:
    return get_judge()


@pytest.fixture(scope="module")
def orl(judge):
    """Aligned ORL faces, labels and their embeddings (computed once: ~5 s)."""
    faces, labels = aligned_orl()
    return faces, labels, judge.embed(faces)


def test_model_loads_with_one_input_and_free_batch():
    sess = load_sface()
    (inp,) = sess.get_inputs()
    assert inp.name == "data" and inp.shape[1:] == [3, 112, 112]
    assert isinstance(inp.shape[0], str)  # batch dimension freed
    out = sess.run(None, {"data": np.zeros((3, 3, 112, 112), np.float32)})[0]
    assert out.shape == (3, 128)


def test_get_judge_is_shared():
    assert get_judge() is get_judge()
    assert get_judge().threshold == DEFAULT_THRESHOLD


def test_batches_match_single_images(judge, orl):
    faces, _, emb = orl
    singles = np.concatenate([judge.embed(faces[i]) for i in range(3)])
    np.testing.assert_allclose(singles, emb[:3], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb.dtype == np.float32 and emb.shape == (400, 128)


def test_input_forms_agree(judge, orl):
    faces, _, emb = orl
    t = torch.stack([to_tensor(f) for f in faces[:4]])  # [-1, 1], the ppfr face range
    np.testing.assert_allclose(judge.embed(t), emb[:4], atol=1e-4)
    np.testing.assert_allclose(judge.embed((t + 1) / 2, value_range=(0, 1)), emb[:4], atol=1e-4)
    np.testing.assert_allclose(judge.embed(t[0].numpy()), emb[:1], atol=1e-4)


@pytest.mark.parametrize(
    "bad,kwargs",
    [
        (np.zeros((2, 3, 112, 112), np.uint8), {}),  # uint8 must be channels-last
        (np.zeros((2, 112, 112, 3), np.float32), {}),  # float must be channels-first
        (np.zeros((2, 64, 64, 3), np.uint8), {}),  # not aligned
        (np.zeros((2, 3, 112, 112), np.int32), {}),
        (np.full((1, 3, 112, 112), 200.0, np.float32), {}),  # 0..255 floats, range (-1, 1)
        (np.full((1, 3, 112, 112), -0.5, np.float32), {"value_range": (0, 1)}),
        (np.full((1, 3, 112, 112), np.nan, np.float32), {}),
        (np.zeros((1, 3, 112, 112), np.float32), {"value_range": (1, 0)}),
        ([[1, 2, 3]], {}),
    ],
)
def test_bad_inputs_raise_input_error(judge, bad, kwargs):
    with pytest.raises(InputError):
        judge.embed(bad, **kwargs)


def test_judge_separates_orl_people(judge, orl):
    """All 3600 ordered genuine ORL pairs + 3600 impostor pairs (seed 0)."""
    _, labels, emb = orl
    a, b, same = balanced_pairs(labels, seed=0)
    assert same.sum() == 3600 and (~same).sum() == 3600
    sim = judge.similarity(emb[a], emb[b])
    fixed = verification_accuracy(sim, same, threshold=DEFAULT_THRESHOLD)
    cv = verification_accuracy(sim, same)  # 10-fold cross-validated threshold
    assert fixed >= 0.98 and cv >= 0.98  # the measured figures: docs/results.md


def test_judge_on_unaligned_padded_orl(judge):
    """Without alignment (92x112 padded to 112) the judge is near its limit on these 8 people
    (docs/results.md, "The independent judge on ORL")."""
    root = orl_root()
    faces = np.stack(
        [orl_image(root / f"s{s}" / f"{k}.pgm") for s in range(1, 9) for k in range(1, 11)]
    )
    labels = np.repeat(np.arange(8), 10)
    emb = judge.embed(faces)
    a, b, same = balanced_pairs(labels, seed=0)
    assert verification_accuracy(judge.similarity(emb[a], emb[b]), same) >= 0.95


def test_leakage_of_originals_is_high_and_of_noise_is_chance(judge, orl):
    faces, labels, emb = orl
    # the measured leakages, originals and noise: docs/results.md
    assert judge.leakage(emb, emb, labels, seed=0) >= 0.98
    # Images in ppfr's [-1, 1] range against precomputed embeddings, on a subset (speed).
    t = torch.stack([to_tensor(f) for f in faces[:60]])
    assert judge.leakage(t, emb[:60], labels[:60], seed=1) >= 0.98
    noise = torch.rand(60, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    e_noise = judge.embed(noise)
    chance = judge.leakage(e_noise, emb[:60], labels[:60], seed=0)
    assert 0.4 <= chance <= 0.6
    fixed = judge.leakage(e_noise, emb[:60], labels[:60], seed=0, threshold=judge.threshold)
    assert 0.45 <= fixed <= 0.55  # noise never clears 0.363: exactly 50%


def test_balanced_pairs_are_balanced_seeded_and_never_self():
    labels = np.repeat(np.arange(5), 4)
    a, b, same = balanced_pairs(labels, seed=3)
    assert (a != b).all()
    assert np.array_equal(labels[a] == labels[b], same)
    assert same.sum() == (~same).sum() == 5 * 4 * 3
    a2, b2, _ = balanced_pairs(labels, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    a3, _, _ = balanced_pairs(labels, seed=4)
    assert not np.array_equal(a, a3)
    assert len(balanced_pairs(labels, seed=0, max_per_class=7)[0]) == 14
    with pytest.raises(InputError):
        balanced_pairs([0, 1, 2])  # nobody appears twice


def test_threshold_calibration():
    assert best_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    same = rng.random(2000) < 0.5
    sim = np.where(same, rng.normal(0.7, 0.1, 2000), rng.normal(0.1, 0.1, 2000))
    t = best_threshold(sim, same)
    assert 0.3 < t < 0.5
    assert verification_accuracy(sim, same, threshold=t) >= verification_accuracy(sim, same)
    # the judge's calibration is this rule, and no threshold on sim scores better
    calibrated = Judge.calibrate(sim, same)
    assert calibrated == t
    every_cut = [*np.unique(sim), np.inf]
    best = max(verification_accuracy(sim, same, threshold=c) for c in every_cut)
    assert verification_accuracy(sim, same, threshold=calibrated) == best
    with pytest.raises(InputError):
        best_threshold([0.1, 0.2], [True])


def test_verify_and_similarity(judge, orl):
    faces, _, emb = orl
    sim, same = judge.verify(faces[0], faces[1])  # same person (s1)
    assert isinstance(sim, float) and same is True
    sim, same = judge.verify(faces[0], faces[10])  # s1 vs s2
    assert same is False and sim < judge.threshold
    sims, sames = judge.verify(faces[:2], faces[10:12])
    assert sims.shape == (2,) and not sames.any()
    assert judge.similarity(emb[0], emb[0]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError):
        judge.verify(faces[:2], faces[:3])


def test_rank1(judge, orl):
    _, labels, emb = orl
    gallery = np.arange(0, 400, 10)  # first image of each person
    probes = np.setdiff1d(np.arange(400), gallery)
    acc = judge.rank1(emb[probes], labels[probes], emb[gallery], labels[gallery])
    assert acc >= 0.95  # the measured rank-1: docs/results.md


def test_verify_command(tmp_path, orl):
    import typer

    from ppfr.cli.judge import judge_app

    faces, _, _ = orl
    save_image(faces[0], tmp_path / "a.png")
    save_image(faces[1], tmp_path / "b.png")
    app = typer.Typer()
    app.add_typer(judge_app, name="judge")
    runner = CliRunner()
    res = runner.invoke(app, ["judge", "verify", str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    assert "same person" in res.output
    raw = orl_root() / "s2" / "1.pgm"  # 92x112: aligned on the fly
    res = runner.invoke(app, ["judge", "verify", str(tmp_path / "a.png"), str(raw)])
    assert res.exit_code == 0 and "aligned it automatically" in res.output
    assert "different people" in res.output
    res = runner.invoke(app, ["judge", "verify", str(tmp_path / "missing.png"), str(raw)])
    assert res.exit_code == 2 and "no such file" in res.output


def test_embed_remembers_recent_inputs_by_content(judge):
    rng = np.random.default_rng(0)
    # inside [-0.9, 0.9]: the changed pixel and the shifted copies below stay in range
    x = rng.uniform(-0.9, 0.9, (3, 3, 112, 112)).astype(np.float32)
    first = judge.embed(x)
    first[:] = 0  # the caller's copy: the remembered result must not change with it
    again = judge.embed(x.copy())  # same pixels, another array
    assert np.abs(again).sum() > 0 and np.allclose(np.linalg.norm(again, axis=1), 1, atol=1e-5)
    y = x.copy()
    y[0, 0, 0, 0] += 0.5 if y[0, 0, 0, 0] < 0 else -0.5  # one pixel differs: embedded
    # afresh, other faces unchanged
    other = judge.embed(y)
    assert np.array_equal(other[1:], again[1:])
    fresh = Judge()._embed_pixels(np.ascontiguousarray((x + 1) * 127.5))
    assert np.allclose(fresh, again, atol=1e-6)
    for k in range(Judge.MEMO_ENTRIES + 2):  # bounded: old entries leave
        judge.embed(x[:1] + k * 1e-3)
    assert len(judge._memo) == Judge.MEMO_ENTRIES
