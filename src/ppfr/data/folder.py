"""A folder of aligned faces with one sub-folder per identity.

::

    root/
      Aaron_Eckhart/  0001.jpg 0002.jpg ...
      Abel_Pacheco/   ...

Identities are the sub-folder names in sorted order, labels 0..K-1. Only the files
directly inside each sub-folder count; hidden files and folders are ignored.

Every image is checked cheaply at construction (header, size, Pillow's ``verify``, and
for JPEG the end-of-image marker, which catches truncated downloads). Files that fail are
not silently dropped: they are listed in ``skipped`` as ``(path, reason)``, counted in
``describe()``, and one warning says how many. Identity folders left without a readable
image are listed there too and get no label.

Example:
    >>> ds = ImageFolderFaces("casia_aligned")
    >>> ds.describe()
    {'images': 490623, 'identities': 10572, 'skipped': 0}
    >>> face, label = ds[0]          # (3, 112, 112) float32 in [-1, 1], int
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ppfr.data.base import FaceDataset
from ppfr.data.images import FACE_SIZE, is_image_file, read_image, to_tensor
from ppfr.errors import DataError

__all__ = ["ImageFolderFaces"]


def _ends_cleanly(path: Path) -> bool:
    """Whether a JPEG file ends with its EOI marker (allowing trailing zero/space padding)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        tail = f.read().rstrip(b"\0\r\n\t ")
    return tail.endswith(b"\xff\xd9")


def _probe(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image; raises on a corrupt or truncated file."""
    with Image.open(path) as im:
        size, fmt = im.size, im.format
        im.verify()
    # verify() does not notice a JPEG cut short; decode fully only the suspicious ones
    if fmt == "JPEG" and not _ends_cleanly(path):
        with Image.open(path) as im:
            im.load()
    return size


class ImageFolderFaces(FaceDataset):
    """Aligned 112x112 faces, one sub-folder per identity.

    Args:
        root: the folder.
        check_size: raise :class:`DataError` naming any image that is not 112x112. With
            ``False`` such images are resized to 112x112 (bilinear) when loaded; use that
            only for faces aligned to the template at another scale.
        verify: probe every file at construction (default). ``False`` only lists files,
            for very large trees; unreadable files then fail when loaded.
    """

    def __init__(self, root: str | Path, *, check_size: bool = True, verify: bool = True) -> None:
        self.root = Path(root)
        self.check_size = check_size
        self.skipped: list[tuple[Path, str]] = []
        if not self.root.exists():
            raise DataError(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        entries = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise DataError(f"{self.root}: folder is empty")
        folders = sorted((p for p in entries if p.is_dir()), key=lambda p: p.name)
        if not folders:
            raise DataError(
                f"{self.root}: no identity sub-folders (expected one folder of aligned faces "
                "per person)"
            )

        candidates: list[tuple[Path, Path]] = []  # (identity folder, file)
        for folder in folders:
            for f in sorted(folder.iterdir(), key=lambda p: p.name):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if is_image_file(f):
                    candidates.append((folder, f))
                else:
                    self.skipped.append((f, f"not an image file ({f.suffix or 'no suffix'})"))

        files: dict[Path, list[str]] = {folder: [] for folder in folders}
        for folder, f in tqdm(
            candidates,
            desc=f"checking {self.root.name}",
            unit="img",
            disable=None if verify else True,
            leave=False,
        ):
            if verify:
                try:
                    size = _probe(f)
                except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
                    self.skipped.append((f, f"unreadable image ({e})"))
                    continue
                if check_size and size != (FACE_SIZE, FACE_SIZE):
                    raise DataError(
                        f"{f}: expected an aligned {FACE_SIZE}x{FACE_SIZE} face, got "
                        f"{size[0]}x{size[1]} (align it first with `ppfr align`, or pass "
                        "check_size=False to resize)"
                    )
            files[folder].append(str(f))

        self.classes: list[str] = []
        self.paths: list[str] = []
        labels: list[int] = []
        for folder in folders:
            if not files[folder]:
                self.skipped.append((folder, "identity folder without readable images"))
                continue
            labels += [len(self.classes)] * len(files[folder])
            self.paths += files[folder]
            self.classes.append(folder.name)
        self.labels = np.asarray(labels, dtype=np.int64)

        if self.skipped:
            path, reason = self.skipped[0]
            warnings.warn(
                f"{self.root}: skipped {len(self.skipped)} file(s) or folder(s); see "
                f".skipped (first: {path}: {reason})",
                stacklevel=2,
            )
        if not self.paths:
            raise DataError(f"{self.root}: no readable images in {len(folders)} identity folders")

    def load(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        img = read_image(path)
        if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
            if self.check_size:
                raise DataError(
                    f"{path}: expected an aligned {FACE_SIZE}x{FACE_SIZE} face, got "
                    f"{img.shape[1]}x{img.shape[0]}"
                )
            img = np.array(  # a writable copy: torch.from_numpy warns on read-only arrays
                Image.fromarray(img).resize((FACE_SIZE, FACE_SIZE), Image.Resampling.BILINEAR)
            )
        return to_tensor(img)

    def describe(self) -> dict[str, int]:
        return {**super().describe(), "skipped": len(self.skipped)}
