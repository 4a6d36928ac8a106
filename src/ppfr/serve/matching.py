r"""Identification and verification against a gallery, kept current by applying its writes.

A :class:`Matcher` keeps one in-memory state per gallery: a *main* part built by one full
load, sorted by subject, and a *tail* of the rows enrolled since, with a tombstone per
deleted row. Every request asks the store for the gallery's version (one cheap query); when
it moved on, the matcher fetches only what changed (``store.changes``: the subjects deleted
and the rows enrolled after the version it holds) and applies it in place: deleted rows get
tombstones, new rows are appended to the tail's index. An enrolment or a delete therefore
costs the next request the size of the change, not a reload of the gallery; a full load
happens at the first request, when the store cannot bring the state up to date (restored
from an older backup), and in the background when the tail and the tombstones together pass
``compact_fraction`` of the main part (then the rebuilt state replaces the old one between
two requests; requests never wait for it). Two service processes on one store agree,
because each applies the same change log.

``shard=(i, K)`` restricts the matcher to partition ``i`` of ``K`` of every gallery
(:func:`ppfr.serve.store.shard_of`: all of a subject's templates in one partition), loaded
and kept current the same way: one shard of :mod:`ppfr.serve.cluster`'s sharded gallery.

**Scoring.** With SlerpFace protection, a query :math:`q` is scored against every stored
pair (protected template :math:`p_i`, key :math:`k_i`) with the SlerpFace score
(:meth:`ppfr.templates.SlerpFace.scores`), vectorised over all templates: a batch of
:math:`m` queries against :math:`n` templates is one :math:`O(m\,n\,D)` pass. In plain
mode (``protection=None``) the score is the inner product :math:`q \cdot t_i` (the cosine
similarity for L2-normalised templates), computed with a FAISS ``IndexFlatIP`` (or, for
galleries of at least ``ivf_min_size`` templates, an approximate ``IndexIVFFlat``) when
``use_faiss``, else one matrix product.

**Stored side precomputed once.** In SlerpFace mode the main part and the tail each hold a
:class:`ppfr.templates.SlerpFaceIndex` of their rows: per template and group the unit key,
the masked unit key, the protected template and the keep mask, plus two per-group
scalars, laid out in blocks so that a query reads each stored array exactly once (the
derivation is in the :mod:`ppfr.templates.index` docstring; the figures in
docs/benchmarks.md). The tail's index grows in place (:meth:`SlerpFaceIndex.append`).
``index_dtype=torch.float16`` halves the memory at a small accuracy cost
(docs/templates.md). ``Matcher(..., precompute=False)`` keeps the raw keys and calls
``SlerpFace.scores`` for every request instead (a reference, not a serving mode).

**Per-subject best.** A subject may have several templates; its score is the best live
one. The main part's rows are sorted by subject, so its per-subject maximum is
``np.maximum.reduceat`` over contiguous column segments (tombstoned columns scored
:math:`-\infty`); the tail's rows are folded in with ``np.maximum.at`` on their subjects'
columns, and the top-k subjects come from ``argpartition``.

Plain mode stores templates that an inversion model can turn back into faces; see
docs/deployment.md ("Storage") for the trade-off.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ppfr.errors import InputError, UnknownNameError
from ppfr.serve.store import GalleryChanges, GalleryMatrix, GalleryStore, open_store
from ppfr.templates import SlerpFace, SlerpFaceIndex

__all__ = ["GalleryMatcher", "Matcher", "MatcherFactory"]

log = logging.getLogger("ppfr.serve")


class GalleryMatcher(Protocol):
    """What the service asks of a matcher: :class:`Matcher`, or a sharded one on a cluster."""

    def identify(
        self, gallery: str, queries: Tensor, top_k: int = 5
    ) -> list[list[tuple[str, float]]]: ...

    def verify(self, gallery: str, query: Tensor, subject: str) -> float: ...


#: builds the service's matcher from its store and protection (``create_app(matcher=...)``)
MatcherFactory = Callable[[GalleryStore, "SlerpFace | None"], GalleryMatcher]

#: bound on the (queries x templates) score block held at once: 2**25 floats = 128 MiB
_SCORE_BLOCK = 1 << 25


def _rank(candidate: tuple[str, float]) -> tuple[float, str]:
    return (-candidate[1], candidate[0])


#: templates per block of the tail's SlerpFace index (the index module's default block)
_TAIL_BLOCK = 2048


@dataclass(frozen=True)
class _Main:
    """Rows of one full load, sorted by subject; never modified afterwards."""

    version: int
    names: np.ndarray  # (S,) object: subject names, sorted
    starts: np.ndarray  # (S,) int64: first row of each subject
    ends: np.ndarray  # (S,) int64: one past its last row
    n: int  # rows
    dim: int  # template dimension (0 for an empty gallery)
    templates: Tensor | None  # (n, D) float32; None once a SlerpFace index holds them
    keys: Tensor | None  # (n, D) float32; None in plain mode or once indexed
    slerp: SlerpFaceIndex | None  # the stored side, precomputed (SlerpFace mode)
    index: Any  # a FAISS index over ``templates`` (plain mode, use_faiss)
    max_per_subject: int

    def column(self, subject: str) -> int | None:
        """The subject's column among the main part's subjects, or None."""
        c = int(np.searchsorted(self.names, subject)) if len(self.names) else 0
        return c if c < len(self.names) and self.names[c] == subject else None


class _Tail:
    """Rows enrolled after the main part's load: append-only, scored like the main part.

    Shared by successive snapshots; a snapshot scores only its first ``n`` rows, which
    later appends never change (they write past them, or into grown copies).
    """

    def __init__(self, matcher: Matcher) -> None:
        self.protection = matcher.protection
        self.indexed = matcher.protection is not None and matcher.precompute
        self.dtype = matcher.index_dtype
        self.slerp: SlerpFaceIndex | None = None
        self.templates = np.zeros((0, 0), np.float32)  # capacity rows; the first n are set
        self.keys = np.zeros((0, 0), np.float32)
        self.n = 0
        self.dim = 0

    def append(self, templates: np.ndarray, keys: np.ndarray | None) -> None:
        self.dim = int(templates.shape[1])
        if self.indexed:
            if self.slerp is None:
                self.slerp = SlerpFaceIndex(
                    self.protection, templates, keys, dtype=self.dtype, block=_TAIL_BLOCK
                )
            else:
                self.slerp.append(templates, keys)
            self.n = len(self.slerp)
            return
        n, k = self.n, len(templates)
        if n + k > len(self.templates):  # grow by half: O(1) copies per row overall
            cap = max(n + k, len(self.templates) + len(self.templates) // 2, 64)
            grown = np.zeros((cap, templates.shape[1]), np.float32)
            if n:
                grown[:n] = self.templates[:n]
            if keys is not None:
                grown_keys = np.zeros_like(grown)
                if n:
                    grown_keys[:n] = self.keys[:n]
                self.keys = grown_keys  # keys before templates: a reader of n rows finds both
            self.templates = grown
        self.templates[n : n + k] = templates
        if keys is not None:
            self.keys[n : n + k] = keys
        self.n = n + k

    def scores(self, q: Tensor, rows: slice) -> Tensor:
        """(m, len(rows)) scores against the tail's ``rows`` (within the first ``n``)."""
        if self.slerp is not None:
            return self.slerp.scores(q, rows)
        t = torch.from_numpy(self.templates[rows])
        if self.protection is None:
            return q @ t.T
        return self.protection.scores(q, t, torch.from_numpy(self.keys[rows]))


