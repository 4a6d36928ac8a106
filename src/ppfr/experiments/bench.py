"""``ppfr bench orl``: every method trained with the same budget, compared over identity splits.

One demo run scores one split of ORL's 40 people; with 100 held-out faces the figures move
by a few points from split to split. The benchmark repeats the demo's recipe over several
splits and reports mean and spread:

for each split seed ``s`` in ``seed .. seed + splits - 1``

1. :func:`~ppfr.data.orl.split_identities` holds out 10 identities (disjoint from the 30
   training ones) with seed ``s``;
2. every method is trained with its CPU preset (:data:`ppfr.demo.DEMO_MODELS`,
   :data:`ppfr.demo.DEMO_EPOCHS` times ``epoch_scale``) and training seed ``s`` on the
   YuNet-aligned training faces;
3. the held-out faces are scored with the open-set protocol of :mod:`ppfr.eval.openset`: all
   genuine pairs plus as many impostor pairs drawn with seed ``s``, ten folds in order;
4. protect and embed are timed in ms/image on a batch of 32 held-out faces, and training in
   wall-clock seconds;
5. unless attacks are switched off, the viewing attack and the recovery attack
   (:mod:`ppfr.attacks`; the attacker owns the training identities' faces, the victims are
   the held-out ones) score SSIM, PSNR, judge leakage and rank-1 of the held-out faces, and
   the identity attacks (linkage: AUC, verification accuracy, rank-1, TAR; identity-guided
   recovery: as recovery) use the split's ArcFace as the attacker's recognizer (ArcFace is
   trained first; without it in the list the attacks train their own on the same faces).

Per method, every figure is aggregated as mean and population standard deviation
(``np.std``) over the splits; a figure that some split cannot report (TAR at a FAR finer than
the impostor pairs allow) aggregates to ``None``.

Example::

    >>> from ppfr.bench import run_orl_bench, bench_table
    >>> res = run_orl_bench(["arcface", "minusface"], out="bench-out")  # doctest: +SKIP
    >>> print(bench_table(res))                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ppfr
from ppfr import demo
from ppfr.data.orl import load_orl, split_identities
from ppfr.errors import InputError

#: held-out identities per split, and the extra FARs reported: the demo's
TEST_IDENTITIES = demo.TEST_IDENTITIES
BENCH_FARS = demo.ORL_FARS
#: faces in the batch used to time protect and embed
TIMING_BATCH = 32
#: per-split figures aggregated as mean and std
AGGREGATED = ("accuracy", "auc", "train_seconds", "protect_ms", "embed_ms")
#: the figures kept of each attack, and the prefix of their per-split keys ("<prefix>_<score>")
ATTACK_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "viewing": ("viewing", ("ssim", "psnr", "leakage", "rank1")),
    "recovery": ("recovery", ("ssim", "psnr", "leakage", "rank1")),
    "linkage": ("linkage", ("accuracy", "auc", "rank1", "tar_0.01", "tar_0.001")),
    "identity-recovery": ("identity", ("ssim", "psnr", "leakage", "rank1")),
}
#: attack figures, aggregated when the attacks ran
ATTACK_SCORES = tuple(f"{p}_{k}" for p, keys in ATTACK_FIGURES.values() for k in keys)

__all__ = [
    "BENCH_FARS",
    "TEST_IDENTITIES",
    "TIMING_BATCH",
    "bench_rows",
    "bench_table",
    "run_orl_bench",
]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` over splits; mean and std are None if any value is.

    std is the population standard deviation (``np.std``, ddof=0), as the protocol uses
    for its folds.
    """
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return {"mean": None, "std": None, "values": vals}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in vals]}


