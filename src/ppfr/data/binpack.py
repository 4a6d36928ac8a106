"""Verification ``.bin`` packs (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW as the field ships them).

A pack is a pickle of ``(images, issame)``: ``images`` holds 2N encoded images (JPEG or
PNG bytes; in some packs 1-D uint8 numpy arrays of those bytes) and ``issame`` N flags.
Pair ``i`` is images ``2i`` and ``2i+1``.

Packs are passed around the internet, so a pack is untrusted input and a plain
``pickle.load`` would run whatever code the file names. :func:`read_bin` unpickles with
:class:`SafeUnpickler`, which resolves only plain containers and a stand-in for numpy's
array reconstruction: numpy state from the file never reaches a real numpy object (numpy's
own ``dtype.__setstate__`` accepts arbitrary flags), the stand-in rebuilds a plain numeric
array from the raw bytes itself.

Example:
    >>> import numpy as np
    >>> faces = np.zeros((4, 112, 112, 3), np.uint8)
    >>> write_bin("tiny.bin", faces, [True, False], format="png")
    >>> read_bin("tiny.bin").describe()["pairs"]
    2
"""

from __future__ import annotations

import builtins
import io
import math
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ppfr.data.base import VerificationPairs
from ppfr.data.images import FACE_SIZE, decode_image, to_uint8
from ppfr.errors import DataError, InputError

__all__ = [
    "SafeUnpickler",
    "as_uint8_image",
    "describe_bin",
    "encode_image",
    "read_bin",
    "safe_loads",
    "write_bin",
]

# ---------------------------------------------------------------------------------------
# encoding helpers (shared with recordio.py)


def as_uint8_image(img: Any) -> np.ndarray:
    """One face as RGB uint8 (H, W, 3).

    uint8 input (numpy or torch) is taken as an image, (H, W, 3) or grey (H, W); float
    input follows ppfr's tensor convention, (3, H, W) in [-1, 1].
    """
    if isinstance(img, torch.Tensor):
        if img.is_floating_point():
            if img.ndim != 3 or img.shape[0] != 3:
                raise InputError(
                    f"float faces must be (3, H, W) in [-1, 1], got {tuple(img.shape)}"
                )
            return to_uint8(img)
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.dtype.kind == "f":
        return as_uint8_image(torch.from_numpy(np.ascontiguousarray(img)))
    if img.dtype != np.uint8:
        raise InputError(f"faces must be uint8 images or float tensors, got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"uint8 faces must be (H, W, 3), got {img.shape}")
    return np.ascontiguousarray(img)


def encode_image(img: Any, format: str = "jpeg", quality: int = 95) -> bytes:
    """Encode one face (anything :func:`as_uint8_image` takes) as JPEG or PNG bytes."""
    fmt = format.lower()
    if fmt not in ("jpeg", "jpg", "png"):
        raise InputError(f"format must be 'jpeg' or 'png', got {format!r}")
    buf = io.BytesIO()
    pil = Image.fromarray(as_uint8_image(img))
    if fmt == "png":
        pil.save(buf, "PNG")
    else:
        pil.save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# restricted unpickling

# numeric dtypes a pack may legitimately contain (encoded bytes, flags)
_SAFE_DTYPE_CODES = {
    "b1", "?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8",
}  # fmt: skip


def _text(x: Any) -> str:
    # py2 packs unpickled with encoding="bytes" hand us str fields as bytes
    return x.decode("latin1") if isinstance(x, bytes | bytearray) else str(x)


class _DTypeStub:
    """Stands in for ``numpy.dtype(code, align, copy)`` plus its pickled state."""

    def __init__(self, code: Any = None, *_args: Any) -> None:
        self.code = _text(code)
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]);
        # flags/elsize are ignored on purpose: the real dtype is rebuilt from the code alone
        if not isinstance(state, tuple) or len(state) < 5:
            raise pickle.UnpicklingError("malformed numpy dtype state")
        if any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("structured numpy dtypes are not allowed")
        self.byteorder = _text(state[1])

    def real(self) -> np.dtype:
        if self.code not in _SAFE_DTYPE_CODES or self.byteorder not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError(f"numpy dtype {self.code!r} is not allowed")
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in ("<", ">") else dt


