import torch

import ppfr
from ppfr import freq
from ppfr.methods.minusface import shuffle_channels
from tests.conftest import TINY_MINUSFACE


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("minusface", num_classes=4, **{**TINY_MINUSFACE, **extra}).eval()


def test_protect_range_randomness_and_reproducibility(faces):
    m = _model()
    with torch.no_grad():
        a, b = m.protect(faces), m.protect(faces)
        g = m.protect(faces, generator=torch.Generator().manual_seed(3))
        h = m.protect(faces, generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 112, 112) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, b)  # a fresh shuffle every call
    assert torch.equal(g, h)  # unless the caller fixes the generator
    # and a fresh shuffle per image: the same face twice in one batch differs
    with torch.no_grad():
        same = m.protect(
            faces[:1].expand(2, -1, -1, -1), generator=torch.Generator().manual_seed(0)
        )
    assert not torch.equal(same[0], same[1])


def test_protect_is_the_decoded_shuffled_residue(faces):
    m = _model()
    with torch.no_grad():
        r = m.residue(faces)
        p = m.protect(faces, generator=torch.Generator().manual_seed(5))
        expected = freq.decode(shuffle_channels(r, torch.Generator().manual_seed(5)))
    assert torch.allclose(p, expected, atol=1e-6)


def test_composed_protect_agrees_with_the_plain_path_and_follows_weight_updates(faces):
    m = _model()
    g = m.client.generator
    with torch.no_grad():  # a residue well away from zero, so the comparison means something
        g.out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        g.out.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))

    def both():
        with torch.no_grad():  # no gradient wanted: the composed path
            composed = m.protect(faces, generator=torch.Generator().manual_seed(7))
        key = m.client._stem_cache[0]
        plain = m.protect(faces, generator=torch.Generator().manual_seed(7))  # autograd: plain
        assert plain.requires_grad and not composed.requires_grad
        assert m.client._stem_cache[0] == key  # the plain path neither used nor rebuilt it
        assert (composed - plain).abs().max() < 1e-5
        return composed, key

    first, key = both()
    assert first.std() > 0.02 and 0 < first.min() and first.max() < 1  # not flat, not clamped
    with torch.no_grad():
        g.stem.weight.mul_(-2.0)  # an in-place update, as an optimiser's
    second, key2 = both()
    # the update changes protect by far more than the paths' 1e-5 disagreement: by 0.004 to
    # 0.027 (largest pixel) over seed shifts 0-10
    assert key2 != key and (second - first).abs().max() > 1e-3


def test_shuffle_is_a_permutation_per_image():
    r = torch.arange(192.0).view(1, 192, 1, 1).repeat(3, 1, 2, 2)
    s = shuffle_channels(r, torch.Generator().manual_seed(0))
    for i in range(3):
        assert sorted(s[i, :, 0, 0].tolist()) == list(range(192))
        assert torch.equal(s[i, :, 0, 0], s[i, :, 1, 1])  # one order for the whole channel
    assert not torch.equal(s[0], s[1])


def test_concatenated_shuffles(faces):
    m = _model(shuffles=2)
    with torch.no_grad():
        p = m.protect(faces)
        assert p.shape == (4, 6, 112, 112)
        assert not torch.equal(p[:, :3], p[:, 3:])
        assert m.embed(p).shape == (4, 64)
    assert m.server["recognizer"].in_channels == 6


