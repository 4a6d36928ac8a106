"""Rerun the demo's attacks on a model a demo run saved (after the attacks changed).

Loads ``RUN/runs/<preset>/model`` and the run's ArcFace (``RUN/runs/arcface/model``, the
attacker's recognizer), rebuilds the demo's identity split and runs
``ppfr.experiments.demo.attack_model`` as the demo does; prints the summary line and writes
the scores as JSON.

Run:  python research/demo_attacks.py --run demo-out --preset minusface-tiles \
          --json demo-out/minusface-tiles-attacks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ppfr
from ppfr.data.orl import load_orl, split_identities
from ppfr.experiments import presets
from ppfr.experiments.demo import attack_model, attack_summary


class AsSent:
    """``model`` whose representation the attacks read as it is sent."""

    def __init__(self, model) -> None:
        self._model = model

    def inversion_input(self, p):
        return p

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        required=True,
        type=Path,
        help="the demo's --out folder, or a bench's (its runs/split-SEED is read)",
    )
    ap.add_argument("--preset", required=True, help="the method preset to attack")
    ap.add_argument("--seed", type=int, default=0, help="the demo's --seed")
    ap.add_argument("--json", type=Path, default=None, help="write the scores here")
    ap.add_argument(
        "--as-sent",
        action="store_true",
        help="a weaker attacker: the inverters read the representation as sent, without "
        "the method's inversion_input (for FracFace: without undoing the public tile order)",
    )
    ap.add_argument(
        "--no-identity",
        action="store_true",
        help="only the viewing and recovery attacks (no linkage or identity-guided recovery)",
    )
    args = ap.parse_args()
    ppfr.tune_allocator()
    runs = args.run / "runs"
    if (runs / f"split-{args.seed}").is_dir():  # a bench's layout
        runs = runs / f"split-{args.seed}"
    model = ppfr.load(runs / args.preset / "model")
    recognizer = None if args.no_identity else ppfr.load(runs / "arcface" / "model")
    if args.as_sent:
        model = AsSent(model)
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    aux, victims = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    scores, _ = attack_model(
        model, aux, victims, seed=args.seed, recognizer=recognizer, identity=not args.no_identity
    )
    rec = scores["recovery"]
    print(f"{args.preset}: {attack_summary(scores)}; recovery rank-1 {100 * rec['rank1']:.1f} %")
    if "tiles" in scores:
        print(f"tile solver placed {100 * scores['tiles']['placed']:.1f} % of the tiles right")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")


if __name__ == "__main__":
    main()
