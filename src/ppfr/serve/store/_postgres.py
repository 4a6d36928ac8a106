"""PostgreSQL backend of the gallery store (PostgreSQL 15+, psycopg 3).

Layout. Tables ``ppfr_galleries``, ``ppfr_templates`` and ``ppfr_api_keys`` in the
connection's default schema; the SlerpFace keys in ``ppfr_keys.template_keys``, a table in
its own schema, joined to the templates by id. The template table has no key column, and
the separate schema lets an operator grant the key table to a different role or put it
in another tablespace, so a dump of the templates alone cannot be matched against.

Semantics are those of the SQLite backend: every write is one transaction (the
connection runs in autocommit mode and each call opens ``conn.transaction()``), committed
with ``synchronous_commit=on`` so the server has flushed it to its WAL before the call
returns; the gallery row is locked ``FOR UPDATE`` while it changes, so concurrent
enrolments from several workers serialise their version bumps. Bulk enrolment allocates
ids from the sequence and streams rows with binary ``COPY``; ``load`` reads one
``REPEATABLE READ`` snapshot through a server-side cursor.

The schema is created on first open (under an advisory lock, so two workers starting at
once do not race). One connection per store object, shared by threads under a lock;
``psycopg_pool`` is not required. A dropped connection is reopened on the next call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
)

#: advisory-lock id guarding schema creation ("ppfr" in ASCII)
_SCHEMA_LOCK = 0x70706672

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ppfr_galleries (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        dim INTEGER,
        protected BOOLEAN,
        version BIGINT NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS ppfr_templates (
        id BIGSERIAL PRIMARY KEY,
        gallery_id BIGINT NOT NULL REFERENCES ppfr_galleries(id),
        subject TEXT NOT NULL,
        template BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ppfr_templates_by_subject ON ppfr_templates(gallery_id, subject)",
    """CREATE TABLE IF NOT EXISTS ppfr_api_keys (
        key_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        galleries TEXT[] NOT NULL,
        revoked BOOLEAN NOT NULL DEFAULT FALSE,
        created DOUBLE PRECISION NOT NULL
    )""",
    "CREATE SCHEMA IF NOT EXISTS ppfr_keys",
    """CREATE TABLE IF NOT EXISTS ppfr_keys.template_keys (
        template_id BIGINT PRIMARY KEY REFERENCES ppfr_templates(id) ON DELETE CASCADE,
        key BYTEA NOT NULL
    )""",
    # float32 bytes do not compress, and a 512-d row (2 KB) would otherwise be moved to
    # the TOAST table: no compression attempts, and rows up to a page stay inline
    # the change log (ppfr.serve.store): the version that enrolled each row (added in
    # place to a store created before it), and one row per delete
    "ALTER TABLE ppfr_templates ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS ppfr_templates_by_version ON ppfr_templates(gallery_id, version)",
    """CREATE TABLE IF NOT EXISTS ppfr_deletions (
        gallery_id BIGINT NOT NULL REFERENCES ppfr_galleries(id),
        version BIGINT NOT NULL,
        subject TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ppfr_deletions_by_version ON ppfr_deletions(gallery_id, version)",
    "ALTER TABLE ppfr_templates ALTER COLUMN template SET STORAGE EXTERNAL",
    "ALTER TABLE ppfr_templates SET (toast_tuple_target = 8160)",
    "ALTER TABLE ppfr_keys.template_keys ALTER COLUMN key SET STORAGE EXTERNAL",
    "ALTER TABLE ppfr_keys.template_keys SET (toast_tuple_target = 8160)",
]


