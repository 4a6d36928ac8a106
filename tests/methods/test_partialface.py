import itertools

import torch

import ppfr
from ppfr import freq
from ppfr.methods.partialface import (
    COEFFICIENT_BOUND,
    LOW_FREQUENCY,
    PERMUTATIONS,
    RANKS,
    SUBSETS,
    _TrainingRanks,
    face_triples,
    rank_channels,
)
from tests.conftest import TINY_PARTIALFACE


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("partialface", num_classes=4, **{**TINY_PARTIALFACE, **extra}).eval()


def _matching_ranks(f: torch.Tensor, p: torch.Tensor) -> list[tuple[int, int]]:
    """Ranks (subset, permutation) whose channels of the full coefficients f equal p."""
    return [
        (k, j)
        for k in range(len(SUBSETS))
        for j in range(len(PERMUTATIONS))
        if torch.equal(f[rank_channels(k, j)], p)
    ]


def test_constants_partition_the_high_frequencies():
    assert LOW_FREQUENCY == (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)
    assert all(u + v <= 3 for u, v in map(freq.channel_uv, LOW_FREQUENCY))
    kept = sorted(itertools.chain(*SUBSETS))
    assert kept == [c for c in range(64) if c not in LOW_FREQUENCY]  # disjoint, complete
    assert RANKS.shape == (6, 3, 27)
    assert not set(RANKS.flatten().tolist()) & {c * 64 + i for c in range(3) for i in LOW_FREQUENCY}
    # permutation 1 puts subset position 7 first: S0[7] = 50
    assert rank_channels(0, 1)[0] == 50 and rank_channels(0, 1)[9] == 64 + 50


def test_protect_shape_range_randomness_and_reproducibility(faces):
    m = _model()
    with torch.no_grad():
        a, b = m.protect(faces), m.protect(faces)
        g = m.protect(faces, generator=torch.Generator().manual_seed(3))
        h = m.protect(faces, generator=torch.Generator().manual_seed(3))
        same = m.protect(faces[:1].expand(16, -1, -1, -1), generator=torch.Generator())
    assert a.shape == (4, 27, 112, 112) and a.dtype == torch.float32
    # before prepare every channel is divided by coef_scale: raw values stay in the bound
    assert (a * m.config.coef_scale).abs().max() <= COEFFICIENT_BOUND
    assert m.representation_range is None
    assert not torch.equal(a, b)  # a fresh rank every call
    assert torch.equal(g, h)  # unless the caller fixes the generator
    assert len({tuple(s.flatten()[:50].tolist()) for s in same}) > 1  # and per image


def test_sends_exactly_one_rank_and_never_the_low_frequencies(faces):
    m = _model()
    f = freq.encode(faces)
    seen = set()
    with torch.no_grad():
        for seed in range(12):
            p, subset, perm = m.protect_with_ranks(faces, torch.Generator().manual_seed(seed))
            for i in range(len(faces)):
                raw = p[i] * m.config.coef_scale
                assert torch.equal(raw, f[i, rank_channels(int(subset[i]), int(perm[i]))])
                assert _matching_ranks(f[i], raw) == [(int(subset[i]), int(perm[i]))]
                seen.add((int(subset[i]), int(perm[i])))
    assert len(seen) >= 15  # 48 draws reach (nearly) all 18 ranks


def test_face_triples_are_fixed_flip_invariant_and_spread(orl4):
    x = orl4.faces
    t = face_triples(x)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 20
    assert torch.equal(t, face_triples(x.clone()))  # a function of the face alone
    assert torch.equal(t, face_triples(x.flip(-1)))  # the mirror image gets the same subsets
    assert len(set(t.tolist())) >= 10  # 40 faces spread over the 20 triples


def test_training_uses_only_each_faces_three_subsets(orl4):
    m = _model()
    x = orl4.faces[:6]
    prep = _TrainingRanks(m.client, 3)
    allowed = list(itertools.combinations(range(6), 3))
    f = freq.encode(x)
    used = [set() for _ in x]
    torch.manual_seed(0)
    for _ in range(10):
        p = prep(x) * m.config.coef_scale
        for i in range(len(x)):
            (rank,) = _matching_ranks(f[i], p[i])
            used[i].add(rank[0])
    for i, t in enumerate(face_triples(x).tolist()):
        assert used[i] <= set(allowed[t]), (used[i], allowed[t])
        assert len(used[i]) >= 2  # it does draw among them


def test_view_decodes_the_sent_channels(faces):
    m = _model()
    with torch.no_grad():
        p, subset, perm = m.protect_with_ranks(faces, torch.Generator().manual_seed(1))
        v = m.view(p, subset, perm)
        f = freq.encode(faces)
        keep = torch.zeros_like(f)
        for i in range(len(faces)):
            ch = rank_channels(int(subset[i]), int(perm[i]))
            keep[i, ch] = f[i, ch]
        assert torch.allclose(v, freq.decode(keep), atol=1e-6)
        default = m.view(p)
    assert v.shape == default.shape == (4, 3, 112, 112)
    assert 0 <= default.min() and default.max() <= 1
    # without the low frequencies the picture is nearly flat grey, far from the face
    assert (v - (faces + 1) / 2).abs().mean() > 0.1
    assert torch.equal(m.inversion_input(p), p)


def test_training_reduces_the_loss(orl4, descend):
    torch.manual_seed(0)
    m = ppfr.create("partialface", num_classes=4, **TINY_PARTIALFACE)
    (stage,) = m.stages()
    assert stage.repeats == 2 and ppfr.create("partialface").config.train_repeats == 18
    idx = torch.arange(0, 40, 5)
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    before, after, _ = descend(stage, x, y, seed=7)  # the same ranks before and after
    assert after < before


def test_client_bundle_holds_only_the_scales(orl4, faces, tmp_path):
    m = _model()
    m.prepare(orl4, generator=torch.Generator().manual_seed(0))
    m.save(tmp_path / "b")
    client = ppfr.load(tmp_path / "b", part="client")
    assert list(client.client.state_dict()) == ["channel_scale"]
    assert torch.equal(client.client.channel_scale, m.client.channel_scale)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        assert torch.equal(client.protect(faces, g1), m.protect(faces, g2))


def test_viewing_attack_uses_the_view(faces):
    from ppfr.attacks.viewing import ViewingAttack

    m = _model()
    with torch.no_grad():
        v = ViewingAttack().view(m, faces, generator=torch.Generator().manual_seed(2))
        p = m.protect(faces, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(v, m.view(p))


def test_prepare_scales_every_channel_to_unit_rms(orl4):
    m = _model()
    m.prepare(orl4, generator=torch.Generator().manual_seed(0))
    scale = m.client.channel_scale
    f = freq.encode(orl4.faces)
    rms = f.square().mean((0, 2, 3)).sqrt()
    kept = [c for c in range(192) if c % 64 not in LOW_FREQUENCY and rms[c] > 1e-2]
    assert torch.allclose(scale[kept], rms[kept], rtol=1e-3)  # all 40 faces were used
    assert float(scale[kept].max() / scale[kept].min()) > 100  # magnitudes span orders
    with torch.no_grad():
        p = m.protect(orl4.faces[:8], generator=torch.Generator().manual_seed(0))
    assert 0.3 < float(p[:, :9].square().mean().sqrt()) < 3  # the Y channels: unit order
    assert torch.equal(m.inversion_input(p), p)
