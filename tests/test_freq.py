"""ppfr.freq against the transform's definition (docs/design.md), written here independently."""

import math

import pytest
import torch
import torch.nn.functional as F

from ppfr import freq
from ppfr.errors import InputError
from tests.conftest import DEVICES


def _dct8(dtype):
    a = torch.arange(8, dtype=torch.float64)
    d = torch.stack([torch.cos(math.pi * (2 * a + 1) * u / 16) for u in range(8)])
    d[0] /= math.sqrt(8)
    d[1:] *= math.sqrt(2 / 8)
    return d.to(dtype)


def reference_encode(x):
    """The definition, step by step, on the full 896x896 image."""
    p = (x + 1) / 2 * 255
    up = F.interpolate(p, scale_factor=8, mode="bilinear", align_corners=True)
    r, g, b = up.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    ycc = torch.stack([y, cb, cr], 1) - 128
    n = x.shape[0]
    blocks = ycc.view(n, 3, 112, 8, 112, 8)  # n, colour, I, a, J, b
    d = _dct8(x.dtype)
    coef = torch.einsum("ua,vb,ncIaJb->ncuvIJ", d, d, blocks)
    return coef.reshape(n, 192, 112, 112)


def reference_decode(f):
    n = f.shape[0]
    d = _dct8(f.dtype)
    blocks = torch.einsum("ua,vb,ncuvIJ->ncIaJb", d, d, f.view(n, 3, 8, 8, 112, 112))
    ycc = blocks.reshape(n, 3, 896, 896) + 128
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    small = F.interpolate(rgb / 255, size=(112, 112), mode="bilinear", align_corners=True)
    return small.clamp(0, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_encode_matches_definition(device):
    x = (torch.rand(2, 3, 112, 112, dtype=torch.float64) * 2 - 1).to(device)
    ref = reference_encode(x)
    assert (freq.encode(x) - ref).abs().max() < 1e-6
    out32 = freq.encode(x.float())
    assert out32.dtype == torch.float32
    assert (out32.double() - ref).abs().max() < 1e-3
    assert ref.abs().max() > 100  # coefficients really are large: the tolerance is meaningful


def test_channel_layout():
    # a horizontal cosine at the block frequency v=1 lights up channel Y(0, 1) most
    x = torch.zeros(1, 3, 112, 112, dtype=torch.float64)
    f = freq.encode(x)
    assert torch.allclose(f[0, 0], torch.full((112, 112), -4.0, dtype=torch.float64))  # Y DC
    assert f[0, 1:].abs().max() < 1e-9  # a flat mid-grey image has only DC, and Cb/Cr DC = 0
    assert freq.channel_index("Cr", 2, 3) == 128 + 19
    assert freq.channel_uv(147) == (2, 3) and freq.channel_colour(147) == 2
    assert freq.low_frequency_channels(3, colours=(0,)) == [0, 1, 2, 3, 8, 9, 10, 16, 17, 24]
    with pytest.raises(InputError):
        freq.channel_uv(192)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_definition(device):
    f = freq.encode(torch.rand(2, 3, 112, 112, dtype=torch.float64).to(device) * 2 - 1)
    f = f + torch.randn_like(f) * 5  # off the image manifold too
    assert (freq.decode(f) - reference_decode(f)).abs().max() < 1e-6


def test_unclamped_decode_is_the_linear_map():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, freq.NUM_CHANNELS, freq.SIZE, freq.SIZE, generator=g) * 400
    raw = freq.decode(f, clamp=False)
    assert raw.min() < -0.5 and raw.max() > 1.5  # large coefficients leave [0, 1]
    torch.testing.assert_close(freq.decode(f), raw.clamp(0, 1))
    # linear up to the constant colour shift: d(a f + b g) = a d(f) + b d(g) - (a + b - 1) d(0)
    h = torch.randn_like(f)
    zero = freq.decode(torch.zeros_like(f), clamp=False)
    mixed = freq.decode(2 * f - 3 * h, clamp=False)
    expect = 2 * raw - 3 * freq.decode(h, clamp=False) + 2 * zero
    torch.testing.assert_close(mixed, expect, rtol=1e-4, atol=1e-3)


