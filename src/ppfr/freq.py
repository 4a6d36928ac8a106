r"""The block-DCT frequency transform ``e`` and its inverse ``d`` (docs/design.md).

``encode`` maps aligned faces in [-1, 1] to 192 frequency channels:

1. :math:`p = 255 \cdot (x + 1) / 2`;
2. upsample x8, bilinear with ``align_corners=True`` (112 -> 896);
3. RGB -> YCbCr (JPEG / BT.601 full range), minus 128;
4. orthonormal 8x8 DCT-II of every non-overlapping block of every colour plane;
5. channel ``colour * 64 + u * 8 + v`` (colours Y, Cb, Cr; ``u`` vertical and ``v``
   horizontal frequency, row-major), one spatial cell per block: (192, 112, 112).

``decode`` runs the steps backwards (inverse DCT, +128, YCbCr -> RGB, /255, bilinear x1/8
with ``align_corners=True``, clamp to [0, 1]); its output is in [0, 1], not [-1, 1].

How it is computed. Every step is linear (plus a constant) and acts on rows and columns
separately, so for a colour plane :math:`c` (112x112, colour conversion done first, which
commutes with the resampling because each interpolation row sums to one)

.. math:: F_{uv}[I, J] = \sum_{k,l} W_u[I, k]\, c[k, l]\, W_v[J, l],
   \qquad W_u[I, k] = \sum_a D[u, a]\, U[8I + a, k]

with :math:`U` the 896x112 upsampling matrix and :math:`D` the 8x8 DCT matrix. One block row
``8I..8I+7`` of the upsampled image interpolates only input rows ``I-1..I+1``, so
:math:`W_u` is a band of width 3: ``encode`` applies it to rows (small), then writes the
output with three multiply-adds of shifted column windows, never building the 3x896x896
image. ``decode`` needs, for output row ``k``, only the two upsampled rows it
interpolates, and both lie in block row ``k``: the inverse DCT along ``u`` and the two
taps fold into one weight per ``(u, k)``, so the rows are eight multiply-adds that read
the coefficients once (and the same along columns). ``encode`` costs a few passes over the
192x112x112 output, ``decode`` one over its input
(see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr._jit import LazyKernel
from ppfr.errors import InputError

SIZE = 112  # side of an aligned face and of the frequency maps
SCALE = 8  # upsampling factor = DCT block size
NUM_CHANNELS = 3 * SCALE * SCALE  # 192
COLOURS = ("Y", "Cb", "Cr")

# RGB (0..255) -> YCbCr - 128, JPEG / BT.601 full range.
_RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCC_SHIFT = (-128.0, 0.0, 0.0)  # Y - 128; Cb and Cr already centred by the -128 of step 3


# --------------------------------------------------------------------------- channel helpers
def channel_index(colour: int | str, u: int, v: int) -> int:
    """Channel of colour ``colour`` (0..2 or "Y"/"Cb"/"Cr") and frequency ``(u, v)``.

    Example:
        >>> channel_index("Cb", 0, 0), channel_index(0, 1, 2)
        (64, 10)
    """
    c = COLOURS.index(colour) if isinstance(colour, str) else int(colour)
    if not (0 <= c < 3 and 0 <= u < SCALE and 0 <= v < SCALE):
        raise InputError(f"no channel for colour={colour!r}, u={u}, v={v}")
    return c * 64 + u * SCALE + v


def channel_colour(index: int) -> int:
    """Colour (0 = Y, 1 = Cb, 2 = Cr) of a channel index."""
    _check_channel(index)
    return index // 64


def channel_uv(index: int) -> tuple[int, int]:
    """Frequency ``(u, v)`` (vertical, horizontal) of a channel index."""
    _check_channel(index)
    return divmod(index % 64, SCALE)


def low_frequency_channels(max_uv_sum: int, colours: tuple[int, ...] = (0, 1, 2)) -> list[int]:
    """Channels with ``u + v <= max_uv_sum`` in the given colours, ascending.

    Example:
        >>> low_frequency_channels(0)  # the three DC channels
        [0, 64, 128]
    """
    return [
        channel_index(c, u, v)
        for c in colours
        for u in range(SCALE)
        for v in range(SCALE)
        if u + v <= max_uv_sum
    ]


def _check_channel(index: int) -> None:
    if not 0 <= index < NUM_CHANNELS:
        raise InputError(f"channel index must be in 0..{NUM_CHANNELS - 1}, got {index}")


# --------------------------------------------------------------------------- bases
def dct_matrix(n: int = SCALE, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix ``D[u, a]`` (so a block's coefficients are ``D X D^T``)."""
    a = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * a[None, :] + 1) * a[:, None] / (2 * n))
    d[0] *= math.sqrt(1.0 / n)
    d[1:] *= math.sqrt(2.0 / n)
    return d.to(dtype)