def _array_from(raw: Any, dtype: Any, shape: Any) -> np.ndarray:
    if not isinstance(dtype, _DTypeStub):
        raise pickle.UnpicklingError("numpy array without a dtype")
    if isinstance(raw, str):  # py3 protocol<3 pickles may carry raw data as latin-1 text
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray | memoryview | pickle.PickleBuffer):
        raise pickle.UnpicklingError("numpy array data must be raw bytes")
    dt = dtype.real()
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape) or math.prod(shape) * dt.itemsize != len(memoryview(raw)):
        raise pickle.UnpicklingError(f"numpy array of shape {shape} does not match its data")
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()  # copy: writable, owns data


class _ArrayStub:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, ...)``."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, rawdata); very old pickles omit the version
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state
        arr = _array_from(raw, dtype, shape)
        self.array = arr.reshape(arr.shape[::-1]).T if fortran else arr


_NDARRAY = object()  # what the file's reference to numpy.ndarray resolves to


def _reconstruct(cls: Any, *_args: Any) -> _ArrayStub:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    arr = _array_from(buf, dtype, shape)
    return arr.reshape(arr.shape[::-1]).T if _text(order) == "F" else arr


def _scalar(dtype: Any, raw: Any = b"") -> Any:
    return _array_from(raw, dtype, ()).item()


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # how protocol-2 pickles written by Python 3 spell a bytes object
    if _text(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return str(text).encode("latin1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", n): getattr(builtins, n)
       for n in ("bytes", "bytearray", "list", "tuple", "set", "frozenset", "bool", "int",
                 "float", "str", "dict")},
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTypeStub,
    ("_codecs", "encode"): _latin1_encode,
}  # fmt: skip


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only plain data and (rebuilt) numeric numpy arrays.

    Anything else a pickle names (``os.system``, arbitrary classes, object arrays) raises
    :class:`pickle.UnpicklingError`. Arrays come back as :class:`_ArrayStub` objects with
    an ``array`` attribute when pickled via ``_reconstruct``; :func:`safe_loads` replaces
    them with the arrays.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only plain data and numeric numpy "
                "arrays are allowed in a .bin pack"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def _materialize(obj: Any, depth: int = 0) -> Any:
    """Replace array stubs by their arrays in the (shallow) containers of a pack."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without data")
        return obj.array
    if isinstance(obj, _DTypeStub):
        raise pickle.UnpicklingError("bare numpy dtype in a pack")
    if depth < 3 and isinstance(obj, list | tuple):
        out = [_materialize(x, depth + 1) for x in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    return obj


def safe_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler` (``encoding`` as in :mod:`pickle`)."""
    obj = SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    return _materialize(obj)


# ---------------------------------------------------------------------------------------
# reading


