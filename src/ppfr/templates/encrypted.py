r"""An encrypted gallery: identification over homomorphically encrypted ternary templates.

A stolen database and a breached matching server should hold nothing usable. Here the
matching server holds only ciphertexts and the public context (parameters and public key;
no evaluation keys: nothing is multiplied or rotated); the secret key lives with a separate
*key holder* (:class:`KeyHolder`, served by ``ppfr keyholder``), which decrypts score
blocks and releases only the top-k rows above its threshold, or a yes/no decision, never a
score vector. The construction follows IDFace (Kim, Paik, Hwang, Kim, Seo, Shin, ICCV
2025, arXiv 2507.12050): ternary templates, several templates per slot, and a probe whose
scores need ciphertext additions only. CKKS through TenSEAL is the backend
(:mod:`ppfr.templates._ckks`); anything with the small :class:`HEBackend` interface can
replace it.

Ternarisation (:func:`ternarise`). A template :math:`t \in \mathbb{R}^D` (D = 512) becomes
:math:`\tau(t) \in \{-1, 0, 1\}^D`: the :math:`g` coordinates of largest :math:`|t_i|` keep
their sign, the rest are 0 (gallery: :math:`g = 341 \approx 2D/3`; probe: :math:`h = 63`).
The score is the integer

.. math:: s(q, t) = \tau_h(q) \cdot \tau_g(t)
          = \sum_{i \in \mathrm{supp}\,\tau_h(q)} \tau_h(q)_i\, \tau_g(t)_i
          \in [-h, h],

and the reported score is :math:`s / \sqrt{g h}`, the cosine of the two ternary vectors
(both have a fixed number of non-zeros, so this is a constant rescaling: it changes neither
the ranking nor the accuracy, only the units a threshold is written in; the ternary cosine
runs smaller than the float cosine of the same pair, so a threshold must be calibrated on
ternary scores, docs/templates.md).

Column packing. Let the ring have :math:`S = N/2` slots. The gallery is cut into blocks of
:math:`S P` templates (:math:`P` = ``pack``); template :math:`r` of a block sits in slot
:math:`r \bmod S` at digit :math:`j = \lfloor r / S \rfloor`. Block :math:`b` is stored as
:math:`D` ciphertexts, one per coordinate :math:`i`:

.. math:: C_{b,i} = \mathrm{Enc}\Big(\big(\textstyle\sum_{j=0}^{P-1}
          \tau_g(t_{b,j,s})_i\, B^j\big)_{s=0}^{S-1}\Big), \qquad B = 2h + 1.

Scoring. For a probe with ternary :math:`\tau = \tau_h(q)`, the score block is the signed
sum of the :math:`h` ciphertexts at the probe's non-zero coordinates,

.. math:: Z_b = \sum_{i:\,\tau_i = 1} C_{b,i} - \sum_{i:\,\tau_i = -1} C_{b,i}
          = \mathrm{Enc}\Big(\big(\textstyle\sum_j s(q, t_{b,j,s})\, B^j\big)_s\Big)

by linearity of encryption: :math:`h` ciphertext additions per block, no multiplication, no
rotation, no key switching. Each digit :math:`s \in [-h, h]` is a balanced base-:math:`B`
digit, so the key holder reads all :math:`P` scores of a slot back from one rounded value
(:math:`d = ((v + h) \bmod B) - h`, :math:`v \leftarrow (v - d) / B`, :math:`P` times; the
remainder must end at 0).

Why it is fast. A gallery of :math:`n` templates is :math:`\lceil n / (S P) \rceil` blocks;
a query costs :math:`h \lceil n / (S P) \rceil` additions of ciphertexts of
:math:`2 N L` words (:math:`L` data primes), i.e. it reads :math:`16 N L h / (S P) = 32 L h /
P` bytes per template, against :math:`4D` = 2048 for a float32 flat scan. With the defaults
(:math:`h = 63`, :math:`P = 5`, :math:`L = 1`) that is 403 bytes per template: a fifth of
the flat scan's memory traffic. At 1M templates, N = 8192: 49 blocks, 3,087 additions of
128 KiB ciphertexts, and 49 decryptions at the key holder.

Range and precision. A slot holds :math:`v = \sum_j s_j B^j` with
:math:`|v| \le V = h (B^P - 1)/(B - 1)` (:math:`2^{33.9}` for the defaults). CKKS encodes
:math:`v` at scale :math:`\Delta = 2^{21}` in a data modulus :math:`q` (one 60-bit prime),
so it needs :math:`\Delta V < q / 2` (:math:`2^{54.9} < 2^{59}`: checked by
:class:`EncryptedConfig`); decryption returns :math:`v + \epsilon`, :math:`\epsilon` the
encryption noise of :math:`h` fresh ciphertexts over :math:`\Delta` plus the
double-precision rounding of encoding and decoding values near :math:`2^{34}`: measured at
most 0.04 (5 probes x 4,096 slots of a full block), an eighth of the 1/2 that rounding
tolerates. The key holder rejects a block whose values are not within
:data:`ROUND_TOL` of an integer, out of range, or leave a remainder: that is what a block
encrypted under another key (an old gallery after a re-key) decrypts to.

Security parameters. N = 8192 and a 120-bit modulus (60 + 60): below the 218 bits the
HomomorphicEncryption.org standard allows at N = 8192 for 128-bit security
(:data:`ppfr.templates._ckks.MAX_COEFF_BITS_128`; SEAL enforces the same table).
Ciphertexts are IND-CPA under RLWE: without the secret key they say nothing about the
templates. What the matching server sees in the clear: the subject names, the number of
templates, and each probe's ternary vector (its 63 signed coordinates; the probe is
transient, the gallery is not). Every enrolment adds a fresh encryption to every ciphertext
of the block it touches (even of zeros), so two stored snapshots do not reveal which
coordinates a new template has.

Storage. :math:`D` ciphertexts per :math:`S P` templates: :math:`2 N L \cdot 8 \cdot D /
(S P) = 32 L D / P` bytes per template in memory (3.3 KB for the defaults, 3.4 KB on disk
with TenSEAL's compression), against 2 KB for float32 plain templates.

Example:
    >>> import numpy as np
    >>> cfg = EncryptedConfig(dim=16, gallery_nnz=10, probe_nnz=4, pack=2,
    ...                       ckks=CKKSParams(2048, (30, 24), 18))
    >>> holder = KeyHolder.create(cfg, threshold=-1.0)
    >>> gallery = EncryptedGallery.for_key_holder(holder)
    >>> t = np.random.default_rng(0).standard_normal((3, 16))
    >>> gallery.enroll(t, ["a", "b", "c"])
    [0, 1, 2]
    >>> gallery.identify(t[1:2], holder, top_k=1)[0][0][0]
    'b'
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ppfr.errors import DataError, InputError
from ppfr.templates._ckks import CKKSBackend, CKKSParams

__all__ = [
    "ROUND_TOL",
    "CKKSParams",
    "EncryptedConfig",
    "EncryptedGallery",
    "HEBackend",
    "KeyHolder",
    "KeyHolderAPI",
    "pack_message",
    "ternarise",
    "unpack_message",
]

#: largest distance of a decrypted slot value from an integer that the key holder accepts;
#: honest noise is ~1e-3 (module docstring), a wrong key gives values uniform in [0, 1)
ROUND_TOL = 0.25
#: magic bytes of the score-block message (:func:`pack_message`) and of a key file
_MSG_MAGIC = b"PPFRHE01"
_KEY_MAGIC = b"PPFRKEY1"


class HEBackend(Protocol):
    """What the gallery needs of a homomorphic scheme (:class:`CKKSBackend` implements it).

    ``encrypt`` takes at most ``slots`` reals; ``add_``/``sub_`` update in place;
    ``combine(a, b, sa, sb)`` is a new ``sa * a + sb * b`` (signs +-1); ``decrypt`` exists
    only with the secret key (``has_secret_key``).
    """

    name: str
    slots: int

    @property
    def has_secret_key(self) -> bool: ...
    def public(self) -> HEBackend: ...
    def public_bytes(self) -> bytes: ...
    def encrypt(self, values: np.ndarray) -> Any: ...
    def add_(self, acc: Any, other: Any) -> None: ...
    def sub_(self, acc: Any, other: Any) -> None: ...
    def combine(self, a: Any, b: Any, sign_a: int, sign_b: int) -> Any: ...
    def dumps(self, ct: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...
    def decrypt(self, ct: Any) -> np.ndarray: ...
    def ciphertext_bytes(self) -> int: ...


@dataclass(frozen=True)
class EncryptedConfig:
    """Ternarisation, packing and CKKS parameters of an encrypted gallery.

    Attributes:
        dim: template dimension D.
        gallery_nnz: non-zeros g kept per enrolled template (IDFace: 341 of 512).
        probe_nnz: non-zeros h kept per probe (IDFace: 63); sets the base B = 2h + 1.
        pack: templates per slot P (base-B digits of one value).
        ckks: ring and moduli (:class:`~ppfr.templates._ckks.CKKSParams`).

    Raises :class:`InputError` when :math:`\\Delta V` (scale times the largest packed
    value, module docstring) does not fit in the data modulus with a bit to spare.
    """

    dim: int = 512
    gallery_nnz: int = 341
    probe_nnz: int = 63
    pack: int = 5
    ckks: CKKSParams = field(default_factory=CKKSParams)

    def __post_init__(self) -> None:
        for name in ("dim", "gallery_nnz", "probe_nnz", "pack"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.gallery_nnz > self.dim or self.probe_nnz > self.dim:
            raise InputError(
                f"gallery_nnz ({self.gallery_nnz}) and probe_nnz ({self.probe_nnz}) must not "
                f"exceed dim ({self.dim})"
            )
        need = math.log2(self.max_abs_value) + self.ckks.scale_bits
        if need > self.ckks.data_bits - 2:
            raise InputError(
                f"packed scores need {need:.1f} bits (log2 of {self.max_abs_value:.3g} plus "
                f"scale {self.ckks.scale_bits}) but the data modulus has "
                f"{self.ckks.data_bits}: lower pack or scale_bits, or add a data prime"
            )

    @property
    def base(self) -> int:
        """B = 2h + 1: a score in [-h, h] is one balanced base-B digit."""
        return 2 * self.probe_nnz + 1

    @property
    def max_abs_value(self) -> float:
        """V = h (B^P - 1) / (B - 1), the largest |slot value| of a score block."""
        return self.probe_nnz * (self.base**self.pack - 1) / (self.base - 1)

    @property
    def block_size(self) -> int:
        """Templates per block, S P."""
        return self.ckks.slots * self.pack

    @property
    def score_scale(self) -> float:
        """sqrt(g h): the integer score over this is the ternary cosine."""
        return math.sqrt(self.gallery_nnz * self.probe_nnz)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "gallery_nnz": self.gallery_nnz,
            "probe_nnz": self.probe_nnz,
            "pack": self.pack,
            "ckks": self.ckks.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncryptedConfig:
        try:
            return cls(
                int(d["dim"]),
                int(d["gallery_nnz"]),
                int(d["probe_nnz"]),
                int(d["pack"]),
                CKKSParams.from_dict(d["ckks"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"bad encrypted-gallery configuration {d!r}: {e}") from e


def ternarise(x: Any, nnz: int) -> np.ndarray:
    """The signs of the ``nnz`` largest-magnitude coordinates of each row; 0 elsewhere.

    A partial sort (linear time per row). Exact ties at the cut, which real-valued
    embeddings almost never have, are broken by ``numpy.argpartition``, deterministically.

    Shape:
        x ``(n, D)`` or ``(D,)`` float -> int8 of the same shape, exactly ``nnz`` non-zeros
        per row where the row has that many non-zero values.
    """
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    one = a.ndim == 1
    if one:
        a = a[None]
    if a.ndim != 2:
        raise InputError(f"templates must have shape (n, D) or (D,), got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("templates contain NaN or infinite values")
    if not 1 <= nnz <= a.shape[1]:
        raise InputError(f"nnz must lie in [1, {a.shape[1]}], got {nnz!r}")
    mag = np.abs(a)
    if nnz == a.shape[1]:
        top = np.broadcast_to(np.arange(nnz), a.shape)
    else:
        top = np.argpartition(-mag, nnz - 1, axis=1)[:, :nnz]
    out = np.zeros(a.shape, dtype=np.int8)
    rows = np.arange(a.shape[0])[:, None]
    out[rows, top] = np.sign(a[rows, top]).astype(np.int8)
    return out[0] if one else out


# ------------------------------------------------------------------------ wire format
def pack_message(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """One binary message: magic, a JSON header, then length-prefixed ciphertexts.

    Layout: ``PPFRHE01``, u32 header length, UTF-8 JSON, u32 count, then per blob a u64
    length and its bytes (little-endian). Base64 in JSON would add a third to megabytes.
    """
    h = json.dumps(header, separators=(",", ":")).encode()
    parts = [_MSG_MAGIC, struct.pack("<I", len(h)), h, struct.pack("<I", len(blobs))]
    for b in blobs:
        parts += [struct.pack("<Q", len(b)), bytes(b)]
    return b"".join(parts)


def unpack_message(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of :func:`pack_message`; :class:`DataError` on anything malformed."""
    mv = memoryview(data)
    try:
        if bytes(mv[:8]) != _MSG_MAGIC:
            raise DataError("not an encrypted score message (bad magic bytes)")
        (hl,) = struct.unpack_from("<I", mv, 8)
        header = json.loads(bytes(mv[12 : 12 + hl]))
        pos = 12 + hl
        (count,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        blobs = []
        for _ in range(count):
            (ln,) = struct.unpack_from("<Q", mv, pos)
            pos += 8
            if pos + ln > len(mv):
                raise DataError("encrypted score message is truncated")
            blobs.append(bytes(mv[pos : pos + ln]))
            pos += ln
    except (struct.error, ValueError) as e:
        raise DataError(f"malformed encrypted score message: {e}") from e
    if pos != len(mv) or not isinstance(header, dict):
        raise DataError("malformed encrypted score message: trailing bytes or bad header")
    return header, blobs


def _key_id(public: bytes) -> str:
    """The public key's fingerprint: galleries and score blocks name the key by it."""
    return hashlib.sha256(public).hexdigest()[:16]


class KeyHolderAPI(Protocol):
    """What the matching side asks of a key holder: :class:`KeyHolder` in-process, or
    :class:`ppfr.serve.keyholder.KeyHolderClient` over HTTP."""

    key_id: str

    def top_k(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        k: int,
        *,
        key_id: str | None = None,
    ) -> list[tuple[int, float]]: ...

    def decide(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        rows: Sequence[int],
        *,
        key_id: str | None = None,
    ) -> bool: ...


# ---------------------------------------------------------------------------- key holder
class KeyHolder:
    """The secret key, and the policy for what its decryptions may release.

    Args:
        backend: a context holding the secret key.
        config: the gallery configuration the key serves.
        threshold: least ternary cosine :math:`s / \\sqrt{g h}` a row needs to be released
            (:meth:`top_k`) or to count as a match (:meth:`decide`).
        max_k: most rows one :meth:`top_k` call may release.

    It answers with at most ``k`` (row, score) pairs above the threshold, or a boolean;
    the score vector it decodes never leaves :meth:`_scores` (score vectors feed
    reconstruction attacks: Kim et al., "Scores Tell Everything about Bob", S&P 2024).
    :attr:`last_seconds` is the time of the last call (decode + decision), for benchmarks.
    """

    def __init__(
        self,
        backend: CKKSBackend,
        config: EncryptedConfig,
        *,
        threshold: float = 0.0,
        max_k: int = 100,
    ) -> None:
        if not backend.has_secret_key:
            raise InputError("a key holder needs a context with the secret key")
        if not -1.0 <= float(threshold) <= 1.0:
            raise InputError(f"threshold is a ternary cosine in [-1, 1], got {threshold!r}")
        if int(max_k) != max_k or max_k < 1:
            raise InputError(f"max_k must be a positive integer, got {max_k!r}")
        self._backend = backend
        self.config = config
        self.threshold = float(threshold)
        self.max_k = int(max_k)
        self._public = backend.public_bytes()
        self.key_id = _key_id(self._public)
        self.created = time.time()
        self.last_seconds = 0.0

    @classmethod
    def create(cls, config: EncryptedConfig | None = None, **kwargs: Any) -> KeyHolder:
        """A fresh key pair for ``config`` (default :class:`EncryptedConfig`)."""
        cfg = config if config is not None else EncryptedConfig()
        return cls(CKKSBackend.generate(cfg.ckks), cfg, **kwargs)

    def public_bytes(self) -> bytes:
        """What the matching server gets: the public context, no secret key."""
        return self._public

    # --------------------------------------------------------------------- key file
    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the key file (secret context + configuration), readable by its owner only.

        ``extra`` (JSON) rides along in the header, e.g. the service's token hashes.
        """
        header = {
            "key_id": self.key_id,
            "backend": self._backend.name,
            "config": self.config.to_dict(),
            "threshold": self.threshold,
            "max_k": self.max_k,
            "created": self.created,
            "extra": extra or {},
        }
        h = json.dumps(header).encode()
        data = _KEY_MAGIC + struct.pack("<I", len(h)) + h + self._backend.secret_bytes()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        # created 0600 before anything is written: the secret key is never world-readable
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> tuple[KeyHolder, dict[str, Any]]:
        """A key file written by :meth:`save` -> (key holder, its ``extra`` header)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no key file there")
        data = path.read_bytes()
        if data[:8] != _KEY_MAGIC:
            raise DataError(f"{path}: not a ppfr key-holder key file")
        try:
            (hl,) = struct.unpack_from("<I", data, 8)
            header = json.loads(data[12 : 12 + hl])
            cfg = EncryptedConfig.from_dict(header["config"])
        except (struct.error, ValueError, KeyError) as e:
            raise DataError(f"{path}: corrupt key file header ({e})") from e
        backend = CKKSBackend.from_bytes(data[12 + hl :], cfg.ckks)
        kw = {"threshold": header.get("threshold", 0.0), "max_k": header.get("max_k", 100)}
        kw.update(overrides)
        holder = cls(backend, cfg, **kw)
        holder.created = float(header.get("created", holder.created))
        if holder.key_id != header.get("key_id"):
            raise DataError(f"{path}: key id does not match the key it holds")
        return holder, dict(header.get("extra") or {})

    # ------------------------------------------------------------------------ decoding
    def _scores(
        self, blocks: Sequence[bytes], block_ids: Sequence[int], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decrypt and unpack score blocks -> (rows, integer scores). Private by design."""
        cfg = self.config
        if len(blocks) != len(block_ids):
            raise InputError(f"{len(blocks)} score blocks but {len(block_ids)} block ids")
        nblocks = -(-int(n) // cfg.block_size)
        slots, base, h = cfg.ckks.slots, cfg.base, cfg.probe_nnz
        rows_out, scores_out = [], []
        for blob, b in zip(blocks, block_ids, strict=True):
            if not 0 <= int(b) < nblocks:
                raise InputError(f"block id {b} outside a gallery of {n} rows")
            v = self._backend.decrypt(self._backend.loads(blob))[:slots]
            r = np.rint(v)
            # a block under another key decrypts to values uniform mod q: far from integers
            # and out of range; honest noise is ~1e-3 (module docstring)
            if (np.abs(v - r) > ROUND_TOL).any() or (np.abs(r) > cfg.max_abs_value).any():
                raise DataError(
                    f"score block {b} does not decrypt to scores under key {self.key_id}: it "
                    "was made under another key (a gallery enrolled before a re-key) or is "
                    "corrupt"
                )
            rem = r.astype(np.int64)
            digits = np.empty((cfg.pack, slots), dtype=np.int64)
            for j in range(cfg.pack):
                d = np.mod(rem + h, base) - h
                digits[j] = d
                rem = (rem - d) // base
            if (rem != 0).any():
                raise DataError(f"score block {b} has digits beyond the packing: wrong key")
            rows = int(b) * cfg.block_size + np.arange(cfg.block_size)
            keep = rows < n
            rows_out.append(rows[keep])
            scores_out.append(digits.reshape(-1)[keep])
        if not rows_out:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(rows_out), np.concatenate(scores_out)

    def _check_key(self, key_id: str | None) -> None:
        if key_id is not None and key_id != self.key_id:
            raise DataError(
                f"score blocks were made under key {key_id}, this key holder has {self.key_id}"
                " (re-enrol the gallery under the current key)"
            )

    def top_k(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        k: int,
        *,
        key_id: str | None = None,
    ) -> list[tuple[int, float]]:
        """At most ``min(k, max_k)`` (row, ternary cosine) pairs at or above the threshold,
        best first (ties: lower row first).

        Shape:
            blocks: serialised score ciphertexts, one per block id; ``n``: gallery rows.
        """
        t0 = time.perf_counter()
        if int(k) != k or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        self._check_key(key_id)
        rows, s = self._scores(blocks, block_ids, n)
        k = min(int(k), self.max_k)
        ok = s >= self.threshold * self.config.score_scale - 1e-9
        rows, s = rows[ok], s[ok]
        if len(s) > k:
            # the k-th best score; among rows tied with it the lower rows win, so the
            # answer does not depend on the partition's order
            kth = -np.partition(-s, k - 1)[k - 1]
            above = np.flatnonzero(s > kth)
            tied = np.flatnonzero(s == kth)
            tied = tied[np.argsort(rows[tied], kind="stable")][: k - len(above)]
            sel = np.concatenate([above, tied])
            rows, s = rows[sel], s[sel]
        order = np.lexsort((rows, -s))
        out = [(int(rows[i]), float(s[i] / self.config.score_scale)) for i in order]
        self.last_seconds = time.perf_counter() - t0
        return out

    def decide(
        self,
        blocks: Sequence[bytes],
        block_ids: Sequence[int],
        n: int,
        rows: Sequence[int],
        *,
        key_id: str | None = None,
    ) -> bool:
        """Whether any of ``rows`` scores at or above the threshold (1:1 verification)."""
        t0 = time.perf_counter()
        self._check_key(key_id)
        all_rows, s = self._scores(blocks, block_ids, n)
        want = np.asarray(list(rows), dtype=np.int64)
        if want.size == 0:
            raise InputError("decide needs at least one row")
        sel = np.isin(all_rows, want)
        if sel.sum() != len(np.unique(want)):
            raise InputError("some rows are not in the score blocks sent")
        out = bool((s[sel] >= self.threshold * self.config.score_scale - 1e-9).any())
        self.last_seconds = time.perf_counter() - t0
        return out


# ------------------------------------------------------------------------- the gallery
class EncryptedGallery:
    """Column-packed encrypted ternary templates (module docstring), the matching side.

    Args:
        backend: a *public* context (it must not hold the secret key).
        config: the configuration the key holder serves.
        key_id: the fingerprint of the public key (checked against ``backend``).

    :attr:`blocks` is a list of blocks, each a list of ``dim`` ciphertexts; :attr:`subjects`
    names the subject of every row. Rows are numbered in enrolment order.

    Shape:
        enrolment ``(m, dim)`` templates; ``n`` rows occupy ``ceil(n / (S P))`` blocks of
        ``dim`` ciphertexts of ``S = N/2`` slots.
    """

    def __init__(self, backend: HEBackend, config: EncryptedConfig, key_id: str) -> None:
        if backend.has_secret_key:
            raise InputError(
                "the matching side must hold only the public context; pass "
                "KeyHolder.public_bytes(), not the secret context"
            )
        if _key_id(backend.public_bytes()) != key_id:
            raise DataError(f"public context does not belong to key {key_id}")
        self.backend = backend
        self.config = config
        self.key_id = key_id
        self.blocks: list[list[Any]] = []
        self.subjects: list[str] = []
        self._counts: Counter[str] = Counter()  # rows per subject

    @classmethod
    def from_public(cls, public: bytes, config: EncryptedConfig) -> EncryptedGallery:
        """An empty gallery under the public context ``public``."""
        backend = CKKSBackend.from_bytes(public, config.ckks)
        return cls(backend, config, _key_id(backend.public_bytes()))

    @classmethod
    def for_key_holder(cls, holder: KeyHolder) -> EncryptedGallery:
        """An empty gallery under ``holder``'s public key (a test and benchmark shortcut)."""
        return cls.from_public(holder.public_bytes(), holder.config)

    @property
    def n(self) -> int:
        return len(self.subjects)

    # --------------------------------------------------------------------- enrolment
    def enroll(self, templates: Any, subjects: Sequence[str]) -> list[int]:
        """Ternarise and encrypt ``templates`` into the gallery; returns their row ids.

        Every ciphertext of every block touched gets a fresh encryption added (of the new
        templates' digits, zeros elsewhere): the stored ciphertexts are re-randomised as a
        whole, so comparing snapshots before and after says nothing about the new rows.
        Cost: ``dim`` encryptions per block touched, whatever the batch size; enrol in
        batches.
        """
        cfg = self.config
        shape = np.shape(templates)
        if len(shape) not in (1, 2) or shape[-1] != cfg.dim:
            raise InputError(f"templates must have shape (n, {cfg.dim}), got {shape}")
        tern = ternarise(templates, cfg.gallery_nnz)
        if tern.ndim == 1:
            tern = tern[None]
        names = [str(s) for s in subjects]
        if len(names) != len(tern):
            raise InputError(f"{len(tern)} templates but {len(names)} subject names")
        first = self.n
        slots, bs = cfg.ckks.slots, cfg.block_size
        weights = float(cfg.base) ** np.arange(cfg.pack)  # B^j, exact in float64
        r, end = first, first + len(tern)
        while r < end:
            b = r // bs
            stop = min(end, (b + 1) * bs)
            local = np.arange(r, stop) - b * bs
            digit, slot = local // slots, local % slots
            values = np.zeros((cfg.dim, slots))
            chunk = tern[r - first : stop - first]
            # column s of coordinate i gains tau_i * B^j for each new template (j, s); within
            # one digit the slots are distinct, so a plain fancy-indexed add is exact
            for j in np.unique(digit):
                m = digit == j
                values[:, slot[m]] += chunk[m].T * weights[j]
            if b == len(self.blocks):
                self.blocks.append([self.backend.encrypt(values[i]) for i in range(cfg.dim)])
            else:
                block = self.blocks[b]
                for i in range(cfg.dim):
                    self.backend.add_(block[i], self.backend.encrypt(values[i]))
            r = stop
        self.subjects.extend(names)
        self._counts.update(names)
        return list(range(first, end))

    # ----------------------------------------------------------------------- scoring
    def score_blocks(
        self, probe: Any, block_ids: Sequence[int] | None = None
    ) -> tuple[list[bytes], list[int]]:
        """Encrypted score blocks of one probe: h signed ciphertext additions per block.

        Returns the serialised blocks and their ids (all blocks by default).

        Shape:
            probe ``(dim,)`` float template (ternarised here with ``probe_nnz``).
        """
        cfg = self.config
        tau = ternarise(probe, cfg.probe_nnz)
        if tau.ndim != 1 or tau.shape[0] != cfg.dim:
            raise InputError(f"a probe is one template of {cfg.dim} values, got {tau.shape}")
        idx = np.flatnonzero(tau)
        if idx.size == 0:
            raise InputError("the probe is all zeros; it has no coordinates to score")
        signs = tau[idx]
        ids = list(range(len(self.blocks))) if block_ids is None else [int(b) for b in block_ids]
        out = []
        be = self.backend
        for b in ids:
            cts = self.blocks[b]
            if len(idx) == 1:  # c - c is a zero to accumulate into (copying costs more)
                acc, rest = (
                    be.combine(cts[idx[0]], cts[idx[0]], 1, -1),
                    zip(idx, signs, strict=True),
                )
            else:
                acc = be.combine(cts[idx[0]], cts[idx[1]], int(signs[0]), int(signs[1]))
                rest = zip(idx[2:], signs[2:], strict=True)
            for i, s in rest:
                if s > 0:
                    be.add_(acc, cts[i])
                else:
                    be.sub_(acc, cts[i])
            out.append(be.dumps(acc))
        return out, ids

    def identify(
        self, queries: Any, holder: KeyHolderAPI, top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """For each query, at most ``top_k`` subjects the key holder releases, best first.

        The key holder returns rows; a subject's score is its best row. It is asked for
        ``top_k`` times the most rows any subject has, so ``top_k`` distinct subjects come
        back whenever that many clear its threshold.

        Shape:
            queries ``(m, dim)`` or ``(dim,)``.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        q = np.asarray(queries.detach().cpu() if hasattr(queries, "detach") else queries)
        q = q[None] if q.ndim == 1 else q
        if self.n == 0:
            return [[] for _ in range(len(q))]
        per = max(self._counts.values())
        out = []
        for row in q:
            blocks, ids = self.score_blocks(row)
            hits = holder.top_k(blocks, ids, self.n, top_k * per, key_id=self.key_id)
            seen: dict[str, float] = {}
            for r, s in hits:
                seen.setdefault(self.subjects[r], s)
            out.append(list(seen.items())[:top_k])
        return out

    def verify(self, query: Any, subject: str, holder: KeyHolderAPI) -> bool:
        """The key holder's decision: does ``query`` match any of ``subject``'s rows?"""
        rows = [i for i, s in enumerate(self.subjects) if s == subject]
        if not rows:
            raise InputError(f"subject {subject!r} is not enrolled")
        ids = sorted({r // self.config.block_size for r in rows})
        blocks, ids = self.score_blocks(query, ids)
        return holder.decide(blocks, ids, self.n, rows, key_id=self.key_id)

    # ------------------------------------------------------------------------ storage
    def memory_bytes(self) -> int:
        """Bytes of ciphertext data held in memory."""
        return sum(len(b) for b in self.blocks) * self.backend.ciphertext_bytes()

    def save(self, directory: str | os.PathLike, blocks: Sequence[int] | None = None) -> int:
        """Write the gallery (public context, one file per block, names); returns the bytes
        it occupies on disk.

        ``blocks``: rewrite only these block files (after an enrolment touched them); the
        others must already be there.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "ppfr-encrypted-gallery/1",
            "backend": self.backend.name,
            "key_id": self.key_id,
            "config": self.config.to_dict(),
            "blocks": len(self.blocks),
            "subjects": self.subjects,
        }
        if blocks is None or not (d / "public.ctx").is_file():
            (d / "public.ctx").write_bytes(self.backend.public_bytes())
        todo = range(len(self.blocks)) if blocks is None else blocks
        for b in todo:
            blob = pack_message({"block": b}, [self.backend.dumps(c) for c in self.blocks[b]])
            tmp = d / f"block-{b:05d}.bin.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, d / f"block-{b:05d}.bin")  # a reader never sees half a block
        # the names last: a gallery.json never lists rows whose block is not written yet
        tmp = d / "gallery.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, d / "gallery.json")
        return sum(f.stat().st_size for f in d.iterdir() if f.is_file())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EncryptedGallery:
        d = Path(directory)
        if not (d / "gallery.json").is_file():
            raise DataError(f"{d}: no encrypted gallery there (gallery.json missing)")
        meta = json.loads((d / "gallery.json").read_text())
        if meta.get("format") != "ppfr-encrypted-gallery/1":
            raise DataError(f"{d}: unknown gallery format {meta.get('format')!r}")
        cfg = EncryptedConfig.from_dict(meta["config"])
        g = cls.from_public((d / "public.ctx").read_bytes(), cfg)
        if g.key_id != meta["key_id"]:
            raise DataError(f"{d}: public context does not match the gallery's key id")
        for b in range(int(meta["blocks"])):
            header, blobs = unpack_message((d / f"block-{b:05d}.bin").read_bytes())
            if header.get("block") != b or len(blobs) != cfg.dim:
                raise DataError(f"{d}: block file {b} is corrupt")
            g.blocks.append([g.backend.loads(x) for x in blobs])
        g.subjects = [str(s) for s in meta["subjects"]]
        g._counts = Counter(g.subjects)
        return g
