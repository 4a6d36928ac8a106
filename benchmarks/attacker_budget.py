"""The identity attacks against the attacker's budget, on methods a bench run trained.

For each method and ORL split seed, loads the model ``ppfr bench orl --out DIR`` saved
(``DIR/runs/split-SEED/METHOD/model``), the split's ArcFace as the attacker's recognizer and
the method's server accuracy and AUC from the bench's file (``bench.json``, or
``bench.partial.json`` of a bench still running), then runs the linkage and identity-guided
recovery attacks at every budget of the grid (``ppfr.experiments.budget``). Each finished
cell is written to ``OUT/budget.json`` at once; a rerun with the same ``--out`` skips the
cells already there. ``OUT/budget.md`` and ``OUT/budget.png`` are redrawn at the end (and
by ``--plot-only``).

Run:
    OMP_NUM_THREADS=1 ppfr bench orl --methods arcface,minusface --splits 1 --seed 0 \\
        --no-attacks --out /tmp/ab/train0
    OMP_NUM_THREADS=1 python benchmarks/attacker_budget.py --bench /tmp/ab/train0 \\
        --methods arcface,minusface --seeds 0 --out /tmp/ab/sweep
    # the largest budget only, on more splits and methods
    OMP_NUM_THREADS=1 python benchmarks/attacker_budget.py --bench /tmp/ab/train1 \\
        --methods arcface,minusface --seeds 1 --grid largest --out /tmp/ab/sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def bench_figures(bench: Path, seed: int, method: str) -> dict[str, Any] | None:
    """The method's figures on split ``seed`` in a bench folder's file, if it has them."""
    for name in ("bench.json", "bench.partial.json"):
        path = bench / name
        if not path.is_file():
            continue
        for split in json.loads(path.read_text()).get("splits", []):
            if split.get("seed") == seed and method in split.get("methods", {}):
                return split["methods"][method]
    return None


def find_model(benches: list[Path], seed: int, method: str) -> tuple[Path, dict] | None:
    """The first bench folder holding a scored, saved model of ``method`` on split ``seed``."""
    for bench in benches:
        model = bench / "runs" / f"split-{seed}" / method / "model"
        figures = bench_figures(bench, seed, method)
        if (model / "ppfr.toml").is_file() and figures is not None:
            return model, figures
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, action="append", default=[],
                    help="a `ppfr bench orl --out` folder (repeat for several)")  # fmt: skip
    ap.add_argument("--methods", default="arcface,minusface", help="comma-separated presets")
    ap.add_argument("--seeds", default="0", help="comma-separated ORL split seeds")
    ap.add_argument("--grid", choices=("default", "largest"), default="default",
                    help="default: one axis at a time around the demo's budget, then the "
                    "largest; largest: the largest budget only")  # fmt: skip
    ap.add_argument("--epochs", default="6,12",
                    help="the epoch axis; the first is the demo's, the last the largest "
                    "budget's")  # fmt: skip
    ap.add_argument("--faces", default="30,100", help="attacker face counts below all of them")
    ap.add_argument("--copies", type=int, default=2,
                    help="each face plus copies-1 augmented ones on the copies axis and at the "
                    "largest budget (by default every face x 2 copies x 12 epochs: 7,200 face "
                    "presentations, as many as MinusFace's server trains on, 300 faces x 3 "
                    "repeats x 8 epochs; ArcFace's: 300 x 16)")  # fmt: skip
    ap.add_argument("--cells", default=None,
                    help="comma-separated budget keys to run instead of the grid, e.g. "
                    "faces=all/copies=2/epochs=12/init=recognizer")  # fmt: skip
    ap.add_argument("--attacks", default="linkage,identity-recovery",
                    help="the attacks each cell runs (a scratch cell: linkage only)")  # fmt: skip
    ap.add_argument("--no-scratch", action="store_true",
                    help="leave out the cells whose student starts from scratch")  # fmt: skip
    ap.add_argument("--identity-width", type=int, default=8,
                    help="the identity-guided inverter's U-Net width (the demo's: 8)")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="folder for budget.json/.md/.png")
    ap.add_argument("--plot-only", action="store_true", help="redraw budget.md and budget.png")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args()

    from ppfr.experiments.budget import (
        Budget,
        budget_figure,
        budget_table,
        default_grid,
        largest_budget,
        load_results,
        run_budget_sweep,
    )

    out = args.out / "budget.json"
    if not args.plot_only:
        import torch

        import ppfr
        from ppfr.data.orl import load_orl, split_identities
        from ppfr.experiments.presets import TEST_IDENTITIES

        ppfr.tune_allocator()
        methods = [m for m in args.methods.split(",") if m]
        seeds, epochs = _ints(args.seeds), _ints(args.epochs)
        available = 10 * (40 - TEST_IDENTITIES)  # ORL: 10 faces per non-victim identity
        if args.grid == "largest":
            grid = [largest_budget(max(epochs), args.copies)]
        else:
            grid = default_grid(available, epochs, _ints(args.faces), args.copies)
        if args.cells:
            grid = [Budget.from_key(k) for k in args.cells.split(",") if k]
        if args.no_scratch:
            grid = [b for b in grid if b.init != "scratch"]
        # cheapest first over everything: every method's small cells before any large one
        cells = sorted(
            ((m, s, b) for s in seeds for m in methods for b in grid),
            key=lambda c: (c[2].seen(available), c[2].init != "recognizer", c[1]),
        )

        def load(method: str, seed: int) -> dict[str, Any] | None:
            found = find_model(args.bench, seed, method)
            arc = find_model(args.bench, seed, "arcface")
            if found is None or arc is None:
                return None
            train_ids, test_ids = split_identities(TEST_IDENTITIES, seed)
            aux_set, victim_set = (
                load_orl(train_ids, aligned=True),
                load_orl(test_ids, aligned=True),
            )
            (path, figures), (arc_path, _) = found, arc
            model = ppfr.load(path)
            return {
                "model": model,
                "recognizer": model if method == "arcface" else ppfr.load(arc_path),
                "aux": aux_set.stack(),
                "aux_labels": np.asarray(aux_set.labels),
                "victims": victim_set.stack(),
                "labels": np.asarray(victim_set.labels),
                "bound": {
                    "accuracy": figures["accuracy"],
                    "auc": figures["auc"],
                    "model": str(path),
                    "recognizer": str(arc_path),
                },  # fmt: skip
            }

        settings = {
            "attacker_faces": available,
            "test_identities": TEST_IDENTITIES,
            "identity_width": args.identity_width,
            "identity_weight": 0.5,
            "augment": "affine (shift <= 6 %, zoom 1 +- 0.08, rotation +- 8 deg) and "
            "brightness/contrast +- 0.15, per copy",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "ppfr": ppfr.__version__,
        }
        print(f"{len(cells)} cells: " + ", ".join(f"{m}/{s}/{b.key}" for m, s, b in cells))
        run_budget_sweep(cells, load, out, identity_width=args.identity_width,
                         progress=args.progress, settings=settings,
                         attacks=args.attacks.split(","))  # fmt: skip
    results = load_results(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget.md").write_text(budget_table(results))
    drawn = budget_figure(results, args.out / "budget.png")
    print(budget_table(results))
    print(f"wrote {out}" + (f", {drawn}" if drawn else ""))


if __name__ == "__main__":
    main()
