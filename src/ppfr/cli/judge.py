"""``ppfr judge verify A B``: compare two face images with the independent judge (SFace,
:mod:`ppfr.judge`), the recognizer that scores identity leakage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ppfr.cli._common import console, friendly
from ppfr.errors import DataError

judge_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The independent judge (SFace) used to measure identity leakage.",
)


def _load_face(path: Path, label: str) -> np.ndarray:
    """Read an aligned face; align photos that are not 112x112 first (and say so)."""
    # deferred: image decoding (PIL) and the YuNet detector (OpenCV) are not loaded for
    # `ppfr --help`
    from ppfr.align import align_image
    from ppfr.data.images import FACE_SIZE, read_image

    img = read_image(path)
    if img.shape[:2] == (FACE_SIZE, FACE_SIZE):
        return img
    res = align_image(img)
    if res.face is None:
        raise DataError(f"{path}: not a {FACE_SIZE}x{FACE_SIZE} aligned face and no face found")
    many = f", {res.num_faces} faces found, the largest used" if res.num_faces > 1 else ""
    console.print(
        f"{label} ({path}) is {img.shape[1]}x{img.shape[0]}: aligned it automatically{many}",
        highlight=False,
    )
    return res.face


@judge_app.command("verify")
@friendly
def verify_cmd(
    a: Annotated[Path, typer.Argument(help="First face image.")],
    b: Annotated[Path, typer.Argument(help="Second face image.")],
    threshold: Annotated[
        float | None, typer.Option(help="Cosine threshold (default: SFace's 0.363).")
    ] = None,
) -> None:
    """Print SFace's cosine similarity of two faces and whether they are the same person."""
    # deferred: the judge's ONNX model and onnxruntime are not loaded for `ppfr --help`
    from ppfr.judge import get_judge

    face_a, face_b = _load_face(a, "A"), _load_face(b, "B")
    judge = get_judge()
    t = judge.threshold if threshold is None else threshold
    e = judge.embed(np.stack([face_a, face_b]))
    sim = float(e[0] @ e[1])
    verdict = "[green]same person[/green]" if sim >= t else "[red]different people[/red]"
    console.print(f"similarity {sim:.4f} (threshold {t:.3f}): {verdict}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``judge`` group to the ``ppfr`` app."""
    app.add_typer(judge_app, name="judge")
