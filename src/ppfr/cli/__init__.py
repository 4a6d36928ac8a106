"""The ``ppfr`` command line.

ppfr demo                              # train + evaluate on bundled ORL faces
ppfr train CONFIG.toml [--resume]      # train any method (torchrun for DDP)
ppfr protect --model DIR IMG... --out DIR
ppfr embed   --model DIR IMG... --out FILE.npy
ppfr methods                           # registered methods and backbones

One module per command group; each has ``register(app)``, which adds its commands to the
``ppfr`` app. Every :class:`~ppfr.errors.PPFRError` ends a command with a red one-line
message on stderr and exit code 2 (:func:`ppfr.cli._common.friendly`).
"""

from __future__ import annotations

import json

import torch
import typer

import ppfr
from ppfr import nets
from ppfr.cli import (
    align,
    attack,
    bench,
    client,
    data,
    demo,
    eval,
    export,
    judge,
    keyholder,
    keys,
    protect,
    serve,
    train,
)
from ppfr.cli._common import console, friendly

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ppfr: privacy-preserving face recognition (MinusFace and peers).",
)


@app.callback()
def _startup() -> None:
    """ppfr: privacy-preserving face recognition (MinusFace and peers)."""
    ppfr.tune_allocator()  # every command: large tensors stop costing page faults


@app.command()
@friendly
def methods() -> None:
    """List registered methods, backbones and heads."""
    console.print("methods:   " + ", ".join(ppfr.list_methods()))
    console.print("backbones: " + ", ".join(nets.list_backbones()))
    console.print("heads:     " + ", ".join(nets.list_heads()))


# registration order is the order of `ppfr --help` (commands first, then groups)
for group in (train, protect, demo):
    group.register(app)


@app.command(name="version")
def version() -> None:
    """Print the ppfr version."""
    console.print(json.dumps({"ppfr": ppfr.__version__, "torch": torch.__version__}))


for group in (data, eval, bench, align, judge, attack, serve, export, keys, keyholder, client):
    group.register(app)

__all__ = ["app"]