@dataclass(frozen=True)
class _Snapshot:
    """A gallery at one version: the main part, the tail's first rows, the tombstones.

    Immutable: applying a change builds a new snapshot that shares the main part and the
    tail (the arrays below are small or copied), so a request scores one consistent state.
    """

    version: int
    main: _Main
    tail: _Tail
    tail_n: int  # rows of the tail this snapshot sees
    tail_cols: np.ndarray  # (tail_n,) int64: each tail row's subject column
    tail_dead: np.ndarray  # (tail_n,) bool
    main_dead: np.ndarray  # (main.n,) bool
    n_main_dead: int
    extra_names: tuple[str, ...]  # subjects not in the main part: columns S, S + 1, ...
    alive: np.ndarray  # (S + len(extra_names),) bool: subject has a live template
    n_alive: int

    # the main part's fields, as the single full-load snapshot had them
    @property
    def slerp(self) -> SlerpFaceIndex | None:
        return self.main.slerp

    @property
    def dim(self) -> int:
        return self.main.dim or (self.tail.dim if self.tail_n else 0)

    def _name(self, col: int) -> str:
        s = len(self.main.names)
        return str(self.main.names[col]) if col < s else self.extra_names[col - s]

    def column(self, subject: str) -> int | None:
        c = self.main.column(subject)
        if c is None and subject in self.extra_names:
            c = len(self.main.names) + self.extra_names.index(subject)
        return c


