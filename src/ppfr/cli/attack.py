"""``ppfr attack``: run a privacy attack on a trained model.

    ppfr attack --model DIR --attack recovery [--json OUT] [--grid OUT.png]
    ppfr attack --model DIR --attack linkage [--recognizer BUNDLE_OR_ONNX]
    ppfr attack --model DIR --attack identity-recovery [--recognizer BUNDLE]

The victims are held-out identities and the attacker's own faces are the other identities
of the same data, so the two never share a person. By default the data are the bundled ORL
faces split as ``ppfr demo`` splits them (``--test-identities 10 --split-seed 0``); with
``--data FOLDER`` (one sub-folder per identity, aligned faces) the victims are
``--test-identities`` identities drawn with ``--split-seed``.

The identity attacks (``linkage``, ``identity-recovery``) use the attacker's own face
recognizer: ``--recognizer`` names a ppfr bundle (an unprotected ArcFace, for instance
``demo-out/runs/arcface/model``) or an ``.onnx`` file (linkage only); without it the attack
trains an unprotected ArcFace on the attacker's faces first (docs/privacy.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

import ppfr
from ppfr.cli._common import ClientModelOpt, console, friendly
from ppfr.data.base import FaceDataset
from ppfr.data.open import open_source
from ppfr.errors import InputError
from ppfr.experiments.plots import save_grid
from ppfr.experiments.report import attack_images

ATTACK_HELP = (
    "Attack: viewing, recovery, adaptive, linkage or identity-recovery "
    "(see `ppfr.attacks.list_attacks()`)."
)


def attack_data(
    data: str, test_identities: int, split_seed: int
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """(victim faces, victim labels, attacker's faces, attacker's labels), disjoint identities."""
    if data.lower() in ("orl", "orl-padded"):
        # deferred: the ORL loader (image decoding, alignment) is not loaded for `ppfr --help`
        from ppfr.data.orl import load_orl, split_identities

        try:
            aux_ids, victim_ids = split_identities(test_identities, split_seed)
        except ValueError as e:
            raise InputError(f"--test-identities: {e}") from None
        aligned = data.lower() == "orl"
        victims, aux = load_orl(victim_ids, aligned=aligned), load_orl(aux_ids, aligned=aligned)
        return victims.stack(), np.asarray(victims.labels), aux.stack(), np.asarray(aux.labels)
    ds = open_source(data)
    if not isinstance(ds, FaceDataset):
        raise InputError(f"{data}: attacks need identity-labelled faces, not a pair pack")
    labels = np.asarray(ds.labels)
    ids = np.unique(labels)
    if not 0 < test_identities < len(ids):
        raise InputError(f"--test-identities must be in 1..{len(ids) - 1} for {data}")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(split_seed))
    victim_ids = ids[order[:test_identities].numpy()]
    is_victim = np.isin(labels, victim_ids)
    victims, aux = np.flatnonzero(is_victim), np.flatnonzero(~is_victim)
    return ds.stack(victims.tolist()), labels[victims], ds.stack(aux.tolist()), labels[aux]


@friendly
def attack_cmd(
    model: ClientModelOpt,
    attack: Annotated[str, typer.Option("--attack", help=ATTACK_HELP)] = "recovery",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores here.")] = None,
    grid: Annotated[
        Path | None, typer.Option(help="Save a PNG: original / attack image, 8 victims.")
    ] = None,
    data: Annotated[str, typer.Option(help="orl, orl-padded, or an identity folder.")] = "orl",
    test_identities: Annotated[int, typer.Option(help="Victim identities.")] = 10,
    split_seed: Annotated[int, typer.Option(help="Seed of the victim/attacker split.")] = 0,
    width: Annotated[int, typer.Option(help="Inverter U-Net width (64: full size).")] = 64,
    epochs: Annotated[int, typer.Option(help="Inverter training epochs.")] = 30,
    views: Annotated[
        int | None,
        typer.Option(help="Protections per face: adaptive (default 8), linkage (default 1)."),
    ] = None,
    recognizer: Annotated[
        str | None,
        typer.Option(
            help="linkage / identity-recovery: the attacker's recognizer, a ppfr bundle "
            "directory or an .onnx file (default: train an ArcFace on the attacker's faces)."
        ),
    ] = None,
    recognizer_range: Annotated[
        str, typer.Option(help="Pixel range an .onnx recognizer expects, 'low,high'.")
    ] = "0,255",
    student_width: Annotated[
        float, typer.Option(help="linkage: IR width of a student not started from the recognizer.")
    ] = 0.25,
    identity_weight: Annotated[
        float, typer.Option(help="identity-recovery: weight of the identity term.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Attack randomness and pairs.")] = 0,
) -> None:
    """Attack a model's protection and score it: SSIM, PSNR, judge leakage, rank-1 (linkage:
    AUC, verification accuracy, TAR, rank-1 against photos)."""
    # deferred: the attacks (and their networks) are not loaded for `ppfr --help`
    from ppfr.attacks import create_attack, list_attacks
    from ppfr.experiments.demo import attacker_view

    name = attack.strip().lower()
    if name not in list_attacks():
        raise InputError(f"--attack: unknown attack {attack!r}; known: {', '.join(list_attacks())}")
    config: dict[str, Any] = {}
    if name in ("recovery", "adaptive", "identity-recovery"):
        config = {"width": width, "epochs": epochs}
    if name == "adaptive":
        config["views"] = 8 if views is None else views
    if name == "identity-recovery":
        config.update(recognizer=recognizer, identity_weight=identity_weight)
    if name == "linkage":
        config = {
            "recognizer": recognizer,
            "width": student_width,
            "epochs": epochs,
            "views": 1 if views is None else views,
            "onnx_range": _range(recognizer_range),
        }
    if recognizer is not None and "recognizer" not in config:
        raise InputError(
            f"--recognizer is for the linkage and identity-recovery attacks, not {name}"
        )
    method = ppfr.load(model, part="client")
    victims, labels, aux, aux_labels = attack_data(data, test_identities, split_seed)
    console.print(
        f"{name} attack on {method.name}: {len(victims)} victim faces "
        f"({len(np.unique(labels))} people), attacker's faces: {len(aux)}"
    )
    runner = create_attack(name, **config)
    first: dict = {}
    if name != "viewing":  # shuffled tiles or a keyed order: the attacker's first step
        method, first = attacker_view(method, aux, victims, seed=seed)
    if "tiles" in first:
        placed = first["tiles"]["placed"]
        console.print(f"tile solver: {100 * placed:.1f} % of the attacker's tiles placed right")
    if "key" in first:
        console.print(
            f"key recovery: {100 * first['key']['placed']:.1f} % of the tiles placed right "
            f"from the {len(victims)} victims' representations"
        )
    run = runner.run(method, victims, labels, aux=aux, aux_labels=aux_labels, seed=seed)
    report = run.to_dict()  # the JSON written below
    report["model"] = str(model)
    report.update({f"{step}_placed": done["placed"] for step, done in first.items()})
    if name == "linkage":
        tars = "  ".join(
            f"TAR@FAR={far} " + ("n/a" if t is None else f"{100 * t:.1f} %")
            for far, t in report["tar_at_far"].items()
        )
        console.print(
            f"AUC {report['auc']:.3f}  accuracy {100 * report['accuracy']:.1f} %  "
            f"rank-1 {100 * report['rank1']:.1f} % (chance {100 * report['chance_rank1']:.0f} %)"
            f"  {tars}\nrecognizer photo-vs-photo: AUC {report['recognizer_auc']:.3f}, "
            f"rank-1 {100 * report['recognizer_rank1']:.1f} %"
        )
    else:
        console.print(
            f"SSIM {report['ssim']:.3f}  PSNR {report['psnr']:.2f} dB  "
            f"leakage {100 * report['leakage']:.1f} %  rank-1 {100 * report['rank1']:.1f} %"
        )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"scores: {json_out}")
    if grid is not None and name == "linkage":
        console.print("--grid: the linkage attack makes embeddings, not images; no grid")
    elif grid is not None:
        pick = _one_per_person(labels, 8)
        images = attack_images(runner, method, victims[pick], seed=seed)
        save_grid(grid, [(victims[pick] + 1) / 2, images], ["original", name])
        console.print(f"images: {grid}")


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--recognizer-range: expected 'low,high', got {text!r}") from None
    if not hi > lo:
        raise InputError(f"--recognizer-range: low must be below high, got {text!r}")
    return lo, hi


def _one_per_person(labels: np.ndarray, k: int) -> list[int]:
    _, first = np.unique(labels, return_index=True)
    return sorted(first.tolist())[:k]


def register(app: typer.Typer) -> None:
    """Add ``attack`` to the ``ppfr`` app."""
    app.command("attack")(attack_cmd)
