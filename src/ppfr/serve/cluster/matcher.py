"""The sharded gallery matcher: the service's ``GalleryMatcher`` over K shard actors.

``identify`` sends the batch of queries to every shard at once and waits for all of them
(``ray.get`` on the K references); each returns its partition's top-k and
:func:`ppfr.serve.cluster.merge.merge_top_k` keeps the global top-k. ``verify`` asks only
the subject's shard (``shard_of(subject, K)``).

All or nothing. A candidate list built from K-1 shards looks like a normal answer and is
wrong (the best match may be on the missing shard), so it is never returned: if a shard's
actor is dead, restarting, or does not answer within ``timeout`` seconds, the request
raises :class:`ppfr.serve.app.Unavailable` (HTTP 503 with ``Retry-After``). Ray restarts
the actor on a surviving node (``max_restarts``, :mod:`ppfr.serve.cluster.shard`); until
its constructor has reloaded the partition, the shard is marked down and requests that
need it get 503 at once instead of queueing behind the reload.

Bounded waits at the shards. A shard actor scans one request at a time, so when several
replicas send it work, calls queue in front of it, and the admission gate of each replica
(which bounds the wait for a replica slot) does not see that queue. Every call therefore
carries a deadline: what is left of ``queue_timeout`` after the request's wait at the gate
(:data:`ppfr.serve.app.queued_for`). A shard that reaches the call later drops it without
scanning (:class:`ppfr.serve.cluster.shard.Late`) and the request is answered 503 with
``Retry-After``, like a request the gate turns away. An accepted request then waits at most
``queue_timeout`` in all queues together, whatever the load.

A shard's refusals (an ``InputError`` for a query of the wrong dimension, an
``UnknownNameError`` for an unknown subject) come back as values
(:class:`ppfr.serve.cluster.shard.Refused`) and are raised here as themselves, so the
service answers 422 / 404 exactly as in one process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from torch import Tensor

from ppfr.errors import InputError, PPFRError
from ppfr.serve.app import Unavailable, queued_for
from ppfr.serve.cluster.merge import merge_top_k
from ppfr.serve.cluster.shard import Late, Refused, ShardSet, ShardSpec
from ppfr.serve.store import GalleryStore, shard_of
from ppfr.templates import SlerpFace

__all__ = ["ShardedMatcher"]

Ranked = list[tuple[str, float]]

#: what a lost shard looks like from the caller: its actor or its node is gone, its object
#: is lost, or it does not answer in time
_LOST: tuple[type[BaseException], ...] = tuple(
    getattr(ray.exceptions, name)
    for name in (
        "RayActorError",  # ActorDiedError, ActorUnavailableError are subclasses
        "GetTimeoutError",
        "ObjectLostError",
        "OwnerDiedError",
        "NodeDiedError",
        "WorkerCrashedError",
        "RaySystemError",
    )
    if hasattr(ray.exceptions, name)
)


class ShardedMatcher:
    """Identify and verify over the K shard actors of one service (see the module docstring).

    Args:
        shards: the service's shard set (spec and protection; the actors are looked up or
            created by name, so any number of replicas share them).
        timeout: seconds to wait for every shard's answer before answering 503 (a lost or
            stuck shard).
        retry_after: the ``Retry-After`` (seconds) of those 503 answers.
        queue_timeout: seconds a request may wait in queues, the service's gate and the
            shards' together, before a shard drops its call and the request is answered 503
            (None: no limit at the shards).

    Thread-safe: FastAPI calls it from its thread pool.
    """

    def __init__(
        self,
        shards: ShardSet,
        *,
        timeout: float = 30.0,
        retry_after: float = 2.0,
        queue_timeout: float | None = None,
    ):
        if not timeout > 0:
            raise InputError(f"shard timeout must be positive, got {timeout!r}")
        if queue_timeout is not None and not queue_timeout > 0:
            raise InputError(f"shard queue timeout must be positive, got {queue_timeout!r}")
        self.queue_timeout = None if queue_timeout is None else float(queue_timeout)
        self.shed = 0  # requests dropped by a shard's deadline so far
        self.shards = shards
        self.k = shards.spec.shards
        self.timeout = float(timeout)
        self.retry_after = float(retry_after)
        self._actors = shards.handles()
        # shard index -> reference of a where() call sent after it failed: the shard is down
        # until that call answers (its constructor has reloaded the partition)
        self._down: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def factory(
        cls,
        spec: ShardSpec,
        *,
        timeout: float = 30.0,
        retry_after: float = 2.0,
        queue_timeout: float | None = None,
    ) -> Callable[[GalleryStore, SlerpFace | None], ShardedMatcher]:
        """A ``create_app(matcher=...)`` factory: the service's protection goes to the shards."""

        def make(store: GalleryStore, protection: SlerpFace | None) -> ShardedMatcher:
            return cls(
                ShardSet(spec, protection),
                timeout=timeout,
                retry_after=retry_after,
                queue_timeout=queue_timeout,
            )

        return make

    # --- GalleryMatcher ---------------------------------------------------------------
    def identify(self, gallery: str, queries: Tensor, top_k: int = 5) -> list[Ranked]:
        """For each query, the ``top_k`` best subjects over the whole gallery, descending."""
        return merge_top_k(self._fan_out("identify", gallery, queries, top_k), top_k)

    def identify_timed(
        self, gallery: str, queries: Tensor, top_k: int = 5
    ) -> tuple[list[Ranked], list[float]]:
        """:meth:`identify` plus each shard's own time for its part (seconds, by shard).

        For benchmarks: the fan-out and merge overhead is the caller's wall time minus the
        slowest shard's.
        """
        parts = self._fan_out("identify_timed", gallery, queries, top_k)
        self._raise_late([p for p, _ in parts])
        _raise_refused([p for p, _ in parts])
        return merge_top_k([p for p, _ in parts], top_k), [float(t) for _, t in parts]

    def verify(self, gallery: str, query: Tensor, subject: str) -> float:
        """``subject``'s best score, from its shard. Raises UnknownNameError if not enrolled."""

        i = shard_of(subject, self.k)
        self._check_up([i])
        q = _as_queries(query)
        start_by = self._start_by()
        (score,) = self._get([i], lambda a: a.verify.remote(gallery, q, subject, start_by))
        return float(score)

    # --- internals --------------------------------------------------------------------
    def _fan_out(self, method: str, gallery: str, queries: Tensor, top_k: int) -> list[Any]:
        """Every shard's answer to ``method(gallery, queries, top_k)``, in shard order."""
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        q = _as_queries(queries)
        self._check_up(range(self.k))
        ref = ray.put(q)  # one copy in the object store, read by every shard
        start_by = self._start_by()
        return self._get(
            list(range(self.k)),
            lambda a: getattr(a, method).remote(gallery, ref, top_k, start_by),
        )

    def _start_by(self) -> float | None:
        if self.queue_timeout is None:
            return None
        # what is left of the request's queueing budget after the service's own gate
        return time.time() + max(0.0, self.queue_timeout - queued_for.get())

    def _raise_late(self, answers: list[Any]) -> None:
        """Answer 503 if a shard dropped its part of the request (it waited too long)."""
        if any(isinstance(a, Late) for a in answers):
            with self._lock:
                self.shed += 1
            raise Unavailable(
                "the gallery's shards are at capacity (the request waited more than "
                f"{self.queue_timeout:g} s for a shard); retry later",
                retry_after=self.queue_timeout or self.retry_after,
            )

    def where(self) -> list[dict[str, Any]]:
        """Every shard's :meth:`ShardServer.where` (raises Unavailable if one is lost)."""
        return self._get(list(range(self.k)), lambda a: a.where.remote())

    def _get(self, indices: list[int], call: Callable[[Any], Any]) -> list[Any]:
        """Send ``call`` to the shards ``indices``, wait for all; all answers or an error."""
        refs = [call(self._actors[i]) for i in indices]
        try:
            answers = ray.get(refs, timeout=self.timeout)
            self._raise_late(answers)
            # a shard's refusal (bad query, unknown subject): the single-process answer
            _raise_refused(answers)
            return answers
        except RayTaskError as e:
            # an unexpected error inside a shard (``cause``: what it raised)
            cause = getattr(e, "cause", None)
            if isinstance(cause, PPFRError):
                raise cause from None
            if not isinstance(cause, _LOST):
                raise
            error: BaseException = cause
        except _LOST as e:
            error = e
        self._lost(indices, refs)
        what = "did not answer in time" if isinstance(error, GetTimeoutError) else "was lost"
        raise Unavailable(
            f"part of the gallery is unavailable (a shard {what}); it is being rebuilt "
            "from the store, retry shortly",
            retry_after=self.retry_after,
        )

    def _lost(self, indices: list[int], refs: list[Any]) -> None:
        """Mark the shards whose call failed (or did not finish) as down."""
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        with self._lock:
            for i, ref in zip(indices, refs, strict=True):
                failed = ref not in ready
                if not failed:
                    try:
                        ray.get(ref, timeout=0)
                    except RayActorError:
                        failed = True
                    except Exception:  # noqa: BLE001 - an answer of any kind: it is up
                        pass
                if failed and i not in self._down:
                    self._down[i] = self._actors[i].where.remote()

    def _check_up(self, indices: Any) -> None:
        """Raise Unavailable at once if a shard the request needs is still down."""
        with self._lock:
            down = [i for i in indices if i in self._down]
            for i in down:
                ready, _ = ray.wait([self._down[i]], timeout=0)
                if not ready:
                    continue
                try:
                    ray.get(ready[0], timeout=0)
                    del self._down[i]  # back: its constructor reloaded the partition
                except _LOST:
                    # still restarting (or the restart failed): ask again
                    self._down[i] = self._refresh(i).where.remote()
                except RayTaskError:
                    del self._down[i]
            still = [i for i in indices if i in self._down]
        if still:
            raise Unavailable(
                f"{len(still)} of {self.k} gallery shards are being rebuilt from the store; "
                "retry shortly",
                retry_after=self.retry_after,
            )

    def _refresh(self, index: int) -> Any:
        """The shard's handle again: the same restarting actor, or a new one if it is gone."""
        try:
            self._actors[index] = self.shards.handle(index)
        except Exception:  # noqa: BLE001 - the control store is busy: keep the old handle
            pass
        return self._actors[index]


def _raise_refused(answers: list[Any]) -> None:
    for answer in answers:
        if isinstance(answer, Refused):
            raise answer.error


def _as_queries(queries: Tensor) -> np.ndarray:
    """(m, D) float32 C-contiguous numpy for shipping to the shards (shape checked there)."""
    q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
    if q.ndim == 1:
        q = q[None]
    return np.ascontiguousarray(q.numpy())
