import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ppfr
from ppfr.data.base import TensorFaces
from ppfr.errors import CheckpointError, InputError
from ppfr.train import TrainConfig, Trainer
from tests.conftest import TINY_CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, method="minusface", **optim):
    return TrainConfig.from_dict(
        {
            "method": method,
            "out": str(tmp_path / method),
            "seed": 3,
            "model": {**TINY_CONFIGS[method], "train_repeats": 2}
            if method == "minusface"
            else TINY_CONFIGS[method],
            "optim": {"epochs": 2, "batch_size": 8, "lr": 0.01, "milestones": [1], **optim},
        }
    )


@pytest.fixture(scope="module")
def small(orl4):
    idx = torch.arange(0, 40, 2)  # 20 faces, 4 people
    return TensorFaces(orl4.faces[idx], orl4.labels[idx.numpy()])


def test_config_toml_roundtrip(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.stages = {"residue": ppfr.train.StageConfig(epochs=5)}
    cfg.to_toml(tmp_path / "c.toml")
    back = TrainConfig.from_toml(tmp_path / "c.toml")
    assert back == cfg
    assert back.stage("residue") == (5, [1], 0.01)
    assert back.stage("protected") == (2, [1], 0.01)


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="unknown key"):
        TrainConfig.from_dict({"optim": {"epoch": 3}})
    with pytest.raises(InputError, match="no such config"):
        TrainConfig.from_toml(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("method = ")
    with pytest.raises(InputError, match="invalid TOML"):
        TrainConfig.from_toml(tmp_path / "bad.toml")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    w = {}
    for part in ("client", "server", "train"):
        w.update(
            {
                f"{part}.{k}": v
                for k, v in load_file(str(out / "checkpoint" / f"{part}.safetensors")).items()
            }
        )
    return w


def test_resume_reaches_the_same_weights(tmp_path, small):
    straight = Trainer(_cfg(tmp_path / "a"), dataset=small, progress=False)
    straight.fit()
    # the same run, stopped after stage 2 epoch 1 and resumed by a fresh Trainer
    cfg = _cfg(tmp_path / "b")
    cut = Trainer(cfg, dataset=small, progress=False)
    stages = cut.model.stages()
    cut.out.mkdir(parents=True)
    cut._run_stage(0, stages[0], 0, None)
    cfg_short = _cfg(tmp_path / "b")
    cfg_short.stages = {"protected": ppfr.train.StageConfig(epochs=1)}
    cut.cfg = cfg_short
    cut._run_stage(1, stages[1], 0, None)  # writes a checkpoint at (stage 1, epoch 1)
    state = torch.load(cut.checkpoint_dir / "trainer_state.pt", weights_only=True)
    assert (state["stage"], state["epoch"]) == (2, 0)
    # rewrite it as "stage 1 (protected), next epoch 1" of the full schedule: exactly what a
    # run killed after that epoch leaves behind
    state["stage"], state["epoch"] = 1, 1
    torch.save(state, cut.checkpoint_dir / "trainer_state.pt")
    resumed = Trainer(_cfg(tmp_path / "b"), dataset=small, progress=False)
    resumed.fit(resume=True)
    a, b = _weights(tmp_path / "a" / "minusface"), _weights(tmp_path / "b" / "minusface")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_from_stage_retrains_the_server_of_a_trained_client(tmp_path, small):
    """Stage 2 alone, on a full run's client, ends with that run's server weights; a
    client is refused from another method's bundle or for a stage that trains it."""
    full = Trainer(_cfg(tmp_path / "a"), dataset=small, progress=False)
    full.fit()
    again = Trainer(_cfg(tmp_path / "b"), dataset=small, progress=False)
    again.fit(from_stage="protected", client=tmp_path / "a" / "minusface" / "model")
    assert not (tmp_path / "b" / "minusface" / "metrics.csv").read_text().count("residue")
    a, b = _weights(tmp_path / "a" / "minusface"), _weights(tmp_path / "b" / "minusface")
    stage1_only = ("train.recognizer.", "train.head.")  # never trained in b
    compared = [k for k in a if not k.startswith(stage1_only)]
    assert any(k.startswith("train.protected_head.") for k in compared)
    for k in compared:
        assert torch.equal(a[k], b[k]), k
    fresh = Trainer(_cfg(tmp_path / "c"), dataset=small, progress=False)
    with pytest.raises(InputError, match="has stages"):
        fresh.fit(from_stage="server")
    with pytest.raises(InputError, match="resume"):
        fresh.fit(resume=True, from_stage="protected")
    with pytest.raises(InputError, match="needs from_stage"):
        fresh.fit(client=tmp_path / "a" / "minusface" / "model")
    with pytest.raises(InputError, match="trains the client"):  # stage 1 trains it
        fresh.fit(from_stage="residue", client=tmp_path / "a" / "minusface" / "model")
    arcface = Trainer(_cfg(tmp_path / "d", method="arcface"), dataset=small, progress=False)
    arcface.fit()
    with pytest.raises(InputError, match="holds a 'arcface' model"):
        fresh.fit(from_stage="protected", client=tmp_path / "d" / "arcface" / "model")


def test_resume_after_a_real_interruption(tmp_path, small):
    """Kill a run after its first epoch (simulated by an exception) and resume it."""
    cfg = _cfg(tmp_path / "x", method="arcface", epochs=3)
    Trainer(cfg, dataset=small, progress=False).fit()
    expected = _weights(Path(cfg.out))

    cfg2 = _cfg(tmp_path / "y", method="arcface", epochs=3)
    t = Trainer(cfg2, dataset=small, progress=False)
    calls = {"n": 0}
    original = t._save_checkpoint

    def save_then_die(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint

    t._save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    Trainer(_cfg(tmp_path / "y", method="arcface", epochs=3), dataset=small, progress=False).fit(
        resume=True
    )
    got = _weights(Path(cfg2.out))
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    rows = (Path(cfg2.out) / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("stage,epoch") and len(rows) == 4  # header + 3 epochs


def test_outputs_and_loss_falls(tmp_path, small):
    cfg = _cfg(tmp_path, method="arcface", epochs=6, lr=0.05, milestones=[5])
    t = Trainer(cfg, dataset=small, progress=False)
    model = t.fit()
    out = Path(cfg.out)
    assert (out / "config.toml").is_file() and (out / "metrics.csv").is_file()
    assert TrainConfig.from_toml(out / "config.toml") == cfg
    losses = [r["loss"] for r in t.history]
    assert losses[-1] < losses[0]
    loaded = ppfr.load(out / "model")
    assert set(loaded.parts) == {"client", "server"}
    x = small.faces[:4]
    assert torch.equal(loaded.embed(loaded.protect(x)), model.embed(model.protect(x)))


def test_resume_without_checkpoint_or_corrupt(tmp_path, small):
    cfg = _cfg(tmp_path, method="arcface", epochs=1)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(cfg, dataset=small, progress=False).fit(resume=True)
    Trainer(cfg, dataset=small, progress=False).fit()
    (Path(cfg.out) / "checkpoint" / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt training state"):
        Trainer(cfg, dataset=small, progress=False).fit(resume=True)


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from ppfr.data.orl import load_orl
from ppfr.train import TrainConfig, Trainer, shutdown_distributed
from tests.conftest import TINY
torch.set_num_threads(1)
ds = load_orl([1, 2, 3, 4])
cfg = TrainConfig.from_dict({{"method": "arcface", "out": {out!r}, "model": TINY,
    "optim": {{"epochs": 2, "batch_size": 8, "lr": 0.01, "milestones": [1]}}}})
t = Trainer(cfg, dataset=ds, progress=False)
t.fit()
flat = torch.cat([p.detach().flatten() for p in t.model.server.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
assert all(torch.equal(gathered[0], g) for g in gathered), "ranks diverged"
print("rank", dist.get_rank(), "steps", t.history[-1]["steps"], "ok")
shutdown_distributed()
"""


def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "run")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok") == 2
    # 40 images, 2 ranks, batch 8 per rank -> 20 per rank -> 2 full steps per epoch
    assert "steps 2" in proc.stdout
    assert (tmp_path / "run" / "model" / "ppfr.toml").is_file()
