import numpy as np
import pytest
from typer.testing import CliRunner

import ppfr
from ppfr.cli import app as cli
from ppfr.serve.calibrate import read_calibration


@pytest.mark.slow
def test_calibrate_on_orl_training_identities(bundle, tmp_path):
    """`ppfr calibrate` on the real ORL split writes a threshold that meets its FAR."""
    model_dir = tmp_path / "m"
    ppfr.load(bundle).save(model_dir)
    r = CliRunner().invoke(cli, ["calibrate", "--model", str(model_dir), "--far", "0.01"])
    assert r.exit_code == 0, r.output
    cal = read_calibration(model_dir)
    assert cal["impostor_pairs"] == 300 * 270 and cal["genuine_pairs"] == 300 * 9
    assert cal["far_measured"] <= 0.01
    assert cal["client_fingerprint"] == ppfr.load(bundle).fingerprint("client")
    assert 0 <= cal["heldout_far"] <= 1 and cal["heldout_impostor_pairs"] == 100 * 90
    assert np.isfinite(cal["threshold"]) and "training identities" in cal["data"]
