r"""Attacking a keyed client: an attacker without the key, and what the protected faces
give away of it.

A keyed client (FracFace with ``key``, :mod:`ppfr.methods.fracface`) puts the tiles of every
representation in one secret order, :func:`ppfr.remap.keyed_order`. The attacker holds the
public client (its code and weights) but not the key. Two things it can do:

1. **Guess the order** (:class:`KeylessView`). It protects its own faces with the order it
   guesses, trains its inverters and linkage student on them, and reads the victims'
   representations as if they were laid out the same way. A wrong guess puts the victims'
   tiles in the wrong places.
2. **Recover the order from the victims' representations** (:func:`recover_order`). A fixed
   order moves tile :math:`t` of *every* face to the same slot :math:`s`, so the statistics
   of slot :math:`s` over the victims' representations are those of tile :math:`t`, which the
   attacker measures on its own faces (laid out in an order it knows). With
   :math:`r_t` the attacker's mean statistics of tile :math:`t` and :math:`o_s` those of slot
   :math:`s`, both standardised per feature with the attacker's statistics, the recovered
   order is the assignment

   .. math:: \hat\pi = \arg\min_\pi \sum_s \lVert o_s - r_{\pi(s)} \rVert^2,

   solved exactly (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``). The
   statistic of a tile is each channel's mean, mean magnitude and mean square on a ``cells x cells``
   grid inside the tile, averaged over faces. Aligned faces put different content at
   different positions (eyes, mouth, hair, background), so these means tell tiles apart;
   the more faces the attacker sees, the less they are perturbed by any one face.
   :func:`key_recovery_curve` measures the share of tiles placed right against the number
   of victim representations seen.

Then :class:`KeylessView` with the recovered order runs every other attack of
:mod:`ppfr.attacks` (through :func:`ppfr.attacks._inversion.own`, the attacker's own faces
are protected with the order it believes in, the victims' with the real one).

Example:
    >>> order, placed = recover_order(model, own_faces, model.protect(victims))  # doctest: +SKIP
    >>> view = KeylessView(model, order)                                         # doctest: +SKIP
    >>> create_attack("recovery").run(view, victims, labels, aux=own_faces)      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ppfr import remap
from ppfr.attacks._scoring import eval_mode
from ppfr.errors import InputError


def fixed_order_client(model: Any) -> tuple[Any, int]:
    """The client of ``model`` and its grid, if it remaps tiles in one fixed ``order``."""
    client = getattr(model, "client", None)
    order = getattr(client, "order", None)
    grid = getattr(client, "grid", None)
    if not isinstance(order, Tensor) or not isinstance(grid, int) or order.shape != (grid**2,):
        name = getattr(model, "name", type(model).__name__)
        raise InputError(
            f"{name} has no fixed tile order to attack (a client with an 'order' buffer of "
            "grid^2 entries and a 'grid', such as fracface, is needed)"
        )
    return client, grid


@contextmanager
def client_order(model: Any, order: Tensor) -> Iterator[Any]:
    """``model`` with its client's tile order temporarily replaced by ``order``."""
    client, grid = fixed_order_client(model)
    order = torch.as_tensor(order, dtype=torch.long)
    if order.shape != (grid * grid,) or not torch.equal(order.sort().values, torch.arange(grid**2)):
        raise InputError(f"order must be a permutation of {grid * grid} tiles")
    saved = client.order.clone()
    client.order.copy_(order.to(saved.device))
    try:
        yield model
    finally:
        client.order.copy_(saved)


@torch.no_grad()
def sent(model: Any, faces: Tensor, *, seed: int = 1, batch: int = 32) -> Tensor:
    """What the server receives for ``faces`` (and an eavesdropper sees): the model's
    representations, float32 on the CPU, protection randomness drawn with ``seed``."""
    device = getattr(model, "device", torch.device("cpu"))
    g = torch.Generator(device=device).manual_seed(int(seed))
    with eval_mode(model):
        return torch.cat(
            [
                model.protect(faces[i : i + batch].to(device), g).float().cpu()
                for i in range(0, len(faces), batch)
            ]
        )


def tile_statistics(p: Tensor, grid: int, cells: int | None = None) -> Tensor:
    """Per-face statistics of every tile: each channel's mean, mean magnitude and mean
    square on a ``cells x cells`` grid inside the tile (None: 2 where the tile's side is
    even, else 1).

    Shape:
        - p: :math:`(N, C, H, W)`, ``H`` and ``W`` multiples of ``grid * cells``
        - output: :math:`(N, \\text{grid}^2, 3 C \\cdot \\text{cells}^2)`, tiles row-major
    """
    if cells is None and p.ndim == 4:
        cells = 2 if p.shape[2] % (2 * grid) == 0 and p.shape[3] % (2 * grid) == 0 else 1
    cells = int(cells or 1)
    if p.ndim != 4 or p.shape[2] % (grid * cells) or p.shape[3] % (grid * cells):
        raise InputError(
            f"tile_statistics: expected (N, C, H, W) with H, W multiples of {grid * cells}, "
            f"got {tuple(p.shape)}"
        )
    p = p.float()
    side = grid * cells
    moments = (p, p.abs(), p.square())
    pooled = torch.cat([F.adaptive_avg_pool2d(m, side) for m in moments], 1)
    n, c = pooled.shape[:2]
    tiles = pooled.view(n, c, grid, cells, grid, cells).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(n, grid * grid, c * cells * cells)


