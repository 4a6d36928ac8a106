"""The key holder of an encrypted gallery, as a small service, and its client.

The matching server holds the encrypted gallery and the public context
(:class:`ppfr.templates.encrypted.EncryptedGallery`); this process holds the secret key
(:class:`ppfr.templates.encrypted.KeyHolder`) in its own key file and answers two questions
about encrypted score blocks, never returning the scores themselves:

- ``POST /v1/identify``: the top-k rows at or above its threshold, with their scores;
- ``POST /v1/verify``: whether any of the given rows reaches the threshold (a boolean);
- ``GET /v1/public``: the public context and configuration, for enrolment;
- ``GET /healthz``.

Requests carry a bearer token (``Authorization: Bearer kh_<id>_<secret>``). Tokens are 192
random bits, so the key file stores their SHA-256 (a slow hash such as the service's scrypt
protects guessable secrets; these cannot be guessed) and compares digests in constant time.
Bodies are :func:`ppfr.templates.encrypted.pack_message` messages (binary ciphertexts, a JSON
header with ``key_id``, ``n``, ``block_ids`` and ``k`` or ``rows``).

The key file is re-read when it changes on disk, so ``ppfr keyholder rotate``, ``revoke`` and
token revocation take effect on the next request without a restart. After a rotation the
key id changes and score blocks of galleries enrolled under the old key are refused (409):
re-enrol from the clients' templates (docs/templates.md, "Encrypted gallery").
"""

# no ``from __future__ import annotations``: FastAPI reads the route functions' annotations
# (``Request``, imported inside create_keyholder_app) as objects, not strings
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ppfr.errors import DataError, InputError, PPFRError
from ppfr.templates.encrypted import (
    EncryptedConfig,
    KeyHolder,
    pack_message,
    unpack_message,
)

__all__ = [
    "KeyHolderClient",
    "add_token",
    "create_key_file",
    "create_keyholder_app",
    "list_tokens",
    "revoke_key_file",
    "revoke_token",
    "rotate_key_file",
]

_TOKEN_RE = re.compile(r"^kh_([0-9a-f]{12})_([0-9a-f]{48})$")
#: largest request body: 64 score blocks of ~131 KB (1.3M templates with the defaults)
MAX_BODY_BYTES = 64 * 2**20


# ------------------------------------------------------------------------- key files
def create_key_file(
    path: str | os.PathLike,
    config: EncryptedConfig | None = None,
    *,
    threshold: float = 0.0,
    max_k: int = 100,
    force: bool = False,
) -> KeyHolder:
    """Generate a key pair and write its key file (mode 0600); refuses to overwrite."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} exists; rotate it (ppfr keyholder rotate) or pass --force")
    holder = KeyHolder.create(config, threshold=threshold, max_k=max_k)
    holder.save(path, {"tokens": []})
    return holder


def rotate_key_file(path: str | os.PathLike) -> tuple[str, KeyHolder]:
    """Replace the key pair, keeping configuration, policy and tokens.

    Returns (old key id, new key holder). The old secret key is overwritten: ciphertexts
    under it can no longer be decrypted by anyone here, so galleries must be re-enrolled.
    """
    old, extra = KeyHolder.load(path)
    new = KeyHolder.create(old.config, threshold=old.threshold, max_k=old.max_k)
    new.save(path, extra)
    return old.key_id, new


def revoke_key_file(path: str | os.PathLike) -> str:
    """Destroy the key: overwrite the key file with zeros and delete it; returns its id."""
    path = Path(path)
    holder, _ = KeyHolder.load(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # best effort on journaling/COW filesystems
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    return holder.key_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add_token(path: str | os.PathLike) -> tuple[str, str]:
    """A new bearer token for the key file at ``path``: (token id, token shown once)."""
    holder, extra = KeyHolder.load(path)
    tid, secret = secrets.token_hex(6), secrets.token_hex(24)
    extra.setdefault("tokens", []).append(
        {"id": tid, "sha256": _digest(secret), "created": time.time(), "revoked": False}
    )
    holder.save(path, extra)
    return tid, f"kh_{tid}_{secret}"


def revoke_token(path: str | os.PathLike, token_id: str) -> None:
    holder, extra = KeyHolder.load(path)
    hit = [t for t in extra.get("tokens", []) if t["id"] == token_id]
    if not hit:
        raise InputError(f"no token with id {token_id!r}")
    hit[0]["revoked"] = True
    holder.save(path, extra)


def list_tokens(path: str | os.PathLike) -> list[dict[str, Any]]:
    _, extra = KeyHolder.load(path)
    return [{k: t[k] for k in ("id", "created", "revoked")} for t in extra.get("tokens", [])]


class _State:
    """The loaded key file, reloaded when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self.holder: KeyHolder | None = None
        self.tokens: dict[str, str] = {}

    def current(self) -> "KeyHolder":
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise DataError("the key has been revoked (no key file)") from None
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                holder, extra = KeyHolder.load(self.path)
                self.holder = holder
                self.tokens = {
                    t["id"]: t["sha256"] for t in extra.get("tokens", []) if not t["revoked"]
                }
                self._stamp = stamp
            assert self.holder is not None
            return self.holder

    def check_token(self, header: str | None) -> None:
        self.current()
        m = _TOKEN_RE.match((header or "").removeprefix("Bearer ").strip())
        want = self.tokens.get(m.group(1)) if m else None
        if m is None or want is None or not hmac.compare_digest(want, _digest(m.group(2))):
            raise PermissionError("missing, unknown or revoked key-holder token")


