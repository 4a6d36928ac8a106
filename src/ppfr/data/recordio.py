"""MXNet RecordIO face datasets (``train.rec`` + ``train.idx``), read and written in pure Python.

This is how insightface ships MS1M, Glint360K, WebFace and friends. No mxnet needed.

**Record framing** (dmlc RecordIO). Every record is::

    uint32 magic 0xced7230a | uint32 lrecord | payload | zero padding to a multiple of 4

with ``lrecord = cflag << 29 | length``. ``cflag`` 0 is a whole record. A writer that finds
the magic number at a 4-aligned position inside a payload cuts the payload there and drops
those 4 bytes: the pieces go out as cflag 1 (first), 2 (middle), 3 (last) and a reader glues
them back with the magic in between. Both directions are supported here.

**Image payload** (mxnet's ``recordio.pack``): an ``IRHeader`` struct ``<IfQQ`` = (flag,
label, id, id2); when ``flag > 0`` the label is instead the ``flag`` float32 values that
follow the struct. The encoded image comes last.

**insightface's layout** (what :class:`RecordIOWriter` writes and the readers expect):

* record 0: header only, ``flag = 2``, labels ``(first, last)``;
* records ``1 .. first-1``: the images, label = identity (first float when ``flag > 0``);
* records ``first .. last-1``: one header-only record per identity, labels ``(a, b)`` = the
  range of image records of that identity.

The ``.idx`` file is text, one ``key<TAB>offset`` line per record.

Range values are float32, exact only below 2**24 (Glint360K's 17M images exceed that), so
the readers here also classify every record by content: a record with no image bytes after
its header is a header or identity record and never becomes a face.

Example:
    >>> import numpy as np
    >>> with RecordIOWriter("train.rec", "train.idx") as w:
    ...     for label in (0, 0, 1):
    ...         w.write(np.zeros((112, 112, 3), np.uint8), label)
    >>> ds = RecordIOFaces("train.rec")
    >>> len(ds), ds.labels.tolist()
    (3, [0, 0, 1])
    >>> [label for label, _ in iter_records("train.rec")]
    [0, 0, 1]
"""

from __future__ import annotations

import os
import struct
import warnings
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ppfr.data.base import FaceDataset
from ppfr.data.binpack import encode_image
from ppfr.data.images import FACE_SIZE, decode_image, to_tensor
from ppfr.errors import DataError, InputError

