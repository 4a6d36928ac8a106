"""Pure-Python MXNet RecordIO: insightface layout, streaming, multi-part records, corruption."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppfr.data.binpack import encode_image
from ppfr.data.images import decode_image, to_tensor
from ppfr.data.recordio import (
    MAGIC,
    RecordIOFaces,
    RecordIOWriter,
    _frame,
    _iter_payloads,
    _pack,
    _unpack,
    iter_records,
)
from ppfr.errors import DataError, InputError

LABELS = [0, 0, 0, 1, 1, 2, 4, 4]  # label 3 unused on purpose


def faces(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((112, 112), Image.BILINEAR)) for s in small]
    )


@pytest.fixture
def rec(tmp_path: Path) -> tuple[Path, np.ndarray]:
    imgs = faces(len(LABELS))
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx", format="png") as w:
        for img, label in zip(imgs, LABELS, strict=True):
            w.write(img, label)
    return tmp_path / "train.rec", imgs


def records(path: Path) -> list[tuple[int, tuple[float, ...], bytes]]:
    return [_unpack(p, "test") for _, _, p in _iter_payloads(path)]


def test_writer_follows_insightface_layout(rec: tuple[Path, np.ndarray]) -> None:
    path, _ = rec
    recs = records(path)
    n, ids = len(LABELS), sorted(set(LABELS))
    flag, header, image = recs[0]
    assert (flag, header, image) == (2, (n + 1.0, n + 1.0 + len(ids)), b"")
    assert [int(r[1][0]) for r in recs[1 : n + 1]] == LABELS
    assert [r[0] for r in recs[1 : n + 1]] == [0] * n
    ranges = [tuple(int(v) for v in r[1]) for r in recs[n + 1 :]]
    assert ranges == [(1, 4), (4, 6), (6, 7), (7, 9)]  # one per identity, in label order
    lines = (path.with_suffix(".idx")).read_text().splitlines()
    assert len(lines) == len(recs) and lines[0] == "0\t0" and lines[1].startswith("1\t")


def test_random_access_round_trip(rec: tuple[Path, np.ndarray]) -> None:
    path, imgs = rec
    ds = RecordIOFaces(path)  # finds train.idx next to it
    assert ds.idx_path == path.with_suffix(".idx")
    assert ds.labels.tolist() == LABELS and ds.labels.dtype == np.int64
    assert ds.describe() == {"images": 8, "identities": 4}
    assert ds.nbytes == 16 * len(LABELS)
    for i in (0, 5, 7):
        face, label = ds[i]
        assert label == LABELS[i] and ds.key(i) == i + 1
        assert torch.equal(face, to_tensor(imgs[i]))
    # DataLoader workers get a pickled copy: it must reopen the file by itself
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.load(3), ds.load(3))


def test_without_idx_the_rec_is_scanned(rec: tuple[Path, np.ndarray]) -> None:
    path, imgs = rec
    path.with_suffix(".idx").unlink()
    ds = RecordIOFaces(path)
    assert ds.idx_path is None and ds.labels.tolist() == LABELS
    assert torch.equal(ds.load(2), to_tensor(imgs[2]))


def test_streaming_iterator(rec: tuple[Path, np.ndarray]) -> None:
    path, imgs = rec
    out = list(iter_records(path))
    assert [label for label, _ in out] == LABELS
    assert all(np.array_equal(decode_image(b), img) for (_, b), img in zip(out, imgs, strict=True))


def test_multi_part_records_are_reassembled(tmp_path: Path) -> None:
    magic = struct.pack("<I", MAGIC)
    # the 24-byte IRHeader comes first, so these magics land on 4-aligned payload offsets
    payloads = [
        magic + b"xyz",  # split once
        b"abcd" + magic + b"efg" + magic + b"h",  # second magic is unaligned: stays data
        b"abcd" + magic + magic + b"!",  # first, middle and last part
    ]
    with RecordIOWriter(tmp_path / "m.rec") as w:
        for i, p in enumerate(payloads):
            w.write(p, i)
    raw, flags, pos = (tmp_path / "m.rec").read_bytes(), [], 0
    while pos < len(raw):  # walk the frames
        _, lrec = struct.unpack_from("<II", raw, pos)
        flags.append(lrec >> 29)
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert flags == [0, 1, 3, 1, 3, 1, 2, 3, 0, 0, 0]
    assert [b for _, b in iter_records(tmp_path / "m.rec")] == payloads
    ds = RecordIOFaces(tmp_path / "m.rec")
    assert [ds.encoded(i) for i in range(3)] == payloads and ds.labels.tolist() == [0, 1, 2]


def test_grouping_is_enforced_unless_disabled(tmp_path: Path) -> None:
    img = faces(1)[0]
    with pytest.raises(InputError, match="label 0 was written before"):
        with RecordIOWriter(tmp_path / "a.rec") as w:
            for label in (0, 1, 0):
                w.write(img, label)
    with RecordIOWriter(tmp_path / "b.rec", grouped=False) as w:
        for label in (0, 1, 0):
            w.write(img, label)
    assert records(tmp_path / "b.rec")[0][1] == (4.0, 4.0)  # no identity records
    assert RecordIOFaces(tmp_path / "b.rec").labels.tolist() == [0, 1, 0]


def test_unfinished_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "u.rec") as w:
            w.write(faces(1)[0], 0)
            raise RuntimeError("crash while writing")
    with pytest.raises(DataError, match="may not have finished"):
        RecordIOFaces(tmp_path / "u.rec")


def test_im2rec_files_without_header_record(tmp_path: Path) -> None:
    """Plain mxnet im2rec output: no header, every record is an image."""
    imgs = faces(3)
    offsets, blob = [], b""
    for i, img in enumerate(imgs):
        offsets.append(len(blob))
        blob += _frame(_pack(float(i * 2), encode_image(img, format="png")))
    (tmp_path / "p.rec").write_bytes(blob)
    (tmp_path / "p.idx").write_text("".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))
    ds = RecordIOFaces(tmp_path / "p.rec")
    assert ds.labels.tolist() == [0, 2, 4] and torch.equal(ds.load(0), to_tensor(imgs[0]))


def test_rounded_float32_range_is_survived(rec: tuple[Path, np.ndarray]) -> None:
    """Glint360K-size files: record 0's range is not exact in float32."""
    path, _ = rec
    data = bytearray(path.read_bytes())
    huge = _frame(_pack((float(2**25), float(2**25 + 4))))
    data[: len(huge)] = huge
    path.write_bytes(bytes(data))
    ds = RecordIOFaces(path)
    assert ds.labels.tolist() == LABELS  # identity records told apart by their empty payload


