"""The attacker's budget: linkage and identity-guided recovery against what the attacker spends.

Whoever holds a public client can protect faces of its own and train on them, so the identity
attacks (:mod:`ppfr.attacks.linkage`, :mod:`ppfr.attacks.identity_recovery`) follow how well
a recognizer trained on the same representations tells people apart, and how much the
attacker spends, not the protection (docs/privacy.md, "Linkage follows the server's
recognition"). This module measures the second part: each attack at a grid of attacker
budgets (:class:`Budget`), on a trained method, beside the method's own server figures (its
verification AUC and accuracy on the same held-out people: the reference line, which a
student trained better than the server can pass).

A budget has four parts:

- ``faces``: how many of the attacker's own faces it trains on (spread evenly over its
  identities, :func:`attacker_subset`); ``None`` is every non-victim face;
- ``copies``: each face plus ``copies - 1`` augmented copies of it (a small random shift,
  scale, rotation and brightness change, :func:`augment_faces`): more faces from the same
  photos, as any attacker can make;
- ``epochs``: passes of each attack's training over those faces;
- ``init``: the linkage student's start, ``"recognizer"`` (a copy of the attacker's photo
  recognizer) or ``"scratch"``. The identity-guided inverter always starts from scratch, so
  a ``"scratch"`` cell runs the linkage attack only.

:func:`run_budget_sweep` runs the cells one by one and rewrites its JSON file after each, so
a run that is stopped keeps every finished cell and a rerun skips them. :func:`budget_figure`
draws the result: every cell's score against the faces the attacker trained on (faces x
copies x epochs), one colour per method, the method's server figure dashed in the same
colour. ``benchmarks/attacker_budget.py`` is the command line.

Example::

    >>> from ppfr.experiments.budget import Budget, default_grid
    >>> [b.key for b in default_grid(300, [6, 12])][:2]
    ['faces=30/copies=1/epochs=6/init=recognizer', 'faces=100/copies=1/epochs=6/init=recognizer']
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ppfr.attacks import create_attack
from ppfr.errors import InputError
from ppfr.experiments.demo import attacker_view
from ppfr.experiments.plots import matplotlib

__all__ = [
    "ATTACKS",
    "Budget",
    "attacker_subset",
    "augment_faces",
    "budget_faces",
    "budget_figure",
    "budget_table",
    "default_grid",
    "largest_budget",
    "load_results",
    "run_budget_cell",
    "run_budget_sweep",
    "summarise",
]

#: the attacks a cell runs: linkage (every cell) and identity-guided recovery (cells whose
#: student starts from the recognizer; the inverter has no other start)
ATTACKS = ("linkage", "identity-recovery")
#: figures kept from each attack's report
_KEEP = {
    "linkage": (
        "auc",
        "accuracy",
        "rank1",
        "recognizer_auc",
        "recognizer_rank1",
        "train_loss",
        "fit_seconds",
        "tar_at_far",
    ),
    "identity-recovery": (
        "leakage",
        "rank1",
        "ssim",
        "floor_ssim",
        "train_pixel_l1",
        "train_identity",
        "fit_seconds",
    ),
}


@dataclass(frozen=True)
class Budget:
    """What the attacker spends on one cell of the sweep (see the module docs).

    Attributes:
        faces: attacker faces it trains on; None: every one it has.
        copies: the face plus ``copies - 1`` augmented copies (1: no augmentation).
        epochs: training passes over the (augmented) faces.
        init: the linkage student's start, ``"recognizer"`` or ``"scratch"``.
    """

    faces: int | None = None
    copies: int = 1
    epochs: int = 6
    init: str = "recognizer"

    def __post_init__(self) -> None:
        if self.faces is not None and int(self.faces) < 2:
            raise InputError(f"an attacker budget needs at least 2 faces, got {self.faces}")
        if int(self.copies) < 1 or int(self.epochs) < 1:
            raise InputError(
                f"copies and epochs must be at least 1, got {self.copies} and {self.epochs}"
            )
        if self.init not in ("recognizer", "scratch"):
            raise InputError(f"init must be 'recognizer' or 'scratch', got {self.init!r}")

    @property
    def key(self) -> str:
        """The cell's name in the JSON file, e.g. ``faces=300/copies=4/epochs=24/init=scratch``."""
        faces = "all" if self.faces is None else str(int(self.faces))
        return f"faces={faces}/copies={self.copies}/epochs={self.epochs}/init={self.init}"

    @classmethod
    def from_key(cls, key: str) -> Budget:
        """The budget :attr:`key` names."""
        try:
            parts = dict(p.split("=", 1) for p in key.split("/"))
            faces = None if parts["faces"] == "all" else int(parts["faces"])
            return cls(faces, int(parts["copies"]), int(parts["epochs"]), parts["init"])
        except (KeyError, ValueError) as exc:
            raise InputError(f"not a budget key: {key!r}") from exc

    def attacks(self) -> tuple[str, ...]:
        """The attacks this cell runs (a scratch start concerns the linkage student only)."""
        return ATTACKS if self.init == "recognizer" else ("linkage",)

    def seen(self, available: int) -> int:
        """Face presentations over the whole training: faces x copies x epochs."""
        n = available if self.faces is None else min(int(self.faces), available)
        return n * self.copies * self.epochs


