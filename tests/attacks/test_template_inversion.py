"""Template inversion attack on tiny data: runs end to end and returns its metrics."""

import math

import pytest
import torch

import ppfr
from ppfr.attacks import TemplateInversionAttack, create_attack, list_attacks
from ppfr.attacks.template_inversion import TemplateDecoder
from ppfr.errors import InputError
from ppfr.templates import SlerpFace
from tests.conftest import TINY


@pytest.fixture(scope="module")
def judge():
    from ppfr.judge import get_judge

    return get_judge()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ppfr.create("arcface", **TINY)


def test_registered():
    assert "template-inversion" in list_attacks()
    assert isinstance(create_attack("template-inversion", epochs=1), TemplateInversionAttack)


def test_decoder_shapes_and_range():
    dec = TemplateDecoder(64, width=2).eval()
    out = dec(torch.randn(3, 64))
    assert out.shape == (3, 3, 112, 112)
    assert out.min() >= -1 and out.max() <= 1


def test_fit_lowers_the_loss(orl4, model):
    attack = TemplateInversionAttack(epochs=5, batch_size=8, width=2, lr=5e-3)
    attack.fit(model, orl4.faces[:12], seed=0)
    assert len(attack.losses) == 5
    assert attack.losses[-1] < attack.losses[0]


@pytest.mark.parametrize("protected", [False, True])
def test_run_end_to_end(orl4, model, judge, protected):
    protection = SlerpFace(64) if protected else None
    attack = TemplateInversionAttack(protection, epochs=2, batch_size=8, width=2, flip=False)
    # persons 1-2 attack 5 faces each of persons 3-4
    aux = orl4.faces[:20]
    pick = torch.cat([torch.arange(20, 25), torch.arange(30, 35)])
    victims, labels = orl4.faces[pick], [orl4.labels[i] for i in pick]
    report = attack.run(model, victims, labels, aux=aux, seed=0, judge=judge)
    assert report["protected"] is protected and report["n"] == 10
    for key in ("ssim", "psnr", "leakage", "rank1", "final_l1"):
        assert isinstance(report[key], float) and math.isfinite(report[key])
    assert -1 <= report["ssim"] <= 1 and 0 <= report["leakage"] <= 1
    stored = attack._stored(attack.templates(model, victims[:2]), torch.Generator())
    recon = attack.reconstruct(stored)
    assert recon.shape == (2, 3, 112, 112) and recon.min() >= 0 and recon.max() <= 1


def test_deterministic(orl4, model):
    a = TemplateInversionAttack(SlerpFace(64), epochs=2, batch_size=4, width=2, flip=False)
    b = TemplateInversionAttack(SlerpFace(64), epochs=2, batch_size=4, width=2, flip=False)
    a.fit(model, orl4.faces[:8], seed=3)
    b.fit(model, orl4.faces[:8], seed=3)
    assert a.losses == b.losses
    t = torch.randn(2, 64)
    assert torch.equal(a.reconstruct(t), b.reconstruct(t))


def test_bad_input(orl4, model):
    attack = TemplateInversionAttack(epochs=1, width=2)
    with pytest.raises(InputError, match="not trained"):
        attack.reconstruct(torch.randn(2, 64))
    with pytest.raises(InputError, match="112"):
        attack.fit(model, torch.zeros(4, 3, 32, 32))
    with pytest.raises(InputError, match="at least two"):
        attack.fit(model, orl4.faces[:1])
    attack.fit(model, orl4.faces[:4])
    with pytest.raises(InputError, match=r"shape \(N, 64\)"):
        attack.reconstruct(torch.randn(2, 32))
    with pytest.raises(InputError, match="labels"):
        attack.evaluate(model, orl4.faces[:4], [0, 1])
    with pytest.raises(InputError, match="at least 1"):
        TemplateInversionAttack(epochs=0)
