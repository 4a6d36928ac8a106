import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

import ppfr
from ppfr import freq
from ppfr.align import TEMPLATE
from ppfr.errors import CheckpointError, InputError
from ppfr.methods.duetface import (
    HIGH_CHANNELS,
    LOW_CHANNELS,
    Interaction,
    face_region_mask,
    minmax_normalise,
)
from tests.conftest import TINY_DUETFACE


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("duetface", num_classes=4, **{**TINY_DUETFACE, **extra}).eval()


# ---------------------------------------------------------------- the channel split
def test_channel_split():
    assert len(LOW_CHANNELS) == 30 and len(HIGH_CHANNELS) == 162
    assert sorted(LOW_CHANNELS + HIGH_CHANNELS) == list(range(192))
    per_colour = [0, 1, 2, 3, 4, 5, 8, 9, 16, 24]
    assert list(LOW_CHANNELS) == [c * 64 + i for c in range(3) for i in per_colour]


# ---------------------------------------------------------------- what the client sends
def test_representation_size_full_width():
    m = ppfr.create("duetface", parts=("client",))  # the size is known from the config
    maps = 64 * 28 * 28 + 128 * 14 * 14 + 128 * 7 * 7 + 512 * 7 * 7
    assert m.representation_shape == (162 * 112 * 112 + maps,)
    assert m.bytes_per_image == 4 * (2_032_128 + 106_624) == 8_555_008
    # the paper's count (high channels only) is 54x MinusFace's 3x112x112
    assert 162 * 112 * 112 == 54 * 3 * 112 * 112


def test_protect_packs_high_channels_and_client_maps(faces):
    m = _model()
    with torch.no_grad():
        p = m.protect(faces)
        high, maps = m.unpack(p)
        f = freq.encode(faces)
        expected_maps = m.client.feature_maps(f[:, list(LOW_CHANNELS)])
    assert p.shape == (4, *m.representation_shape) and p.dtype == torch.float32
    assert p[0].numel() * p.element_size() == m.bytes_per_image
    assert torch.equal(high, f[:, list(HIGH_CHANNELS)])  # raw coefficients
    assert [tuple(x.shape[1:]) for x in maps] == m.client_feature_shapes
    for got, want in zip(maps, expected_maps, strict=True):
        assert torch.equal(got, want)
    # layout: blocks are contiguous, in order, and cover the row
    offsets = [o for _, o, _ in m.layout]
    sizes = [math.prod(s) for _, _, s in m.layout]
    assert offsets == list(np.cumsum([0, *sizes[:-1]]))
    assert offsets[-1] + sizes[-1] == p.shape[1]
    assert torch.equal(m.pack(high, maps), p)
    # deterministic: the generator changes nothing
    with torch.no_grad():
        assert torch.equal(m.protect(faces, generator=torch.Generator().manual_seed(1)), p)


