r"""Remapping the positions of frequency maps: tile permutations, fixed, keyed or random.

A block-DCT map keeps every 8x8 image block where it was (:mod:`ppfr.freq`), so whatever
the values hide, *where* the energy sits traces the face's outline. A remap moves the
positions: the map is cut into a ``grid x grid`` array of square tiles and the tiles are
put in another order. Inside a tile the layout is kept, so a convolutional recognizer still
reads local texture; what is lost is where each tile was.

Three kinds of order, by who knows it:

- :func:`fractal_order`: fixed and public, a recursive (self-similar) shuffle of quadrants,
  FracFace's "fractal mapping" as we read it (:mod:`ppfr.methods.fracface`);
- :func:`keyed_order`: fixed per deployment, drawn from a secret integer key;
- :func:`random_tile_orders`: fresh for every image and call, like MinusFace's channel
  shuffle; a recognizer must then read the tiles as an unordered set.

:func:`remap_tiles` applies an order, one for the batch or one per image, and
:func:`inverse_order` undoes a fixed one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ppfr.errors import InputError


def fractal_order(depth: int) -> Tensor:
    r"""The fixed tile order of a depth-``depth`` recursive quadrant remap (grid ``2^depth``).

    The square is cut into quadrants, each quadrant into quadrants, ``depth`` levels down;
    at every level the four quadrants of every square trade places by one rule (a point
    reflection at even levels, a transpose at odd ones, so the whole is no plain flip of the
    picture). Tile :math:`(i, j)` of the output holds tile :math:`(\bar i, \bar j)` of the
    input, where bit ``level`` of :math:`(\bar i, \bar j)` is that level's rule applied to
    the same bits of :math:`(i, j)`: self-similar by construction, and its own inverse.

    Shape:
        - output: :math:`(4^{depth},)`, a permutation of the row-major tile indices

    Example:
        >>> fractal_order(1).tolist()
        [3, 2, 1, 0]
        >>> bool((fractal_order(2)[fractal_order(2)] == torch.arange(16)).all())
        True
    """
    if depth < 0:
        raise InputError(f"fractal_order: depth must be >= 0, got {depth}")
    grid = 1 << depth
    i = torch.arange(grid)
    rows, cols = torch.meshgrid(i, i, indexing="ij")
    r_src, c_src = torch.zeros_like(rows), torch.zeros_like(cols)
    for level in range(depth):
        bit = depth - 1 - level
        rb, cb = (rows >> bit) & 1, (cols >> bit) & 1
        if level % 2 == 0:  # point reflection of the quadrants
            rb, cb = 1 - rb, 1 - cb
        else:  # transpose of the quadrants
            rb, cb = cb, rb
        r_src |= rb << bit
        c_src |= cb << bit
    return (r_src * grid + c_src).reshape(-1)


def keyed_order(grid: int, key: int) -> Tensor:
    """A fixed random order of ``grid x grid`` tiles, drawn from ``key`` (a secret integer).

    Example:
        >>> bool((keyed_order(4, 7) == keyed_order(4, 7)).all())
        True
    """
    _check_grid(grid)
    g = torch.Generator().manual_seed(int(key))
    return torch.randperm(grid * grid, generator=g)


def random_orders(
    b: int, c: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> Tensor:
    """(b, c): one uniformly random order of ``c`` items per row, on ``device`` (MinusFace's
    channel shuffle, :func:`random_tile_orders`)."""
    where = generator.device if generator is not None else device
    # argsort of i.i.d. uniforms is a uniform random permutation per row
    return torch.rand(b, c, generator=generator, device=where).argsort(dim=1).to(device)


def random_tile_orders(
    batch: int, grid: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """(batch, grid * grid): a fresh uniformly random tile order per image."""
    _check_grid(grid)
    return random_orders(batch, grid * grid, generator, device)


def inverse_order(order: Tensor) -> Tensor:
    """The order that undoes ``order`` (per row if 2-D)."""
    return order.argsort(-1)


def remap_tiles(x: Tensor, order: Tensor, grid: int) -> Tensor:
    r"""Put the ``grid x grid`` tiles of ``x`` in ``order``: output tile ``t`` is input tile
    ``order[t]`` (row-major tile indices).

    Shape:
        - x: :math:`(B, C, H, W)` with ``H`` and ``W`` multiples of ``grid``
        - order: :math:`(\text{grid}^2,)` for the whole batch, or :math:`(B, \text{grid}^2)`
        - output: same as ``x``

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> remap_tiles(x, torch.tensor([3, 2, 1, 0]), 2)[0, 0, 0].tolist()
        [10.0, 11.0, 8.0, 9.0]
    """
    _check_grid(grid)
    if x.ndim != 4 or x.shape[2] % grid or x.shape[3] % grid:
        raise InputError(
            f"remap_tiles: expected (B, C, H, W) with H and W multiples of {grid}, "
            f"got {tuple(x.shape)}"
        )
    b, c, h, w = x.shape
    n = grid * grid
    if order.shape not in ((n,), (b, n)):
        raise InputError(
            f"remap_tiles: order must be ({n},) or ({b}, {n}), got {tuple(order.shape)}"
        )
    th, tw = h // grid, w // grid
    tiles = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, th, tw)
    order = order.to(x.device)
    if order.ndim == 1:
        moved = tiles.index_select(1, order)
    else:
        moved = torch.gather(tiles, 1, order.view(b, n, 1, 1, 1).expand_as(tiles))
    out = moved.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, c, h, w)


def _check_grid(grid: int) -> None:
    if grid < 1:
        raise InputError(f"tile grid must be at least 1, got {grid}")


class TileRemap(nn.Module):
    """Module form of :func:`remap_tiles` with a fixed order (kept as a buffer)."""

    def __init__(self, order: Tensor, grid: int) -> None:
        super().__init__()
        if order.shape != (grid * grid,):
            raise InputError(f"TileRemap: order must have {grid * grid} entries")
        self.grid = grid
        self.register_buffer("order", order.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return remap_tiles(x, self.order, self.grid)


__all__ = [
    "TileRemap",
    "fractal_order",
    "inverse_order",
    "keyed_order",
    "random_orders",
    "random_tile_orders",
    "remap_tiles",
]
