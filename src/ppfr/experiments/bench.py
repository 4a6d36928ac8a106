"""``ppfr bench orl``: every method trained with the same budget, compared over identity splits.

One demo run scores one split of ORL's 40 people; with 100 held-out faces the figures move
by a few points from split to split. The benchmark repeats the demo's recipe over several
splits and reports mean and spread:

for each split seed ``s`` in ``seed .. seed + splits - 1``

1. :func:`~ppfr.data.orl.split_identities` holds out 10 identities (disjoint from the 30
   training ones) with seed ``s``;
2. every method is trained with its CPU preset
   (:data:`~ppfr.experiments.presets.DEMO_MODELS`,
   :data:`~ppfr.experiments.presets.DEMO_EPOCHS` times ``epoch_scale``) and training seed
   ``s`` on the YuNet-aligned training faces;
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

    >>> from ppfr.experiments.bench import run_orl_bench, bench_table
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
from ppfr.data.base import FaceDataset
from ppfr.data.orl import load_orl, split_identities
from ppfr.errors import InputError
from ppfr.experiments import demo, presets
from ppfr.methods import Method
from ppfr.train import TrainConfig

#: held-out identities per split, and the extra FARs reported: the demo's
TEST_IDENTITIES = presets.TEST_IDENTITIES
BENCH_FARS = presets.ORL_FARS
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
    # what the attacker had to solve first: a keyed order, per-image shuffled tiles
    "key": ("key", ("placed",)),
    "tiles": ("tiles", ("placed",)),
}
#: attack figures, aggregated when the attacks ran
ATTACK_SCORES = tuple(f"{p}_{k}" for p, keys in ATTACK_FIGURES.values() for k in keys)

__all__ = [
    "BENCH_FARS",
    "TEST_IDENTITIES",
    "TIMING_BATCH",
    "bench_rows",
    "bench_table",
    "merge_results",
    "run_orl_bench",
    "write_bench",
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
        methods: method names with a preset in :data:`~ppfr.experiments.presets.DEMO_MODELS`.
        splits: number of identity splits; split ``k`` uses seed ``seed + k`` for the
            held-out identities, the training and the impostor pairs.
        epoch_scale: multiplies every stage's preset epochs (at least one epoch each).
        out: folder for ``runs/split-<seed>/<method>`` (checkpoints, model bundles) and
            ``bench.json`` / ``bench.md``; None trains in a temporary folder and writes
            nothing.
        seed: first split seed.
        progress: tqdm bars for training and embedding.
        attack: recovery inverter settings ``{"width", "epochs"}`` (the demo's
            :data:`~ppfr.experiments.presets.DEMO_ATTACK` by default); ``{}`` skips the attacks.
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
    presets.check_methods(methods)
    if int(splits) != splits or splits < 1:
        raise InputError(f"splits must be a positive integer, got {splits}")
    if not epoch_scale > 0:
        raise InputError(f"epoch_scale must be > 0, got {epoch_scale}")

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        partial = out / "bench.partial.json"
        results = _run(
            methods, splits, epoch_scale, out / "runs", seed, progress, attack, log, keep=True,
            save=lambda done: partial.write_text(json.dumps(done, indent=2) + "\n"),
        )  # fmt: skip
        write_bench(results, out)
        partial.unlink(missing_ok=True)
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
    save: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Every split in turn (:func:`_run_split`), then the summary (:func:`_summarise`).

    ``save`` receives, after every trained and attacked method, the figures measured so
    far (``{"benchmark", "partial": True, "splits"}``), so a run killed half-way (out of
    memory, out of time) keeps what it measured.
    """
    attack = dict(presets.DEMO_ATTACK) if attack is None else dict(attack)
    split_seeds = [seed + k for k in range(int(splits))]
    per_split: list[dict[str, Any]] = []
    configs: dict[str, TrainConfig] = {}

    def progress_of(current: dict[str, Any]) -> None:  # the splits done, and this one so far
        save({"benchmark": "orl", "partial": True, "splits": [*per_split, current]})

    for k, s in enumerate(split_seeds):
        split, split_configs = _run_split(
            methods,
            s,
            f"split {k + 1}/{len(split_seeds)}",
            runs / f"split-{s}",
            epoch_scale=epoch_scale,
            progress=progress,
            attack=attack,
            log=log,
            keep=keep,
            on_method=None if save is None else progress_of,
        )
        per_split.append(split)
        # the preset settings are the same for every split; seed and folder are not
        for method, cfg in split_configs.items():
            configs.setdefault(method, cfg)
    return _summarise(methods, seed, split_seeds, epoch_scale, attack, configs, per_split)