def test_bad_representations_are_refused(faces):
    m = _model()
    (total,) = m.representation_shape
    with pytest.raises(InputError, match=rf"expects representations of shape \(B, {total}\)"):
        m.embed(torch.zeros(2, total - 1))
    with pytest.raises(InputError, match="unpack: duetface expects"):
        m.unpack(torch.zeros(2, 162, 112, 112))
    with pytest.raises(InputError, match="float"):
        m.embed(torch.zeros(2, total, dtype=torch.int64))
    bad = torch.zeros(1, total)
    bad[0, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        m.view(bad)


def test_view_and_inversion_input(faces):
    m = _model()
    with torch.no_grad():
        p = m.protect(faces)
        v = m.view(p)
        inv = m.inversion_input(p)
        f = freq.encode(faces)
    assert v.shape == (4, 3, 112, 112) and v.min() >= 0 and v.max() <= 1
    f_zero_low = f.clone()
    f_zero_low[:, list(LOW_CHANNELS)] = 0
    assert torch.allclose(v, freq.decode(f_zero_low), atol=1e-6)
    # without the low channels the picture is grey, far from the face (it is x/2 + 1/2)
    assert (v - 0.5).abs().mean() < 0.5 * ((faces + 1) / 2 - 0.5).abs().mean()
    assert inv.shape == (4, 162, 112, 112)
    assert torch.allclose(inv, f[:, list(HIGH_CHANNELS)] / m.config.high_coef_scale)


def test_server_alone_embeds_what_the_client_sent(faces, tmp_path):
    m = _model()
    m.save(tmp_path / "b")
    client = ppfr.load(tmp_path / "b", part="client")
    server = ppfr.load(tmp_path / "b", part="server")
    assert server.representation_shape == m.representation_shape
    with torch.no_grad():
        assert torch.equal(server.embed(client.protect(faces)), m.embed(m.protect(faces)))


# ---------------------------------------------------------------- interaction blocks
def test_minmax_is_safe_on_constant_maps():
    const = torch.full((2, 1, 7, 7), 3.0)
    out = minmax_normalise(const)
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros_like(out))
    a = torch.randn(3, 1, 5, 5) * 10
    out = minmax_normalise(a)
    assert torch.allclose(out.flatten(1).min(1).values, torch.zeros(3))
    assert torch.allclose(out.flatten(1).max(1).values, torch.ones(3))
    # the gradient through a constant map is finite too
    x = const.clone().requires_grad_()
    minmax_normalise(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_interaction_starts_as_identity():
    torch.manual_seed(0)
    block = Interaction(8, 16)
    assert float(block.weight.detach()) == 0.0
    s, c = torch.randn(2, 16, 14, 14), torch.randn(2, 8, 7, 7)
    assert torch.equal(block(s, c), s)
    assert torch.equal(block(s, c, face_region_mask(14)), s)
    with torch.no_grad():
        block.weight.fill_(0.5)
    out = block(s, c)
    m = block.attention(c, (14, 14))
    assert m.shape == (2, 1, 14, 14) and 0 <= m.min() and m.max() <= 1
    assert torch.allclose(out, s * (1 + 0.5 * m))


def test_untrained_server_is_the_plain_ir_network(faces):
    m = _model()
    net = m.server.recognizer
    with torch.no_grad():
        high, maps = m.unpack(m.protect(faces))
        x = high / m.config.high_coef_scale
        plain = net.head(net.body(net.stem(x)))
        assert torch.equal(m.server(x, maps), plain)
        # with w = 0 the client's maps cannot matter yet
        assert torch.equal(m.server(x, [torch.randn_like(c) for c in maps]), plain)


def test_interaction_weights_belong_to_the_server():
    m = _model()
    server_keys = set(m.server.state_dict())
    for i in range(4):
        assert {f"interactions.{i}.conv.weight", f"interactions.{i}.weight"} <= server_keys
    assert not any("interaction" in k for k in m.client.state_dict())
    # the face masks are rebuilt from the config, not stored
    assert not any("region" in k for k in server_keys)
    # the 1x1 convs map client channels to the server stage's channels
    for block, (c, _, _), cs in zip(
        m.server.interactions,
        m.client_feature_shapes,
        m.server.recognizer.stage_channels,
        strict=True,
    ):
        assert block.conv.in_channels == c and block.conv.out_channels == cs


def test_interaction_conv_receives_gradients(faces):
    m = _model().train()
    with torch.no_grad():
        for block in m.server.interactions:
            block.weight.fill_(0.1)
    high, maps = m.client(faces)
    m.server(high / m.config.high_coef_scale, maps).pow(2).sum().backward()
    for block in m.server.interactions:
        assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0
        assert block.weight.grad.abs() > 0


# ---------------------------------------------------------------- face region
def test_face_region_mask_from_landmarks():
    full = face_region_mask(112)
    assert full.shape == (112, 112) and set(full.unique().tolist()) <= {0.0, 1.0}
    for x, y in TEMPLATE:  # every landmark is inside
        assert full[int(round(y)), int(round(x))] == 1
    for y, x in [(0, 0), (0, 111), (111, 0), (111, 111)]:  # corners are outside
        assert full[y, x] == 0
    # inside the landmarks' box widened by the dilation radius (0.5 x eye distance)
    radius = 0.5 * float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))
    ys, xs = torch.nonzero(full, as_tuple=True)
    lo, hi = TEMPLATE.min(0) - radius - 1, TEMPLATE.max(0) + radius + 1
    assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]
    # the margin dilates: no margin is the bare hull, strictly inside
    bare = face_region_mask(112, margin=0.0)
    assert (bare <= full).all() and bare.sum() < 0.6 * full.sum()
    # at the stage resolutions: area averages, still zero at the corners
    for side in (56, 28, 14, 7):
        small = face_region_mask(side)
        assert small.shape == (side, side) and small.min() >= 0 and small.max() == 1
        assert small[0, 0] == small[0, -1] == small[-1, 0] == small[-1, -1] == 0
        assert torch.isclose(small.mean(), full.mean())
    with pytest.raises(InputError, match="must divide 112"):
        face_region_mask(10)


