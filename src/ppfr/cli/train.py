"""``ppfr train CONFIG.toml [--resume] [--out DIR]``: train a method from a config file
(``configs/`` holds the paper recipes and the ORL presets); under ``torchrun`` it runs
distributed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppfr.cli._common import console, friendly


@friendly
def train_cmd(
    config: Annotated[Path, typer.Argument(help="TOML training config (see configs/).")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    out: Annotated[str | None, typer.Option(help="Override the config's output folder.")] = None,
) -> None:
    """Train a method. Under `torchrun --nproc_per_node N` it runs distributed."""
    # deferred: the training engine (data loaders, DDP) is not loaded for `ppfr --help`
    from ppfr.train import TrainConfig, Trainer, shutdown_distributed

    cfg = TrainConfig.from_toml(config)
    if out:
        cfg.out = out
    trainer = Trainer(cfg)
    model = trainer.fit(resume=resume)
    shutdown_distributed()
    if trainer.dist.main:
        console.print(
            f"[green]done[/green]: model bundle in {Path(cfg.out) / 'model'} "
            f"({model.name}, client fingerprint {model.fingerprint()[:12]})"
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``ppfr`` app."""
    app.command("train")(train_cmd)