def test_both_stages_train(orl4, descend):
    torch.manual_seed(0)
    m = ppfr.create("minusface", num_classes=4, **TINY_MINUSFACE)
    idx = torch.arange(0, 40, 3)
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    s1, s2 = m.stages()
    assert [g["lr_scale"] for g in s1.param_groups] == [0.5, 1.0]  # generator at half the rate
    gen_before = [p.detach().clone() for p in m.client.parameters()]
    before, after, logs = descend(s1, x, y)
    assert set(logs) == {"pixel", "id"}
    assert after < before
    gen_after = {k: v.detach().clone() for k, v in m.client.state_dict().items()}
    assert any(
        not torch.equal(a, b) for a, b in zip(gen_before, m.client.parameters(), strict=True)
    )
    assert s2.repeats == 3 and s2.frozen == [m.client]
    before2, after2, _ = descend(s2, x, y)
    assert after2 < before2
    # stage 2 leaves the generator (weights and BN statistics) untouched
    for k, v in m.client.state_dict().items():
        assert torch.equal(v, gen_after[k]), k


def _strong_residue(m):
    """A residue well away from zero (untrained U-Nets start near it), so checks mean something."""
    g = m.client.generator
    with torch.no_grad():
        g.out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        g.out.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return m


def test_protect_runs_large_batches_in_passes(faces, monkeypatch):
    m = _strong_residue(_model())
    width = m.client.generator.out.in_channels
    # at most 16 MB for the full-size skip concatenation (2 x width maps of 112x112)
    step = m.client._faces_per_pass()
    assert m.client.train()._faces_per_pass() > 1000  # batch-norm statistics: whole batch
    m.eval()
    assert step * 2 * width * 112 * 112 * 4 <= 16 << 20 < (step + 1) * 2 * width * 112 * 112 * 4
    monkeypatch.setattr(type(m.client), "_faces_per_pass", lambda self: 3)
    x = torch.cat([faces, faces.flip(-1)])  # 8 faces: passes of 3, 3 and 2
    with torch.no_grad():
        whole = m.protect(x, generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        parts = torch.cat([m.protect(part, generator=g) for part in x.split(3)])
    assert whole.shape == (8, 3, 112, 112) and torch.equal(whole, parts)


def test_feature_cache_gives_protect_without_the_unet(faces, monkeypatch):
    from ppfr.data.base import TensorFaces
    from ppfr.methods.minusface import FeatureCache

    m = _strong_residue(_model())
    m.client.requires_grad_(False)  # frozen, as in stage 2
    data = TensorFaces(faces[:3], [0, 1, 2])
    cache = FeatureCache(m.client, budget_mb=64)
    cache.fill(data, flip=True)
    assert len(cache) == 6
    batch = torch.stack([faces[1], faces[2].flip(-1), faces[0]])
    torch.manual_seed(5)
    want = m.client.protect(batch)
    calls = []
    monkeypatch.setattr(m.client.generator, "hidden", lambda h: calls.append(h) or h)
    torch.manual_seed(5)
    torch.testing.assert_close(cache.protect(batch), want, rtol=0, atol=1e-5)
    assert not calls  # every image was cached: no U-Net pass
    monkeypatch.undo()
    # an image it never saw: the whole batch goes through protect
    unseen = torch.cat([batch[:1], faces[3:]])
    torch.manual_seed(6)
    want = m.client.protect(unseen)
    torch.manual_seed(6)
    torch.testing.assert_close(cache.protect(unseen), want, rtol=0, atol=1e-5)
    # a changed generator makes the cached features stale
    with torch.no_grad():
        m.client.generator.out.weight.mul_(2.0)
    torch.manual_seed(5)
    want = m.client.protect(batch)
    torch.manual_seed(5)
    torch.testing.assert_close(cache.protect(batch), want, rtol=0, atol=1e-5)
    # over budget (8 x 200 KB > 1 MiB) or off: nothing is cached
    for budget in (0, 1):
        small = FeatureCache(m.client, budget_mb=budget)
        small.fill(TensorFaces(faces, [0] * len(faces)), flip=True)
        assert len(small) == 0 and small.features is None

    class Stream(torch.utils.data.IterableDataset):  # no length: nothing to precompute
        def __iter__(self):
            yield faces[0], 0

    stream = FeatureCache(m.client, budget_mb=64)
    stream.fill(Stream(), flip=False)
    assert len(stream) == 0 and stream.features is None
