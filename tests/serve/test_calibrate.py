import numpy as np

import ppfr
from ppfr.data.orl import load_orl
from ppfr.serve.app import create_app
from ppfr.serve.calibrate import calibrate, read_calibration


def test_calibrate_writes_a_threshold_that_meets_its_far(bundle, tmp_path):
    """`calibrate` on real faces (4 ORL people; the CLI default is the ORL training split,
    too slow for a unit test) writes a threshold the server then uses."""
    model_dir = tmp_path / "m"
    ppfr.load(bundle).save(model_dir)
    train, heldout = load_orl([1, 2, 3, 4]), load_orl([5, 6])
    cal = calibrate(model_dir, far=0.05, train=train, heldout=heldout)
    assert read_calibration(model_dir) == cal
    assert cal["impostor_pairs"] == 40 * 30 and cal["genuine_pairs"] == 40 * 9
    assert cal["far_measured"] <= 0.05
    assert cal["heldout_impostor_pairs"] == 20 * 10 and 0 <= cal["heldout_far"] <= 1
    assert cal["client_fingerprint"] == ppfr.load(bundle).fingerprint("client")
    assert np.isfinite(cal["threshold"]) and "4 people" in cal["data"]
    app = create_app(model_dir, f"sqlite:///{tmp_path / 'g.db'}")
    assert app.state.service.threshold.value == cal["threshold"]
    assert "FAR 0.05" in app.state.service.threshold.source
