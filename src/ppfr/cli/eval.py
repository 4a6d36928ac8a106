"""``ppfr eval`` and ``ppfr bench``: score a model, compare methods (mounted by ``ppfr.cli``).

* ``ppfr eval --model DIR --bin lfw.bin [--bin cfp_fp.bin ...] [--json OUT]`` —
  :func:`eval_cmd`: the field's verification protocol on ``.bin`` packs. Both faces of every
  pair go through the client's ``protect`` and the server's ``embed``, mirrored copies too
  (flip-sum); ten folds in order; accuracy ± std, TAR at FAR 1e-3 / 1e-4, AUC.
* ``ppfr bench orl --methods arcface,minusface [--splits 3] [--epochs 1.0] [--out DIR]`` —
  :data:`bench_app`: :func:`ppfr.bench.run_orl_bench`.

Mount them in the main app with::

    app.command("eval")(eval_cmd)
    app.add_typer(bench_app, name="bench")

Every :class:`~ppfr.errors.PPFRError` ends the command with a red one-line message on
stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table

from ppfr._cli import console, friendly, print_table
from ppfr.errors import InputError, PPFRError

#: folds of the verification protocol (the field's ten)
NFOLDS = 10


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise InputError(f"{path}: cannot write JSON ({e})") from None


@friendly
def eval_cmd(
    model: Annotated[
        Path, typer.Option("--model", help="Model bundle with its client and server parts.")
    ],
    bins: Annotated[
        list[Path],
        typer.Option("--bin", help="Verification .bin pack (LFW, CFP-FP, ...); repeat for more."),
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write every result (folds too) here.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per protect/embed call.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the protection randomness.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Verify .bin packs with a protected model: 10 folds, accuracy, TAR@FAR, AUC."""
    import ppfr
    from ppfr.data.binpack import describe_bin, read_bin
    from ppfr.eval import evaluate_pairs

    dev = _device(device)
    m = ppfr.load(model, map_location=str(dev))
    if not {"client", "server"} <= set(m.parts):
        raise InputError(
            f"{model}: evaluation runs protect and embed, so it needs a bundle with both the "
            f"client and server parts (this one has: {', '.join(m.parts)})"
        )
    # check every pack's structure before the first (slow) evaluation starts
    for path in bins:
        n = describe_bin(path)["pairs"]
        if n < NFOLDS:
            raise InputError(
                f"{path}: {n} pairs; the {NFOLDS}-fold protocol needs at least {NFOLDS}"
            )

    results = []
    for path in bins:
        pairs = read_bin(path)
        try:
            r = evaluate_pairs(
                m, pairs, batch_size=batch_size, seed=seed, progress=progress, nfolds=NFOLDS
            )
        except PPFRError as e:
            raise InputError(f"{path}: {e}") from None
        results.append((path, r))
        console.print(escape(r.summary()), highlight=False)

    table = Table(title=f"{m.name} model {model}: verification (10 folds, flip-sum)")
    for col in ("pack", "pairs", "accuracy %", "TAR@FAR=1e-3 %", "TAR@FAR=1e-4 %", "AUC"):
        table.add_column(col, justify="left" if col == "pack" else "right")
    for path, r in results:
        table.add_row(
            escape(path.name),
            f"{r.num_pairs:,}",
            f"{_pct(r.accuracy)} ± {_pct(r.std)}",
            _pct(r.tar_at_far.get(1e-3)),
            _pct(r.tar_at_far.get(1e-4)),
            "n/a" if r.auc is None else f"{r.auc:.4f}",
        )
    print_table(table)

    if json_out is not None:
        _write_json(
            json_out,
            {
                "model": str(model),
                "method": m.name,
                "client_fingerprint": m.manifest.get("client_fingerprint"),
                "seed": seed,
                "batch_size": batch_size,
                "device": str(dev),
                "protocol": "flip-sum embeddings, squared L2 distance, 10 contiguous folds, "
                "threshold grid 0..4 step 0.01",
                "results": [{"pack": str(p), **r.to_dict()} for p, r in results],
            },
        )
        console.print(f"results: {escape(str(json_out))}", highlight=False)


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
    attack_width: Annotated[int, typer.Option(help="Recovery inverter width (64: full).")] = 8,
    attack_epochs: Annotated[int, typer.Option(help="Recovery inverter epochs.")] = 10,
) -> None:
    """ORL: train each method on 30 identities, verify and attack 10 held-out ones (mean ± std).

    The recovery attacker owns the training identities' faces; the victims are the held-out
    ones. Accuracy, privacy (SSIM, PSNR, judge leakage), bytes sent and client/server costs.
    """
    from ppfr.bench import bench_rows, run_orl_bench

    names = [m.strip() for m in methods.split(",") if m.strip()]
    results = run_orl_bench(
        names,
        splits=splits,
        epoch_scale=epochs,
        out=out,
        seed=seed,
        progress=progress,
        attack={"width": attack_width, "epochs": attack_epochs} if attacks else {},
        log=lambda line: console.print(escape(line), highlight=False),
    )
    s = results["settings"]
    headers, rows = bench_rows(results)
    table = Table(
        title=f"ORL open-set verification, {s['splits']} split(s) x {s['test_identities']} "
        f"held-out identities (mean ± std over splits)"
    )
    short = ["method", "accuracy %", "AUC", "TAR@1e-2 %", "TAR@1e-3 %", "train s"]
    short += ["protect ms/img", "embed ms/img", "bytes/face"]
    short += ["viewing leak %", "recovery SSIM", "recovery PSNR", "recovery leak %"]
    for h in short:
        if h == "method":
            table.add_column(h, no_wrap=True)
        else:  # a narrow terminal wraps "mean ± std" at the space rather than cut it
            table.add_column(h, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    print_table(table)
    if json_out is not None:
        _write_json(json_out, results)
        console.print(f"results: {escape(str(json_out))}", highlight=False)
    if out is not None:
        console.print(f"written: {out / 'bench.json'}, {out / 'bench.md'}", highlight=False)
