"""Benchmark records aggregated over splits, and several runs merged into one record.

:func:`aggregate` turns a method's per-split figures into ``{"mean", "std", "values"}``
(:func:`mean_std`); :func:`merge_results` joins records of
:func:`ppfr.experiments.bench.run_orl_bench` made on other splits (``ppfr bench merge``) and
aggregates them as if one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ppfr.errors import InputError
from ppfr.experiments.tables import AGGREGATED, ATTACK_SCORES

__all__ = ["MERGE_MUST_AGREE", "aggregate", "mean_std", "merge_results"]


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


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's per-split figures as ``{"mean", "std", "values"}`` each, plus the TARs,
    pairs, bytes sent and the number of splits."""
    # an attack figure is aggregated where every split has it (older runs may lack one)
    keys = AGGREGATED + tuple(k for k in ATTACK_SCORES if all(k in r for r in rows))
    agg: dict[str, Any] = {key: mean_std([r[key] for r in rows]) for key in keys}
    fars = list(dict.fromkeys(f for r in rows for f in r["tar_at_far"]))
    agg["tar_at_far"] = {f: mean_std([r["tar_at_far"].get(f) for r in rows]) for f in fars}
    agg["pairs"] = rows[0]["pairs"]
    # fixed by the method's config, identical in every split
    agg["bytes_sent"] = rows[0]["bytes_sent"]
    agg["splits"] = len(rows)
    return agg


#: settings that must agree for splits to be averaged together
MERGE_MUST_AGREE = ("benchmark", "epoch_scale", "test_identities", "attack", "aligned")


def merge_results(
    results: Sequence[dict[str, Any]], methods: Sequence[str] | None = None
) -> dict[str, Any]:
    """One benchmark record from several runs of :func:`run_orl_bench` on other splits

    (run side by side, on other machines, or on other days), averaged as if one run.

    Splits are keyed by their seed; a seed in several runs contributes the union of their
    methods. Where two runs measured the same method on the same seed the first is kept
    and the other is listed in ``settings["merged"]["duplicates"]`` with both accuracies,
    so a disagreement is visible (ArcFace trained twice on one thread count should agree).

    Args:
        results: records as :func:`run_orl_bench` returns them (``bench.json`` contents).
        methods: the methods to keep (default: every method found, in order of first
            appearance); each must have figures on every split.

    Raises:
        InputError: no records, a record that is not an ORL benchmark, settings that
            differ (:data:`MERGE_MUST_AGREE`), or a method missing on some split.
    """
    records = list(results)
    if not records:
        raise InputError("merge: no benchmark records given")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or r.get("benchmark") != "orl" or "splits" not in r:
            raise InputError(f"merge: record {i + 1} is not an ORL bench.json")
    first = records[0]["settings"]
    for i, r in enumerate(records[1:], start=2):
        for key in MERGE_MUST_AGREE:
            a = records[0].get(key) if key == "benchmark" else first.get(key)
            b = r.get(key) if key == "benchmark" else r["settings"].get(key)
            if a != b:
                raise InputError(f"merge: record {i} has {key}={b!r}, record 1 has {a!r}")
    by_seed: dict[int, dict[str, Any]] = {}
    duplicates: list[dict[str, Any]] = []
    found: list[str] = []
    for r in records:
        for split in r["splits"]:
            into = by_seed.setdefault(
                int(split["seed"]),
                {k: v for k, v in split.items() if k != "methods"} | {"methods": {}},
            )
            for m, fig in split["methods"].items():
                if m not in found:
                    found.append(m)
                if m in into["methods"]:
                    duplicates.append(
                        {
                            "seed": int(split["seed"]),
                            "method": m,
                            "kept_accuracy": into["methods"][m]["accuracy"],
                            "dropped_accuracy": fig["accuracy"],
                        }
                    )
                else:
                    into["methods"][m] = fig
    keep = list(methods) if methods is not None else found
    seeds = sorted(by_seed)
    for m in keep:
        missing = [s for s in seeds if m not in by_seed[s]["methods"]]
        if missing:
            raise InputError(
                f"merge: {m} has no figures on split seed(s) {missing}; merge runs that "
                "cover the same methods, or keep only the others (methods=...)"
            )
    per_split = [
        {**by_seed[s], "methods": {m: by_seed[s]["methods"][m] for m in keep}} for s in seeds
    ]
    presets_used: dict[str, Any] = {}
    for r in records:
        for m, cfg in (r["settings"].get("presets") or {}).items():
            presets_used.setdefault(m, cfg)
    settings = {
        **first,
        "methods": keep,
        "splits": len(seeds),
        "seed": seeds[0],
        "split_seeds": seeds,
        "presets": {m: presets_used[m] for m in keep if m in presets_used},
        "merged": {
            "from": [
                {
                    k: r["settings"].get(k)
                    for k in ("split_seeds", "methods", "threads", "ppfr", "torch", "device")
                }
                for r in records
            ],
            "duplicates": duplicates,
        },
    }
    return {
        "benchmark": "orl",
        "settings": settings,
        "splits": per_split,
        "methods": {m: aggregate([sp["methods"][m] for sp in per_split]) for m in keep},
    }
