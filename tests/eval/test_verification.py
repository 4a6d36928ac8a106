"""Tests of the verification protocol, ROC summaries, pair building and flip-sum embedding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ppfr.data.base import TensorFaces, VerificationPairs
from ppfr.errors import InputError
from ppfr.eval import (
    contiguous_folds,
    evaluate_pairs,
    flip_sum_embeddings,
    make_open_set_pairs,
    pair_distances,
    pairs_from_dataset,
    roc_auc,
    tar_at_far,
    threshold_at_far,
    verification_protocol,
)

# ----------------------------------------------------------------------------------------
# The protocol on a hand-worked example
# ----------------------------------------------------------------------------------------


def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """20 pairs, so 10 folds of 2: fold k = pairs (2k, 2k+1) = (genuine, impostor).

    Typical fold: genuine at 0.205, impostor at 1.505. Two folds are odd:
      fold 2: the genuine pair is far   (1.005 instead of 0.205)
      fold 3: the impostor pair is close (0.605 instead of 1.505)
    Distances sit half-way between grid points so `d < t` never hinges on float rounding.
    """
    gen = np.full(10, 0.205)
    imp = np.full(10, 1.505)
    gen[2] = 1.005
    imp[3] = 0.605
    d = np.stack([gen, imp], axis=1).reshape(-1)
    same = np.tile([True, False], 10)
    return d, same


def test_protocol_reproduces_hand_worked_example():
    d, same = hand_example()
    r = verification_protocol(d, same)

    # Grid thresholds split into intervals; correct = #genuine below t + #impostors at/above:
    #   A: t <= 0.20   B: 0.21..0.60   C: 0.61..1.00   D: 1.01..1.50   E: >= 1.51
    #
    # Train = 9 folds without fold k, k not in {2, 3}:
    #   genuine {0.205 x8, 1.005}, impostors {0.605, 1.505 x8}
    #   A 0+9=9  B 8+9=17  C 8+8=16  D 9+8=17  E 9+0=9
    #   B and D tie at 17/18 -> smallest threshold wins: t = 0.21 (largest would be 1.50).
    #   Held out (0.205 gen, 1.505 imp) at 0.21: both right -> 1.0
    # Without fold 2 (drops genuine 1.005, impostor 1.505):
    #   genuine {0.205 x9}, impostors {0.605, 1.505 x8}
    #   A 9  B 9+9=18  C 9+8=17  D 17  E 9  -> t = 0.21, train acc 18/18
    #   Held out: genuine 1.005 is not < 0.21 (wrong), impostor right -> 0.5
    # Without fold 3 (drops genuine 0.205, impostor 0.605):
    #   genuine {0.205 x8, 1.005}, impostors {1.505 x9}
    #   A 9  B 8+9=17  C 8+9=17  D 9+9=18  E 9  -> t = 1.01, train acc 18/18
    #   Held out: genuine 0.205 right, impostor 0.605 < 1.01 (wrong) -> 0.5
    expected_thresholds = [0.21, 0.21, 0.21, 1.01, 0.21, 0.21, 0.21, 0.21, 0.21, 0.21]
    expected_train = [17 / 18, 17 / 18, 1.0, 1.0] + [17 / 18] * 6
    expected_acc = [1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]

    assert r.num_pairs == 20 and r.num_genuine == 10 and r.num_impostor == 10
    assert [f.num_pairs for f in r.folds] == [2] * 10
    np.testing.assert_allclose(r.fold_thresholds, expected_thresholds, atol=1e-9)
    np.testing.assert_allclose([f.train_accuracy for f in r.folds], expected_train)
    np.testing.assert_allclose(r.fold_accuracies, expected_acc)
    # mean = (8 * 1.0 + 2 * 0.5) / 10 = 0.9
    # std  = sqrt((8 * 0.1^2 + 2 * 0.4^2) / 10) = sqrt(0.4 / 10) = 0.2   (population std)
    assert r.accuracy == pytest.approx(0.9)
    assert r.std == pytest.approx(0.2)
    # mean threshold = (9 * 0.21 + 1.01) / 10 = 0.29
    assert r.threshold == pytest.approx(0.29)
    # AUC: genuine below impostor for 9*9 + 9*1 (0.205 < 0.605) + 1*9 (1.005 < 1.505)
    # of the 100 (genuine, impostor) combinations; 1.005 > 0.605 is the one miss -> 0.99
    assert r.auc == pytest.approx(0.99)
    # 10 impostor pairs are far too few for FAR 1e-3 / 1e-4: both None, with a note each.
    assert r.tar_at_far == {1e-3: None, 1e-4: None}
    assert any("1000 impostor pairs, have 10" in n for n in r.notes)
    assert any("10000 impostor pairs" in n for n in r.notes)


def test_protocol_accepts_embeddings_in_bin_layout():
    # Unit vectors at angle phi have squared distance 2 - 2 cos(phi); build pairs that
    # reproduce the hand example's distances and check the same numbers come out.
    d, same = hand_example()
    phi = np.arccos(1 - d / 2)
    a = np.stack([np.ones_like(phi), np.zeros_like(phi)], axis=1)
    b = np.stack([np.cos(phi), np.sin(phi)], axis=1) * 3.0  # scale: normalised inside
    emb = np.stack([a, b], axis=1).reshape(-1, 2)
    np.testing.assert_allclose(pair_distances(emb), d, atol=1e-12)
    r = verification_protocol(torch.from_numpy(emb), same)
    assert r.accuracy == pytest.approx(0.9) and r.std == pytest.approx(0.2)


def test_folds_are_contiguous_and_first_ones_longer():
    folds = contiguous_folds(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(folds), np.arange(23))


def reference_protocol(d, same, nfolds=10, thresholds=np.arange(0, 4.01, 0.01)):
    """Slow, obvious version: loop over thresholds, keep the first strict maximum."""
    folds = np.array_split(np.arange(len(d)), nfolds)
    accs, ts = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(d)), test)
        best_t, best_acc = None, -1.0
        for t in thresholds:
            acc = np.mean((d[train] < t) == same[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        ts.append(best_t)
        accs.append(np.mean((d[test] < best_t) == same[test]))
    return np.array(accs), np.array(ts)


def test_protocol_matches_slow_reference_on_uneven_folds():
    rng = np.random.default_rng(3)
    same = rng.random(57) < 0.5
    # Genuine pairs a bit closer than impostors, overlapping, rounded onto the grid to
    # provoke ties between equal distances and thresholds.
    d = np.where(same, rng.normal(1.0, 0.4, 57), rng.normal(1.5, 0.4, 57)).clip(0, 4).round(2)
    accs, ts = reference_protocol(d, same)
    r = verification_protocol(d, same)
    np.testing.assert_allclose(r.fold_accuracies, accs)
    np.testing.assert_allclose(r.fold_thresholds, ts)
    assert [f.num_pairs for f in r.folds] == [6] * 7 + [5] * 3


def test_perfect_separation_gives_100_percent():
    rng = np.random.default_rng(0)
    same = np.tile([True, False], 300)
    d = np.where(same, rng.uniform(0.0, 1.0, 600), rng.uniform(1.2, 4.0, 600))
    r = verification_protocol(d, same)
    assert r.accuracy == 1.0 and r.std == 0.0 and r.auc == 1.0


def test_random_scores_give_chance():
    rng = np.random.default_rng(1)
    same = rng.permutation(np.repeat([True, False], 1000))
    d = rng.uniform(0, 4, 2000)
    r = verification_protocol(d, same)
    assert 0.45 < r.accuracy < 0.55
    assert 0.45 < r.auc < 0.55


def test_to_dict_is_json_friendly():
    d, same = hand_example()
    out = json.loads(json.dumps(verification_protocol(d, same, name="toy").to_dict()))
    assert out["name"] == "toy" and out["num_pairs"] == 20
    assert out["tar_at_far"] == {"0.001": None, "0.0001": None}
    assert len(out["folds"]) == 10 and out["folds"][3]["threshold"] == pytest.approx(1.01)


# ----------------------------------------------------------------------------------------
# TAR at FAR and AUC
# ----------------------------------------------------------------------------------------


def test_tar_at_far_hand_example():
    gen = [0.05, 0.20, 0.24, 0.30, 0.50]
    imp = [0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.05]  # 10 impostors
    d = np.array(gen + imp)
    same = np.array([True] * 5 + [False] * 10)
    # FAR 0.1 of 10 impostors: 1 false accept allowed. Accepting d < 0.25 takes in only the
    # impostor at 0.15; any t > 0.25 would take two. Genuine below 0.25: 0.05, 0.20, 0.24.
    assert threshold_at_far(d, same, 0.1) == 0.25
    assert tar_at_far(d, same, 0.1) == pytest.approx(3 / 5)
    # FAR 0.2: 2 allowed, t = 0.35, genuine below: 0.05, 0.20, 0.24, 0.30 -> 4/5.
    assert tar_at_far(d, same, 0.2) == pytest.approx(4 / 5)
    # FAR 1: everything may be accepted.
    assert threshold_at_far(d, same, 1.0) == math.inf
    assert tar_at_far(d, same, 1.0) == 1.0


def test_tar_at_far_with_tied_impostors_stays_under_far():
    # Impostors 0.1, 0.2, 0.2, 0.9: FAR 0.5 allows 2, but the 2nd and 3rd are tied, so any
    # threshold above 0.2 accepts 3 (75%). The largest valid t is 0.2 (accepts 1 impostor).
    d = np.array([0.15, 0.19, 0.5, 0.1, 0.2, 0.2, 0.9])
    same = np.array([True, True, True, False, False, False, False])
    assert threshold_at_far(d, same, 0.5) == 0.2
    assert tar_at_far(d, same, 0.5) == pytest.approx(2 / 3)


def test_tar_at_far_none_when_too_few_impostors():
    rng = np.random.default_rng(0)
    same = np.array([True] * 500 + [False] * 999)
    d = rng.uniform(0, 4, len(same))
    assert tar_at_far(d, same, 1e-3) is None  # needs 1000 impostors, has 999
    same[0] = False  # now 1000 impostors: exactly one false accept allowed
    assert tar_at_far(d, same, 1e-3) is not None
    assert tar_at_far(d, same, 1e-4) is None
    r = verification_protocol(d, same)
    assert r.tar_at_far[1e-3] is not None and r.tar_at_far[1e-4] is None
    assert r.notes == [
        "TAR@FAR=0.0001 not reported: needs at least 10000 impostor pairs, have 1000"
    ]


def test_roc_auc_counts_ties_as_half():
    # genuine {0.1, 0.5}, impostor {0.5, 0.9}: of 4 combinations, 3 ordered right, 1 tie.
    d = np.array([0.1, 0.5, 0.5, 0.9])
    same = np.array([True, True, False, False])
    assert roc_auc(d, same) == pytest.approx(3.5 / 4)
    assert roc_auc(d, np.ones(4, bool)) is None


# ----------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "issame", "message"),
    [
        (np.zeros(20), np.zeros(19, bool), "20 distances but 19"),
        (np.zeros((40, 4)), np.zeros(19, bool), "need 38"),
        (np.zeros(20), np.zeros(20, int), "boolean"),
        (np.r_[np.nan, np.ones(19)], np.zeros(20, bool), "NaN"),
        (np.r_[np.full((2, 3), np.nan), np.ones((38, 3))], np.zeros(20, bool), "NaN"),
        (np.zeros(9), np.zeros(9, bool), "at least nfolds=10 pairs"),
        (np.full(20, -0.5), np.zeros(20, bool), ">= 0"),
        (np.zeros((2, 2, 2)), np.zeros(2, bool), "distances (N,) or embeddings"),
    ],
)
def test_bad_inputs_raise_input_error(scores, issame, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verification_protocol(scores, issame)


# ----------------------------------------------------------------------------------------
# Pairs from labels / datasets
# ----------------------------------------------------------------------------------------


def test_open_set_pairs_counts_balance_and_validity():
    labels = np.repeat(np.arange(6), [4, 4, 3, 3, 2, 1])  # 17 images
    a, b, same = make_open_set_pairs(labels, seed=5)
    n_genuine = 6 + 6 + 3 + 3 + 1 + 0  # C(c, 2) per identity
    assert int(same.sum()) == n_genuine and int((~same).sum()) == n_genuine
    assert a.dtype == np.int64 and b.dtype == np.int64 and same.dtype == bool
    assert np.all(a < b)  # ordered, so no self pairs
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert len({(int(i), int(j)) for i, j in zip(a, b, strict=True)}) == len(a)  # no repeats
    # Shuffled: the first fold of the protocol is not all genuine.
    assert 0 < same[: len(same) // 2].sum() < len(same) // 2


def test_open_set_pairs_deterministic_and_seeded():
    labels = np.repeat(np.arange(10), 5)
    first = make_open_set_pairs(labels, seed=1)
    again = make_open_set_pairs(labels, seed=1)
    other = make_open_set_pairs(labels, seed=2)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])


def test_open_set_pairs_ratio_cap_and_errors():
    labels = np.repeat(np.arange(10), 5)  # 100 genuine pairs
    _, _, same = make_open_set_pairs(labels, impostor_ratio=2.0)
    assert int((~same).sum()) == 200
    _, _, same = make_open_set_pairs(labels, max_genuine=30)
    assert int(same.sum()) == 30 and int((~same).sum()) == 30
    with pytest.raises(InputError, match="no genuine pairs"):
        make_open_set_pairs(np.arange(5))
    # One image of identity 0, four of identity 1: 6 genuine pairs but only 1 x 4 impostors.
    with pytest.raises(InputError, match="asked for 6 impostor pairs but only 4 exist"):
        make_open_set_pairs([0, 1, 1, 1, 1])


def test_open_set_pairs_large_set_uses_sampling(monkeypatch):
    import ppfr.eval.verification as v

    monkeypatch.setattr(v, "_ENUMERATE_LIMIT", 10)  # force the rejection-sampling path
    labels = np.repeat(np.arange(20), 3)
    a, b, same = make_open_set_pairs(labels, seed=0)
    assert int((~same).sum()) == int(same.sum()) == 60
    assert np.all(a < b)
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(a)
    np.testing.assert_array_equal(a, make_open_set_pairs(labels, seed=0)[0])


def test_pairs_from_dataset_stacks_faces_in_bin_layout():
    labels = np.repeat(np.arange(4), 3)
    faces = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1).expand(12, 3, 4, 4) / 12
    pairs = pairs_from_dataset(TensorFaces(faces.clone(), labels), seed=0)
    a, b, same = make_open_set_pairs(labels, seed=0)
    assert isinstance(pairs, VerificationPairs) and len(pairs) == 24
    np.testing.assert_array_equal(pairs.issame, same)
    ids = (pairs.faces[:, 0, 0, 0] * 12).round().long().numpy()
    np.testing.assert_array_equal(ids[0::2], a)
    np.testing.assert_array_equal(ids[1::2], b)


# ----------------------------------------------------------------------------------------
# Flip-sum embeddings with a dummy protected model
# ----------------------------------------------------------------------------------------


class NoisyModel(torch.nn.Module):
    """protect = x + noise from the generator; embed = normalise(linear(flatten)).

    Records every protect input and whether it ran in eval mode.
    """

    def __init__(self, size: int = 8, dim: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * size * size, dim)
        self.protect_inputs: list[torch.Tensor] = []
        self.protect_modes: list[bool] = []

    def protect(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.protect_inputs.append(x.clone())
        self.protect_modes.append(self.training)
        return x + 0.1 * torch.randn(x.shape, generator=generator, device=x.device)

    def embed(self, p: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.proj(p.flatten(1)), dim=1)


def faces_batch(n: int = 10, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(9)) * 2 - 1


def test_flip_is_protected_separately_and_in_order():
    model = NoisyModel()
    model.train()
    x = faces_batch(10)
    emb = flip_sum_embeddings(model, x, batch_size=4, generator=torch.Generator().manual_seed(0))
    # 3 batches (4, 4, 2), each protected twice: the plain faces, then their mirror image.
    assert [len(t) for t in model.protect_inputs] == [4, 4, 4, 4, 2, 2]
    for k, start in enumerate(range(0, 10, 4)):
        plain, mirrored = model.protect_inputs[2 * k], model.protect_inputs[2 * k + 1]
        torch.testing.assert_close(plain, x[start : start + 4])
        torch.testing.assert_close(mirrored, torch.flip(x[start : start + 4], dims=[3]))
    assert model.protect_modes == [False] * 6  # ran in eval mode
    assert model.training  # and the caller's mode came back
    assert emb.shape == (10, 5) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_flip_sum_matches_formula_and_is_reproducible():
    model = NoisyModel()
    x = faces_batch(6)
    emb = flip_sum_embeddings(model, x, batch_size=6, generator=torch.Generator().manual_seed(4))
    # The formula by hand, drawing the noise in the same order (plain, then mirrored).
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        s = model.embed(model.protect(x, g)) + model.embed(model.protect(x.flip(3), g))
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(s, dim=1).numpy(), atol=1e-6)

    same_seed = flip_sum_embeddings(model, x, generator=torch.Generator().manual_seed(4))
    other_seed = flip_sum_embeddings(model, x, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(emb, same_seed)
    assert not np.allclose(emb, other_seed)


def test_flip_sum_rejects_bad_faces_and_nan_models():
    model = NoisyModel()
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        flip_sum_embeddings(model, torch.zeros(2, 1, 8, 8))

    class NaNModel(NoisyModel):
        def embed(self, p):
            return torch.full((len(p), 5), float("nan"))

    with pytest.raises(InputError, match="NaN"):
        flip_sum_embeddings(NaNModel(), faces_batch(2))


def test_evaluate_pairs_end_to_end_is_seeded():
    model = NoisyModel()
    x = faces_batch(40)
    pairs = VerificationPairs(faces=x, issame=np.tile([True, False], 10), name="toy")
    r1 = evaluate_pairs(model, pairs, batch_size=16, seed=0)
    r2 = evaluate_pairs(model, pairs, batch_size=16, seed=0)
    assert r1.name == "toy" and r1.num_pairs == 20 and len(r1.folds) == 10
    assert r1.to_dict() == r2.to_dict()


def test_leakage_rule_and_protocol_rule_differ_only_where_documented():
    """judge.verification_accuracy (leakage) and the protocol share their folds; the judge's
    exact threshold finds a cut the protocol's 0.01 grid cannot (both docstrings say why)."""
    from ppfr.judge import best_threshold, verification_accuracy

    same = np.tile([True, False], 20)
    # well separated: both rules are perfect
    sim = np.where(same, 0.8, 0.1)
    assert verification_accuracy(sim, same) == 1.0
    assert verification_protocol(2 - 2 * sim, same).accuracy == 1.0
    # separated inside one grid cell of the distance (0.99 < d < 1.00): no grid threshold
    # splits them, the judge's best cut does
    d = np.where(same, 0.9952, 0.9962) + np.linspace(0, 0.0003, 40)
    assert verification_protocol(d, same).accuracy == 0.5
    assert verification_accuracy(1 - d / 2, same) == 1.0
    # the judge's folds are the protocol's: fold k scored at the best cut of the others
    rng = np.random.default_rng(0)
    sim = rng.normal(size=40) + same
    correct = 0
    for idx in contiguous_folds(40, 10):
        train = np.ones(40, bool)
        train[idx] = False
        t = best_threshold(sim[train], same[train])
        correct += int(np.sum((sim[idx] >= t) == same[idx]))
    assert verification_accuracy(sim, same) == correct / 40
