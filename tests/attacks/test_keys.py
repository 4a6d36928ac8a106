import pytest
import torch

import ppfr
from ppfr import remap
from ppfr.attacks._inversion import own
from ppfr.attacks.keys import (
    KeylessView,
    client_order,
    key_recovery_curve,
    match_tiles,
    recover_order,
    sent,
    tile_statistics,
)
from ppfr.errors import InputError
from tests.conftest import TINY_FRACFACE

KEY = 12345


def _keyed(key=KEY, **extra):
    torch.manual_seed(0)
    return ppfr.create("fracface", num_classes=4, **TINY_FRACFACE, key=key, **extra).eval()


def test_a_keyed_client_uses_the_keyed_order_and_the_model_undoes_it(faces):
    m = _keyed()
    order = remap.keyed_order(4, KEY)
    assert torch.equal(m.client.order, order)
    assert not torch.equal(order, remap.fractal_order(2))
    with torch.no_grad():
        p, z = m.protect(faces), m.client.refined(faces)
    assert torch.equal(p, remap.remap_tiles(z, order, 4))
    assert torch.equal(m.inversion_input(p), z)  # the leaked-key case
    assert not torch.equal(_keyed(key=KEY + 1).client.order, order)


def test_the_key_survives_save_and_load(faces, tmp_path):
    m = _keyed()
    back = ppfr.load(m.save(tmp_path / "m"))
    assert back.config.key == KEY
    with torch.no_grad():
        assert torch.equal(back.protect(faces), m.protect(faces))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"key": -1}, "key must be in"),
        ({"key": True}, "integer or None"),
        ({"key": "7"}, "integer or None"),
        ({"key": 3, "depth": 0}, "depth >= 1"),
    ],
)
def test_bad_keys_are_refused(extra, match):
    with pytest.raises(InputError, match=match):
        ppfr.create("fracface", **TINY_FRACFACE, **extra)


def test_client_order_is_temporary_and_checked(faces):
    m = _keyed()
    before = m.client.order.clone()
    with client_order(m, torch.arange(16)):
        with torch.no_grad():
            assert torch.equal(m.protect(faces), m.client.refined(faces))
    assert torch.equal(m.client.order, before)
    with pytest.raises(InputError, match="permutation"):
        with client_order(m, torch.zeros(16, dtype=torch.long)):
            pass
    with pytest.raises(InputError, match="no fixed tile order"):
        with client_order(ppfr.create("arcface", backbone_width=0.125), torch.arange(16)):
            pass


def test_match_tiles_finds_a_permutation_of_distinct_statistics():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(16, 40, generator=g)
    order = torch.randperm(16, generator=g)
    observed = ref[order] + 0.01 * torch.randn(16, 40, generator=g)
    assert torch.equal(match_tiles(ref, observed), order)
    with pytest.raises(InputError, match="same"):
        match_tiles(ref, observed[:8])


def test_tile_statistics_shape_and_checks():
    s = tile_statistics(torch.randn(3, 5, 112, 112), grid=4, cells=2)
    assert s.shape == (3, 16, 3 * 5 * 4)
    with pytest.raises(InputError, match="multiples"):
        tile_statistics(torch.randn(3, 5, 110, 110), grid=4)


def test_the_order_is_recovered_from_protected_faces(orl4):
    # chance would place 1 tile in 16; aligned faces give every position its own statistics
    m = _keyed()
    order, placed = recover_order(m, orl4.faces[:20], sent(m, orl4.faces[20:]))
    assert placed >= 0.75
    assert placed == float((order == m.client.order).float().mean())
    curve = key_recovery_curve(m, orl4.faces[:20], orl4.faces[20:], counts=(1, 20), trials=3)
    assert curve["counts"] == [1, 20] and curve["placed_mean"][1] == pytest.approx(placed)
    assert all(0 <= v <= 1 for v in curve["placed_mean"] + curve["exact"])


def test_keyless_view_protects_its_own_faces_with_its_guess(faces):
    m = _keyed()
    guess = remap.fractal_order(2)
    view = KeylessView(m, guess)
    with torch.no_grad():
        mine, theirs = own(view).protect(faces), view.protect(faces)
        assert torch.equal(mine, remap.remap_tiles(m.client.refined(faces), guess, 4))
        assert torch.equal(theirs, m.protect(faces))  # the victims' come from the real key
        assert torch.equal(view.inversion_input(mine), m.client.refined(faces))
        assert not torch.equal(view.inversion_input(theirs), m.client.refined(faces))
        right = KeylessView(m, m.client.order)
        assert torch.equal(right.inversion_input(theirs), m.inversion_input(theirs))
    assert own(m) is m  # a model without protect_own protects the attacker's faces itself
    with pytest.raises(InputError, match="permutation"):
        KeylessView(m, torch.zeros(16, dtype=torch.long))


def test_demo_attacks_recover_the_key_first(orl4):
    from ppfr.data.base import TensorFaces
    from ppfr.experiments.bench import attack_figures
    from ppfr.experiments.demo import attack_model, attack_summary

    m = _keyed()
    aux = TensorFaces(orl4.faces[:20], orl4.labels[:20], orl4.classes)
    victims = TensorFaces(orl4.faces[20:], orl4.labels[20:], orl4.classes)
    scores, rows = attack_model(m, aux, victims, width=2, epochs=1, identity=False, progress=False)
    assert set(scores) == {"viewing", "key", "recovery"}
    assert scores["key"]["placed"] >= 0.75 and len(rows) == 3
    assert "key recovered" in attack_summary(scores)
    assert attack_figures(scores)["key_placed"] == scores["key"]["placed"]


def test_demo_attacks_keep_the_attackers_own_guess(orl4):
    # an attacker already holding a (wrong) guess is attacked as it is, not re-keyed
    from ppfr.data.base import TensorFaces
    from ppfr.experiments.demo import attack_model

    m = _keyed()
    aux = TensorFaces(orl4.faces[:20], orl4.labels[:20], orl4.classes)
    victims = TensorFaces(orl4.faces[20:], orl4.labels[20:], orl4.classes)
    view = KeylessView(m, remap.fractal_order(2))
    scores, _ = attack_model(view, aux, victims, width=2, epochs=1, identity=False, progress=False)
    assert "key" not in scores and set(scores) == {"viewing", "recovery"}
