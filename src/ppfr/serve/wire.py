"""The wire format: one compact binary message carrying a batch of protected representations.

What a client sends to the service is never an image and never JSON floats, but this::

    offset  size  field
    0       4     magic  b"PPFR"
    4       1     format version (1)
    5       1     dtype code: 1 = float32, 2 = float16 (little-endian)
    6       1     ndim (1..8): the array's number of dimensions, batch first
    7       1     reserved, 0
    8       32    client fingerprint: the SHA-256 (raw bytes) of the client model that made it
    40      4*nd  shape, uint32 little-endian each
    ...           the array, C order, little-endian

A batch of ``N`` MinusFace representations is one array ``(N, 3, 112, 112)``: enrolling a
subject with several images sends one message. float16 halves the bytes; the server widens
to float32 before embedding.

:func:`decode_representation` reads untrusted bytes: every malformed message (short,
wrong magic or version, unknown dtype, shape and length that disagree, too large, NaN or
infinite values) raises :class:`~ppfr.errors.InputError` with a message naming the
problem, and nothing else.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ppfr.errors import InputError

MAGIC = b"PPFR"
VERSION = 1
MEDIA_TYPE = "application/octet-stream"
MAX_NDIM = 8
_HEAD = struct.Struct("<4sBBBB32s")
HEADER_BYTES = _HEAD.size  # 40, plus 4 bytes per dimension
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_CODES = {dt: code for code, dt in DTYPES.items()}


def _fingerprint_bytes(fingerprint: str) -> bytes:
    try:
        raw = bytes.fromhex(fingerprint)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise InputError(f"fingerprint must be 64 hex digits (a SHA-256), got {fingerprint!r:.80}")
    return raw


def encode_representation(p: Any, fingerprint: str, dtype: str = "float32") -> bytes:
    """Pack a batch of representations with the fingerprint of the client that made them.

    Args:
        p: array or tensor, batch first (e.g. ``(N, 3, 112, 112)``); converted to ``dtype``.
        fingerprint: the client model's fingerprint, ``model.fingerprint("client")``.
        dtype: ``"float32"`` or ``"float16"`` on the wire.

    Shape:
        - p: :math:`(N, *)` with 1 to 8 dimensions in all

    Example:
        >>> import numpy as np
        >>> msg = encode_representation(np.zeros((2, 3, 4), np.float32), "ab" * 32)
        >>> len(msg) == 40 + 3 * 4 + 2 * 3 * 4 * 4
        True
    """
    if hasattr(p, "detach"):  # a torch tensor
        p = p.detach().cpu().numpy()
    arr = np.asarray(p)
    want = np.dtype(dtype).newbyteorder("<")
    if want not in _CODES:
        raise InputError(f"wire dtype must be float32 or float16, got {dtype!r}")
    if not 1 <= arr.ndim <= MAX_NDIM:
        raise InputError(f"representations must have 1..{MAX_NDIM} dimensions, got {arr.ndim}")
    if arr.size == 0:
        raise InputError(f"nothing to send: empty array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"representations must be floating point, got {arr.dtype}")
    head = _HEAD.pack(MAGIC, VERSION, _CODES[want], arr.ndim, 0, _fingerprint_bytes(fingerprint))
    shape = struct.pack(f"<{arr.ndim}I", *arr.shape)
    return head + shape + np.ascontiguousarray(arr, dtype=want).tobytes()


def decode_representation(data: bytes, max_bytes: int) -> tuple[np.ndarray, str]:
    """Unpack a message: ``(array as float32, client fingerprint as hex)``.

    Raises only :class:`~ppfr.errors.InputError` (see the module docstring).

    Shape:
        - output array: the shape in the header, batch first, float32
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise InputError(f"message of {len(data):,} bytes exceeds the limit of {max_bytes:,}")
    if len(data) < HEADER_BYTES:
        raise InputError(
            f"message too short for a ppfr representation ({len(data)} bytes, header is "
            f"{HEADER_BYTES}); send the output of ppfr.serve.wire.encode_representation"
        )
    magic, version, code, ndim, _, fp = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise InputError(
            "not a ppfr representation (bad magic); raw images are never accepted: "
            "protect faces on the client and send encode_representation(...)"
        )
    if version != VERSION:
        raise InputError(f"wire format version {version} is not supported (this server: 1)")
    if code not in DTYPES:
        raise InputError(f"unknown dtype code {code} (1 = float32, 2 = float16)")
    if not 1 <= ndim <= MAX_NDIM:
        raise InputError(f"ndim must be 1..{MAX_NDIM}, got {ndim}")
    end = HEADER_BYTES + 4 * ndim
    if len(data) < end:
        raise InputError("message truncated inside its shape")
    shape = struct.unpack_from(f"<{ndim}I", data, HEADER_BYTES)
    if 0 in shape:
        raise InputError(f"empty array of shape {shape}")
    dt = DTYPES[code]
    count = 1
    for s in shape:  # python ints: no overflow, and stop early on absurd shapes
        count *= s
        if count * dt.itemsize > max_bytes:
            raise InputError(f"shape {shape} is larger than the limit of {max_bytes:,} bytes")
    if len(data) - end != count * dt.itemsize:
        raise InputError(
            f"shape {shape} of {dt.name} needs {count * dt.itemsize:,} bytes, "
            f"the message carries {len(data) - end:,}"
        )
    arr = np.frombuffer(data, dtype=dt, offset=end).reshape(shape).astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError("representation contains NaN or infinite values")
    return arr, fp.hex()
