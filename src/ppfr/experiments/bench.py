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

This module runs the benchmark and writes its files (:func:`write_bench`); the aggregation
and ``ppfr bench merge`` are in :mod:`ppfr.experiments.merge`, the tables in
:mod:`ppfr.experiments.tables` and the frontier plot in :mod:`ppfr.experiments.plots`.

Example::

    >>> from ppfr.experiments.bench import run_orl_bench
    >>> from ppfr.experiments.tables import bench_table
    >>> res = run_orl_bench(["arcface", "minusface"], out="bench-out")  # doctest: +SKIP
    >>> print(bench_table(res))                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import ppfr
from ppfr.data.base import FaceDataset
from ppfr.data.orl import load_orl, split_identities
from ppfr.errors import InputError
from ppfr.experiments import demo
from ppfr.experiments.merge import aggregate
from ppfr.experiments.plots import write_frontier
from ppfr.experiments.presets import ORL_FARS, TEST_IDENTITIES, DemoPresets, check_methods
from ppfr.experiments.tables import ATTACK_FIGURES, FIGURES, bench_table
from ppfr.methods import Method
from ppfr.train import TrainConfig

#: the extra FARs reported, the demo's (as are the held-out identities, TEST_IDENTITIES)
BENCH_FARS = ORL_FARS
#: faces in the batch used to time protect and embed
TIMING_BATCH = 32

__all__ = [
    "BENCH_FARS",
    "TEST_IDENTITIES",
    "TIMING_BATCH",
    "attack_figures",
    "run_orl_bench",
    "write_bench",
]


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
    presets: DemoPresets | None = None,
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
        presets: the models, epochs and attack settings
            (:class:`~ppfr.experiments.presets.DemoPresets`; default: the shipped presets,
            what ``ppfr bench orl`` runs).

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
    presets = presets if presets is not None else DemoPresets()
    check_methods(methods, presets)
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
            presets=presets,
            save=lambda done: partial.write_text(json.dumps(done, indent=2) + "\n"),
        )  # fmt: skip
        write_bench(results, out)
        partial.unlink(missing_ok=True)
        return results
    with tempfile.TemporaryDirectory(prefix="ppfr-bench-") as tmp:
        return _run(
            methods, splits, epoch_scale, Path(tmp), seed, progress, attack, log, keep=False,
            presets=presets,
        )  # fmt: skip


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
    presets: DemoPresets,
    save: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Every split in turn (:func:`_run_split`), then the summary (:func:`_summarise`).

    ``save`` receives, after every trained and attacked method, the figures measured so
    far (``{"benchmark", "partial": True, "splits"}``), so a run killed half-way (out of
    memory, out of time) keeps what it measured.
    """
    attack = dict(presets.attack) if attack is None else dict(attack)
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
            presets=presets,
            on_method=None if save is None else progress_of,
        )
        per_split.append(split)
        # the preset settings are the same for every split; seed and folder are not
        for method, cfg in split_configs.items():
            configs.setdefault(method, cfg)
    return _summarise(methods, seed, split_seeds, epoch_scale, attack, configs, per_split, presets)


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
    presets: DemoPresets,
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
            method,
            train_set,
            test_set,
            runs,
            s,
            epoch_scale=epoch_scale,
            progress=progress,
            presets=presets,
        )
        if method == "arcface":  # the attacker's recognizer for the identity attacks
            recognizer = model
        scores = None
        if attack:
            scores = _attack(
                model, train_set, test_set, s, attack, recognizer, epoch_scale, progress, presets
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
    presets: DemoPresets,
) -> tuple[Method, TrainConfig, dict[str, Any]]:
    """Train ``method``'s preset with seed ``s``; its verification figures and costs."""
    model, cfg, train_s = demo.train_preset(
        method,
        train_set,
        runs,
        epoch_scale=epoch_scale,
        seed=s,
        progress=progress,
        presets=presets,
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
    presets: DemoPresets,
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
        presets=presets,
        **attack,
    )
    return scores


def _method_line(method: str, r: dict[str, Any], scores: dict[str, Any] | None) -> str:
    """The log line of one trained method."""
    line = (
        f"  {method}: accuracy {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} % "
        f"({r['pairs']} pairs), AUC {FIGURES['auc'].number(r['auc'])}, "
        f"trained in {r['train_seconds']:.0f} s"
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
    presets: DemoPresets,
) -> dict[str, Any]:
    """The benchmark's record: settings, every split, and per method mean ± std."""
    return {
        "benchmark": "orl",
        "settings": _settings(
            methods, seed, split_seeds, epoch_scale, attack, configs, per_split, presets
        ),
        "splits": per_split,
        "methods": {m: aggregate([sp["methods"][m] for sp in per_split]) for m in methods},
    }


def _settings(
    methods: list[str],
    seed: int,
    split_seeds: list[int],
    epoch_scale: float,
    attack: dict[str, int],
    configs: dict[str, TrainConfig],
    per_split: list[dict[str, Any]],
    presets: DemoPresets,
) -> dict[str, Any]:
    """Everything needed to rerun the benchmark, and where it ran."""
    recognizer_note = (
        "the split's arcface model"
        if "arcface" in methods
        else "an arcface trained on the attacker's faces for each method"
    )
    linkage = {**presets.linkage, "recognizer": recognizer_note}
    identity = {**presets.identity, "recognizer": recognizer_note}
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


def write_bench(results: dict[str, Any], out: str | Path) -> Path:
    """``bench.json``, ``bench.md`` and (with attack figures) ``frontier.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(bench_table(results))
    write_frontier(results, out / "frontier.png")
    return out
