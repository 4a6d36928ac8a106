r"""Identification and verification against a gallery, vectorised over a cached snapshot.

A :class:`Matcher` keeps one snapshot per gallery (:class:`ppfr.serve.store.GalleryMatrix`
with its rows sorted by subject) and reloads it only when ``store.version(gallery)``
changes, so a request costs one cheap version query plus the scoring.

**Scoring.** With SlerpFace protection, a query :math:`q` is scored against every stored
pair (protected template :math:`p_i`, key :math:`k_i`) with the SlerpFace score
(:meth:`ppfr.templates.SlerpFace.scores`), vectorised over all templates: a batch of
:math:`m` queries against :math:`n` templates is one :math:`O(m\,n\,D)` pass. In plain
mode (``protection=None``) the score is the inner product :math:`q \cdot t_i` (the cosine
similarity for L2-normalised templates), computed with a FAISS ``IndexFlatIP`` (or, for
galleries of at least ``ivf_min_size`` templates, an approximate ``IndexIVFFlat``) when
``use_faiss``, else one matrix product.

**Stored side precomputed once.** In SlerpFace mode the snapshot holds a
:class:`ppfr.templates.SlerpFaceIndex` of its rows: per template and group the unit key,
the masked unit key, the protected template and the keep mask, plus two per-group
scalars, laid out in blocks so that a query reads each stored array exactly once (two
batched matrix products per block, then a few element-wise operations per group while the
block's results are still in cache). The derivation is in the :mod:`ppfr.templates.index`
docstring; the figures (identify time against the time to read those arrays once) are in
docs/benchmarks.md. ``index_dtype=torch.float16`` halves the snapshot's memory at a small
accuracy cost (docs/templates.md). ``Matcher(..., precompute=False)`` keeps the raw keys
and calls ``SlerpFace.scores`` for every request instead (it rebuilds the stored side
each time: a reference, not a serving mode).

**Per-subject best.** A subject may have several templates; its score is the best one.
Rows are sorted by subject, so the per-subject maximum is ``np.maximum.reduceat`` over
contiguous column segments, and the top-k subjects come from ``argpartition``.

Plain mode stores templates that an inversion model can turn back into faces; see
docs/deployment.md ("Storage") for the trade-off.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppfr.errors import InputError, UnknownNameError
from ppfr.serve.store import GalleryMatrix, GalleryStore
from ppfr.templates import SlerpFace, SlerpFaceIndex

__all__ = ["Matcher"]

#: bound on the (queries x templates) score block held at once: 2**25 floats = 128 MiB
_SCORE_BLOCK = 1 << 25


@dataclass
class _Snapshot:
    """A gallery's rows sorted by subject, ready to score."""

    version: int
    names: np.ndarray  # (S,) object: subject names, sorted
    starts: np.ndarray  # (S,) int64: first row of each subject
    ends: np.ndarray  # (S,) int64: one past its last row
    n: int  # rows
    dim: int  # template dimension (0 for an empty gallery)
    templates: Tensor | None  # (n, D) float32; None once a SlerpFace index holds them
    keys: Tensor | None  # (n, D) float32; None in plain mode or once indexed
    slerp: SlerpFaceIndex | None = None  # the stored side, precomputed (SlerpFace mode)
    index: Any = None  # a FAISS index over ``templates`` (plain mode, use_faiss)
    max_per_subject: int = 0

    @property
    def size(self) -> int:
        return self.n