def default_grid(
    available: int,
    epochs: Sequence[int],
    faces: Sequence[int] = (30, 100),
    copies: int = 2,
) -> list[Budget]:
    """One axis at a time around the demo's budget, then the largest, cheapest first.

    The demo's cell is every face, no augmentation, ``epochs[0]`` epochs, the student
    started from the recognizer. Around it: fewer ``faces`` (each below ``available``),
    every face with ``copies`` copies, each of ``epochs``, and the student from scratch;
    then the largest budget (:func:`largest_budget`) from the recognizer and from scratch.
    """
    if not epochs:
        raise InputError("the budget grid needs at least one epoch count")
    e0, emax = int(epochs[0]), max(int(e) for e in epochs)
    cells = [Budget(int(n), 1, e0) for n in faces if int(n) < available]
    cells.append(Budget(None, 1, e0))
    cells += [Budget(None, 1, int(e)) for e in epochs[1:]]
    if copies > 1:
        cells.append(Budget(None, int(copies), e0))
    cells.append(Budget(None, 1, e0, "scratch"))
    top = largest_budget(emax, copies)
    cells += [top, Budget(top.faces, top.copies, top.epochs, "scratch")]
    unique = list(dict.fromkeys(cells))
    return sorted(unique, key=lambda b: (b.seen(available), b.init != "recognizer"))


def largest_budget(epochs: int, copies: int = 2) -> Budget:
    """Every face, ``copies`` copies of each, ``epochs`` epochs, the student from the
    recognizer."""
    return Budget(None, int(copies), int(epochs), "recognizer")


def attacker_subset(labels: Any, n: int | None, seed: int) -> np.ndarray:
    """Indices of ``n`` faces spread evenly over the identities in ``labels`` (all: None).

    Identities take turns (in an order drawn with ``seed``), each giving its next face (in
    an order drawn with ``seed``) until ``n`` are taken, so no identity has more than one
    face above another. Returned sorted.
    """
    labels = np.asarray(labels).ravel()
    if n is None or int(n) >= len(labels):
        return np.arange(len(labels))
    if int(n) < 1:
        raise InputError(f"attacker_subset: n must be at least 1, got {n}")
    rng = np.random.default_rng(int(seed))
    people = rng.permutation(np.unique(labels))
    queues = [list(rng.permutation(np.flatnonzero(labels == p))) for p in people]
    picked: list[int] = []
    while len(picked) < int(n):
        for q in queues:
            if q and len(picked) < int(n):
                picked.append(int(q.pop(0)))
    return np.sort(np.asarray(picked))


def augment_faces(
    faces: Tensor,
    copies: int,
    seed: int,
    *,
    shift: float = 0.06,
    scale: float = 0.08,
    degrees: float = 8.0,
    brightness: float = 0.15,
) -> Tensor:
    """``faces`` ((N, 3, H, W) in [-1, 1]) followed by ``copies - 1`` augmented copies.

    Each copy of each face gets its own random affine warp (a shift of up to ``shift`` of the
    image, a zoom within ``1 ± scale``, a rotation within ``± degrees``; borders repeat the
    edge pixels) and contrast and brightness changes within ``± brightness``, drawn with
    ``seed``; the result is clamped to [-1, 1]. Copy ``k`` of face ``i`` is row ``k * N + i``.
    """
    copies = int(copies)
    if copies < 1:
        raise InputError(f"copies must be at least 1, got {copies}")
    faces = faces.float()
    if copies == 1:
        return faces
    g = torch.Generator().manual_seed(int(seed))
    n = len(faces)
    m = n * (copies - 1)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(m, generator=g)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(1 - scale, 1 + scale)
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # grid units: 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # (m, 2, 3)
    src = faces.repeat(copies - 1, 1, 1, 1)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    warped = F.grid_sample(src, grid, padding_mode="border", align_corners=False)
    gain = uniform(1 - brightness, 1 + brightness).view(-1, 1, 1, 1)
    offset = uniform(-brightness, brightness).view(-1, 1, 1, 1)
    return torch.cat([faces, (warped * gain + offset).clamp(-1, 1)])


