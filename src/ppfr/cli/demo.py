"""``ppfr demo``: train on ORL's training identities, verify and attack held-out ones, and
write the report (:mod:`ppfr.experiments.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ppfr.cli._common import console, friendly, print_table


@friendly
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for runs and results.")] = Path("demo-out"),
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "arcface,minusface",
    epochs: Annotated[float, typer.Option(help="Scale the training budget.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Identity split and training seed.")] = 0,
    attacks: Annotated[
        bool, typer.Option(help="Run the viewing and recovery attacks for the report.")
    ] = True,
    attack_width: Annotated[
        int | None,
        typer.Option(help="Recovery inverter width (default 8; 64 is the published size).", min=1),
    ] = None,
    attack_epochs: Annotated[
        int | None,
        typer.Option(help="Recovery inverter epochs (default 10 x --epochs).", min=1),
    ] = None,
) -> None:
    """Train on ORL's training identities, verify and attack held-out ones, write the report."""
    # deferred: the experiments pull in training, evaluation and every attack
    from ppfr.experiments.demo import run_demo
    from ppfr.experiments.presets import DemoPresets
    from ppfr.experiments.tables import DEMO_CONSOLE_COLUMNS, run_rows, summary_rows

    results = run_demo(
        out,
        tuple(m.strip() for m in methods.split(",") if m.strip()),
        epoch_scale=epochs,
        seed=seed,
        attacks=attacks,
        attack_width=attack_width,
        attack_epochs=attack_epochs,
        log=console.print,
        presets=DemoPresets(),  # the shipped presets
    )
    table = Table(title="ORL, held-out identities (open-set verification, 10 folds)")
    header, rows = run_rows(results, DEMO_CONSOLE_COLUMNS)
    for col in header:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    print_table(table)
    if attacks:
        header, rows = summary_rows(results)
        privacy = Table(title="Privacy of the held-out people (lower is more private)")
        keep = [0] + [i for i, h in enumerate(header) if "SSIM" in h or "leakage" in h]
        for i in keep:
            privacy.add_column(header[i], justify="right")
        for row in rows:
            privacy.add_row(*(row[i] for i in keep))
        print_table(privacy)
    console.print(
        f"report: {out / 'report.html'}, {out / 'report.json'}, {out / 'results.md'} "
        f"({results['seconds'] / 60:.1f} min)"
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``ppfr`` app."""
    app.command("demo")(demo_cmd)
