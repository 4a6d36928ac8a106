"""Shared helpers for the service tests (imported by the test modules; not a conftest so the
store helper's tests/serve/conftest.py can live beside it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from fastapi.testclient import TestClient

import ppfr
from ppfr.serve.app import create_app
from ppfr.serve.auth import create_key
from ppfr.serve.store import open_store
from ppfr.serve.wire import encode_representation

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Served:
    client: TestClient
    db: str
    keys: dict[str, str]  # name -> full key
    key_ids: dict[str, str]
    model: ppfr.Method  # full model (client + server), for making representations

    def headers(self, who: str = "g1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def reps(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        faces = torch.rand(n, 3, 112, 112, generator=g) * 2 - 1
        with torch.inference_mode():
            return self.model.protect(faces, generator=g)

    def body(self, reps, fingerprint: str | None = None, dtype: str = "float32") -> bytes:
        return encode_representation(
            reps, fingerprint or self.model.fingerprint("client"), dtype=dtype
        )

    def post(self, path: str, body: bytes, who: str = "g1", **kw):
        headers = {**self.headers(who), "Content-Type": "application/octet-stream"}
        return self.client.post(path, content=body, headers=headers, **kw)


def make_keys(db: str) -> tuple[dict[str, str], dict[str, str]]:
    """Keys: g1 (gallery g1), g2 (gallery g2), both (g1 and g2), revoked (g1, revoked)."""
    keys, ids = {}, {}
    with open_store(db) as store:
        for name, galleries in (("g1", ["g1"]), ("g2", ["g2"]), ("both", ["g1", "g2"])):
            ids[name], keys[name] = create_key(store, galleries)
        ids["revoked"], keys["revoked"] = create_key(store, ["g1"])
        store.revoke_api_key(ids["revoked"])
    return keys, ids


def served_app(bundle: Path, tmp_path: Path, **kw) -> Served:
    db = f"sqlite:///{tmp_path / 'gallery.db'}"
    keys, ids = make_keys(db)
    app = create_app(bundle, db, **kw)
    return Served(TestClient(app), db, keys, ids, ppfr.load(bundle))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, db: str, port: int, *extra: str) -> subprocess.Popen:
    """``ppfr serve`` in a subprocess; returns once /v1/health answers (60 s at most)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from ppfr.cli import app; app()", "serve"]
    cmd += ["--model", str(bundle), "--db", db, "--port", str(port), "--log-level", "warning"]
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log.close()


def random_faces(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g) * 2 - 1


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
