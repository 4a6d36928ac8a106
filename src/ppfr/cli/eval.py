"""``ppfr eval --model DIR --bin lfw.bin [--bin cfp_fp.bin ...] [--json OUT]``: the
field's verification protocol on ``.bin`` packs.

Both faces of every pair go through the client's ``protect`` and the server's ``embed``,
mirrored copies too (flip-sum); ten folds in order; accuracy ± std, TAR at FAR 1e-3 / 1e-4,
AUC (:func:`ppfr.eval.evaluate_pairs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.table import Table

import ppfr
from ppfr.cli._common import console, friendly, print_table, write_json
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
    # deferred: the .bin reader (image decoding) and the protocol are not loaded for
    # `ppfr --help`
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
        write_json(
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


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the ``ppfr`` app."""
    app.command("eval")(eval_cmd)
