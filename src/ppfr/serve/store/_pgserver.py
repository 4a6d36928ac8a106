"""A throwaway PostgreSQL server, for the tests and the gallery benchmark.

``initdb`` into a temporary folder, start with ``pg_ctl`` on 127.0.0.1 and a free port (its
Unix socket in the same folder), hand out fresh databases, stop and delete everything on
:meth:`TempPostgres.stop`. As root, the server runs as the ``postgres`` user (``initdb``
refuses root). Trust authentication on loopback: never use this for real data.
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

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them "
    "with `apt-get install postgresql-15` (Debian/Ubuntu), or point PPFR_PG_BIN at the "
    "folder that holds them."
)


class PostgresUnavailable(RuntimeError):
    """The throwaway server cannot be started (binaries missing, no user to run it as)."""


def find_bindir() -> Path | None:
    """Folder with initdb/pg_ctl/postgres: $PPFR_PG_BIN, Debian's layout (newest), PATH."""
    candidates = []
    if os.environ.get("PPFR_PG_BIN"):
        candidates.append(Path(os.environ["PPFR_PG_BIN"]))

    def major(p: str) -> int:
        name = Path(p).parent.name
        return int(name) if name.isdigit() else 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major)[::-1]]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A running PostgreSQL server in a temporary folder (see the module docstring)."""

    def __init__(self, fsync: bool = True) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(INSTALL_HINT)
        self.bindir = bindir
        self.prefix: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="ppfr-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._counter = itertools.count()
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run the server as; "
                    "create one (installing postgresql-15 does) or run as a normal user"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            if shutil.which("runuser"):
                self.prefix = ["runuser", "-u", "postgres", "--"]
            else:
                self.prefix = ["su", "postgres", "-s", "/bin/sh", "-c"]
        self._run("initdb", "-D", str(self.data), "-U", "ppfr", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        fs = "" if fsync else " -c fsync=off -c synchronous_commit=off"
        for _ in range(5):  # the port may be taken between probing and binding
            self.port = _free_port()
            opts = f"-k {self.root} -h 127.0.0.1 -p {self.port}{fs}"
            args = ["-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start"]
            if self._run("pg_ctl", *args, check=False).returncode == 0:
                return
        log = self.log.read_text() if self.log.exists() else ""
        self.stop()
        raise PostgresUnavailable(f"could not start the PostgreSQL server:\n{log}")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.prefix and self.prefix[-1] == "-c":  # su takes one shell string
            cmd = [*self.prefix, " ".join(f"'{a}'" for a in cmd)]
        else:
            cmd = [*self.prefix, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if check and r.returncode != 0:
            raise PostgresUnavailable(f"{tool} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://ppfr@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"ppfr_db_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
