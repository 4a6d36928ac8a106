"""SQLite backend of the gallery store: one database file plus a sibling key file, no server.

Layout. ``gallery.db`` holds the galleries, the templates and the API-key hashes;
``gallery.keys.db`` (the same name with ``.keys`` before the suffix) holds the SlerpFace
keys, one row per template id, and is ATTACHed to the same connection as schema ``keys``.
The template table has no key column, so copying ``gallery.db`` alone gives an attacker
protected templates without the keys needed to match against them.

Durability. Both files use SQLite's rollback journal (``journal_mode=DELETE``) with
``synchronous=FULL``. We do not use WAL: with WAL, a transaction that spans an attached
database is atomic per file but not across files, and an enrolment must never leave a
template without its key. With a rollback journal SQLite commits both files atomically
through a super-journal, and ``synchronous=FULL`` fsyncs before ``COMMIT`` returns, so an
acknowledged enrolment survives SIGKILL or power loss and an unacknowledged one leaves
nothing behind. Every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT``.

One connection per store object, shared by threads under a lock (the FastAPI server calls
the store from its thread pool).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ppfr.errors import DataError, InputError
from ppfr.serve.store import (
    ApiKeyRecord,
    GalleryChanges,
    GalleryMatrix,
    GalleryStats,
    GalleryStore,
    _check_gallery_fits,
    _check_name,
    _empty,
    _galleries_to_json,
    _matrix,
    _now,
    _replay,
    shard_of,
)

#: PRAGMA application_id of a ppfr gallery file ("PPFR" in ASCII), to refuse foreign files
APPLICATION_ID = 0x50504652
#: 2: the change log (templates.version, the deletions table); files of 1 are upgraded
SCHEMA_VERSION = 2

_MAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS main.galleries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dim INTEGER,
    protected INTEGER,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS main.templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id),
    subject TEXT NOT NULL,
    template BLOB NOT NULL,
    created REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS main.templates_by_subject ON templates(gallery_id, subject);
CREATE TABLE IF NOT EXISTS main.deletions (
    gallery_id INTEGER NOT NULL REFERENCES galleries(id),
    version INTEGER NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS main.deletions_by_version ON deletions(gallery_id, version);
CREATE TABLE IF NOT EXISTS main.api_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    galleries TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""
_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys.template_keys (
    template_id INTEGER PRIMARY KEY,
    key BLOB NOT NULL
);
"""


_LOG_INDEX = """
CREATE INDEX IF NOT EXISTS main.templates_by_version ON templates(gallery_id, version);
"""


def keys_path(path: Path) -> Path:
    """Where the SlerpFace keys of the gallery file ``path`` live."""
    return path.with_name(f"{path.stem}.keys{path.suffix or '.db'}")


