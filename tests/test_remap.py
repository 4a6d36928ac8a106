import pytest
import torch

from ppfr.errors import InputError
from ppfr.remap import (
    TileRemap,
    fractal_order,
    inverse_order,
    keyed_order,
    random_tile_orders,
    remap_tiles,
)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_fractal_order_is_a_self_inverse_permutation(depth):
    order = fractal_order(depth)
    assert sorted(order.tolist()) == list(range(4**depth))
    assert torch.equal(order[order], torch.arange(4**depth))
    if depth >= 1:
        assert not torch.equal(order, torch.arange(4**depth))  # it moves tiles


def test_fractal_order_is_self_similar_and_no_plain_flip():
    grid = fractal_order(2).view(4, 4)
    # level 0 reflects the quadrants: the top-left output quadrant comes from the
    # bottom-right input quadrant (rows and columns 2..3)
    rows, cols = grid[:2, :2] // 4, grid[:2, :2] % 4
    assert (rows >= 2).all() and (cols >= 2).all()
    # the whole is neither the identity, a flip nor a point reflection of the grid
    ident = torch.arange(16).view(4, 4)
    for flipped in (ident, ident.flip(0), ident.flip(1), ident.flip(0, 1), ident.T):
        assert not torch.equal(grid, flipped)


def test_remap_tiles_moves_whole_tiles_and_inverts():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    order = torch.tensor([3, 0, 2, 1])
    y = remap_tiles(x, order, 2)
    # output tile 0 (top-left) is input tile 3 (bottom-right), every channel
    assert torch.equal(y[:, :, :4, :4], x[:, :, 4:, 4:])
    assert torch.equal(y[:, :, :4, 4:], x[:, :, :4, :4])
    assert torch.equal(remap_tiles(y, inverse_order(order), 2), x)


def test_per_image_orders():
    x = torch.randn(3, 2, 112, 112)
    orders = random_tile_orders(3, 4, torch.Generator().manual_seed(0))
    assert orders.shape == (3, 16)
    y = remap_tiles(x, orders, 4)
    for i in range(3):
        assert torch.equal(y[i : i + 1], remap_tiles(x[i : i + 1], orders[i], 4))
    assert torch.equal(remap_tiles(y, inverse_order(orders), 4), x)
    again = random_tile_orders(3, 4, torch.Generator().manual_seed(0))
    assert torch.equal(orders, again) and not torch.equal(orders[0], orders[1])


def test_keyed_order_depends_on_the_key():
    assert torch.equal(keyed_order(4, 11), keyed_order(4, 11))
    assert not torch.equal(keyed_order(4, 11), keyed_order(4, 12))
    m = TileRemap(keyed_order(4, 11), 4)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(m(x), remap_tiles(x, keyed_order(4, 11), 4))


def test_remap_tiles_rejects_bad_input():
    with pytest.raises(InputError, match="multiples of 3"):
        remap_tiles(torch.zeros(1, 1, 8, 8), torch.arange(9), 3)
    with pytest.raises(InputError, match="order must be"):
        remap_tiles(torch.zeros(1, 1, 8, 8), torch.arange(5), 2)
    with pytest.raises(InputError, match="at least 1"):
        keyed_order(0, 1)
    with pytest.raises(InputError, match="depth"):
        fractal_order(-1)
