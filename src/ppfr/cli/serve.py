"""``ppfr serve`` and ``ppfr calibrate``: the recognition service and its threshold.

ppfr serve --model DIR [--db URL] [--host H --port P] [--threshold T]
ppfr serve --model DIR --cluster ADDRESS|local --shards K --replicas R  (ppfr[cluster])
ppfr calibrate --model DIR [--far 1e-3]

The database URL defaults to ``$PPFR_DB`` or ``sqlite:///ppfr-gallery.db``
(docs/deployment.md).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Annotated

import torch
import typer

from ppfr.cli._common import DEFAULT_DB, DbOpt, console, friendly
from ppfr.errors import InputError

#: the service's admission default (ppfr.serve.app.DEFAULT_MAX_CONCURRENT), without
#: importing FastAPI for ``ppfr --help``
DEFAULT_MAX_CONCURRENT = max(1, len(os.sched_getaffinity(0)))


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
    max_concurrent: Annotated[
        int,
        typer.Option(
            help="Gallery requests at work at once (default: the CPUs, per replica with --cluster)."
        ),
    ] = 0,
    index_dtype: Annotated[
        str,
        typer.Option(
            help="Storage of the in-memory SlerpFace index: float32, or float16 (half the "
            "memory; docs/templates.md gives the accuracy cost)."
        ),
    ] = "float32",
    max_queue: Annotated[
        int, typer.Option(help="Gallery requests waiting; past it: 503 with Retry-After.")
    ] = 32,
    queue_timeout: Annotated[
        float, typer.Option(help="Seconds a request may wait for a slot before a 503.")
    ] = 0.5,
    workers_threads: Annotated[int, typer.Option(help="Torch threads for embedding.")] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    cluster: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (HEAD_IP:6379) or 'local': serve on Ray Serve."),
    ] = None,
    shards: Annotated[int, typer.Option(help="With --cluster: gallery shards.")] = 1,
    replicas: Annotated[int, typer.Option(help="With --cluster: service replicas.")] = 1,
    shard_cpus: Annotated[float, typer.Option(help="With --cluster: CPUs per shard.")] = 1.0,
    replica_cpus: Annotated[float, typer.Option(help="With --cluster: CPUs per replica.")] = 1.0,
    replica_resource: Annotated[
        str | None,
        typer.Option(
            help="With --cluster: place replicas only on nodes that declare this Ray resource "
            "(ray start --resources '{\"NAME\": R}'), one unit per replica."
        ),
    ] = None,
    shard_timeout: Annotated[
        float, typer.Option(help="With --cluster: seconds to wait for shards before a 503.")
    ] = 30.0,
    # --- encrypted gallery (ppfr.serve.encrypted_matcher, docs/templates.md)
    encrypted_dir: Annotated[
        Path | None,
        typer.Option(help="Keep encrypted galleries here (needs --keyholder-url)."),
    ] = None,
    keyholder_url: Annotated[
        str | None, typer.Option(help="The key holder (ppfr keyholder serve) base URL.")
    ] = None,
    keyholder_token: Annotated[
        str | None,
        typer.Option(envvar="PPFR_KEYHOLDER_TOKEN", help="Bearer token for the key holder."),
    ] = None,
) -> None:
    """Run the recognition service (FastAPI on uvicorn). Loads only the server bundle."""
    if cluster is not None:  # the same app on a Ray cluster (ppfr.serve.cluster; ppfr[cluster])
        if encrypted_dir is not None or keyholder_url is not None:
            raise InputError("--cluster serves SlerpFace galleries; --encrypted-dir does not apply")
        # deferred: Ray (the cluster extra) loads only for --cluster
        from ppfr.serve.cluster.service import serve_cluster

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
        serve_cluster(
            model,
            db,
            matcher_options={"index_dtype": _index_dtype(index_dtype)},
            address=cluster,
            shards=shards,
            replicas=replicas,
            host=host,
            port=port,
            shard_cpus=shard_cpus,
            replica_cpus=replica_cpus,
            replica_resource=replica_resource,
            shard_timeout=shard_timeout,
            app_options={
                "max_body_bytes": max_body_bytes,
                "max_batch": max_batch,
                "threshold": threshold,
                "allow_unprotected": allow_unprotected,
                # a replica's share of the cores, not the machine's: more would time-slice
                "max_concurrent": max_concurrent or max(1, math.ceil(replica_cpus)),
                "max_queue": max_queue,
                "queue_timeout": queue_timeout,
            },
            announce=lambda line: console.print(line, highlight=False),
        )
        return
    if shards != 1 or replicas != 1:
        raise InputError("--shards and --replicas need --cluster (ADDRESS or local)")
    # deferred: FastAPI and uvicorn take longer to import than the rest of the CLI
    import uvicorn

    from ppfr.serve.app import create_app

    if workers_threads > 0:
        torch.set_num_threads(workers_threads)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    # --- encrypted gallery: its matcher, and the key holder's threshold as the service's
    matcher = None
    if (encrypted_dir is None) != (keyholder_url is None):
        raise InputError("--encrypted-dir and --keyholder-url go together")
    if encrypted_dir is not None:
        # deferred: TenSEAL (the encrypted extra) loads only for --encrypted-dir
        from ppfr.serve.encrypted_matcher import EncryptedMatcher
        from ppfr.serve.keyholder import KeyHolderClient

        enc = EncryptedMatcher(encrypted_dir, KeyHolderClient(keyholder_url, keyholder_token or ""))
        matcher, threshold = (lambda store, protection: enc), enc.threshold
    app = create_app(
        model,
        db,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        threshold=threshold,
        allow_unprotected=allow_unprotected,
        max_concurrent=max_concurrent or DEFAULT_MAX_CONCURRENT,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        matcher=matcher,
        index_dtype=_index_dtype(index_dtype),
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


def _index_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float16"):
        raise InputError(f"--index-dtype must be float32 or float16, got {name!r}")
    return getattr(torch, name)


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
