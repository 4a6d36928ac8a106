import pytest
import torch

from ppfr import nets
from ppfr.errors import InputError
from ppfr.nets.mobilefacenet import Bottleneck, MobileFaceNet, feature_shapes


def test_registered_as_a_backbone():
    assert "mobilefacenet" in nets.list_backbones()
    net = nets.create_backbone("mobilefacenet", in_channels=30, width=0.125, embedding_size=16)
    assert isinstance(net, MobileFaceNet) and net.in_channels == 30


def test_full_width_matches_the_paper():
    net = MobileFaceNet()
    # Table 1: 15 bottlenecks (5 + 1 + 6 + 1 + 2); the paper reports 0.99M parameters
    assert sum(isinstance(m, Bottleneck) for m in net.modules()) == 15
    n = sum(p.numel() for p in net.parameters())
    assert 0.95e6 < n < 1.05e6
    assert feature_shapes() == [(64, 28, 28), (128, 14, 14), (128, 7, 7), (512, 7, 7)]


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_feature_maps_and_embedding_shapes(width):
    torch.manual_seed(0)
    net = MobileFaceNet(in_channels=30, width=width, embedding_size=24).eval()
    x = torch.randn(2, 30, 112, 112)
    with torch.no_grad():
        maps = net.feature_maps(x)
        emb = net(x)
    assert [tuple(m.shape[1:]) for m in maps] == feature_shapes(width) == net.feature_shapes
    assert emb.shape == (2, 24)
    # the embedding is computed from the last map
    with torch.no_grad():
        assert torch.allclose(net.embedding(maps[-1]), emb)


def test_inverted_residual_shortcut_only_when_shapes_match():
    assert Bottleneck(16, 16, 1, 2).identity
    assert not Bottleneck(16, 16, 2, 2).identity
    assert not Bottleneck(16, 32, 1, 2).identity


def test_trains_on_a_tiny_batch():
    torch.manual_seed(0)
    net = MobileFaceNet(in_channels=3, width=0.125, embedding_size=8)
    x, y = torch.randn(8, 3, 112, 112), torch.arange(8) % 2
    lin = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD([*net.parameters(), *lin.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(lin(net(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_bad_inputs():
    net = MobileFaceNet(in_channels=30, width=0.125)
    with pytest.raises(InputError, match=r"expects \(B, 30, H, W\)"):
        net(torch.zeros(1, 3, 112, 112))
    with pytest.raises(InputError, match="112x112"):
        net(torch.zeros(1, 30, 96, 96))
    with pytest.raises(InputError, match="multiple of 16"):
        MobileFaceNet(input_size=100)
