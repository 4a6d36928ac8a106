"""Identity-folder datasets: labels, skipped files (never silent), size checks."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppfr.data.folder import ImageFolderFaces
from ppfr.data.images import read_image, to_tensor
from ppfr.errors import DataError


def save(
    path: Path, size: tuple[int, int] = (112, 112), seed: int = 0, fmt: str | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(img).save(path, fmt)


def jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    img = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


def test_labels_follow_sorted_folder_names(tmp_path: Path) -> None:
    for i, (person, n) in enumerate({"zed": 2, "amy": 3, "bob": 1}.items()):
        for k in range(n):
            save(tmp_path / person / f"{k}.png", seed=10 * i + k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder warns about nothing
        ds = ImageFolderFaces(tmp_path)
    assert ds.classes == ["amy", "bob", "zed"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.describe() == {"images": 6, "identities": 3, "skipped": 0}
    face, label = ds[3]
    assert label == 1 and torch.equal(face, to_tensor(read_image(tmp_path / "bob" / "0.png")))


def test_unreadable_files_are_counted_not_silent(tmp_path: Path) -> None:
    save(tmp_path / "a" / "ok.jpg")
    save(tmp_path / "a" / "ok2.png", seed=1)
    (tmp_path / "a" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "a" / "cut.jpg").write_bytes(jpeg_bytes()[:3000])  # truncated download
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored entirely
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(UserWarning, match="skipped 5") as record:
        ds = ImageFolderFaces(tmp_path)
    assert len(record) == 1
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"garbage.jpg", "cut.jpg", "notes.txt", "broken.png", "b"}
    assert "not an image file" in reasons["notes.txt"]
    assert "without readable images" in reasons["b"]
    assert ds.describe() == {"images": 2, "identities": 1, "skipped": 5}
    assert ds.classes == ["a"]


def test_jpeg_with_trailing_padding_is_kept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pad.jpg").write_bytes(jpeg_bytes() + b"\0\0\n")
    assert len(ImageFolderFaces(tmp_path)) == 1


def test_wrong_size_names_the_file(tmp_path: Path) -> None:
    save(tmp_path / "a" / "ok.png")
    save(tmp_path / "a" / "big.png", size=(120, 130))
    with pytest.raises(DataError, match=r"big.png: expected an aligned 112x112 face, got 120x130"):
        ImageFolderFaces(tmp_path)
    ds = ImageFolderFaces(tmp_path, check_size=False)
    assert all(ds.load(i).shape == (3, 112, 112) for i in range(len(ds)))
    lazy = ImageFolderFaces(tmp_path, verify=False)  # no probing: checked when loaded
    with pytest.raises(DataError, match="big.png"):
        [lazy.load(i) for i in range(len(lazy))]


def test_empty_and_flat_folders_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path}: folder is empty"):
        ImageFolderFaces(tmp_path)
    save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=f"{tmp_path}: no identity sub-folders"):
        ImageFolderFaces(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        ImageFolderFaces(tmp_path / "missing")
    (tmp_path / "person").mkdir()
    (tmp_path / "person" / "x.jpg").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable images"):
        ImageFolderFaces(tmp_path)
