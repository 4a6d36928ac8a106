"""Training: a TOML-backed config and one engine for every method."""

from ppfr.train.config import DataConfig, OptimConfig, StageConfig, TrainConfig
from ppfr.train.engine import Trainer, shutdown_distributed, train, training_data

__all__ = [
    "DataConfig",
    "OptimConfig",
    "StageConfig",
    "TrainConfig",
    "Trainer",
    "shutdown_distributed",
    "train",
    "training_data",
]