def _run_split(
    methods: list[str],
    s: int,
    name: str,
    runs: Path,
    *,
    epoch_scale: float,
    progress: bool,
    attack: dict[str, int],
    log: Callable[[str], Any],
    keep: bool,
    on_method: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, Any], dict[str, TrainConfig]]:
    """One identity split with seed ``s``: every method trained, scored and attacked.

    Returns the split's record (seed, identities, per-method figures in the order of
    ``methods``) and the config each method trained with.
    """
    train_ids, test_ids = split_identities(TEST_IDENTITIES, s)
    train_set = load_orl(train_ids, aligned=True)
    test_set = load_orl(test_ids, aligned=True)
    log(
        f"{name} (seed {s}): {len(train_ids)} training identities "
        f"({len(train_set)} images), held out {test_ids} ({len(test_set)} images)"
    )
    figures: dict[str, dict[str, Any]] = {}
    configs: dict[str, TrainConfig] = {}
    recognizer = None
    for method in demo.attacker_first(methods):
        model, cfg, r = _train_and_score(
            method, train_set, test_set, runs, s, epoch_scale=epoch_scale, progress=progress
        )
        if method == "arcface":  # the attacker's recognizer for the identity attacks
            recognizer = model
        scores = None
        if attack:
            scores = _attack(
                model, train_set, test_set, s, attack, recognizer, epoch_scale, progress
            )
            r.update(attack_figures(scores))
        r["device"] = str(model.device)
        r["model_dir"] = str(Path(cfg.out) / "model") if keep else None
        figures[method] = r
        configs[method] = cfg
        log(_method_line(method, r, scores))
        if on_method is not None:  # what this split has measured so far
            on_method({"seed": s, "train_identities": train_ids, "test_identities": test_ids,
                       "methods": dict(figures)})  # fmt: skip
    split = {
        "seed": s,
        "train_identities": train_ids,
        "test_identities": test_ids,
        # in the order asked for (training ran the attacker's recognizer first)
        "methods": {m: figures[m] for m in methods},
    }
    return split, configs


