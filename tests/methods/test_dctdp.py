import math

import pytest
import torch
from safetensors import safe_open

import ppfr
from ppfr import freq
from ppfr.data.base import TensorFaces
from ppfr.errors import InputError
from ppfr.methods.dctdp import KEPT_CHANNELS, NUM_ELEMENTS, worst_case_sensitivity
from ppfr.train import TrainConfig, Trainer
from tests.conftest import TINY_DCTDP

N = 189 * 112 * 112


def _model(**extra):
    torch.manual_seed(0)
    return ppfr.create("dctdp", num_classes=4, **{**TINY_DCTDP, **extra}).eval()


def test_protect_shape_noise_and_reproducibility(faces):
    m = _model()
    assert NUM_ELEMENTS == N and len(KEPT_CHANNELS) == 189
    assert not {0, 64, 128} & set(KEPT_CHANNELS)
    with torch.no_grad():
        a, b = m.protect(faces), m.protect(faces)
        g = m.protect(faces, generator=torch.Generator().manual_seed(3))
        h = m.protect(faces, generator=torch.Generator().manual_seed(3))
        same = m.protect(faces[:1].expand(2, -1, -1, -1))
    assert a.shape == (4, 189, 112, 112) and torch.isfinite(a).all()
    assert m.representation_range is None
    assert not torch.equal(a, b) and torch.equal(g, h)
    assert not torch.equal(same[0], same[1])  # fresh noise per image
    with torch.no_grad():
        assert m.embed(a * 1e3).shape == (4, 64)  # unbounded values are accepted...
    with pytest.raises(InputError, match="NaN"):
        m.embed(torch.full((1, 189, 112, 112), float("nan")))  # ...non-finite ones are not


def test_noise_scale_follows_the_formula(faces):
    m = _model()
    c = m.client
    with torch.no_grad():
        c.rho.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        c.mu.fill_(0.25)
    eps = torch.softmax(c.rho.double().flatten(), 0).view_as(c.rho) * m.config.eps_mean * N
    expected = c.sensitivity.double()[:, None, None] / eps
    budgets = m.budgets()
    assert budgets.dtype == torch.float64
    assert torch.allclose(budgets, eps, rtol=1e-12, atol=0)
    # the float64 scales cast once to float32: one rounding, 2^-24 relative
    assert m.noise_scale().dtype == torch.float32
    assert torch.allclose(m.noise_scale().double(), expected, rtol=2**-23, atol=0)
    # at an even split every element's budget is eps_mean: b_i = sensitivity_i / eps_mean
    fresh = _model(eps_mean=0.5)
    assert torch.allclose(fresh.budgets(), torch.full((189, 112, 112), 0.5).double(), rtol=1e-12)
    assert torch.equal(fresh.noise_scale()[:, 0, 0], fresh.client.sensitivity / 0.5)
    expected = expected.float()
    # the noise itself: (p - x - mu) / b is standard Laplace (E|L| = 1, Var L = 2)
    with torch.no_grad():
        p = m.protect(faces, generator=torch.Generator().manual_seed(0))
        z = (p - c.coefficients(faces) - c.offset()) / expected
    assert abs(float(z.abs().mean()) - 1) < 0.01
    assert abs(float(z.var()) - 2) < 0.05
    assert abs(float(z.mean())) < 0.01


def test_sensitivity_is_estimated_from_data(orl4):
    m = _model(sensitivity_quantile=0.0)
    worst = worst_case_sensitivity()
    assert torch.equal(m.client.sensitivity, worst) and int(m.client.sensitivity_estimated) == 0
    m.prepare(orl4, generator=torch.Generator().manual_seed(0))
    est = m.client.sensitivity.clone()
    assert int(m.client.sensitivity_estimated) == 1
    assert (est <= worst).all() and est.mean() < 0.5 * worst.mean()
    # with quantile 0 the estimate is a sample range: within the full range of the data
    f = freq.encode(orl4.faces[:16])[:, list(KEPT_CHANNELS)]
    full = f.amax(dim=(0, 2, 3)) - f.amin(dim=(0, 2, 3))
    assert (est <= full + 1e-3).all()
    # it follows the data: faces of half the contrast have half the AC coefficients
    half = TensorFaces(orl4.faces * 0.5, orl4.labels)
    m.prepare(half, generator=torch.Generator().manual_seed(0))
    big = est > 0.01
    assert torch.allclose(m.client.sensitivity[big], est[big] / 2, rtol=1e-3)


