"""The gallery store: enrolled (protected) templates, their SlerpFace keys, and API keys.

A *gallery* is a named set of templates, each belonging to a *subject* (a person's id).
All templates of a gallery share one dimension, fixed by its first enrolment, and one
mode: *protected* (every template comes with its SlerpFace key) or *plain* (no keys).

Two backends implement :class:`GalleryStore` with the same semantics:

- ``sqlite:///path/to/gallery.db`` (the default; :mod:`ppfr.serve.store._sqlite`): one
  database file plus a sibling key file, no server.
- ``postgresql://user:pass@host:port/dbname`` (:mod:`ppfr.serve.store._postgres`):
  PostgreSQL 15 or newer through psycopg 3; the schema is created on first open.

This module is the base both depend on: the interface, its records and the validation
they share. It does not import them; :func:`open_store` loads the one a URL names.

Guarantees, both backends:

- Every write (``enroll``, ``delete_subject``, the API-key calls) is one transaction,
  committed durably before the call returns: an enrolment that was acknowledged survives
  the process being killed, and one that was not acknowledged leaves no row behind.
- ``version(gallery)`` is bumped inside the same transaction as the change, so a reader
  that saw version *v* and later sees *v* again knows its cached snapshot is current.
- A change log: every template row records the version that enrolled it, and every delete
  leaves a row (gallery, version, subject). ``changes(gallery, since)`` returns, in one
  read transaction, the subjects deleted and the rows enrolled after version ``since``: a
  matcher holding a snapshot at ``since`` applies them in place instead of reloading the
  gallery (:mod:`ppfr.serve.matching`). Version bumps are serialised per gallery (a write
  lock in SQLite, the gallery row locked ``FOR UPDATE`` in PostgreSQL), so version order
  is commit order and no write is missed.
- Partitions: ``load(gallery, shard=(i, K))`` and ``changes(..., shard=(i, K))`` return only
  the subjects with :func:`shard_of` ``(subject, K) == i``, all of a subject's templates
  on one shard (the sharded gallery of :mod:`ppfr.serve.cluster`).
- Keys are stored apart from templates: the template table has no key column; keys live
  in their own table (for SQLite, in a separate database file), joined by template id.
  A dump of the templates alone cannot be matched against (SlerpFace needs the key of
  each stored template to score a query).
- Arrays are stored as little-endian float32 bytes (BLOB / bytea), ``dim * 4`` bytes each.

Only hashes of API keys are stored; hashing is the caller's job (``ppfr.serve.auth``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppfr.errors import DataError, InputError

__all__ = [
    "ApiKeyRecord",
    "GalleryChanges",
    "GalleryMatrix",
    "GalleryStats",
    "GalleryStore",
    "open_store",
    "shard_of",
]

#: how arrays are laid out in the database: little-endian float32
STORED_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key as stored: its public id, the salted hash of its secret, its galleries."""

    key_id: str
    secret_hash: str
    galleries: tuple[str, ...]
    revoked: bool
    created: float


@dataclass(frozen=True)
class GalleryStats:
    """Counts for one gallery; ``dim`` is None before the first enrolment."""

    gallery: str
    subjects: int
    templates: int
    dim: int | None
    version: int


@dataclass
class GalleryMatrix:
    """A snapshot of a gallery, rows aligned across the arrays and ordered by template id.

    Shape:
        ids: (n,) int64 template ids.
        subjects: (n,) object array of str.
        templates: (n, D) float32, protected templates (plain templates in plain mode).
        keys: (n, D) float32 SlerpFace keys, or None in plain mode.
    """

    ids: np.ndarray
    subjects: np.ndarray
    templates: np.ndarray
    keys: np.ndarray | None
    version: int = 0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class GalleryChanges:
    """What changed in a gallery after some version: apply ``deleted``, then append ``added``.

    ``deleted`` are the subjects deleted after that version (each delete removed every
    template the subject had then); ``added`` the rows enrolled after it that still exist
    now, ordered by id, with ``added.version`` the gallery's current version. Deleting
    first and appending second reproduces the gallery as it is now: a row enrolled and
    later deleted is not in ``added``, and one enrolled after a delete of its subject is.
    """

    version: int
    deleted: tuple[str, ...]
    added: GalleryMatrix

    def __bool__(self) -> bool:
        return bool(self.deleted) or len(self.added) > 0


