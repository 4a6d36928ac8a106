"""Client ``protect`` and server ``embed`` latency, and training throughput per stage.

Run:  python benchmarks/bench_protect.py
Untrained weights: latency does not depend on the values.
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, per_item_ms

import ppfr
from ppfr.data.base import TensorFaces
from ppfr.data.orl import load_orl

torch.set_num_threads(2)
ppfr.tune_allocator()  # as every ppfr process does (docs/benchmarks.md, "Allocator")


def latency(widths: list[int]) -> None:
    print("| client model | batch | protect ms/img | protect, plain path | embed ms/img (IR-18) |")
    print("|---|---|---|---|---|")
    for width in widths:
        m = ppfr.create("minusface", generator_width=width).eval()
        client = m.client
        for batch in (1, 32):
            x = torch.rand(batch, 3, 112, 112) * 2 - 1
            with torch.inference_mode():
                p = m.protect(x)
                pm = per_item_ms(lambda x=x: m.protect(x), batch, repeats=3)
                client.composed = False  # the residue formed, shuffled and decoded
                plain = per_item_ms(lambda x=x: m.protect(x), batch, repeats=3)
                client.composed = True
                em = per_item_ms(lambda p=p: m.embed(p), batch, repeats=3)
            print(f"| U-Net width {width} | {batch} | {pm:.1f} | {plain:.1f} | {em:.1f} |")


def training(configs: dict[str, dict], batch: int = 32, steps: int = 4) -> None:
    data = load_orl(list(range(1, 31)))
    x, y = data.faces[:batch], torch.as_tensor(data.labels[:batch])
    print("\n| method, model | stage | images/s (batch 32, fwd+bwd+SGD step) |")
    print("|---|---|---|")
    for label, (method, cfg) in configs.items():
        model = ppfr.create(method, num_classes=30, **cfg)
        for stage in model.stages():
            for m in stage.frozen:
                m.requires_grad_(False)
            opt = torch.optim.SGD([p for g in stage.param_groups for p in g["params"]], lr=1e-3)
            stage.module.train()
            for m in stage.frozen:
                m.eval()

            def step(stage=stage, opt=opt):
                loss, _ = stage.module(x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            ms = per_item_ms(step, batch, repeats=steps)
            print(f"| {label} | {stage.name} | {1000 / ms:.1f} |")
            if stage.begin is not None:  # the stage's per-image precomputation (MinusFace:
                # the frozen U-Net's features), filled for this batch as the trainer would
                stage.begin(TensorFaces(x, y.numpy()), False)
                ms = per_item_ms(step, batch, repeats=steps)
                print(f"| {label} | {stage.name}, after begin() | {1000 / ms:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="8,16,32")
    args = ap.parse_args()
    print(f"machine: {machine()}\n")
    latency([int(w) for w in args.widths.split(",")])
    demo = {"backbone_width": 0.25}
    training(
        {
            "arcface, demo (IR-18 x0.25)": ("arcface", demo),
            "minusface, demo (IR-18 x0.25, U-Net 8)": ("minusface", {**demo, "generator_width": 8}),
            "minusface, default (IR-18, U-Net 16)": ("minusface", {}),
        }
    )


if __name__ == "__main__":
    main()
