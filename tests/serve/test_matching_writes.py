"""Writes applied in place: the Matcher kept current from the store's change log.

Each test compares a matcher that saw every write one at a time (tombstones, tail appends)
with a fresh matcher that loaded the gallery once at the end: the same subjects in the same
order, scores to 1e-5. The writes are drawn from a seeded generator; the property holds for
any sequence of enrolments and deletes, so any seed gives a valid test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppfr.errors import InputError, UnknownNameError
from ppfr.serve import Matcher, open_store
from ppfr.serve.store import shard_of
from ppfr.templates import SlerpFace, SlerpFaceConfig

DIM = 64
MODES = {
    "slerp-index": dict(protected=True, kw=dict()),
    "slerp-index-f16": dict(protected=True, kw=dict(index_dtype=torch.float16)),
    "slerp-direct": dict(protected=True, kw=dict(precompute=False)),
    "plain": dict(protected=False, kw=dict()),
    "plain-faiss": dict(protected=False, kw=dict(use_faiss=True)),
}


@pytest.fixture()
def sf() -> SlerpFace:
    weights = torch.linspace(1.0, 3.0, DIM // 16)
    return SlerpFace(DIM, SlerpFaceConfig(group_size=16), weights)


def _unit(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen), dim=1)


class _Writer:
    """Seeded enrolments and deletes against one gallery."""

    def __init__(self, store, sf: SlerpFace, protected: bool, seed: int) -> None:
        self.store, self.sf, self.protected = store, sf, protected
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.people: list[str] = []
        self.count = 0

    def enroll(self, name: str | None = None, k: int | None = None) -> str:
        if name is None:
            name = f"s{self.count:04d}"
            self.count += 1
        k = k or int(self.rng.integers(1, 4))
        t = _unit(k, self.gen)
        if self.protected:
            keys = self.sf.draw_keys(k, generator=self.gen)
            self.store.enroll("g", name, self.sf.protect(t, keys).numpy(), keys.numpy())
        else:
            self.store.enroll("g", name, t.numpy(), None)
        if name not in self.people:
            self.people.append(name)
        return name

    def delete(self) -> str:
        name = self.people.pop(int(self.rng.integers(len(self.people))))
        assert self.store.delete_subject("g", name) > 0
        return name

    def random_write(self) -> None:
        r = self.rng.random()
        if r < 0.25 and len(self.people) > 2:
            self.delete()
        elif r < 0.4 and self.people:  # more templates for someone enrolled
            self.enroll(self.people[int(self.rng.integers(len(self.people)))], 1)
        else:
            self.enroll()


def _same(got, want, atol=1e-5) -> None:
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want, strict=True):
        assert [s for s, _ in g_row] == [s for s, _ in w_row]
        np.testing.assert_allclose([v for _, v in g_row], [v for _, v in w_row], atol=atol)


@pytest.mark.parametrize("mode", list(MODES))
def test_writes_applied_in_place_equal_a_fresh_load(tmp_path, sf, mode):
    protected, kw = MODES[mode]["protected"], MODES[mode]["kw"]
    sfp = sf if protected else None
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        w = _Writer(store, sf, protected, seed=3)
        for _ in range(30):
            w.enroll()
        live = Matcher(store, sfp, compact_min=10**9, **kw)
        queries = _unit(6, torch.Generator().manual_seed(99))
        live.identify("g", queries)  # the one full load
        for step in range(40):
            w.random_write()
            if step % 5 == 4:  # several writes between some requests, one at others
                continue
            got = live.identify("g", queries, top_k=8)
            _same(got, Matcher(store, sfp, **kw).identify("g", queries, top_k=8))
        assert live.loads["g"] == 1  # never reloaded: every write was applied in place
        snap = live.snapshot("g")
        assert snap.tail_n > 0 and snap.n_main_dead > 0  # both paths were exercised
        for name in w.people[:5]:
            want = Matcher(store, sfp, **kw).verify("g", queries[0], name)
            assert live.verify("g", queries[0], name) == pytest.approx(want, abs=1e-5)


def test_deleted_then_reenrolled_and_fully_deleted(tmp_path, sf):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        w = _Writer(store, sf, True, seed=5)
        for _ in range(6):
            w.enroll(k=2)
        m = Matcher(store, sf, compact_min=10**9)
        q = _unit(1, torch.Generator().manual_seed(1))
        m.identify("g", q)
        victim = w.people[0]
        store.delete_subject("g", victim)
        assert victim not in [s for s, _ in m.identify("g", q, top_k=10)[0]]
        with pytest.raises(UnknownNameError):
            m.verify("g", q, victim)
        # re-enrolled under the same name: only the new template counts
        gen = torch.Generator().manual_seed(7)
        keys = sf.draw_keys(1, generator=gen)
        store.enroll("g", victim, sf.protect(q, keys).numpy(), keys.numpy())
        top = m.identify("g", q, top_k=1)[0][0]
        assert top[0] == victim and top[1] == pytest.approx(
            Matcher(store, sf).verify("g", q, victim), abs=1e-5
        )
        for name in list(w.people) + [victim]:
            store.delete_subject("g", name)
        assert m.identify("g", q, top_k=3) == [[]]
        assert m.loads["g"] == 1


def test_new_gallery_grows_from_empty(tmp_path, sf):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        m = Matcher(store, sf, compact_min=10**9)
        q = _unit(2, torch.Generator().manual_seed(1))
        assert m.identify("g", q) == [[], []]
        w = _Writer(store, sf, True, seed=11)
        for _ in range(12):
            w.enroll()
        _same(m.identify("g", q, top_k=4), Matcher(store, sf).identify("g", q, top_k=4))
        assert m.loads["g"] == 1 and m.snapshot("g").main.n == 0
        with pytest.raises(InputError, match="64-d templates; the queries are 32-d"):
            m.identify("g", q[:, :32])


def test_compaction_rebuilds_and_keeps_answers(tmp_path, sf):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        w = _Writer(store, sf, True, seed=13)
        for _ in range(20):
            w.enroll()
        m = Matcher(store, sf, compact_min=10**9)
        q = _unit(4, torch.Generator().manual_seed(2))
        m.identify("g", q)
        for _ in range(15):
            w.random_write()
        before = m.identify("g", q, top_k=6)
        m.compact("g")  # the background rebuild, waited for
        snap = m.snapshot("g")
        assert m.loads["g"] == 2 and snap.tail_n == 0 and snap.n_main_dead == 0
        _same(m.identify("g", q, top_k=6), before)


def test_compaction_starts_past_the_threshold(tmp_path, sf):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        w = _Writer(store, sf, True, seed=17)
        for _ in range(8):
            w.enroll()
        m = Matcher(store, sf, compact_min=0, compact_fraction=0.5)
        q = _unit(1, torch.Generator().manual_seed(3))
        m.identify("g", q)
        for _ in range(20):  # tail rows soon pass half the main part's rows
            w.enroll()
            m.identify("g", q)
        thread = m._compacting.get("g")
        assert thread is not None
        thread.join()
        assert m.loads["g"] >= 2
        _same(m.identify("g", q, top_k=5), Matcher(store, sf).identify("g", q, top_k=5))


def test_two_matchers_on_one_store_agree(store_url, sf):
    """Two service processes on one store (here: two matchers) apply the same log."""
    with open_store(store_url) as store:
        w = _Writer(store, sf, True, seed=19)
        for _ in range(10):
            w.enroll()
        a = Matcher(store, sf, compact_min=10**9)
        b = Matcher(store, sf, compact_min=10**9)
        q = _unit(3, torch.Generator().manual_seed(4))
        a.identify("g", q)
        for i in range(12):
            w.random_write()
            if i % 3 == 0:
                b.identify("g", q)
        _same(a.identify("g", q, top_k=5), b.identify("g", q, top_k=5))
        _same(a.identify("g", q, top_k=5), Matcher(store, sf).identify("g", q, top_k=5))


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_partition_the_gallery_and_merge_to_the_whole(store_url, sf, shards):
    with open_store(store_url) as store:
        w = _Writer(store, sf, True, seed=23)
        for _ in range(15):
            w.enroll()
        parts = [Matcher(store, sf, shard=(i, shards), compact_min=10**9) for i in range(shards)]
        q = _unit(3, torch.Generator().manual_seed(5))
        for p in parts:
            p.identify("g", q)
        for _ in range(10):
            w.random_write()
        whole = Matcher(store, sf).identify("g", q, top_k=100)
        merged = [[] for _ in range(len(q))]
        for i, p in enumerate(parts):
            for row, ranked in zip(merged, p.identify("g", q, top_k=100), strict=True):
                assert all(shard_of(s, shards) == i for s, _ in ranked)
                row.extend(ranked)
        merged = [sorted(row, key=lambda sv: -sv[1]) for row in merged]
        _same(merged, whole)


def test_equal_scores_rank_by_name(tmp_path):
    """Exact ties (the same template under several names) come out in name order, as the
    sharded gallery's merge orders them, wherever the rows sit (main part or tail)."""
    t = _unit(1, torch.Generator().manual_seed(0))
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        for name in ("m", "c", "x"):
            store.enroll("g", name, t.numpy(), None)
        m = Matcher(store, None, compact_min=10**9)
        m.identify("g", t)
        for name in ("a", "q"):  # into the tail
            store.enroll("g", name, t.numpy(), None)
        assert [s for s, _ in m.identify("g", t, top_k=5)[0]] == ["a", "c", "m", "q", "x"]
