"""The U-Net generator ``g`` of MinusFace (192 -> 192 frequency channels).

Four down-sampling levels (112 -> 56 -> 28 -> 14 -> 7) with widths
``width * (1, 2, 4, 8, 16)``; each level is two conv3x3 + BN + ReLU, down-sampling by
max-pool, up-sampling by a transposed conv, skip connections by concatenation, and a 1x1
output conv. ``width=64`` gives the public code's 64..1024 network (about 31M weights).
MinusFace defaults to ``width=16`` (16..256, about 2M weights): the paper calls its
generator "reduced-scale", and the generator is the *client* that runs on the user's
device, where ``protect`` at 16 costs clearly less than at 32 and far less than at 64
(docs/benchmarks.md has the figures). The demo and the tests use smaller widths still.

The generator sees the frequency coefficients divided by ``input_scale`` (coefficients
reach several hundred) and its output is multiplied back, so it learns at a well-scaled
range while its input and output stay in coefficient units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ppfr.errors import InputError
from ppfr.nets._registries import GENERATORS


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with four down-sampling levels.

    Shape:
        - input: :math:`(B, C_{in}, H, W)` with H and W multiples of 16
        - output: :math:`(B, C_{out}, H, W)`

    Example:
        >>> g = UNet(192, 192, width=4)
        >>> g(torch.zeros(1, 192, 112, 112)).shape
        torch.Size([1, 192, 112, 112])
    """

    def __init__(
        self,
        in_channels: int = 192,
        out_channels: int = 192,
        width: int = 32,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        w = [width * k for k in (1, 2, 4, 8, 16)]
        self.in_channels = in_channels
        self.input_scale = input_scale
        self.down = nn.ModuleList([_double_conv(in_channels, w[0])])
        self.down.extend(_double_conv(w[i], w[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, 2) for i in range(4))
        self.merge = nn.ModuleList(_double_conv(2 * w[i], w[i]) for i in range(4))
        self.out = nn.Conv2d(w[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"U-Net expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise InputError(f"U-Net needs H and W divisible by 16, got {tuple(x.shape[-2:])}")
        return self.out(self.hidden(self.stem(x / self.input_scale))) * self.input_scale

    @property
    def stem(self) -> nn.Conv2d:
        """The first convolution (3x3, no bias), the only layer that reads the input."""
        return self.down[0][0]

    def hidden(self, stem: Tensor) -> Tensor:
        """The last feature map (before the 1x1 output layer) from the stem's output.

        ``forward(x) == out(hidden(stem(x / input_scale))) * input_scale``. The split lets
        a caller compute the stem and the output layer another way (MinusFace's client
        composes them with the frequency transform).

        Shape:
            - stem: :math:`(B, w, H, W)`; output: :math:`(B, w, H, W)`
        """
        h = stem
        for layer in self.down[0][1:]:
            h = layer(h)
        skips = [h]
        for block in self.down[1:]:
            h = block(self.pool(h))
            skips.append(h)
        for i in reversed(range(4)):
            h = self.merge[i](torch.cat([skips[i], self.up[i](h)], 1))
        return h


@GENERATORS.register("unet")
def unet(**config) -> UNet:
    """U-Net generator, ``width=16`` unless given (see the module docstring)."""
    return UNet(**config)
