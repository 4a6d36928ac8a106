"""Move every seed the test suite uses by N: ``pytest --seed-shift N`` or ``PPFR_SEED_SHIFT=N``.

A test that trains or samples must hold for any seed (a CPU we have never seen rounds
differently, which is the same as another seed). This plugin lets anyone rerun any test
file under other seeds without editing it: every integer seed given to
``torch.manual_seed``, ``torch.Generator.manual_seed``, ``numpy.random.default_rng``,
``numpy.random.seed`` and ``random.seed`` (by the tests, or by ppfr on their behalf) is
moved by N. N = 0 (the default) installs nothing.

PyTorch's generator type is immutable, so its ``manual_seed`` cannot be wrapped in place:
``torch.Generator`` is replaced by a subclass whose ``manual_seed`` adds the shift, and
whose ``isinstance`` checks still accept every generator (``torch.default_generator``
included).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

_MOD = 2**64


def shift_of(config: pytest.Config) -> int:
    value = config.getoption("seed_shift")
    if value is None:
        value = os.environ.get("PPFR_SEED_SHIFT", "0")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(
            f"--seed-shift / PPFR_SEED_SHIFT must be an integer, got {value!r}"
        ) from None


def _moved(seed, shift: int):
    # only integer seeds move: None (fresh entropy) and SeedSequence objects are left alone
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        return seed
    return (int(seed) + shift) % _MOD


def install(shift: int) -> None:
    """Wrap the seeding functions so that every integer seed moves by ``shift``."""
    base_generator = torch._C.Generator

    class _AnyGenerator(type(base_generator)):
        def __instancecheck__(cls, obj) -> bool:
            return isinstance(obj, base_generator)

    class ShiftedGenerator(base_generator, metaclass=_AnyGenerator):
        def manual_seed(self, seed):
            return super().manual_seed(_moved(seed, shift))

    torch_manual_seed = torch.random.manual_seed
    np_default_rng, np_seed, py_seed = np.random.default_rng, np.random.seed, random.seed

    def manual_seed(seed):
        return torch_manual_seed(_moved(seed, shift))

    def default_rng(seed=None):
        return np_default_rng(_moved(seed, shift))

    def np_seed_shifted(seed=None):
        return np_seed(None if seed is None else _moved(seed, shift) % 2**32)

    def py_seed_shifted(a=None, version=2):
        return py_seed(_moved(a, shift), version)

    torch.Generator = ShiftedGenerator
    torch.manual_seed = torch.random.manual_seed = manual_seed
    np.random.default_rng = default_rng
    np.random.seed = np_seed_shifted
    random.seed = py_seed_shifted


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed-shift",
        dest="seed_shift",
        default=None,
        help="move every seed the tests use by N (default: $PPFR_SEED_SHIFT or 0)",
    )


def pytest_configure(config: pytest.Config) -> None:
    shift = shift_of(config)
    config._ppfr_seed_shift = shift
    if shift:
        install(shift)


def pytest_report_header(config: pytest.Config) -> str:
    return f"seed shift: {getattr(config, '_ppfr_seed_shift', 0)}"