class SQLiteStore(GalleryStore):
    """Gallery store in a SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.keys_path = keys_path(self.path)
        self._lock = threading.RLock()
        self._closed = False
        existed = self.path.exists() and self.path.stat().st_size > 0
        if self.path.is_dir():
            raise InputError(f"gallery database path {self.path} is a folder, not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as e:
            raise DataError(f"cannot open gallery database {self.path}: {e}") from e
        try:
            self._setup(existed)
        except Exception:
            self._db.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db``."""
        rest = url.split("://", 1)[1]
        if not rest.startswith("/") or rest == "/":
            raise InputError(
                f"SQLite URL {url!r} must look like sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        rest = rest[1:].split("?", 1)[0]
        if rest in ("", ":memory:"):
            raise InputError(f"SQLite URL {url!r} must name a file (the store is durable)")
        return cls(rest)

    # --- setup --------------------------------------------------------------------------
    def _setup(self, existed: bool) -> None:
        db = self._db
        try:
            app_id = db.execute("PRAGMA main.application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM main.sqlite_master")}
            layout = db.execute("PRAGMA main.user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:  # OperationalError included
            if _locked(e):
                raise _locked_error(self.path) from e
            raise DataError(
                f"{self.path} is not a ppfr gallery database (SQLite says: {e}); the file is "
                "corrupt or belongs to something else. Restore it from a backup or point "
                "--db at another file."
            ) from e
        if existed and app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise DataError(
                f"{self.path} is a SQLite database of another application "
                f"(application_id {app_id:#x}, tables {sorted(tables)}); not a ppfr gallery"
            )
        keys_existed = self.keys_path.exists() and self.keys_path.stat().st_size > 0
        if "templates" in tables and not keys_existed:
            has_keys = db.execute(
                "SELECT 1 FROM main.galleries WHERE protected = 1 LIMIT 1"
            ).fetchone()
            if has_keys:
                raise DataError(
                    f"the SlerpFace key file {self.keys_path} of gallery database {self.path} "
                    "is missing; protected templates cannot be matched without it"
                )
        try:
            db.execute("ATTACH DATABASE ? AS keys", (str(self.keys_path),))
            for schema in ("main", "keys"):
                # 16 KiB pages hold 7 rows of a 512-d template (2 KB); with the default 4 KiB
                # only one fits per page. Takes effect only when the file is created.
                db.execute(f"PRAGMA {schema}.page_size=16384")
                # rollback journal, not WAL: atomic commits across the two files
                db.execute(f"PRAGMA {schema}.journal_mode=DELETE")
                db.execute(f"PRAGMA {schema}.synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            # partitions are selected inside SQL by the same function Python uses
            db.create_function("ppfr_shard", 2, shard_of, deterministic=True)
            if layout == SCHEMA_VERSION and app_id == APPLICATION_ID:
                # current already: no write lock, so processes opening the store while
                # another holds a long read (a shard loading) do not wait for it
                return
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:  # OperationalError included
            if _locked(e):
                raise _locked_error(self.path) from e
            raise DataError(
                f"the SlerpFace key file {self.keys_path} is not a SQLite database ({e}); "
                "it is corrupt"
            ) from e
        try:
            if "templates" in tables:  # a schema-1 file: add the change log's column
                columns = {r[1] for r in db.execute("PRAGMA main.table_info(templates)")}
                if "version" not in columns:
                    db.execute(
                        "ALTER TABLE main.templates ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
                    )
            for stmt in (_MAIN_SCHEMA + _KEYS_SCHEMA + _LOG_INDEX).split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA main.application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA main.user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise DataError(f"cannot create the gallery schema in {self.path}: {e}") from e

    # --- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; SQLite errors become DataError."""
        with self._lock:
            if self._closed:
                raise InputError("the gallery store is closed")
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                raise InputError(f"gallery store refused the change: {e}") from e
            except sqlite3.DatabaseError as e:  # OperationalError included
                if _locked(e):
                    raise _locked_error(self.path) from e
                raise DataError(f"gallery database {self.path} failed: {e}") from e

    @staticmethod
    def _gallery_row(db: sqlite3.Connection, gallery: str) -> tuple | None:
        return db.execute(
            "SELECT id, dim, protected, version FROM galleries WHERE name = ?", (gallery,)
        ).fetchone()

    # --- API keys -----------------------------------------------------------------------
    def add_api_key(self, key_id: str, secret_hash: str, galleries: Sequence[str]) -> None:
        _check_name(key_id, "API key id")
        names = _galleries_to_json(galleries)
        with self._tx(write=True) as db:
            if db.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone():
                raise InputError(f"API key id {key_id!r} exists already")
            db.execute(
                "INSERT INTO api_keys (key_id, secret_hash, galleries, revoked, created) "
                "VALUES (?, ?, ?, 0, ?)",
                (key_id, secret_hash, names, _now()),
            )

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT key_id, secret_hash, galleries, revoked, created FROM api_keys "
                "WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        return None if row is None else _api_record(row)

    def revoke_api_key(self, key_id: str) -> bool:
        with self._tx(write=True) as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked = 1 WHERE key_id = ? AND revoked = 0", (key_id,)
            )
            return cur.rowcount > 0

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT key_id, secret_hash, galleries, revoked, created FROM api_keys "
                "ORDER BY created, key_id"
            ).fetchall()
        return [_api_record(r) for r in rows]

    # --- galleries ----------------------------------------------------------------------
    def _enroll(
        self, gallery: str, subjects: list[str], templates: np.ndarray, keys: np.ndarray | None
    ) -> list[int]:
        n, dim = templates.shape
        protected = keys is not None
        with self._tx(write=True) as db:
            row = self._gallery_row(db, gallery)
            if row is None:
                gid = db.execute(
                    "INSERT INTO galleries (name, dim, protected, version) VALUES (?, ?, ?, 0)",
                    (gallery, dim, int(protected)),
                ).lastrowid
            else:
                gid, gdim, gprot = row[0], row[1], row[2]
                _check_gallery_fits(
                    gallery, gdim, None if gprot is None else bool(gprot), templates, protected
                )
                if gdim is None:
                    db.execute(
                        "UPDATE galleries SET dim = ?, protected = ? WHERE id = ?",
                        (dim, int(protected), gid),
                    )
            db.execute("UPDATE galleries SET version = version + 1 WHERE id = ?", (gid,))
            (version,) = db.execute("SELECT version FROM galleries WHERE id = ?", (gid,)).fetchone()
            # ids allocated under the write lock (BEGIN IMMEDIATE), so executemany can use them
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'templates'").fetchone()
            first = (seq[0] if seq else 0) + 1
            ids = list(range(first, first + n))
            now = _now()
            db.executemany(
                "INSERT INTO templates (id, gallery_id, subject, template, created, version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (i, gid, subjects[j], templates[j].tobytes(), now, version)
                    for j, i in enumerate(ids)
                ),
            )
            if keys is not None:
                db.executemany(
                    "INSERT INTO keys.template_keys (template_id, key) VALUES (?, ?)",
                    ((i, keys[j].tobytes()) for j, i in enumerate(ids)),
                )
        return ids

    def delete_subject(self, gallery: str, subject: str) -> int:
        with self._tx(write=True) as db:
            row = self._gallery_row(db, gallery)
            if row is None:
                return 0
            gid = row[0]
            db.execute(
                "DELETE FROM keys.template_keys WHERE template_id IN "
                "(SELECT id FROM templates WHERE gallery_id = ? AND subject = ?)",
                (gid, subject),
            )
            n = db.execute(
                "DELETE FROM templates WHERE gallery_id = ? AND subject = ?", (gid, subject)
            ).rowcount
            if n:
                db.execute("UPDATE galleries SET version = version + 1 WHERE id = ?", (gid,))
                db.execute(
                    "INSERT INTO deletions (gallery_id, version, subject) "
                    "SELECT id, version, ? FROM galleries WHERE id = ?",
                    (subject, gid),
                )
            return n

    def subjects(self, gallery: str) -> list[str]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT DISTINCT t.subject FROM templates t JOIN galleries g "
                "ON g.id = t.gallery_id WHERE g.name = ? ORDER BY t.subject",
                (gallery,),
            ).fetchall()
        return [r[0] for r in rows]

    def stats(self, gallery: str) -> GalleryStats:
        with self._tx(write=False) as db:
            row = self._gallery_row(db, gallery)
            if row is None:
                return GalleryStats(gallery, 0, 0, None, 0)
            subjects, templates = db.execute(
                "SELECT COUNT(DISTINCT subject), COUNT(*) FROM templates WHERE gallery_id = ?",
                (row[0],),
            ).fetchone()
        return GalleryStats(gallery, subjects, templates, row[1], row[3])

    def version(self, gallery: str) -> int:
        with self._tx(write=False) as db:
            row = db.execute("SELECT version FROM galleries WHERE name = ?", (gallery,)).fetchone()
        return 0 if row is None else int(row[0])

    def galleries(self) -> list[str]:
        with self._tx(write=False) as db:
            return [r[0] for r in db.execute("SELECT name FROM galleries ORDER BY name")]

    def _load(self, gallery: str, shard: tuple[int, int] | None) -> GalleryMatrix:
        with self._tx(write=False) as db:
            row = self._gallery_row(db, gallery)
            if row is None or row[1] is None:
                return _empty(0 if row is None else row[3], row is not None and bool(row[2]))
            return self._rows(db, gallery, row, since=None, shard=shard)

    def _changes(
        self, gallery: str, since: int, shard: tuple[int, int] | None
    ) -> GalleryChanges | None:
        with self._tx(write=False) as db:
            row = self._gallery_row(db, gallery)

            def deleted() -> tuple[str, ...]:
                where, args = _filter(row[0], since, shard, "d.")
                sql = f"SELECT d.subject FROM deletions d WHERE {where} ORDER BY d.version"
                return tuple(r[0] for r in db.execute(sql, args))

            return _replay(row, since, deleted, lambda: self._rows(db, gallery, row, since, shard))

    @staticmethod
    def _rows(
        db: sqlite3.Connection,
        gallery: str,
        row: tuple,
        since: int | None,
        shard: tuple[int, int] | None,
    ) -> GalleryMatrix:
        """The gallery's rows (enrolled after ``since``; of one ``shard``), ordered by id."""
        gid, dim, protected, version = row
        where, args = _filter(gid, since, shard, "t.")
        (n,) = db.execute(f"SELECT COUNT(*) FROM templates t WHERE {where}", args).fetchone()
        if protected:
            cur = db.execute(
                "SELECT t.id, t.subject, t.template, k.key FROM templates t "
                f"LEFT JOIN keys.template_keys k ON k.template_id = t.id WHERE {where} "
                "ORDER BY t.id",
                args,
            )
        else:
            cur = db.execute(
                f"SELECT t.id, t.subject, t.template FROM templates t WHERE {where} ORDER BY t.id",
                args,
            )
        return _matrix(gallery, cur, n, dim, bool(protected), version)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @property
    def url(self) -> str:
        """The URL that opens this store again (another connection, e.g. for a long read)."""
        return f"sqlite:///{self.path.resolve()}"

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def _locked(e: sqlite3.DatabaseError) -> bool:
    # only an OperationalError is a lock: a corrupt file's message may say anything
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def _locked_error(path: Path) -> DataError:
    return DataError(
        f"gallery database {path} stayed locked by another process for the whole busy "
        "timeout (30 s): a long write, or a long read blocking a write (SQLite's rollback "
        "journal lets no commit through while a reader holds the file, e.g. a gallery "
        "of a million templates loading). Retry; for galleries that load for longer than "
        "that while others write, use PostgreSQL"
    )


def _filter(
    gid: int, since: int | None, shard: tuple[int, int] | None, alias: str
) -> tuple[str, tuple]:
    """WHERE clause (and its arguments) selecting a gallery's rows after ``since``, of ``shard``."""
    where, args = [f"{alias}gallery_id = ?"], [gid]
    if since is not None:
        where.append(f"{alias}version > ?")
        args.append(since)
    if shard is not None:
        where.append(f"ppfr_shard({alias}subject, ?) = ?")
        args += [shard[1], shard[0]]
    return " AND ".join(where), tuple(args)


def _api_record(row: tuple) -> ApiKeyRecord:
    key_id, secret_hash, galleries, revoked, created = row
    return ApiKeyRecord(key_id, secret_hash, tuple(_json_list(galleries)), bool(revoked), created)


def _json_list(text: str) -> list[str]:
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise DataError(f"stored API key galleries {text!r} are not valid JSON") from e
    return [str(v) for v in value]
