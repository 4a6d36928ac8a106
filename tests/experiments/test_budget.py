"""The attacker-budget sweep: its grid, the attacker's face subsets and augmentation, the
resumable JSON file, the table and plot, and one real cell on a tiny model."""

import json

import numpy as np
import pytest
import torch

from ppfr.errors import InputError
from ppfr.experiments import budget as bud
from ppfr.experiments.budget import (
    Budget,
    attacker_subset,
    augment_faces,
    budget_faces,
    budget_figure,
    budget_table,
    default_grid,
    largest_budget,
    load_results,
    run_budget_sweep,
    summarise,
)

SEEDS = range(10)


def test_budget_key_round_trip_and_checks():
    for b in (Budget(), Budget(30, 1, 6), Budget(None, 4, 24, "scratch")):
        assert Budget.from_key(b.key) == b
    assert Budget().key == "faces=all/copies=1/epochs=6/init=recognizer"
    assert Budget(None, 1, 6, "scratch").attacks() == ("linkage",)
    assert Budget().attacks() == ("linkage", "identity-recovery")
    assert Budget(None, 4, 24).seen(300) == 300 * 4 * 24
    assert Budget(1000, 1, 1).seen(300) == 300  # never more faces than the attacker has
    for bad in ({"faces": 1}, {"copies": 0}, {"epochs": 0}, {"init": "photos"}):
        with pytest.raises(InputError):
            Budget(**bad)
    with pytest.raises(InputError):
        Budget.from_key("faces=30/epochs=6")


def test_default_grid_is_one_axis_at_a_time_cheapest_first():
    grid = default_grid(300, [6, 12, 24], faces=(30, 100, 500), copies=4)
    keys = [b.key for b in grid]
    assert len(keys) == len(set(keys))
    assert Budget(None, 1, 6) in grid  # the demo's cell
    assert Budget(500) not in grid and Budget(500, 1, 6) not in grid  # above what it has
    assert {Budget(30), Budget(100), Budget(None, 1, 12), Budget(None, 1, 24)} <= set(grid)
    assert largest_budget(24, 4) in grid and Budget(None, 4, 24, "scratch") in grid
    costs = [b.seen(300) for b in grid]
    assert costs == sorted(costs)
    assert grid[-2:] == [largest_budget(24, 4), Budget(None, 4, 24, "scratch")]
    with pytest.raises(InputError):
        default_grid(300, [])


