"""The demo's report: accuracy against privacy per method, image grids and a plot.

:func:`write_report` turns the demo's results into ``report.json`` (every number) and a
self-contained ``report.html`` (images embedded, no external files): a table of
verification accuracy against the attacks' privacy scores, for a few held-out people the
original face, the protected representation as the viewing attack sees it, the recovery
attack's reconstruction and the identity-guided one, and a privacy-vs-accuracy plot
(matplotlib; with the linkage attack's AUC where it ran). The table's columns are declared in
:mod:`ppfr.experiments.tables`, the figures drawn by :mod:`ppfr.experiments.plots`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ppfr.experiments.plots import grid_figure, png_data_uri, privacy_figure
from ppfr.experiments.tables import summary_rows

#: the rows of a method's image grid, in the order attack_model returns them
GRID_LABELS = ("original", "protected (view)", "recovered", "identity-guided")


def attack_images(attack: Any, model: Any, faces: Tensor, *, seed: int = 0) -> Tensor:
    """What ``attack`` makes of ``faces``: the view, or the reconstruction; in [0, 1]."""
    if hasattr(attack, "reconstruct"):
        return attack.reconstruct(model, faces, seed=seed + 1)
    return attack.view(model, faces, torch.Generator().manual_seed(int(seed)))


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
            f"<img alt='privacy vs accuracy' src='{png_data_uri(privacy_figure(results))}'>"
        )
    for name, rows_ in (grids or {}).items():
        labels = list(GRID_LABELS[: len(rows_)])
        fig = grid_figure(rows_, labels)
        parts.append(f"<h2>{html.escape(name)}: held-out people</h2>")
        parts.append(f"<img alt='{html.escape(name)} images' src='{png_data_uri(fig)}'>")
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
