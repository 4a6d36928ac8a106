"""How far results move between PyTorch's CPU kernel sets (and thread counts).

Run:  python benchmarks/kernel_sets.py [--configs default,avx2] [--tasks freq,dctdp,train]

PyTorch compiles its CPU kernels several times (``default``: no vector extensions;
``avx2``; ``avx512`` where the CPU has it) and picks one per process at start-up; the
environment variable ``ATEN_CPU_CAPABILITY`` forces a lower one. The kernel sets vectorise
differently, so float reductions (sums, matrix products, convolutions, softmax) add in
different orders and round differently. So do different thread counts, which split
reductions differently.

For every configuration ``CAP`` or ``CAP@THREADS`` (threads default to 2, as in the tests)
this script runs a child process with ``ATEN_CPU_CAPABILITY=CAP`` and
``torch.set_num_threads(THREADS)``, which computes the tasks from fixed seeds and saves
their outputs; the first configuration also runs twice, which shows what is bit-identical
on one machine and kernel set. Then it compares every configuration with the first and
prints a markdown table: bit-identical or not, the largest absolute difference, and that
difference relative to the largest magnitude of the quantity.

Tasks:

- ``freq``: ``ppfr.freq.encode`` / ``decode`` of 8 random faces, float32 and float64;
  the float32 encoding's own error (against float64) is printed alongside for scale.
- ``dctdp``: the relative error of DCTDP's total privacy budget, as ppfr computes it
  (float64, renormalised) and as a float32 softmax would give it, for a fixed uneven split.
- ``train``: a tiny ``--method`` model trained by the engine for ``--epochs`` epochs on
  ``--images`` ORL faces: its initial weights, per-epoch losses, and the trained weights and
  buffers (compared as wholes: ||difference|| / ||weights||).
- ``preset``: the demo's ``--method`` preset (``ppfr.experiments.presets``) trained at
  ``--epoch-scale`` on the demo's ORL split and verified on its 10 held-out people: losses,
  trained weights and buffers, accuracy / AUC. At scale 1 this is the demo's training
  (several minutes per config).

Examples::

    python benchmarks/kernel_sets.py                                 # freq, dctdp, tiny arcface
    python benchmarks/kernel_sets.py --tasks train --method minusface --epochs 2
    python benchmarks/kernel_sets.py --tasks preset --method minusface --epoch-scale 0.25
    python benchmarks/kernel_sets.py --configs avx2@1,avx2@2 --tasks freq   # thread counts

``--json OUT`` also writes every figure. A configuration the CPU lacks (``avx512`` on an
AVX2 machine) is reported as what PyTorch actually ran, printed per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
#: key prefixes of a model's tensors, each compared as one row: prefix -> row name
GROUPS = {
    "initial param ": "initial weights",
    "final param ": "trained weights",
    "final buffer ": "trained buffers (BN statistics)",
}


# ---------------------------------------------------------------- the child: compute


def _freq() -> dict[str, torch.Tensor]:
    from ppfr import freq

    x = torch.rand(8, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    e32 = freq.encode(x)
    e64 = freq.encode(x.double())
    return {
        "freq.encode float32": e32,
        "freq.decode float32": freq.decode(e32),
        "freq.encode float64": e64,
        "freq.decode float64": freq.decode(e64),
        "freq.encode float32 - float64 (own error)": (e32.double() - e64).abs().max(),
    }


def _dctdp() -> dict[str, torch.Tensor]:
    import ppfr
    from ppfr.methods.dctdp import NUM_ELEMENTS

    torch.manual_seed(0)
    m = ppfr.create("dctdp", num_classes=4, backbone="ir18", backbone_width=0.125)
    with torch.no_grad():
        # float64 normals: the same bits under every kernel set (float32 ones are not)
        rho = torch.randn(
            m.client.rho.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
        m.client.rho.copy_(2 * rho)
        total = m.config.eps_mean * NUM_ELEMENTS
        ours = m.budgets()
        f32 = torch.softmax(m.client.rho.flatten(), 0) * total  # a float32 split, for contrast
    return {
        "dctdp budgets (float64)": ours,
        "dctdp total rel. error, float64 (ppfr)": (ours.sum() - total).abs() / total,
        "dctdp total rel. error, float32 softmax": (f32.double().sum() - total).abs() / total,
        "dctdp noise scale": m.noise_scale(),
    }


def _weights(model) -> dict[str, torch.Tensor]:
    """Every trained float tensor: ``param NAME`` for parameters, ``buffer NAME`` for
    buffers (BatchNorm's running statistics, DCTDP's sensitivities)."""
    out = {}
    for part in model.parts:
        module = model._part(part)
        for k, v in module.named_parameters():
            out[f"param {part}.{k}"] = v.detach().clone()
        for k, v in module.named_buffers():
            if v.is_floating_point():
                out[f"buffer {part}.{k}"] = v.detach().clone()
    return out


def _history(history: list[dict]) -> dict[str, torch.Tensor]:
    return {
        f"loss {row['stage']} epoch {row['epoch']}": torch.tensor(row["loss"], dtype=torch.float64)
        for row in history
    }


def _train(method: str, epochs: int, images: int) -> dict[str, torch.Tensor]:
    from ppfr.data.base import TensorFaces
    from ppfr.data.orl import load_orl
    from ppfr.train import TrainConfig, Trainer

    tiny = {"backbone": "ir18", "backbone_width": 0.125, "embedding_size": 64}
    extra = {
        "minusface": {"generator_width": 4, "train_repeats": 1},
        "partialface": {"train_repeats": 1},
        "dctdp": {"sensitivity_images": 16, "sensitivity_positions": 64},
        "duetface": {"client_width": 0.125, "client_embedding_size": 32},
    }.get(method, {})
    orl = load_orl(list(range(1, 5)))  # 4 people x 10 faces
    idx = torch.linspace(0, len(orl) - 1, min(images, len(orl))).round().long()
    data = TensorFaces(orl.faces[idx], orl.labels[idx.numpy()])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict(
            {
                "method": method,
                "out": tmp,
                "seed": 3,
                "model": {**tiny, **extra},
                "optim": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "milestones": []},
            }
        )
        trainer = Trainer(cfg, dataset=data, progress=False)
        initial = _weights(trainer.model)
        model = trainer.fit()
    return {
        **{f"initial {k}": v for k, v in initial.items() if k.startswith("param")},
        **_history(trainer.history),
        **{f"final {k}": v for k, v in _weights(model).items()},
    }


def _preset(method: str, epoch_scale: float) -> dict[str, torch.Tensor]:
    from ppfr.data.orl import load_orl, split_identities
    from ppfr.experiments import demo, presets

    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, 0)
    train_set, test_set = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = demo.train_preset(
            method, train_set, Path(tmp), epoch_scale=epoch_scale, progress=False
        )
        rows = _read_metrics(Path(tmp) / method / "metrics.csv")
    scores = demo.score_model(model, test_set, progress=False)
    return {
        **_history(rows),
        "accuracy": torch.tensor(scores["accuracy"], dtype=torch.float64),
        "auc": torch.tensor(scores["auc"], dtype=torch.float64),
        **{f"final {k}": v for k, v in _weights(model).items()},
    }


def _read_metrics(path: Path) -> list[dict]:
    import csv

    with path.open() as fh:
        return [
            {"stage": r["stage"], "epoch": r["epoch"], "loss": float(r["loss"])}
            for r in csv.DictReader(fh)
        ]


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    for task in args.tasks.split(","):
        if task == "freq":
            out.update(_freq())
        elif task == "dctdp":
            out.update(_dctdp())
        elif task == "train":
            out.update(_train(args.method, args.epochs, args.images))
        elif task == "preset":
            out.update(_preset(args.method, args.epoch_scale))
        else:
            raise SystemExit(f"unknown task {task!r}: freq, dctdp, train, preset")
    meta = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t0,
    }
    out = {k: v.detach() for k, v in out.items()}
    torch.save({"meta": meta, "out": out}, args.child)


# ---------------------------------------------------------------- the parent: compare


def _parse(config: str) -> tuple[str, int]:
    cap, _, threads = config.partition("@")
    if not cap or (threads and not threads.isdigit()):
        raise SystemExit(f"bad config {config!r}: CAPABILITY or CAPABILITY@THREADS")
    return cap, int(threads or 2)


def run_child(config: str, args: argparse.Namespace, tmp: Path, tag: str) -> dict:
    cap, threads = _parse(config)
    path = tmp / f"{tag}.pt"
    cmd = [sys.executable, str(HERE), "--child", str(path), "--threads", str(threads)]
    cmd += ["--tasks", args.tasks, "--method", args.method, "--epochs", str(args.epochs)]
    cmd += ["--images", str(args.images), "--epoch-scale", str(args.epoch_scale)]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
    subprocess.run(cmd, env=env, check=True)
    result = torch.load(path, weights_only=True)
    meta = result["meta"]
    print(
        f"  {tag}: ATEN_CPU_CAPABILITY={cap} -> PyTorch ran {meta['capability']}, "
        f"{meta['threads']} threads, {meta['seconds']:.1f} s",
        file=sys.stderr,
    )
    return result


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per quantity: identical, max |a - b|, and that over max |a| (relative).

    A model's tensors (keys ``initial param ...``, ``final param ...``, ``final buffer ...``)
    make one row per group: the largest absolute difference over all its tensors, and the
    relative one as a whole, ||a - b|| / ||a|| over all of them concatenated.
    """
    rows: dict[str, dict] = {}
    groups: dict[str, list[str]] = {}
    for k in a:
        prefix = next((p for p in GROUPS if k.startswith(p)), None)
        if prefix:
            groups.setdefault(prefix, []).append(k)
        else:
            rows[k] = _diff(a[k], b[k])
    for prefix, keys in groups.items():
        x = torch.cat([a[k].double().flatten() for k in keys])
        y = torch.cat([b[k].double().flatten() for k in keys])
        norm = float(x.norm())
        rows[f"{GROUPS[prefix]} ({len(keys)} tensors)"] = {
            "identical": all(torch.equal(a[k], b[k]) for k in keys),
            "max_abs_diff": float((x - y).abs().max()),
            "rel_diff": float((x - y).norm()) / norm if norm else 0.0,
        }
    return rows


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    x, y = a.double(), b.double()
    diff = float((x - y).abs().max()) if x.numel() else 0.0
    scale = float(x.abs().max()) if x.numel() else 0.0
    return {
        "identical": bool(torch.equal(a, b)),
        "max_abs_diff": diff,
        "rel_diff": diff / scale if scale else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="default,avx2", help="CAP or CAP@THREADS, comma-separated")
    p.add_argument("--tasks", default="freq,dctdp,train")
    p.add_argument("--method", default="arcface", help="train / preset: the method")
    p.add_argument("--epochs", type=int, default=2, help="train: epochs")
    p.add_argument("--images", type=int, default=24, help="train: ORL faces (of 4 people)")
    p.add_argument("--epoch-scale", type=float, default=0.25, help="preset: epoch scale")
    p.add_argument("--no-repeat", action="store_true", help="skip the same-config rerun")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    configs = args.configs.split(",")
    for c in configs:
        _parse(c)
    if len(dict.fromkeys(configs)) < 2 and args.no_repeat:
        raise SystemExit("nothing to compare: give two configs, or drop --no-repeat")
    if {"train", "preset"} <= set(args.tasks.split(",")):
        raise SystemExit("--tasks: train and preset both train a model; run them separately")
    print(
        f"PyTorch {torch.__version__}; this CPU's own kernel set: "
        f"{torch.backends.cpu.get_cpu_capability()}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = {c: run_child(c, args, Path(tmp), c) for c in dict.fromkeys(configs)}
        if not args.no_repeat:
            runs["again"] = run_child(configs[0], args, Path(tmp), f"{configs[0]} again")
    base = runs[configs[0]]
    others = [c for c in runs if c != configs[0]]
    table = {c: compare(base["out"], runs[c]["out"]) for c in others}
    meta = {c: r["meta"] for c, r in runs.items()}

    names = {c: (f"{configs[0]} rerun" if c == "again" else c) for c in others}
    print(
        f"\nEach configuration against `{configs[0]}` (PyTorch ran "
        f"{meta[configs[0]]['capability']}, {meta[configs[0]]['threads']} threads): 'same' = "
        "bit-identical, else max |diff| and (max |diff| / max |value|; for a model's tensors "
        "||diff|| / ||value||); single figures show "
        "their value.\n"
    )
    print(f"| quantity | {configs[0]} | " + " | ".join(names[c] for c in others) + " |")
    print("|---|---|" + "---|" * len(others))
    for key in table[others[0]]:
        value = base["out"].get(key)  # None for the grouped weights
        scalar = value is not None and value.numel() == 1
        cells = [f"{float(value):.6g}" if scalar else ""]
        for c in others:
            r = table[c][key]
            if scalar:
                v = f"{float(runs[c]['out'][key]):.6g}"
                cells.append(
                    f"{v}, same" if r["identical"] else f"{v}, diff {r['max_abs_diff']:.2g}"
                )
            else:
                same = r["identical"]
                cells.append("same" if same else f"{r['max_abs_diff']:.2g} ({r['rel_diff']:.2g})")
        print(f"| {key} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "diff": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
