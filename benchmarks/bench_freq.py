"""Speed and peak memory of ppfr.freq against the straightforward path.

The straightforward path is the transform's definition taken literally: upsample to 3x896x896
(bilinear, align_corners=True), convert to YCbCr, unfold into 8x8 blocks and DCT each
block as D B D^T. Run:  python benchmarks/bench_freq.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import machine, peak_rss_mib, per_item_ms

import ppfr
from ppfr import freq

torch.set_num_threads(2)
ppfr.tune_allocator()  # as every ppfr process does (docs/benchmarks.md, "Allocator")
D = freq.dct_matrix(dtype=torch.float32)
M = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
SHIFT = torch.tensor([-128.0, 0.0, 0.0]).view(1, 3, 1, 1)


def straightforward_encode(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    up = F.interpolate((x + 1) * 127.5, scale_factor=8, mode="bilinear", align_corners=True)
    ycc = torch.einsum("oc,bchw->bohw", M, up) + SHIFT
    blocks = F.unfold(ycc.reshape(n * 3, 1, 896, 896), 8, stride=8)  # (3n, 64, 12544)
    blocks = blocks.transpose(1, 2).reshape(-1, 8, 8)
    coef = D @ blocks @ D.T
    return coef.view(n, 3, 112, 112, 64).permute(0, 1, 4, 2, 3).reshape(n, 192, 112, 112)


def straightforward_decode(f: torch.Tensor) -> torch.Tensor:
    n = f.shape[0]
    coef = f.view(n, 3, 64, 112 * 112).transpose(2, 3).reshape(-1, 8, 8)
    blocks = (D.T @ coef @ D).view(n * 3, 12544, 64).transpose(1, 2)
    img = F.fold(blocks, (896, 896), 8, stride=8).view(n, 3, 896, 896) - SHIFT
    rgb = torch.einsum("oc,bchw->bohw", torch.linalg.inv(M), img) / 255
    return F.interpolate(rgb, size=(112, 112), mode="bilinear", align_corners=True).clamp(0, 1)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    assert (straightforward_encode(x) - freq.encode(x)).abs().max() < 1e-2
    f = freq.encode(x)
    assert (straightforward_decode(f) - freq.decode(f)).abs().max() < 1e-4
    print(f"machine: {machine()}\n")
    print("ms per image; speed-up against the straightforward path. 'fresh' allocates the result")
    print("tensor on every call (the default), 'out=' reuses one (streaming loops); the last")
    print("column is the time to just write a 192x112x112 float32 result, fresh / reused.\n")
    print(
        "| op | batch | straightforward | ppfr.freq fresh | ppfr.freq out= "
        "| speed-up fresh / out= | writing the output alone, fresh / reused |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in (1, 8, 32):
        x = torch.rand(batch, 3, 112, 112) * 2 - 1
        f = freq.encode(x)
        buf = torch.empty(batch, 192, 112, 112)
        write = per_item_ms(lambda b=batch: torch.empty(b, 192, 112, 112).fill_(1.0), batch)
        rewrite = per_item_ms(lambda: buf.fill_(1.0), batch)
        s = per_item_ms(lambda: straightforward_encode(x), batch, repeats=3)
        q = per_item_ms(lambda: freq.encode(x), batch)
        r = per_item_ms(lambda: freq.encode(x, out=buf), batch)
        print(
            f"| encode | {batch} | {s:.1f} | {q:.2f} | {r:.2f} | {s / q:.1f}x / {s / r:.1f}x "
            f"| {write:.2f} / {rewrite:.2f} |"
        )
        s = per_item_ms(lambda: straightforward_decode(f), batch, repeats=3)
        q = per_item_ms(lambda: freq.decode(f), batch)
        print(f"| decode | {batch} | {s:.1f} | {q:.2f} | - | {s / q:.1f}x | - |")
    print("\nPeak memory growth for one call on a batch of 32 (fresh process, MiB):\n")
    print("| op | straightforward | ppfr.freq | its output tensor alone |")
    print("|---|---|---|---|")
    setup = (
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "from bench_freq import straightforward_encode, straightforward_decode\n"
        "from ppfr import freq\n"
        "x = torch.rand(32, 3, 112, 112) * 2 - 1\n"
        "f = torch.empty(32, 192, 112, 112).normal_().mul_(50)  # in place: no setup peak\n"
    )
    for name, slow, fast, size in (
        ("encode", "straightforward_encode(x)", "freq.encode(x)", 32 * 192 * 112 * 112 * 4),
        ("decode", "straightforward_decode(f)", "freq.decode(f)", 32 * 3 * 112 * 112 * 4),
    ):
        s = peak_rss_mib(setup + "#--run--\n" + slow)
        q = peak_rss_mib(setup + "#--run--\n" + fast)
        print(f"| {name} | {s:.0f} | {q:.0f} | {size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
