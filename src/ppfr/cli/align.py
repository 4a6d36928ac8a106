"""``ppfr align SRC DST [--overwrite]``: align a folder tree of face photos to the 112x112
template (:func:`ppfr.align.align_tree`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppfr.cli._common import console, friendly

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
    # deferred: the YuNet detector (OpenCV) is not loaded for `ppfr --help`
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


def register(app: typer.Typer) -> None:
    """Add ``align`` to the ``ppfr`` app."""
    app.command("align")(align_cmd)