class Matcher:
    """Vectorised 1:N identification and 1:1 verification over cached gallery snapshots.

    Args:
        store: where galleries live.
        protection: the SlerpFace that protected the stored templates, or None for
            plain-template galleries.
        use_faiss: in plain mode, search with FAISS instead of a numpy/torch product.
        ivf_min_size: in plain mode with FAISS, use an approximate IVF index for galleries
            of at least this many templates (None: always exact ``IndexFlatIP``).
        nprobe: IVF lists visited per query (more = slower, closer to exact).
        precompute: in SlerpFace mode, build a :class:`ppfr.templates.SlerpFaceIndex` once
            per snapshot (the default; 8.4 KB per 512-d template in float32, 4.3 KB in
            float16) instead of calling ``SlerpFace.scores`` for every request.
        index_dtype: storage type of that index, ``torch.float32`` (exact to float32
            rounding) or ``torch.float16`` (half the memory; docs/templates.md gives its
            accuracy cost).

    Thread-safe: snapshots are immutable, and refreshing one is done under a lock.
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
    ) -> None:
        if use_faiss and protection is not None:
            raise InputError(
                "use_faiss applies to plain templates only; SlerpFace scores need the keys"
            )
        self.store = store
        self.protection = protection
        self.use_faiss = use_faiss
        self.ivf_min_size = ivf_min_size
        self.nprobe = nprobe
        if index_dtype not in (torch.float32, torch.float16):
            raise InputError(
                f"index_dtype must be torch.float32 or torch.float16, got {index_dtype!r}"
            )
        self.precompute = precompute
        self.index_dtype = index_dtype
        self._cache: dict[str, _Snapshot] = {}
        self._lock = threading.Lock()

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
        if snap.size == 0:
            return [[] for _ in range(q.shape[0])]
        k = min(top_k, len(snap.names))
        if snap.index is not None:
            return self._identify_faiss(snap, q, k)
        out: list[list[tuple[str, float]]] = []
        block = max(1, _SCORE_BLOCK // snap.size)
        for i in range(0, q.shape[0], block):
            scores = self._scores(q[i : i + block], snap, slice(None)).numpy()  # (b, n)
            best = np.maximum.reduceat(scores, snap.starts, axis=1)  # (b, S)
            top = np.argpartition(-best, k - 1, axis=1)[:, :k]
            for row, cols in zip(best, top, strict=True):
                cols = cols[np.argsort(-row[cols], kind="stable")]
                out.append([(str(snap.names[c]), float(row[c])) for c in cols])
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
        c = int(np.searchsorted(snap.names, subject)) if len(snap.names) else 0
        if c >= len(snap.names) or snap.names[c] != subject:
            raise UnknownNameError(f"subject {subject!r} is not enrolled in gallery {gallery!r}")
        rows = slice(int(snap.starts[c]), int(snap.ends[c]))
        return float(self._scores(q, snap, rows).max())

    def snapshot(self, gallery: str) -> _Snapshot:
        """The cached snapshot of ``gallery``, reloaded if the store's version moved on."""
        version = self.store.version(gallery)
        snap = self._cache.get(gallery)
        if snap is not None and snap.version == version:
            return snap
        with self._lock:
            snap = self._cache.get(gallery)
            if snap is None or snap.version != version:
                snap = self._build(gallery, self.store.load(gallery))
                self._cache[gallery] = snap
            return snap

    # --- internals ----------------------------------------------------------------------
    def _build(self, gallery: str, m: GalleryMatrix) -> _Snapshot:
        n = len(m)
        if n and self.protection is not None and m.keys is None:
            raise InputError(
                f"gallery {gallery!r} holds plain templates but this matcher uses SlerpFace"
            )
        if n and self.protection is None and m.keys is not None:
            raise InputError(
                f"gallery {gallery!r} holds SlerpFace-protected templates; "
                "match it with protection=SlerpFace(...)"
            )
        if n and self.protection is not None and m.templates.shape[1] != self.protection.dim:
            raise InputError(
                f"gallery {gallery!r} holds {m.templates.shape[1]}-d templates but the "
                f"SlerpFace protection is for {self.protection.dim}-d ones"
            )
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

        templates = sort(m.templates)
        keys = sort(m.keys) if m.keys is not None and n else None
        snap = _Snapshot(
            version=m.version,
            names=subjects[first],
            starts=first.astype(np.int64),
            ends=ends,
            n=n,
            dim=int(m.templates.shape[1]) if n else 0,
            templates=templates,
            keys=keys,
            max_per_subject=int((ends - first).max()) if n else 0,
        )
        if self.protection is not None and self.precompute and keys is not None:
            snap.slerp = self.protection.index(templates, keys, dtype=self.index_dtype)
            # the index holds everything scoring needs: free the raw rows
            snap.templates = snap.keys = None
        if self.use_faiss and n:
            snap.index = self._faiss_index(templates.numpy())
        return snap

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

    def _identify_faiss(self, snap: _Snapshot, q: Tensor, k: int) -> list[list[tuple[str, float]]]:
        # The k-th best subject's best template ranks at most (k-1)*T + 1 among all rows
        # (T = most templates any subject has), so k*T neighbours always hold the top k.
        depth = min(snap.size, k * snap.max_per_subject)
        scores, rows = snap.index.search(np.ascontiguousarray(q.numpy()), depth)
        row_subject = np.repeat(np.arange(len(snap.names)), snap.ends - snap.starts)
        out = []
        for srow, rrow in zip(scores, rows, strict=True):
            seen: dict[int, float] = {}
            for s, r in zip(srow.tolist(), rrow.tolist(), strict=True):
                if r < 0:  # IVF may return fewer than asked
                    break
                c = int(row_subject[r])
                if c not in seen:
                    seen[c] = s
                    if len(seen) == k:
                        break
            out.append([(str(snap.names[c]), float(s)) for c, s in seen.items()])
        return out

    def _scores(self, q: Tensor, snap: _Snapshot, rows: slice) -> Tensor:
        """(m, n) scores of queries against the snapshot's ``rows``."""
        with torch.no_grad():
            if snap.slerp is not None:
                return snap.slerp.scores(q, rows)
            assert snap.templates is not None  # only an index replaces them
            templates = snap.templates[rows]
            if self.protection is None:
                return q @ templates.T
            assert snap.keys is not None
            return self.protection.scores(q, templates, snap.keys[rows])

    @staticmethod
    def _queries(queries: Tensor, snap: _Snapshot, gallery: str) -> Tensor:
        q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[0] == 0:
            raise InputError(f"queries must have shape (m, dim), got {tuple(q.shape)}")
        dim = snap.dim
        if snap.size and q.shape[1] != dim:
            raise InputError(
                f"gallery {gallery!r} holds {dim}-d templates; the queries are {q.shape[1]}-d"
            )
        if not torch.isfinite(q).all():
            raise InputError("queries contain NaN or infinite values")
        return q.contiguous()
