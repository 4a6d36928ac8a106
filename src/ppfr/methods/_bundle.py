"""The bundle format: how a model's parts are written to and read from a directory.

A bundle directory holds ``ppfr.toml`` (method, config, and per part its file and
SHA-256 fingerprint) and ``<part>.safetensors`` for each part saved. A client bundle
therefore carries no recognizer weights and a server bundle no generator weights.
:meth:`ppfr.methods.Method.save` writes one (:func:`write_bundle`); ``ppfr.load`` reads it
back (:func:`read_manifest`, :func:`load_part_state`, :func:`load_into`).
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ppfr.errors import CheckpointError

#: a model's parts, in the order they are built, saved and loaded
PARTS = ("client", "server", "train")
BUNDLE_FORMAT = 1
MANIFEST = "ppfr.toml"


def write_bundle(
    directory: str | os.PathLike,
    *,
    method: str,
    config: dict[str, Any],
    states: dict[str, dict[str, Tensor]],
    fingerprints: dict[str, str],
) -> Path:
    """Write ``ppfr.toml`` and one ``<part>.safetensors`` per entry of ``states`` (in order).

    ``fingerprints`` holds every saved part's and, when the model has one, the client's
    (it also goes in the manifest's top level, so a server-only bundle can recognise
    representations made by its client). Files are written to a temporary name and
    renamed, so an interrupted save never leaves a half-written file under the final name.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "method": method,
        "ppfr_version": _version(),
        "config": _toml_safe(config),
        "parts": {},
    }
    if "client" in fingerprints:
        manifest["client_fingerprint"] = fingerprints["client"]
    for part, state in states.items():
        fname = f"{part}.safetensors"
        _atomic(out / fname, lambda p, s=state: save_file(s, str(p)))
        manifest["parts"][part] = {"file": fname, "fingerprint": fingerprints[part]}
    _atomic(out / MANIFEST, lambda p: p.write_bytes(tomli_w.dumps(manifest).encode()))
    return out


def _version() -> str:
    # read when a bundle is saved: at module level it would close an import cycle
    from ppfr import (
        __version__,
    )  # deferred: ppfr/__init__.py imports ppfr.methods, hence this module

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