def _load_pack(path: Path) -> tuple[list[Any], np.ndarray]:
    """Unpickle and check the structure of a pack; images stay encoded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not data:
        raise DataError(f"{path}: empty file, not a .bin pack")
    # pickles start with PROTO (protocol >= 2) or a container opcode (0 and 1)
    if not (data[:1] == b"\x80" and len(data) > 1 and data[1] <= 5) and data[:1] not in b"(]}":
        raise DataError(f"{path}: not a pickle (starts with {data[:8]!r}), not a .bin pack")
    # Python 2 packs hold images as str; decoding them as ASCII fails, as bytes works
    obj, last_err = None, None
    for encoding in ("ASCII", "bytes"):
        try:
            obj = safe_loads(data, encoding=encoding)
            break
        except UnicodeDecodeError as e:
            last_err = e
        except EOFError:
            raise DataError(f"{path}: truncated pickle (file ends early)") from None
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "truncated" in msg or "ran out" in msg.lower():
                raise DataError(f"{path}: truncated pickle ({msg})") from None
            raise DataError(f"{path}: not a valid .bin pack ({msg})") from None
        except (ValueError, TypeError, AttributeError, IndexError, KeyError,
                OverflowError, MemoryError) as e:  # fmt: skip
            raise DataError(f"{path}: not a valid .bin pack ({type(e).__name__}: {e})") from None
    if obj is None:
        raise DataError(f"{path}: cannot unpickle ({last_err})")

    if not isinstance(obj, tuple | list) or len(obj) != 2:
        kind = (
            f"{type(obj).__name__} of length {len(obj)}"
            if hasattr(obj, "__len__")
            else (type(obj).__name__)
        )
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got a {kind}")
    images, flags = obj
    if not isinstance(images, list | tuple):
        raise DataError(f"{path}: images must be a list, got {type(images).__name__}")
    flags = _as_flags(flags, path)
    for i, item in enumerate(images):  # types first, so errors come before any decoding
        if not (isinstance(item, bytes | bytearray | memoryview) or _is_byte_array(item)):
            desc = (
                f"{item.dtype} array {item.shape}"
                if isinstance(item, np.ndarray)
                else (type(item).__name__)
            )
            raise DataError(f"{path}: image {i} is a {desc}, expected encoded image bytes")
    if len(images) % 2:
        raise DataError(f"{path}: odd number of images ({len(images)}); pairs need 2 per pair")
    if len(images) != 2 * len(flags):
        raise DataError(
            f"{path}: {len(images)} images do not match {len(flags)} pair flags "
            f"(need {2 * len(flags)})"
        )
    return list(images), flags


def _as_flags(flags: Any, path: Path) -> np.ndarray:
    if isinstance(flags, np.ndarray):
        if flags.ndim != 1 or flags.dtype.kind not in "bui":
            raise DataError(f"{path}: issame must be 1-D booleans, got {flags.dtype} {flags.shape}")
        values = flags.tolist()
    elif isinstance(flags, list | tuple):
        values = list(flags)
    else:
        raise DataError(f"{path}: issame must be a list of booleans, got {type(flags).__name__}")
    for i, v in enumerate(values):
        if not (isinstance(v, bool | int) and v in (0, 1)):
            raise DataError(f"{path}: issame[{i}] is {v!r}, expected a boolean")
    return np.asarray(values, dtype=bool)


def _is_byte_array(item: Any) -> bool:
    return isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1


def _image_bytes(item: Any) -> bytes:
    """Encoded bytes of an image entry already checked by :func:`_load_pack`."""
    return item.tobytes() if isinstance(item, np.ndarray) else bytes(item)


def read_bin(path: str | Path) -> VerificationPairs:
    """Read a verification pack as :class:`VerificationPairs` named after the file stem.

    Every image is decoded (and must be 112x112); errors name the file and image index.
    """
    path = Path(path)
    images, flags = _load_pack(path)
    n = len(images)
    faces = torch.empty((n, 3, FACE_SIZE, FACE_SIZE), dtype=torch.float32)  # no 2x peak
    for i in tqdm(range(n), desc=f"decoding {path.name}", disable=None, leave=False):
        img = decode_image(_image_bytes(images[i]), name=f"{path}: image {i}")
        if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
            raise DataError(
                f"{path}: image {i} is {img.shape[1]}x{img.shape[0]}, expected an aligned "
                f"{FACE_SIZE}x{FACE_SIZE} face"
            )
        # same arithmetic as images.to_tensor, written into the preallocated batch
        faces[i] = torch.from_numpy(img).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        images[i] = None  # let the encoded bytes go as we go
    return VerificationPairs(faces, flags, name=path.stem)


def describe_bin(path: str | Path) -> dict[str, int]:
    """Count images and pairs of a pack without decoding the images."""
    path = Path(path)
    images, flags = _load_pack(path)
    return {
        "images": len(images),
        "pairs": len(flags),
        "genuine": int(flags.sum()),
        "impostor": int((~flags).sum()),
    }


# ---------------------------------------------------------------------------------------
# writing


def _iter_faces(faces: Any) -> Iterable[Any]:
    if isinstance(faces, torch.Tensor | np.ndarray):
        if faces.ndim not in (3, 4):
            raise InputError(f"faces must be a batch (N, ...), got shape {tuple(faces.shape)}")
        return (faces[i] for i in range(len(faces)))
    return iter(faces)


def write_bin(
    path: str | Path,
    faces: Any,
    issame: Sequence[bool] | np.ndarray,
    quality: int = 95,
    format: str = "jpeg",
) -> None:
    """Write a pack readable by :func:`read_bin` and by the field's own eval scripts.

    ``faces``: 2N faces, a uint8 batch (2N, H, W, 3), a float batch (2N, 3, H, W) in
    [-1, 1], or a sequence of either kind of single face. ``format="png"`` is lossless;
    JPEG (the field's choice) changes pixels slightly. The file is written to a temporary
    name and renamed, so an interrupted write never leaves half a pack behind.
    """
    path = Path(path)
    flags = [bool(x) for x in np.asarray(issame).reshape(-1)]
    encoded = [encode_image(f, format=format, quality=quality) for f in _iter_faces(faces)]
    if len(encoded) != 2 * len(flags):
        raise InputError(f"{len(encoded)} faces for {len(flags)} pairs (need {2 * len(flags)})")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            pickle.dump((encoded, flags), f, protocol=4)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({e})") from None
