"""Where MinusFace's accuracy stops at the demo budget: two diagnostics on a trained run.

Run:  OMP_NUM_THREADS=1 python research/minusface_ceiling.py \
          --run RUN/runs/split-1/minusface --seed 1 [--views 1 2 4 8]

1. **Views**: the server's verification accuracy on the split's held-out people when every
   face is protected ``k`` times (independent shuffles) and the ``k`` embeddings are
   averaged. If the shuffle's randomness were what costs accuracy, more views would win it
   back.
2. **The residue itself**: stage 1's recognizer ``f`` reading the unshuffled residue, as
   it trained (from ``RUN/checkpoint``, which keeps the training part). This is what the
   residue carries about a person before any shuffle.

research/log.md, "MinusFace's stage 2", reports the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ppfr
from ppfr.data.orl import load_orl, split_identities
from ppfr.eval.openset import evaluate_open_set
from ppfr.experiments import presets
from ppfr.methods._bundle import read_manifest
from ppfr.methods._registry import bundle_method


class Views(nn.Module):
    """``model`` with each face protected ``k`` times and the embeddings averaged."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    @property
    def device(self) -> torch.device:
        return self.model.device

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.cat([self.model.protect(x, generator) for _ in range(self.k)], dim=1)

    def embed(self, p: Tensor) -> Tensor:
        views = p.chunk(self.k, dim=1)
        return F.normalize(sum(self.model.embed(v) for v in views), dim=1)


class ResidueReader(nn.Module):
    """Stage 1's view: the residue (its tiles where protect moves them), read by ``f``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.client = model.client
        self.recognizer = model.train_part["recognizer"]
        self.scale = model.config.coef_scale

    @property
    def device(self) -> torch.device:
        return next(self.recognizer.parameters()).device

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _, _, r = self.client.regenerate(x)
        return self.client.remap(r) / self.scale

    def embed(self, p: Tensor) -> Tensor:
        return F.normalize(self.recognizer(p), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a MinusFace training run folder")
    ap.add_argument("--seed", type=int, required=True, help="its ORL split")
    ap.add_argument("--views", type=int, nargs="*", default=[1, 2, 4, 8])
    args = ap.parse_args()
    _, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    test = load_orl(test_ids, aligned=True)
    model = ppfr.load(args.run / "model").eval()
    for k in args.views:
        result, _ = evaluate_open_set(Views(model, k), test, seed=args.seed, progress=False)
        print(f"server, {k} view(s) averaged: accuracy {100 * result.accuracy:.2f} %", flush=True)
    ckpt = args.run / "checkpoint"
    manifest = read_manifest(ckpt)
    # the method the checkpoint loads as: minusface, or minusface-hardened for a run with
    # hardening options (saved before they moved out of minusface, or after)
    method, settings = bundle_method(manifest)
    if settings.get("equalise") or settings.get("stage1_reads", "residue") != "residue":
        raise SystemExit("the residue diagnostic reads plain MinusFace's stage 1 only")
    full = ppfr.create(method.name, **settings)
    full.load_weights(ckpt, ["client", "server", "train"], manifest)
    result, _ = evaluate_open_set(ResidueReader(full.eval()), test, seed=args.seed, progress=False)
    print(f"stage 1's recognizer on the unshuffled residue: accuracy {100 * result.accuracy:.2f} %")


if __name__ == "__main__":
    main()
