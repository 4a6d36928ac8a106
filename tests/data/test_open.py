"""Format detection, describe_source, and the `ppfr data inspect` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ppfr.cli.data import data_app as app
from ppfr.data.base import TensorFaces, VerificationPairs
from ppfr.data.binpack import write_bin
from ppfr.data.folder import ImageFolderFaces
from ppfr.data.open import describe_source, detect_format, open_source
from ppfr.data.recordio import RecordIOFaces, RecordIOWriter
from ppfr.errors import DataError


def img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    # identity folders, LFW naming so the same tree serves pairs.txt
    for name, n in {"Ann": 2, "Bob": 2}.items():
        (root / "lfw" / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(img(i + 10 * n)).save(root / "lfw" / name / f"{name}_{i:04d}.jpg")
    (root / "pairs.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 2\n")
    (root / "ms1m").mkdir()
    with RecordIOWriter(root / "ms1m" / "train.rec", root / "ms1m" / "train.idx") as w:
        for k in range(5):
            w.write(img(k), k // 2)
    write_bin(root / "lfw.bin", np.stack([img(k) for k in range(4)]), [True, False])
    (root / "notes.csv").write_text("a,b\n")
    return root


def test_detect_format(sources: Path) -> None:
    assert detect_format(sources / "lfw") == "folder"
    assert detect_format(sources / "ms1m") == "recordio"
    assert detect_format(sources / "ms1m" / "train.idx") == "recordio"
    assert detect_format(sources / "lfw.bin") == "bin"
    assert detect_format(sources / "pairs.txt") == "pairs"
    assert detect_format("orl") == "orl"
    with pytest.raises(DataError, match="unknown data source"):
        detect_format(sources / "notes.csv")
    with pytest.raises(DataError, match="no such file or folder"):
        detect_format(sources / "nothing.bin")


def test_open_source_returns_the_right_kind(sources: Path) -> None:
    folder = open_source(sources / "lfw")
    assert isinstance(folder, ImageFolderFaces) and folder.classes == ["Ann", "Bob"]
    rec = open_source(sources / "ms1m")
    assert isinstance(rec, RecordIOFaces) and rec.labels.tolist() == [0, 0, 1, 1, 2]
    assert isinstance(open_source(sources / "ms1m" / "train.rec"), RecordIOFaces)
    pack = open_source(sources / "lfw.bin")
    assert isinstance(pack, VerificationPairs) and len(pack) == 2
    # pairs.txt sits beside lfw/: the image root is found in a sub-folder
    pairs = open_source(sources / "pairs.txt")
    assert isinstance(pairs, VerificationPairs) and pairs.issame.tolist() == [True, False]
    explicit = open_source(sources / "pairs.txt", image_root=sources / "lfw")
    assert (explicit.faces == pairs.faces).all()


def test_pairs_without_images_asks_for_a_root(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("Ann 1 2\n")
    with pytest.raises(DataError, match="pass image_root"):
        open_source(tmp_path / "pairs.txt")


def test_describe_source(sources: Path) -> None:
    assert describe_source(sources / "lfw") == {
        "format": "folder",
        "images": 4,
        "identities": 2,
        "skipped": 0,
    }
    assert describe_source(sources / "ms1m") == {"format": "recordio", "images": 5, "identities": 3}
    assert describe_source(sources / "lfw.bin") == {
        "format": "bin",
        "images": 4,
        "pairs": 2,
        "genuine": 1,
        "impostor": 1,
    }
    info = describe_source(sources / "pairs.txt")
    assert info["pairs"] == 2 and info["identities"] == 2 and info["missing"] == 0
    assert info["image_root"] == str(sources / "lfw")


def test_orl_goes_to_the_bundled_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real loader (400 files, tested with ppfr.data.orl) is stubbed to keep this fast
    import ppfr.data.orl

    fake = TensorFaces(torch.zeros(4, 3, 112, 112), [0, 0, 1, 1])
    monkeypatch.setattr(ppfr.data.orl, "load_orl", lambda: fake)
    assert open_source("orl") is fake
    assert describe_source("ORL") == {"format": "orl", "images": 4, "identities": 2}


def test_cli_inspect(sources: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", str(sources / "ms1m")])
    assert out.exit_code == 0, out.output
    assert "recordio" in out.output and "identities" in out.output
    out = runner.invoke(app, ["inspect", str(sources / "lfw.bin"), "--json"])
    assert out.exit_code == 0
    assert json.loads(out.output) == {
        "path": str(sources / "lfw.bin"),
        "format": "bin",
        "images": 4,
        "pairs": 2,
        "genuine": 1,
        "impostor": 1,
    }


def test_cli_errors_exit_2_without_traceback(sources: Path) -> None:
    out = CliRunner().invoke(app, ["inspect", str(sources / "notes.csv")])
    assert out.exit_code == 2
    assert "unknown data source" in out.output and "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
