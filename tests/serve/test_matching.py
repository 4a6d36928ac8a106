"""Matcher: identification/verification against a brute-force reference, caching, FAISS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppfr.errors import InputError, UnknownNameError
from ppfr.serve import Matcher, open_store
from ppfr.templates import SlerpFace, SlerpFaceConfig

DIM = 64


def _unit(n: int, seed: int, dim: int = DIM) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


@pytest.fixture()
def sf() -> SlerpFace:
    weights = torch.linspace(1.0, 3.0, DIM // 16)  # non-uniform: exercises alpha_g, drop_g
    return SlerpFace(DIM, SlerpFaceConfig(group_size=16), weights)


def _enroll_people(store, sf, n_people=12, per=(1, 4), seed=0, protected=True):
    """Enrol people with 1..3 noisy templates each; returns identities and raw templates."""
    rng = np.random.default_rng(seed)
    ids = _unit(n_people, seed)
    raw = {}
    for i in range(n_people):
        k = int(rng.integers(*per))
        t = torch.nn.functional.normalize(ids[i] + 0.3 * _unit(k, 1000 + 7 * seed + i), dim=1)
        name = f"p{i:02d}"
        raw[name] = t
        if protected:
            keys = sf.draw_keys(k, torch.Generator().manual_seed(500 + i))
            store.enroll("g", name, sf.protect(t, keys).numpy(), keys.numpy())
        else:
            store.enroll("g", name, t.numpy(), None)
    return ids, raw


def _reference(score_fn, store, queries, top_k):
    """Brute force: score every template one at a time, best per subject, sorted."""
    m = store.load("g")
    out = []
    for q in queries:
        best = {}
        for r in range(len(m)):
            s = score_fn(q, r, m)
            best[m.subjects[r]] = max(best.get(m.subjects[r], -np.inf), s)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
        out.append(ranked)
    return out


def _slerp_one(sf):
    def score(q, r, m):
        t = torch.from_numpy(m.templates[r : r + 1])
        k = torch.from_numpy(m.keys[r : r + 1])
        return float(sf.scores(q[None], t, k)[0, 0])

    return score


def _plain_one(q, r, m):
    return float(np.dot(q.numpy().astype(np.float64), m.templates[r].astype(np.float64)))


def _assert_same(got, want, atol=1e-5):
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want, strict=True):
        assert [s for s, _ in g_row] == [s for s, _ in w_row]
        np.testing.assert_allclose([v for _, v in g_row], [v for _, v in w_row], atol=atol)


@pytest.mark.parametrize("precompute", [True, False])
def test_identify_matches_brute_force_slerpface(store_url, sf, precompute):
    with open_store(store_url) as store:
        ids, _ = _enroll_people(store, sf)
        queries = torch.nn.functional.normalize(ids[:6] + 0.3 * _unit(6, 99), dim=1)
        got = Matcher(store, sf, precompute=precompute).identify("g", queries, top_k=4)
        _assert_same(got, _reference(_slerp_one(sf), store, queries, 4))
        # the right person comes first: the scores carry identity through protection
        assert [row[0][0] for row in got] == [f"p{i:02d}" for i in range(6)]


def test_snapshot_index_scores_equal_direct_form(tmp_path, sf):
    """The snapshot's streamed index against the direct form, over several blocks."""
    import ppfr.templates as slerp_mod

    t = _unit(300, 1)
    keys = sf.draw_keys(300, torch.Generator().manual_seed(2))
    p = sf.protect(t, keys)
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        store.enroll_many("g", [f"s{i:03d}" for i in range(300)], p.numpy(), keys.numpy())
        snap = Matcher(store, sf).snapshot("g")
        assert snap.slerp is not None and snap.main.templates is None and snap.main.keys is None
        q = torch.cat([_unit(7, 3), torch.nn.functional.normalize(keys[:2], dim=1)])
        want = torch.stack([sf.scores(qi[None], p, keys)[0] for qi in q])  # one at a time
        torch.testing.assert_close(snap.slerp.scores(q), want, atol=1e-5, rtol=0)
        small = slerp_mod.SlerpFaceIndex(sf, p, keys, block=32)  # many blocks + a tail
        torch.testing.assert_close(small.scores(q), want, atol=1e-5, rtol=0)


