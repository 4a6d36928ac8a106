"""The demo's report: accuracy against privacy per method, image grids and a plot.

:func:`write_report` turns the demo's results into ``report.json`` (every number) and a
self-contained ``report.html`` (images embedded, no external files): a table of
verification accuracy against the attacks' privacy scores, for a few held-out people the
original face, the protected representation as the viewing attack sees it, the recovery
attack's reconstruction and the identity-guided one, and a privacy-vs-accuracy plot
(matplotlib; with the linkage attack's AUC where it ran).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: the columns of the accuracy-vs-privacy table: (JSON path, header, format)
_ATTACK_COLUMNS = (
    ("viewing", "ssim", "viewing SSIM", "{:.3f}"),
    ("viewing", "leakage", "viewing leakage %", "pct"),
    ("recovery", "ssim", "recovery SSIM", "{:.3f}"),
    ("recovery", "floor_ssim", "average-face SSIM", "{:.3f}"),
    ("recovery", "psnr", "recovery PSNR dB", "{:.2f}"),
    ("recovery", "leakage", "recovery leakage %", "pct"),
    ("recovery", "rank1", "recovery rank-1 %", "pct"),
    ("linkage", "auc", "linkage AUC", "{:.3f}"),
    ("linkage", "accuracy", "linkage accuracy %", "pct"),
    ("linkage", "rank1", "linkage rank-1 %", "pct"),
    ("identity-recovery", "ssim", "identity-guided SSIM", "{:.3f}"),
    ("identity-recovery", "leakage", "identity-guided leakage %", "pct"),
    ("identity-recovery", "rank1", "identity-guided rank-1 %", "pct"),
)
#: the rows of a method's image grid, in the order attack_model returns them
GRID_LABELS = ("original", "protected (view)", "recovered", "identity-guided")


def attack_images(attack: Any, model: Any, faces: Tensor, *, seed: int = 0) -> Tensor:
    """What ``attack`` makes of ``faces``: the view, or the reconstruction; in [0, 1]."""
    if hasattr(attack, "reconstruct"):
        return attack.reconstruct(model, faces, seed=seed + 1)
    return attack.view(model, faces, torch.Generator().manual_seed(int(seed)))


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def grid_figure(rows: Sequence[Tensor], labels: Sequence[str], titles: Sequence[str] = ()):
    """A matplotlib figure: one row per image batch ((K, 3, H, W) in [0, 1]), labelled."""
    plt = _matplotlib()
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
    _matplotlib().close(fig)
    return path


def privacy_figure(results: dict[str, Any]):
    """Verification accuracy (x) against the attacks' scores (y): recovery leakage, recovery
    SSIM and, where the identity attacks ran, the linkage attack's AUC."""
    plt = _matplotlib()
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


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _matplotlib().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if fmt == "pct" else fmt.format(value)


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy-vs-privacy table."""
    header = ["method", "accuracy %", "AUC", *(c[2] for c in _ATTACK_COLUMNS), "bytes/face"]
    rows = []
    for name, r in results["methods"].items():
        attacks = r.get("attacks", {})
        rows.append(
            [
                name,
                f"{100 * r['accuracy']:.2f} ± {100 * r['std']:.2f}",
                f"{r['auc']:.4f}",
                *(_fmt(attacks.get(a, {}).get(k), f) for a, k, _, f in _ATTACK_COLUMNS),
                f"{r['bytes_sent']:,}",
            ]
        )
    return header, rows


def markdown_table(results: dict[str, Any]) -> str:
    header, rows = summary_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    out: str | Path, results: dict[str, Any], grids: dict[str, Sequence[Tensor]] | None = None
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out``.

    ``grids`` maps a method to its image rows (:data:`GRID_LABELS`: originals, views,
    reconstructions, identity-guided reconstructions), each (K, 3, 112, 112) in [0, 1],
    for the same K held-out people.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")

    header, rows = summary_rows(results)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    for row in rows:
        table += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    table += "</table>"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ppfr demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f4f4f4}img{max-width:100%}</style></head><body>",
        "<h1>ppfr demo: accuracy against privacy</h1>",
        f"<p>{html.escape(_describe(results))}</p>",
        table,
        "<p>Accuracy: open-set verification of held-out identities (10 folds). Viewing: the "
        "protected representation shown as an image. Recovery: a U-Net trained by an "
        "attacker who holds the client model, on faces of the training identities, "
        "inverting the held-out people's representations. Leakage: an independent face "
        "recognizer's verification accuracy on (attack image of A, original of B) pairs; "
        "50% is chance. Linkage: a student network, trained by the attacker on its own "
        "protected faces to give the embedding its own face recognizer (the run's "
        "unprotected ArcFace, never the judge) gives the face, links each held-out "
        "protected face to photos of the held-out people (AUC 0.5 and rank-1 one in ten "
        "are chance). Identity-guided: the recovery attack with an identity term under "
        "the attacker's recognizer in its loss, scored by the judge.</p>",
    ]
    if any(r.get("attacks", {}).get("recovery") for r in results["methods"].values()):
        parts.append("<h2>Privacy against accuracy</h2>")
        parts.append(
            f"<img alt='privacy vs accuracy' src='{_png_data_uri(privacy_figure(results))}'>"
        )
    for name, rows_ in (grids or {}).items():
        labels = list(GRID_LABELS[: len(rows_)])
        fig = grid_figure(rows_, labels)
        parts.append(f"<h2>{html.escape(name)}: held-out people</h2>")
        parts.append(f"<img alt='{html.escape(name)} images' src='{_png_data_uri(fig)}'>")
    parts.append("</body></html>")
    html_path.write_text("\n".join(parts))
    return json_path, html_path


def _describe(results: dict[str, Any]) -> str:
    data = results.get("data", {})
    n_train, n_test = len(data.get("train_identities", [])), len(data.get("test_identities", []))
    text = f"ORL faces: {n_train} training identities, {n_test} held-out identities."
    if "seconds" in results:
        text += f" Whole demo: {results['seconds'] / 60:.1f} min."
    return text


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