@pytest.mark.parametrize("seed", SEEDS)
def test_attacker_subset_spreads_faces_over_identities(seed):
    labels = np.repeat(np.arange(30), 10)
    for n in (2, 30, 45, 100, 299):
        pick = attacker_subset(labels, n, seed)
        assert len(pick) == n == len(set(pick.tolist()))
        counts = np.bincount(labels[pick], minlength=30)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(attacker_subset(labels, None, seed), np.arange(300))
    assert np.array_equal(attacker_subset(labels, 400, seed), np.arange(300))
    assert np.array_equal(attacker_subset(labels, 45, seed), attacker_subset(labels, 45, seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_augment_faces_keeps_the_originals_and_the_range(seed):
    g = torch.Generator().manual_seed(seed)
    faces = torch.rand(5, 3, 112, 112, generator=g) * 2 - 1
    out = augment_faces(faces, 3, seed)
    assert out.shape == (15, 3, 112, 112)
    assert torch.equal(out[:5], faces)  # the attacker's own photos come first, untouched
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, augment_faces(faces, 3, seed))  # seeded
    # every copy differs from its original (a warp and a brightness change are drawn)
    diff = (out[5:] - faces.repeat(2, 1, 1, 1)).abs().flatten(1).mean(1)
    assert bool((diff > 1e-3).all())
    assert torch.equal(augment_faces(faces, 1, seed), faces)
    with pytest.raises(InputError):
        augment_faces(faces, 0, seed)


def test_augmented_copy_of_a_flat_face_stays_flat():
    # a warp of a constant image is that constant (borders repeat the edge); brightness and
    # contrast move it by at most 0.15 * |v| + 0.15
    faces = torch.full((2, 3, 112, 112), 0.2)
    out = augment_faces(faces, 4, seed=3)
    copies = out[2:].flatten(1)
    assert bool((copies.max(1).values - copies.min(1).values < 1e-5).all())
    assert bool(((copies - 0.2).abs() <= 0.15 * 0.2 + 0.15 + 1e-6).all())


def test_budget_faces_subset_then_copies():
    aux = torch.rand(60, 3, 112, 112) * 2 - 1
    labels = np.repeat(np.arange(6), 10)
    faces, fl = budget_faces(aux, labels, Budget(12, 3, 1), seed=0)
    assert faces.shape[0] == 36 and len(fl) == 36
    assert np.array_equal(fl[:12], fl[12:24]) and np.bincount(fl[:12]).tolist() == [2] * 6


def _fake_cell(calls, fail=()):
    def cell(model, recognizer, aux, aux_labels, victims, labels, budget, attacks=(), **kw):
        calls.append(budget.key)
        if budget.key in fail:
            raise RuntimeError("out of memory")
        scores = {"linkage": {"auc": 0.6 + 0.01 * budget.epochs, "accuracy": 0.6, "rank1": 0.2},
                  "identity-recovery": {"leakage": 0.7, "rank1": 0.3}}  # fmt: skip
        return {"budget": {}, "faces": 1, **{a: scores[a] for a in attacks}}

    return cell


def _fake_load(method, seed):
    if method == "missing":
        return None
    return {"model": None, "recognizer": None, "aux": None, "aux_labels": None,
            "victims": None, "labels": None, "bound": {"accuracy": 0.9, "auc": 0.95}}  # fmt: skip


def test_sweep_writes_each_cell_and_resumes(tmp_path, monkeypatch):
    calls = []
    grid = [Budget(30), Budget(None, 1, 12), Budget(None, 1, 24)]
    monkeypatch.setattr(bud, "run_budget_cell", _fake_cell(calls, fail={grid[1].key}))
    out = tmp_path / "budget.json"
    cells = [(m, s, b) for m in ("minusface", "missing") for s in (0, 1) for b in grid]
    log = []
    run_budget_sweep(cells, _fake_load, out, log=log.append)
    first = json.loads(out.read_text())
    done = first["methods"]["minusface"]["split-0"]["cells"]
    assert set(done) == {grid[0].key, grid[2].key}  # the failed cell is left out, not fatal
    assert first["methods"]["minusface"]["split-1"]["bound"]["auc"] == 0.95
    assert any("failed" in line for line in log) and any("skipped" in line for line in log)
    assert len(calls) == 12  # 2 splits x 3 budgets x 2 attacks, one call each
    calls.clear()
    run_budget_sweep(cells, _fake_load, out, log=log.append)  # only the failed cells again
    assert sorted(calls) == [grid[1].key] * 4
    assert load_results(tmp_path / "none.json")["methods"] == {}


def test_sweep_adds_the_attacks_a_cell_lacks(tmp_path, monkeypatch):
    asked = []

    def cell(model, recognizer, aux, aux_labels, victims, labels, budget, attacks=(), **kw):
        asked.append(tuple(attacks))
        return {
            "budget": {},
            "faces": 1,
            **{a: {"auc": 0.7, "rank1": 0.5, "leakage": 0.6} for a in attacks},
        }

    monkeypatch.setattr(bud, "run_budget_cell", cell)
    out = tmp_path / "budget.json"
    cells = [("minusface", 0, Budget())]
    run_budget_sweep(cells, _fake_load, out, log=lambda _: None, attacks=["linkage"])
    run_budget_sweep(cells, _fake_load, out, log=lambda _: None)
    run_budget_sweep(cells, _fake_load, out, log=lambda _: None)  # nothing left to run
    assert asked == [("linkage",), ("identity-recovery",)]
    done = load_results(out)["methods"]["minusface"]["split-0"]["cells"][Budget().key]
    assert set(done) >= {"linkage", "identity-recovery", "seconds"}


def test_summary_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(bud, "run_budget_cell", _fake_cell([]))
    out = tmp_path / "budget.json"
    # two budgets of the same cost (12 x 2 and 24 x 1) share a point on the plot's axis
    grid = [Budget(30), Budget(None, 2, 12), Budget(None, 1, 24), Budget(None, 1, 24, "scratch")]
    cells = [(m, s, b) for m in ("arcface", "minusface") for s in (0, 1, 2) for b in grid]
    results = run_budget_sweep(cells, _fake_load, out, log=lambda _: None)
    s = summarise(results)["minusface"][Budget(None, 1, 24).key]
    assert s["splits"] == ["split-0", "split-1", "split-2"]
    assert s["linkage_auc"]["mean"] == pytest.approx(0.84)
    assert s["linkage_auc"]["std"] == pytest.approx(0, abs=1e-12)
    assert s["server_auc"]["mean"] == pytest.approx(0.95)
    table = budget_table(results)
    assert table.count("\n") == 2 + 2 * len(grid)
    assert (
        "| minusface | all | 1 | 24 | scratch | 3 | 0.840 ± 0.000 | 0.950 ± 0.000 |  | 60.0 ± 0.0 |"
        in table
    )
    assert budget_figure(results, tmp_path / "budget.png").stat().st_size > 0
    assert budget_figure({"methods": {}}, tmp_path / "none.png") is None


def test_one_real_cell_on_a_tiny_arcface():
    """The linkage cell end to end on a tiny unprotected ArcFace, attacked with itself as
    the attacker's recognizer: 8 faces spread over 4 people, 2 copies each, one epoch."""
    from ppfr.attacks._recognizer import train_recognizer
    from ppfr.data.orl import load_orl

    victims = load_orl([1, 2, 3], aligned=True)
    aux = load_orl([4, 5, 6, 7], aligned=True)
    tiny = {"backbone": "ir18", "backbone_width": 0.125, "embedding_size": 32}
    model = train_recognizer(aux.faces, aux.labels, seed=0, epochs=1, model=tiny)
    cell = bud.run_budget_cell(
        model, model, aux.faces, np.asarray(aux.labels), victims.faces,
        np.asarray(victims.labels), Budget(8, 2, 1), seed=0, attacks=("linkage",),
    )  # fmt: skip
    assert cell["faces"] == 16 and set(cell) >= {"budget", "linkage"}
    lk = cell["linkage"]
    assert lk["init"] == "recognizer"
    assert 0.0 <= lk["auc"] <= 1.0 and 0.0 <= lk["rank1"] <= 1.0
