"""Training configuration: one dataclass tree, read from and written to TOML.

Example (the layout of the files in ``configs/``; ``configs/*-orl.toml`` are generated from
the CPU presets, ``python -m ppfr.experiments.presets configs``)::

    method = "minusface"
    out = "runs/minusface-orl"
    seed = 0

    [model]                 # the method's own settings (see ppfr.create)
    backbone = "ir18"
    backbone_width = 0.25

    [data]
    source = "orl"          # "orl" (YuNet-aligned), "orl-padded", a folder of identity
                            # sub-folders, or a train.rec
    test_identities = 10    # ORL only: identities held out of training

    [optim]
    epochs = 24
    batch_size = 64
    lr = 0.01
    milestones = [10, 18, 22]

    [stages.residue]        # per-stage overrides (MinusFace: "residue", "protected")
    epochs = 12
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ppfr.errors import InputError


@dataclass
class DataConfig:
    source: str = "orl"
    test_identities: int = 10
    split_seed: int = 0
    flip: bool = True
    num_workers: int = 0


@dataclass
class OptimConfig:
    epochs: int = 24
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [10, 18, 22])
    gamma: float = 0.1


@dataclass
class StageConfig:
    """Per-stage overrides; unset fields fall back to ``[optim]``."""

    epochs: int | None = None
    milestones: list[int] | None = None
    lr: float | None = None


@dataclass
class TrainConfig:
    method: str = "minusface"
    out: str = "runs/ppfr"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def stage(self, name: str) -> tuple[int, list[int], float]:
        """(epochs, milestones, lr) of a stage after overrides."""
        o = self.stages.get(name, StageConfig())
        epochs = o.epochs if o.epochs is not None else self.optim.epochs
        milestones = o.milestones if o.milestones is not None else self.optim.milestones
        return epochs, list(milestones), o.lr if o.lr is not None else self.optim.lr

    # ---- TOML
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k not in _RETIRED_KEYS}
        sub = {
            "data": _build(DataConfig, d.pop("data", {}), "data"),
            "optim": _build(OptimConfig, d.pop("optim", {}), "optim"),
            "stages": {
                k: _build(StageConfig, v, f"stages.{k}") for k, v in d.pop("stages", {}).items()
            },
        }
        return _build(cls, {**d, **sub}, "config")

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such config file")
        try:
            return cls.from_dict(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"{path}: invalid TOML ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self, path: str | Path) -> None:
        Path(path).write_text(tomli_w.dumps(self.to_dict()))


#: top-level keys that older configs (and the config.toml of older runs) set and that no
#: longer mean anything: read and ignored, so those files still load
_RETIRED_KEYS = frozenset({"log_every"})


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise InputError(f"[{where}] must be a table, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown} in [{where}]; valid: {', '.join(sorted(names))}"
        )
    return cls(**values)


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
