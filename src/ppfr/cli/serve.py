"""CLI for deployment: ``ppfr serve``, ``ppfr keys``, ``ppfr client``, ``ppfr calibrate``,
``ppfr export``.

ppfr serve --model DIR [--db URL] [--host H --port P] [--threshold T]
ppfr keys create --gallery G [--gallery G2] [--db URL]      # prints the key once
ppfr keys revoke KEY_ID [--db URL]
ppfr keys list [--db URL]
ppfr client enroll|identify|verify|delete|stats|info --url URL --key KEY --model DIR ...
ppfr calibrate --model DIR [--far 1e-3]
ppfr export --model DIR --part client --onnx OUT.onnx

The database URL defaults to ``$PPFR_DB`` or ``sqlite:///ppfr-gallery.db``; the client's key
may come from ``$PPFR_API_KEY`` (keeps it out of the process list and shell history).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ppfr._cli import console, friendly, print_table
from ppfr.errors import InputError

DEFAULT_DB = "sqlite:///ppfr-gallery.db"
DbOpt = Annotated[
    str,
    typer.Option("--db", envvar="PPFR_DB", help="Gallery store URL (sqlite:/// or postgresql://)."),
]

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
client_app = typer.Typer(no_args_is_help=True, help="Talk to a ppfr service (faces stay local).")


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
    import logging

    import torch
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


@keys_app.command("create")
@friendly
def keys_create(
    gallery: Annotated[list[str], typer.Option("--gallery", help="Gallery the key may use.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Create a key; the full key is printed once (only its hash is stored)."""
    from ppfr.serve.auth import create_key
    from ppfr.serve.store import open_store

    with open_store(db) as store:
        key_id, token = create_key(store, gallery)
    typer.echo(token)  # stdout: the key alone, for scripts
    typer.echo(f"# key id {key_id}, galleries: {', '.join(gallery)}; shown once", err=True)


@keys_app.command("revoke")
@friendly
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (ppfr_<key_id>_...).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from ppfr.serve.store import open_store

    with open_store(db) as store:
        if not store.revoke_api_key(key_id):
            raise InputError(f"no API key with id {key_id!r}")
    console.print(f"revoked {key_id}")


@keys_app.command("list")
@friendly
def keys_list(db: DbOpt = DEFAULT_DB) -> None:
    """List keys (ids, galleries, state); secrets are never stored."""
    import time

    from ppfr.serve.store import open_store

    with open_store(db) as store:
        records = store.list_api_keys()
    table = Table()
    for col in ("key id", "galleries", "state", "created (UTC)"):
        table.add_column(col)
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        table.add_row(
            r.key_id, ", ".join(r.galleries), "revoked" if r.revoked else "active", created
        )
    print_table(table)


@friendly
def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Full bundle (client + server).")],
    far: Annotated[float, typer.Option(help="Target false accept rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="ORL split and randomness seed.")] = 0,
) -> None:
    """Set the service's threshold at FAR on ORL training identities (calibration.toml)."""
    from ppfr.serve.calibrate import calibrate

    cal = calibrate(model, far=far, seed=seed)
    console.print(
        f"threshold {cal['threshold']:.4f} at FAR {far:g} ({cal['impostor_pairs']:,} impostor "
        f"pairs, TAR {100 * cal['tar']:.1f} %); held-out identities: FAR "
        f"{cal['heldout_far']:.4f}, TAR {100 * cal['heldout_tar']:.1f} % -> "
        f"{Path(model) / 'calibration.toml'}",
        highlight=False,
    )


@friendly
def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model bundle.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    part: Annotated[str, typer.Option(help="Which part to export (client).")] = "client",
) -> None:
    """Export the client's protect path to ONNX (the randomness is a graph input)."""
    from ppfr.export import export_client

    if part != "client":
        raise InputError(f"only --part client can be exported, got {part!r}")
    out = export_client(model, onnx)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)")


# ---- client
UrlOpt = Annotated[str, typer.Option("--url", envvar="PPFR_URL", help="Service base URL.")]
KeyOpt = Annotated[str, typer.Option("--key", envvar="PPFR_API_KEY", help="API key.")]
ModelOpt = Annotated[Path, typer.Option("--model", help="Client bundle.")]
GalleryOpt = Annotated[str, typer.Option("--gallery", help="Gallery name.")]
AlignOpt = Annotated[bool, typer.Option(help="Detect and align faces (YuNet).")]
Images = Annotated[list[Path], typer.Argument(help="Face images.")]


def _client(url: str, key: str, model: Path | None = None, align: bool = True):
    from ppfr.serve.client import Client

    return Client(url, key, model=model, align=align)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


@client_app.command("enroll")
@friendly
def client_enroll(
    images: Images,
    subject: Annotated[str, typer.Option("--subject", help="Subject id.")],
    url: UrlOpt,
    key: KeyOpt,
    model: ModelOpt,
    gallery: GalleryOpt,
    align: AlignOpt = True,
) -> None:
    """Enroll a subject from one or more images (one template per image)."""
    with _client(url, key, model, align) as c:
        _print_json(c.enroll(gallery, subject, images))


@client_app.command("identify")
@friendly
def client_identify(
    images: Images,
    url: UrlOpt,
    key: KeyOpt,
    model: ModelOpt,
    gallery: GalleryOpt,
    top_k: Annotated[int, typer.Option(help="Candidates per image.")] = 5,
    align: AlignOpt = True,
) -> None:
    """Identify each image against the gallery."""
    with _client(url, key, model, align) as c:
        results = c.identify(gallery, images, top_k=top_k)
    _print_json([{"image": str(p), **r} for p, r in zip(images, results, strict=True)])


@client_app.command("verify")
@friendly
def client_verify(
    image: Annotated[Path, typer.Argument(help="Face image.")],
    subject: Annotated[str, typer.Option("--subject", help="Claimed subject id.")],
    url: UrlOpt,
    key: KeyOpt,
    model: ModelOpt,
    gallery: GalleryOpt,
    align: AlignOpt = True,
) -> None:
    """Verify one image against a claimed subject (1:1)."""
    with _client(url, key, model, align) as c:
        _print_json(c.verify(gallery, subject, image))


@client_app.command("delete")
@friendly
def client_delete(
    subject: Annotated[str, typer.Option("--subject", help="Subject id.")],
    url: UrlOpt,
    key: KeyOpt,
    gallery: GalleryOpt,
) -> None:
    """Delete a subject and its templates."""
    with _client(url, key) as c:
        _print_json(c.delete(gallery, subject))


@client_app.command("stats")
@friendly
def client_stats(url: UrlOpt, key: KeyOpt, gallery: GalleryOpt) -> None:
    """Gallery statistics (subjects, templates, dimension, version)."""
    with _client(url, key) as c:
        _print_json(c.stats(gallery))


@client_app.command("info")
@friendly
def client_info(url: UrlOpt, key: KeyOpt) -> None:
    """What the server expects (method, representation shape, fingerprints, threshold)."""
    with _client(url, key) as c:
        _print_json(c.info())


def mount(app: typer.Typer) -> None:
    """Register the deployment commands on the main ``ppfr`` app."""
    app.command("serve")(serve_cmd)
    app.add_typer(keys_app, name="keys")
    app.add_typer(client_app, name="client")
    app.command("calibrate")(calibrate_cmd)
    app.command("export")(export_cmd)