def budget_faces(
    aux: Tensor, aux_labels: Any, budget: Budget, seed: int
) -> tuple[Tensor, np.ndarray]:
    """The attacker's training faces and their identities under ``budget``: the subset
    (:func:`attacker_subset`), then its augmented copies (:func:`augment_faces`)."""
    labels = np.asarray(aux_labels).ravel()
    pick = attacker_subset(labels, budget.faces, seed)
    faces = augment_faces(aux[torch.as_tensor(pick)], budget.copies, seed + 1)
    return faces, np.tile(labels[pick], budget.copies)


def run_budget_cell(
    model: Any,
    recognizer: Any,
    aux: Tensor,
    aux_labels: Any,
    victims: Tensor,
    labels: Any,
    budget: Budget,
    *,
    seed: int = 0,
    identity_width: int = 8,
    identity_weight: float = 0.5,
    progress: bool = False,
    attacks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Both identity attacks on ``model`` with the attacker's ``budget``.

    ``model`` is read as the attacker reads it (a tile solver or a key recovery first where
    positions are hidden, :func:`ppfr.experiments.demo.attacker_view`, trained on all of
    ``aux``). The linkage student and the identity-guided inverter (width
    ``identity_width``) train on :func:`budget_faces`. Returns ``{"budget", "faces",
    "<attack>": {figures}}``.
    """
    faces, _ = budget_faces(aux, aux_labels, budget, seed)
    target, first = attacker_view(model, aux, victims, seed=seed, progress=progress)
    out: dict[str, Any] = {"budget": asdict(budget), "faces": int(len(faces)), **first}
    for name in attacks or budget.attacks():
        if name == "linkage":
            attack = create_attack(
                "linkage", recognizer=recognizer, epochs=budget.epochs, init=budget.init,
                progress=progress,
            )  # fmt: skip
        elif name == "identity-recovery":
            attack = create_attack(
                "identity-recovery", recognizer=recognizer, width=identity_width,
                epochs=budget.epochs, identity_weight=identity_weight, progress=progress,
            )  # fmt: skip
        else:
            raise InputError(f"unknown budget attack {name!r}; known: {', '.join(ATTACKS)}")
        report = attack.run(target, victims, labels, aux=faces, seed=seed).to_dict()
        out[name] = {k: report[k] for k in _KEEP[name] if k in report}
        if name == "linkage":
            out[name]["init"] = report.get("init", budget.init)
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    """The sweep's JSON file, or an empty record when there is none yet."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    return {"sweep": "attacker-budget", "methods": {}}


def _write(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def _merge(path: Path, updates: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Add ``updates`` (``method -> split -> {"bound", "cells"}``) to the file at ``path``
    under an exclusive lock, so that sweeps writing to one file side by side keep each
    other's cells; returns the file's new content."""
    import fcntl

    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        results.setdefault("settings", {}).update(settings)
        for method, splits in updates.items():
            for name, split in splits.items():
                mine = results["methods"].setdefault(method, {}).setdefault(name, {})
                if "bound" in split:
                    mine["bound"] = split["bound"]
                cells = mine.setdefault("cells", {})
                for key, cell in split.get("cells", {}).items():
                    before = cells.get(key, {})
                    seconds = before.get("seconds", 0.0) + cell.get("seconds", 0.0)
                    cells[key] = {**before, **cell, "seconds": seconds}
        _write(results, path)
    return results


def run_budget_sweep(
    cells: Iterable[tuple[str, int, Budget]],
    load: Callable[[str, int], dict[str, Any]],
    out: str | Path,
    *,
    identity_width: int = 8,
    progress: bool = False,
    log: Callable[[str], Any] = print,
    settings: dict[str, Any] | None = None,
    attacks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run each ``(method, split seed, budget)`` cell not yet in ``out``; write after each.

    ``load(method, seed)`` gives what a cell needs: ``{"model", "recognizer", "aux",
    "aux_labels", "victims", "labels", "bound": {"accuracy", "auc"}}``, or None where the
    method's model is not there (the cell is skipped and reported). The file holds
    ``methods -> method -> "split-<seed>" -> {"bound", "cells": {budget key: cell}}`` and
    ``settings``; a cell that fails is logged with its error and left out. ``attacks``
    limits every cell to those of :data:`ATTACKS` (default: :meth:`Budget.attacks`); a cell
    is run again only for the attacks it lacks (a linkage-only cell gains its
    identity-guided recovery in a later sweep). Each cell is
    added to the file as it finishes, under a lock: several sweeps (other methods, other
    splits) can write to one file at once.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = _merge(out, {}, settings or {})
    cache: dict[tuple[str, int], dict[str, Any] | None] = {}
    for method, seed, budget in cells:
        split = results["methods"].setdefault(method, {}).setdefault(f"split-{seed}", {})
        done = split.setdefault("cells", {})
        wanted = [a for a in budget.attacks() if attacks is None or a in attacks]
        missing = [a for a in wanted if a not in done.get(budget.key, {})]
        if not missing:
            continue
        if (method, seed) not in cache:
            cache.clear()  # one model in memory at a time
            cache[(method, seed)] = load(method, seed)
        ctx = cache[(method, seed)]
        if ctx is None:
            log(f"{method} split {seed} {budget.key}: no trained model, skipped")
            continue
        split["bound"] = ctx["bound"]
        for name in missing:  # one attack at a time: each is kept as soon as it finishes
            t0 = time.perf_counter()
            try:
                cell = run_budget_cell(
                    ctx["model"], ctx["recognizer"], ctx["aux"], ctx["aux_labels"],
                    ctx["victims"], ctx["labels"], budget, seed=seed,
                    identity_width=identity_width, progress=progress, attacks=[name],
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others
                log(f"{method} split {seed} {budget.key} {name}: failed: "
                    f"{type(exc).__name__}: {exc}")  # fmt: skip
                continue
            cell["seconds"] = time.perf_counter() - t0
            done[budget.key] = {**done.get(budget.key, {}), **cell}
            update = {
                method: {f"split-{seed}": {"bound": ctx["bound"], "cells": {budget.key: cell}}}
            }
            results = _merge(out, update, settings or {})
            log(f"{method} split {seed} {budget.key}: {_cell_line(cell, ctx['bound'])}")
    return _merge(out, {}, settings or {})


def _cell_line(cell: dict[str, Any], bound: dict[str, Any]) -> str:
    parts = []
    if "linkage" in cell:
        lk = cell["linkage"]
        parts.append(f"linkage AUC {lk['auc']:.3f} (server {bound['auc']:.3f}), "
                     f"rank-1 {100 * lk['rank1']:.1f} %")  # fmt: skip
    if "identity-recovery" in cell:
        ig = cell["identity-recovery"]
        parts.append(f"identity-guided leakage {100 * ig['leakage']:.1f} %, "
                     f"rank-1 {100 * ig['rank1']:.1f} %")  # fmt: skip
    return "; ".join(parts) + f" ({cell['seconds']:.0f} s)"


def summarise(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and budget key: mean, std (population) and values over the splits that
    finished the cell, for the linkage AUC, accuracy and rank-1, the attacker's recognizer's
    photo-to-photo AUC (the other ceiling: the student imitates it), the identity-guided
    leakage and rank-1, and the server's AUC and accuracy on the same splits."""
    figures = {
        "linkage_auc": ("linkage", "auc"),
        "linkage_accuracy": ("linkage", "accuracy"),
        "linkage_rank1": ("linkage", "rank1"),
        "recognizer_auc": ("linkage", "recognizer_auc"),
        "identity_leakage": ("identity-recovery", "leakage"),
        "identity_rank1": ("identity-recovery", "rank1"),
    }
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, splits in results.get("methods", {}).items():
        keys = sorted({k for sp in splits.values() for k in sp.get("cells", {})})
        for key in keys:
            done = {s: sp for s, sp in splits.items() if key in sp.get("cells", {})}
            row: dict[str, Any] = {"splits": sorted(done)}
            for fig, (attack, score) in figures.items():
                vals = [sp["cells"][key][attack].get(score) for sp in done.values()
                        if attack in sp["cells"][key]]  # fmt: skip
                row[fig] = _stats(vals)
            for fig in ("auc", "accuracy"):
                row[f"server_{fig}"] = _stats([sp["bound"][fig] for sp in done.values()])
            out.setdefault(method, {})[key] = row
    return out


def _stats(values: list[float]) -> dict[str, Any] | None:
    vals = [float(v) for v in values if v is not None and v == v]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}


def budget_table(results: dict[str, Any]) -> str:
    """Markdown: one row per method and budget (mean ± std over the splits that finished)."""

    def cell(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
        if stat is None:
            return ""
        text = f"{scale * stat['mean']:.{digits}f}"
        if len(stat["values"]) > 1:
            text += f" ± {scale * stat['std']:.{digits}f}"
        return text

    lines = [
        "| method | attacker faces | copies | epochs | student start | splits | linkage AUC "
        "| server's AUC (bound) | recognizer's photo AUC | linkage accuracy (%) "
        "| server's accuracy (%) "
        "| linkage rank-1 (%) | identity-guided rank-1 (%) | identity-guided leakage (%) |",
        "|---" * 14 + "|",
    ]
    for method, rows in summarise(results).items():
        order = sorted(rows, key=lambda k: (Budget.from_key(k).seen(10**6),
                                            Budget.from_key(k).init != "recognizer"))  # fmt: skip
        for key in order:
            r, b = rows[key], Budget.from_key(key)
            lines.append(
                f"| {method} | {'all' if b.faces is None else b.faces} | {b.copies} | "
                f"{b.epochs} | {b.init} | {len(r['splits'])} | {cell(r['linkage_auc'])} | "
                f"{cell(r['server_auc'])} | {cell(r['recognizer_auc'])} | "
                f"{cell(r['linkage_accuracy'], 100, 1)} | "
                f"{cell(r['server_accuracy'], 100, 1)} | {cell(r['linkage_rank1'], 100, 1)} | "
                f"{cell(r['identity_rank1'], 100, 1)} | {cell(r['identity_leakage'], 100, 1)} |"
            )
    return "\n".join(lines) + "\n"


def budget_figure(results: dict[str, Any], path: str | Path) -> Path | None:
    """Linkage AUC, linkage accuracy and identity-guided rank-1 against the face
    presentations of the attacker's training (faces x copies x epochs, log scale), mean ±
    std over the splits that finished each cell; one colour per method, a filled marker for
    a student started from the recognizer and an open one from scratch; each method's
    server AUC and accuracy (mean over its splits) dashed in its colour (the bound), chance
    in grey. None when no cell finished."""
    summary = summarise(results)
    if not summary:
        return None
    available = int(results.get("settings", {}).get("attacker_faces", 300))
    plt = matplotlib()
    panels = (
        ("linkage_auc", "server_auc", 1.0, "linkage AUC", 0.5),
        ("linkage_accuracy", "server_accuracy", 100.0, "linkage verification accuracy (%)", 50),
        ("identity_rank1", None, 100.0, "identity-guided rank-1 (%)", 10),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (fig_key, bound_key, scale, label, chance) in zip(axes[0], panels, strict=True):
        for i, (method, rows) in enumerate(summary.items()):
            colour = colours[i % len(colours)]
            for init, marker_face in (("recognizer", colour), ("scratch", "none")):
                pts = sorted(
                    (
                        (Budget.from_key(k).seen(available), r[fig_key])
                        for k, r in rows.items()
                        if Budget.from_key(k).init == init and r[fig_key] is not None
                    ),
                    key=lambda point: point[0],
                )
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                ys = [scale * s["mean"] for _, s in pts]
                es = [scale * s["std"] for _, s in pts]
                start = "from recognizer" if init == "recognizer" else "from scratch"
                ax.errorbar(
                    xs, ys, yerr=es, fmt="o", color=colour, mfc=marker_face, capsize=3,
                    ls="-" if init == "recognizer" else ":", label=f"{method} ({start})",
                )  # fmt: skip
            if bound_key is not None:  # the server's figure, each split once
                field = bound_key.removeprefix("server_")
                splits = results["methods"][method].values()
                bounds = [sp["bound"][field] for sp in splits if "bound" in sp]
                if bounds:
                    ax.axhline(scale * float(np.mean(bounds)), color=colour, ls="--", lw=1)
        ax.axhline(chance, color="grey", lw=0.8, ls="-.")
        ax.set_xscale("log")
        ticks = sorted({Budget.from_key(k).seen(available) for rows in summary.values()
                        for k in rows})  # fmt: skip
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks], rotation=45, fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("training presentations (faces x copies x epochs)")
        ax.set_ylabel(label + (", server dashed" if bound_key else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