def shard_of(subject: str, shards: int) -> int:
    """The partition (of ``shards``) that holds ``subject``'s templates.

    The first 32 bits of the MD5 of the UTF-8 name, modulo ``shards``: stable across
    processes and machines (Python's ``hash`` is salted per process), and computable inside
    PostgreSQL (``md5``), so a shard loads its partition without reading the others. MD5
    spreads names evenly; nothing here depends on it being hard to invert.
    """
    if not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards must be a positive integer, got {shards!r}")
    return int(hashlib.md5(subject.encode("utf-8")).hexdigest()[:8], 16) % shards


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, k = shard
    except (TypeError, ValueError):
        raise InputError(f"shard must be a pair (index, count), got {shard!r}") from None
    if not (isinstance(i, int) and isinstance(k, int) and 0 <= i < k):
        raise InputError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return (i, k)


class GalleryStore(ABC):
    """Durable storage of galleries and API keys (see the module docstring for guarantees)."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> GalleryStore:
        """Open (creating if needed) the store at ``url``, a URL of this backend's scheme."""

    # --- API keys ---------------------------------------------------------------------
    @abstractmethod
    def add_api_key(self, key_id: str, secret_hash: str, galleries: Sequence[str]) -> None:
        """Store a new key; an existing ``key_id`` raises :class:`InputError`."""

    @abstractmethod
    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key's record (revoked ones included), or None if no such key."""

    @abstractmethod
    def revoke_api_key(self, key_id: str) -> bool:
        """Mark the key revoked; False if there was no such key (or it was revoked already)."""

    @abstractmethod
    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, oldest first."""

    # --- galleries --------------------------------------------------------------------
    def enroll(
        self, gallery: str, subject: str, templates: np.ndarray, keys: np.ndarray | None
    ) -> list[int]:
        """Add templates (and their SlerpFace keys) for ``subject``; returns their new ids.

        All rows are written in one transaction, durable before this returns.

        Shape:
            templates: (n, D) or (D,), finite floats; stored as float32.
            keys: same shape as ``templates``, or None for a plain-mode gallery.

        Raises:
            InputError: empty names, wrong shapes, NaN/inf values, a dimension other than
                the gallery's, or keys given to a plain gallery (or missing for a
                protected one).
        """
        _check_name(subject, "subject")
        t = _as_rows(templates, "templates")
        return self.enroll_many(gallery, [subject] * len(t), t, keys)

    def enroll_many(
        self,
        gallery: str,
        subjects: Sequence[str],
        templates: np.ndarray,
        keys: np.ndarray | None,
    ) -> list[int]:
        """Bulk :meth:`enroll`: row ``i`` belongs to ``subjects[i]``; one transaction.

        Shape:
            subjects: (n,) names; templates, keys: (n, D).
        """
        _check_name(gallery, "gallery")
        t = _as_rows(templates, "templates")
        k = None if keys is None else _as_rows(keys, "keys")
        if k is not None and k.shape != t.shape:
            raise InputError(f"keys have shape {k.shape} but templates have shape {t.shape}")
        names = [subjects] if isinstance(subjects, str) else list(subjects)
        if len(names) != len(t):
            raise InputError(f"got {len(names)} subject names for {len(t)} templates")
        for name in set(names):
            _check_name(name, "subject")
        return self._enroll(gallery, names, t, k)

    @abstractmethod
    def _enroll(
        self, gallery: str, subjects: list[str], templates: np.ndarray, keys: np.ndarray | None
    ) -> list[int]:
        """Backend part of :meth:`enroll_many`; arrays are validated little-endian float32."""

    @abstractmethod
    def delete_subject(self, gallery: str, subject: str) -> int:
        """Remove every template (and key) of ``subject``; returns how many were removed."""

    @abstractmethod
    def subjects(self, gallery: str) -> list[str]:
        """The enrolled subjects, sorted."""

    @abstractmethod
    def stats(self, gallery: str) -> GalleryStats:
        """Subject and template counts, dimension and version."""

    @abstractmethod
    def version(self, gallery: str) -> int:
        """A counter bumped by every change to the gallery (0 for a gallery never written)."""

    @abstractmethod
    def galleries(self) -> list[str]:
        """Names of every gallery ever written, sorted."""

    def load(self, gallery: str, shard: tuple[int, int] | None = None) -> GalleryMatrix:
        """A consistent snapshot of the gallery (one read transaction).

        ``shard=(i, K)``: only the rows of subjects with ``shard_of(subject, K) == i``.
        """
        return self._load(gallery, _check_shard(shard))

    def changes(
        self, gallery: str, since: int, shard: tuple[int, int] | None = None
    ) -> GalleryChanges | None:
        """What changed after version ``since`` (one read transaction), or None.

        None means the log cannot bring a snapshot at ``since`` up to date: ``since`` is
        newer than the store (it was restored from an older backup); reload instead.
        """
        if not isinstance(since, int) or since < 0:
            raise InputError(f"since must be a version (an integer >= 0), got {since!r}")
        return self._changes(gallery, since, _check_shard(shard))

    @abstractmethod
    def _load(self, gallery: str, shard: tuple[int, int] | None) -> GalleryMatrix:
        """Backend part of :meth:`load`."""

    @abstractmethod
    def _changes(
        self, gallery: str, since: int, shard: tuple[int, int] | None
    ) -> GalleryChanges | None:
        """Backend part of :meth:`changes`."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the store cannot be used afterwards."""

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: URL scheme -> (module, class) of its backend, imported by name on first use because
#: every backend imports this base (and only the backend a URL names should be loaded)
_BACKENDS: dict[str, tuple[str, str]] = {
    "sqlite": ("ppfr.serve.store._sqlite", "SQLiteStore"),
    "postgresql": ("ppfr.serve.store._postgres", "PostgresStore"),
    "postgres": ("ppfr.serve.store._postgres", "PostgresStore"),
}


