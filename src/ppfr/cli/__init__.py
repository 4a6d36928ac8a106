"""The ``ppfr`` command line.

ppfr demo                              # train + evaluate on bundled ORL faces
ppfr train CONFIG.toml [--resume]      # train any method (torchrun for DDP)
ppfr protect --model DIR IMG... --out DIR
ppfr embed   --model DIR IMG... --out FILE.npy
ppfr methods                           # registered methods and backbones
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.table import Table

import ppfr
from ppfr._cli import console, friendly, print_table
from ppfr.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ppfr: privacy-preserving face recognition (MinusFace and peers).",
)


@app.callback()
def _startup() -> None:
    """ppfr: privacy-preserving face recognition (MinusFace and peers)."""
    ppfr.tune_allocator()  # every command: large tensors stop costing page faults


def _mount() -> None:
    from ppfr.cli_attack import attack_cmd
    from ppfr.cli_data import app as data_app
    from ppfr.cli_eval import bench_app, eval_cmd
    from ppfr.cli_tools import align_cmd, judge_app

    app.add_typer(data_app, name="data")
    app.command("eval")(eval_cmd)
    app.add_typer(bench_app, name="bench")
    app.command("align")(align_cmd)
    app.add_typer(judge_app, name="judge")
    app.command("attack")(attack_cmd)
    from ppfr.cli_serve import mount as mount_serve  # serve, keys, client, calibrate, export

    mount_serve(app)


@app.command()
@friendly
def methods() -> None:
    """List registered methods, backbones and heads."""
    from ppfr import nets

    console.print("methods:   " + ", ".join(ppfr.list_methods()))
    console.print("backbones: " + ", ".join(nets.list_backbones()))
    console.print("heads:     " + ", ".join(nets.list_heads()))


@app.command()
@friendly
def train(
    config: Annotated[Path, typer.Argument(help="TOML training config (see configs/).")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    out: Annotated[str | None, typer.Option(help="Override the config's output folder.")] = None,
) -> None:
    """Train a method. Under `torchrun --nproc_per_node N` it runs distributed."""
    from ppfr.train import TrainConfig, Trainer, shutdown_distributed

    cfg = TrainConfig.from_toml(config)
    if out:
        cfg.out = out
    trainer = Trainer(cfg)
    model = trainer.fit(resume=resume)
    shutdown_distributed()
    if trainer.dist.main:
        console.print(
            f"[green]done[/green]: model bundle in {Path(cfg.out) / 'model'} "
            f"({model.name}, client fingerprint {model.fingerprint()[:12]})"
        )


def _read_faces(images: list[Path]) -> torch.Tensor:
    from ppfr.data.images import load_face

    if not images:
        raise InputError("no images given")
    return torch.stack([load_face(p) for p in images])


def _generator(seed: int | None) -> torch.Generator | None:
    """A seeded generator for reproducible protection, or None for fresh randomness."""
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _batches(x: torch.Tensor, size: int = 32):
    for i in range(0, len(x), size):
        yield x[i : i + size]


@app.command()
@friendly
def protect(
    images: Annotated[list[Path], typer.Argument(help="Aligned 112x112 face images.")],
    model: Annotated[Path, typer.Option("--model", help="Model bundle (client part used).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the outputs.")],
    seed: Annotated[int | None, typer.Option(help="Fix the per-image randomness.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Protect faces on the client: writes NAME.npy (the representation) and NAME.png (a view).

    The PNG shows the method's ``view`` of the representation where it defines one
    (PartialFace, DCTDP), else its first three channels as an RGB image.
    """
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


@app.command()
@friendly
def embed(
    images: Annotated[list[Path], typer.Argument(help="Aligned 112x112 face images.")],
    model: Annotated[Path, typer.Option("--model", help="Model bundle with client and server.")],
    out: Annotated[Path, typer.Option("--out", help="Output .npy, one row per image.")],
    seed: Annotated[int | None, typer.Option(help="Fix the per-image randomness.")] = None,
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


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for runs and results.")] = Path("demo-out"),
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "arcface,minusface",
    epochs: Annotated[float, typer.Option(help="Scale the training budget.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Identity split and training seed.")] = 0,
    attacks: Annotated[
        bool, typer.Option(help="Run the viewing and recovery attacks for the report.")
    ] = True,
    attack_width: Annotated[
        int | None,
        typer.Option(help="Recovery inverter width (default 8; 64 is the published size).", min=1),
    ] = None,
    attack_epochs: Annotated[
        int | None,
        typer.Option(help="Recovery inverter epochs (default 10 x --epochs).", min=1),
    ] = None,
) -> None:
    """Train on ORL's training identities, verify and attack held-out ones, write the report."""
    from ppfr.demo import run_demo

    results = run_demo(
        out,
        tuple(m.strip() for m in methods.split(",") if m.strip()),
        epoch_scale=epochs,
        seed=seed,
        attacks=attacks,
        attack_width=attack_width,
        attack_epochs=attack_epochs,
        log=console.print,
    )
    table = Table(title="ORL, held-out identities (open-set verification, 10 folds)")
    for col in (
        "method",
        "accuracy %",
        "AUC",
        "train s",
        "protect ms/img",
        "embed ms/img",
        "bytes/face",
    ):
        table.add_column(col, justify="right")
    for name, r in results["methods"].items():
        table.add_row(
            name,
            f"{100 * r['accuracy']:.2f} ± {100 * r['std']:.2f}",
            f"{r['auc']:.4f}",
            f"{r['train_seconds']:.0f}",
            f"{r['protect_ms']:.2f}",
            f"{r['embed_ms']:.2f}",
            f"{r['bytes_sent']:,}",
        )
    print_table(table)
    if attacks:
        from ppfr.report import summary_rows

        header, rows = summary_rows(results)
        privacy = Table(title="Privacy of the held-out people (lower is more private)")
        keep = [0] + [i for i, h in enumerate(header) if "SSIM" in h or "leakage" in h]
        for i in keep:
            privacy.add_column(header[i], justify="right")
        for row in rows:
            privacy.add_row(*(row[i] for i in keep))
        print_table(privacy)
    console.print(
        f"report: {out / 'report.html'}, {out / 'report.json'}, {out / 'results.md'} "
        f"({results['seconds'] / 60:.1f} min)"
    )


@app.command(name="version")
def version() -> None:
    """Print the ppfr version."""
    console.print(json.dumps({"ppfr": ppfr.__version__, "torch": torch.__version__}))


_mount()

if __name__ == "__main__":
    app()
