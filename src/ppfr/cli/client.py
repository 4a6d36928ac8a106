"""``ppfr client``: talk to a ppfr service; faces are protected here and never leave.

ppfr client enroll|identify|verify|delete|stats|info --url URL --key KEY --model DIR ...

The key may come from ``$PPFR_API_KEY`` (keeps it out of the process list and shell
history), the URL from ``$PPFR_URL``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ppfr.cli._common import friendly

client_app = typer.Typer(no_args_is_help=True, help="Talk to a ppfr service (faces stay local).")

UrlOpt = Annotated[str, typer.Option("--url", envvar="PPFR_URL", help="Service base URL.")]
KeyOpt = Annotated[str, typer.Option("--key", envvar="PPFR_API_KEY", help="API key.")]
ModelOpt = Annotated[Path, typer.Option("--model", help="Client bundle.")]
GalleryOpt = Annotated[str, typer.Option("--gallery", help="Gallery name.")]
SubjectOpt = Annotated[str, typer.Option("--subject", help="Subject id.")]
AlignOpt = Annotated[bool, typer.Option(help="Detect and align faces (YuNet).")]
Images = Annotated[list[Path], typer.Argument(help="Face images.")]


def _client(url: str, key: str, model: Path | None = None, align: bool = True):
    # deferred: the HTTP client (httpx) is not loaded for `ppfr --help`
    from ppfr.serve.client import Client

    return Client(url, key, model=model, align=align)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


@client_app.command("enroll")
@friendly
def client_enroll(
    images: Images,
    subject: SubjectOpt,
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
    subject: SubjectOpt,
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


def register(app: typer.Typer) -> None:
    """Add the ``client`` group to the ``ppfr`` app."""
    app.add_typer(client_app, name="client")
