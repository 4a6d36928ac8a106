"""The seed-shift plugin (tests/_seed_shift.py) moves every kind of seed by the same N."""

import random

import numpy as np
import torch


def test_every_kind_of_seed_moves_by_the_shift(request):
    n = request.config._ppfr_seed_shift
    g = torch.Generator().manual_seed(5)
    assert g.initial_seed() == 5 + n
    # the replacement generator type still accepts every generator in isinstance checks
    assert isinstance(g, torch.Generator) and isinstance(torch.default_generator, torch.Generator)
    assert torch.randperm(5, generator=g).shape == (5,)
    torch.manual_seed(3)
    assert torch.initial_seed() == 3 + n
    rng = np.random.default_rng(7)
    assert rng.random() == np.random.Generator(np.random.PCG64(7 + n)).random()
    random.seed(11)
    first = random.random()
    assert first == random.Random(11 + n).random()
    # no seed stays no seed: fresh entropy, not a fixed stream
    assert np.random.default_rng().random() != np.random.default_rng().random()