def match_tiles(reference: Tensor, observed: Tensor) -> Tensor:
    """The order that best explains ``observed`` slot statistics by ``reference`` tile
    statistics (both :math:`(n, F)`, already averaged over faces): ``order[s]`` is the
    reference tile placed in slot ``s``, as :func:`ppfr.remap.remap_tiles` reads it.

    Every feature is standardised with the reference tiles' mean and spread, so no
    channel dominates by its scale; then the assignment of least total squared distance.
    """
    if reference.ndim != 2 or reference.shape != observed.shape:
        raise InputError(
            f"match_tiles: reference and observed must be the same (n, F), got "
            f"{tuple(reference.shape)} and {tuple(observed.shape)}"
        )
    mu, sd = reference.mean(0), reference.std(0).clamp_min(1e-8)
    r, o = (reference - mu) / sd, (observed - mu) / sd
    return _assign(torch.cdist(o.double(), r.double()).square())


def _assign(cost: Tensor) -> Tensor:
    """The permutation (slot -> tile) of least total ``cost[slot, tile]``."""
    slots, tiles = linear_sum_assignment(cost.numpy())
    order = np.empty(len(slots), dtype=np.int64)
    order[slots] = tiles
    return torch.from_numpy(order)


def reference_statistics(model: Any, own_faces: Tensor, cells: int | None = None) -> Tensor:
    """The attacker's per-face tile statistics of its own faces, tiles in their true places
    (the client run with the identity order). Shape :math:`(N, n, F)`."""
    _, grid = fixed_order_client(model)
    with client_order(model, torch.arange(grid * grid)):
        return tile_statistics(sent(model, own_faces), grid, cells)


def recover_order(
    model: Any,
    own_faces: Tensor,
    observed: Tensor,
    *,
    cells: int | None = None,
) -> tuple[Tensor, float]:
    """Recover a keyed client's tile order from representations ``observed`` of any faces.

    Args:
        model: the keyed model; only its client's public part (weights, grid) is used, and
            its true order only to score the result.
        own_faces: the attacker's faces, :math:`(M, 3, 112, 112)` in [-1, 1].
        observed: the victims' representations as sent, :math:`(N, C, 112, 112)`.
        cells: statistics grid inside each tile (None: 2 for even tile sides, else 1).

    Returns:
        ``(order, placed)``: the recovered order (usable as ``KeylessView(model, order)``)
        and the share of slots it fills with the right tile (scored against the client's
        true order).
    """
    client, grid = fixed_order_client(model)
    if observed.ndim != 4 or len(observed) < 1:
        raise InputError(f"observed must be (N, C, H, W) with N >= 1, got {tuple(observed.shape)}")
    ref = reference_statistics(model, own_faces, cells).mean(0)
    order = match_tiles(ref, tile_statistics(observed, grid, cells).mean(0))
    placed = float((order == client.order.cpu()).float().mean())
    return order, placed


def key_recovery_curve(
    model: Any,
    own_faces: Tensor,
    victim_faces: Tensor,
    counts: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    *,
    trials: int = 20,
    seed: int = 0,
    cells: int | None = None,
) -> dict[str, Any]:
    """Share of tiles placed right against the number of victim representations seen.

    For each count ``k``, ``trials`` random subsets of ``k`` victims' representations
    (drawn with ``seed``) are matched against the attacker's statistics of all its faces.

    Returns:
        ``{"counts": [...], "placed_mean": [...], "placed_min": [...], "exact": [...]}``,
        ``exact`` the share of trials that recovered the whole order.
    """
    client, grid = fixed_order_client(model)
    truth = client.order.cpu()
    observed = sent(model, victim_faces, seed=seed + 1)
    ref = reference_statistics(model, own_faces, cells).mean(0)
    seen = tile_statistics(observed, grid, cells)

    g = torch.Generator().manual_seed(int(seed))
    out: dict[str, Any] = {"counts": [], "placed_mean": [], "placed_min": [], "exact": []}
    for k in counts:
        if not 1 <= k <= len(seen):
            raise InputError(f"count {k} is outside 1..{len(seen)} (victim faces given)")
        placed = []
        for _ in range(trials if k < len(seen) else 1):
            pick = torch.randperm(len(seen), generator=g)[:k]
            order = match_tiles(ref, seen[pick].mean(0))
            placed.append(float((order == truth).float().mean()))
        out["counts"].append(int(k))
        out["placed_mean"].append(float(np.mean(placed)))
        out["placed_min"].append(float(np.min(placed)))
        out["exact"].append(float(np.mean([p == 1.0 for p in placed])))
    return out


class KeylessView:
    """A keyed model as an attacker without the key sees it, believing the order is
    ``order``: the victims' representations are the model's (``protect``), the attacker's
    own faces are protected with ``order`` (``protect_own``, read by
    :func:`ppfr.attacks._inversion.own`), and ``inversion_input`` undoes ``order``."""

    def __init__(self, model: Any, order: Tensor) -> None:
        _, self.grid = fixed_order_client(model)
        self._model = model
        self.guess = torch.as_tensor(order, dtype=torch.long).clone()
        with client_order(model, self.guess):  # checks it is a permutation of the tiles
            pass

    def protect_own(self, faces: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with client_order(self._model, self.guess):
            return self._model.protect(faces, generator)

    def inversion_input(self, p: Tensor) -> Tensor:
        return remap.remap_tiles(p, remap.inverse_order(self.guess), self.grid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


__all__ = [
    "KeylessView",
    "client_order",
    "fixed_order_client",
    "key_recovery_curve",
    "match_tiles",
    "recover_order",
    "reference_statistics",
    "sent",
    "tile_statistics",
]