def test_float16_index_matches_float32(store_url, sf):
    with open_store(store_url) as store:
        ids, raw = _enroll_people(store, sf)
        queries = torch.nn.functional.normalize(ids[:6] + 0.3 * _unit(6, 99), dim=1)
        full = Matcher(store, sf).identify("g", queries, top_k=3)
        half_m = Matcher(store, sf, index_dtype=torch.float16)
        half = half_m.identify("g", queries, top_k=3)
        assert [r[0][0] for r in half] == [r[0][0] for r in full]
        np.testing.assert_allclose(
            [r[0][1] for r in half], [r[0][1] for r in full], atol=5e-3, rtol=0
        )
        assert half_m.snapshot("g").slerp.blocks.dtype == torch.float16
        q = raw["p02"][0]
        assert half_m.verify("g", q, "p02") == pytest.approx(
            Matcher(store, sf).verify("g", q, "p02"), abs=5e-3
        )
    with pytest.raises(InputError, match="index_dtype"):
        Matcher(store, sf, index_dtype=torch.float64)


def test_verify_and_top_k_bounds(store_url, sf):
    with open_store(store_url) as store:
        ids, raw = _enroll_people(store, sf, n_people=5)
        m = Matcher(store, sf)
        m_all = store.load("g")
        q = raw["p02"][0]
        rows = [r for r in range(len(m_all)) if m_all.subjects[r] == "p02"]
        want = max(_slerp_one(sf)(q, r, m_all) for r in rows)
        assert m.verify("g", q, "p02") == pytest.approx(want, abs=1e-5)
        assert m.verify("g", q, "p02") > m.verify("g", q, "p03")
        assert len(m.identify("g", q, top_k=50)[0]) == 5  # capped at the number of subjects
        with pytest.raises(UnknownNameError, match="not enrolled"):
            m.verify("g", q, "nobody")
        with pytest.raises(InputError, match="top_k"):
            m.identify("g", q, top_k=0)
        with pytest.raises(InputError, match="64-d templates; the queries are 32-d"):
            m.identify("g", _unit(1, 0, dim=32))
        with pytest.raises(InputError, match="NaN"):
            m.identify("g", torch.full((1, DIM), float("nan")))


def test_cache_refreshes_on_change(store_url, sf):
    with open_store(store_url) as store:
        ids, _ = _enroll_people(store, sf, n_people=4)
        m = Matcher(store, sf)
        first = m.snapshot("g")
        assert m.snapshot("g") is first  # unchanged version: cached
        newcomer = _unit(1, 777)
        keys = sf.draw_keys(1, torch.Generator().manual_seed(1))
        store.enroll("g", "zed", sf.protect(newcomer, keys).numpy(), keys.numpy())
        assert m.identify("g", newcomer, top_k=1)[0][0][0] == "zed"
        assert m.snapshot("g") is not first
        store.delete_subject("g", "zed")
        assert "zed" not in [s for s, _ in m.identify("g", newcomer, top_k=10)[0]]


def test_empty_gallery_and_mode_mismatch(store_url, sf):
    with open_store(store_url) as store:
        assert Matcher(store, sf).identify("nothing", _unit(2, 0)) == [[], []]
        store.enroll("plain", "a", _unit(1, 1).numpy(), None)
        with pytest.raises(InputError, match="plain templates"):
            Matcher(store, sf).identify("plain", _unit(1, 0))
        with pytest.raises(InputError, match="use_faiss applies to plain"):
            Matcher(store, sf, use_faiss=True)


@pytest.mark.parametrize("use_faiss", [False, True])
def test_plain_mode_matches_brute_force(store_url, sf, use_faiss):
    with open_store(store_url) as store:
        ids, _ = _enroll_people(store, sf, n_people=15, per=(1, 6), protected=False)
        queries = torch.nn.functional.normalize(ids[:8] + 0.4 * _unit(8, 5), dim=1)
        got = Matcher(store, None, use_faiss=use_faiss).identify("g", queries, top_k=5)
        _assert_same(got, _reference(_plain_one, store, queries, 5))


def test_faiss_agrees_with_numpy(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        rng = np.random.default_rng(0)
        t = rng.standard_normal((1500, DIM)).astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        subjects = rng.integers(0, 100, 1500)
        for s in np.unique(subjects):
            store.enroll("g", f"s{s}", t[subjects == s], None)
        # queries near enrolled templates, as in use (a new photo of an enrolled person)
        q = torch.nn.functional.normalize(torch.from_numpy(t[:20]) + 0.1 * _unit(20, 9), dim=1)
        exact = Matcher(store, None).identify("g", q, top_k=10)
        flat = Matcher(store, None, use_faiss=True).identify("g", q, top_k=10)
        _assert_same(flat, exact)
        assert [e[0][0] for e in exact] == [f"s{s}" for s in subjects[:20]]
        # IVF is approximate: its top-1 should still agree almost always
        ivf = Matcher(store, None, use_faiss=True, ivf_min_size=1000, nprobe=16)
        approx = ivf.identify("g", q, top_k=10)
        agree = np.mean([a[0][0] == e[0][0] for a, e in zip(approx, exact, strict=True)])
        assert agree >= 0.9
