"""The interface every method implements, and its bundle format.

A method is an :class:`nn.Module` split into three parts, each its own weights file:

- ``client``: what runs on the user's device; its ``protect(x, generator)`` turns aligned
  faces in [-1, 1] into the protected representation that leaves the device
  (:meth:`Method.protect` checks the faces and calls it).
- ``server``: what the recognition service runs; called on a protected representation it
  returns the recognizer's embedding, scaling its input first (:class:`Recognition`'s
  ``input``), and :meth:`Method.embed` checks the representation and L2-normalises.
- ``train``: what only training needs (margin heads, auxiliary recognizers). It rides in
  training checkpoints and never in a deployed bundle.

A bundle directory holds ``ppfr.toml`` (method, config, and per part its file and
SHA-256 fingerprint) and ``<part>.safetensors`` for each part saved. A client bundle
therefore carries no recognizer weights and a server bundle no generator weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import tomllib
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import tomli_w
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ppfr.errors import CheckpointError, InputError
from ppfr.nets import create_backbone, create_head

PARTS = ("client", "server", "train")
BUNDLE_FORMAT = 1
MANIFEST = "ppfr.toml"


@dataclass
class Stage:
    """One training stage of a method.

    ``module(x, y)`` returns ``(loss, logs)``; the engine wraps it in DDP when distributed.
    ``param_groups`` are ``{"params": [...], "lr_scale": float}``, optionally with a
    ``"weight_decay"`` that replaces the run's for that group (DCTDP's noise budgets take
    none); ``frozen`` modules are kept in eval mode; each epoch passes over the data
    ``repeats`` times. ``begin(dataset, flip)``, when given, runs before the stage's first
    epoch (also when a run resumes into the stage), after ``frozen`` is frozen, with the
    training dataset and whether batches are mirrored: a step whose client is frozen can
    precompute per-image work there (MinusFace's stage 2).
    """

    name: str
    module: nn.Module
    param_groups: list[dict[str, Any]]
    frozen: list[nn.Module] = field(default_factory=list)
    repeats: int = 1
    begin: Callable[[Any, bool], None] | None = None


def check_faces(x: Any, what: str = "protect") -> Tensor:
    """Validate a batch of aligned faces: float (B, 3, 112, 112) in [-1, 1]."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what}: expected a torch.Tensor of faces, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{what}: expected float faces in [-1, 1], got {x.dtype} "
            "(convert uint8 images with ppfr.data.images.to_tensor)"
        )
    if x.ndim != 4 or x.shape[1:] != (3, 112, 112):
        raise InputError(f"{what}: expected faces of shape (B, 3, 112, 112), got {tuple(x.shape)}")
    check_range(x, -1.0, 1.0, what)
    return x


def check_range(x: Tensor, lo: float, hi: float, what: str) -> None:
    if x.numel() == 0:
        return
    vmin, vmax = torch.aminmax(x.detach())
    if not (torch.isfinite(vmin) and torch.isfinite(vmax)):
        raise InputError(f"{what}: input contains NaN or infinite values")
    tol = 1e-3 * (hi - lo)
    if vmin < lo - tol or vmax > hi + tol:
        raise InputError(
            f"{what}: values must be in [{lo:g}, {hi:g}], "
            f"got [{float(vmin):.4g}, {float(vmax):.4g}]"
        )


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

    @abstractmethod
    def build_train(self) -> nn.Module:
        """Training-only modules (heads, auxiliary recognizers); needs ``num_classes``."""

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

    def check_representation(self, p: Any) -> Tensor:
        if not isinstance(p, Tensor) or not p.is_floating_point():
            got = p.dtype if isinstance(p, Tensor) else type(p).__name__
            raise InputError(f"embed: expected a float tensor, got {got}")
        want = self.representation_shape
        if p.ndim != len(want) + 1 or tuple(p.shape[1:]) != want:
            raise InputError(
                f"embed: {self.name} expects representations of shape "
                f"(B, {', '.join(map(str, want))}), "
                f"got {tuple(p.shape)}"
            )
        if self.representation_range is None:
            check_range(p, -math.inf, math.inf, "embed")
        else:
            check_range(p, *self.representation_range, "embed")
        return p

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def fingerprint(self, part: str = "client") -> str:
        """SHA-256 of a part's weights and config: names the model behind a representation."""
        h = hashlib.sha256(f"{self.name}:{self.config_dict()}".encode())
        for key, t in sorted(self._part(part).state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

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
        return dataclasses.asdict(self.config)

    def save(self, directory: str | os.PathLike, parts: Iterable[str] | None = None) -> Path:
        """Write a bundle: ``ppfr.toml`` plus one safetensors file per part.

        By default the client and server parts are saved (the training part only goes in
        training checkpoints). Files are written to a temporary name and renamed, so an
        interrupted save never leaves a half-written file under the final name.
        """
        parts = tuple(parts) if parts is not None else tuple(p for p in self.parts if p != "train")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "method": self.name,
            "ppfr_version": _version(),
            "config": _toml_safe(self.config_dict()),
            "parts": {},
        }
        # hash each part once; the client's also goes in the manifest's top level, so a
        # server-only bundle can recognise representations made by its client
        fingerprints = {p: self.fingerprint(p) for p in {*parts, "client"} if p in self.parts}
        if "client" in fingerprints:
            manifest["client_fingerprint"] = fingerprints["client"]
        for part in parts:
            module = self._part(part)
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            fname = f"{part}.safetensors"
            _atomic(out / fname, lambda p, s=state: save_file(s, str(p)))
            manifest["parts"][part] = {"file": fname, "fingerprint": fingerprints[part]}
        _atomic(out / MANIFEST, lambda p: p.write_bytes(tomli_w.dumps(manifest).encode()))
        return out


