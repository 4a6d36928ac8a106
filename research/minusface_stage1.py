"""Variants of MinusFace's stage 1 at the demo budget: accuracy and what the residue became.

Run:  OMP_NUM_THREADS=1 python research/minusface_stage1.py --variant unclamped \
          --out /tmp/stage1 [--seed 0]

Each variant is the demo's MinusFace preset (``ppfr.experiments.presets``) with the config
changes listed in :data:`VARIANTS`. The script trains it on ORL split ``--seed``, verifies
the 10 held-out identities, prints the residue's anatomy (``residue_anatomy.py``) and writes
``OUT/<variant>/result.json`` and the face / spikes / X_p grid ``OUT/<variant>/anatomy.png``.
The demo's attacks on the saved model: ``python research/demo_attacks.py --run
OUT/<variant> --preset minusface`` (link or train ``OUT/<variant>/runs/arcface`` first).
About 13 min (skip) to 25 min (plain U-Net) per variant on one thread.
research/log.md, "repairing MinusFace's stage 1", reports what each did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

# the shared timing helpers live in benchmarks/ (research/ scripts are run from anywhere)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from residue_anatomy import anatomy, report  # noqa: E402

from ppfr.data.orl import load_orl, split_identities  # noqa: E402
from ppfr.experiments import demo, presets  # noqa: E402
from ppfr.experiments.plots import grid_figure  # noqa: E402
from ppfr.methods.minusface import MinusFaceConfig  # noqa: E402

#: name -> MinusFace config changes on top of the demo preset
VARIANTS: dict[str, dict] = {
    "demo": {},
    # the pixel loss before d's clamp, so a saturating residue still gets a gradient
    "unclamped": {"pixel_clamp": False},
    "unclamped-pw5": {"pixel_clamp": False, "pixel_weight": 5.0},
    # stage 1 trains the server's f_p on X_p as protect makes it (shuffled, decoded)
    "reads-protected": {"stage1_reads": "protected"},
    # the paper's generator: g = U (no skip), so the residue is the regeneration's error
    "plain-unet": {"generator_skip": False, "pixel_clamp": False},
    "plain-unet-pw5": {"generator_skip": False, "pixel_clamp": False, "pixel_weight": 5.0},
    # an inverter trained in stage 1, the generator against it (reversed gradient)
    "adversary": {"adversary_weight": 5.0},
    "adversary-w2": {"adversary_weight": 2.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0, help="the ORL identity split")
    ap.add_argument("--epochs", type=float, default=1.0, help="scale the training budget")
    args = ap.parse_args()
    out = args.out / args.variant
    if not set(VARIANTS[args.variant]) <= {f.name for f in fields(MinusFaceConfig)}:
        # the stage-1 options are settings of minusface-hardened, not of plain MinusFace
        presets.PRESET_METHODS["minusface"] = "minusface-hardened"
    presets.DEMO_MODELS["minusface"] = {
        **presets.DEMO_MODELS["minusface"],
        **VARIANTS[args.variant],
    }
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    t0 = time.perf_counter()
    model, _, train_s = demo.train_preset(
        "minusface",
        train_set,
        out / "runs",
        epoch_scale=args.epochs,
        seed=args.seed,
        progress=False,
    )
    scores = demo.score_model(model, test_set, seed=args.seed, progress=False)
    a = anatomy(model, test_set.faces)
    print(f"{args.variant}: accuracy {100 * scores['accuracy']:.2f} % (trained in {train_s:.0f} s)")
    print(report(a, len(test_set.faces)))
    pick = list(range(0, len(test_set.faces), 10))[:6]
    faces = test_set.faces[pick]
    mask = a.pop("spikes")[pick].float().unsqueeze(1).expand(-1, 3, -1, -1)
    fig = grid_figure(
        [(faces + 1) / 2, mask, model.protect(faces).detach()], ["face", "residue spikes", "X_p"]
    )
    fig.savefig(out / "anatomy.png", dpi=90)
    result = {
        "variant": args.variant,
        "config": VARIANTS[args.variant],
        "seed": args.seed,
        "accuracy": scores["accuracy"],
        "train_seconds": train_s,
        "seconds": time.perf_counter() - t0,
        "anatomy": a,
        "machine": machine(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
