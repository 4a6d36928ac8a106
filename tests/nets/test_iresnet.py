import subprocess
import sys

import torch
from torch import nn

from ppfr.nets.iresnet import PointwiseStrided


def test_pointwise_strided_equals_a_strided_1x1_convolution():
    torch.manual_seed(0)
    ours = PointwiseStrided(8, 16, 2)
    ref = nn.Conv2d(8, 16, 1, 2, bias=False)
    ref.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 8, 57, 56, requires_grad=True)  # odd side: ceil(57 / 2) rows
    a, b = ours(x), ref(x)
    assert a.shape == b.shape == (2, 16, 29, 28)
    torch.testing.assert_close(a, b)
    (ga,) = torch.autograd.grad(a.square().sum(), ours.weight)
    (gb,) = torch.autograd.grad(b.square().sum(), ref.weight)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)
    assert set(ours.state_dict()) == set(ref.state_dict())  # bundles keep their keys


_TRAIN_NARROW_IR18 = """
import torch
from ppfr.nets import create_backbone
net = create_backbone("ir18", in_channels=3, embedding_size=32, width=0.125)
net.to(memory_format=torch.channels_last)
x = torch.randn(4, 3, 112, 112)
for _ in range(2):
    net(x).square().mean().backward()
print("trained")
"""


def test_narrow_ir18_trains_channels_last():
    # in its own process: the oneDNN fault this guards against aborts the interpreter
    run = subprocess.run(
        [sys.executable, "-c", _TRAIN_NARROW_IR18], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "trained" in run.stdout, run.stderr[-2000:]