def resize_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resampling with ``align_corners=True``."""
    idx, w = _taps(n_in, n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    return m.index_put_((torch.arange(n_out)[:, None].expand_as(idx), idx), w, accumulate=True)


def _taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Bilinear ``align_corners=True`` taps: output i reads inputs ``idx[i]`` with ``w[i]``."""
    pos = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = pos.floor().long().clamp(max=n_in - 1)
    frac = pos - lo
    return torch.stack([lo, (lo + 1).clamp(max=n_in - 1)], 1), torch.stack([1 - frac, frac], 1)


@cache
@torch.inference_mode(False)
def _bases_cpu64() -> dict[str, Tensor]:
    d = dct_matrix()
    # encode: W[I, u, k] = sum_a D[u, a] U[8I + a, k]. Block row I reads input rows
    # I-1..I+1 only, so with one zero row of padding on each side the band of block I
    # starts at padded row I: band[I, u, t] = W[I, u, I - 1 + t].
    up = resize_matrix(SIZE, SIZE * SCALE)
    w = torch.nn.functional.pad(torch.einsum("ua,iak->iuk", d, up.view(SIZE, SCALE, SIZE)), (1, 1))
    window = torch.arange(SIZE)[:, None] + torch.arange(3)
    band = torch.gather(w, 2, window[:, None, :].expand(-1, SCALE, -1))
    if not torch.allclose(band.abs().sum(), w.abs().sum()):
        raise AssertionError("encode band misses weights")  # construction invariant
    # decode: output pixel k reads upsampled pixels taps[k] = (m, m + 1) with weights;
    # pixel m is row m % 8 of block m // 8. Both taps of output k lie in block k, so the
    # inverse DCT of that block and the two taps fold into one weight per coefficient u:
    # fold[u, k] = sum over taps of w * D[offset, u]
    taps, tap_w = _taps(SIZE * SCALE, SIZE)
    if not torch.equal(taps // SCALE, torch.arange(SIZE)[:, None].expand(-1, 2)):
        raise AssertionError("decode taps leave their block")  # construction invariant
    fold = torch.einsum("kt,ktu->uk", tap_w, d.t()[taps % SCALE])
    m = torch.tensor(_RGB_TO_YCC, dtype=torch.float64)
    shift = torch.tensor(_YCC_SHIFT, dtype=torch.float64)
    return {
        "enc_band": band,  # (I, u, t)
        "enc_cols": band.permute(2, 1, 0).contiguous(),  # (t, v, J)
        "dec_fold": fold.contiguous(),  # (u, k): coefficient u of block k -> pixel k
        # x in [-1, 1] -> YCbCr - 128 in one affine step: 127.5 * M (x + 1) + shift
        "ycc_w": 127.5 * m,
        "ycc_b": 127.5 * m.sum(1) + shift,
        # YCbCr - 128 -> RGB in [0, 1]: M^-1 (y - shift) / 255
        "rgb_w": torch.linalg.inv(m) / 255.0,
        "rgb_shift": shift,
    }


@lru_cache(maxsize=32)
def _bases(device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    # cached tensors made inside inference_mode could never join autograd later
    with torch.inference_mode(False):
        return {
            k: t.to(device) if t.dtype == torch.long else t.to(device=device, dtype=dtype)
            for k, t in _bases_cpu64().items()
        }


def _check(x: Tensor, channels: int, what: str) -> None:
    if not isinstance(x, Tensor):
        raise InputError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1:] != (channels, SIZE, SIZE):
        raise InputError(
            f"{what}: expected shape (B, {channels}, {SIZE}, {SIZE}), got {tuple(x.shape)}"
        )
    if x.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{what}: expected float32 or float64, got {x.dtype}")


# --------------------------------------------------------------------------- transforms
def encode(x: Tensor, *, check_range: bool = True, out: Tensor | None = None) -> Tensor:
    r"""Frequency transform ``e``: faces in [-1, 1] -> 192 block-DCT channels.

    Args:
        x: aligned RGB faces, values in [-1, 1].
        check_range: reject inputs outside [-1, 1] (with a small tolerance).
        out: optional preallocated (B, 192, 112, 112) result tensor (same dtype and device),
            for loops that encode batch after batch: reusing it saves the page faults of a
            fresh ~10 MB-per-image allocation (docs/benchmarks.md). Not differentiable.

    Shape:
        - x: :math:`(B, 3, 112, 112)`, float32 or float64
        - output: :math:`(B, 192, 112, 112)`, same dtype and device

    Example:
        >>> f = encode(torch.zeros(2, 3, 112, 112))
        >>> f.shape, round(float(f[0, 0, 0, 0]), 3)  # mid-grey: Y DC = 8 * (127.5 - 128)
        (torch.Size([2, 192, 112, 112]), -4.0)
    """
    _check(x, 3, "encode")
    if check_range:
        _check_faces_range(x, "encode")
    with torch.autocast(x.device.type, enabled=False):
        b = _bases(x.device, x.dtype)
        n = x.shape[0]
        # colour first, at 112x112: YCbCr - 128
        c = torch.einsum("oc,bchw->bohw", b["ycc_w"], x) + b["ycc_b"].view(1, 3, 1, 1)
        padded = F.pad(c, (0, 0, 1, 1))  # one zero row above and below
        if torch.is_grad_enabled() and x.requires_grad:
            if out is not None:
                _check_out(out, x, differentiable=True)
            return _encode_separable(padded, b)
        if out is None:
            out = torch.empty(n, NUM_CHANNELS, SIZE, SIZE, dtype=x.dtype, device=x.device)
        _check_out(out, x, differentiable=False)
        if x.device.type == "cpu" and x.dtype == torch.float32 and _ENCODE.get() is not None:
            # one compiled pass that writes every output value once (the separable passes
            # write it three times): docs/benchmarks.md
            _encode_compiled(padded, b, out)
            return out
        return _encode_separable(padded, b, out)


def _encode_separable(padded: Tensor, b: dict[str, Tensor], out: Tensor | None = None) -> Tensor:
    """``encode``'s two separable steps in PyTorch ops, from the YCbCr - 128 images with one
    zero row above and below: differentiable, any device and dtype. Into ``out`` when given
    (not differentiable), else a new tensor.

    Shape:
        padded :math:`(B, 3, 114, 112)` -> :math:`(B, 192, 112, 112)`
    """
    n = padded.shape[0]
    # rows: t1[b, c, u, I, l] = sum_t band[I, u, t] * c_padded[b, c, I + t, l]
    rows = padded.unfold(2, 3, 1)  # (B, 3, I, l, t), a view
    t1 = F.pad(torch.einsum("iut,bcilt->bcuil", b["enc_band"], rows), (1, 1))
    t1 = t1[:, :, :, None]  # (B, 3, u, 1, I, 114): broadcast over v
    # columns: out[b, c, u, v, I, J] = sum_t band[J, v, t] * t1_padded[b, c, u, I, J + t];
    # three multiply-adds that each write the output once, in its final layout
    w = [b["enc_cols"][t][:, None, :] for t in range(3)]  # (v, 1, J)
    taps = [t1[..., t : t + SIZE] for t in range(3)]
    if out is None:
        return (taps[0] * w[0] + taps[1] * w[1] + taps[2] * w[2]).reshape(
            n, NUM_CHANNELS, SIZE, SIZE
        )
    view = out.view(n, 3, SCALE, SCALE, SIZE, SIZE)
    torch.mul(taps[0], w[0], out=view)
    view.addcmul_(taps[1], w[1]).addcmul_(taps[2], w[2])
    return out


def _encode_planes_py(cpad, band, cols, out):  # pragma: no cover - run compiled
    """``encode``'s two separable steps for float32 images ``cpad`` (YCbCr - 128, one zero
    row above and below), written into ``out`` one (colour, u, v) plane at a time.

    Per colour and row frequency u, the rows step ``t1[I, 1 + l] = sum_t band[I, u, t] *
    cpad[I + t, l]`` (zero-padded to 114 columns) stays in L1/L2; every plane
    ``out[I, J] = sum_t t1[I, J + t] * cols[t, v, J]`` is then written once, contiguously.

    Shape:
        cpad ``(B, 3, 114, 112)``; band ``(112, 8, 3)``; cols ``(3, 8, 112)``;
        out ``(B, 192, 112, 112)``.
    """
    t1 = np.zeros((SIZE, SIZE + 2), np.float32)
    for b in range(cpad.shape[0]):
        for colour in range(3):
            img = cpad[b, colour]
            for u in range(SCALE):
                for i in range(SIZE):
                    w0, w1, w2 = band[i, u, 0], band[i, u, 1], band[i, u, 2]
                    for col in range(SIZE):
                        t1[i, col + 1] = (
                            w0 * img[i, col] + w1 * img[i + 1, col] + w2 * img[i + 2, col]
                        )
                for v in range(SCALE):
                    plane = out[b, (colour * SCALE + u) * SCALE + v]
                    c0, c1, c2 = cols[0, v], cols[1, v], cols[2, v]
                    for i in range(SIZE):
                        for j in range(SIZE):
                            plane[i, j] = (
                                t1[i, j] * c0[j] + t1[i, j + 1] * c1[j] + t1[i, j + 2] * c2[j]
                            )
    return 0


def _build_encode() -> Any:
    import numba

    kernel = numba.njit(
        cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"}
    )(_encode_planes_py)
    # compile (or load from numba's cache) now, on one image, and check it once against
    # the separable passes, so a machine where it misbehaves keeps the torch path
    g = torch.Generator().manual_seed(0)
    cpad = F.pad(torch.randn(1, 3, SIZE, SIZE, generator=g) * 100, (0, 0, 1, 1))
    b = _bases(torch.device("cpu"), torch.float32)
    got = np.empty((1, NUM_CHANNELS, SIZE, SIZE), np.float32)
    kernel(cpad.numpy(), b["enc_band"].numpy(), b["enc_cols"].numpy(), got)
    if not np.allclose(got, _encode_separable(cpad, b).numpy(), rtol=1e-4, atol=1e-3):
        raise RuntimeError("the compiled encode disagrees with the separable passes")
    return kernel


#: the compiled :func:`_encode_planes_py` (None where numba is missing or fails)
_ENCODE = LazyKernel(_build_encode)


def _encode_compiled(cpad: Tensor, b: dict[str, Tensor], out: Tensor) -> None:
    """Run the compiled encode over the batch, split across torch's thread count (the
    kernel releases the GIL)."""
    kernel, band, cols = _ENCODE.get(), b["enc_band"].numpy(), b["enc_cols"].numpy()
    src, dst = cpad.contiguous().numpy(), out.numpy()
    workers = min(torch.get_num_threads(), len(src))
    if workers <= 1:
        kernel(src, band, cols, dst)
        return
    bounds = np.linspace(0, len(src), workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(kernel, src[lo:hi], band, cols, dst[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        for job in jobs:
            job.result()


def _check_faces_range(x: Tensor, what: str) -> None:
    if not x.numel():
        return
    lo, hi = torch.aminmax(x.detach())
    if lo < -1.001 or hi > 1.001:
        raise InputError(
            f"{what}: faces must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
            "(scale pixels as (x/255 - 0.5)/0.5)"
        )


def _check_out(out: Tensor, x: Tensor, differentiable: bool) -> None:
    if differentiable:
        raise InputError("encode: out= cannot be used when x requires grad")
    want = (x.shape[0], NUM_CHANNELS, SIZE, SIZE)
    if tuple(out.shape) != want or out.dtype != x.dtype or out.device != x.device:
        raise InputError(
            f"encode: out must be a {x.dtype} tensor of shape {want} on {x.device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    if not out.is_contiguous():
        raise InputError("encode: out must be contiguous")


def decode(f: Tensor, *, clamp: bool = True) -> Tensor:
    r"""Inverse transform ``d``: 192 block-DCT channels -> RGB image in [0, 1].

    ``decode(encode(x))`` equals ``(x + 1) / 2`` up to the resampling error of the x8 / ÷8
    pair (bilinear resampling is not exactly invertible). ``clamp=False`` returns the
    linear map without the final clamp to [0, 1]: a loss on it keeps its gradient where the
    image saturates (MinusFace's stage 1 needs that).

    Shape:
        - f: :math:`(B, 192, 112, 112)`, float32 or float64
        - output: :math:`(B, 3, 112, 112)`, in [0, 1] unless ``clamp=False``

    Example:
        >>> x = torch.rand(1, 3, 112, 112) * 2 - 1
        >>> bool((decode(encode(x)) - (x + 1) / 2).abs().mean() < 0.05)
        True
    """
    _check(f, NUM_CHANNELS, "decode")
    with torch.autocast(f.device.type, enabled=False):
        b = _bases(f.device, f.dtype)
        fold = b["dec_fold"]  # (u, k)
        f6 = f.reshape(f.shape[0], 3, SCALE, SCALE, SIZE, SIZE)  # (B, colour, u, v, I, J)
        # rows: output row k reads block row k only, so the inverse DCT along u and the
        # downsampling are one weighted sum over u: eight multiply-adds that each read an
        # eighth of the coefficients once and write a 1/8-size result
        rows = torch.mul(f6[:, :, 0], fold[0].view(SIZE, 1))  # (B, 3, v, k, J)
        for u in range(1, SCALE):
            rows.addcmul_(f6[:, :, u], fold[u].view(SIZE, 1))
        # columns: the same fold along v and J
        y = torch.mul(rows[:, :, 0], fold[0])  # (B, 3, k, l)
        for v in range(1, SCALE):
            y.addcmul_(rows[:, :, v], fold[v])
        y = y - b["rgb_shift"].view(1, 3, 1, 1)
        rgb = torch.einsum("oc,bchw->bohw", b["rgb_w"], y)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def decode_channels(coefficients: Tensor, channels: Sequence[int]) -> Tensor:
    """``d`` of some of the 192 channels, every other channel zero: how a representation
    that sends only those channels looks (DuetFace's high channels, DCTDP's non-DC ones).

    Shape:
        - coefficients: :math:`(B, C, 112, 112)`, channel ``i`` being ``channels[i]``
        - output: :math:`(B, 3, 112, 112)` in [0, 1]

    Example:
        >>> ac = [c for c in range(NUM_CHANNELS) if c % 64]  # all but each colour's DC
        >>> img = decode_channels(encode(torch.zeros(1, 3, 112, 112))[:, ac], ac)
        >>> img.shape, bool((img - 0.5).abs().max() < 0.01)
        (torch.Size([1, 3, 112, 112]), True)
    """
    full = coefficients.new_zeros(len(coefficients), NUM_CHANNELS, SIZE, SIZE)
    full[:, list(channels)] = coefficients
    return decode(full)


# --------------------------------------------------------------------------- composed with a layer
# A network that reads the 192 channels starts with a convolution, and one that writes them
# ends with a 1x1 layer. Both are linear, and so are encode and decode, so each pair is one
# linear map; applied as one, it never forms the (B, 192, 112, 112) channel tensor (a third
# of a GB at batch 32), which is where a client's protect spends most of its memory traffic.


@cache
@torch.inference_mode(False)
def _stem_taps() -> Tensor:
    """``R[I, a, u, d]``: weight of YCbCr row ``I + d - 2`` in DCT row ``u`` of the block read
    by tap ``a`` (0..2) of a 3x3 convolution at block row ``I``; zero where that block lies in
    the convolution's zero padding. float64, (112, 3, 8, 5)."""
    band = _bases_cpu64()["enc_band"]  # (I, u, t): block row I reads image rows I - 1 + t
    taps = torch.zeros(SIZE, 3, SCALE, 5, dtype=torch.float64)
    for a in range(3):
        block = torch.arange(SIZE) + a - 1
        inside = (block >= 0) & (block < SIZE)
        taps[inside, a, :, a : a + 3] = band[block[inside]]
    return taps


def encode_conv_kernel(weight: Tensor) -> Tensor:
    r"""The per-position kernel of a 3x3 convolution of the encoded channels.

    ``conv2d(encode(x), weight, padding=1)`` is linear in the YCbCr image :math:`c` (step 3
    of :func:`encode`), and its output at block :math:`(I, J)` reads only the 5x5
    neighbourhood of :math:`c` around :math:`(I, J)`: the convolution reads blocks
    :math:`I \pm 1`, and each block's band reads one image row on either side. The composed
    weights depend on the position, because the x8 resampling with ``align_corners=True`` is
    not exactly periodic:

    .. math:: K[I, J, (c, d, e), o] = \sum_{a, b, u, v} W[o, (c, u, v), a, b]\,
              R[I, a, u, d]\, R[J, b, v, e]

    with :math:`R` the band of :func:`encode` shifted to tap :math:`a` (zero where the tap
    falls into the convolution's padding). :func:`encode_conv` applies it. Built in float64
    and returned in ``weight``'s dtype; about 0.3 s for 16 output channels, so callers that
    apply it repeatedly keep it (MinusFace's client caches it per weight version).

    Shape:
        - weight: :math:`(O, 192, 3, 3)`, a convolution with ``padding=1`` and no bias
        - output: :math:`(112 \cdot 112, 75, O)`

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = torch.randn(4, 192, 3, 3, generator=g)
        >>> x = torch.rand(2, 3, 112, 112, generator=g) * 2 - 1
        >>> direct = F.conv2d(encode(x), w, padding=1)
        >>> err = (encode_conv(x, encode_conv_kernel(w)) - direct).abs().max()
        >>> bool(err < 1e-5 * direct.abs().max())
        True
    """
    if weight.ndim != 4 or tuple(weight.shape[1:]) != (NUM_CHANNELS, 3, 3):
        raise InputError(
            f"encode_conv_kernel: expected a (O, {NUM_CHANNELS}, 3, 3) weight, "
            f"got {tuple(weight.shape)}"
        )
    taps = _stem_taps().to(weight.device)
    with torch.no_grad():
        w = weight.detach().to(torch.float64).view(-1, 3, SCALE, SCALE, 3, 3)  # o c u v a b
        rows = torch.einsum("ocuvab,iaud->iocvbd", w, taps)
        k = torch.einsum("iocvbd,jbve->ijcdeo", rows, taps)
    return k.reshape(SIZE * SIZE, 75, -1).to(weight.dtype).contiguous()


def encode_conv(x: Tensor, kernel: Tensor, *, check_range: bool = True) -> Tensor:
    r"""``conv2d(encode(x), weight, padding=1)`` from :func:`encode_conv_kernel`'s kernel.

    Reads the 5x5 neighbourhood of every position of the YCbCr image once and applies that
    position's kernel (a batched matrix product over positions): about a twentieth of the
    direct convolution's multiply-adds for a 192-channel input, and no channel tensor. Equal
    to the direct path up to float rounding (another summation order).

    Shape:
        - x: :math:`(B, 3, 112, 112)` in [-1, 1]; kernel: :math:`(112 \cdot 112, 75, O)`
        - output: :math:`(B, O, 112, 112)`
    """
    _check(x, 3, "encode_conv")
    if kernel.ndim != 3 or tuple(kernel.shape[:2]) != (SIZE * SIZE, 75):
        raise InputError(
            f"encode_conv: expected a ({SIZE * SIZE}, 75, O) kernel from encode_conv_kernel, "
            f"got {tuple(kernel.shape)}"
        )
    if check_range:
        _check_faces_range(x, "encode_conv")
    with torch.autocast(x.device.type, enabled=False):
        b = _bases(x.device, x.dtype)
        n = x.shape[0]
        kernel = kernel.to(x.dtype)
        c = torch.einsum("oc,bchw->hwbo", b["ycc_w"], x) + b["ycc_b"]  # (H, W, B, 3)
        c = F.pad(c, (0, 0, 0, 0, 2, 2, 2, 2))  # zero rows and columns of the YCbCr image
        out = x.new_empty(n, kernel.shape[2], SIZE * SIZE)
        # a band of block rows at a time: a whole batch's patches take 3.8 MB a face, past
        # glibc's mmap cap at a few faces, and would be faulted in afresh on every call
        step = _per_slice(n * 75 * SIZE * x.element_size())
        for i in range(0, SIZE, step):
            rows = min(step, SIZE - i)
            patches = c[i : i + rows + 4].unfold(0, 5, 1).unfold(1, 5, 1)  # (c, d, e)
            patches = patches.reshape(rows * SIZE, n, 75)
            part = torch.bmm(patches, kernel[i * SIZE : (i + rows) * SIZE])  # (p, B, O)
            out[:, :, i * SIZE : (i + rows) * SIZE] = part.permute(1, 2, 0)
    return out.view(n, -1, SIZE, SIZE)


#: bytes a temporary of the sliced loops in :func:`encode_conv` and :func:`decode_linear`
#: stays under: well below glibc's 32 MB mmap cap, so a freed slice is reused from the heap
#: instead of going back to the kernel and being faulted in again (docs/benchmarks.md)
_SLICE_BYTES = 8 << 20


def _per_slice(bytes_each: int) -> int:
    """How many rows (or images) of ``bytes_each`` fit in :data:`_SLICE_BYTES` (at least 1)."""
    return max(1, _SLICE_BYTES // max(1, bytes_each))


def decode_linear(
    h: Tensor, weight: Tensor, bias: Tensor, *, scale: Tensor | None = None
) -> Tensor:
    r"""``decode(f)`` for channels :math:`f = W h + b` made by a per-image 1x1 layer.

    ``decode`` turns coefficient :math:`(c, u, v)` of block :math:`(k, l)` into pixel
    :math:`(k, l)` with the weight :math:`M_{oc}\,\phi_u[k]\,\phi_v[l]` (colour conversion
    and the folded inverse DCT with down-sampling, see the module docs). Composed with
    :math:`W`:

    .. math:: d(Wh + b)[o, k, l] = \sum_j \Big(\sum_{c,u,v} M_{oc}\,\phi_u[k]\,\phi_v[l]\,
              W_{(c,u,v), j}\Big) h_j[k, l] + (\text{the same with } b) + \text{const},

    so the 192 channels are never formed; the 3 x (C + 1) per-pixel weights cost
    :math:`O(C \cdot 112^2)` to build. A per-image ``weight`` lets each image have its own
    channel order (MinusFace's shuffle permutes the rows of ``weight``). ``scale`` multiplies
    the channels of every position first (``decode(scale * f)``; decode is position-local,
    so this is a per-pixel gain on the linear part). Output clamped to [0, 1] as
    :func:`decode`'s.

    Shape:
        - h: :math:`(B, C, 112, 112)`
        - weight: :math:`(192, C)` or :math:`(B, 192, C)`; bias: :math:`(192,)` or
          :math:`(B, 192)`; scale: :math:`(B, 1, 112, 112)`
        - output: :math:`(B, 3, 112, 112)` in [0, 1]

    Example:
        >>> h, w, bias = torch.randn(2, 5, 112, 112), torch.randn(192, 5), torch.randn(192)
        >>> direct = decode(torch.einsum("cj,bjhw->bchw", w, h) + bias.view(1, -1, 1, 1))
        >>> bool((decode_linear(h, w, bias) - direct).abs().max() < 1e-5)
        True
    """
    if h.ndim != 4 or tuple(h.shape[2:]) != (SIZE, SIZE):
        raise InputError(f"decode_linear: expected h of shape (B, C, {SIZE}, {SIZE}), got "
                         f"{tuple(h.shape)}")  # fmt: skip
    n, ch = h.shape[:2]
    if scale is not None and tuple(scale.shape) != (n, 1, SIZE, SIZE):
        raise InputError(
            f"decode_linear: scale must be ({n}, 1, {SIZE}, {SIZE}), got {tuple(scale.shape)}"
        )
    lead = (n,) if weight.ndim == 3 else ()  # a weight per image, or one for all
    if tuple(weight.shape) != (*lead, NUM_CHANNELS, ch) or tuple(bias.shape) != (
        *lead,
        NUM_CHANNELS,
    ):
        raise InputError(
            f"decode_linear: weight must be ({NUM_CHANNELS}, {ch}) or ({n}, {NUM_CHANNELS}, "
            f"{ch}) and bias ({NUM_CHANNELS},) or ({n}, {NUM_CHANNELS}), got "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    wb = torch.cat([weight, bias[..., None]], -1).to(h.dtype)  # h may be half under AMP
    with torch.autocast(h.device.type, enabled=False):
        b = _bases(h.device, h.dtype)
        fold = b["dec_fold"]  # (u, k)
        shift = (b["rgb_w"] @ b["rgb_shift"]).view(1, 3, 1, 1)
        wb = wb.expand(n, -1, -1).reshape(n, 3, SCALE, SCALE, ch + 1)
        y = h.new_empty(n, 3, SIZE, SIZE)
        # a few images at a time: the per-pixel weights take 3 (C + 1) x 112 x 112 floats
        # an image (2.6 MB at C = 16), past glibc's mmap cap for a whole batch
        step = _per_slice(3 * (ch + 1) * SIZE * SIZE * h.element_size())
        for i in range(0, n, step):
            s = slice(i, min(n, i + step))
            cols = torch.einsum("vl,bcuvj->bcujl", fold, wb[s])
            pix = torch.einsum("uk,bcujl->bcjkl", fold, cols)  # per-pixel weights, per colour
            pix = torch.einsum("oc,bcjkl->bojkl", b["rgb_w"], pix)  # (b, 3, C + 1, k, l)
            ys = y[s]
            ys.copy_(pix[:, :, ch])
            for j in range(ch):
                ys.addcmul_(pix[:, :, j], h[s, j : j + 1])
            if scale is not None:
                ys.mul_(scale[s])
            ys.sub_(shift)
    return y.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- coefficient statistics
def coefficient_range(channels: Sequence[int]) -> Tensor:
    r"""The widest range any two images can give each channel's coefficients, float64.

    Every colour plane spans 255 levels before the transform (Y in [0, 255], Cb and Cr in
    [-127.5, 127.5]; bilinear upsampling keeps values within the range of its inputs), and
    a coefficient is a weighted sum of one block's values with the weights
    :math:`D_{ua} D_{vb}`, so its range is at most

    .. math:: 255 \sum_a |D_{ua}| \sum_b |D_{vb}|.

    An AC coefficient's weights sum to zero, so it is centred: :math:`|x_i|` is at most half
    that range. DCTDP's worst-case sensitivity is this range; PartialFace's coefficient
    bound is half of it.

    Shape:
        - channels: :math:`(C,)` indices into the 192 channels; output: :math:`(C,)`

    Example:
        >>> round(float(coefficient_range([0])[0]), 6)  # DC: 255 * sqrt(8) * sqrt(8)
        2040.0
    """
    row_sums = dct_matrix().abs().sum(1)
    uv = torch.tensor([channel_uv(c) for c in channels], dtype=torch.long).view(-1, 2)
    return 255.0 * (row_sums[uv[:, 0]] * row_sums[uv[:, 1]])


def sample_coefficients(
    dataset: Any,
    images: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    check: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[Tensor]:
    r"""The 192 channels of a random sample of a dataset's faces, one batch at a time.

    Draws ``min(len(dataset), images)`` distinct faces with ``torch.randperm`` on
    ``generator`` (before anything else, so a caller may draw more from ``generator``
    between batches), reads them ``batch_size`` at a time with ``dataset.stack`` as
    float32 on ``device``, passes them through ``check`` (a face validator) and encodes
    them with :func:`encode`. What methods estimate from training data (DCTDP's
    sensitivities, PartialFace's channel scales) is a statistic over these batches.

    Shape:
        - output: batches :math:`(B, 192, 112, 112)`, :math:`B \le` ``batch_size``
    """
    n = len(dataset)
    order = torch.randperm(n, generator=generator)[: min(n, images)]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        x = torch.as_tensor(dataset.stack(idx)).to(device, torch.float32)
        yield encode(check(x) if check is not None else x)


class Encode(nn.Module):
    """Module form of :func:`encode` (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return encode(x)


class Decode(nn.Module):
    """Module form of :func:`decode` (no parameters)."""

    def forward(self, f: Tensor) -> Tensor:
        return decode(f)