def test_compiled_encode_agrees_with_the_torch_passes(monkeypatch):
    from ppfr._jit import LazyKernel

    assert freq._ENCODE.get() is not None, freq._ENCODE.error  # numba is a dependency
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compiled = freq.encode(x)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)  # the batch split across two threads: the same values
    try:
        torch.testing.assert_close(freq.encode(x), compiled, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(freq, "_ENCODE", LazyKernel.unavailable("no numba"))
    torch.testing.assert_close(freq.encode(x), compiled, rtol=1e-5, atol=1e-3)


def test_roundtrip_up_to_resampling():
    # smooth faces survive almost exactly; sharp noise loses only what resampling loses
    smooth = F.avg_pool2d(torch.rand(2, 3, 112, 112), 7, 1, 3) * 2 - 1
    back = freq.decode(freq.encode(smooth))
    assert back.shape == (2, 3, 112, 112) and back.min() >= 0 and back.max() <= 1
    assert (back - (smooth + 1) / 2).abs().mean() < 5e-3
    noise = torch.rand(2, 3, 112, 112) * 2 - 1
    resampled = F.interpolate(
        F.interpolate((noise + 1) / 2, scale_factor=8, mode="bilinear", align_corners=True),
        size=(112, 112),
        mode="bilinear",
        align_corners=True,
    )
    assert (freq.decode(freq.encode(noise)) - resampled).abs().max() < 1e-4


def test_gradients_match_reference():
    x = (torch.rand(1, 3, 112, 112, dtype=torch.float64) * 2 - 1).requires_grad_()
    w = torch.randn(1, 192, 112, 112, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((freq.encode(x) * w).sum(), x)
    (g_ref,) = torch.autograd.grad((reference_encode(x) * w).sum(), x)
    assert torch.allclose(g_fast, g_ref, atol=1e-8)
    f = freq.encode(x.detach()).requires_grad_()
    v = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    (h_fast,) = torch.autograd.grad((freq.decode(f) * v).sum(), f)
    (h_ref,) = torch.autograd.grad((reference_decode(f) * v).sum(), f)
    assert torch.allclose(h_fast, h_ref, atol=1e-8)


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_any_batch_size(batch):
    x = torch.zeros(batch, 3, 112, 112)
    assert freq.encode(x).shape == (batch, 192, 112, 112)
    assert freq.decode(freq.encode(x)).shape == (batch, 3, 112, 112)


def test_modules():
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    assert torch.equal(freq.Encode()(x), freq.encode(x))
    assert torch.equal(freq.Decode()(freq.encode(x)), freq.decode(freq.encode(x)))


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 112, 112), "shape"),
        (torch.zeros(1, 1, 112, 112), "shape"),
        (torch.zeros(1, 3, 96, 112), "shape"),
        (torch.zeros(1, 3, 112, 112, dtype=torch.uint8), "float32 or float64"),
        (torch.zeros(1, 3, 112, 112, dtype=torch.float16), "float32 or float64"),
        (torch.full((1, 3, 112, 112), 255.0), r"\[-1, 1\]"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_encode_rejects_bad_input(bad, message):
    with pytest.raises(InputError, match=message):
        freq.encode(bad)


def test_decode_rejects_wrong_channels():
    with pytest.raises(InputError, match="192"):
        freq.decode(torch.zeros(1, 3, 112, 112))


def test_encode_into_preallocated_output():
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    buf = torch.empty(2, 192, 112, 112)
    assert freq.encode(x, out=buf) is buf
    assert torch.equal(buf, freq.encode(x))
    with pytest.raises(InputError, match="out must be"):
        freq.encode(x, out=torch.empty(3, 192, 112, 112))
    with pytest.raises(InputError, match="requires grad"):
        freq.encode(x.requires_grad_(), out=buf)


def test_first_use_under_inference_mode_does_not_break_autograd():
    freq._bases.cache_clear()
    freq._bases_cpu64.cache_clear()
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        freq.decode(freq.encode(x))
    y = x.clone().requires_grad_()
    freq.decode(freq.encode(y)).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


# ---- coefficient statistics


def test_coefficient_range_is_the_worst_case():
    d = _dct8(torch.float64)
    channels = [0, 1, 9, 63, 64 + 17, 128 + 40]
    expected = [
        255 * float(torch.outer(d[u], d[v]).abs().sum()) for u, v in map(freq.channel_uv, channels)
    ]
    assert torch.allclose(
        freq.coefficient_range(channels), torch.tensor(expected, dtype=torch.float64)
    )
    # an AC coefficient is centred: no face, random or extreme, exceeds half its range
    bound = freq.coefficient_range(range(freq.NUM_CHANNELS)) / 2
    ac = torch.tensor([c % 64 != 0 for c in range(freq.NUM_CHANNELS)])
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(4, 3, 112, 112, generator=gen) * 2 - 1, torch.ones(1, 3, 112, 112)])
    x = torch.cat([x, torch.sign(torch.randn(3, 3, 112, 112, generator=gen))])
    peak = freq.encode(x.double()).abs().amax((0, 2, 3))
    assert (peak[ac] <= bound[ac] * (1 + 1e-9)).all()