def _describe(url: str) -> str:
    """``user@host:port/dbname`` of a URL, without the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL is described as such
        return "<malformed URL>"
    return (
        f"{d.get('user', '')}@{d.get('host', 'localhost')}:{d.get('port', 5432)}"
        f"/{d.get('dbname', '')}"
    )


class PostgresStore(GalleryStore):
    """Gallery store in a PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - psycopg comes with ppfr[serve]
            raise InputError(
                "the PostgreSQL gallery store needs psycopg 3, which comes with ppfr's 'serve' "
                "extra: pip install 'ppfr[serve]'"
            ) from e
        self._psycopg = psycopg
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.where = _describe(self.url)
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._closed = False
        self._conn = self._connect()
        try:
            with self._tx() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for stmt in _SCHEMA:
                    cur.execute(stmt)
        except Exception:
            self._conn.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Open the database at ``postgresql://user:pass@host:port/dbname``."""
        return cls(url)

    def _connect(self):  # noqa: ANN202 - psycopg.Connection, imported lazily
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except psycopg.OperationalError as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"cannot connect to the PostgreSQL gallery store at {self.where}: {msg}. "
                "Is the server running and the URL (postgresql://user:pass@host:port/dbname) "
                "right?"
            ) from e
        except psycopg.ProgrammingError as e:
            raise InputError(f"malformed PostgreSQL URL ({self.where}): {e}") from e
        # durability: the commit returns only after the server flushed its WAL
        conn.execute("SET synchronous_commit = on")
        return conn

    # --- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _tx(self, repeatable: bool = False) -> Iterator:
        """One transaction under the lock, yielding a cursor; errors become ppfr errors."""
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise InputError("the gallery store is closed")
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            try:
                with self._conn.transaction(), self._conn.cursor(binary=True) as cur:
                    if repeatable:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    yield cur
            except psycopg.errors.IntegrityError as e:
                raise InputError(f"gallery store refused the change: {e}") from e
            except psycopg.OperationalError as e:
                raise DataError(f"PostgreSQL gallery store at {self.where} failed: {e}") from e
            except psycopg.DatabaseError as e:
                raise DataError(f"PostgreSQL gallery store at {self.where} failed: {e}") from e

    @staticmethod
    def _gallery_row(cur, gallery: str, lock: bool = False) -> tuple | None:  # noqa: ANN001
        sql = "SELECT id, dim, protected, version FROM ppfr_galleries WHERE name = %s"
        cur.execute(sql + (" FOR UPDATE" if lock else ""), (gallery,))
        return cur.fetchone()

    # --- API keys -----------------------------------------------------------------------
    def add_api_key(self, key_id: str, secret_hash: str, galleries: Sequence[str]) -> None:
        _check_name(key_id, "API key id")
        _galleries_to_json(galleries)  # validates the names
        names = [galleries] if isinstance(galleries, str) else list(galleries)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO ppfr_api_keys (key_id, secret_hash, galleries, revoked, created) "
                "VALUES (%s, %s, %s, FALSE, %s) ON CONFLICT (key_id) DO NOTHING",
                (key_id, secret_hash, names, _now()),
            )
            if cur.rowcount == 0:
                raise InputError(f"API key id {key_id!r} exists already")

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT key_id, secret_hash, galleries, revoked, created FROM ppfr_api_keys "
                "WHERE key_id = %s",
                (key_id,),
            )
            row = cur.fetchone()
        return None if row is None else _api_record(row)

    def revoke_api_key(self, key_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE ppfr_api_keys SET revoked = TRUE WHERE key_id = %s AND NOT revoked",
                (key_id,),
            )
            return cur.rowcount > 0

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self._tx() as cur:
            cur.execute(
                "SELECT key_id, secret_hash, galleries, revoked, created FROM ppfr_api_keys "
                "ORDER BY created, key_id"
            )
            rows = cur.fetchall()
        return [_api_record(r) for r in rows]

    # --- galleries ----------------------------------------------------------------------
    def _enroll(
        self, gallery: str, subjects: list[str], templates: np.ndarray, keys: np.ndarray | None
    ) -> list[int]:
        n, dim = templates.shape
        protected = keys is not None
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO ppfr_galleries (name, dim, protected, version) "
                "VALUES (%s, %s, %s, 0) ON CONFLICT (name) DO NOTHING",
                (gallery, dim, protected),
            )
            gid, gdim, gprot, _ = self._gallery_row(cur, gallery, lock=True)
            _check_gallery_fits(gallery, gdim, gprot, templates, protected)
            if gdim is None:
                cur.execute(
                    "UPDATE ppfr_galleries SET dim = %s, protected = %s WHERE id = %s",
                    (dim, protected, gid),
                )
            cur.execute(
                "UPDATE ppfr_galleries SET version = version + 1 WHERE id = %s RETURNING version",
                (gid,),
            )
            (version,) = cur.fetchone()
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence('ppfr_templates', 'id')) "
                "FROM generate_series(1, %s)",
                (n,),
            )
            ids = [int(r[0]) for r in cur.fetchall()]
            now = _now()
            with cur.copy(
                "COPY ppfr_templates (id, gallery_id, subject, template, created, version) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "int8", "text", "bytea", "float8", "int8"])
                for j, i in enumerate(ids):
                    copy.write_row((i, gid, subjects[j], templates[j].tobytes(), now, version))
            if keys is not None:
                with cur.copy(
                    "COPY ppfr_keys.template_keys (template_id, key) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int8", "bytea"])
                    for j, i in enumerate(ids):
                        copy.write_row((i, keys[j].tobytes()))
        return ids

    def delete_subject(self, gallery: str, subject: str) -> int:
        with self._tx() as cur:
            row = self._gallery_row(cur, gallery, lock=True)
            if row is None:
                return 0
            # keys go with their templates (ON DELETE CASCADE), in this transaction
            cur.execute(
                "DELETE FROM ppfr_templates WHERE gallery_id = %s AND subject = %s",
                (row[0], subject),
            )
            n = cur.rowcount
            if n:
                cur.execute(
                    "UPDATE ppfr_galleries SET version = version + 1 WHERE id = %s", (row[0],)
                )
                cur.execute(
                    "INSERT INTO ppfr_deletions (gallery_id, version, subject) "
                    "SELECT id, version, %s FROM ppfr_galleries WHERE id = %s",
                    (subject, row[0]),
                )
            return n

    def subjects(self, gallery: str) -> list[str]:
        with self._tx() as cur:
            cur.execute(
                "SELECT DISTINCT t.subject FROM ppfr_templates t JOIN ppfr_galleries g "
                "ON g.id = t.gallery_id WHERE g.name = %s ORDER BY t.subject",
                (gallery,),
            )
            return [r[0] for r in cur.fetchall()]

    def stats(self, gallery: str) -> GalleryStats:
        with self._tx(repeatable=True) as cur:
            row = self._gallery_row(cur, gallery)
            if row is None:
                return GalleryStats(gallery, 0, 0, None, 0)
            cur.execute(
                "SELECT COUNT(DISTINCT subject), COUNT(*) FROM ppfr_templates "
                "WHERE gallery_id = %s",
                (row[0],),
            )
            subjects, templates = cur.fetchone()
        return GalleryStats(gallery, int(subjects), int(templates), row[1], int(row[3]))

    def version(self, gallery: str) -> int:
        with self._tx() as cur:
            cur.execute("SELECT version FROM ppfr_galleries WHERE name = %s", (gallery,))
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def galleries(self) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT name FROM ppfr_galleries ORDER BY name")
            return [r[0] for r in cur.fetchall()]

    def _load(self, gallery: str, shard: tuple[int, int] | None) -> GalleryMatrix:
        with self._tx(repeatable=True) as cur:
            row = self._gallery_row(cur, gallery)
            if row is None or row[1] is None:
                return _empty(0 if row is None else int(row[3]), row is not None and row[2])
            return self._rows(cur, gallery, row, None, shard)

    def _changes(
        self, gallery: str, since: int, shard: tuple[int, int] | None
    ) -> GalleryChanges | None:
        with self._tx(repeatable=True) as cur:
            row = self._gallery_row(cur, gallery)

            def deleted() -> tuple[str, ...]:
                where, args = _filter(row[0], since, shard, "d.")
                sql = f"SELECT d.subject FROM ppfr_deletions d WHERE {where} ORDER BY d.version"
                cur.execute(sql, args)
                return tuple(r[0] for r in cur.fetchall())

            return _replay(row, since, deleted, lambda: self._rows(cur, gallery, row, since, shard))

    def _rows(
        self,
        cur,  # noqa: ANN001 - a psycopg cursor inside a REPEATABLE READ transaction
        gallery: str,
        row: tuple,
        since: int | None,
        shard: tuple[int, int] | None,
    ) -> GalleryMatrix:
        """The gallery's rows (enrolled after ``since``; of one ``shard``), ordered by id."""
        gid, dim, protected, version = row
        where, args = _filter(gid, since, shard, "t.")
        cur.execute(f"SELECT COUNT(*) FROM ppfr_templates t WHERE {where}", args)
        (n,) = cur.fetchone()
        if protected:
            sql = (
                "SELECT t.id, t.subject, t.template, k.key FROM ppfr_templates t "
                f"LEFT JOIN ppfr_keys.template_keys k ON k.template_id = t.id WHERE {where} "
                "ORDER BY t.id"
            )
        else:
            sql = (
                "SELECT t.id, t.subject, t.template FROM ppfr_templates t "
                f"WHERE {where} ORDER BY t.id"
            )
        # a server-side cursor streams the rows instead of materialising them all
        with self._conn.cursor("ppfr_load", binary=True) as scur:
            scur.itersize = 16384
            scur.execute(sql, args)
            return _matrix(gallery, scur, int(n), dim, bool(protected), int(version))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"


def _filter(
    gid: int, since: int | None, shard: tuple[int, int] | None, alias: str
) -> tuple[str, tuple]:
    """WHERE clause (and its arguments) selecting a gallery's rows after ``since``, of ``shard``.

    The shard test is :func:`ppfr.serve.store.shard_of` in SQL: the first 32 bits of the
    name's MD5 as an unsigned integer, modulo the shard count.
    """
    where, args = [f"{alias}gallery_id = %s"], [gid]
    if since is not None:
        where.append(f"{alias}version > %s")
        args.append(since)
    if shard is not None:
        where.append(f"(('x' || substr(md5({alias}subject), 1, 8))::bit(32)::bigint %% %s) = %s")
        args += [shard[1], shard[0]]
    return " AND ".join(where), tuple(args)


def _api_record(row: tuple) -> ApiKeyRecord:
    key_id, secret_hash, galleries, revoked, created = row
    return ApiKeyRecord(key_id, secret_hash, tuple(galleries), bool(revoked), float(created))
