"""The CPU presets and their files under configs/ agree (configs/<method>-orl.toml)."""

import inspect
from pathlib import Path

import pytest

from ppfr.experiments import presets
from ppfr.serve.calibrate import calibrate
from ppfr.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REGENERATE = "regenerate with: python -m ppfr.experiments.presets configs"


def _without_out(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    del d["out"]  # the run folder: runs/<method>-orl in the file, the caller's in the demo
    return d


@pytest.mark.parametrize("method", list(presets.DEMO_MODELS))
def test_config_file_trains_what_the_preset_trains(method):
    path = CONFIGS / presets.preset_config_name(method)
    assert path.is_file(), f"{path.name} missing; {REGENERATE}"
    from_file = TrainConfig.from_toml(path)
    preset = presets.demo_config(method, Path("runs"))
    assert _without_out(from_file) == _without_out(preset), f"{path.name} drifted; {REGENERATE}"
    assert from_file.out == f"runs/{method}-orl"
    # the same epochs, milestones and learning rate in every stage the method trains
    for stage in presets.DEMO_EPOCHS[method]:
        assert from_file.stage(stage) == preset.stage(stage)


@pytest.mark.parametrize("method", list(presets.DEMO_MODELS))
def test_config_file_is_the_generated_text(method):
    path = CONFIGS / presets.preset_config_name(method)
    assert path.read_text() == presets.preset_toml(method), f"{path.name} edited; {REGENERATE}"


def test_every_orl_config_has_a_preset():
    files = {p.name for p in CONFIGS.glob("*-orl.toml")}
    assert files == {presets.preset_config_name(m) for m in presets.DEMO_MODELS}


def test_a_drifted_file_is_caught(tmp_path):
    """The check above fails on a file that trains one stage longer than its preset."""
    text = presets.preset_toml("minusface")
    assert text.count("epochs = 8") == 1  # stage 2's
    text = text.replace("epochs = 8", "epochs = 10")
    path = tmp_path / "minusface-orl.toml"
    path.write_text(text)
    preset = presets.demo_config("minusface", Path("runs"))
    assert _without_out(TrainConfig.from_toml(path)) != _without_out(preset)


def test_epoch_scale_and_seed_reach_the_config():
    cfg = presets.demo_config("minusface", Path("out"), epoch_scale=0.5, seed=3)
    assert cfg.stage("protected")[:2] == (4, [3]) and cfg.stage("residue")[:2] == (3, [2])
    assert (cfg.seed, cfg.data.split_seed, cfg.out) == (3, 3, str(Path("out") / "minusface"))


def test_calibration_holds_out_the_presets_identities():
    """`ppfr calibrate` checks a model on the people the ORL presets never trained on."""
    default = inspect.signature(calibrate).parameters["test_identities"].default
    assert default == presets.TEST_IDENTITIES
