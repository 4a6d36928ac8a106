"""Open-set verification on held-out identities (how ppfr scores ORL and other labelled sets).

Each image is protected and embedded once (flip-sum, the mirrored view protected
separately); pairs are all genuine pairs of the held-out identities plus as many impostor
pairs drawn with a seed; the distances go through the field's ten-fold protocol.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ppfr.data.base import FaceDataset
from ppfr.eval.verification import (
    DEFAULT_FARS,
    VerificationResult,
    flip_sum_embeddings,
    make_open_set_pairs,
    verification_protocol,
)


def evaluate_open_set(
    model,
    dataset: FaceDataset,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> tuple[VerificationResult, np.ndarray]:
    """Verification result and the per-image embeddings of ``dataset`` (held-out identities).

    ``fars``: the false accept rates to report TAR at (each needs ``1/far`` impostor pairs).
    """
    gen = torch.Generator(device=model.device).manual_seed(seed)
    emb = flip_sum_embeddings(
        model, dataset.stack(), batch_size=batch_size, generator=gen, progress=progress
    )
    a, b, issame = make_open_set_pairs(dataset.labels, seed=seed)
    dist = ((emb[a] - emb[b]) ** 2).sum(1)
    return verification_protocol(dist, issame, fars=fars, name="open-set"), emb


def time_per_image(fn, x: torch.Tensor, repeats: int = 3) -> float:
    """Median milliseconds per image of ``fn(x)`` (one warm-up call first)."""
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)) / len(x)
