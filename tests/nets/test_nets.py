import math

import pytest
import torch
import torch.nn.functional as F

from ppfr import nets
from ppfr.errors import InputError, UnknownNameError
from ppfr.nets.iresnet import DEPTHS


@pytest.mark.parametrize("name", sorted(DEPTHS))  # IR backbones; others: own tests
def test_every_backbone(name):
    net = nets.create_backbone(name, in_channels=6, width=0.125, embedding_size=32).eval()
    blocks = [m for m in net.modules() if type(m).__name__ == "IRBlock"]
    assert len(blocks) == sum(DEPTHS[name])
    with torch.no_grad():
        assert net(torch.zeros(2, 6, 112, 112)).shape == (2, 32)
        assert net.features(torch.zeros(1, 6, 112, 112)).shape[-2:] == (7, 7)
    with pytest.raises(InputError, match="expects"):
        net(torch.zeros(1, 3, 112, 112))


def test_full_width_ir50_matches_published_size():
    # IR-50 at full width is ~43.6M weights (ArcFace family); our width=1 must be that network
    n = sum(p.numel() for p in nets.create_backbone("ir50").parameters())
    assert 43e6 < n < 44e6


def test_unet_shapes_and_widths():
    g = nets.create_generator("unet", width=4).eval()
    with torch.no_grad():
        assert g(torch.zeros(1, 192, 112, 112)).shape == (1, 192, 112, 112)
    public = sum(p.numel() for p in nets.UNet(192, 192, width=64).parameters())
    assert 30e6 < public < 32e6  # the public code's 64..1024 network
    with pytest.raises(InputError, match="divisible by 16"):
        g(torch.zeros(1, 192, 100, 100))


def test_margin_heads_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    arc = nets.create_head("arcface", embedding_size=2, num_classes=2)
    cos = nets.create_head("cosface", embedding_size=2, num_classes=2)
    w = torch.tensor([[math.cos(0.3), math.sin(0.3)], [0.0, 1.0]])
    for head in (arc, cos):
        head.weight.data.copy_(w)
    # sample 0: angle to class 0 is 0.3 rad; sample 1: pi/2 - 0.3
    a = arc.logits(emb, labels)
    assert a[0, 0].item() == pytest.approx(64 * math.cos(0.3 + 0.5), abs=1e-4)
    assert a[1, 0].item() == pytest.approx(64 * math.cos(math.pi / 2 - 0.3 + 0.5), abs=1e-4)
    # non-target logits carry no margin
    assert a[0, 1].item() == pytest.approx(64 * math.cos(math.pi / 2), abs=1e-4)
    c = cos.logits(emb, labels)
    assert c[0, 0].item() == pytest.approx(64 * (math.cos(0.3) - 0.4), abs=1e-4)
    assert arc(emb, labels).item() == pytest.approx(F.cross_entropy(a, labels).item(), abs=1e-5)


def test_arcface_target_logit_is_monotonic_past_pi_minus_m():
    head = nets.create_head("arcface", embedding_size=2, num_classes=2)
    theta = torch.linspace(0, math.pi, 200)
    target = head.margin(torch.cos(theta)[:, None]).squeeze(1)
    assert (target[1:] <= target[:-1] + 1e-6).all()


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="unknown backbone 'ir51'"):
        nets.create_backbone("ir51")
    with pytest.raises(UnknownNameError, match="known: arcface, cosface"):
        nets.create_head("sphereface", embedding_size=2, num_classes=2)
