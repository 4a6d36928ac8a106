"""The CPU presets: every method sized to train on ORL's 30 training identities in minutes.

``ppfr demo``, ``ppfr bench orl`` and the ``configs/<method>-orl.toml`` files all train
with these settings. The config files are generated from them (:func:`preset_toml`;
regenerate with ``python -m ppfr.experiments.presets configs``), and
``tests/experiments/test_presets.py`` fails when a file and its preset disagree.
Measured results of the presets are in ``docs/results.md``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ppfr.errors import InputError
from ppfr.train import TrainConfig

#: held-out identities in an ORL split
TEST_IDENTITIES = 10
#: FARs reported on ORL on top of the protocol's 1e-3 and 1e-4: ten held-out identities give
#: 450 impostor pairs, too few for a TAR at 1e-3 (it needs 1,000)
ORL_FARS = (1e-2,)

#: CPU-sized model settings per method, and the epochs of each training stage
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "arcface": {"backbone": "ir18", "backbone_width": 0.25},
    # pixel weight 20, not the paper's 5: in the demo's short stage 1 the L1 term at 5
    # leaves the face in the residue, where the recovery attack reads it back
    # (docs/results.md has both runs)
    "minusface": {
        "backbone": "ir18",
        "backbone_width": 0.25,
        "generator_width": 8,
        "pixel_weight": 20.0,
    },
    "partialface": {"backbone": "ir18", "backbone_width": 0.25, "train_repeats": 3},
    "dctdp": {"backbone": "ir18", "backbone_width": 0.25, "eps_mean": 1.0},
    "duetface": {
        "backbone": "ir18",
        "backbone_width": 0.25,
        "client_width": 0.25,
        "client_embedding_size": 64,
    },
    # the paper's channels (192 -> 162 -> 81) and fractal depth 2
    "fracface": {"backbone": "ir18", "backbone_width": 0.25},
}
#: presets of hardened MinusFace (the method ``minusface-hardened``; docs/privacy.md, "Hiding
#: where the residue is"): the demo preset plus one defence of the residue's spatial outline each
DEMO_MODELS["minusface-equalised"] = {**DEMO_MODELS["minusface"], "equalise": True}
DEMO_MODELS["minusface-equalised-post"] = {
    **DEMO_MODELS["minusface"],
    "equalise": True,
    "equalise_stage1": False,
}
DEMO_MODELS["minusface-tiles"] = {**DEMO_MODELS["minusface"], "tile_grid": 2}
#: FracFace with a secret tile order in place of the public fractal one (docs/privacy.md,
#: "A keyed client"). The key here is public, for measurement: a deployment draws its own
#: (``secrets.randbits(63)``) and keeps it out of the published client
DEMO_MODELS["fracface-keyed"] = {**DEMO_MODELS["fracface"], "key": 20261201}
#: the registered method behind a preset whose name is not a method's
PRESET_METHODS: dict[str, str] = {
    "minusface-equalised": "minusface-hardened",
    "minusface-equalised-post": "minusface-hardened",
    "minusface-tiles": "minusface-hardened",
    "fracface-keyed": "fracface",
}
DEMO_EPOCHS: dict[str, dict[str, int]] = {
    "arcface": {"recognizer": 16},
    # stage 2 sees every image r=3 times an epoch; 8 epochs, not 14: the server overfits
    # its 30 people after that (docs/results.md, "MinusFace's stage 2": +1.0 / +3.3 / +1.5
    # points on the three splits)
    "minusface": {"residue": 6, "protected": 8},
    "partialface": {"recognizer": 6},  # every image 3 times an epoch
    "dctdp": {"joint": 4},
    "duetface": {"client": 8, "server": 12},
    "fracface": {"joint": 16},
    # the hardened presets keep the 14 stage-2 epochs they were measured with
    "minusface-equalised": {"residue": 6, "protected": 14},
    "minusface-equalised-post": {"residue": 6, "protected": 14},
    "minusface-tiles": {"residue": 6, "protected": 14},
    "fracface-keyed": {"joint": 16},
}
#: the recovery attack's inverter in the demo (the published attack uses width 64)
DEMO_ATTACK: dict[str, int] = {"width": 8, "epochs": 10}
#: the linkage attack in the demo: the student starts from the attacker's ArcFace backbone
#: (IR-18 at a quarter width); its epochs are few because each one runs the protected
#: method's protect over every attacker face
DEMO_LINKAGE: dict[str, Any] = {"epochs": 6}
#: the identity-guided recovery in the demo: the recovery inverter (width 8) plus the
#: identity term
DEMO_IDENTITY: dict[str, Any] = {"width": 8, "epochs": 6, "identity_weight": 0.5}


@dataclass(frozen=True)
class DemoPresets:
    """The presets one demo or benchmark run trains and attacks with.

    Each field defaults to the module's preset of the same role, read when the object is
    made (``DemoPresets()`` is the shipped presets); a test or an experiment passes smaller
    or changed ones instead of editing the module's dicts.

    Attributes:
        models: method (preset name) -> model settings (:data:`DEMO_MODELS`).
        epochs: method -> epochs per training stage (:data:`DEMO_EPOCHS`).
        attack: the recovery inverter, ``{"width", "epochs"}`` (:data:`DEMO_ATTACK`).
        linkage: the linkage attack's settings (:data:`DEMO_LINKAGE`).
        identity: the identity-guided recovery's settings (:data:`DEMO_IDENTITY`).
    """

    models: dict[str, dict[str, Any]] = field(default_factory=lambda: DEMO_MODELS)
    epochs: dict[str, dict[str, int]] = field(default_factory=lambda: DEMO_EPOCHS)
    attack: dict[str, int] = field(default_factory=lambda: DEMO_ATTACK)
    linkage: dict[str, Any] = field(default_factory=lambda: DEMO_LINKAGE)
    identity: dict[str, Any] = field(default_factory=lambda: DEMO_IDENTITY)


#: what the preset's config file says about itself, above the settings
_TOML_HEADER = """\
# The `ppfr demo` preset of {method} as a config file: CPU-sized, on the bundled ORL faces.
# Generated from ppfr.experiments.presets (python -m ppfr.experiments.presets configs);
# edit the preset, not this file.
#   ppfr train configs/{method}-orl.toml
"""


def demo_config(
    method: str,
    out: Path,
    epoch_scale: float = 1.0,
    seed: int = 0,
    presets: DemoPresets | None = None,
) -> TrainConfig:
    """The training config of ``method``'s preset, its run in ``out/<method>``.

    Every stage trains its :data:`DEMO_EPOCHS` times ``epoch_scale`` (at least one epoch),
    with one learning-rate step at three quarters of them. ``presets`` (default: the
    shipped :class:`DemoPresets`) gives the model settings and epochs.
    """
    presets = presets if presets is not None else DemoPresets()
    stages = {}
    for name, e in presets.epochs[method].items():
        epochs = max(1, round(e * epoch_scale))
        stages[name] = {"epochs": epochs, "milestones": [max(1, round(epochs * 0.75))]}
    return TrainConfig.from_dict(
        {
            "method": preset_method(method),
            "out": str(out / method),
            "seed": seed,
            "model": presets.models[method],
            "data": {"source": "orl", "test_identities": TEST_IDENTITIES, "split_seed": seed},
            "optim": {"batch_size": 16, "lr": 0.05, "weight_decay": 5e-4},
            "stages": stages,
        }
    )


def preset_method(preset: str) -> str:
    """The registered method a preset trains (``minusface-equalised``: ``minusface-hardened``)."""
    return PRESET_METHODS.get(preset, preset)


def check_methods(methods: tuple[str, ...] | list[str], presets: DemoPresets | None = None) -> None:
    """Refuse methods without a CPU preset in :data:`DEMO_MODELS` (or ``presets.models``)."""
    models = (presets if presets is not None else DemoPresets()).models
    unknown = [m for m in methods if m not in models]
    if unknown:
        raise InputError(f"no demo preset for {unknown}; demo methods: {', '.join(models)}")


def preset_config_name(method: str) -> str:
    """The file under ``configs/`` that holds ``method``'s preset."""
    return f"{method}-orl.toml"


