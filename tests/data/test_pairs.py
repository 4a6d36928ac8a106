"""LFW-style pairs.txt over a folder of aligned faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppfr.data.images import read_image, to_tensor
from ppfr.data.pairs import describe_pairs_txt, parse_pairs_txt, read_pairs_txt
from ppfr.errors import DataError

PEOPLE = {"Ann_A": 2, "Bob_B": 3, "Cy_C": 1}
PAIRS = """2\t1
Ann_A\t1\t2
Ann_A\t1\tBob_B\t3

Bob_B\t2\t3
Cy_C\t1\tBob_B\t1
"""


def make_lfw(root: Path, ext: str = "png") -> Path:
    rng = np.random.default_rng(0)
    for name, count in PEOPLE.items():
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:04d}.{ext}")
    return root


def test_read_standard_format(tmp_path: Path) -> None:
    root = make_lfw(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(PAIRS)
    pairs = read_pairs_txt(tmp_path / "pairs.txt", root, ext="png")
    assert pairs.name == "pairs"
    assert pairs.issame.tolist() == [True, False, True, False]
    expect = [
        "Ann_A/Ann_A_0001",
        "Ann_A/Ann_A_0002",
        "Ann_A/Ann_A_0001",
        "Bob_B/Bob_B_0003",
        "Bob_B/Bob_B_0002",
        "Bob_B/Bob_B_0003",
        "Cy_C/Cy_C_0001",
        "Bob_B/Bob_B_0001",
    ]
    for face, rel in zip(pairs.faces, expect, strict=True):
        assert torch.equal(face, to_tensor(read_image(root / f"{rel}.png")))


def test_parse_keeps_line_numbers_and_header_is_optional(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text(PAIRS.split("\n", 1)[1])  # no header line
    lines = parse_pairs_txt(tmp_path / "p.txt")
    assert [p.line for p in lines] == [1, 2, 4, 5]
    assert lines[1].second == "Bob_B/Bob_B_0003.jpg" and not lines[1].same


def test_header_count_mismatch_warns(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("10\t300\n" + PAIRS.split("\n", 1)[1])
    with pytest.warns(UserWarning, match="announces 6000 pairs, the file has 4"):
        parse_pairs_txt(tmp_path / "p.txt")


def test_missing_image_names_line_and_path(tmp_path: Path) -> None:
    root = make_lfw(tmp_path / "lfw")
    (root / "Bob_B" / "Bob_B_0003.png").unlink()
    (tmp_path / "pairs.txt").write_text(PAIRS)
    with pytest.raises(DataError, match=r"pairs.txt, line 3: .*Bob_B_0003.png: no such file"):
        read_pairs_txt(tmp_path / "pairs.txt", root, ext="png")
    info = describe_pairs_txt(tmp_path / "pairs.txt", root, ext="png")
    assert info == {
        "images": 8,
        "unique_images": 6,
        "identities": 3,
        "pairs": 4,
        "genuine": 2,
        "impostor": 2,
        "missing": 1,
    }


def test_wrong_size_image_names_line(tmp_path: Path) -> None:
    root = make_lfw(tmp_path / "lfw")
    Image.new("RGB", (250, 250)).save(root / "Cy_C" / "Cy_C_0001.png")
    (tmp_path / "pairs.txt").write_text(PAIRS)
    with pytest.raises(DataError, match=r"line 6: .*Cy_C_0001.png: expected an aligned 112x112"):
        read_pairs_txt(tmp_path / "pairs.txt", root, ext="png")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Ann_A 1\n", "line 1: expected 'name idx1 idx2'"),
        ("1\nAnn_A 1 two\n", "line 2: image number 'two'"),
        ("10 300\n", "no pairs"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        parse_pairs_txt(tmp_path / "p.txt")


def test_missing_pairs_file_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        parse_pairs_txt(tmp_path / "nope.txt")
    (tmp_path / "p.txt").write_text(PAIRS)
    with pytest.raises(DataError, match="image root is not a folder"):
        read_pairs_txt(tmp_path / "p.txt", tmp_path / "nowhere")
