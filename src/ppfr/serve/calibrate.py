"""``ppfr calibrate``: the service's decision threshold at a target false accept rate.

The service accepts when ``score > threshold`` (score: SlerpFace match score, comparable to
cosine similarity). The threshold is set on faces whose identities are known, never on the
people who will be enrolled:

1. protect and embed every ORL image of the *training* identities of the split
   (``split_identities(10, seed)``: 30 people x 10 images, YuNet-aligned), with the full
   bundle (client + server) exactly as a client and the service would;
2. SlerpFace-protect each template with its own random key, as enrolment does;
3. score every template as a query against every other image's protected template: pairs
   of different people are impostor pairs (300 x 290 = 87,000 ordered pairs), of the
   same person genuine pairs (2,700);
4. the threshold is the lowest that keeps the impostor accept rate at most ``far``
   when accepting ``score > threshold``.

Honest caveats, written into the file: the model was trained on these identities, so
impostor scores on them are likely lower than on strangers and the FAR on new people can
be higher than ``far``. The file therefore also reports the FAR and TAR measured at the
threshold on the 10 *held-out* identities (9,000 impostor pairs: only FARs >= ~1e-3 are
meaningful there). ORL is tiny; for a real deployment calibrate on a larger labelled set
of non-enrolled people with :func:`calibrate_scores`.

Output: ``calibration.toml`` beside the bundle, read by :func:`ppfr.serve.app.create_app`.
"""

from __future__ import annotations

import math
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from ppfr.data.orl import load_orl, split_identities
from ppfr.errors import CheckpointError, InputError
from ppfr.methods import load
from ppfr.templates import SlerpFace

CALIBRATION_FILE = "calibration.toml"


def read_calibration(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration beside a bundle, or None when there is none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        cal = tomllib.loads(path.read_text())
        float(cal["threshold"]), float(cal["far"]), str(cal["data"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt calibration file ({e})") from None
    return cal


def _protected_scores(
    model, faces: torch.Tensor, generator: torch.Generator, key_generator: torch.Generator
) -> np.ndarray:
    """Scores (queries x protected gallery) of every image against every image."""
    with torch.inference_mode():
        t = torch.cat([model.embed(model.protect(b, generator=generator)) for b in faces.split(64)])
        t = t.float().cpu()
        sf = SlerpFace.from_model(model, t.shape[1])
        keys = sf.draw_keys(len(t), generator=key_generator)
        # a second, independent protection of each image plays the query
        q = torch.cat([model.embed(model.protect(b, generator=generator)) for b in faces.split(64)])
        return sf.scores(q.float().cpu(), sf.protect(t, keys), keys).numpy()


def calibrate_scores(scores: np.ndarray, labels: np.ndarray, far: float) -> dict[str, Any]:
    """Threshold (accept ``score > t``) at ``far`` from a square score matrix and labels.

    The diagonal (an image against itself) is left out.
    """
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    s, issame = scores[off], same[off]
    imp = np.sort(s[~issame])[::-1]  # impostor scores, best first
    allowed = math.floor(far * len(imp) + 1e-9)  # false accepts we may make
    if allowed < 1:
        raise InputError(
            f"FAR {far:g} needs at least {math.ceil(1 / far):,} impostor pairs, "
            f"there are {len(imp):,}"
        )
    # accepting score > imp[allowed] takes in at most `allowed` impostors (fewer on ties)
    threshold = float(imp[min(allowed, len(imp) - 1)])
    return {
        "threshold": float(threshold),
        "far_measured": float(np.mean(s[~issame] > threshold)),
        "tar": float(np.mean(s[issame] > threshold)),
        "impostor_pairs": int((~issame).sum()),
        "genuine_pairs": int(issame.sum()),
    }


def calibrate(
    model_dir: str | os.PathLike,
    far: float = 1e-3,
    seed: int = 0,
    write: bool = True,
    *,
    train: Any = None,
    heldout: Any = None,
    test_identities: int = 10,
) -> dict[str, Any]:
    """Calibrate a bundle on ORL training identities (module docstring); writes the file.

    ``train`` / ``heldout`` (labelled :class:`~ppfr.data.base.FaceDataset`) replace the ORL
    split's training and held-out identities, e.g. with a larger labelled set. The ORL
    split holds out ``test_identities`` people with ``seed``, as ``ppfr demo`` and
    ``ppfr train configs/<method>-orl.toml`` do, so a model trained that way is calibrated
    on the people it trained on and checked on the ones it never saw.
    """
    if not 0 < far < 1:
        raise InputError(f"far must be in (0, 1), got {far}")
    model = load(model_dir)  # client + server: calibration protects faces itself
    train_ids, test_ids = split_identities(test_identities, seed)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    key_gen = torch.Generator().manual_seed(seed + 1)
    data = f"ORL training identities (split seed {seed}, {len(train_ids)} people)"
    if train is None:
        train = load_orl(train_ids, aligned=True)
    else:
        data = f"a given set of {len(set(train.labels))} people"
    result = calibrate_scores(
        _protected_scores(model, train.stack(), gen, key_gen), np.asarray(train.labels), far
    )
    test = heldout if heldout is not None else load_orl(test_ids, aligned=True)
    s = _protected_scores(model, test.stack(), gen, key_gen)
    labels = np.asarray(test.labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    held = s[off]
    cal = {
        "method": model.name,
        "client_fingerprint": model.fingerprint("client"),
        "server_fingerprint": model.fingerprint("server"),
        "far": far,
        "data": data,
        "decision": "accept when score > threshold",
        **result,
        "heldout_far": float(np.mean(held[~same[off]] > result["threshold"])),
        "heldout_tar": float(np.mean(held[same[off]] > result["threshold"])),
        "heldout_impostor_pairs": int((~same[off]).sum()),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "model trained on the calibration identities: FAR on new people may be "
        "higher; see heldout_far",
    }
    if write:
        path = Path(model_dir) / CALIBRATION_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(tomli_w.dumps(cal))
        os.replace(tmp, path)
    return cal
