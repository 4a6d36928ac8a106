"""The method registry and the model API built on it: ``create``, ``list_methods``, ``load``.

Method modules register their class with :func:`register_method`; this module imports
none of them, so a method module can import it while :mod:`ppfr.methods` is still
initialising (the package imports the built-in methods after this module).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ppfr._registry import Registry
from ppfr.errors import InputError
from ppfr.methods._bundle import PARTS, read_manifest
from ppfr.methods.base import Method

METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` under ``cls.name``."""
    METHODS.register(cls.name)(cls)
    return cls


def list_methods() -> list[str]:
    """Names of every registered method."""
    return METHODS.names()


def make_config(method: str, **config: Any) -> Any:
    """The ``Config`` of a registered method, refusing settings it does not have."""
    cls = METHODS.get(method)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise InputError(
            f"unknown {cls.name} setting(s) {unknown}; valid settings: {', '.join(sorted(names))}"
        )
    return cls.Config(**config)


def create(method: str, *, parts: tuple[str, ...] = PARTS, **config: Any) -> Method:
    """Build a fresh (untrained) model of a registered method.

    ``parts`` picks which of client, server and train to build; the training part needs
    ``num_classes``, so without it only client and server are built.
    """
    cls = METHODS.get(method)
    cfg = make_config(method, **config)
    if "train" in parts and not getattr(cfg, "num_classes", 0):
        parts = tuple(p for p in parts if p != "train")
    return cls(cfg, parts=parts)


def bundle_method(manifest: dict[str, Any]) -> tuple[type[Method], dict[str, Any]]:
    """The registered method and the settings a bundle's manifest loads as: the method it
    names, unless that method maps the bundle to another (:meth:`Method.bundle_settings`;
    a "minusface" bundle saved with hardening options loads as ``minusface-hardened``)."""
    name, settings = METHODS.get(manifest["method"]).bundle_settings(manifest.get("config", {}))
    return METHODS.get(name), settings


def load(
    directory: str | os.PathLike, part: str | None = None, map_location: str = "cpu"
) -> Method:
    """Load a bundle written by :meth:`Method.save`.

    ``part`` is ``"client"``, ``"server"``, or None for every part the bundle holds.
    The model is returned in eval mode.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    available = [p for p in PARTS if p in manifest["parts"]]
    if part is not None and part not in PARTS:
        raise InputError(f"part must be one of {PARTS}, got {part!r}")
    wanted = [part] if part else available
    cls, settings = bundle_method(manifest)
    config = make_config(cls.name, **settings)
    model = cls(config, parts=tuple(wanted))
    model.load_weights(directory, wanted, manifest)
    model.manifest = manifest
    return model.to(map_location).eval()
