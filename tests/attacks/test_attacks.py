import numpy as np
import pytest
import torch

import ppfr
from ppfr.attacks import ATTACKS, ViewingAttack, create_attack, list_attacks
from ppfr.attacks.metrics import psnr, psnr_per_image, ssim, ssim_per_image, to_unit_range
from ppfr.errors import InputError, UnknownNameError

TINY = {"backbone": "ir18", "backbone_width": 0.125, "embedding_size": 64}


def _images(n=2, seed=0, size=32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 3, size, size))


# ---- metrics


def test_psnr_of_constant_offset_is_20_db():
    a = _images() * 0.9
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert psnr(torch.from_numpy(a).float(), torch.from_numpy(a + 0.1).float()) == pytest.approx(
        20.0, abs=1e-4
    )


def test_psnr_hand_computed_and_identical():
    a = np.zeros((1, 3, 8, 8))
    b = a.copy()
    b[0, 0, 0, 0] = 1.0  # MSE = 1 / 192
    assert psnr(a, b) == pytest.approx(10 * np.log10(192))
    assert psnr_per_image(a, a).tolist() == [np.inf]


def test_ssim_identical_negative_and_per_image():
    a = _images(3)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1.0 - a) < 0.0
    per = ssim_per_image(a, np.concatenate([a[:1], 1.0 - a[1:]]))
    assert per.shape == (3,)
    assert per[0] == pytest.approx(1.0) and (per[1:] < 0.0).all()
    assert ssim(a[0], a[0]) == pytest.approx(1.0)  # one (3, H, W) image


def test_metrics_reject_bad_inputs():
    a = _images()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ssim(a * 2 - 1, a)
    with pytest.raises(InputError, match="shape"):
        psnr(a, a[:1])
    with pytest.raises(InputError, match="3, H, W"):
        ssim(a[:, :1], a[:, :1])
    with pytest.raises(InputError, match="float"):
        psnr((a * 255).astype(np.uint8), a)
    with pytest.raises(InputError, match="NaN"):
        psnr(np.full_like(a, np.nan), a)


def test_to_unit_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert to_unit_range(x, (-1, 1)).tolist() == [0.0, 0.5, 1.0, 1.0]
    assert to_unit_range(np.array([0.0, 255.0]), (0, 255)).tolist() == [0.0, 1.0]
    with pytest.raises(InputError):
        to_unit_range(x, (1, 1))


# ---- registry


def test_registry():
    assert "viewing" in list_attacks()
    assert isinstance(create_attack("Viewing"), ViewingAttack)
    with pytest.raises(UnknownNameError, match="viewing"):
        create_attack("vewing")
    with pytest.raises(UnknownNameError):
        ATTACKS.get("no-such-attack")


# ---- the viewing attack


def test_view_shapes_and_custom_rule():
    attack = ViewingAttack()
    torch.manual_seed(0)
    model = ppfr.create("minusface", **TINY, generator_width=4, shuffles=2)
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    v = attack.view(model, faces, torch.Generator().manual_seed(0))
    assert v.shape == (2, 3, 112, 112) and 0.0 <= v.min() and v.max() <= 1.0

    class NotAnImage:
        name = "odd"

        def protect(self, x, generator=None):
            return torch.zeros(len(x), 27, 112, 112)

    with pytest.raises(InputError, match="view"):
        attack.view(NotAnImage(), faces)

    class WithView(NotAnImage):
        def view(self, p):
            return torch.full((len(p), 3, 112, 112), 0.5)

    assert attack.view(WithView(), faces).eq(0.5).all()


@pytest.fixture(scope="module")
def judge():
    from ppfr.judge import get_judge

    return get_judge()


def test_identity_protection_leaks(orl4, judge):
    torch.manual_seed(0)
    model = ppfr.create("arcface", **TINY)
    report = create_attack("viewing").run(model, orl4.faces, orl4.labels, seed=0, judge=judge)
    assert report["ssim"] == pytest.approx(1.0)
    assert report["psnr"] == 100.0  # capped infinity
    assert report["leakage"] > 0.9
    assert report["rank1"] > 0.9
    assert report["n"] == 40 and report["method"] == "arcface"
    assert all(isinstance(report[k], float) for k in ("ssim", "psnr", "leakage", "rank1"))


def test_minusface_view_hides_the_face(orl4, judge):
    torch.manual_seed(0)
    model = ppfr.create("minusface", **TINY, generator_width=4)
    report = ViewingAttack().run(model, orl4.faces, orl4.labels, seed=0, judge=judge)
    assert report["ssim"] < 0.5
    assert report["psnr"] < 20.0
    assert report["leakage"] < 0.9


def test_run_checks_labels(orl4, judge):
    model = ppfr.create("arcface", **TINY)
    with pytest.raises(InputError, match="labels"):
        ViewingAttack().run(model, orl4.faces, orl4.labels[:3], judge=judge)
