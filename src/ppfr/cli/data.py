"""``ppfr data ...``: look at face data sources.

Example::

    $ ppfr data inspect faces_emore/train.rec
    $ ppfr data inspect lfw.bin --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ppfr.cli._common import friendly, print_table
from ppfr.data.open import describe_source

data_app = typer.Typer(
    help="Inspect face data: identity folders, RecordIO .rec, .bin packs, pairs.txt, 'orl'.",
    no_args_is_help=True,
)


@data_app.callback()
def _data() -> None:
    """Inspect face data sources."""
    # an explicit callback keeps `inspect` a sub-command even while it is the only one


@data_app.command("inspect")
@friendly
def inspect(
    path: str = typer.Argument(..., help="Folder, .rec, .bin, pairs .txt, or 'orl'."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder of aligned faces for a pairs .txt."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Print images, identities and pairs of a data source."""
    info = describe_source(path, image_root=image_root)
    if as_json:
        typer.echo(json.dumps({"path": path, **info}))
        return
    table = Table(title=escape(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    for key, value in info.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else escape(str(value)))
    print_table(table)


def register(app: typer.Typer) -> None:
    """Add the ``data`` group to the ``ppfr`` app."""
    app.add_typer(data_app, name="data")
