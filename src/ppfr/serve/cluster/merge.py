"""Merging per-shard top-k lists into the gallery's top-k (pure Python, no Ray).

Every subject lives on exactly one shard (``ppfr.serve.store.shard_of``), so a subject's
score, the best over its templates, is computed whole on that shard. The global top-k is
then a subset of the union of the shards' top-k lists: a subject outside its own shard's
top k has k better subjects on that shard alone. Sorting that union and keeping k entries
gives exactly the single-process answer.

Order. Descending score; equal scores in ascending subject name, the order a
single-process :class:`ppfr.serve.matching.Matcher` gives them too.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

__all__ = ["merge_top_k"]

Ranked = list[tuple[str, float]]


def merge_top_k(parts: Sequence[Sequence[Ranked]], top_k: int) -> list[Ranked]:
    """The global top-k per query from each shard's top-k per query.

    Args:
        parts: one entry per shard; each holds, per query, that shard's ranked
            ``(subject, score)`` list (descending; at most ``top_k`` long).
        top_k: how many candidates to keep per query.

    Returns:
        Per query, at most ``top_k`` ``(subject, score)`` pairs, descending by score, ties
        by subject name.

    Raises:
        ValueError: the shards answered for different numbers of queries (a bug, not a
            user error: the same batch goes to every shard).
    """
    if not parts:
        return []
    m = len(parts[0])
    if any(len(p) != m for p in parts):
        raise ValueError(f"shards answered for {[len(p) for p in parts]} queries, not all {m}")
    out: list[Ranked] = []
    for q in range(m):
        candidates = (pair for part in parts for pair in part[q])
        # nsmallest on (-score, name): descending score, then ascending name, in O(n log k)
        best = heapq.nsmallest(top_k, candidates, key=lambda p: (-p[1], p[0]))
        out.append([(str(s), float(sc)) for s, sc in best])
    return out
