"""ppfr.templates.metrics: D_sys of Gomez-Barrero et al. 2018 on distributions with known
answers."""

import numpy as np
import pytest

from ppfr.errors import InputError
from ppfr.templates import unlinkability


def test_identical_distributions_are_unlinkable():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.1, 3000)
    assert unlinkability(a, a).d_sys == pytest.approx(0.0, abs=1e-9)
    b = rng.normal(0.3, 0.1, 3000)  # same law, other sample: only sampling noise remains
    assert unlinkability(a, b).d_sys < 0.06


def test_fully_separated_distributions_are_linkable():
    rng = np.random.default_rng(1)
    r = unlinkability(rng.normal(5, 0.5, 2000), rng.normal(0, 0.5, 2000))
    assert r.d_sys > 0.98
    assert r.local.max() <= 1.0 and r.local.min() >= 0.0


def test_matches_closed_form_for_two_gaussians():
    # mated N(d, 1), non-mated N(0, 1), omega = 1:
    # D(s) = tanh(LLR / 2) with LLR = d s - d^2 / 2 where positive, integrated against N(d, 1)
    d = 1.5
    s = np.linspace(-8, 10, 200001)
    llr = d * s - d * d / 2
    pdf = np.exp(-0.5 * (s - d) ** 2) / np.sqrt(2 * np.pi)
    exact = float((np.where(llr > 0, np.tanh(llr / 2), 0) * pdf).sum() * (s[1] - s[0]))
    rng = np.random.default_rng(2)
    est = unlinkability(rng.normal(d, 1, 20000), rng.normal(0, 1, 20000)).d_sys
    assert est == pytest.approx(exact, abs=0.03)
    assert 0.2 < exact < 0.6  # a case that is neither extreme


def test_omega_prior_moves_the_measure():
    rng = np.random.default_rng(3)
    m, nm = rng.normal(1, 1, 4000), rng.normal(0, 1, 4000)
    d1 = unlinkability(m, nm).d_sys
    assert unlinkability(m, nm, omega=10).d_sys > d1 > unlinkability(m, nm, omega=0.1).d_sys


def test_bad_input():
    with pytest.raises(InputError, match="at least two"):
        unlinkability([1.0], [0.0, 1.0])
    with pytest.raises(InputError, match="NaN"):
        unlinkability([1.0, np.nan], [0.0, 1.0])
    with pytest.raises(InputError, match="omega"):
        unlinkability([1.0, 2.0], [0.0, 1.0], omega=0)
