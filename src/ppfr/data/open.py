"""Open any supported face source by path, guessing its format.

============================================  ============================  ===============
path                                          format                        returns
============================================  ============================  ===============
``"orl"`` (when no such file exists)          bundled AT&T/ORL faces        FaceDataset
folder with identity sub-folders              :class:`ImageFolderFaces`     FaceDataset
``*.rec`` / ``*.idx``, or a folder holding    :class:`RecordIOFaces`        FaceDataset
``train.rec``
``*.bin``                                     :func:`read_bin`              VerificationPairs
``*.txt`` (LFW ``pairs.txt``)                 :func:`read_pairs_txt`        VerificationPairs
============================================  ============================  ===============

A ``pairs.txt`` needs the folder of aligned faces: ``image_root=``, or else the pairs file's
own folder or one of its sub-folders (LFW ships ``pairs.txt`` beside ``lfw/``), whichever
holds the first pair's images.

Example:
    >>> open_source("orl").describe()
    {'images': 400, 'identities': 40}
    >>> describe_source("data/lfw.bin")
    {'format': 'bin', 'images': 12000, 'pairs': 6000, 'genuine': 3000, 'impostor': 3000}
"""

from __future__ import annotations

from pathlib import Path

from ppfr.data import orl
from ppfr.data.base import FaceDataset, VerificationPairs
from ppfr.data.binpack import describe_bin, read_bin
from ppfr.data.folder import ImageFolderFaces
from ppfr.data.pairs import describe_pairs_txt, parse_pairs_txt, read_pairs_txt
from ppfr.data.recordio import RecordIOFaces
from ppfr.errors import DataError

__all__ = ["describe_source", "detect_format", "open_source"]

FORMATS = ("orl", "folder", "recordio", "bin", "pairs")


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS` for ``path``; :class:`DataError` when none fits."""
    p = Path(path)
    if str(path).lower() == "orl" and not p.exists():
        return "orl"
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "train.rec").is_file():
            return "recordio"
        return "folder"  # ImageFolderFaces explains what is wrong if it is not one
    suffix = p.suffix.lower()
    if suffix in (".rec", ".idx"):
        return "recordio"
    if suffix == ".bin":
        return "bin"
    if suffix == ".txt" or p.name.startswith("pairs"):
        return "pairs"
    raise DataError(
        f"{p}: unknown data source (expected a folder of identity folders, a .rec, a .bin "
        "pack, a pairs .txt, or 'orl')"
    )


def _rec_paths(p: Path) -> tuple[Path, Path | None]:
    rec = p / "train.rec" if p.is_dir() else p.with_suffix(".rec")
    idx = rec.with_suffix(".idx")
    return rec, (idx if idx.is_file() else None)


def _pairs_root(pairs_path: Path, image_root: str | Path | None) -> Path:
    if image_root is not None:
        return Path(image_root)
    first = parse_pairs_txt(pairs_path)[0].first
    parent = pairs_path.parent
    for root in [parent, *sorted(d for d in parent.iterdir() if d.is_dir())]:
        if (root / first).is_file():
            return root
    raise DataError(
        f"{pairs_path}: cannot find its images ({first} is not under {parent} or its "
        "sub-folders); pass image_root"
    )


def open_source(
    path: str | Path, *, image_root: str | Path | None = None
) -> FaceDataset | VerificationPairs:
    """Open ``path`` as a training dataset or verification pairs (see the module table)."""
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "orl":
        return orl.load_orl()
    if fmt == "folder":
        return ImageFolderFaces(p)
    if fmt == "recordio":
        return RecordIOFaces(*_rec_paths(p))
    if fmt == "bin":
        return read_bin(p)
    return read_pairs_txt(p, _pairs_root(p, image_root))


def describe_source(
    path: str | Path, *, image_root: str | Path | None = None
) -> dict[str, int | str]:
    """Counts for a source, cheaply where the format allows.

    Always ``format`` and ``images``; ``identities`` for training sources and pairs files;
    ``pairs``/``genuine``/``impostor`` for verification sources. ``.bin`` packs and pairs
    files are counted without decoding images.
    """
    fmt = detect_format(path)
    p = Path(path)
    info: dict[str, int | str]
    if fmt == "bin":
        info = dict(describe_bin(p))
    elif fmt == "pairs":
        root = _pairs_root(p, image_root)
        info = {**describe_pairs_txt(p, root), "image_root": str(root)}
    else:
        info = dict(open_source(p).describe())
    return {"format": fmt, **info}
