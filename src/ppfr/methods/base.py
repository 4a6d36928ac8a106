"""The interface every method implements.

A method is an :class:`nn.Module` split into three parts, each its own weights file:

- ``client``: what runs on the user's device, a :class:`Client`; its
  ``protect(x, generator)`` turns aligned faces in [-1, 1] into the protected representation
  that leaves the device (:meth:`Method.protect` checks the faces and calls it).
- ``server``: what the recognition service runs; called on a protected representation it
  returns the recognizer's embedding, scaling its input first
  (:class:`~ppfr.methods._builders.Recognition`'s ``input``), and :meth:`Method.embed`
  checks the representation and L2-normalises.
- ``train``: what only training needs (margin heads, auxiliary recognizers). It rides in
  training checkpoints and never in a deployed bundle.

The pieces around the contract live beside it, one concern a module: the bundle format
(:mod:`ppfr.methods._bundle`), the input checks (:mod:`ppfr.methods._checks`), the
recognizer and its head (:mod:`ppfr.methods._builders`) and the training stages and steps
(:mod:`ppfr.methods._steps`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.errors import InputError
from ppfr.methods._builders import build_head
from ppfr.methods._bundle import PARTS, load_into, load_part_state, read_manifest, write_bundle
from ppfr.methods._checks import check_faces, check_representation
from ppfr.methods._steps import Stage


class Client(nn.Module, metaclass=ABCMeta):
    """The device side of a method: ``protect`` makes the representation that is sent.

    Calling the client protects with fresh randomness (``forward(x) = protect(x)``); a
    client whose forward pass returns something else (DuetFace's, the sent parts before
    packing) overrides ``forward``.
    """

    @abstractmethod
    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Faces (B, 3, 112, 112) in [-1, 1] -> the protected representation.

        ``generator`` draws the per-image, per-call randomness of methods that have some.
        """

    def forward(self, x: Tensor) -> Tensor:
        return self.protect(x)


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of every registered method. See the module docstring for the parts."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any, parts: Sequence[str] = PARTS) -> None:
        super().__init__()
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise InputError(f"unknown part(s) {sorted(unknown)}; parts are {PARTS}")
        self.config = config
        #: the manifest of the bundle this model was loaded from (``ppfr.load``); empty
        #: for a model built in memory
        self.manifest: dict[str, Any] = {}
        self.parts = tuple(p for p in PARTS if p in parts)
        self.client: nn.Module | None = self.build_client() if "client" in parts else None
        self.server: nn.Module | None = self.build_server() if "server" in parts else None
        self.train_part: nn.Module | None = self.build_train() if "train" in parts else None
        # channels-last weights make every convolution run channels-last (oneDNN's fast
        # layout on CPU, tensor cores' on GPU; docs/benchmarks.md has the timings). Bundles
        # and fingerprints read weights in the standard layout (.contiguous()), so files do
        # not depend on it.
        self.to(memory_format=torch.channels_last)

    # ---- what each method defines
    @abstractmethod
    def build_client(self) -> nn.Module:
        """The modules that run on the user's device (may hold no weights)."""

    @abstractmethod
    def build_server(self) -> nn.Module:
        """The modules the recognition service runs."""

    def build_train(self) -> nn.Module:
        """Training-only modules (heads, auxiliary recognizers); needs ``num_classes``.

        By default the server's margin head alone, under the key ``head``.
        """
        return nn.ModuleDict({"head": build_head(self.config)})

    @abstractmethod
    def stages(self) -> list[Stage]:
        """Training stages, in order."""

    @property
    @abstractmethod
    def representation_shape(self) -> tuple[int, ...]:
        """Shape of one protected representation (what ``protect`` returns per face)."""

    #: value range of the protected representation, checked by ``embed``. None means
    #: unbounded (noise, scaled or raw coefficients): ``embed`` then checks only that
    #: the values are finite
    representation_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    #: how a representation's values are arranged, said when one has the wrong shape
    #: (empty: maps of ``representation_shape``, nothing to add)
    representation_layout: ClassVar[str] = ""

    @classmethod
    def bundle_settings(cls, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The registered method and settings that a bundle of this method, whose manifest
        holds ``settings``, is loaded as (``ppfr.load``). By default: this method, the
        settings as they are; a method whose settings moved to another method maps the
        bundles saved before the move (MinusFace's hardening options)."""
        return cls.name, settings

    # ---- the API: the parts do the work
    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Client side: faces (B, 3, 112, 112) in [-1, 1] -> protected representation.

        ``generator`` draws the per-image, per-call randomness of methods that have some.
        """
        return self._part("client").protect(check_faces(x), generator)

    def embed(self, p: Tensor) -> Tensor:
        """Server side: protected representation -> L2-normalised (B, D) templates."""
        return F.normalize(self._part("server")(self.check_representation(p)))

    def view(self, p: Tensor) -> Tensor:
        """The representation as a picture: (N, 3, 112, 112) in [0, 1].

        By default a representation of ``3n`` channels is ``n`` stacked images (ArcFace's
        face, MinusFace's shuffles): the first, mapped from ``representation_range`` to
        [0, 1]. Methods whose representation is no image override it (for example by
        decoding their coefficients with :func:`ppfr.freq.decode`).
        """
        want = (3 * self.stacked_images, 112, 112)
        if self.representation_range is None or tuple(self.representation_shape) != want:
            raise InputError(
                f"{self.name}: a representation of shape {tuple(self.representation_shape)} "
                "is no image; the method needs its own view(p)"
            )
        lo, hi = self.representation_range
        return ((p[:, :3].float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    @property
    def stacked_images(self) -> int:
        """How many 3-channel images a representation stacks (MinusFace: its shuffles)."""
        return 1

    def inversion_input(self, p: Tensor) -> Tensor:
        """What a recovery attack's inverter reads: (N, C, 112, 112) maps (default: ``p``).

        Methods whose representation is no stack of 112x112 maps (DuetFace's packed rows)
        or that the server scales (DCTDP) override it.
        """
        return p

    def prepare(self, dataset: Any, *, generator: torch.Generator | None = None) -> None:
        """Fit what a method estimates from the training data before training (default: none).

        The trainer calls it once, before the first stage of a fresh run (never on resume:
        what it estimates lives in the model's weights, so checkpoints carry it). DCTDP
        estimates each coefficient's sensitivity here. ``dataset`` is a
        :class:`~ppfr.data.base.FaceDataset`; ``generator`` draws any sample it takes.
        """

    # ---- shared plumbing
    def param_group(
        self, *sources: nn.Module | Tensor, lr_scale: float = 1.0, **options: Any
    ) -> dict[str, Any]:
        """One optimiser parameter group for a :class:`Stage`: the parameters of ``sources``
        (modules, or parameters themselves) in order, with ``lr_scale`` and any per-group
        ``options`` (``weight_decay``)."""
        params: list[Tensor] = []
        for source in sources:
            params += list(source.parameters()) if isinstance(source, nn.Module) else [source]
        return {"params": params, "lr_scale": lr_scale, **options}

    def _part(self, part: str) -> nn.Module:
        module = {"client": self.client, "server": self.server, "train": self.train_part}[part]
        if module is None:
            raise InputError(
                f"this {self.name} model was loaded without its {part} part "
                f"(loaded parts: {', '.join(self.parts)})"
            )
        return module

    def check_representation(self, p: Any, what: str = "embed") -> Tensor:
        """``p`` if it is a batch of this method's representations, else an InputError
        (:func:`ppfr.methods._checks.check_representation`)."""
        return check_representation(
            p,
            self.name,
            tuple(self.representation_shape),
            self.representation_range,
            what,
            self.representation_layout,
        )

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def fingerprint(self, part: str = "client") -> str:
        """SHA-256 of a part's weights and config: names the model behind a representation."""
        h = hashlib.sha256(self._fingerprint_key().encode())
        for key, t in sorted(self._part(part).state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _fingerprint_key(self) -> str:
        """What a fingerprint hashes before the weights: the method and its config."""
        return f"{self.name}:{self.config_dict()}"

    def load_weights(
        self, directory: str | os.PathLike, parts: Iterable[str], manifest: dict | None = None
    ) -> None:
        """Load the given parts of the bundle in ``directory`` into this model, in place."""
        directory = Path(directory)
        manifest = manifest if manifest is not None else read_manifest(directory)
        for part in parts:
            state = load_part_state(directory, manifest, part)
            load_into(self._part(part), state, f"{directory}/{part}")

    def config_dict(self) -> dict[str, Any]:
        """The config as bundles write it (``ppfr.toml``) and fingerprints hash it."""
        return dataclasses.asdict(self.config)

    def save(self, directory: str | os.PathLike, parts: Iterable[str] | None = None) -> Path:
        """Write a bundle (:mod:`ppfr.methods._bundle`): ``ppfr.toml`` plus one safetensors
        file per part.

        By default the client and server parts are saved (the training part only goes in
        training checkpoints). Files are written to a temporary name and renamed, so an
        interrupted save never leaves a half-written file under the final name.
        """
        parts = tuple(parts) if parts is not None else tuple(p for p in self.parts if p != "train")
        # hash each part once; the client's also goes in the manifest's top level, so a
        # server-only bundle can recognise representations made by its client
        fingerprints = {p: self.fingerprint(p) for p in {*parts, "client"} if p in self.parts}
        states = {
            part: {
                k: v.detach().cpu().contiguous() for k, v in self._part(part).state_dict().items()
            }
            for part in parts
        }
        return write_bundle(
            directory,
            method=self.name,
            config=self.config_dict(),
            states=states,
            fingerprints=fingerprints,
        )
