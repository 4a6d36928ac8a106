import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppfr.errors import InputError
from ppfr.serve.wire import HEADER_BYTES, decode_representation, encode_representation

FP = "0123456789abcdef" * 4
LIMIT = 1 << 20


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_roundtrip(dtype):
    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    msg = encode_representation(torch.from_numpy(x), FP, dtype=dtype)
    itemsize = 4 if dtype == "float32" else 2
    assert len(msg) == HEADER_BYTES + 4 * 4 + x.size * itemsize
    y, fp = decode_representation(msg, LIMIT)
    assert fp == FP and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=0 if dtype == "float32" else 1e-3)


def _valid() -> bytes:
    return encode_representation(np.ones((2, 3), np.float32), FP)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m[:10], "too short"),
        (lambda m: b"JPEG" + m[4:], "bad magic"),
        (lambda m: m[:4] + b"\x09" + m[5:], "version 9"),
        (lambda m: m[:5] + b"\x07" + m[6:], "dtype code 7"),
        (lambda m: m[:6] + b"\x00" + m[7:], "ndim"),
        (lambda m: m[:6] + b"\x09" + m[7:], "ndim"),
        (lambda m: m[:-4], "needs"),
        (lambda m: m + b"\x00" * 4, "needs"),
        (lambda m: m[:40] + struct.pack("<2I", 0, 3) + m[48:], "empty"),
        (lambda m: m[:40] + struct.pack("<2I", 2**31, 2**31) + m[48:], "larger than the limit"),
        (lambda m: m[:42], "truncated"),
    ],
)
def test_malformed_messages_are_input_errors(mutate, message):
    with pytest.raises(InputError, match=message):
        decode_representation(mutate(_valid()), LIMIT)


def test_limits_and_values():
    msg = _valid()
    with pytest.raises(InputError, match="exceeds the limit"):
        decode_representation(msg, len(msg) - 1)
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        decode_representation(encode_representation(bad, FP), LIMIT)
    bad[1, 2] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        decode_representation(encode_representation(bad, FP), LIMIT)
    with pytest.raises(InputError, match="expected bytes"):
        decode_representation("text", LIMIT)


def test_encode_rejects_bad_input():
    with pytest.raises(InputError, match="64 hex"):
        encode_representation(np.ones(3, np.float32), "abc")
    with pytest.raises(InputError, match="floating point"):
        encode_representation(np.ones((1, 3, 112, 112), np.uint8), FP)  # a raw image
    with pytest.raises(InputError, match="empty"):
        encode_representation(np.ones((0, 3), np.float32), FP)
    with pytest.raises(InputError, match="float32 or float16"):
        encode_representation(np.ones(3, np.float32), FP, dtype="float64")


_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_input_error(data):
    try:
        arr, fp = decode_representation(data, 4096)
    except InputError:
        return
    assert arr.dtype == np.float32 and len(fp) == 64


@_fuzz
@given(
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
    st.integers(0, 90),
    st.binary(max_size=20),
)
def test_fuzz_mutated_messages_only_input_error(flips, cut, tail):
    msg = bytearray(encode_representation(np.ones((2, 2, 3), np.float32), FP))
    for pos, val in flips:
        msg[pos % len(msg)] = val
    data = bytes(msg[: len(msg) - cut % len(msg)]) + tail
    try:
        arr, _ = decode_representation(data, 4096)
    except InputError:
        return
    assert np.isfinite(arr).all()
