"""``ppfr train CONFIG.toml [--resume] [--out DIR] [--client BUNDLE --from-stage NAME]``:
train a method from a config file (``configs/`` holds the paper recipes and the ORL
presets); under ``torchrun`` it runs distributed. ``--client`` keeps a trained client and
trains only the stages from ``--from-stage`` on: a new server for a published client."""

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
    client: Annotated[
        Path | None,
        typer.Option(
            help="Keep this bundle's trained client (same method) and train only the "
            "stages from --from-stage on, which must leave the client frozen.",
        ),
    ] = None,
    from_stage: Annotated[
        str | None,
        typer.Option(help="Start at this stage (MinusFace: 'protected', the server's)."),
    ] = None,
) -> None:
    """Train a method. Under `torchrun --nproc_per_node N` it runs distributed.

    Example, a new server for a MinusFace client already published:
    `ppfr train configs/minusface-orl.toml --client runs/old/model --from-stage protected`
    """
    # deferred: the training engine (data loaders, DDP) is not loaded for `ppfr --help`
    from ppfr.train import TrainConfig, Trainer, shutdown_distributed

    cfg = TrainConfig.from_toml(config)
    if out:
        cfg.out = out
    trainer = Trainer(cfg)
    model = trainer.fit(resume=resume, from_stage=from_stage, client=client)
    shutdown_distributed()
    if trainer.dist.main:
        console.print(
            f"[green]done[/green]: model bundle in {Path(cfg.out) / 'model'} "
            f"({model.name}, client fingerprint {model.fingerprint()[:12]})"
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``ppfr`` app."""
    app.command("train")(train_cmd)