class Matcher:
    """Vectorised 1:N identification and 1:1 verification, kept current by applying writes.

    Args:
        store: where galleries live.
        protection: the SlerpFace that protected the stored templates, or None for
            plain-template galleries.
        use_faiss: in plain mode, search with FAISS instead of a numpy/torch product.
        ivf_min_size: in plain mode with FAISS, use an approximate IVF index for galleries
            of at least this many templates (None: always exact ``IndexFlatIP``).
        nprobe: IVF lists visited per query (more = slower, closer to exact).
        precompute: in SlerpFace mode, build a :class:`ppfr.templates.SlerpFaceIndex` once
            per full load (the default; 8.4 KB per 512-d template in float32, 4.3 KB in
            float16) instead of calling ``SlerpFace.scores`` for every request.
        index_dtype: storage type of that index, ``torch.float32`` (exact to float32
            rounding) or ``torch.float16`` (half the memory; docs/templates.md gives its
            accuracy cost).
        shard: ``(i, K)``: hold only partition ``i`` of ``K`` of each gallery
            (:func:`ppfr.serve.store.shard_of`); None, the whole gallery.
        compact_fraction: rebuild a gallery's state from a full load, in the background,
            once its tail rows plus its tombstones pass this fraction of the main part's rows
            (and ``compact_min`` rows): bounds the memory deleted rows hold and the share of
            rows scored by the slower per-row fold of the tail.
        compact_min: see ``compact_fraction``.

    Thread-safe: snapshots are immutable; applying changes and compacting happen under a
    lock, and a request holds the snapshot it started with.
    """

    def __init__(
        self,
        store: GalleryStore,
        protection: SlerpFace | None,
        *,
        use_faiss: bool = False,
        ivf_min_size: int | None = None,
        nprobe: int = 32,
        precompute: bool = True,
        index_dtype: torch.dtype = torch.float32,
        shard: tuple[int, int] | None = None,
        compact_fraction: float = 0.25,
        compact_min: int = 4096,
    ) -> None:
        if use_faiss and protection is not None:
            raise InputError(
                "use_faiss applies to plain templates only; SlerpFace scores need the keys"
            )
        if index_dtype not in (torch.float32, torch.float16):
            raise InputError(
                f"index_dtype must be torch.float32 or torch.float16, got {index_dtype!r}"
            )
        if not (compact_fraction > 0 and compact_min >= 0):
            raise InputError(
                f"compact_fraction must be > 0 and compact_min >= 0, got {compact_fraction!r}"
                f" and {compact_min!r}"
            )
        self.store = store
        self.protection = protection
        self.use_faiss = use_faiss
        self.ivf_min_size = ivf_min_size
        self.nprobe = nprobe
        self.precompute = precompute
        self.index_dtype = index_dtype
        self.shard = shard
        self.compact_fraction = float(compact_fraction)
        self.compact_min = int(compact_min)
        self._cache: dict[str, _Snapshot] = {}
        self._lock = threading.Lock()
        self._compacting: dict[str, threading.Thread] = {}
        #: full loads done so far, per gallery (start, compaction, or a store gone back)
        self.loads: dict[str, int] = {}

    # --- public API -------------------------------------------------------------------
    def identify(
        self, gallery: str, queries: Tensor, top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """For each query, the ``top_k`` best-scoring subjects with their best score, descending.

        Shape:
            queries: (m, D) or (D,), the gallery's dimension.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        snap = self.snapshot(gallery)
        q = self._queries(queries, snap, gallery)
        if snap.n_alive == 0:
            return [[] for _ in range(q.shape[0])]
        k = min(top_k, snap.n_alive)
        out: list[list[tuple[str, float]]] = []
        block = max(1, _SCORE_BLOCK // max(1, snap.main.n + snap.tail_n, len(snap.alive)))
        for i in range(0, q.shape[0], block):
            best = self._best(q[i : i + block], snap, k)  # (b, subjects)
            top = np.argpartition(-best, k - 1, axis=1)[:, :k]
            for row, cols in zip(best, top, strict=True):
                names = [snap._name(int(c)) for c in cols]
                # descending score, equal scores by name: the order a sharded gallery's
                # merge (ppfr.serve.cluster.merge) gives too
                ranked = sorted(zip(names, row[cols].tolist(), strict=True), key=_rank)
                out.append([(name, float(score)) for name, score in ranked])
        return out

    def verify(self, gallery: str, query: Tensor, subject: str) -> float:
        """The best score of ``query`` against ``subject``'s templates.

        Shape:
            query: (D,) or (1, D).

        Raises:
            UnknownNameError: ``subject`` has no templates in ``gallery``.
        """
        snap = self.snapshot(gallery)
        q = self._queries(query, snap, gallery)
        if q.shape[0] != 1:
            raise InputError(f"verify takes one query, got {q.shape[0]}")
        c = snap.column(subject)
        if c is None or not snap.alive[c]:
            raise UnknownNameError(f"subject {subject!r} is not enrolled in gallery {gallery!r}")
        best = -math.inf
        main = snap.main
        if c < len(main.names):
            lo, hi = int(main.starts[c]), int(main.ends[c])
            live = ~snap.main_dead[lo:hi]
            if live.any():
                best = float(self._main_scores(q, snap, slice(lo, hi))[0].numpy()[live].max())
        rows = np.flatnonzero((snap.tail_cols == c) & ~snap.tail_dead)
        if len(rows):
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            scores = snap.tail.scores(q, slice(lo, hi))[0].numpy()
            best = max(best, float(scores[rows - lo].max()))
        return best

    def snapshot(self, gallery: str) -> _Snapshot:
        """The gallery's current state: writes since the last request applied in place."""
        version = self.store.version(gallery)
        snap = self._cache.get(gallery)
        if snap is not None and snap.version == version:
            return snap
        with self._lock:
            snap = self._cache.get(gallery)
            if snap is None or snap.version != version:
                snap = self._refresh(gallery, snap)
                self._cache[gallery] = snap
            self._maybe_compact(gallery, snap)
            return snap

    def compact(self, gallery: str, wait: bool = True) -> None:
        """Rebuild ``gallery``'s state from a full load now (in the background if not ``wait``)."""
        with self._lock:
            thread = self._start_compaction(gallery)
        if wait and thread is not None:
            thread.join()

    # --- keeping the state current -------------------------------------------------------
    def _refresh(self, gallery: str, snap: _Snapshot | None) -> _Snapshot:
        """``snap`` brought up to the store's version (a full load if it cannot be)."""
        if snap is not None:
            changes = self.store.changes(gallery, snap.version, shard=self.shard)
            if changes is not None:
                return self._apply(gallery, snap, changes)
        return self._load(gallery)

    def _load(self, gallery: str, store: GalleryStore | None = None) -> _Snapshot:
        m = (store or self.store).load(gallery, shard=self.shard)
        self.loads[gallery] = self.loads.get(gallery, 0) + 1
        main = self._build(gallery, m)
        s = len(main.names)
        return _Snapshot(
            version=m.version,
            main=main,
            tail=_Tail(self),
            tail_n=0,
            tail_cols=np.zeros(0, np.int64),
            tail_dead=np.zeros(0, bool),
            main_dead=np.zeros(main.n, bool),
            n_main_dead=0,
            extra_names=(),
            alive=np.ones(s, bool),
            n_alive=s,
        )

    def _apply(self, gallery: str, snap: _Snapshot, changes: GalleryChanges) -> _Snapshot:
        """A new snapshot: ``changes.deleted`` tombstoned, then ``changes.added`` appended."""
        main = snap.main
        main_dead, tail_dead, alive = snap.main_dead, snap.tail_dead, snap.alive
        if changes.deleted:  # copy on write: requests in flight keep the old arrays
            main_dead, tail_dead, alive = main_dead.copy(), tail_dead.copy(), alive.copy()
            for subject in changes.deleted:
                c = snap.column(subject)
                if c is None:
                    continue
                if c < len(main.names):
                    main_dead[main.starts[c] : main.ends[c]] = True
                tail_dead[snap.tail_cols == c] = True
                alive[c] = False
        added = changes.added
        extra = list(snap.extra_names)
        cols = np.zeros(len(added), np.int64)
        if len(added):
            self._check_rows(gallery, added.keys is not None, added.templates.shape[1])
            known = {name: i for i, name in enumerate(extra)}
            for j, subject in enumerate(added.subjects):
                c = main.column(subject)
                if c is None:
                    if subject not in known:
                        known[subject] = len(extra)
                        extra.append(subject)
                    c = len(main.names) + known[subject]
                cols[j] = c
            snap.tail.append(added.templates, added.keys)
            grown = np.zeros(len(main.names) + len(extra), bool)
            grown[: len(alive)] = alive
            grown[cols] = True
            alive = grown
        return _Snapshot(
            version=changes.version,
            main=main,
            tail=snap.tail,
            tail_n=snap.tail_n + len(added),
            tail_cols=np.concatenate([snap.tail_cols, cols]),
            tail_dead=np.concatenate([tail_dead, np.zeros(len(added), bool)]),
            main_dead=main_dead,
            n_main_dead=int(main_dead.sum()) if changes.deleted else snap.n_main_dead,
            extra_names=tuple(extra),
            alive=alive,
            n_alive=int(alive.sum()),
        )

    def _maybe_compact(self, gallery: str, snap: _Snapshot) -> None:
        stale = snap.tail_n + snap.n_main_dead
        if stale > max(self.compact_min, self.compact_fraction * snap.main.n):
            self._start_compaction(gallery)

    def _start_compaction(self, gallery: str) -> threading.Thread | None:
        """Start a background rebuild of ``gallery`` unless one runs (call under the lock)."""
        running = self._compacting.get(gallery)
        if running is not None and running.is_alive():
            return running

        def rebuild() -> None:
            own = None
            try:
                # the long part, outside the lock and on a connection of its own: the
                # store serialises calls on one connection, and requests keep asking it
                # for the version meanwhile
                url = getattr(self.store, "url", None)
                own = open_store(url) if isinstance(url, str) else None
                fresh = self._load(gallery, own)
                with self._lock:
                    # writes that landed during the load come from the change log
                    current = self.store.version(gallery)
                    if fresh.version != current:
                        fresh = self._refresh(gallery, fresh)
                    self._cache[gallery] = fresh
            except Exception as e:  # noqa: BLE001 - the old state keeps serving
                log.warning("compaction of gallery %r failed (%s); retried later", gallery, e)
            finally:
                if own is not None:
                    own.close()

        thread = threading.Thread(target=rebuild, name=f"ppfr-compact-{gallery}", daemon=True)
        self._compacting[gallery] = thread
        thread.start()
        return thread

    # --- building the main part ----------------------------------------------------------
    def _check_rows(self, gallery: str, protected: bool, dim: int) -> None:
        if protected and self.protection is None:
            raise InputError(
                f"gallery {gallery!r} holds SlerpFace-protected templates; "
                "match it with protection=SlerpFace(...)"
            )
        if not protected and self.protection is not None:
            raise InputError(
                f"gallery {gallery!r} holds plain templates but this matcher uses SlerpFace"
            )
        if self.protection is not None and dim != self.protection.dim:
            raise InputError(
                f"gallery {gallery!r} holds {dim}-d templates but the "
                f"SlerpFace protection is for {self.protection.dim}-d ones"
            )

    def _build(self, gallery: str, m: GalleryMatrix) -> _Main:
        n = len(m)
        if n:
            self._check_rows(gallery, m.keys is not None, m.templates.shape[1])
        order = np.argsort(m.subjects, kind="stable") if n else np.zeros(0, np.int64)
        subjects = m.subjects[order]
        if n:
            first = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1]])
        else:
            first = np.zeros(0, np.int64)
        ends = np.r_[first[1:], n].astype(np.int64)
        # enrolment order is often subject order already: then skip the (large) copies
        identity = bool((order == np.arange(n)).all())

        def sort(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a if identity else a[order]))

        templates: Tensor | None = sort(m.templates)
        keys = sort(m.keys) if m.keys is not None and n else None
        slerp = index = None
        if self.protection is not None and self.precompute and keys is not None:
            slerp = self.protection.index(templates, keys, dtype=self.index_dtype)
            templates = keys = None  # the index holds everything scoring needs
        elif self.use_faiss and n:
            index = self._faiss_index(templates.numpy())
        return _Main(
            version=m.version,
            names=subjects[first],
            starts=first.astype(np.int64),
            ends=ends,
            n=n,
            dim=int(m.templates.shape[1]) if n else 0,
            templates=templates,
            keys=keys,
            slerp=slerp,
            index=index,
            max_per_subject=int((ends - first).max()) if n else 0,
        )

    def _faiss_index(self, templates: np.ndarray) -> Any:
        import faiss

        n, d = templates.shape
        if self.ivf_min_size is not None and n >= self.ivf_min_size:
            nlist = max(1, int(4 * math.sqrt(n)))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            # train k-means on a seeded sample: deterministic and bounded in time
            rng = np.random.default_rng(0)
            sample = templates[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
            index.train(sample)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexFlatIP(d)
        index.add(templates)
        return index

    # --- scoring ---------------------------------------------------------------------------
    def _best(self, q: Tensor, snap: _Snapshot, k: int) -> np.ndarray:
        """(m, subjects) best live score per subject column; -inf where none (or not found)."""
        main = snap.main
        best = np.full((q.shape[0], len(snap.alive)), -np.inf, dtype=np.float32)
        if main.n and main.index is not None:
            self._faiss_best(q, snap, k, best)
        elif main.n and snap.n_main_dead < main.n:
            scores = self._main_scores(q, snap, slice(None)).numpy()  # (m, n)
            if snap.n_main_dead:
                scores[:, snap.main_dead] = -np.inf
            best[:, : len(main.names)] = np.maximum.reduceat(scores, main.starts, axis=1)
        if snap.tail_n:
            tail = snap.tail.scores(q, slice(0, snap.tail_n)).numpy()  # (m, tail_n)
            live = ~snap.tail_dead
            # fold each live tail row into its subject's column (unbuffered maximum)
            np.maximum.at(best.T, snap.tail_cols[live], tail[:, live].T)
        return best

    def _faiss_best(self, q: Tensor, snap: _Snapshot, k: int, best: np.ndarray) -> None:
        main = snap.main
        # The k-th best subject's best template ranks at most (k-1)*T + 1 among the live
        # rows (T = most templates any subject has), and tombstoned rows may rank above it:
        # k*T neighbours plus one per tombstone always hold the top k live subjects
        depth = min(main.n, k * main.max_per_subject + snap.n_main_dead)
        scores, rows = main.index.search(np.ascontiguousarray(q.numpy()), depth)
        row_subject = np.repeat(np.arange(len(main.names)), main.ends - main.starts)
        for out, srow, rrow in zip(best, scores, rows, strict=True):
            found = 0
            for s, r in zip(srow.tolist(), rrow.tolist(), strict=True):
                if r < 0:  # IVF may return fewer than asked
                    break
                if snap.main_dead[r]:
                    continue
                c = int(row_subject[r])
                if out[c] == -np.inf:
                    out[c] = s
                    found += 1
                    if found == k:
                        break

    def _main_scores(self, q: Tensor, snap: _Snapshot, rows: slice) -> Tensor:
        """(m, n) scores of queries against the main part's ``rows``."""
        main = snap.main
        with torch.no_grad():
            if main.slerp is not None:
                return main.slerp.scores(q, rows)
            assert main.templates is not None  # only an index replaces them
            templates = main.templates[rows]
            if self.protection is None:
                return q @ templates.T
            assert main.keys is not None
            return self.protection.scores(q, templates, main.keys[rows])

    @staticmethod
    def _queries(queries: Tensor, snap: _Snapshot, gallery: str) -> Tensor:
        q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[0] == 0:
            raise InputError(f"queries must have shape (m, dim), got {tuple(q.shape)}")
        dim = snap.dim
        if dim and q.shape[1] != dim:
            raise InputError(
                f"gallery {gallery!r} holds {dim}-d templates; the queries are {q.shape[1]}-d"
            )
        if not torch.isfinite(q).all():
            raise InputError("queries contain NaN or infinite values")
        return q.contiguous()
