"""Training: a method's :class:`Stage` list, and the training steps several methods share
(:class:`RecognizerStep`, :class:`JointStep`). The engine (:mod:`ppfr.train.engine`) runs
the stages; a step is ``module(x, y) -> (loss, logs)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Stage:
    """One training stage of a method.

    ``module(x, y)`` returns ``(loss, logs)``; the engine wraps it in DDP when distributed.
    ``param_groups`` are ``{"params": [...], "lr_scale": float}``, optionally with a
    ``"weight_decay"`` that replaces the run's for that group (DCTDP's noise budgets take
    none); ``frozen`` modules are kept in eval mode; each epoch passes over the data
    ``repeats`` times. ``begin(dataset, flip)``, when given, runs before the stage's first
    epoch (also when a run resumes into the stage), after ``frozen`` is frozen, with the
    training dataset and whether batches are mirrored: a step whose client is frozen can
    precompute per-image work there (MinusFace's stage 2).
    """

    name: str
    module: nn.Module
    param_groups: list[dict[str, Any]]
    frozen: list[nn.Module] = field(default_factory=list)
    repeats: int = 1
    begin: Callable[[Any, bool], None] | None = None


class RecognizerStep(nn.Module):
    """Training step "recognizer + margin head on inputs made by ``prepare``".

    ``prepare`` runs without gradients (it is the frozen client side).
    """

    def __init__(self, prepare, recognizer: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.prepare = prepare
        self.recognizer = recognizer
        self.head = head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            inputs = self.prepare(x)
        loss = self.head(self.recognizer(inputs), y)
        return loss, {"id": float(loss.detach())}


class JointStep(nn.Module):
    """Training step "client, recognizer and margin head on one loss": gradients reach the
    client's weights through its ``protect`` (DCTDP's noise budgets, FracFace's refining)."""

    def __init__(self, client: nn.Module, server: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.client, self.server, self.head = client, server, head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss = self.head(self.server(self.client.protect(x)), y)
        return loss, {"id": float(loss.detach())}
