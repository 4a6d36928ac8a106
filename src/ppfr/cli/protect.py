"""``ppfr protect`` and ``ppfr embed``: run a model bundle on face images.

ppfr protect --model DIR IMG... --out DIR [--seed S] [--overwrite]
ppfr embed   --model DIR IMG... --out FILE.npy [--seed S]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

import ppfr
from ppfr.cli._common import ClientModelOpt, console, friendly
from ppfr.errors import InputError

Images = Annotated[list[Path], typer.Argument(help="Aligned 112x112 face images.")]
SeedOpt = Annotated[int | None, typer.Option(help="Fix the per-image randomness.")]


def _read_faces(images: list[Path]) -> torch.Tensor:
    # deferred: image decoding (PIL) is not loaded for `ppfr --help`
    from ppfr.data.images import load_face

    if not images:
        raise InputError("no images given")
    return torch.stack([load_face(p) for p in images])


def _generator(seed: int | None) -> torch.Generator | None:
    """A seeded generator for reproducible protection, or None for fresh randomness."""
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _batches(x: torch.Tensor, size: int = 32) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i : i + size]


@friendly
def protect_cmd(
    images: Images,
    model: ClientModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the outputs.")],
    seed: SeedOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Protect faces on the client: writes NAME.npy (the representation) and NAME.png (a view).

    The PNG shows the method's ``view`` of the representation where it defines one
    (PartialFace, DCTDP), else its first three channels as an RGB image.
    """
    # deferred: image encoding (PIL) is not loaded for `ppfr --help`
    from ppfr.data.images import save_image, to_uint8

    client = ppfr.load(model, part="client")
    faces = _read_faces(images)
    names = [p.stem for p in images]
    if len(set(names)) != len(names):
        raise InputError("two input images share a file name; outputs would collide")
    out.mkdir(parents=True, exist_ok=True)
    existing = [n for n in names if (out / f"{n}.npy").exists() or (out / f"{n}.png").exists()]
    if existing and not overwrite:
        raise InputError(f"{out}: outputs exist for {existing[:3]}... (use --overwrite)")
    gen = _generator(seed)
    reps = []
    with torch.inference_mode():
        for batch in _batches(faces):
            reps.append(client.protect(batch, generator=gen))
    reps = torch.cat(reps)
    view = getattr(client, "view", None)  # methods whose representation is no image
    for name, rep in zip(names, reps, strict=True):
        np.save(out / f"{name}.npy", rep.numpy())
        if callable(view):
            png = to_uint8(view(rep[None])[0], (0.0, 1.0))
        else:
            png = to_uint8(rep[:3], client.representation_range)
        save_image(png, out / f"{name}.png")
    console.print(
        f"protected {len(names)} face(s) with {client.name} -> {out} "
        f"(representation {tuple(reps.shape[1:])}, {reps[0].numel() * 4:,} bytes)"
    )


@friendly
def embed_cmd(
    images: Images,
    model: Annotated[Path, typer.Option("--model", help="Model bundle with client and server.")],
    out: Annotated[Path, typer.Option("--out", help="Output .npy, one row per image.")],
    seed: SeedOpt = None,
) -> None:
    """Protect then embed faces; writes an (N, D) float32 array in the order given."""
    m = ppfr.load(model)
    faces = _read_faces(images)
    gen = _generator(seed)
    with torch.inference_mode():
        emb = torch.cat([m.embed(m.protect(b, generator=gen)) for b in _batches(faces)])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.numpy().astype(np.float32))
    console.print(f"embedded {len(images)} face(s) -> {out} {tuple(emb.shape)}")


def register(app: typer.Typer) -> None:
    """Add ``protect`` and ``embed`` to the ``ppfr`` app."""
    app.command("protect")(protect_cmd)
    app.command("embed")(embed_cmd)
