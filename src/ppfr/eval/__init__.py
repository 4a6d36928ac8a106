"""Evaluation: the field's face verification protocol on protected representations.

``verification_protocol`` scores distances or embeddings with the ten-fold protocol (mean and
std accuracy, TAR at FAR, AUC); ``evaluate_pairs`` runs a model's ``protect`` and ``embed``
with the flip-sum trick first; ``make_open_set_pairs`` / ``pairs_from_dataset`` build balanced
pairs from any labelled face set.
"""

from ppfr.eval.verification import (
    FoldResult,
    VerificationResult,
    contiguous_folds,
    evaluate_pairs,
    flip_sum_embeddings,
    make_open_set_pairs,
    pair_distances,
    pairs_from_dataset,
    roc_auc,
    tar_at_far,
    threshold_at_far,
    verification_protocol,
)

__all__ = [
    "FoldResult",
    "VerificationResult",
    "contiguous_folds",
    "evaluate_pairs",
    "flip_sum_embeddings",
    "make_open_set_pairs",
    "pair_distances",
    "pairs_from_dataset",
    "roc_auc",
    "tar_at_far",
    "threshold_at_far",
    "verification_protocol",
]
