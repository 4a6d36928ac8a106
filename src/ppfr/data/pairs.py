"""LFW-style ``pairs.txt`` verification lists over a folder of aligned faces.

Format (LFW's ``pairs.txt``, ``pairsDevTest.txt``...)::

    10	300                 <- optional header: "folds pairs-per-fold" or a single count
    Abel_Pacheco	1	4       <- same person: name idx1 idx2
    Doris_Roberts	1	Jerry_Hall	3   <- different people: name1 idx1 name2 idx2

Image ``idx`` of ``name`` is ``<image_root>/<name>/<name>_<idx:04d>.<ext>``. The images must
already be aligned 112x112 faces (as in the aligned LFW releases); pairs keep file order,
which the field's 10-fold protocol relies on.

Example:
    >>> pairs = read_pairs_txt("lfw/pairs.txt", "lfw/aligned")
    >>> pairs.describe()
    {'images': 12000, 'pairs': 6000, 'genuine': 3000, 'impostor': 3000}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ppfr.data.base import VerificationPairs
from ppfr.data.images import FACE_SIZE, load_face
from ppfr.errors import DataError

__all__ = ["PairLine", "describe_pairs_txt", "parse_pairs_txt", "read_pairs_txt"]


@dataclass(frozen=True)
class PairLine:
    """One pair: image paths relative to the image root, and its line in the file."""

    line: int
    first: str
    second: str
    same: bool


def _image(name: str, idx: str, ext: str, where: str) -> str:
    try:
        number = int(idx)
    except ValueError:
        raise DataError(f"{where}: image number {idx!r} is not an integer") from None
    return f"{name}/{name}_{number:04d}.{ext}"


def parse_pairs_txt(pairs_path: str | Path, ext: str = "jpg") -> list[PairLine]:
    """Parse a pairs file; errors name the line."""
    pairs_path = Path(pairs_path)
    try:
        text = pairs_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{pairs_path}: no such file") from None
    except OSError as e:
        raise DataError(f"{pairs_path}: cannot read ({e})") from None
    ext = ext.lstrip(".")
    pairs: list[PairLine] = []
    header: list[int] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{pairs_path}, line {number}"
        if not pairs and header is None and len(fields) <= 2 and all(f.isdigit() for f in fields):
            header = [int(f) for f in fields]
            continue
        if len(fields) == 3:
            name, a, b = fields
            pairs.append(
                PairLine(number, _image(name, a, ext, where), _image(name, b, ext, where), True)
            )
        elif len(fields) == 4:
            n1, a, n2, b = fields
            pairs.append(
                PairLine(number, _image(n1, a, ext, where), _image(n2, b, ext, where), False)
            )
        else:
            raise DataError(
                f"{where}: expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', got {line!r}"
            )
    if not pairs:
        raise DataError(f"{pairs_path}: no pairs")
    if header is not None:
        # "folds n": n same + n different per fold; a single count: either the total or
        # the number of same pairs (LFW's pairsDevTest.txt says 500 for 1000 lines)
        expected = [header[0] * header[1] * 2] if len(header) == 2 else [header[0], 2 * header[0]]
        if len(pairs) not in expected:
            warnings.warn(
                f"{pairs_path}: header {' '.join(map(str, header))} announces "
                f"{' or '.join(map(str, expected))} pairs, the file has {len(pairs)}",
                stacklevel=2,
            )
    return pairs


def read_pairs_txt(
    pairs_path: str | Path, image_root: str | Path, ext: str = "jpg"
) -> VerificationPairs:
    """Load the faces of every pair, in file order, as :class:`VerificationPairs`.

    A missing or unreadable image raises :class:`DataError` naming the pairs line and path.
    """
    pairs_path, image_root = Path(pairs_path), Path(image_root)
    if not image_root.is_dir():
        raise DataError(f"{image_root}: image root is not a folder (pairs: {pairs_path})")
    pairs = parse_pairs_txt(pairs_path, ext)
    faces = torch.empty((2 * len(pairs), 3, FACE_SIZE, FACE_SIZE), dtype=torch.float32)
    for i, p in enumerate(
        tqdm(pairs, desc=f"loading {pairs_path.name}", disable=None, leave=False)
    ):
        for j, rel in enumerate((p.first, p.second)):
            try:
                faces[2 * i + j] = load_face(image_root / rel)
            except DataError as e:
                raise DataError(f"{pairs_path}, line {p.line}: {e}") from None
    return VerificationPairs(faces, [p.same for p in pairs], name=pairs_path.stem)


def describe_pairs_txt(
    pairs_path: str | Path, image_root: str | Path, ext: str = "jpg"
) -> dict[str, int]:
    """Counts for a pairs file without decoding images (``missing``: files not found)."""
    image_root = Path(image_root)
    pairs = parse_pairs_txt(pairs_path, ext)
    files = {f for p in pairs for f in (p.first, p.second)}
    genuine = sum(p.same for p in pairs)
    return {
        "images": 2 * len(pairs),
        "unique_images": len(files),
        "identities": len({f.split("/", 1)[0] for f in files}),
        "pairs": len(pairs),
        "genuine": genuine,
        "impostor": len(pairs) - genuine,
        "missing": sum(not (image_root / f).is_file() for f in files),
    }
