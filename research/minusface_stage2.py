"""MinusFace's stage 2 (the server's recognizer on X_p) at the demo budget, on a fixed client.

Run:  OMP_NUM_THREADS=1 python research/minusface_stage2.py --variant epochs14 \
          --client RUN/runs/split-1/minusface/model --seed 1 --out /tmp/stage2

The client (the stage-1 generator) is loaded from ``--client``, a MinusFace bundle trained
with the demo preset on ORL split ``--seed`` (a ``ppfr bench orl --out RUN`` run keeps one
per split). Only stage 2 trains, as ``ppfr train --client BUNDLE --from-stage protected``
does, with the changes listed in :data:`VARIANTS`: every variant of a split shares one
client and differs only in how the server learns, and the attacks, which use only the
client, score the same for all of them (``shuffles`` aside: it changes what is sent).
``reference`` changes nothing: with the preset's seed its server is the bench run's own
(``--train-seed`` draws another server for the same client).

Writes ``OUT/<variant>-s<seed>/result.json`` and keeps the model in
``OUT/<variant>-s<seed>/runs/minusface/model``; the demo's attacks on it:
``python research/demo_attacks.py --run OUT/<variant>-s<seed> --preset minusface``
(link the split's ``arcface`` run next to it first). 1.5 (4 epochs) to 10 min (r = 6) per
variant on one thread. research/log.md, "MinusFace's stage 2", reports what each did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

# the shared timing helpers live in benchmarks/ (research/ scripts are run from anywhere)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from ppfr.data.orl import load_orl, split_identities  # noqa: E402
from ppfr.experiments import demo, presets  # noqa: E402
from ppfr.methods._bundle import read_manifest  # noqa: E402
from ppfr.train import Trainer  # noqa: E402

#: name -> changes on top of the demo preset: "model" (MinusFace config), "optim", and
#: "protected" (stage 2's epochs). The preset's stage 2 is 8 epochs; the variants marked
#: e14 change the 14-epoch stage 2 it had before, which is what they were measured against
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {},
    # stage 2's length: the preset before this sweep (14), and around the 8 it now has
    "epochs14": {"protected": 14},
    "epochs10": {"protected": 10},
    "epochs6": {"protected": 6},
    "epochs4": {"protected": 4},
    # n independent shuffles stacked as 3n channels (the paper's option: more accuracy,
    # more bytes, and more for an attacker to read)
    "shuffles2-e14": {"model": {"shuffles": 2}, "protected": 14},
    # r: more shuffles of every image per epoch, i.e. more augmentation
    "repeats6-e14": {"model": {"train_repeats": 6}, "protected": 14},
    # ten times the preset's weight decay against the server memorising 30 people
    "wd5e-3-e14": {"optim": {"weight_decay": 5e-3}, "protected": 14},
}


def config(variant: str, out: Path, seed: int, client: Path):
    """The demo preset's MinusFace training config for split ``seed``, its model settings
    those of the ``client`` bundle (a stage-1 variant's too), with ``variant``'s changes."""
    cfg = presets.demo_config("minusface", out, seed=seed)
    built = read_manifest(client)["config"]
    built.pop("num_classes", None)  # the trainer sets it from the data
    change = VARIANTS[variant]
    cfg.model = {**built, **change.get("model", {})}
    for k, v in change.get("optim", {}).items():
        setattr(cfg.optim, k, v)
    if "protected" in change:
        epochs = change["protected"]
        cfg.stages["protected"].epochs = epochs
        cfg.stages["protected"].milestones = [max(1, round(epochs * 0.75))]
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--client", required=True, type=Path, help="a trained MinusFace bundle")
    ap.add_argument("--seed", type=int, required=True, help="the ORL split --client was on")
    ap.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="seed of stage 2's initial weights, data order and shuffles (default: the "
        "split's, as the preset; another shows how much a schedule's result moves)",
    )
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    run = f"{args.variant}-s{args.seed}"
    if args.train_seed is not None:
        run += f"-t{args.train_seed}"
    out = args.out / run
    cfg = config(args.variant, out / "runs", args.seed, args.client)
    if args.train_seed is not None:
        cfg.seed = args.train_seed
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)  # as demo.train_preset does
    trainer = Trainer(cfg, dataset=train_set, progress=False)
    model = trainer.fit(from_stage="protected", client=args.client)
    train_s = time.perf_counter() - t0
    scores = demo.score_model(model, test_set, seed=args.seed, progress=False)
    print(
        f"{args.variant} split {args.seed} (training seed {cfg.seed}): accuracy "
        f"{100 * scores['accuracy']:.2f} % (stage 2 in {train_s:.0f} s, "
        f"{scores['bytes_sent']} bytes sent)"
    )
    result = {
        "variant": args.variant,
        "changes": VARIANTS[args.variant],
        "seed": args.seed,
        "train_seed": cfg.seed,
        "client": str(args.client),
        "accuracy": scores["accuracy"],
        "auc": scores["auc"],
        "bytes_sent": scores["bytes_sent"],
        "stage2_seconds": train_s,
        "machine": machine(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
