"""MinusFace's stage-1 pixel weight against accuracy and privacy, at the demo budget.

Run:  python research/minusface_pixel_weight.py --weights 20,35,50 --out /tmp/pw

For each weight, trains the demo's MinusFace preset (``ppfr.experiments.presets``) with that
stage-1 pixel weight on ORL split ``--seed``, verifies the 10 held-out identities and runs the
demo's viewing and recovery attacks on them (research/log.md). About 14 min per weight on 2 CPU
cores. Results go to ``OUT/pw<weight>/result.json`` and are printed as markdown rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the shared timing helpers live in benchmarks/ (research/ scripts are run from anywhere)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from ppfr.data.orl import load_orl, split_identities  # noqa: E402
from ppfr.experiments import demo, presets  # noqa: E402


def run(weight: float, out: Path, seed: int, epoch_scale: float = 1.0) -> dict:
    presets.DEMO_MODELS["minusface"]["pixel_weight"] = weight  # the only change to the preset
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, seed)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    t0 = time.perf_counter()
    model, _, train_s = demo.train_preset(
        "minusface", train_set, out / "runs", epoch_scale=epoch_scale, seed=seed, progress=False
    )
    scores = demo.score_model(model, test_set, seed=seed, progress=False)
    attacks, _ = demo.attack_model(
        model,
        train_set,
        test_set,
        seed=seed,
        epochs=max(1, round(presets.DEMO_ATTACK["epochs"] * epoch_scale)),
        progress=False,
    )
    return {
        "pixel_weight": weight,
        "epoch_scale": epoch_scale,
        "accuracy": scores["accuracy"],
        "auc": scores["auc"],
        "train_seconds": train_s,
        "attacks": attacks,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="20,35,50", help="comma-separated pixel weights")
    ap.add_argument("--seed", type=int, default=0, help="identity split and training seed")
    ap.add_argument("--epochs", type=float, default=1.0, help="scale the training budget")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pw"))
    args = ap.parse_args()
    print(
        "| pixel weight | accuracy % | AUC | viewing leakage % | recovery SSIM "
        "| average-face SSIM | recovery leakage % | recovery rank-1 % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for w in (float(x) for x in args.weights.split(",")):
        out = args.out / f"pw{w:g}"
        out.mkdir(parents=True, exist_ok=True)
        r = {**run(w, out, args.seed, args.epochs), "machine": machine()}
        (out / "result.json").write_text(json.dumps(r, indent=1, default=float))
        v, rec = r["attacks"]["viewing"], r["attacks"]["recovery"]
        print(
            f"| {w:g} | {100 * r['accuracy']:.2f} | {r['auc']:.4f} | {100 * v['leakage']:.1f} "
            f"| {rec['ssim']:.3f} | {rec['floor_ssim']:.3f} | {100 * rec['leakage']:.1f} "
            f"| {100 * rec['rank1']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