def open_store(url: str) -> GalleryStore:
    """Open (creating if needed) the gallery store at ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (parent folders are
    created) or ``postgresql://user:pass@host:port/dbname`` (``postgres://`` too).

    Raises:
        InputError: an unknown URL scheme or a malformed URL.
        DataError: the SQLite file is not a ppfr gallery database (corrupt or foreign), or
            the PostgreSQL server cannot be reached or refuses the login.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InputError(
            f"gallery store URL {url!r} has no scheme; use sqlite:///path/to/gallery.db or "
            "postgresql://user:pass@host:port/dbname"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgresql+"):  # SQLAlchemy-style driver suffix
        scheme = "postgresql"
    if scheme not in _BACKENDS:
        raise InputError(
            f"unknown gallery store URL scheme {scheme!r} in {url!r}; "
            "supported: sqlite:///path.db, postgresql://user:pass@host:port/dbname"
        )
    module, name = _BACKENDS[scheme]
    backend: type[GalleryStore] = getattr(importlib.import_module(module), name)
    return backend.from_url(url)


# --- helpers shared by the backends ------------------------------------------------------


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} name must be a non-empty string, got {value!r}")
    if len(value) > 256:
        raise InputError(f"{what} name is {len(value)} characters long; the limit is 256")


def _as_rows(array: object, what: str) -> np.ndarray:
    """Validate and convert to a C-contiguous little-endian float32 (n, D) array."""
    if hasattr(array, "detach"):  # a torch tensor: accept it without importing torch here
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.dtype.kind not in "fiu":
        raise InputError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what} must have shape (n, dim) with n, dim >= 1, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=STORED_DTYPE)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise InputError(f"{what} contain NaN or infinite values ({bad} of {len(a)} rows)")
    return a


def _check_gallery_fits(
    gallery: str, dim: int | None, protected: bool | None, t: np.ndarray, keys: bool
) -> None:
    """Raise InputError if rows of ``t`` (with or without keys) cannot join this gallery."""
    if dim is not None and t.shape[1] != dim:
        raise InputError(
            f"gallery {gallery!r} holds {dim}-d templates; got {t.shape[1]}-d templates "
            "(a gallery has one dimension: use another gallery name for another model)"
        )
    if protected is not None and protected != keys:
        if protected:
            raise InputError(
                f"gallery {gallery!r} holds SlerpFace-protected templates; enrol with keys"
            )
        raise InputError(f"gallery {gallery!r} holds plain templates; enrol without keys")


def _rows_from_bytes(chunks: Sequence[bytes], dim: int, what: str, gallery: str) -> np.ndarray:
    """Stack stored float32 byte strings into an (n, dim) array, checking each length."""
    size = dim * STORED_DTYPE.itemsize
    if any(len(c) != size for c in chunks):
        raise DataError(
            f"gallery {gallery!r}: a stored {what} row is not {dim} float32 values; "
            "the database is corrupt"
        )
    out = np.frombuffer(b"".join(chunks), dtype=STORED_DTYPE).reshape(len(chunks), dim)
    return out.astype(np.float32, copy=False)


def _galleries_to_json(galleries: Sequence[str]) -> str:
    if isinstance(galleries, str):
        galleries = [galleries]
    names = list(galleries)
    for g in names:
        _check_name(g, "gallery")
    return json.dumps(names)


def _now() -> float:
    return time.time()


def _empty(version: int, protected: bool) -> GalleryMatrix:
    return GalleryMatrix(
        ids=np.zeros(0, np.int64),
        subjects=np.zeros(0, object),
        templates=np.zeros((0, 0), np.float32),
        keys=np.zeros((0, 0), np.float32) if protected else None,
        version=version,
    )


def _replay(row: tuple | None, since: int, deleted: Any, added: Any) -> GalleryChanges | None:
    """:meth:`GalleryStore.changes` from a gallery row ``(id, dim, protected, version)``.

    ``deleted()`` and ``added()`` read the log inside the caller's transaction; they are
    called only when something changed after ``since``. Shared with Postgres.
    """
    version = 0 if row is None else int(row[3])
    if since > version:
        return None
    if row is None or row[1] is None or since == version:
        return GalleryChanges(version, (), _empty(version, row is not None and bool(row[2])))
    return GalleryChanges(version, deleted(), added())


def _matrix(
    gallery: str, cursor: Any, n: int, dim: int, protected: bool, version: int
) -> GalleryMatrix:
    """Fill a GalleryMatrix from a cursor over (id, subject, template[, key]) rows.

    Reads in chunks into preallocated arrays, so peak memory stays near the size of the
    result (a 1M x 512 protected gallery is 4 GB of float32). Shared with Postgres.
    """
    ids = np.empty(n, dtype=np.int64)
    subjects = np.empty(n, dtype=object)
    templates = np.empty((n, dim), dtype=np.float32)
    keys = np.empty((n, dim), dtype=np.float32) if protected else None
    i = 0
    while True:
        chunk = cursor.fetchmany(16384)
        if not chunk:
            break
        j = i + len(chunk)
        if j > n:
            raise DataError(f"gallery {gallery!r} changed while it was being read")
        cols = list(zip(*chunk, strict=True))
        ids[i:j] = cols[0]
        subjects[i:j] = cols[1]
        templates[i:j] = _rows_from_bytes(cols[2], dim, "template", gallery)
        if keys is not None:
            if any(k is None for k in cols[3]):
                raise DataError(
                    f"gallery {gallery!r}: a protected template has no SlerpFace key; "
                    "the key store is incomplete (restored from a different backup?)"
                )
            keys[i:j] = _rows_from_bytes(cols[3], dim, "key", gallery)
        i = j
    if i != n:
        raise DataError(f"gallery {gallery!r} changed while it was being read")
    return GalleryMatrix(ids, subjects, templates, keys, version)
