"""The training loop, shared by every method.

A method hands the engine its :class:`~ppfr.methods.base.Stage` list; the engine runs
each stage with SGD (momentum, weight decay, the learning rate times each group's
``lr_scale``) and a step schedule, checkpoints after every epoch and can resume.

Before the first stage of a fresh run the engine calls the method's ``prepare`` hook
(estimates from the training data, e.g. DCTDP's sensitivities; they live in the weights, so
a resumed run skips it).

Determinism: every epoch reseeds the global RNG (dropout, flips, MinusFace shuffles) and
the data order from ``(seed, stage, epoch, rank)``, and a checkpoint holds the weights,
optimizer and schedule at an epoch boundary. So a run resumed from any checkpoint ends
with the same weights as an uninterrupted run with the same seed.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the engine joins the process
group (NCCL on CUDA, gloo on CPU), shards the data with a ``DistributedSampler`` and wraps
the stage's step module in ``DistributedDataParallel``. ``batch_size`` is per process.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from ppfr.data import orl
from ppfr.data.base import FaceDataset
from ppfr.data.open import open_source
from ppfr.errors import CheckpointError, InputError
from ppfr.methods import Method, Stage, create
from ppfr.methods._bundle import PARTS, read_manifest
from ppfr.methods._registry import bundle_method
from ppfr.runtime import tune_allocator
from ppfr.train.config import TrainConfig

STATE_FILE = "trainer_state.pt"


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _device_type(name: str) -> str:
    """The device a config names, with "auto" resolved to CUDA when present."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _derive_seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _resolve_device(name: str, d: _Dist) -> torch.device:
    name = _device_type(name)
    if name == "cuda":
        name = f"cuda:{d.local_rank}"
    return torch.device(name)


def training_data(cfg: TrainConfig) -> FaceDataset:
    """The training split described by ``cfg.data``."""
    source = cfg.data.source.lower()
    if source in ("orl", "orl-padded"):
        train_ids, _ = orl.split_identities(cfg.data.test_identities, cfg.data.split_seed)
        return orl.load_orl(train_ids, aligned=source == "orl")
    data = open_source(cfg.data.source)
    if not isinstance(data, FaceDataset):
        raise InputError(f"{cfg.data.source}: a verification pack cannot be trained on")
    return data


@dataclass
class _EpochTotals:
    """What an epoch adds up: steps, images (over all ranks) and the sum of each loss term."""

    start: float
    steps: int = 0
    seen: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, images: int, logs: dict[str, float]) -> None:
        self.steps += 1
        self.seen += images
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def images_per_s(self) -> float:
        return self.seen / max(time.perf_counter() - self.start, 1e-9)


def _metrics_row(stage: str, epoch: int, lr: float, totals: _EpochTotals) -> dict:
    """The ``metrics.csv`` row of an epoch: its rate and the mean of each loss term."""
    return {
        "stage": stage,
        "epoch": epoch + 1,
        "steps": totals.steps,
        "lr": lr,
        "images_per_s": totals.images_per_s(),
        **{k: v / max(totals.steps, 1) for k, v in totals.sums.items()},
    }