def preset_toml(method: str) -> str:
    """``configs/<method>-orl.toml``: the preset's training config as TOML, with a header.

    The settings are those :func:`demo_config` builds at seed 0, the run folder
    ``runs/<method>-orl``; only what the preset sets is written (the rest keeps
    :class:`~ppfr.train.TrainConfig`'s defaults).
    """
    cfg = demo_config(method, Path("runs"))
    optim = TrainConfig.from_dict({}).optim
    body: dict[str, Any] = {
        "method": cfg.method,
        "out": f"runs/{method}-orl",
        "seed": cfg.seed,
        "model": dict(cfg.model),
        "data": {
            "source": cfg.data.source,
            "test_identities": cfg.data.test_identities,
            "split_seed": cfg.data.split_seed,
        },
        # only the optimiser settings the preset changes from the defaults
        "optim": {
            key: getattr(cfg.optim, key)
            for key in ("batch_size", "lr", "weight_decay")
            if getattr(cfg.optim, key) != getattr(optim, key)
        },
        "stages": {
            name: {"epochs": s.epochs, "milestones": s.milestones} for name, s in cfg.stages.items()
        },
    }
    return _TOML_HEADER.format(method=method) + _toml(body)


def _toml(doc: dict[str, Any]) -> str:
    """``doc`` (top-level keys, then tables and tables of tables) as TOML, lists on one line."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        if table and all(isinstance(v, dict) for v in table.values()):
            for sub, values in table.items():
                lines += ["", f"[{name}.{sub}]", *_toml(values).splitlines()]
        else:
            lines += ["", f"[{name}]", *_toml(table).splitlines()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).partition(" = ")[2].strip()


def write_preset_configs(folder: str | Path) -> list[Path]:
    """Write :func:`preset_toml` of every preset into ``folder``; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for method in DEMO_MODELS:
        path = folder / preset_config_name(method)
        path.write_text(preset_toml(method))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_preset_configs(sys.argv[1] if len(sys.argv) > 1 else "configs"):
        print(written)
