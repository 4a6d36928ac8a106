"""Fixtures for the gallery-store tests: a throwaway PostgreSQL server and per-test stores.

The PostgreSQL server is real (no mocks, :class:`ppfr.serve.store._pgserver.TempPostgres`):
``initdb`` into a temporary folder, started with ``pg_ctl`` on 127.0.0.1 and a free port,
one fresh database per test, stopped and deleted at the end of the session. When the
tests run as root it runs as the ``postgres`` user, because ``initdb`` refuses root. If
the PostgreSQL binaries are missing the fixture fails (it does not skip) and says how to
install them (`apt-get install postgresql-15`).
"""

from __future__ import annotations

import pytest

from ppfr.serve.store._pgserver import PostgresUnavailable, TempPostgres


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server for the whole session."""
    try:
        server = TempPostgres()
    except PostgresUnavailable as e:
        pytest.fail(f"the PostgreSQL tests cannot run: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def postgres_url(pg_server) -> str:
    """URL of a fresh, empty PostgreSQL database."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """URL of a fresh, empty gallery store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gallery.db'}"
    return request.getfixturevalue("postgres_url")
