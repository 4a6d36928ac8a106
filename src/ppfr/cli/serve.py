"""``ppfr serve`` and ``ppfr calibrate``: the recognition service and its threshold.

ppfr serve --model DIR [--db URL] [--host H --port P] [--threshold T]
ppfr calibrate --model DIR [--far 1e-3]

The database URL defaults to ``$PPFR_DB`` or ``sqlite:///ppfr-gallery.db``
(docs/deployment.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import torch
import typer

from ppfr.cli._common import DEFAULT_DB, DbOpt, console, friendly


@friendly
def serve_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model bundle (server part loaded).")],
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold (default: calibration.toml).")
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 16 * 2**20,
    max_batch: Annotated[int, typer.Option(help="Most representations per request.")] = 64,
    allow_unprotected: Annotated[
        bool, typer.Option(help="Serve arcface (faces sent in the clear): baselines only.")
    ] = False,
    workers_threads: Annotated[int, typer.Option(help="Torch threads for embedding.")] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the recognition service (FastAPI on uvicorn). Loads only the server bundle."""
    # deferred: FastAPI and uvicorn take longer to import than the rest of the CLI
    import uvicorn

    from ppfr.serve.app import create_app

    if workers_threads > 0:
        torch.set_num_threads(workers_threads)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = create_app(
        model,
        db,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        threshold=threshold,
        allow_unprotected=allow_unprotected,
    )
    svc = app.state.service
    console.print(
        f"serving {svc.model.name} (client {svc.client_fingerprint[:12]}) on "
        f"http://{host}:{port}, store {db}, threshold {svc.threshold.value} "
        f"({svc.threshold.source})",
        highlight=False,
    )
    # uvicorn's access log would print full paths (subject names): ours logs route templates
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level.lower())


@friendly
def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Full bundle (client + server).")],
    far: Annotated[float, typer.Option(help="Target false accept rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="ORL split and randomness seed.")] = 0,
) -> None:
    """Set the service's threshold at FAR on ORL training identities (calibration.toml)."""
    # deferred: calibration loads ORL and SlerpFace, not needed for `ppfr --help`
    from ppfr.serve.calibrate import calibrate

    cal = calibrate(model, far=far, seed=seed)
    console.print(
        f"threshold {cal['threshold']:.4f} at FAR {far:g} ({cal['impostor_pairs']:,} impostor "
        f"pairs, TAR {100 * cal['tar']:.1f} %); held-out identities: FAR "
        f"{cal['heldout_far']:.4f}, TAR {100 * cal['heldout_tar']:.1f} % -> "
        f"{Path(model) / 'calibration.toml'}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``calibrate`` to the ``ppfr`` app."""
    app.command("serve")(serve_cmd)
    app.command("calibrate")(calibrate_cmd)