def corrupt(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def idx_offsets(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in path.with_suffix(".idx").read_text().splitlines()]


def test_bad_magic_names_record_and_offset(rec: tuple[Path, np.ndarray]) -> None:
    path, _ = rec
    off = idx_offsets(path)[3]
    corrupt(path, off, b"JUNK")
    with pytest.raises(DataError, match=f"record 3 at offset {off}.*bad magic") as info:
        RecordIOFaces(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=f"record 3 at offset {off}.*bad magic"):
        list(iter_records(path))


def test_truncated_file(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "t.rec", grouped=False) as w:  # last record is an image
        for i, img in enumerate(faces(4)):
            w.write(img, i)
    path = tmp_path / "t.rec"
    last = idx_offsets(path)[-1]
    path.write_bytes(path.read_bytes()[: last + 100])
    with pytest.raises(DataError, match=f"record 4 at offset {last}: truncated") as info:
        RecordIOFaces(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=f"record 4 at offset {last}: truncated"):
        list(iter_records(path))
    path.write_bytes(path.read_bytes()[: last + 5])  # cut inside the frame itself
    with pytest.raises(DataError, match="truncated"):
        list(iter_records(path))


def test_idx_pointing_past_end(rec: tuple[Path, np.ndarray]) -> None:
    path, _ = rec
    idx = path.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    lines[5] = "5\t99999999"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="record 5 points to offset 99999999, past the end"):
        RecordIOFaces(path)


def test_malformed_idx_line(rec: tuple[Path, np.ndarray]) -> None:
    path, _ = rec
    idx = path.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    lines[2] = "2 oops"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3"):
        RecordIOFaces(path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        RecordIOFaces(tmp_path / "none.rec")
    with pytest.raises(DataError, match="no such file"):
        list(iter_records(tmp_path / "none.rec"))


def test_short_idx_warns_and_reads_what_is_listed(rec: tuple[Path, np.ndarray]) -> None:
    path, _ = rec
    idx = path.with_suffix(".idx")
    idx.write_text("\n".join(idx.read_text().splitlines()[:6]) + "\n")  # header + 5 images
    with pytest.warns(UserWarning, match="header announces images up to key 8"):
        ds = RecordIOFaces(path)
    assert ds.labels.tolist() == LABELS[:5]
