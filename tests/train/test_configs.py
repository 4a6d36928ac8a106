"""Every recipe in configs/ parses and builds its model (no data needed)."""

from pathlib import Path

import pytest

import ppfr
from ppfr.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_the_recipes_are_there():
    names = {p.stem for p in CONFIGS}
    for method in ("arcface", "minusface", "partialface", "dctdp"):
        assert f"{method}-ir18-bupt" in names
    assert {"arcface-ir50-ms1mv2", "partialface-ir50-ms1mv2", "dctdp-ir50-ms1mv2"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_parses_and_builds(path):
    cfg = TrainConfig.from_toml(path)
    # the file names its method's family (minusface-tiles-orl trains minusface-hardened)
    assert cfg.method.split("-")[0] == path.stem.split("-")[0]
    # the model only: a 2-class head stands in for the dataset's identities
    model = ppfr.create(cfg.method, num_classes=2, **cfg.model)
    assert model.config.backbone == cfg.model["backbone"]
    if len(model.representation_shape) == 3:  # maps; DuetFace sends a packed vector
        assert model.server["recognizer"].in_channels == model.representation_shape[0]
    names = [s.name for s in model.stages()]
    assert set(cfg.stages) <= set(names)  # overrides name real stages of the method
    for name in names:
        epochs, milestones, lr = cfg.stage(name)
        assert epochs >= 1 and lr > 0 and all(0 < m < epochs for m in milestones)
