"""Command-line tools around alignment and the judge (mounted by ``ppfr.cli``).

* ``ppfr align SRC DST [--overwrite]`` — :func:`align_cmd`: align a folder tree.
* ``ppfr judge verify A B`` — :data:`judge_app`: compare two face images with SFace.

Mount them in the main app with::

    app.command("align")(align_cmd)
    app.add_typer(judge_app, name="judge")

Every :class:`~ppfr.errors.PPFRError` ends the command with a red one-line message on
stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppfr._cli import console, friendly
from ppfr.errors import DataError

#: how many problem files to name on screen (all are in the JSON report)
SHOW = 10


@friendly
def align_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of face photos (identity sub-folders kept).")],
    dst: Annotated[Path, typer.Argument(help="Output folder (must not be inside SRC).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that already exist.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    refine: Annotated[
        int, typer.Option(min=0, help="Landmark refinement passes (0 is ~20x faster, less steady).")
    ] = 2,
) -> None:
    """Detect faces with YuNet and write 112x112 aligned PNGs, mirroring SRC's folders."""
    from ppfr.align import REPORT_NAME, align_tree

    report = align_tree(src, dst, overwrite=overwrite, progress=progress, refine=refine)
    console.print(f"{report.summary()} in {report.seconds:.1f} s", highlight=False)
    problems = [
        ("no face", report.no_face),
        ("several faces (largest aligned)", [f"{p} ({n})" for p, n in report.multiple_faces]),
        ("unreadable", [f"{p}: {why}" for p, why in report.unreadable]),
        ("name clash (output name taken)", report.name_clashes),
    ]
    for title, items in problems:
        if items:
            more = f" (+{len(items) - SHOW} more)" if len(items) > SHOW else ""
            console.print(f"[yellow]{title}:[/yellow] " + ", ".join(items[:SHOW]) + more)
    if report.skipped_existing and not overwrite:
        console.print(
            f"{len(report.skipped_existing)} outputs already existed and were kept "
            "(--overwrite replaces them)"
        )
    console.print(f"report: {Path(dst) / REPORT_NAME}", highlight=False)


align_app = typer.Typer(add_completion=False, help="Align face photos to the 112x112 template.")
align_app.command("align")(align_cmd)

judge_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The independent judge (SFace) used to measure identity leakage.",
)


def _load_face(path: Path, label: str):
    """Read an aligned face; align photos that are not 112x112 first (and say so)."""
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
    import numpy as np

    from ppfr.judge import get_judge

    face_a, face_b = _load_face(a, "A"), _load_face(b, "B")
    judge = get_judge()
    t = judge.threshold if threshold is None else threshold
    e = judge.embed(np.stack([face_a, face_b]))
    sim = float(e[0] @ e[1])
    verdict = "[green]same person[/green]" if sim >= t else "[red]different people[/red]"
    console.print(f"similarity {sim:.4f} (threshold {t:.3f}): {verdict}", highlight=False)
