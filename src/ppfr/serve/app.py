"""The recognition service: FastAPI over a gallery store, with SlerpFace-protected templates.

``create_app(model_dir, db_url)`` loads only the *server* part of a bundle (no generator, no
client weights), opens the gallery store and serves, under ``/v1``:

==========================================================  ======  ==========================
path                                                        method  what
==========================================================  ======  ==========================
``/v1/health``                                              GET     liveness (no key needed)
``/v1/info``                                                GET     method, representation
                                                                    shape/dtype, fingerprints,
                                                                    threshold
``/v1/galleries/{gallery}/subjects/{subject}``              POST    enroll (body: wire batch)
``/v1/galleries/{gallery}/subjects/{subject}``              DELETE  delete a subject
``/v1/galleries/{gallery}/subjects``                        GET     list subjects
``/v1/galleries/{gallery}/subjects/{subject}/verify``       POST    1:1 (body: one rep.)
``/v1/galleries/{gallery}/identify?top_k=5``                POST    1:N (body: wire batch)
``/v1/galleries/{gallery}/stats``                           GET     gallery statistics
==========================================================  ======  ==========================

Bodies are :mod:`ppfr.serve.wire` messages (``application/octet-stream``); answers are JSON.
Errors are JSON ``{"detail": "..."}``: 401 missing/invalid/revoked key, 403 gallery not
allowed for the key, 404 unknown subject, 409 representation made by another client model
(fingerprint mismatch), 413 body over ``max_body_bytes`` (refused from ``Content-Length``
before reading, or as soon as the stream passes the limit) or batch over ``max_batch``, 415
not ``application/octet-stream``, 422 malformed message, wrong shape, dtype, range, NaN,
503 with ``Retry-After`` when the service is overloaded (below).

Load shedding. Gallery requests (everything under ``/v1/galleries``) pass an admission
gate before their body is read: at most ``max_concurrent`` run at once, at most
``max_queue`` more wait, each for at most ``queue_timeout`` seconds. A request that finds
the queue full, or waits past its timeout, is answered 503 with ``Retry-After`` at once, so
an overloaded service answers every request quickly and the ones it accepts keep a bounded
latency (about ``queue_timeout`` plus their own work) instead of queueing without bound.
A matcher that queues work of its own (the sharded gallery's shards) gives a request only
what is left of ``queue_timeout`` after the gate (:data:`queued_for`).

Enrolment embeds each representation, draws a fresh SlerpFace key per template (a
``torch.Generator`` seeded from :mod:`secrets`) and stores (protected template, key). The
raw template never reaches the store.

Decisions. ``identify`` and ``verify`` report scores and, when a threshold is known, a
decision ``score > threshold``. The threshold is, in order: ``threshold=`` (``ppfr serve
--threshold``), else ``calibration.toml`` beside the bundle written by ``ppfr calibrate``
(:mod:`ppfr.serve.calibrate`), else none (``match`` is null and ``/v1/info`` says so).

Logs (logger ``ppfr.serve``) carry the route template, gallery, status, sizes and timings;
never representations, templates, keys' secrets or subject names.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ppfr.errors import InputError, PPFRError, UnknownNameError, UnsupportedError
from ppfr.methods import Method, load
from ppfr.serve import wire
from ppfr.serve.auth import Authenticator, AuthError, check_gallery_name, token_from_headers
from ppfr.serve.calibrate import CALIBRATION_FILE, read_calibration
from ppfr.serve.matching import GalleryMatcher, Matcher, MatcherFactory
from ppfr.serve.store import open_store
from ppfr.templates import SlerpFace

log = logging.getLogger("ppfr.serve")

#: methods whose "representation" is the face itself; refused unless allow_unprotected
UNPROTECTED = ("arcface",)
DEFAULT_MAX_BODY = 16 * 2**20
DEFAULT_MAX_BATCH = 64
#: admission gate defaults (module docstring, "Load shedding"): one request at work per
#: core this process may run on keeps them busy without time-slicing (which would stretch
#: every request's latency and add nothing to throughput); the queue holds about a second
#: of work at ~30 requests/s
DEFAULT_MAX_CONCURRENT = max(1, len(os.sched_getaffinity(0)))
DEFAULT_MAX_QUEUE = 32
DEFAULT_QUEUE_TIMEOUT = 0.5
_SUBJECT_RE = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,128}$")


class ServiceError(PPFRError):
    """An error with an HTTP status (404 unknown subject, 409 fingerprint, 413 size, ...).

    ``retry_after`` (seconds) is sent as the ``Retry-After`` header: a 503 carries it.
    """

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """503 with ``Retry-After``: overloaded, or part of a sharded gallery is being rebuilt.

    Raised (by the service or a matcher) instead of answering from part of a gallery.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(503, message, retry_after=retry_after)


