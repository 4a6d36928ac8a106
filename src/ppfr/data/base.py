"""The one dataset interface every face source implements.

Training sources (image folders, RecordIO, ORL) are :class:`FaceDataset`: a map-style
PyTorch dataset of ``(face, label)`` with ``face`` a float32 (3, 112, 112) tensor in
[-1, 1] and ``label`` an int identity in ``[0, num_classes)``.

Verification sources (``.bin`` packs, ``pairs.txt``) are :class:`VerificationPairs`:
2N faces where pair ``i`` is faces ``2i`` and ``2i+1``, and N same-person flags.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ppfr.errors import InputError


class FaceDataset(Dataset, metaclass=ABCMeta):
    """Labelled aligned faces. Subclasses fill ``labels`` and implement ``load``."""

    #: identity label of every item, int64, length ``len(self)``
    labels: np.ndarray
    #: human-readable identity names, index = label (may be empty)
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> torch.Tensor:
        """Return face ``index`` as float32 (3, 112, 112) in [-1, 1]."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index), int(self.labels[index])

    def stack(self, indices=None) -> torch.Tensor:
        """Faces ``indices`` (all of them by default) as one (N, 3, 112, 112) tensor."""
        indices = range(len(self)) if indices is None else indices
        return torch.stack([torch.as_tensor(self.load(int(i))) for i in indices])

    def describe(self) -> dict[str, int]:
        return {"images": len(self), "identities": int(len(np.unique(self.labels)))}


class TensorFaces(FaceDataset):
    """Faces already in memory: (N, 3, 112, 112) in [-1, 1] with N labels."""

    def __init__(self, faces: torch.Tensor, labels, classes: list[str] | None = None) -> None:
        if faces.ndim != 4 or faces.shape[1] != 3:
            raise InputError(f"faces must be (N, 3, H, W), got {tuple(faces.shape)}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(faces):
            raise InputError(f"{len(faces)} faces but {len(labels)} labels")
        self.faces = faces
        self.labels = labels
        self.classes = list(classes or [])

    def load(self, index: int) -> torch.Tensor:
        return self.faces[index]

    def stack(self, indices=None) -> torch.Tensor:
        return self.faces if indices is None else self.faces[torch.as_tensor(indices)]


@dataclass
class VerificationPairs:
    """2N faces (float32 (2N, 3, 112, 112) in [-1, 1]) and N same-person flags."""

    faces: torch.Tensor
    issame: np.ndarray
    name: str = "pairs"

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame, dtype=bool)
        if self.faces.ndim != 4 or len(self.faces) != 2 * len(self.issame):
            raise InputError(
                f"{self.name}: need 2N faces for N pairs, got {tuple(self.faces.shape)} "
                f"faces and {len(self.issame)} pairs"
            )

    def __len__(self) -> int:
        return len(self.issame)

    def describe(self) -> dict[str, int]:
        return {
            "images": len(self.faces),
            "pairs": len(self.issame),
            "genuine": int(self.issame.sum()),
            "impostor": int((~self.issame).sum()),
        }
