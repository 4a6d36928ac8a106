r"""MobileFaceNet: a small face recognizer for the device (Chen et al., 2018).

The network of the paper's Table 1, for a 112x112 input (``t`` expansion, ``c`` output
channels, ``n`` repeats, ``s`` stride of the first repeat):

=====================  ===  ====  ===  ===  ==========
operator               t    c     n    s    output
=====================  ===  ====  ===  ===  ==========
conv 3x3               -    64    1    2    56x56
depthwise conv 3x3     -    64    1    1    56x56
bottleneck             2    64    5    2    28x28
bottleneck             4    128   1    2    14x14
bottleneck             2    128   6    1    14x14
bottleneck             4    128   1    2    7x7
bottleneck             2    128   2    1    7x7
conv 1x1               -    512   1    1    7x7
linear GDConv 7x7      -    512   1    1    1x1
linear                 -    D     1    -    D
=====================  ===  ====  ===  ===  ==========

A bottleneck is MobileNetV2's inverted residual: 1x1 expansion (``t`` times its input
channels) + BN + PReLU, depthwise 3x3 (stride ``s``) + BN + PReLU, linear 1x1 projection + BN,
with an identity shortcut when the stride is 1 and the channel count unchanged. The global
depthwise convolution (GDConv) weighs every position of the last 7x7 map instead of average
pooling it, because the centre of an aligned face matters more than its border.

The layers are grouped into four **stages** whose outputs are the feature maps
:meth:`MobileFaceNet.feature_maps` returns (64@28x28, 128@14x14, 128@7x7, 512@7x7 at full
width): the taps DuetFace's server reads (:mod:`ppfr.methods.duetface`).

``width`` scales every channel count (1.0 is the paper's network); small widths make the
CPU-sized models of tests and the demo. Registered as the ``mobilefacenet`` backbone, with
the IR backbones' keyword arguments, so any method can use it as its recognizer.
"""

from __future__ import annotations

from torch import Tensor, nn

from ppfr.errors import InputError
from ppfr.nets._registries import BACKBONES

#: (t, c, n, s) of the bottleneck groups, and the stage (0..2) each group ends in
_BOTTLENECKS = [(2, 64, 5, 2, 0), (4, 128, 1, 2, 1), (2, 128, 6, 1, 1), (4, 128, 1, 2, 2)]
_BOTTLENECKS += [(2, 128, 2, 1, 2)]
_STEM, _LAST = 64, 512


def _channels(c: int, width: float) -> int:
    return max(8, round(c * width))


def feature_shapes(width: float = 1.0, input_size: int = 112) -> list[tuple[int, int, int]]:
    """(channels, height, width) of the four stage outputs, without building the network.

    Example:
        >>> feature_shapes()
        [(64, 28, 28), (128, 14, 14), (128, 7, 7), (512, 7, 7)]
    """
    _check_size(input_size)
    side = [input_size // 4, input_size // 8, input_size // 16, input_size // 16]
    chans = [_channels(c, width) for c in (64, 128, 128, _LAST)]
    return [(c, s, s) for c, s in zip(chans, side, strict=True)]


def _check_size(input_size: int) -> None:
    if input_size % 16:
        raise InputError(f"input_size must be a multiple of 16, got {input_size}")


def _conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return layers


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3 (stride), project 1x1 (linear)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, cout, 1, act=False),
        )
        self.identity = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.residual(x)
        return x + y if self.identity else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet: (B, in_channels, 112, 112) -> (B, embedding_size).

    Shape:
        - input: :math:`(B, C_{in}, S, S)` with ``S = input_size``
        - :meth:`feature_maps`: four maps, shapes :func:`feature_shapes`
        - output: :math:`(B, D)`, ``D = embedding_size``

    Example:
        >>> net = MobileFaceNet(in_channels=30, width=0.25, embedding_size=32).eval()
        >>> [tuple(m.shape[1:]) for m in net.feature_maps(torch.zeros(1, 30, 112, 112))]
        [(16, 28, 28), (32, 14, 14), (32, 7, 7), (128, 7, 7)]
        >>> net(torch.zeros(2, 30, 112, 112)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        in_channels: int = 3,
        embedding_size: int = 128,
        width: float = 1.0,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        _check_size(input_size)
        self.in_channels = in_channels
        self.input_size = input_size
        self.width = width
        stem = _channels(_STEM, width)
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, stem, 3, 2), *_conv_bn(stem, stem, 3, groups=stem)
        )
        stages: list[list[nn.Module]] = [[], [], [], []]
        cin = stem
        for t, c, n, s, stage in _BOTTLENECKS:
            cout = _channels(c, width)
            for i in range(n):
                stages[stage].append(Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _channels(_LAST, width)
        stages[3] = _conv_bn(cin, last, 1)
        self.stages = nn.ModuleList(nn.Sequential(*s) for s in stages)
        side = input_size // 16
        # GDConv: a depthwise conv whose kernel covers the whole map, then a linear layer
        self.embedding = nn.Sequential(
            nn.Conv2d(last, last, side, groups=last, bias=False),
            nn.BatchNorm2d(last),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(last, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of each of the four stage outputs."""
        return feature_shapes(self.width, self.input_size)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The output of each of the four stages (see :func:`feature_shapes`)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"mobilefacenet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise InputError(
                f"mobilefacenet expects {self.input_size}x{self.input_size} inputs, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding(self.feature_maps(x)[-1])


@BACKBONES.register("mobilefacenet")
def mobilefacenet(**config) -> MobileFaceNet:
    """MobileFaceNet (Chen et al., 2018); ``width`` scales its channels."""
    return MobileFaceNet(**config)