def _train_and_score(
    method: str,
    train_set: FaceDataset,
    test_set: FaceDataset,
    runs: Path,
    s: int,
    *,
    epoch_scale: float,
    progress: bool,
) -> tuple[Method, TrainConfig, dict[str, Any]]:
    """Train ``method``'s preset with seed ``s``; its verification figures and costs."""
    model, cfg, train_s = demo.train_preset(
        method, train_set, runs, epoch_scale=epoch_scale, seed=s, progress=progress
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
    return model, cfg, r


def _attack(
    model: Method,
    train_set: FaceDataset,
    test_set: FaceDataset,
    s: int,
    attack: dict[str, int],
    recognizer: Method | None,
    epoch_scale: float,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """The demo's attacks on the held-out faces; the attacker owns the training faces."""
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
    return scores


def _method_line(method: str, r: dict[str, Any], scores: dict[str, Any] | None) -> str:
    """The log line of one trained method."""
    line = (
        f"  {method}: accuracy {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} % "
        f"({r['pairs']} pairs), AUC {_num(r['auc'], 4)}, trained in {r['train_seconds']:.0f} s"
    )
    return line + (f"; {demo.attack_summary(scores)}" if scores is not None else "")


def _summarise(
    methods: list[str],
    seed: int,
    split_seeds: list[int],
    epoch_scale: float,
    attack: dict[str, int],
    configs: dict[str, TrainConfig],
    per_split: list[dict[str, Any]],
) -> dict[str, Any]:
    """The benchmark's record: settings, every split, and per method mean ± std."""
    return {
        "benchmark": "orl",
        "settings": _settings(methods, seed, split_seeds, epoch_scale, attack, configs, per_split),
        "splits": per_split,
        "methods": {m: _aggregate([sp["methods"][m] for sp in per_split]) for m in methods},
    }


def _settings(
    methods: list[str],
    seed: int,
    split_seeds: list[int],
    epoch_scale: float,
    attack: dict[str, int],
    configs: dict[str, TrainConfig],
    per_split: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything needed to rerun the benchmark, and where it ran."""
    recognizer_note = (
        "the split's arcface model"
        if "arcface" in methods
        else "an arcface trained on the attacker's faces for each method"
    )
    linkage = {**presets.DEMO_LINKAGE, "recognizer": recognizer_note}
    identity = {**presets.DEMO_IDENTITY, "recognizer": recognizer_note}
    return {
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
        "linkage": linkage if attack else None,
        "identity_recovery": identity if attack else None,
        "std": "population (numpy ddof=0) over splits",
        "presets": {m: _preset_settings(cfg) for m, cfg in configs.items()},
        "device": per_split[0]["methods"][methods[0]]["device"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ppfr": ppfr.__version__,
    }


def _preset_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The part of a preset's config that is the same in every split."""
    c = cfg.to_dict()
    return {key: c[key] for key in ("model", "optim", "stages")}


def attack_figures(scores: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Flatten :func:`~ppfr.experiments.demo.attack_model` scores to ``"<prefix>_<score>"``
    figures.

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
        "methods": {m: _aggregate([sp["methods"][m] for sp in per_split]) for m in keep},
    }


def write_bench(results: dict[str, Any], out: str | Path) -> Path:
    """``bench.json``, ``bench.md`` and (with attack figures) ``frontier.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(bench_table(results))
    write_frontier(results, out / "frontier.png")
    return out


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


#: the frontier plot's panels: (figure key, y-axis label, chance level)
FRONTIER_PANELS = (
    ("linkage_auc", "linkage AUC", 0.5),
    ("recovery_rank1", "recovery rank-1 (%)", None),
    ("identity_rank1", "identity-guided rank-1 (%)", None),
)


def write_frontier(results: dict[str, Any], path: str | Path) -> Path | None:
    """Plot every method's accuracy against each attack of :data:`FRONTIER_PANELS`
    (mean ± std over splits) to ``path`` (PNG); None when no attack figure is there.

    Rank-1 chance is one over the held-out identities (``settings["test_identities"]``).
    """
    from ppfr.experiments.report import _matplotlib  # deferred: matplotlib is heavy

    methods = results["methods"]
    panels = [p for p in FRONTIER_PANELS if any(p[0] in r for r in methods.values())]
    if not panels:
        return None
    plt = _matplotlib()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    chance_rank1 = 100.0 / results["settings"]["test_identities"]
    for ax, (key, label, chance) in zip(axes[0], panels, strict=True):
        scale = 100.0 if key.endswith("rank1") else 1.0
        shown = [
            (name, r["accuracy"], r[key])
            for name, r in methods.items()
            if r.get(key) and r[key]["mean"] is not None
        ]
        points = [(100 * acc["mean"], scale * stat["mean"]) for _, acc, stat in shown]
        for (_, acc, stat), xy in zip(shown, points, strict=True):
            ax.errorbar(
                *xy, xerr=100 * (acc["std"] or 0.0), yerr=scale * (stat["std"] or 0.0),
                fmt="o", capsize=3,
            )  # fmt: skip
        for group in _label_groups(points):
            if len(group) == 1:
                ax.annotate(shown[group[0]][0], points[group[0]], textcoords="offset points",
                            xytext=(5, 4), fontsize=8)  # fmt: skip
            else:  # one label, left of the cluster, for points that coincide
                x = min(points[i][0] - 100 * (shown[i][1]["std"] or 0.0) for i in group)
                ax.annotate(", ".join(shown[i][0] for i in group), (x, points[group[0]][1]),
                            textcoords="offset points", xytext=(-6, 0), ha="right",
                            va="center", fontsize=8)  # fmt: skip
        level = chance if chance is not None else chance_rank1
        ax.axhline(level, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("verification accuracy % (held-out ORL)")
        ax.set_ylabel(f"{label}, chance dashed")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_groups(points: list[tuple[float, float]]) -> list[list[int]]:
    """Indices of ``points`` grouped under one label: each point joins the first earlier
    point within 3 % of the panel's span on both axes, so the names of methods that
    coincide on the plot (several at 100 % rank-1) are listed together instead of printed
    over each other."""
    if not points:
        return []
    xs, ys = zip(*points, strict=True)
    near_x = 0.03 * max(max(xs) - min(xs), 1e-9)
    near_y = 0.03 * max(max(ys) - min(ys), 1e-9)
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(points):
        for g in groups:
            x0, y0 = points[g[0]]
            if abs(x0 - x) <= near_x and abs(y0 - y) <= near_y:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


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