def _version() -> str:
    # read when a bundle is saved: at module level it would close an import cycle
    from ppfr import __version__  # deferred: ppfr/__init__.py imports this module

    return __version__


def _toml_safe(d: dict[str, Any]) -> dict[str, Any]:
    # TOML has no null: drop None values (dataclass defaults restore them on load)
    return {k: _toml_safe(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a ppfr model bundle ({MANIFEST} is missing)")
    try:
        manifest = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt manifest ({e})") from None
    for key in ("format", "method", "parts"):
        if key not in manifest:
            raise CheckpointError(f"{path}: manifest has no {key!r} entry")
    if manifest["format"] > BUNDLE_FORMAT:
        raise CheckpointError(
            f"{path}: bundle format {manifest['format']} is newer than this ppfr supports"
        )
    return manifest


def load_part_state(directory: Path, manifest: dict[str, Any], part: str) -> dict[str, Tensor]:
    entry = manifest["parts"].get(part)
    if entry is None:
        raise CheckpointError(
            f"{directory}: bundle has no {part} part (it has: {', '.join(manifest['parts'])})"
        )
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt weights file ({e})") from None


def load_into(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{where}: weights do not match the model config ({first})") from None


@dataclass
class RecognizerConfig:
    """Settings every method shares: the server's recognizer and its training head."""

    backbone: str = "ir18"
    backbone_width: float = 1.0
    embedding_size: int = 512
    dropout: float = 0.0
    head: str = "arcface"
    #: training identities; only training needs it (it sizes the margin head)
    num_classes: int = 0


def build_recognizer(cfg: RecognizerConfig, in_channels: int) -> nn.Module:
    return create_backbone(
        cfg.backbone,
        in_channels=in_channels,
        embedding_size=cfg.embedding_size,
        width=cfg.backbone_width,
        dropout=cfg.dropout,
    )


def build_head(cfg: RecognizerConfig) -> nn.Module:
    return create_head(cfg.head, embedding_size=cfg.embedding_size, num_classes=cfg.num_classes)


class Rescale(nn.Module):
    """A network's input scaling: ``(x - shift) / divisor`` (no weights).

    Brings a representation to inputs of order one: MinusFace's X_p in [0, 1] to [-1, 1]
    (``shift = divisor = 0.5``), DuetFace's high channels divided by ``high_coef_scale``.
    """

    def __init__(self, divisor: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.divisor, self.shift = float(divisor), float(shift)

    def forward(self, x: Tensor) -> Tensor:
        if self.shift:
            x = x - self.shift
        return x / self.divisor if self.divisor != 1.0 else x

    def extra_repr(self) -> str:
        return f"divisor={self.divisor:g}, shift={self.shift:g}"


class Recognition(nn.ModuleDict):
    """The server part of a method whose server is one recognizer: ``recognizer(input(p))``.

    ``input`` is the scaling the recognizer was trained with (:class:`Rescale`, or a module
    with weights of its own such as DCTDP's sensitivities; none: the representation as it
    is). Keys ``input`` and ``recognizer`` name the weights in bundles.
    """

    def __init__(self, recognizer: nn.Module, input_scale: nn.Module | None = None) -> None:
        scale = nn.Identity() if input_scale is None else input_scale
        super().__init__({"input": scale, "recognizer": recognizer})

    def forward(self, p: Tensor) -> Tensor:
        return self["recognizer"](self["input"](p))


class RecognizerStep(nn.Module):
    """Training step "recognizer + margin head on inputs made by ``prepare``".

    ``prepare`` runs without gradients (it is the frozen client side).
    """

    def __init__(self, prepare, recognizer: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.prepare = prepare
        self.recognizer = recognizer
        self.head = head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            inputs = self.prepare(x)
        loss = self.head(self.recognizer(inputs), y)
        return loss, {"id": float(loss.detach())}


class JointStep(nn.Module):
    """Training step "client, recognizer and margin head on one loss": gradients reach the
    client's weights through its ``protect`` (DCTDP's noise budgets, FracFace's refining)."""

    def __init__(self, client: nn.Module, server: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.client, self.server, self.head = client, server, head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss = self.head(self.server(self.client.protect(x)), y)
        return loss, {"id": float(loss.detach())}
