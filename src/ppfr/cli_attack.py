"""``ppfr attack``: run a privacy attack on a trained model (mounted by ``ppfr.cli``).

    ppfr attack --model DIR --attack recovery [--json OUT] [--grid OUT.png]

The victims are held-out identities and the attacker's own faces are the other identities
of the same data, so the two never share a person. By default the data are the bundled ORL
faces split as ``ppfr demo`` splits them (``--test-identities 10 --split-seed 0``); with
``--data FOLDER`` (one sub-folder per identity, aligned faces) the victims are
``--test-identities`` identities drawn with ``--split-seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from ppfr._cli import console, friendly
from ppfr.errors import InputError

ATTACK_HELP = "Attack: viewing, recovery or adaptive (see `ppfr.attacks.list_attacks()`)."


def attack_data(
    data: str, test_identities: int, split_seed: int
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(victim faces, victim labels, attacker's faces) with disjoint identities."""
    if data.lower() in ("orl", "orl-padded"):
        from ppfr.data.orl import load_orl, split_identities

        try:
            aux_ids, victim_ids = split_identities(test_identities, split_seed)
        except ValueError as e:
            raise InputError(f"--test-identities: {e}") from None
        aligned = data.lower() == "orl"
        victims, aux = load_orl(victim_ids, aligned=aligned), load_orl(aux_ids, aligned=aligned)
        return victims.stack(), np.asarray(victims.labels), aux.stack()
    from ppfr.data.base import FaceDataset
    from ppfr.data.open import open_source

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
    return ds.stack(victims.tolist()), labels[victims], ds.stack(aux.tolist())


@friendly
def attack_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model bundle (client part used).")],
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
    views: Annotated[int, typer.Option(help="adaptive: protections per face.")] = 8,
    seed: Annotated[int, typer.Option(help="Attack randomness and pairs.")] = 0,
) -> None:
    """Attack a model's protection and score it: SSIM, PSNR, judge leakage, rank-1."""
    import ppfr
    from ppfr.attacks import create_attack, list_attacks

    name = attack.strip().lower()
    if name not in list_attacks():
        raise InputError(f"--attack: unknown attack {attack!r}; known: {', '.join(list_attacks())}")
    config: dict[str, Any] = {}
    if name != "viewing":
        config = {"width": width, "epochs": epochs}
        if name == "adaptive":
            config["views"] = views
    method = ppfr.load(model, part="client")
    victims, labels, aux = attack_data(data, test_identities, split_seed)
    console.print(
        f"{name} attack on {method.name}: {len(victims)} victim faces "
        f"({len(np.unique(labels))} people), attacker's faces: {len(aux)}"
    )
    runner = create_attack(name, **config)
    report = runner.run(method, victims, labels, aux=aux, seed=seed)
    report["model"] = str(model)
    console.print(
        f"SSIM {report['ssim']:.3f}  PSNR {report['psnr']:.2f} dB  "
        f"leakage {100 * report['leakage']:.1f} %  rank-1 {100 * report['rank1']:.1f} %"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"scores: {json_out}")
    if grid is not None:
        from ppfr.report import attack_images, save_grid

        pick = _one_per_person(labels, 8)
        images = attack_images(runner, method, victims[pick], seed=seed)
        save_grid(grid, [(victims[pick] + 1) / 2, images], ["original", name])
        console.print(f"images: {grid}")


def _one_per_person(labels: np.ndarray, k: int) -> list[int]:
    _, first = np.unique(labels, return_index=True)
    return sorted(first.tolist())[:k]