#: seconds the current request waited at the admission gate (0 outside a gallery request).
#: A matcher with queues of its own (the sharded gallery's shards) gives the request only
#: what is left of ``queue_timeout``, so its waits in all queues together stay within it.
queued_for: ContextVar[float] = ContextVar("ppfr_queued_for", default=0.0)


class Admission:
    """The admission gate: ``max_concurrent`` requests at work, ``max_queue`` waiting.

    Runs on the event loop (no locks needed: every change happens between awaits).
    """

    def __init__(self, max_concurrent: int, max_queue: int, queue_timeout: float) -> None:
        if max_concurrent < 1 or max_queue < 0 or not queue_timeout > 0:
            raise InputError(
                "need max_concurrent >= 1, max_queue >= 0 and queue_timeout > 0, got "
                f"{max_concurrent}, {max_queue} and {queue_timeout}"
            )
        self.max_concurrent = int(max_concurrent)
        self.max_queue = int(max_queue)
        self.queue_timeout = float(queue_timeout)
        self.running = 0
        self.waiting = 0
        self.shed = 0  # requests answered 503 so far
        self._slots: asyncio.Semaphore | None = None  # made on the serving event loop

    async def enter(self) -> None:
        """Wait for a slot, or raise :class:`Unavailable` (queue full or waited too long)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        if self.running >= self.max_concurrent and self.waiting >= self.max_queue:
            self.shed += 1
            raise Unavailable("the service is at capacity; retry later", self.queue_timeout)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout)
        except TimeoutError:
            self.shed += 1
            raise Unavailable(
                "the service is at capacity (queued too long); retry later", self.queue_timeout
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        assert self._slots is not None
        self._slots.release()


def check_subject_name(name: str) -> str:
    if not _SUBJECT_RE.match(name) or name != name.strip():
        raise InputError(
            "invalid subject name: 1-128 characters, no control characters, slashes or "
            "leading/trailing spaces"
        )
    return name


@dataclass
class Threshold:
    value: float | None
    source: str


def resolve_threshold(
    model_dir: Path, threshold: float | None, server_fingerprint: str | None = None
) -> Threshold:
    """``threshold`` if given, else ``calibration.toml`` beside the bundle, else none.

    A calibration made for another server model (its ``server_fingerprint``) is refused.
    """
    if threshold is not None:
        if not np.isfinite(threshold):
            raise InputError(f"threshold must be a finite number, got {threshold}")
        return Threshold(float(threshold), "given (--threshold)")
    cal = read_calibration(model_dir)
    if cal is None:
        return Threshold(
            None, f"none (no --threshold and no {CALIBRATION_FILE}; run ppfr calibrate)"
        )
    made_for = cal.get("server_fingerprint")
    if server_fingerprint and made_for and made_for != server_fingerprint:
        raise InputError(
            f"{model_dir / CALIBRATION_FILE} was made for server model {made_for[:12]}, not "
            f"this bundle's {server_fingerprint[:12]}: rerun ppfr calibrate or pass --threshold"
        )
    return Threshold(
        float(cal["threshold"]),
        f"{CALIBRATION_FILE}: FAR {cal['far']:g} on {cal['data']}",
    )


class Service:
    """Everything a request needs: model, store, matcher, keys. Thread-safe."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        db_url: str,
        *,
        max_body_bytes: int,
        max_batch: int,
        threshold: float | None,
        allow_unprotected: bool,
        use_faiss: bool,
        matcher: MatcherFactory | None = None,
        index_dtype: torch.dtype = torch.float32,
    ) -> None:
        model_dir = Path(model_dir)
        self.model: Method = load(model_dir, part="server")
        if self.model.name in UNPROTECTED and not allow_unprotected:
            raise InputError(
                f"{self.model.name} sends the face itself (no protection); refusing to serve "
                "it. Pass --allow-unprotected (allow_unprotected=True) for a baseline only."
            )
        manifest = self.model.manifest
        fp = manifest.get("client_fingerprint")
        if not fp:
            raise InputError(f"{model_dir}: bundle has no client_fingerprint; re-save it")
        self.client_fingerprint: str = fp
        self.server_fingerprint = self.model.fingerprint("server")
        if max_body_bytes < wire.HEADER_BYTES:
            raise InputError(f"max_body_bytes must be at least {wire.HEADER_BYTES}")
        self.max_body_bytes = int(max_body_bytes)
        self.max_batch = int(max_batch)
        self.threshold = resolve_threshold(model_dir, threshold, self.server_fingerprint)
        self.store = open_store(db_url)
        self.dim = int(self.model.config.embedding_size)
        self.protection = SlerpFace.from_model(self.model, self.dim)
        # the store and the matcher are thread-safe; requests run in FastAPI's thread pool
        if matcher is None:
            self.matcher: GalleryMatcher = Matcher(
                self.store, self.protection, use_faiss=use_faiss, index_dtype=index_dtype
            )
        else:  # e.g. ppfr.serve.cluster's sharded gallery: same interface, other processes
            self.matcher = matcher(self.store, self.protection)
        self.auth = Authenticator(self.store)

    # ---- requests
    def representations(self, body: bytes, *, single: bool = False) -> torch.Tensor:
        arr, fp = wire.decode_representation(body, self.max_body_bytes)
        if fp != self.client_fingerprint:
            raise ServiceError(
                409,
                f"representation was made by client model {fp[:12]}, this server expects "
                f"{self.client_fingerprint[:12]} (fetch the matching client bundle; "
                "see /v1/info)",
            )
        shape = self.model.representation_shape
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            raise InputError(
                f"{self.model.name} expects representations of shape "
                f"(N, {', '.join(map(str, shape))}), got {arr.shape}; raw images are not "
                "accepted, protect faces on the client"
            )
        if single and arr.shape[0] != 1:
            raise InputError(f"verify takes exactly one representation, got {arr.shape[0]}")
        if arr.shape[0] > self.max_batch:
            raise ServiceError(413, f"batch of {arr.shape[0]} exceeds max_batch {self.max_batch}")
        return self.model.check_representation(torch.from_numpy(arr))

    def embed(self, p: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.embed(p).float().cpu()

    def enroll(self, gallery: str, subject: str, p: torch.Tensor) -> list[int]:
        templates = self.embed(p)
        # encrypted gallery hook: a matcher that stores its own (encrypted) templates
        # (ppfr.serve.encrypted_matcher) takes them instead of the SlerpFace store
        own = getattr(self.matcher, "enroll_templates", None)
        if own is not None:
            return own(gallery, subject, templates)
        gen = torch.Generator().manual_seed(secrets.randbits(63))
        keys = self.protection.draw_keys(len(templates), generator=gen)
        protected = self.protection.protect(templates, keys)
        return self.store.enroll(gallery, subject, protected.numpy(), keys.numpy())

    def info(self) -> dict[str, Any]:
        return {
            "method": self.model.name,
            "representation_shape": list(self.model.representation_shape),
            "representation_dtype": ["float32", "float16"],
            # None: unbounded (DCTDP, PartialFace, DuetFace); JSON has no infinity
            "representation_range": (
                None
                if self.model.representation_range is None
                else list(self.model.representation_range)
            ),
            "client_fingerprint": self.client_fingerprint,
            "server_fingerprint": self.server_fingerprint,
            "embedding_size": self.dim,
            "template_protection": "slerpface",
            "threshold": self.threshold.value,
            "threshold_source": self.threshold.source,
            "decision": "score > threshold",
            "max_body_bytes": self.max_body_bytes,
            "max_batch": self.max_batch,
            "wire_format_version": wire.VERSION,
        }


# ---- request dependencies (module level: FastAPI resolves their annotations by name)
def _svc(request: Request) -> Service:
    return request.app.state.service


async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it is known to pass the limit."""
    svc = _svc(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != wire.MEDIA_TYPE:
        raise ServiceError(415, f"body must be {wire.MEDIA_TYPE} (a ppfr wire message)")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InputError("invalid Content-Length")
        if int(length) > svc.max_body_bytes:
            raise ServiceError(413, f"body of {int(length):,} bytes exceeds {svc.max_body_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > svc.max_body_bytes:
            raise ServiceError(413, f"body exceeds {svc.max_body_bytes:,} bytes")
        chunks.append(chunk)
    request.state.body_bytes = size
    return b"".join(chunks)


def _key(request: Request) -> Any:
    record = _svc(request).auth.authenticate(token_from_headers(request.headers))
    request.state.key_id = record.key_id
    return record


def _gallery(gallery: str, request: Request, record: Annotated[Any, Depends(_key)]) -> str:
    check_gallery_name(gallery)
    _svc(request).auth.authorize(record, gallery)
    request.state.gallery = gallery
    return gallery


Svc = Annotated[Service, Depends(_svc)]
Gallery = Annotated[str, Depends(_gallery)]
Body = Annotated[bytes, Depends(_body)]


# ---- routes (the table in the module docstring)
router = APIRouter(prefix="/v1")


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness; needs no key."""
    return {"status": "ok"}


@router.get("/info", dependencies=[Depends(_key)])
def info(svc: Svc) -> dict[str, Any]:
    """What this server expects from clients."""
    return svc.info()


@router.post("/galleries/{gallery}/subjects/{subject}")
async def enroll(svc: Svc, gallery: Gallery, subject: str, data: Body) -> dict[str, Any]:
    """Enroll one subject from a batch of representations (one template each)."""
    check_subject_name(subject)
    p = svc.representations(data)
    ids = await run_in_threadpool(svc.enroll, gallery, subject, p)
    return {"gallery": gallery, "subject": subject, "template_ids": [int(i) for i in ids]}


@router.delete("/galleries/{gallery}/subjects/{subject}")
def delete(svc: Svc, gallery: Gallery, subject: str) -> dict[str, Any]:
    """Delete a subject and all its templates and keys."""
    own = getattr(svc.matcher, "delete_subject", None)  # a matcher holding its own rows
    removed = own(gallery, subject) if own else svc.store.delete_subject(gallery, subject)
    if not removed:
        raise ServiceError(404, f"no subject {subject!r} in gallery {gallery!r}")
    return {"gallery": gallery, "subject": subject, "removed": int(removed)}


@router.get("/galleries/{gallery}/subjects")
def subjects(svc: Svc, gallery: Gallery) -> dict[str, Any]:
    """The subjects enrolled in a gallery."""
    own = getattr(svc.matcher, "subjects", None)
    names = own(gallery) if own else svc.store.subjects(gallery)
    return {"gallery": gallery, "subjects": names}


@router.get("/galleries/{gallery}/stats")
def stats(svc: Svc, gallery: Gallery) -> dict[str, Any]:
    """Subject and template counts, dimension and version of a gallery."""
    own = getattr(svc.matcher, "stats", None)
    if own is not None:  # the encrypted gallery keeps its own rows
        return own(gallery)
    s = svc.store.stats(gallery)
    return {
        "gallery": s.gallery,
        "subjects": s.subjects,
        "templates": s.templates,
        "dim": s.dim,
        "version": s.version,
    }


def _decide(candidates: list[tuple[str, float]], threshold: float | None) -> dict[str, Any]:
    """One identify result: the ranked candidates and the best one if it passes."""
    best = candidates[0] if candidates else None
    passes = best is not None and threshold is not None and best[1] > threshold
    return {
        "candidates": [{"subject": s, "score": float(sc)} for s, sc in candidates],
        "match": best[0] if passes else None,
    }


@router.post("/galleries/{gallery}/identify")
async def identify(
    svc: Svc,
    gallery: Gallery,
    data: Body,
    top_k: Annotated[int, Query(ge=1, le=100)] = 5,
) -> dict[str, Any]:
    """1:N: for each representation, the top-k subjects by score, and the decision."""
    p = svc.representations(data)

    def work() -> list[list[tuple[str, float]]]:
        return svc.matcher.identify(gallery, svc.embed(p), top_k=top_k)

    ranked = await run_in_threadpool(work)
    t = svc.threshold.value
    return {"gallery": gallery, "threshold": t, "results": [_decide(c, t) for c in ranked]}


@router.post("/galleries/{gallery}/subjects/{subject}/verify")
async def verify(svc: Svc, gallery: Gallery, subject: str, data: Body) -> dict[str, Any]:
    """1:1: the best score of one representation against a subject's templates."""
    p = svc.representations(data, single=True)

    def work() -> float:
        try:
            return float(svc.matcher.verify(gallery, svc.embed(p), subject))
        except UnknownNameError:
            raise ServiceError(404, f"no subject {subject!r} in gallery {gallery!r}") from None

    score = await run_in_threadpool(work)
    t = svc.threshold.value
    return {
        "gallery": gallery,
        "subject": subject,
        "score": score,
        "threshold": t,
        "match": None if t is None else bool(score > t),
    }


# ---- the access log and the error answers
async def _access_log(request: Request, call_next):
    t0 = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    log.info(
        "%s %s status=%d gallery=%s key=%s bytes=%s ms=%.1f",
        request.method,
        getattr(route, "path", "<unmatched>"),
        response.status_code,
        getattr(request.state, "gallery", "-"),
        getattr(request.state, "key_id", "-"),
        getattr(request.state, "body_bytes", 0),
        1000 * (time.perf_counter() - t0),
    )
    return response


async def _admit(request: Request, call_next):
    """The admission gate (module docstring, "Load shedding") for gallery requests."""
    if not request.url.path.startswith("/v1/galleries/"):
        return await call_next(request)
    gate: Admission = request.app.state.admission
    t0 = time.perf_counter()
    try:
        await gate.enter()
    except Unavailable as e:
        log.info("shed: %d running, %d waiting", gate.running, gate.waiting)
        return await _service_error(request, e)
    # seen by the route (call_next's task and its worker thread copy this context)
    queued_for.set(time.perf_counter() - t0)
    try:
        return await call_next(request)
    finally:
        gate.leave()


def _answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _answer(exc.status, str(exc), headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    headers = None
    if exc.retry_after is not None:  # whole seconds, at least 1 (RFC 9110)
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return _answer(exc.status, str(exc), headers)


async def _unsupported(request: Request, exc: UnsupportedError) -> JSONResponse:
    return _answer(501, str(exc))


async def _input_error(request: Request, exc: PPFRError) -> JSONResponse:
    return _answer(422, str(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    where = "; ".join(
        f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()
    )
    return _answer(422, f"invalid request ({where})")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # the type only: an exception message could quote request data
    log.error("internal error %s on %s", type(exc).__name__, request.url.path)
    return _answer(500, "internal server error")


_ERROR_ANSWERS = (
    (AuthError, _auth_error),
    (ServiceError, _service_error),
    (UnsupportedError, _unsupported),
    (PPFRError, _input_error),
    (RequestValidationError, _validation_error),
    (Exception, _internal_error),
)


def create_app(
    model_dir: str | os.PathLike,
    db_url: str = "sqlite:///ppfr-gallery.db",
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_batch: int = DEFAULT_MAX_BATCH,
    threshold: float | None = None,
    allow_unprotected: bool = False,
    use_faiss: bool = False,
    matcher: MatcherFactory | None = None,
    index_dtype: torch.dtype = torch.float32,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> FastAPI:
    """Build the service app (see the module docstring): the service state and the routes."""
    app = FastAPI(
        title="ppfr recognition service",
        version="1",
        description="Privacy-preserving face recognition: clients send protected "
        "representations (ppfr wire format), never images.",
    )
    app.state.service = Service(
        model_dir,
        db_url,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        threshold=threshold,
        allow_unprotected=allow_unprotected,
        use_faiss=use_faiss,
        matcher=matcher,
        index_dtype=index_dtype,
    )
    for exc_type, handler in _ERROR_ANSWERS:
        app.add_exception_handler(exc_type, handler)
    app.state.admission = Admission(max_concurrent, max_queue, queue_timeout)
    app.include_router(router)
    app.middleware("http")(_admit)
    app.middleware("http")(_access_log)  # added last: runs first, so it logs the 503s too
    return app
