"""API keys: ``ppfr_<key_id>_<secret>``, stored only as a salted scrypt hash, scoped to galleries.

- ``key_id`` (12 hex digits) is public: it names the key in listings, logs and revocation.
- ``secret`` (48 hex digits, 192 bits from :mod:`secrets`) is shown once, at creation.
- The store keeps ``scrypt$N$r$p$<salt hex>$<hash hex>`` (N = 2^14, r = 8, p = 1, 16-byte
  salt, 32-byte hash), never the secret. Checking compares digests with
  :func:`hmac.compare_digest` (constant time).
- A key lists the galleries it may use; a call to any other gallery is refused (403), a
  revoked or unknown key or a wrong secret is refused (401).

scrypt is slow on purpose (it slows guessing from a stolen key table). So that
every request does not pay it, :class:`Authenticator` remembers, per key, the SHA-256 of a
secret it already verified against the stored hash; the key record (revocation, galleries)
is still read from the store on every request, so revoking takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from ppfr.errors import InputError, PPFRError

PREFIX = "ppfr"
_KEY_RE = re.compile(r"^ppfr_([0-9a-f]{12})_([0-9a-f]{48})$")
_GALLERY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthError(PPFRError):
    """A request's credentials are missing or invalid (401) or not allowed here (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def check_gallery_name(name: str) -> str:
    """Gallery names: 1-64 of letters, digits, ``.``, ``_``, ``-``, starting alphanumeric."""
    if not isinstance(name, str) or not _GALLERY_RE.match(name):
        raise InputError(
            f"invalid gallery name {name!r:.80}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(key_id, secret, "ppfr_<key_id>_<secret>")``."""
    key_id, secret = secrets.token_hex(6), secrets.token_hex(24)
    return key_id, secret, f"{PREFIX}_{key_id}_{secret}"


def parse_key(token: str) -> tuple[str, str]:
    """``"ppfr_<key_id>_<secret>"`` -> ``(key_id, secret)``; AuthError (401) if malformed."""
    m = _KEY_RE.match(token.strip()) if isinstance(token, str) else None
    if m is None:
        raise AuthError("malformed API key (expected ppfr_<key_id>_<secret>)")
    return m.group(1), m.group(2)


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt hash of a secret, as stored: ``scrypt$N$r$p$salt$hash`` (hex)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a stored hash (constant-time compare of the digests)."""
    try:
        scheme, n, r, p, salt, want = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
        return hmac.compare_digest(got, bytes.fromhex(want))
    except (ValueError, TypeError):
        return False


def create_key(store: Any, galleries: Sequence[str]) -> tuple[str, str]:
    """Create a key allowed on ``galleries``; returns ``(key_id, full key to hand out once)``."""
    galleries = [check_gallery_name(g) for g in galleries]
    if not galleries:
        raise InputError("a key needs at least one gallery (--gallery G)")
    key_id, secret, token = new_key()
    store.add_api_key(key_id, hash_secret(secret), galleries)
    return key_id, token


def token_from_headers(headers: Any) -> str:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Authorization header must be 'Bearer <api key>'")
        return value.strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    raise AuthError("missing API key (send 'Authorization: Bearer <key>' or 'X-API-Key')")


class Authenticator:
    """Checks keys against a store (see the module docstring for the cache)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._verified: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def authenticate(self, token: str) -> Any:
        """The key's record, or AuthError (401)."""
        key_id, secret = parse_key(token)
        record = self.store.get_api_key(key_id)
        if record is None:
            raise AuthError("unknown API key")
        if record.revoked:
            raise AuthError(f"API key {key_id} has been revoked")
        seen = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            cached = self._verified.get((key_id, record.secret_hash))
        if cached is not None and hmac.compare_digest(cached, seen):
            return record
        if not verify_secret(secret, record.secret_hash):
            raise AuthError("invalid API key")
        with self._lock:
            self._verified[(key_id, record.secret_hash)] = seen
        return record

    @staticmethod
    def authorize(record: Any, gallery: str) -> None:
        """AuthError (403) unless the key may use ``gallery``."""
        if gallery not in record.galleries:
            raise AuthError(f"API key {record.key_id} may not use gallery {gallery!r}", 403)
