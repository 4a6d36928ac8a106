"""Reassembling randomly ordered tiles: the adaptive answer to a per-image tile shuffle.

A protection that puts the tiles of its representation in a fresh random order per image
(MinusFace's ``tile_grid``, :mod:`ppfr.remap`) stops an inverter from knowing where each
tile belongs, so the plain recovery attack draws a scrambled face and the judge fails on
it. That measures the attack, not the protection: jigsaw solvers restore shuffled images,
and a face's parts are easy to place. The attacker holds the client, so it can protect its
own faces with the shuffle off, shuffle them itself with orders it knows, and train a
:class:`TileSolver` to tell, for each tile position, which tile of the unshuffled layout it
holds. :class:`SolvedTiles` then presents the protected method to every other attack with
the victims' tiles put back where the solver says they belong (``inversion_input``), so
recovery, linkage and identity-guided recovery all run on the reassembled representation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ppfr import remap
from ppfr.errors import InputError


def tile_grid(model: Any) -> int:
    """The grid of a model's per-image random tile shuffle (0: none)."""
    client = getattr(model, "client", None)
    return int(getattr(client, "tile_grid", 0) or 0)


@contextmanager
def shuffle_off(model: Any):
    """The model's client with its tile shuffle switched off (the attacker's own copy)."""
    client = model.client
    grid = client.tile_grid
    client.tile_grid = 0
    try:
        yield model
    finally:
        client.tile_grid = grid


class TileSolver(nn.Module):
    """A small CNN that reads a tiled representation and scores, for each tile position,
    which tile of the original layout it holds.

    Shape:
        - input: :math:`(B, C, 112, 112)`; output: :math:`(B, n, n)` logits, ``n = grid^2``
          (row: position in the input, column: the tile's original position)
    """

    def __init__(self, in_channels: int, grid: int, width: int = 16) -> None:
        super().__init__()
        self.grid = grid
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2 * grid)  # each tile position keeps 2x2 cells
        n = grid * grid
        self.classify = nn.Linear(cin * 4 * n, n * n)

    def forward(self, x: Tensor) -> Tensor:
        n = self.grid * self.grid
        return self.classify(self.pool(self.features(x)).flatten(1)).view(-1, n, n)

    @torch.no_grad()
    def orders(self, x: Tensor) -> Tensor:
        """(B, n): the most likely order, a permutation per image (greedy assignment of the
        most confident (position, tile) pairs first)."""
        logp = F.log_softmax(self(x).float(), -1).cpu().numpy()
        n = logp.shape[1]
        out = np.zeros((len(logp), n), dtype=np.int64)
        for b, scores in enumerate(logp):
            scores = scores.copy()
            for _ in range(n):
                pos, tile = np.unravel_index(np.argmax(scores), scores.shape)
                out[b, pos] = tile
                scores[pos, :] = -np.inf
                scores[:, tile] = -np.inf
        return torch.from_numpy(out)


def train_tile_solver(
    model: Any,
    aux: Tensor,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[TileSolver, float]:
    """Train a :class:`TileSolver` for ``model`` on the attacker's faces ``aux``.

    Every epoch protects the faces with the tile shuffle off (fresh channel shuffles) and
    shuffles the tiles with orders the attacker draws itself. Returns the solver and the
    share of tiles it places right on a last, fresh draw of the attacker's faces.
    """
    grid = tile_grid(model)
    if grid < 2:
        raise InputError("train_tile_solver: the model shuffles no tiles (tile_grid < 2)")
    if getattr(model, "stacked_images", 1) != 1:
        raise InputError("train_tile_solver: one stacked image per representation only")
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    channels = model.representation_shape[0]
    solver = TileSolver(channels, grid)
    opt = torch.optim.Adam(solver.parameters(), lr=lr)
    bar = tqdm(range(epochs), desc="tile solver", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        x, target = _draw(model, aux, grid, g)
        solver.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            logits = solver(x[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), target[idx].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    solver.eval()
    x, target = _draw(model, aux, grid, g)
    placed = float((solver.orders(x) == target).float().mean())
    return solver, placed


@torch.no_grad()
def _draw(model: Any, faces: Tensor, grid: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Faces protected with the shuffle off, then tiled by orders drawn from ``g``."""
    with shuffle_off(model):
        p = torch.cat(
            [model.protect(faces[i : i + 32], g).float() for i in range(0, len(faces), 32)]
        )
    order = remap.random_tile_orders(len(p), grid, g)
    return remap.remap_tiles(p, order, grid), order


class SolvedTiles:
    """``model`` as an attacker with a trained :class:`TileSolver` sees it: everything as
    the model, except that ``inversion_input`` puts the tiles back in the solver's order
    first (then reads them as the model's own ``inversion_input`` would)."""

    def __init__(self, model: Any, solver: TileSolver) -> None:
        self._model, self.solver = model, solver
        self.grid = solver.grid

    def inversion_input(self, p: Tensor) -> Tensor:
        order = self.solver.to(p.device).orders(p)  # output position -> original tile
        back = remap.remap_tiles(p, remap.inverse_order(order), self.grid)
        inner = getattr(self._model, "inversion_input", None)
        return inner(back) if callable(inner) else back

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


__all__ = ["SolvedTiles", "TileSolver", "shuffle_off", "tile_grid", "train_tile_solver"]
