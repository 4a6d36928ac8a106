"""IR ("improved ResNet") backbones of the ArcFace family (Deng et al., CVPR 2019).

Stem: conv3x3 (in -> 64) + BN + PReLU. Four stages of 64/128/256/512 channels; the first
block of each stage has stride 2. Block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus
a shortcut (max-pool when the channel count is unchanged, else 1x1 conv + BN). Output: BN2d,
dropout, flatten 512x7x7, linear to the embedding, BN1d.

``width`` scales every channel count (1.0 is the paper's network); small widths make
CPU-sized models for tests and the demo. Protected methods change only ``in_channels``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.errors import InputError
from ppfr.nets._registries import BACKBONES

DEPTHS = {
    "ir18": [2, 2, 2, 2],
    "ir34": [3, 4, 6, 3],
    "ir50": [3, 4, 14, 3],
    "ir100": [3, 13, 30, 3],
}


class PointwiseStrided(nn.Conv2d):
    """A 1x1 convolution with a stride, computed as a stride-1 one on every ``stride``-th
    pixel: the same weights and result, but not oneDNN's strided 1x1 kernel, whose weight
    gradient corrupts the heap on AVX-512 CPUs for channels-last inputs of few channels
    (PyTorch 2.13, oneDNN 3.12: 8 -> 16 channels at 56x56 aborts the process;
    ``tests/nets/test_iresnet.py``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride[0]
        return F.conv2d(x[:, :, ::s, ::s] if s > 1 else x, self.weight)


class IRBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        if cin == cout:
            self.shortcut: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = nn.Sequential(PointwiseStrided(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IR backbone: (B, in_channels, 112, 112) -> (B, embedding_size).

    Example:
        >>> net = IResNet([2, 2, 2, 2], in_channels=3, width=0.25).eval()
        >>> net(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        layers: list[int],
        in_channels: int = 3,
        embedding_size: int = 512,
        width: float = 1.0,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise InputError(f"input_size must be a multiple of 16, got {input_size}")
        self.in_channels = in_channels
        self.input_size = input_size
        chans = [max(8, round(c * width)) for c in (64, 64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.PReLU(chans[0]),
        )
        blocks: list[nn.Module] = []
        cin = chans[0]
        for n, cout in zip(layers, chans[1:], strict=True):
            for i in range(n):
                blocks.append(IRBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*blocks)
        #: blocks and output channels of each of the four stages (``body`` runs them in order)
        self.stage_depths = tuple(layers)
        self.stage_channels = tuple(chans[1:])
        side = input_size // 16
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(cin * side * side, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """The last feature map (B, C, 7, 7) before the embedding layer."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"backbone expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise InputError(
                f"backbone expects {self.input_size}x{self.input_size} inputs, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.body(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _register(name: str) -> None:
    @BACKBONES.register(name)
    def build(**config) -> IResNet:
        return IResNet(DEPTHS[name], **config)

    build.__doc__ = f"{name.upper()} backbone, blocks per stage {DEPTHS[name]}."


for _name in DEPTHS:
    _register(_name)
