"""The experiments' figures: image grids, privacy against accuracy, the benchmark's frontier.

:func:`matplotlib` is the one way in: it selects the file-only ``Agg`` backend (never a
window) and returns ``matplotlib.pyplot``. The demo's report (:mod:`ppfr.experiments.report`),
``ppfr attack`` and the benchmark (:mod:`ppfr.experiments.bench`) draw with the functions here.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = [
    "FRONTIER_PANELS",
    "grid_figure",
    "label_groups",
    "matplotlib",
    "png_data_uri",
    "privacy_figure",
    "save_grid",
    "write_frontier",
]


def matplotlib():
    """``matplotlib.pyplot`` on the ``Agg`` backend (files only, never a window).

    Imported on first use: matplotlib takes a while to import, and only plotting needs it.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def grid_figure(rows: Sequence[Tensor], labels: Sequence[str], titles: Sequence[str] = ()):
    """A matplotlib figure: one row per image batch ((K, 3, H, W) in [0, 1]), labelled."""
    plt = matplotlib()
    k = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.3 * k + 0.9, 1.4 * len(rows)), squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for j in range(k):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(row):
                img = row[j].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img)
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=7)
    fig.tight_layout()
    return fig


def save_grid(path: str | Path, rows: Sequence[Tensor], labels: Sequence[str]) -> Path:
    """Save :func:`grid_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = grid_figure(rows, labels)
    fig.savefig(path, dpi=110)
    matplotlib().close(fig)
    return path


def privacy_figure(results: dict[str, Any]):
    """Verification accuracy (x) against the attacks' scores (y): recovery leakage, recovery
    SSIM and, where the identity attacks ran, the linkage attack's AUC."""
    plt = matplotlib()
    linked = any(r.get("attacks", {}).get("linkage") for r in results["methods"].values())
    panels = [("recovery", "leakage", 100, "recovery leakage % (lower is more private)", 50)]
    panels.append(("recovery", "ssim", 1, "recovery SSIM (lower is more private)", None))
    if linked:
        panels.append(("linkage", "auc", 1, "linkage AUC (lower is more private)", 0.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (attack, key, scale, label, chance) in zip(axes[0], panels, strict=True):
        for name, r in results["methods"].items():
            sc = r.get("attacks", {}).get(attack)
            if not sc or sc.get(key) is None or sc[key] != sc[key]:
                continue
            acc, y = 100 * r["accuracy"], scale * sc[key]
            ax.scatter([acc], [y], s=60)
            ax.annotate(name, (acc, y), textcoords="offset points", xytext=(6, 4))
        if chance is not None:
            ax.axhline(chance, color="grey", lw=0.8, ls="--")
            where = ("axes fraction", "data")
            ax.annotate("chance", (0, chance), xycoords=where, color="grey", fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("verification accuracy % (held-out ORL)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def png_data_uri(fig) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    matplotlib().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
    methods = results["methods"]
    panels = [p for p in FRONTIER_PANELS if any(p[0] in r for r in methods.values())]
    if not panels:
        return None
    plt = matplotlib()
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
        for group in label_groups(points):
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


def label_groups(points: list[tuple[float, float]]) -> list[list[int]]:
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