__all__ = ["MAGIC", "RecordIOFaces", "RecordIOWriter", "iter_records"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LEN_MASK = (1 << 29) - 1
_FLOAT_EXACT = 1 << 24  # float32 holds every integer below this exactly
# bytes that decide a record's label and kind: frame + IRHeader + first extra label
_HEAD = _FRAME.size + _IRHEADER.size + 4


def _pad4(n: int) -> int:
    return (n + 3) & ~3


# ---------------------------------------------------------------------------------------
# payload <-> bytes


def _frame(payload: bytes) -> bytes:
    """Frame one payload, splitting it at 4-aligned magic numbers as dmlc does."""
    if len(payload) > _LEN_MASK:
        raise InputError(f"a RecordIO record holds at most 2**29-1 bytes, got {len(payload)}")
    parts, start = [], 0
    pos = payload.find(_MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            parts.append(payload[start:pos])
            start = pos + 4
        pos = payload.find(_MAGIC_BYTES, pos + 1)
    parts.append(payload[start:])
    out = []
    for i, part in enumerate(parts):
        if len(parts) == 1:
            cflag = 0
        else:
            cflag = 1 if i == 0 else (3 if i == len(parts) - 1 else 2)
        out.append(_FRAME.pack(MAGIC, cflag << 29 | len(part)))
        out.append(part)
        out.append(b"\0" * (_pad4(len(part)) - len(part)))
    return b"".join(out)


def _pack(label: float | tuple[float, ...], image: bytes = b"", id: int = 0) -> bytes:
    """An mxnet-style payload: IRHeader (+ float labels) + image bytes."""
    if isinstance(label, tuple):
        head = _IRHEADER.pack(len(label), 0.0, id, 0) + struct.pack(f"<{len(label)}f", *label)
    else:
        head = _IRHEADER.pack(0, float(label), id, 0)
    return head + image


def _unpack(payload: bytes, where: str) -> tuple[int, tuple[float, ...], bytes]:
    """payload -> (flag, labels, image bytes); ``labels`` has one value when flag is 0."""
    if len(payload) < _IRHEADER.size:
        raise DataError(f"{where}: {len(payload)}-byte payload is too short for a record header")
    flag, label, _id, _id2 = _IRHEADER.unpack_from(payload)
    if flag == 0:
        return 0, (label,), payload[_IRHEADER.size :]
    end = _IRHEADER.size + 4 * flag
    if len(payload) < end:
        raise DataError(f"{where}: header announces {flag} labels but the record is too short")
    labels = struct.unpack_from(f"<{flag}f", payload, _IRHEADER.size)
    return flag, labels, payload[end:]


# ---------------------------------------------------------------------------------------
# low-level reading


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # no pread (Windows): fine without threads
    return os.read(fd, n)


def _read_at(fd: int, offset: int, size: int, name: str, key: Any) -> bytes:
    """The payload of the (possibly multi-part) record starting at ``offset``."""
    where = f"{name}: record {key} at offset {offset}"
    parts: list[bytes] = []
    first = True
    while True:
        if offset + _FRAME.size > size:
            raise DataError(f"{where}: truncated record (file ends at byte {size})")
        # one read usually gets the whole of a face record
        buf = _pread(fd, 16384 if first else _FRAME.size, offset)
        magic, lrec = _FRAME.unpack_from(buf)
        if magic != MAGIC:
            raise DataError(f"{where}: bad magic 0x{magic:08x} at byte {offset}, not a record")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if cflag > 3 or (first and cflag in (2, 3)) or (not first and cflag in (0, 1)):
            raise DataError(f"{where}: broken multi-part record (flag {cflag} at byte {offset})")
        end = offset + _FRAME.size + length
        if end > size:
            raise DataError(
                f"{where}: truncated record ({length}-byte payload, file ends at byte {size})"
            )
        data = buf[_FRAME.size : _FRAME.size + length]
        if len(data) < length:
            data = _pread(fd, length, offset + _FRAME.size)
        parts.append(data)
        offset = offset + _FRAME.size + _pad4(length)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)
        first = False


def _iter_payloads(rec_path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Stream (record number, offset, payload) over the whole file, constant memory."""
    name = str(rec_path)
    try:
        f = open(rec_path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    with f:
        offset, index = 0, 0
        start, parts = 0, []
        while True:
            frame = f.read(_FRAME.size)
            if not frame:
                if parts:
                    raise DataError(
                        f"{name}: record {index} at offset {start}: file ends "
                        "inside a multi-part record"
                    )
                return
            where = f"{name}: record {index} at offset {start if parts else offset}"
            if len(frame) < _FRAME.size:
                raise DataError(
                    f"{where}: truncated record (file ends at byte {offset + len(frame)})"
                )
            magic, lrec = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise DataError(f"{where}: bad magic 0x{magic:08x} at byte {offset}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag > 3 or (cflag in (2, 3)) != bool(parts):
                raise DataError(
                    f"{where}: broken multi-part record (flag {cflag} at byte {offset})"
                )
            data = f.read(length)
            if len(data) < length:
                raise DataError(
                    f"{where}: truncated record ({length}-byte payload, "
                    f"only {len(data)} bytes left)"
                )
            f.read(_pad4(length) - length)
            if not parts:
                start = offset
            offset += _FRAME.size + _pad4(length)
            parts.append(data)
            if cflag in (0, 3):
                yield index, start, _MAGIC_BYTES.join(parts)
                index, parts = index + 1, []


def iter_records(rec_path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Stream ``(label, encoded image)`` over a ``.rec`` in file order; no ``.idx`` needed.

    Memory stays constant whatever the file size. Header and identity records (no image
    bytes) are skipped; the label of a multi-label record is its first value, as in
    insightface.

    Example:
        >>> for label, jpeg in iter_records("train.rec"):
        ...     pass
    """
    rec_path = Path(rec_path)
    for index, offset, payload in _iter_payloads(rec_path):
        _flag, labels, image = _unpack(payload, f"{rec_path}: record {index} at offset {offset}")
        if image:
            yield int(labels[0]), image


# ---------------------------------------------------------------------------------------
# the .idx file


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _parse_block(text: bytes, path: Path, first_line: int) -> np.ndarray:
    """(m, 2) int64 for a block of whole ``key<TAB>offset`` lines; errors name the line."""
    lines = text.count(b"\n") + (not text.endswith(b"\n"))
    try:
        nums = np.fromstring(text.decode("ascii"), dtype=np.int64, sep=" ")  # C-speed parse
        if len(nums) == 2 * lines:
            return nums.reshape(-1, 2)
    except (ValueError, UnicodeDecodeError):
        pass
    rows = []  # slow path: blank lines, or a bad line to point at
    for i, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(x.isdigit() for x in fields):
            raise DataError(
                f"{path}: line {first_line + i}: expected 'key<TAB>offset', got {line[:60]!r}"
            )
        rows.append((int(fields[0]), int(fields[1])))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def _idx_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(first line number, ~1 MiB of whole lines) over a text file, constant memory."""
    line_no, carry = 1, b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            cut = block.rfind(b"\n")
            if cut < 0:
                carry += block
                continue
            text, carry = carry + block[: cut + 1], block[cut + 1 :]
            yield line_no, text
            line_no += text.count(b"\n")
    if carry.strip():
        yield line_no, carry


def _read_idx(path: Path) -> tuple[np.ndarray | range, np.ndarray]:
    """Keys and offsets of an ``.idx`` file.

    Keys are almost always 0, 1, 2, ...: then they come back as a ``range`` and only the
    offsets take memory (8 bytes per record).
    """
    try:
        n = _count_lines(path)  # sized up front so the arrays never need to grow
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    offsets = np.empty(n, dtype=np.int64)
    keys: np.ndarray | None = None
    filled = 0
    for line_no, text in _idx_blocks(path):
        pairs = _parse_block(text, path, line_no)
        m = len(pairs)
        offsets[filled : filled + m] = pairs[:, 1]
        if keys is None and not np.array_equal(pairs[:, 0], np.arange(filled, filled + m)):
            keys = np.arange(n, dtype=np.int64)  # keys are not 0..n-1: keep them
        if keys is not None:
            keys[filled : filled + m] = pairs[:, 0]
        filled += m
    offsets = offsets[:filled]
    if keys is None:
        return range(filled), offsets
    return keys[:filled], offsets


def _scan_offsets(rec_path: Path) -> np.ndarray:
    """Offsets of every record (key = position), by hopping over payloads; no .idx needed."""
    offsets = array("q")  # 8 bytes per record while scanning, unlike a list of ints
    size = rec_path.stat().st_size
    with (
        open(rec_path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            disable=None,
            leave=False,
            desc=f"indexing {rec_path.name}",
        ) as bar,
    ):
        offset, in_multi = 0, False
        while offset < size:
            f.seek(offset)
            frame = f.read(_FRAME.size)
            where = f"{rec_path}: record {len(offsets)} at offset {offset}"
            if len(frame) < _FRAME.size:
                raise DataError(f"{where}: truncated record")
            magic, lrec = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise DataError(f"{where}: bad magic 0x{magic:08x}")
            cflag = lrec >> 29
            if not in_multi:
                offsets.append(offset)
            in_multi = cflag in (1, 2)
            step = _FRAME.size + _pad4(lrec & _LEN_MASK)
            if offset + _FRAME.size + (lrec & _LEN_MASK) > size:
                raise DataError(f"{where}: truncated record")
            offset += step
            bar.update(step)
    return np.frombuffer(offsets, dtype=np.int64).copy()


# ---------------------------------------------------------------------------------------
# header scan: labels of many records at once


def _column(head: np.ndarray, at: int, dtype: str) -> np.ndarray:
    """Bytes ``at..at+4`` of every row of ``head`` as one little-endian number each."""
    return np.ascontiguousarray(head[:, at : at + 4]).view(dtype).ravel()


def _scan_heads(
    fd: int, offsets: np.ndarray, size: int, name: str, keys: np.ndarray | range
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int64) and is-image flags of the records at ``offsets``.

    Reads only the first ``_HEAD`` bytes of each record. Records close together are read
    in one ~1 MiB block and parsed with numpy; far-apart or multi-part records one by one.
    Memory: the two result arrays plus one block.
    """
    n = len(offsets)
    labels = np.empty(n, dtype=np.int64)
    is_image = np.empty(n, dtype=bool)
    ascending = n < 2 or bool(np.all(offsets[1:] > offsets[:-1]))
    span = 1 << 20  # bytes per block: bounds the temporary buffers
    col = np.arange(_HEAD)
    with tqdm(
        total=n, unit="rec", disable=None, leave=False, desc=f"labels {Path(name).name}"
    ) as bar:
        i = 0
        while i < n:
            j = i + 1
            if ascending:
                j = max(j, int(np.searchsorted(offsets, offsets[i] + span, side="right")))
            start = int(offsets[i])
            buf = _pread(fd, int(offsets[j - 1]) - start + _HEAD, start)
            raw = np.frombuffer(buf, dtype=np.uint8)
            need = int(offsets[j - 1]) - start + _HEAD
            if len(raw) < need:  # the last records of the file may be shorter than _HEAD
                raw = np.concatenate([raw, np.zeros(need - len(raw), np.uint8)])
            rel = offsets[i:j] - start
            head = raw[rel[:, None] + col]  # (m, _HEAD)

            magic, lrec, flag = (_column(head, at, "<u4") for at in (0, 4, 8))
            length = (lrec & _LEN_MASK).astype(np.int64)
            cflag = lrec >> 29
            ok = (magic == MAGIC) & (cflag == 0) & (offsets[i:j] + 8 + length <= size)
            ok &= length >= _IRHEADER.size + 4 * flag.astype(np.int64)
            label = np.where(flag > 0, _column(head, 32, "<f4"), _column(head, 12, "<f4"))
            labels[i:j] = label.astype(np.int64)
            is_image[i:j] = length > _IRHEADER.size + 4 * flag.astype(np.int64)
            for k in np.flatnonzero(~ok):  # multi-part or corrupt: the careful path
                payload = _read_at(fd, int(offsets[i + k]), size, name, keys[i + k])
                _flag, labs, image = _unpack(payload, f"{name}: record {keys[i + k]}")
                labels[i + k], is_image[i + k] = int(labs[0]), bool(image)
            bar.update(j - i)
            i = j
    return labels, is_image


# ---------------------------------------------------------------------------------------
# the dataset


class RecordIOFaces(FaceDataset):
    """Random-access faces from an insightface ``.rec`` through its ``.idx``.

    Construction reads the ``.idx`` (or, without one, hops once through the ``.rec``) and
    the first few dozen bytes of every image record for its label. Steady-state memory is
    two int64 arrays, offsets and labels: 16 bytes per image (MS1M's 5.8M images: ~93 MB).
    Images are read with ``pread`` on demand, so DataLoader workers can share the object.

    ``classes`` stays empty: RecordIO stores no identity names.

    Example:
        >>> ds = RecordIOFaces("faces_emore/train.rec")      # finds train.idx beside it
        >>> face, label = ds[0]                               # (3, 112, 112) in [-1, 1]
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: no such file")
        self._size = self.rec_path.stat().st_size
        self._fd: int | None = None
        self._pid = -1
        self.classes = []
        name = str(self.rec_path)

        if idx_path is None and self.rec_path.with_suffix(".idx").is_file():
            idx_path = self.rec_path.with_suffix(".idx")
        self.idx_path = Path(idx_path) if idx_path is not None else None
        if self.idx_path is not None:
            keys, offsets = _read_idx(self.idx_path)
            past = np.flatnonzero((offsets < 0) | (offsets >= self._size))
            if len(past):
                k = int(past[0])
                raise DataError(
                    f"{self.idx_path}: record {keys[k]} points to offset {offsets[k]}, past the "
                    f"end of {name} ({self._size} bytes); .idx and .rec do not belong together"
                )
        else:
            offsets = _scan_offsets(self.rec_path)
            keys = range(len(offsets))
        if len(offsets) == 0:
            raise DataError(f"{name}: no records")

        keys, offsets = self._image_candidates(keys, offsets)
        labels, is_image = _scan_heads(self._fileno(), offsets, self._size, name, keys)
        if not is_image.all():
            # header/identity records among the candidates: Glint-size files whose float32
            # range is rounded, or files without a header record
            keep = np.flatnonzero(is_image)
            offsets, labels = offsets[keep], labels[keep]
            keys = keys[keep] if isinstance(keys, np.ndarray) else np.asarray(keys)[keep]
        if len(offsets) == 0:
            raise DataError(f"{name}: no image records")
        if labels.min() < 0:
            raise DataError(f"{name}: negative label {labels.min()}")
        self._offsets = offsets
        self._keys = keys
        self.labels = labels

    def _image_candidates(
        self, keys: np.ndarray | range, offsets: np.ndarray
    ) -> tuple[np.ndarray | range, np.ndarray]:
        """Keys that may hold images, from record 0's header when it has one."""
        pos0 = 0 if isinstance(keys, range) else np.flatnonzero(keys == 0)
        if not isinstance(keys, range):
            if len(pos0) == 0:
                return keys, offsets  # no record 0: every record is a candidate
            pos0 = int(pos0[0])
        name = f"{self.rec_path}: record 0"
        payload = _read_at(self._fileno(), int(offsets[pos0]), self._size, str(self.rec_path), 0)
        flag, labels, image = _unpack(payload, name)
        if flag < 2 or image:
            return keys, offsets  # no header record: mxnet im2rec style, all images
        first = labels[0]
        if first < 1:
            raise DataError(
                f"{name}: header says images end before record 1 (range {labels[:2]}); "
                "the writer may not have finished"
            )
        if first < _FLOAT_EXACT:
            lo, hi = 1, int(first)
        else:  # rounded range: take everything and sort records by content
            lo, hi = 1, None
        if hi is not None and hi > len(keys):
            warnings.warn(
                f"{name}: header announces images up to key {hi - 1} but the index has "
                f"{len(keys)} records; reading those present (truncated .idx?)",
                stacklevel=3,
            )
        if isinstance(keys, range):
            stop = len(keys) if hi is None else min(hi, len(keys))
            return range(lo, stop), offsets[lo:stop]
        sel = np.flatnonzero((keys >= lo) & ((keys < hi) if hi is not None else True))
        return keys[sel], offsets[sel]

    # -- file handle, reopened per process (DataLoader workers fork or spawn)
    def _fileno(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as e:
                raise DataError(f"{self.rec_path}: cannot open ({e})") from None
            self._pid = os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def key(self, index: int) -> int:
        """The record key (.idx key) of face ``index``."""
        return int(self._keys[index])

    def encoded(self, index: int) -> bytes:
        """The encoded image bytes of face ``index`` (JPEG in insightface's files)."""
        key = self.key(index)
        payload = _read_at(
            self._fileno(), int(self._offsets[index]), self._size, str(self.rec_path), key
        )
        return _unpack(payload, f"{self.rec_path}: record {key}")[2]

    def load(self, index: int) -> torch.Tensor:
        img = decode_image(self.encoded(index), name=f"{self.rec_path}: record {self.key(index)}")
        if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
            raise DataError(
                f"{self.rec_path}: record {self.key(index)} is {img.shape[1]}x{img.shape[0]}, "
                f"expected an aligned {FACE_SIZE}x{FACE_SIZE} face"
            )
        return to_tensor(img)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (offsets, labels, keys when not 0..n-1)."""
        extra = self._keys.nbytes if isinstance(self._keys, np.ndarray) else 0
        return self._offsets.nbytes + self.labels.nbytes + extra


# ---------------------------------------------------------------------------------------
# writing


class RecordIOWriter:
    """Write an insightface-layout ``.rec`` + ``.idx`` pair.

    Record 0 is written first as a fixed-size placeholder header and rewritten in place by
    :meth:`close` once the image and identity counts are known; identity records are
    appended at close. Exiting the ``with`` block by an exception closes the files without
    finishing them: the placeholder range (0, 0) makes readers refuse the file instead of
    taking a partial dataset for a whole one.

    ``grouped=True`` (insightface's convention) requires each identity's images to be
    written together, so identity records can give their ranges; ``grouped=False`` accepts
    any order and writes no identity records (readers that only use record 0's range, like
    arcface_torch and this module, still work).

    Example:
        >>> with RecordIOWriter("train.rec", "train.idx") as w:
        ...     w.write(jpeg_bytes, label=0)         # pre-encoded bytes go in as they are
        ...     w.write(face_uint8_hwc, label=1)     # arrays are JPEG-encoded (quality 95)
    """

    def __init__(
        self,
        rec_path: str | Path,
        idx_path: str | Path | None = None,
        *,
        quality: int = 95,
        format: str = "jpeg",
        grouped: bool = True,
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = (
            Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        )
        self.quality, self.format, self.grouped = quality, format, grouped
        try:
            self._rec = open(self.rec_path, "wb")
            self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")
        except OSError as e:
            raise DataError(f"cannot create {self.rec_path} / {self.idx_path}: {e}") from None
        self._offset = 0
        self._key = 0
        self._ranges: dict[int, list[int]] = {}  # label -> [first key, end key)
        self._current: int | None = None
        self._num_images = 0
        self._closed = False
        self._append(_pack((0.0, 0.0)))  # placeholder, same size as the final header

    def _append(self, payload: bytes) -> int:
        key = self._key
        framed = _frame(payload)
        self._rec.write(framed)
        self._idx.write(f"{key}\t{self._offset}\n")
        self._offset += len(framed)
        self._key += 1
        return key

    @property
    def num_images(self) -> int:
        return self._num_images

    def write(self, image: Any, label: int) -> int:
        """Append one face (encoded bytes, uint8 (H, W, 3), or float (3, H, W) in [-1, 1]).

        Returns the record key.
        """
        if self._closed:
            raise InputError(f"{self.rec_path}: writer is closed")
        label = int(label)
        if not 0 <= label < _FLOAT_EXACT:
            raise InputError(f"label must be in [0, 2**24) to survive float32, got {label}")
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if not data:
                raise InputError("empty image bytes (would read back as a header record)")
        else:
            data = encode_image(image, format=self.format, quality=self.quality)
        if label != self._current and label in self._ranges and self.grouped:
            raise InputError(
                f"label {label} was written before, then other labels: with grouped=True each "
                "identity's images must be consecutive (sort by label, or pass grouped=False)"
            )
        key = self._append(_pack(float(label), data, id=self._key))
        if self.grouped:
            self._ranges.setdefault(label, [key, key])[1] = key + 1
        self._current = label
        self._num_images += 1
        return key

    def close(self) -> None:
        """Write identity records, finish record 0, and close both files."""
        if self._closed:
            return
        self._closed = True
        try:
            first = self._key
            for label in sorted(self._ranges):  # one header-only record per identity
                a, b = self._ranges[label]
                self._append(_pack((float(a), float(b)), id=self._key))
            last = self._key
            if last >= _FLOAT_EXACT:
                warnings.warn(
                    f"{self.rec_path}: {last} records; record 0's float32 range is rounded "
                    "(readers here sort records by content, some others may be off by one)",
                    stacklevel=2,
                )
            header = _frame(_pack((float(first), float(last))))
            # positive floats never contain the magic, so the header cannot split or grow
            assert len(header) == _FRAME.size + _IRHEADER.size + 8
            self._rec.seek(0)
            self._rec.write(header)
        finally:
            self._rec.close()
            self._idx.close()

    def abort(self) -> None:
        """Close the files without finishing them (the header keeps its placeholder)."""
        self._closed = True
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: Any, *_exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
