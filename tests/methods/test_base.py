"""The plumbing every method shares (ppfr.methods.base): scaling, parameter groups, defaults."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ppfr
from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._builders import Recognition, Rescale, build_head
from ppfr.methods.base import Client
from tests.conftest import TINY_CONFIGS

METHODS = ppfr.list_methods()


def _model(name, **extra):
    torch.manual_seed(0)
    return ppfr.create(name, num_classes=4, **TINY_CONFIGS[name], **extra).eval()


def test_rescale_is_exact():
    p = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    # X_p in [0, 1] -> [-1, 1] as (p - 0.5) / 0.5: the same floats as 2p - 1
    assert torch.equal(Rescale(divisor=0.5, shift=0.5)(p), 2 * p - 1)
    assert torch.equal(Rescale(divisor=0.3)(p), p / 0.3)
    assert Rescale()(p) is p


def test_recognition_scales_then_recognizes():
    net = nn.Linear(3, 2)
    plain, scaled = Recognition(net), Recognition(net, Rescale(divisor=4.0))
    x = torch.randn(5, 3)
    assert torch.equal(plain(x), net(x)) and torch.equal(scaled(x), net(x / 4.0))
    assert list(scaled.state_dict()) == ["recognizer.weight", "recognizer.bias"]


# DuetFace overrides embed: its server reads the unpacked high channels and the maps
@pytest.mark.parametrize("name", [m for m in METHODS if m != "duetface"])
def test_embed_is_the_normalised_server_output(name, faces):
    m = _model(name)
    with torch.no_grad():
        p = m.protect(faces, torch.Generator().manual_seed(0))
        assert torch.equal(m.embed(p), F.normalize(m.server(p)))


@pytest.mark.parametrize("name", METHODS)
def test_one_convention_for_the_range(name):
    rr = _model(name).representation_range
    assert rr is None or (len(rr) == 2 and all(math.isfinite(v) for v in rr) and rr[0] < rr[1])


@pytest.mark.parametrize("name", METHODS)
def test_stage_parameter_groups_cover_what_trains(name):
    m = _model(name)
    for stage in m.stages():
        params = [p for g in stage.param_groups for p in g["params"]]
        assert len({id(p) for p in params}) == len(params)  # no parameter in two groups
        assert all(g["lr_scale"] > 0 for g in stage.param_groups)
        frozen = {id(p) for f in stage.frozen for p in f.parameters()}
        assert not frozen & {id(p) for p in params}


def test_param_group_takes_modules_and_parameters():
    m = _model("dctdp")
    group = m.param_group(m.server, m.client.rho, lr_scale=3.0, weight_decay=0.0)
    assert group["params"] == [*m.server.parameters(), m.client.rho]
    assert group["lr_scale"] == 3.0 and group["weight_decay"] == 0.0


def test_default_view_and_inversion_input(faces):
    arcface = _model("arcface")
    p = arcface.protect(faces)
    assert torch.equal(arcface.view(p), ((p + 1) / 2).clamp(0, 1))
    assert arcface.inversion_input(p) is p
    minus = _model("minusface", shuffles=2)
    assert minus.stacked_images == 2
    with torch.no_grad():
        q = minus.protect(faces)
    assert torch.equal(minus.view(q), q[:, :3])


def test_default_view_refuses_a_representation_that_is_no_image():
    class Coefficients(type(_model("arcface"))):
        representation_range = None

    m = Coefficients(_model("arcface").config, parts=("client",))
    with pytest.raises(InputError, match="view"):
        m.view(torch.zeros(1, 3, 112, 112))


def test_a_model_knows_its_manifest(tmp_path):
    m = _model("arcface")
    assert m.manifest == {}
    m.save(tmp_path / "b")
    assert ppfr.load(tmp_path / "b").manifest["method"] == "arcface"


@pytest.mark.parametrize("name", METHODS)
def test_every_client_is_a_client_and_calling_it_protects(name, faces):
    m = _model(name)
    assert isinstance(m.client, Client)
    if name != "duetface":  # its forward returns the parts before packing
        torch.manual_seed(1)
        called = m.client(faces)
        torch.manual_seed(1)
        assert torch.equal(called, m.client.protect(faces))


def test_default_training_part_is_the_head():
    m = _model("arcface")
    assert list(m.train_part) == ["head"]
    assert type(m.train_part["head"]) is type(build_head(m.config))


def test_decode_channels_zero_fills_the_others():
    kept = [c for c in range(freq.NUM_CHANNELS) if c % 64]  # DCTDP's: all but DC
    p = torch.randn(2, len(kept), 112, 112, generator=torch.Generator().manual_seed(0))
    full = torch.zeros(2, freq.NUM_CHANNELS, 112, 112)
    full[:, kept] = p
    assert torch.equal(freq.decode_channels(p, kept), freq.decode(full))