# ------------------------------------------------------------------------------ the app
def create_keyholder_app(key_file: str | os.PathLike, *, max_body_bytes: int = MAX_BODY_BYTES):
    """The key holder's FastAPI app over ``key_file`` (module docstring lists the routes)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    state = _State(Path(key_file))
    state.current()  # fail at start-up, not on the first request
    app = FastAPI(title="ppfr key holder", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.keyholder = state

    async def _message(request: Request) -> tuple[dict[str, Any], list[bytes]]:
        state.check_token(request.headers.get("authorization"))
        body = await request.body()
        if len(body) > max_body_bytes:
            raise InputError(f"request of {len(body)} bytes exceeds {max_body_bytes}")
        return unpack_message(body)

    def _ints(header: dict[str, Any], name: str) -> list[int]:
        v = header.get(name)
        if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
            raise InputError(f"header field {name!r} must be a list of integers")
        return v

    def _key(header: dict[str, Any]) -> str | None:
        v = header.get("key_id")
        if v is not None and not isinstance(v, str):
            raise InputError("header field 'key_id' must be a string")
        return v

    @app.exception_handler(PermissionError)
    async def _denied(request: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    @app.exception_handler(PPFRError)
    async def _bad(request: Request, exc: PPFRError) -> JSONResponse:
        # a block under another key is a conflict with the current key, not a bad request
        status = 409 if isinstance(exc, DataError) and "key" in str(exc) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/public")
    def public(request: Request) -> Response:
        state.check_token(request.headers.get("authorization"))
        h = state.current()
        return Response(
            h.public_bytes(),
            media_type="application/octet-stream",
            headers={
                "x-ppfr-key-id": h.key_id,
                "x-ppfr-config": json.dumps(h.config.to_dict()),
                "x-ppfr-threshold": repr(h.threshold),
            },
        )

    @app.post("/v1/identify")
    async def identify(request: Request) -> dict[str, Any]:
        header, blobs = await _message(request)
        k = header.get("k")
        if not isinstance(k, int):
            raise InputError("header field 'k' must be an integer")
        h = state.current()
        hits = h.top_k(
            blobs, _ints(header, "block_ids"), int(header.get("n", 0)), k,
            key_id=_key(header),
        )  # fmt: skip
        return {"key_id": h.key_id, "matches": [[r, s] for r, s in hits]}

    @app.post("/v1/verify")
    async def verify(request: Request) -> dict[str, Any]:
        header, blobs = await _message(request)
        h = state.current()
        ok = h.decide(
            blobs, _ints(header, "block_ids"), int(header.get("n", 0)), _ints(header, "rows"),
            key_id=_key(header),
        )  # fmt: skip
        return {"key_id": h.key_id, "match": ok}

    return app


# ---------------------------------------------------------------------------- the client
class KeyHolderClient:
    """The matching server's side of the key holder: the same ``top_k``/``decide`` as an
    in-process :class:`~ppfr.templates.encrypted.KeyHolder`, over HTTP.

    Args:
        url: the key holder's base URL.
        token: a bearer token from ``ppfr keyholder token create``.
        client: an ``httpx.Client`` to use instead of a new one (tests pass FastAPI's
            ``TestClient``).
        timeout: seconds per request.
    """

    def __init__(
        self, url: str = "", token: str = "", *, client: Any = None, timeout: float = 30.0
    ) -> None:
        import httpx

        self._http = client if client is not None else httpx.Client(base_url=url, timeout=timeout)
        self._auth = {"authorization": f"Bearer {token}"}
        r = self._get("/v1/public")
        self._public = r.content
        self.key_id = r.headers["x-ppfr-key-id"]
        self.config = EncryptedConfig.from_dict(json.loads(r.headers["x-ppfr-config"]))
        self.threshold = float(r.headers["x-ppfr-threshold"])

    def public_bytes(self) -> bytes:
        return self._public

    def _check(self, r: Any) -> Any:
        if r.status_code == 401:
            raise PermissionError(r.json().get("detail", "unauthorised"))
        if r.status_code == 409:
            raise DataError(r.json()["detail"])
        if r.status_code >= 400:
            raise InputError(f"key holder answered {r.status_code}: {r.text[:200]}")
        return r

    def _get(self, path: str) -> Any:
        return self._check(self._http.get(path, headers=self._auth))

    def _post(self, path: str, header: dict[str, Any], blocks: Sequence[bytes]) -> Any:
        body = pack_message(header, blocks)
        headers = {**self._auth, "content-type": "application/octet-stream"}
        return self._check(self._http.post(path, content=body, headers=headers)).json()

    def top_k(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        k: int,
        *,
        key_id: str | None = None,
    ) -> list[tuple[int, float]]:
        header = {"key_id": key_id, "n": int(n), "k": int(k), "block_ids": list(block_ids)}
        return [
            (int(r), float(s)) for r, s in self._post("/v1/identify", header, blocks)["matches"]
        ]

    def decide(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        rows: Sequence[int],
        *,
        key_id: str | None = None,
    ) -> bool:
        header = {
            "key_id": key_id,
            "n": int(n),
            "rows": [int(r) for r in rows],
            "block_ids": list(block_ids),
        }
        return bool(self._post("/v1/verify", header, blocks)["match"])