def test_total_is_exact_and_scales_finite_at_the_clamp():
    # the most uneven split the clamp allows: half the logits at +bound, half at -bound
    # (and beyond it), so shares span e^20 and the smallest are ~1e-15 of the total
    m = _model(eps_mean=0.5)
    with torch.no_grad():
        m.client.rho.copy_(torch.randn(189, 112, 112, generator=torch.Generator().manual_seed(0)))
        m.client.rho.mul_(1e3)
        eps = m.budgets()
        b = m.noise_scale()
    assert math.isclose(float(eps.sum()), 0.5 * N, rel_tol=1e-12)
    assert math.isclose(float(eps.max() / eps.min()), math.exp(20), rel_tol=1e-9)
    assert torch.isfinite(b).all() and (b > 0).all()


def test_joint_training_learns_the_split_with_a_fixed_total(orl4, descend):
    m = _model()
    m.train()
    m.prepare(orl4, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(0, 40, 5)
    x, y = orl4.faces[idx], torch.as_tensor(orl4.labels[idx])
    (stage,) = m.stages()
    groups = stage.param_groups
    assert groups[1]["params"][0] is m.client.rho and groups[1]["weight_decay"] == 0.0
    before, after, _ = descend(stage, x, y, seed=11)  # the same noise draw before and after
    assert after < before
    rho, mu = m.client.rho.detach(), m.client.mu.detach()
    assert rho.abs().max() > 0 and mu.abs().max() > 0  # the split and offset moved
    eps = m.budgets().detach()
    # the total did not: it is the privacy guarantee, exact to float64 rounding on any CPU
    assert math.isclose(float(eps.sum()), float(m.config.eps_mean) * N, rel_tol=1e-12)
    assert float(eps.max() / eps.min()) > 1.0


def test_view_and_inversion_input(faces):
    m = _model()
    with torch.no_grad():
        p = m.protect(faces)
        v = m.view(p)
    full = torch.zeros(4, 192, 112, 112)
    full[:, list(KEPT_CHANNELS)] = p
    assert v.shape == (4, 3, 112, 112) and 0 <= v.min() and v.max() <= 1
    assert torch.allclose(v, freq.decode(full))
    assert torch.allclose(m.inversion_input(p), p / m.client.sensitivity[:, None, None])


def test_bundle_carries_the_estimate_and_no_server_weights(orl4, faces, tmp_path):
    m = _model()
    m.prepare(orl4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.client.rho.normal_(generator=torch.Generator().manual_seed(1))
    m.save(tmp_path / "b", parts=["client"])
    with safe_open(tmp_path / "b" / "client.safetensors", "pt") as fh:
        assert set(fh.keys()) == {"rho", "mu", "sensitivity", "sensitivity_estimated"}
    back = ppfr.load(tmp_path / "b")
    assert back.parts == ("client",)
    assert torch.equal(back.client.sensitivity, m.client.sensitivity)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    with torch.no_grad():
        assert torch.equal(back.protect(faces, g1), m.protect(faces, g2))


def _cfg(out, epochs):
    return TrainConfig.from_dict(
        {
            "method": "dctdp",
            "out": str(out),
            "seed": 1,
            "device": "cpu",
            "model": TINY_DCTDP,
            "optim": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "milestones": [5]},
        }
    )


def test_trainer_estimates_once_and_resume_keeps_it(orl4, tmp_path, monkeypatch):
    idx = torch.arange(0, 40, 4)
    data = TensorFaces(orl4.faces[idx], orl4.labels[idx.numpy()])
    calls = []
    original = ppfr.methods.dctdp.DCTDP.prepare
    monkeypatch.setattr(
        ppfr.methods.dctdp.DCTDP,
        "prepare",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    first = Trainer(_cfg(tmp_path / "run", 1), dataset=data, progress=False).fit()
    assert calls == [1] and int(first.client.sensitivity_estimated) == 1
    estimate = first.client.sensitivity.clone()
    state = torch.load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [1e-4, 0.0]
    # resuming (on other data) continues from the checkpoint's estimate, never re-estimates
    other = TensorFaces(data.faces * 0.5, data.labels)
    resumed = Trainer(_cfg(tmp_path / "run", 2), dataset=other, progress=False).fit(resume=True)
    assert calls == [1]
    assert torch.equal(resumed.client.sensitivity, estimate)


def test_viewing_attack_and_cli_protect_use_the_view(faces, tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from ppfr.attacks.viewing import ViewingAttack
    from ppfr.cli import app
    from ppfr.data.images import save_image, to_uint8

    m = _model()
    with torch.no_grad():
        v = ViewingAttack().view(m, faces[:2], generator=torch.Generator().manual_seed(2))
        p = m.protect(faces[:2], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(v, m.view(p))
    # the CLI's PNG is the view: an unbounded representation has no range to map from
    m.save(tmp_path / "b")
    save_image(to_uint8(faces[0]), tmp_path / "face.png")
    out = tmp_path / "out"
    args = ["protect", str(tmp_path / "face.png"), "--model", str(tmp_path / "b")]
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert np.load(out / "face.npy").shape == (189, 112, 112)
    assert (out / "face.png").is_file()