def test_face_mask_flag(faces):
    on, off = _model(), _model(face_mask=False)
    assert on.server.region(0).shape == (56, 56) and off.server.region(0) is None
    with torch.no_grad():
        for model in (on, off):
            for block in model.server.interactions:
                block.weight.fill_(1.0)
        p = on.protect(faces[:2])
        _, maps = on.unpack(p)
        block = on.server.interactions[0]
        masked = block.attention(maps[0], (56, 56), on.server.region(0))
        free = block.attention(maps[0], (56, 56), None)
        assert masked[:, :, 0, 0].abs().max() == 0 and free.max() == 1
        assert not torch.allclose(on.embed(p), off.embed(p))


# ---------------------------------------------------------------- training
def test_both_stages_train(orl4, descend):
    torch.manual_seed(0)
    m = ppfr.create("duetface", num_classes=4, **TINY_DUETFACE)
    idx = torch.arange(0, 40, 5)  # 2 faces of each of the 4 people
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    s1, s2 = m.stages()
    assert [s1.name, s2.name] == ["client", "server"]
    # stage 1 trains the client and its own head, nothing of the server
    s1_params = {id(p) for g in s1.param_groups for p in g["params"]}
    assert {id(p) for p in m.client.parameters()} <= s1_params
    assert not {id(p) for p in m.server.parameters()} & s1_params
    server_before = {k: v.clone() for k, v in m.server.state_dict().items()}
    before, after, logs = descend(s1, x, y)
    assert set(logs) == {"id"} and after < before
    assert all(torch.equal(v, server_before[k]) for k, v in m.server.state_dict().items())

    # stage 2: the client is frozen (weights and BN statistics), the server learns
    client_after_1 = {k: v.clone() for k, v in m.client.state_dict().items()}
    assert s2.frozen == [m.client]
    before2, after2, _ = descend(s2, x, y)
    assert after2 < before2
    for k, v in m.client.state_dict().items():
        assert torch.equal(v, client_after_1[k]), k
    for block in m.server.interactions:
        assert float(block.weight.detach()) != 0.0  # w has left 0
    # while w was 0 the 1x1 conv's gradient was 0 too (its output is scaled by w): now that
    # w is not, the next step reaches it (test_interaction_conv_receives_gradients: any w)
    s2.module(x, y)[0].backward()
    for block in m.server.interactions:
        assert block.conv.weight.grad.abs().max() > 0


def test_trained_model_round_trip_and_client_bundle(orl4, tmp_path):
    m = _model()
    with torch.no_grad():  # stand in for training: non-zero w and moved convs
        for i, block in enumerate(m.server.interactions):
            block.weight.fill_(0.25 * (i + 1))
            block.conv.weight.mul_(-2.0)
    x = orl4.faces[:3]
    m.save(tmp_path / "full")
    back = ppfr.load(tmp_path / "full")
    with torch.no_grad():
        p, q = m.protect(x), back.protect(x)
        assert torch.equal(p, q) and torch.equal(m.embed(p), back.embed(q))
    assert [float(b.weight.detach()) for b in back.server.interactions] == [0.25, 0.5, 0.75, 1.0]

    m.save(tmp_path / "client", parts=["client"])
    with safe_open(tmp_path / "client" / "client.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("backbone.") for k in keys)
    assert not any("interaction" in k or "recognizer" in k or "head" in k for k in keys)
    with pytest.raises(CheckpointError, match="no server part"):
        ppfr.load(tmp_path / "client", part="server")
    client = ppfr.load(tmp_path / "client")
    with torch.no_grad():
        assert torch.equal(client.protect(x), p)


def test_config_checks():
    with pytest.raises(InputError, match="must be an IR network"):
        ppfr.create("duetface", backbone="mobilefacenet")
    with pytest.raises(InputError, match="high_coef_scale must be positive"):
        ppfr.create("duetface", high_coef_scale=0.0)
    with pytest.raises(InputError, match="mask_margin"):
        ppfr.create("duetface", mask_margin=-1.0)