def run_orl_bench(
    methods: Sequence[str],
    *,
    splits: int = 3,
    epoch_scale: float = 1.0,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    attack: dict[str, int] | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train and score ``methods`` on ``splits`` ORL identity splits (see the module docs).

    Args:
        methods: method names with a preset in :data:`ppfr.demo.DEMO_MODELS`.
        splits: number of identity splits; split ``k`` uses seed ``seed + k`` for the
            held-out identities, the training and the impostor pairs.
        epoch_scale: multiplies every stage's preset epochs (at least one epoch each).
        out: folder for ``runs/split-<seed>/<method>`` (checkpoints, model bundles) and
            ``bench.json`` / ``bench.md``; None trains in a temporary folder and writes
            nothing.
        seed: first split seed.
        progress: tqdm bars for training and embedding.
        attack: recovery inverter settings ``{"width", "epochs"}`` (the demo's
            :data:`ppfr.demo.DEMO_ATTACK` by default); ``{}`` skips the attacks.
        log: receives one line per split and per trained method.

    Returns:
        A JSON-serialisable dict: ``settings`` (everything needed to rerun it), ``splits``
        (per split: seed, identities, per-method figures) and ``methods`` (per method:
        ``{"mean", "std", "values"}`` for accuracy, AUC, each TAR@FAR, training seconds,
        protect and embed ms, plus ``bytes_sent`` per face).
    """
    methods = list(methods)
    if not methods:
        raise InputError("no methods to benchmark")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise InputError(f"method(s) listed more than once: {', '.join(twice)}")
    demo.check_methods(methods)
    if int(splits) != splits or splits < 1:
        raise InputError(f"splits must be a positive integer, got {splits}")
    if not epoch_scale > 0:
        raise InputError(f"epoch_scale must be > 0, got {epoch_scale}")

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        results = _run(
            methods, splits, epoch_scale, out / "runs", seed, progress, attack, log, keep=True
        )
        (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "bench.md").write_text(bench_table(results))
        return results
    with tempfile.TemporaryDirectory(prefix="ppfr-bench-") as tmp:
        return _run(
            methods, splits, epoch_scale, Path(tmp), seed, progress, attack, log, keep=False
        )


def _run(
    methods: list[str],
    splits: int,
    epoch_scale: float,
    runs: Path,
    seed: int,
    progress: bool,
    attack: dict[str, int] | None,
    log: Callable[[str], Any],
    keep: bool,
) -> dict[str, Any]:
    attack = dict(demo.DEMO_ATTACK) if attack is None else dict(attack)
    split_seeds = [seed + k for k in range(int(splits))]
    recognizer_note = (
        "the split's arcface model"
        if "arcface" in methods
        else "an arcface trained on the attacker's faces for each method"
    )
    per_split: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    for k, s in enumerate(split_seeds):
        train_ids, test_ids = split_identities(TEST_IDENTITIES, s)
        train_set = load_orl(train_ids, aligned=True)
        test_set = load_orl(test_ids, aligned=True)
        log(
            f"split {k + 1}/{len(split_seeds)} (seed {s}): {len(train_ids)} training identities "
            f"({len(train_set)} images), held out {test_ids} ({len(test_set)} images)"
        )
        split: dict[str, Any] = {
            "seed": s,
            "train_identities": train_ids,
            "test_identities": test_ids,
            "methods": {},
        }
        recognizer = None
        for method in demo.attacker_first(methods):
            model, cfg, train_s = demo.train_preset(
                method,
                train_set,
                runs / f"split-{s}",
                epoch_scale=epoch_scale,
                seed=s,
                progress=progress,
            )
            r = demo.score_model(
                model,
                test_set,
                seed=s,
                progress=progress,
                extra_fars=BENCH_FARS,
                timing_batch=TIMING_BATCH,
            )
            r["train_seconds"] = train_s
            if method == "arcface":  # the attacker's recognizer for the identity attacks
                recognizer = model
            if attack:
                scores, _ = demo.attack_model(
                    model,
                    train_set,
                    test_set,
                    seed=s,
                    progress=progress,
                    recognizer=recognizer,
                    epoch_scale=epoch_scale,
                    **attack,
                )
                r.update(attack_figures(scores))
            r["device"] = str(model.device)
            r["model_dir"] = str(Path(cfg.out) / "model") if keep else None
            split["methods"][method] = r
            # the preset settings are the same for every split; seed and folder are not
            c = cfg.to_dict()
            configs.setdefault(method, {key: c[key] for key in ("model", "optim", "stages")})
            log(
                f"  {method}: accuracy {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} % "
                f"({r['pairs']} pairs), AUC {_num(r['auc'], 4)}, trained in {train_s:.0f} s"
                + (f"; {demo.attack_summary(scores)}" if attack else "")
            )
        # per split in the order asked for (training ran the attacker's recognizer first)
        split["methods"] = {m: split["methods"][m] for m in methods}
        per_split.append(split)

    return {
        "benchmark": "orl",
        "settings": {
            "methods": methods,
            "splits": len(split_seeds),
            "seed": seed,
            "split_seeds": split_seeds,
            "epoch_scale": epoch_scale,
            "test_identities": TEST_IDENTITIES,
            "aligned": True,
            "pairs": "all genuine pairs of the held-out identities + as many impostor pairs "
            "(drawn with the split seed)",
            "folds": 10,
            "timing_batch": TIMING_BATCH,
            "attack": attack or None,
            "linkage": {**demo.DEMO_LINKAGE, "recognizer": recognizer_note} if attack else None,
            "identity_recovery": {**demo.DEMO_IDENTITY, "recognizer": recognizer_note}
            if attack
            else None,
            "std": "population (numpy ddof=0) over splits",
            "presets": configs,
            "device": per_split[0]["methods"][methods[0]]["device"],
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "ppfr": ppfr.__version__,
        },
        "splits": per_split,
        "methods": {m: _aggregate([sp["methods"][m] for sp in per_split]) for m in methods},
    }


def attack_figures(scores: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Flatten :func:`ppfr.demo.attack_model` scores to ``"<prefix>_<score>"`` figures.

    ``tar_<far>`` reads the linkage TAR at that FAR (None where the pairs cannot measure
    it); a NaN (rank-1 without probes) becomes None, which JSON can hold.
    """
    out: dict[str, float | None] = {}
    for name, sc in scores.items():
        if name not in ATTACK_FIGURES:
            continue
        prefix, keys = ATTACK_FIGURES[name]
        for k in keys:
            v = sc["tar_at_far"].get(k[4:]) if k.startswith("tar_") else sc.get(k)
            out[f"{prefix}_{k}"] = None if v is None or v != v else float(v)
    return out


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = AGGREGATED + tuple(k for k in ATTACK_SCORES if k in rows[0])
    agg: dict[str, Any] = {key: mean_std([r[key] for r in rows]) for key in keys}
    fars = list(dict.fromkeys(f for r in rows for f in r["tar_at_far"]))
    agg["tar_at_far"] = {f: mean_std([r["tar_at_far"].get(f) for r in rows]) for f in fars}
    agg["pairs"] = rows[0]["pairs"]
    # fixed by the method's config, identical in every split
    agg["bytes_sent"] = rows[0]["bytes_sent"]
    agg["splits"] = len(rows)
    return agg


# ---------------------------------------------------------------------------------------
# tables


def _num(x: float | None, digits: int, scale: float = 1.0) -> str:
    return "n/a" if x is None else f"{scale * x:.{digits}f}"


def _pm(stat: dict[str, Any], digits: int, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{_num(stat['mean'], digits, scale)} ± {_num(stat['std'], digits, scale)}"


def bench_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column headers and one row of formatted cells per method (mean ± std over splits)."""
    headers = [
        "method",
        "accuracy (%)",
        "AUC",
        "TAR@FAR=1e-2 (%)",
        "TAR@FAR=1e-3 (%)",
        "training (s)",
        "protect (ms/img)",
        "embed (ms/img)",
        "bytes sent / face",
        "viewing leakage (%)",
        "recovery SSIM",
        "recovery PSNR (dB)",
        "recovery leakage (%)",
        "linkage AUC",
        "linkage rank-1 (%)",
        "identity-guided rank-1 (%)",
        "identity-guided leakage (%)",
    ]
    none = {"mean": None, "std": None}
    rows = []
    for name, r in results["methods"].items():
        tars = r["tar_at_far"]
        rows.append(
            [
                name,
                _pm(r["accuracy"], 2, 100),
                _pm(r["auc"], 4),
                _pm(tars.get("0.01", none), 1, 100),
                _pm(tars.get("0.001", none), 1, 100),
                _pm(r["train_seconds"], 0),
                _pm(r["protect_ms"], 2),
                _pm(r["embed_ms"], 2),
                f"{r['bytes_sent']:,}",
                _pm(r.get("viewing_leakage", none), 1, 100),
                _pm(r.get("recovery_ssim", none), 3),
                _pm(r.get("recovery_psnr", none), 2),
                _pm(r.get("recovery_leakage", none), 1, 100),
                _pm(r.get("linkage_auc", none), 3),
                _pm(r.get("linkage_rank1", none), 1, 100),
                _pm(r.get("identity_rank1", none), 1, 100),
                _pm(r.get("identity_leakage", none), 1, 100),
            ]
        )
    return headers, rows


def bench_table(results: dict[str, Any]) -> str:
    """Markdown table of :func:`run_orl_bench` results, with a one-line caption."""
    s = results["settings"]
    headers, rows = bench_rows(results)
    caption = (
        f"ORL open-set verification, {s['splits']} identity split(s) (seeds "
        f"{', '.join(map(str, s['split_seeds']))}) x {s['test_identities']} held-out "
        f"identities, epoch scale {s['epoch_scale']:g}, {s['device']}; mean ± std over splits."
    )
    lines = [
        caption,
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"
