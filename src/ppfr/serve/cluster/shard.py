"""Shard actors: one partition of every gallery, held in memory by a Ray actor.

A service with K shards runs K actors named ``{service}-shard-{i}-of-{K}`` in the Ray
namespace :data:`NAMESPACE`. Shard ``i`` holds a :class:`ppfr.serve.matching.Matcher` over
partition ``i`` of K (``Matcher(..., shard=(i, K))``: the subjects ``s`` with
``shard_of(s, K) == i``, all templates of a subject together, so its best score is local).

Each actor opens the durable store itself from its URL (the SQLite file when every node is
one machine, PostgreSQL between machines) and loads its partition of every gallery in its
constructor, once. Later enrolments and deletes reach it through the Matcher, which checks
the store's version on every request and applies what it has not seen: a write that the
store has committed (and the service acknowledged) is visible to the next identify.

Failure. The actors are *detached* (they outlive the process that created them, so every
Serve replica shares them) and restart without limit (``max_restarts=-1``): when a node
dies, Ray recreates its shards on the surviving nodes and the constructor reloads the
partition from the store. Nothing in an actor is the only copy of anything; the store is.
Tasks are not retried by Ray (``max_task_retries=0``): a request that hits a lost shard
fails at once and the service answers 503 (:mod:`ppfr.serve.cluster.matcher`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from ppfr.errors import InputError, PPFRError
from ppfr.serve.matching import Matcher
from ppfr.serve.store import open_store
from ppfr.templates import SlerpFace

__all__ = ["NAMESPACE", "Late", "Refused", "ShardServer", "ShardSet", "ShardSpec"]

#: Ray namespace of the shard actors (Serve replicas run in Serve's own namespace)
NAMESPACE = "ppfr"

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class ShardSpec:
    """Everything needed to (re)create the shards of one service; picklable.

    Args:
        service: the service's name; it prefixes the actors' names.
        shards: K, the number of partitions.
        db_url: the gallery store, as every node reaches it.
        num_cpus: Ray CPUs reserved per shard actor (its torch threads follow it).
        matcher_options: extra keyword arguments of each shard's Matcher
            (``index_dtype=torch.float16``, ...).
    """

    service: str
    shards: int
    db_url: str
    num_cpus: float = 1.0
    matcher_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.shards, int) or self.shards < 1:
            raise InputError(f"shards must be a positive integer, got {self.shards!r}")
        if not self.num_cpus > 0:
            raise InputError(f"CPUs per shard must be positive, got {self.num_cpus!r}")
        if not self.service or "/" in self.service:
            raise InputError(f"invalid service name {self.service!r}")

    def actor_name(self, index: int) -> str:
        return f"{self.service}-shard-{index}-of-{self.shards}"


@dataclass(frozen=True)
class Refused:
    """A request a shard refused (wrong dimension, unknown subject...): its error, returned.

    Returned as a value rather than raised, so Ray neither wraps it nor logs it as an
    unhandled task error on every other shard of the same request; the caller re-raises it.
    """

    error: PPFRError


@dataclass(frozen=True)
class Late:
    """A call that reached the shard after its ``start_by`` time: dropped, not scanned.

    A shard scans one request at a time, so under load calls queue in front of it; a call
    that waited past its deadline is answered at once (the service answers 503 with
    ``Retry-After``) instead of adding a scan to everyone's wait. ``waited`` is how many
    seconds past the deadline it arrived.
    """

    waited: float


def _late(start_by: float | None) -> Late | None:
    # wall-clock time: the caller may be on another node (clocks kept in sync by NTP, to
    # well under the queue timeout)
    if start_by is None:
        return None
    now = time.time()
    return Late(now - start_by) if now > start_by else None


class ShardServer:
    """The body of one shard actor (made remote by :class:`ShardSet`).

    Args:
        spec: the service's shard settings.
        index: which partition, ``0 <= index < spec.shards``.
        protection: the SlerpFace of the service's model (None for plain galleries).
    """

    def __init__(self, spec: ShardSpec, index: int, protection: SlerpFace | None) -> None:
        t0 = time.perf_counter()
        self.spec = spec
        self.index = index
        self.store = open_store(spec.db_url)
        self.matcher = Matcher(
            self.store, protection, shard=(index, spec.shards), **spec.matcher_options
        )
        # Load every gallery's partition now: a (re)started shard answers its first request
        # at steady speed, and the service counts it as down (503) until this is done.
        for gallery in self.store.galleries():
            try:
                self.matcher.snapshot(gallery)
            except PPFRError:
                pass  # e.g. a plain gallery under SlerpFace: its requests will say so
        self.load_s = time.perf_counter() - t0

    def where(self) -> dict[str, Any]:
        """Which partition this is, on which node and process, and how long it took to load."""
        return {
            "shard": self.index,
            "shards": self.spec.shards,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "load_s": self.load_s,
        }

    def identify(
        self, gallery: str, queries: np.ndarray, top_k: int, start_by: float | None = None
    ) -> list[Ranked] | Refused | Late:
        """This partition's top-k subjects per query (see ``Matcher.identify``).

        ``start_by``: a ``time.time()`` after which the call is no longer worth starting;
        past it the answer is :class:`Late`, at once.
        """
        if late := _late(start_by):
            return late
        try:
            return self.matcher.identify(gallery, torch.from_numpy(queries), top_k=top_k)
        except PPFRError as e:
            return Refused(e)

    def identify_timed(
        self, gallery: str, queries: np.ndarray, top_k: int, start_by: float | None = None
    ) -> tuple[list[Ranked] | Refused | Late, float]:
        """:meth:`identify` and the seconds it took inside this actor (for benchmarks)."""
        t0 = time.perf_counter()
        ranked = self.identify(gallery, queries, top_k, start_by)
        return ranked, time.perf_counter() - t0

    def verify(
        self, gallery: str, query: np.ndarray, subject: str, start_by: float | None = None
    ) -> float | Refused | Late:
        """``subject``'s best score; ``Refused(UnknownNameError)`` if it is not enrolled."""
        if late := _late(start_by):
            return late
        try:
            return float(self.matcher.verify(gallery, torch.from_numpy(query), subject))
        except PPFRError as e:
            return Refused(e)


