import pytest
import torch

import ppfr
from ppfr import freq, remap
from ppfr.errors import InputError
from tests.conftest import TINY_FRACFACE


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("fracface", num_classes=4, **{**TINY_FRACFACE, **extra}).eval()


def test_client_drops_the_low_frequencies_and_refines():
    m = _model()
    kept = m.client.kept.tolist()
    assert len(kept) == 162
    assert not set(kept) & set(freq.low_frequency_channels(3))
    assert m.client.refine[0].in_channels == 162 and m.client.refine[0].out_channels == 12
    assert _model(dropped_uv_sum=0).client.kept.numel() == 189  # only the DCs go


def test_protect_is_the_refined_map_with_its_tiles_in_the_fractal_order(faces):
    m = _model()
    with torch.no_grad():
        p, z = m.protect(faces), m.client.refined(faces)
    assert p.shape == (4, 12, 112, 112)
    assert torch.equal(p, remap.remap_tiles(z, remap.fractal_order(2), 4))
    assert not torch.equal(p, z)
    # the tiles are 28x28 and whole: top-left tile of p is tile fractal_order(2)[0] of z
    src = int(remap.fractal_order(2)[0])
    r, c = divmod(src, 4)
    assert torch.equal(p[:, :, :28, :28], z[:, :, 28 * r : 28 * r + 28, 28 * c : 28 * c + 28])
    # no randomness: the same faces give the same representation
    with torch.no_grad():
        assert torch.equal(m.protect(faces), p)


def test_attacks_read_the_tiles_put_back(faces, tmp_path):
    m = _model()
    with torch.no_grad():
        p, z = m.protect(faces), m.client.refined(faces)
    assert torch.equal(m.inversion_input(p), z)
    m.save(tmp_path / "b")
    server = ppfr.load(tmp_path / "b", part="server")  # the order comes from the config
    assert torch.equal(server.inversion_input(p), z)


def test_view_is_an_energy_picture(faces):
    m = _model()
    with torch.no_grad():
        v = m.view(m.protect(faces))
    assert v.shape == (4, 3, 112, 112) and v.min() >= 0 and v.max() <= 1
    assert torch.isclose(v.flatten(1).amax(1), torch.ones(4)).all()


def test_depth_zero_is_no_remap_and_bad_depth_is_refused(faces):
    m = _model(depth=0)
    with torch.no_grad():
        assert torch.equal(m.protect(faces), m.client.refined(faces))
    with pytest.raises(InputError, match="depth"):
        ppfr.create("fracface", depth=5)


def test_joint_training_updates_the_refining_layer(orl4, descend):
    torch.manual_seed(0)
    m = ppfr.create("fracface", num_classes=4, **TINY_FRACFACE)
    idx = torch.arange(0, 40, 3)
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    (stage,) = m.stages()
    w0 = m.client.refine[0].weight.detach().clone()
    before, after, logs = descend(stage, x, y)
    assert set(logs) == {"id"} and after < before
    assert not torch.equal(w0, m.client.refine[0].weight)
