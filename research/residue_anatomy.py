"""Where a trained MinusFace's residue carries energy: the anatomy behind the outline leak.

For the held-out ORL people of a demo run, prints the residue's per-position root mean
square (RMS over the 192 channels): its median, the share of positions above twice the
median ("spikes"), the per-face range of that share, and the RMS of the constant the U-Net's
output bias alone gives. Writes a grid (face, spike mask, X_p) of six people.

Run:  python research/residue_anatomy.py --model demo-out/runs/minusface/model \
          --grid docs/minusface-residue-spikes.png
"""

from __future__ import annotations

import argparse

import torch

import ppfr
from ppfr.data.orl import load_orl, split_identities
from ppfr.experiments.plots import grid_figure
from ppfr.experiments.presets import TEST_IDENTITIES


def anatomy(model, faces: torch.Tensor) -> dict:
    """The residue's per-position RMS over ``faces``: median, 99th percentile, max, the
    RMS of the output bias alone, the share of "spike" positions (above twice the median)
    overall and per face, and the faces with none. Also returns the spike mask."""
    with torch.no_grad():
        rms = torch.cat([model.residue(faces[i : i + 25]) for i in range(0, len(faces), 25)])
        rms = rms.square().mean(1).sqrt()
    median = float(rms.flatten().median())
    spikes = rms > 2 * median
    share = spikes.float().mean((1, 2))
    g = model.client.generator
    return {
        "median": median,
        "p99": float(rms.flatten().quantile(0.99)),
        "max": float(rms.max()),
        "bias_rms": float((g.out.bias.detach() * g.input_scale).square().mean().sqrt()),
        "spike_share": float(spikes.float().mean()),
        "spike_share_per_face": (float(share.min()), float(share.max())),
        "faces_without_spikes": int((share == 0).sum()),
        "spikes": spikes,
    }


def report(a: dict, faces: int) -> str:
    lo, hi = a["spike_share_per_face"]
    return (
        f"held-out faces: {faces}; residue RMS per position: median {a['median']:.2f}, "
        f"99th percentile {a['p99']:.4g}, max {a['max']:.4g}\n"
        f"RMS of the output bias alone (the residue where the U-Net's last features are "
        f"zero): {a['bias_rms']:.2f}\n"
        f"positions above twice the median: {100 * a['spike_share']:.1f} % (per face "
        f"{100 * lo:.1f} to {100 * hi:.1f} %; faces with none: {a['faces_without_spikes']} "
        f"of {faces})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", required=True, help="a MinusFace bundle (demo-out/runs/minusface/model)"
    )
    ap.add_argument("--seed", type=int, default=0, help="the demo's split seed")
    ap.add_argument("--grid", default=None, help="write the face / spikes / X_p grid here (PNG)")
    args = ap.parse_args()
    model = ppfr.load(args.model)
    _, test_ids = split_identities(TEST_IDENTITIES, args.seed)
    faces = load_orl(test_ids, aligned=True).faces
    a = anatomy(model, faces)
    spikes = a["spikes"]
    print(report(a, len(faces)))
    if args.grid:
        pick = torch.arange(0, len(faces), 10)[:6]
        with torch.no_grad():
            p = model.protect(faces[pick], torch.Generator().manual_seed(0))
        mask = spikes[pick].float().unsqueeze(1).expand(-1, 3, -1, -1)
        fig = grid_figure([(faces[pick] + 1) / 2, mask, p], ["face", "residue spikes", "X_p"])
        fig.savefig(args.grid, dpi=90)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