class ShardSet:
    """The K named shard actors of one service: created once, looked up by everyone else.

    ``get_if_exists`` makes creation idempotent and race-free (the name is registered
    atomically by Ray's control store), so the process that starts the service and every
    replica can all call :meth:`handles` and end up with the same K actors.
    """

    def __init__(self, spec: ShardSpec, protection: SlerpFace | None) -> None:
        self.spec = spec
        self.protection = protection

    def handle(self, index: int) -> Any:
        """The actor of partition ``index``, created (and scheduled) if it does not exist."""
        spec = self.spec
        actor = ray.remote(ShardServer).options(
            name=spec.actor_name(index),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=spec.num_cpus,
            # one shard per node while there are nodes to spare: a lost node costs the
            # fewest partitions, and the scans of one identify run on different machines
            scheduling_strategy="SPREAD",
        )
        return actor.remote(spec, index, self.protection)

    def handles(self) -> list[Any]:
        return [self.handle(i) for i in range(self.spec.shards)]

    def wait_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until every shard has loaded its partition; returns their :meth:`where`."""
        refs = [h.where.remote() for h in self.handles()]
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise InputError(
                f"the {self.spec.shards} shards did not load within {timeout:g} s; is there "
                "room for them (ray status) and is the store reachable from every node?"
            ) from None

    def stop(self) -> None:
        """Kill the shard actors for good (no restart)."""
        for i in range(self.spec.shards):
            try:
                actor = ray.get_actor(self.spec.actor_name(i), namespace=NAMESPACE)
            except ValueError:  # not there: never started, or stopped already
                continue
            ray.kill(actor, no_restart=True)
