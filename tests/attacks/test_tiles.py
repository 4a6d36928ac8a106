import pytest
import torch

import ppfr
from ppfr import remap
from ppfr.attacks.tiles import SolvedTiles, TileSolver, shuffle_off, tile_grid, train_tile_solver
from ppfr.errors import InputError
from tests.conftest import TINY_MINUSFACE


def _tiled(grid=2):
    torch.manual_seed(0)
    m = ppfr.create("minusface-hardened", num_classes=4, **TINY_MINUSFACE, tile_grid=grid).eval()
    g = m.client.generator
    with torch.no_grad():  # a residue with structure (an untrained U-Net gives near zero)
        g.out.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(1))
        g.out.bias.zero_()
    return m


def test_shuffle_off_is_temporary(faces):
    m = _tiled()
    with shuffle_off(m):
        assert tile_grid(m) == 0
    assert tile_grid(m) == 2 and tile_grid(ppfr.create("arcface")) == 0


def test_solved_tiles_with_the_true_orders_gives_the_unshuffled_representation(faces):
    m = _tiled()
    with torch.no_grad(), shuffle_off(m):
        plain = m.protect(faces, torch.Generator().manual_seed(3))
    order = remap.random_tile_orders(4, 2, torch.Generator().manual_seed(4))
    tiled = remap.remap_tiles(plain, order, 2)
    solver = TileSolver(3, 2)
    solver.orders = lambda p: order  # an oracle, to check the reassembly alone
    attacker = SolvedTiles(m, solver)
    assert torch.equal(attacker.inversion_input(tiled), plain)
    assert attacker.representation_shape == m.representation_shape  # the rest is the model's


def test_solver_orders_are_permutations():
    solver = TileSolver(3, 2).eval()
    orders = solver.orders(torch.rand(5, 3, 112, 112))
    assert orders.shape == (5, 4)
    assert all(sorted(o.tolist()) == [0, 1, 2, 3] for o in orders)


def test_solver_learns_to_place_face_tiles(orl4):
    m = _tiled()
    # 24 epochs: at 12, one of seed shifts 0-10 placed 0.34; at 24, 0.92 at worst over them
    solver, placed = train_tile_solver(m, orl4.faces, epochs=24, batch_size=8, progress=False)
    assert placed > 0.5  # chance is 1/4 of the tiles


def test_solver_needs_a_tile_shuffle(orl4):
    with pytest.raises(InputError, match="no tiles"):
        train_tile_solver(ppfr.create("arcface", **{"backbone_width": 0.125}), orl4.faces[:4])


def test_demo_attacks_reassemble_tiles_first(orl4):
    from ppfr.data.base import TensorFaces
    from ppfr.experiments.demo import attack_model

    m = _tiled()
    aux = TensorFaces(orl4.faces[:20], orl4.labels[:20], orl4.classes)
    victims = TensorFaces(orl4.faces[20:], orl4.labels[20:], orl4.classes)
    scores, rows = attack_model(m, aux, victims, width=2, epochs=1, identity=False, progress=False)
    assert 0 <= scores["tiles"]["placed"] <= 1
    assert set(scores) == {"viewing", "tiles", "recovery"}
    assert 0 <= scores["recovery"]["leakage"] <= 1 and len(rows) == 3
