"""Verification .bin packs: round trips, corrupt files, and the restricted unpickler."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppfr.data.binpack import describe_bin, encode_image, read_bin, safe_loads, write_bin
from ppfr.data.images import to_tensor
from ppfr.errors import DataError, InputError


def smooth_faces(n: int, seed: int = 0) -> np.ndarray:
    """n smooth RGB uint8 (112, 112, 3) images; smooth so JPEG barely changes them."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((112, 112), Image.BILINEAR)) for s in small]
    )


def as_tensors(faces: np.ndarray) -> torch.Tensor:
    return torch.stack([to_tensor(f) for f in faces])


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    faces = smooth_faces(6)
    write_bin(tmp_path / "lfw.bin", faces, [True, False, True], format="png")
    pairs = read_bin(tmp_path / "lfw.bin")
    assert pairs.name == "lfw"
    assert pairs.issame.tolist() == [True, False, True]
    assert torch.equal(pairs.faces, as_tensors(faces))
    assert describe_bin(tmp_path / "lfw.bin") == {
        "images": 6,
        "pairs": 3,
        "genuine": 2,
        "impostor": 1,
    }


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    faces = smooth_faces(4)
    write_bin(tmp_path / "a.bin", torch.from_numpy(faces), np.array([1, 0], dtype=bool))
    got = read_bin(tmp_path / "a.bin").faces
    err = (got - as_tensors(faces)).abs()
    assert err.mean() < 0.02 and err.max() < 0.25


def test_float_faces_are_accepted(tmp_path: Path) -> None:
    faces = as_tensors(smooth_faces(2))
    write_bin(tmp_path / "f.bin", faces, [True], format="png")
    assert torch.allclose(read_bin(tmp_path / "f.bin").faces, faces, atol=1e-6)


def test_write_rejects_wrong_counts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="3 faces for 2 pairs"):
        write_bin(tmp_path / "x.bin", smooth_faces(3), [True, False])
    assert not (tmp_path / "x.bin").exists()


def test_numpy_encoded_images_and_all_protocols(tmp_path: Path) -> None:
    faces = smooth_faces(2)
    encoded = [np.frombuffer(encode_image(f, format="png"), dtype=np.uint8) for f in faces]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.bin"
        path.write_bytes(pickle.dumps((encoded, np.array([True])), protocol=protocol))
        assert torch.equal(read_bin(path).faces, as_tensors(faces)), protocol


def py2_pickle(images: list[bytes], flags: list[bool]) -> bytes:
    """What Python 2's pickle.dump(..., protocol=2) writes: images as 8-bit str opcodes."""
    out = [b"\x80\x02(]q\x00("]
    for img in images:
        out.append(b"T" + struct.pack("<I", len(img)) + img)
    out.append(b"e]q\x01(")
    out += [b"\x88" if f else b"\x89" for f in flags]
    out.append(b"et.")
    return b"".join(out)


def test_python2_pack_is_retried_with_bytes_encoding(tmp_path: Path) -> None:
    faces = smooth_faces(4)
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pickle([encode_image(f, format="png") for f in faces], [False, True]))
    with pytest.raises(UnicodeDecodeError):  # what a naive pickle.load does
        pickle.loads(path.read_bytes())
    pairs = read_bin(path)
    assert pairs.issame.tolist() == [False, True]
    assert torch.equal(pairs.faces, as_tensors(faces))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"\x89PNG not a pickle at all", "not a pickle"),
        (b"\x80\x04\x95junk", "truncated"),
        (b"\x80\x02c__main__\nnope\nq\x00.", "refusing"),
        (pickle.dumps({"images": []}), "expected a pickled"),
        (pickle.dumps(([b"a", b"b", b"c"], [True])), "odd number of images"),
        (pickle.dumps(([b"a", b"b"], [True, False])), "2 images do not match 2 pair flags"),
        (pickle.dumps(([b"a", 3], [True])), "image 1 is a int"),
        (pickle.dumps(([b"a", b"b"], ["yes"])), r"issame\[0\]"),
    ],
)
def test_bad_packs_name_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.bin"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_bin(path)
    assert str(path) in str(info.value)


def test_truncated_pack(tmp_path: Path) -> None:
    path = tmp_path / "cut.bin"
    write_bin(path, smooth_faces(4), [True, False])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as info:
        read_bin(path)
    assert str(path) in str(info.value)


def test_undecodable_and_wrong_size_images_name_the_index(tmp_path: Path) -> None:
    good = [encode_image(f) for f in smooth_faces(4)]
    path = tmp_path / "img.bin"
    path.write_bytes(pickle.dumps((good[:3] + [b"\xff\xd8 garbage"], [True, True])))
    with pytest.raises(DataError, match="image 3") as info:
        read_bin(path)
    assert str(path) in str(info.value)
    small = encode_image(np.zeros((50, 40, 3), np.uint8))
    path.write_bytes(pickle.dumps(([small] + good[1:], [True, True])))
    with pytest.raises(DataError, match="image 0 is 40x50"):
        read_bin(path)


class _Touch:
    """A pickle that would create a file when loaded by a plain unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Touch(marker), b"x"], [True])))
    with pytest.raises(DataError, match="refusing to load"):
        read_bin(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # a plain unpickler would have run it
    assert marker.exists()


def test_object_arrays_and_foreign_globals_are_refused() -> None:
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps(np.array([b"a", None], dtype=object)))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_loads(pickle.dumps(Path("x")))
    with pytest.raises(pickle.UnpicklingError, match="codec"):
        safe_loads(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")


def test_numpy_state_from_the_file_never_reaches_numpy() -> None:
    """numpy's own dtype.__setstate__ would accept 'has Python objects' flags on uint8."""
    data = pickle.dumps(np.frombuffer(b"abcd", np.uint8), protocol=2)
    plain_flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert data.count(plain_flags) == 1
    tampered = data.replace(plain_flags, plain_flags[:-3] + b"K?t")
    # (a plain pickle.loads of this gets numpy into an internal error: not run here)
    arr = safe_loads(tampered)
    assert arr.dtype == np.uint8 and not arr.dtype.hasobject and arr.tobytes() == b"abcd"
