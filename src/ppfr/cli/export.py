"""``ppfr export --model DIR --part client --onnx OUT.onnx``: the client's protect path as
an ONNX graph (:func:`ppfr.export.export_client`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppfr.cli._common import console, friendly
from ppfr.errors import InputError
from ppfr.export import export_client


@friendly
def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model bundle.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    part: Annotated[str, typer.Option(help="Which part to export (client).")] = "client",
) -> None:
    """Export the client's protect path to ONNX (the randomness is a graph input)."""
    if part != "client":
        raise InputError(f"only --part client can be exported, got {part!r}")
    out = export_client(model, onnx)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``ppfr`` app."""
    app.command("export")(export_cmd)