class _Faces:
    def __init__(self, n):
        self.x = torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def __len__(self):
        return len(self.x)

    def stack(self, idx):
        return self.x[idx].numpy()


def test_sample_coefficients_encodes_a_random_sample_in_batches():
    data = _Faces(7)
    gen = torch.Generator().manual_seed(3)
    seen = []
    batches = list(
        freq.sample_coefficients(
            data, 5, generator=gen, batch_size=2, check=lambda x: seen.append(len(x)) or x
        )
    )
    assert [len(b) for b in batches] == [2, 2, 1] and seen == [2, 2, 1]
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(torch.cat(batches), freq.encode(data.x[order]))
    # only the permutation was drawn: the caller's next draws continue from there
    ref = torch.Generator().manual_seed(3)
    torch.randperm(7, generator=ref)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=ref))
    assert sum(len(b) for b in freq.sample_coefficients(data, 100)) == 7


# ---- the transform composed with a network's first and last layer


def test_encode_conv_is_the_convolution_of_the_encoding():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 112, 112, generator=g, dtype=torch.float64) * 2 - 1
    x[0] = 1.0  # a flat image: every block but the borders' sees the same neighbourhood
    w = torch.randn(5, 192, 3, 3, generator=g, dtype=torch.float64)
    direct = F.conv2d(reference_encode(x), w, padding=1)
    got = freq.encode_conv(x, freq.encode_conv_kernel(w))
    assert got.shape == (3, 5, 112, 112) and got.dtype == torch.float64
    # float64 all the way: equal to rounding, the zero-padded border included
    assert torch.allclose(got, direct, rtol=0, atol=1e-9 * direct.abs().max())
    w32, x32 = w.float(), x.float()
    got32 = freq.encode_conv(x32, freq.encode_conv_kernel(w32))
    assert got32.dtype == torch.float32
    assert (got32 - direct).abs().max() < 1e-5 * direct.abs().max()


def test_decode_linear_is_the_decoding_of_the_layer():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 6, 112, 112, generator=g, dtype=torch.float64)
    w = torch.randn(2, 192, 6, generator=g, dtype=torch.float64) * 20
    b = torch.randn(2, 192, generator=g, dtype=torch.float64) * 20
    f = torch.einsum("bcj,bjhw->bchw", w, h) + b[:, :, None, None]
    direct = reference_decode(f).clamp(0, 1)
    got = freq.decode_linear(h, w, b)
    assert got.shape == (2, 3, 112, 112)
    assert 0 < (direct > 0).float().mean() < 1  # the clamp matters on this input
    # the definition's colour constants are rounded (as in test_decode_matches_definition);
    # against decode itself the composition is exact to float64 rounding
    assert torch.allclose(got, direct, rtol=0, atol=1e-5)
    assert torch.allclose(got, freq.decode(f), rtol=0, atol=1e-12)
    # one weight for the whole batch is the same as that weight repeated per image
    assert torch.equal(
        freq.decode_linear(h, w[0], b[0]),
        freq.decode_linear(h, w[:1].expand(2, -1, -1), b[:1].expand(2, -1)),
    )


_FACES, _KERNEL = torch.zeros(1, 3, 112, 112), torch.zeros(112 * 112, 75, 4)
_H, _W, _B = torch.zeros(1, 4, 112, 112), torch.zeros(192, 4), torch.zeros(192)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: freq.encode_conv_kernel(torch.zeros(4, 191, 3, 3)), r"\(O, 192, 3, 3\)"),
        (lambda: freq.encode_conv(_FACES, torch.zeros(10, 75, 4)), "kernel"),
        (lambda: freq.encode_conv(_FACES + 2, _KERNEL), r"\[-1, 1\]"),
        (lambda: freq.decode_linear(_H[..., :56, :56], _W, _B), r"\(B, C, 112, 112\)"),
        (lambda: freq.decode_linear(_H, _W[1:], _B), "weight must be"),
        (lambda: freq.decode_linear(_H, _W, _B[None]), "weight must be"),
    ],
)
def test_composed_transforms_reject_bad_input(call, message):
    with pytest.raises(InputError, match=message):
        call()
