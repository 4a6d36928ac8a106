"""``ppfr bench orl --methods arcface,minusface [--splits 3] [--epochs 1.0] [--out DIR]``:
every method trained with its CPU preset over several ORL identity splits
(:func:`ppfr.experiments.bench.run_orl_bench`); ``ppfr bench merge A B C --out DIR``: runs
made on other splits averaged into one table (:func:`ppfr.experiments.merge.merge_results`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ppfr.cli._common import console, friendly, print_table, write_json
from ppfr.errors import InputError

bench_app = typer.Typer(
    help="Benchmarks: train methods with the same budget and compare them.",
    no_args_is_help=True,
)


@bench_app.callback()
def _bench() -> None:
    """Train methods with the same budget and compare them."""
    # an explicit callback keeps `orl` a sub-command while it is the only one


@bench_app.command("orl")
@friendly
def bench_orl(
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (each needs a demo preset).")
    ] = "arcface,minusface",
    splits: Annotated[
        int, typer.Option(min=1, help="Identity splits (seeds SEED, SEED+1, ...).")
    ] = 3,
    epochs: Annotated[float, typer.Option(help="Scale every preset's training epochs.")] = 1.0,
    seed: Annotated[int, typer.Option(help="First split seed.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Keep the runs here and write bench.json and bench.md (else temporary)."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    attacks: Annotated[bool, typer.Option(help="Run the viewing and recovery attacks.")] = True,
    attack_width: Annotated[
        int | None,
        typer.Option(help="Recovery inverter width (64: full; default: the preset's, 8).", min=1),
    ] = None,
    attack_epochs: Annotated[
        int | None,
        typer.Option(help="Recovery inverter epochs (default: the preset's, 10).", min=1),
    ] = None,
) -> None:
    """ORL: train each method on 30 identities, verify and attack 10 held-out ones (mean ± std).

    The recovery attacker owns the training identities' faces; the victims are the held-out
    ones. Accuracy, privacy (SSIM, PSNR, judge leakage), bytes sent and client/server costs.
    """
    # deferred: the experiments pull in training, evaluation and every attack
    from ppfr.experiments.bench import run_orl_bench
    from ppfr.experiments.presets import DemoPresets

    names = [m.strip() for m in methods.split(",") if m.strip()]
    presets = DemoPresets()  # the shipped presets
    # the preset's recovery inverter, with what the options set ({}: no attacks)
    given = {"width": attack_width, "epochs": attack_epochs}
    inverter = {**presets.attack, **{k: v for k, v in given.items() if v is not None}}
    results = run_orl_bench(
        names,
        splits=splits,
        epoch_scale=epochs,
        out=out,
        seed=seed,
        progress=progress,
        attack=inverter if attacks else {},
        log=lambda line: console.print(escape(line), highlight=False),
        presets=presets,
    )
    _show(results)
    if json_out is not None:
        write_json(json_out, results)
        console.print(f"results: {escape(str(json_out))}", highlight=False)
    if out is not None:
        console.print(f"written: {out / 'bench.json'}, {out / 'bench.md'}", highlight=False)


@bench_app.command("merge")
@friendly
def bench_merge(
    files: Annotated[
        list[Path], typer.Argument(help="bench.json files (or the --out folders holding them).")
    ],
    out: Annotated[Path, typer.Option(help="Write bench.json, bench.md and frontier.png here.")],
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods to keep (default: all, each on every split)."),
    ] = None,
) -> None:
    """Average runs of `ppfr bench orl` made on other splits (side by side, on other machines)
    into one table: mean ± std over every split they cover."""
    # deferred: the experiments pull in training, evaluation and every attack
    from ppfr.experiments.bench import write_bench
    from ppfr.experiments.merge import merge_results

    records = []
    for f in files:
        path = f / "bench.json" if f.is_dir() else f
        if not path.is_file():
            raise InputError(f"{f}: no bench.json there")
        try:
            records.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a JSON file ({e})") from e
    keep = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    results = merge_results(records, keep)
    _show(results)
    dups = results["settings"]["merged"]["duplicates"]
    for d in dups:
        console.print(
            f"seed {d['seed']}, {d['method']}: measured twice, kept accuracy "
            f"{100 * d['kept_accuracy']:.2f} %, dropped {100 * d['dropped_accuracy']:.2f} %",
            highlight=False,
        )
    write_bench(results, out)
    console.print(f"written: {out / 'bench.json'}, {out / 'bench.md'}", highlight=False)


def _show(results: dict) -> None:
    """The bench's summary table on the console."""
    # deferred: as above, the experiments are heavy for `ppfr --help`
    from ppfr.experiments.tables import BENCH_CONSOLE_COLUMNS, bench_rows

    s = results["settings"]
    headers, rows = bench_rows(results, BENCH_CONSOLE_COLUMNS)
    table = Table(
        title=f"ORL open-set verification, {s['splits']} split(s) x {s['test_identities']} "
        f"held-out identities (mean ± std over splits)"
    )
    for h in headers:
        if h == "method":
            table.add_column(h, no_wrap=True)
        else:  # a narrow terminal wraps "mean ± std" at the space rather than cut it
            table.add_column(h, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    print_table(table)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group to the ``ppfr`` app."""
    app.add_typer(bench_app, name="bench")