def _train_step(
    step_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    autocast: AbstractContextManager,
    scaler: torch.amp.GradScaler | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    """One optimizer step on a batch; returns the loss and the stage's logged terms."""
    with autocast:
        loss, logs = step_module(x, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, logs


class Trainer:
    """Runs a :class:`TrainConfig`. ``Trainer(cfg).fit(resume=True)`` continues a run."""

    def __init__(
        self, cfg: TrainConfig, dataset: FaceDataset | None = None, progress: bool = True
    ) -> None:
        tune_allocator()  # reuse freed step buffers instead of faulting in fresh pages
        self.cfg = cfg
        self.dist = _setup_distributed(_device_type(cfg.device))
        self.device = _resolve_device(cfg.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.out)
        self.progress = progress and self.dist.main
        self.dataset = dataset if dataset is not None else training_data(cfg)
        torch.manual_seed(_derive_seed(cfg.seed, "init"))  # same initial weights on every rank
        self.model: Method = create(
            cfg.method, num_classes=self.dataset.num_classes, **cfg.model
        ).to(self.device)
        self.history: list[dict] = []

    # ---- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def _save_checkpoint(self, stage: int, epoch: int, optimizer, scheduler, scaler) -> None:
        if not self.dist.main:
            return
        tmp = self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save(tmp, parts=PARTS)
        torch.save(
            {
                "stage": stage,
                "epoch": epoch,  # the next epoch to run
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "config": self.cfg.to_dict(),
            },
            tmp / STATE_FILE,
        )
        old = self.out / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)  # the switch is one rename: never half a checkpoint
        shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self) -> dict:
        ckpt = self.checkpoint_dir
        self.model.load_weights(ckpt, PARTS)
        try:
            return torch.load(ckpt / STATE_FILE, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{ckpt}: {STATE_FILE} is missing") from None
        except Exception as e:  # torch raises several types for a corrupt pickle/zip
            raise CheckpointError(f"{ckpt}/{STATE_FILE}: corrupt training state ({e})") from None

    # ---- the loop
    def _loader(self, stage_index: int, epoch: int, rep: int) -> DataLoader:
        seed = _derive_seed(self.cfg.seed, stage_index, epoch, rep)
        if self.dist.world > 1:
            sampler = DistributedSampler(
                self.dataset,
                self.dist.world,
                self.dist.rank,
                shuffle=True,
                seed=seed & 0x7FFFFFFF,
                drop_last=True,
            )
        else:
            sampler = RandomSampler(self.dataset, generator=torch.Generator().manual_seed(seed))
        per_rank = len(self.dataset) // self.dist.world
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.optim.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            drop_last=per_rank >= self.cfg.optim.batch_size,  # BN needs >1 sample
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )

    def _amp(self):
        if self.device.type != "cuda" or not self.cfg.amp:
            return nullcontext(), None
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16), None
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")

    def fit(
        self,
        resume: bool = False,
        from_stage: str | None = None,
        client: str | os.PathLike | None = None,
    ) -> Method:
        """Train every stage (or continue a checkpointed run) and save the model bundle.

        ``from_stage`` skips the stages before the named one and starts it on the weights
        the model holds. With ``client`` (a bundle of the same method) those weights are
        that bundle's trained client, which every remaining stage must keep frozen: this
        trains a new server for a client already published (MinusFace:
        ``from_stage="protected"``). Data order and per-epoch seeds are those of a full run,
        so with the run's own client and seed the server comes out as the full run's.
        """
        cfg = self.cfg
        stages = self.model.stages()
        names = [s.name for s in stages]
        if from_stage is not None and (resume or from_stage not in names):
            raise InputError(
                "from_stage cannot be combined with resume"
                if resume
                else f"from_stage {from_stage!r}: {self.model.name} has stages {names}"
            )
        if client is not None:
            if from_stage is None:
                raise InputError("a trained client needs from_stage: the stage to start at")
            self._load_client(client, stages[names.index(from_stage) :])
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            cfg.to_toml(self.out / "config.toml")
        start_stage, start_epoch, state = 0, 0, None
        if resume and self.checkpoint_dir.exists():
            state = self._load_checkpoint()
            start_stage, start_epoch = state["stage"], state["epoch"]
        elif resume:
            raise CheckpointError(f"--resume: no checkpoint in {self.checkpoint_dir}")
        elif from_stage is not None:  # the loaded weights already hold the earlier stages
            start_stage = names.index(from_stage)
        else:  # a fresh run: let the method estimate what it needs from the data (DCTDP)
            prep = torch.Generator().manual_seed(_derive_seed(cfg.seed, "prepare"))
            self.model.prepare(self.dataset, generator=prep)
        for si in range(start_stage, len(stages)):
            resumed = state if si == start_stage else None
            self._run_stage(si, stages[si], start_epoch if resumed else 0, resumed)
        if self.dist.main:
            self.model.save(self.out / "model")
        if self.dist.world > 1:
            dist.barrier()
        return self.model.eval()

    def _load_client(self, bundle: str | os.PathLike, stages: list[Stage]) -> None:
        """Load ``bundle``'s client, refusing another method's bundle and a stage that
        would go on training the client."""
        manifest = read_manifest(bundle)
        # the method the bundle loads as (a "minusface" one saved with hardening options:
        # minusface-hardened), not only the one it names
        if bundle_method(manifest)[0].name != self.model.name:
            raise InputError(
                f"{bundle} holds a {manifest.get('method')!r} model; this run trains "
                f"{self.model.name!r}"
            )
        mine = {id(t) for t in self.model.client.parameters()}
        for stage in stages:
            if any(id(t) in mine for g in stage.param_groups for t in g["params"]):
                raise InputError(
                    f"stage {stage.name!r} trains the client, so it cannot keep {bundle}'s"
                )
        self.model.load_weights(bundle, ["client"], manifest)

    def _run_stage(self, si: int, stage: Stage, first_epoch: int, state: dict | None) -> None:
        epochs, milestones, lr = self.cfg.stage(stage.name)
        for m in stage.frozen:
            m.requires_grad_(False)
        if stage.begin is not None:
            stage.begin(self.dataset, self.cfg.data.flip)
        optimizer, scheduler = self._optimizer(stage, lr, milestones)
        autocast, scaler = self._amp()
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        step_module: nn.Module = stage.module
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = DistributedDataParallel(stage.module, device_ids=ids)
        step = partial(_train_step, step_module, optimizer, autocast, scaler)
        for epoch in range(first_epoch, epochs):
            totals = self._run_epoch(si, stage, epoch, epochs, step)
            scheduler.step()
            row = _metrics_row(stage.name, epoch, optimizer.param_groups[-1]["lr"], totals)
            self.history.append(row)
            self._log(row)
            # the checkpoint names what runs next: this stage's next epoch, or the next stage
            next_stage, next_epoch = (si + 1, 0) if epoch + 1 == epochs else (si, epoch + 1)
            self._save_checkpoint(next_stage, next_epoch, optimizer, scheduler, scaler)
        for m in stage.frozen:
            m.requires_grad_(True)

    def _optimizer(self, stage: Stage, lr: float, milestones: list[int]):
        """SGD over the stage's parameter groups and its step schedule."""
        optim = self.cfg.optim
        groups = [
            {"params": g["params"], "lr": lr * g["lr_scale"]}
            | ({"weight_decay": g["weight_decay"]} if "weight_decay" in g else {})
            for g in stage.param_groups
        ]
        optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, optim.gamma)

    def _run_epoch(
        self,
        si: int,
        stage: Stage,
        epoch: int,
        epochs: int,
        step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
    ) -> _EpochTotals:
        """One pass over the stage's data, ``stage.repeats`` loaders long."""
        torch.manual_seed(_derive_seed(self.cfg.seed, si, epoch, self.dist.rank))
        stage.module.train()
        for m in stage.frozen:
            m.eval()
        totals = _EpochTotals(start=time.perf_counter())
        loaders = [self._loader(si, epoch, rep) for rep in range(stage.repeats)]
        bar = tqdm(
            total=sum(len(dl) for dl in loaders),
            desc=f"{self.model.name} {stage.name} {epoch + 1}/{epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for loader in loaders:
            for x, y in loader:
                x, y = self._batch(x, y)
                loss, logs = step(x, y)
                value = float(loss.detach())  # one device sync per step
                totals.add(len(x) * self.dist.world, {"loss": value, **logs})
                bar.set_postfix(loss=f"{value:.3f}", img_s=f"{totals.images_per_s():.1f}")
                bar.update()
        bar.close()
        return totals

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, half of it mirrored when ``data.flip`` is on."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.cfg.data.flip:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        path = self.out / "metrics.csv"
        fields = ["stage", "epoch", "steps", "lr", "images_per_s", "loss", "pixel", "id"]
        fields += [k for k in row if k not in fields]
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.progress:
            parts = " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr"
            )
            tqdm.write(f"[{self.model.name}] {row['stage']} epoch {row['epoch']}: {parts}")


def shutdown_distributed() -> None:
    """Leave the process group cleanly (no-op when not distributed).

    Every rank waits for the others first: tearing gloo down while a peer still talks
    to it can abort the process at exit.
    """
    if dist.is_available() and dist.is_initialized():
        # DDP wrappers of finished stages may survive in reference cycles; their reducers
        # must go while the group is alive, not in a destructor at interpreter exit
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    dataset: FaceDataset | None = None,
) -> Method:
    """Train ``cfg`` (resuming from ``cfg.out/checkpoint`` when asked) and return the model."""
    return Trainer(cfg, dataset=dataset, progress=progress).fit(resume=resume)
