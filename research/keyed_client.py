"""A keyed client against an attacker without the key: key recovery, and a wrong guess.

Reads a keyed FracFace that ``ppfr bench orl --methods arcface,fracface-keyed`` trained
(``RUN/runs/split-SEED/fracface-keyed/model``, its ArcFace the attacker's recognizer); the
bench itself already ran the attacks of an attacker who recovers the order from the
victims' representations (``key_placed`` and the attack columns of its ``bench.json``).
This script adds:

1. **How fast the key falls**: the share of tiles placed right against the number of
   victim representations the attacker has seen (:func:`ppfr.attacks.keys.key_recovery_curve`),
   for the trained grid (depth 2, 16 tiles) and, with the same refining weights, for finer
   keyed grids (depth 3: 64 tiles of 14x14; depth 4: 256 tiles of 7x7).
2. **An attacker who guesses instead**: every demo attack with the public fractal order as
   its guess (:class:`ppfr.attacks.keys.KeylessView`), the case the key is meant for.
3. With ``--minusface MODEL``: the same curve for MinusFace's protected images put in a keyed
   tile order (16 and 64 tiles). Only the representation matters to key recovery, so no
   server is trained for it; the curve says whether a key would survive there.

Run:  python research/keyed_client.py --run /tmp/keyed0 --seed 0 --json keyed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ppfr
from ppfr import remap
from ppfr.attacks.keys import KeylessView, key_recovery_curve
from ppfr.data.orl import load_orl, split_identities
from ppfr.experiments import presets
from ppfr.experiments.demo import attack_model, attack_summary

COUNTS = (1, 2, 4, 8, 16, 32, 100)


class KeyedTiles(torch.nn.Module):
    """Any model's representation with its tiles put in a keyed order afterwards."""

    def __init__(self, model, depth: int, key: int) -> None:
        super().__init__()
        self.model = model
        self.client = torch.nn.Module()
        self.client.grid = 1 << depth
        self.client.register_buffer("order", remap.keyed_order(1 << depth, key))
        self.name = f"{model.name} + keyed tiles"

    def protect(self, x, generator=None):
        return remap.remap_tiles(
            self.model.protect(x, generator), self.client.order, self.client.grid
        )


def finer(model, depth: int):
    """``model``'s client (same refining weights, same key) with a ``depth``-level grid."""
    cfg = {k: v for k, v in model.config_dict().items() if k not in ("depth", "seed")}
    other = ppfr.create("fracface", **{**cfg, "depth": depth}).eval()
    other.client.refine.load_state_dict(model.client.refine.state_dict())
    return other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="the bench's --out folder")
    ap.add_argument("--seed", type=int, default=0, help="the bench's split seed")
    ap.add_argument("--preset", default="fracface-keyed")
    ap.add_argument("--trials", type=int, default=20, help="subsets drawn per count")
    ap.add_argument("--no-attacks", action="store_true", help="only the key-recovery curves")
    ap.add_argument("--no-curves", action="store_true", help="only the attacks of a wrong guess")
    ap.add_argument("--minusface", type=Path, default=None, help="a MinusFace model folder")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    ppfr.tune_allocator()
    split = args.run / "runs" / f"split-{args.seed}"
    model = ppfr.load(split / args.preset / "model")
    if getattr(model.config, "key", None) is None:
        raise SystemExit(f"{args.preset} has no key: this script measures a keyed client")
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    aux, victims = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    out: dict = {"run": str(args.run), "seed": args.seed, "preset": args.preset, "curves": {}}

    for depth in () if args.no_curves else (model.config.depth, 3, 4):
        target = model if depth == model.config.depth else finer(model, depth)
        t = time.perf_counter()
        curve = key_recovery_curve(
            target, aux.stack(), victims.stack(), COUNTS, trials=args.trials, seed=args.seed
        )
        curve["seconds"] = time.perf_counter() - t
        out["curves"][f"depth-{depth}"] = curve
        cells = "  ".join(
            f"{k}: {100 * p:.1f} % ({100 * e:.0f} % exact)"
            for k, p, e in zip(curve["counts"], curve["placed_mean"], curve["exact"], strict=True)
        )
        print(f"depth {depth} ({(1 << depth) ** 2} tiles), faces seen -> tiles placed: {cells}")

    if args.minusface is not None and not args.no_curves:
        minus = ppfr.load(args.minusface)
        for depth in (2, 3):
            keyed = KeyedTiles(minus, depth, int(model.config.key))
            curve = key_recovery_curve(
                keyed, aux.stack(), victims.stack(), COUNTS, trials=args.trials, seed=args.seed
            )
            out["curves"][f"minusface-depth-{depth}"] = curve
            cells = "  ".join(
                f"{k}: {100 * p:.1f} % ({100 * e:.0f} % exact)"
                for k, p, e in zip(
                    curve["counts"], curve["placed_mean"], curve["exact"], strict=True
                )
            )
            print(f"MinusFace, keyed tiles, depth {depth}: {cells}")

    if not args.no_attacks:
        recognizer = ppfr.load(split / "arcface" / "model")
        guess = remap.fractal_order(model.config.depth)
        wrong = float((guess == model.client.order).float().mean())
        scores, _ = attack_model(
            KeylessView(model, guess), aux, victims, seed=args.seed, recognizer=recognizer
        )
        scores["guess_placed"] = wrong
        out["fractal_guess"] = scores
        print(
            f"guessing the fractal order ({100 * wrong:.1f} % of tiles right): "
            f"{attack_summary(scores)}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
