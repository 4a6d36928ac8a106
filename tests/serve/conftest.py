"""Fixtures for the gallery-store tests: a throwaway PostgreSQL server and per-test stores.

The PostgreSQL server is real (no mocks): ``initdb`` into a temporary folder, started with
``pg_ctl`` on 127.0.0.1 and a free port (its socket also in the temporary folder), one
fresh database per test, stopped and deleted at the end of the session. When the tests
run as root the server runs as the ``postgres`` user, because ``initdb`` refuses root.
If the PostgreSQL binaries are missing the fixture fails (it does not skip) and says how
to install them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL_HINT = (
    "the PostgreSQL tests need the PostgreSQL 15 server binaries (initdb, pg_ctl, postgres). "
    "Install them with `apt-get install postgresql-15` (Debian/Ubuntu), or point "
    "PPFR_PG_BIN at the folder holding them."
)


def _pg_bindir() -> Path | None:
    """Folder with initdb and pg_ctl: $PPFR_PG_BIN, Debian's layout (newest first), PATH."""
    candidates = []
    if os.environ.get("PPFR_PG_BIN"):
        candidates.append(Path(os.environ["PPFR_PG_BIN"]))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file() and (d / "postgres").is_file():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PgServer:
    """A PostgreSQL server in a temporary folder, run as a non-root user."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.bindir = bindir
        self.prefix: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="ppfr-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                pytest.fail(
                    "running as root and there is no 'postgres' user to run the test server "
                    "as; " + INSTALL_HINT,
                    pytrace=False,
                )
            os.chown(self.root, user.pw_uid, user.pw_gid)
            if shutil.which("runuser"):
                self.prefix = ["runuser", "-u", "postgres", "--"]
            else:
                self.prefix = ["su", "postgres", "-s", "/bin/sh", "-c"]
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._run(
            "initdb", "-D", str(self.data), "-U", "ppfr", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = _free_port()
            opts = f"-k {self.root} -h 127.0.0.1 -p {self.port}"
            r = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "start",
                check=False,
            )
            if r.returncode == 0:
                break
        else:
            log = self.log.read_text() if self.log.exists() else ""
            self.cleanup()
            pytest.fail(f"could not start the test PostgreSQL server:\n{log}", pytrace=False)
        self._counter = itertools.count()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.prefix and self.prefix[-1] == "-c":  # su takes one shell string
            cmd = [*self.prefix, " ".join(f"'{a}'" for a in cmd)]
        else:
            cmd = [*self.prefix, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if check and r.returncode != 0:
            pytest.fail(f"{tool} failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
        return r

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://ppfr@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"ppfr_test_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def cleanup(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server for the whole session."""
    server = _PgServer()
    try:
        yield server
    finally:
        server.cleanup()


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
