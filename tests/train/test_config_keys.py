"""How TrainConfig treats keys it does not know, and keys it no longer uses."""

import pytest

from ppfr.errors import InputError
from ppfr.train import TrainConfig


def test_a_retired_key_still_loads_and_is_not_written_back():
    cfg = TrainConfig.from_dict({"method": "arcface", "log_every": 10})
    assert cfg.method == "arcface"
    assert "log_every" not in cfg.to_dict()


def test_an_unknown_key_is_refused():
    with pytest.raises(InputError, match="unknown key"):
        TrainConfig.from_dict({"method": "arcface", "log_evry": 10})
