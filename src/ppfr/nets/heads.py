r"""Margin heads for training recognizers: ArcFace and CosFace.

Both normalise the embedding and the class weights, so the logit of class ``j`` is
:math:`s \cos\theta_j`. The target class gets a margin:

- ArcFace: :math:`s \cos(\theta_y + m)` (s=64, m=0.5);
- CosFace: :math:`s (\cos\theta_y - m)` (s=64, m=0.4).

The loss is cross-entropy over the modified logits. For ArcFace, when
:math:`\theta_y + m > \pi` the cosine would stop decreasing, so past that point the
standard linear fallback :math:`\cos\theta_y - m \sin(m)` keeps the target logit monotonic.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.nets._registries import HEADS


class MarginHead(nn.Module, metaclass=ABCMeta):
    """Base: cosine logits against L2-normalised class centres.

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)` int64
        - output of ``forward``: scalar loss; of ``logits``: :math:`(B, C)`
    """

    #: the margin used when none is given
    default_margin: float = 0.0

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 classes, got {num_classes}")
        self.scale = scale
        self.m = self.default_margin if margin is None else margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    @abstractmethod
    def margin(self, cos_target: Tensor) -> Tensor:
        """The target class's cosine after the margin."""

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None])
        cos = cos.scatter(1, labels[:, None], self.margin(target))
        return cos * self.scale

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)


class ArcFaceHead(MarginHead):
    """Additive angular margin (ArcFace, s=64, m=0.5)."""

    default_margin = 0.5

    def margin(self, cos_target: Tensor) -> Tensor:
        sin = (1.0 - cos_target.pow(2)).clamp_min(1e-9).sqrt()
        shifted = cos_target * math.cos(self.m) - sin * math.sin(self.m)
        # beyond theta = pi - m the cosine of theta + m would rise again
        fallback = cos_target - math.sin(math.pi - self.m) * self.m
        return torch.where(cos_target > math.cos(math.pi - self.m), shifted, fallback)


class CosFaceHead(MarginHead):
    """Additive cosine margin (CosFace, s=64, m=0.4)."""

    default_margin = 0.4

    def margin(self, cos_target: Tensor) -> Tensor:
        return cos_target - self.m


HEADS.register("arcface")(ArcFaceHead)
HEADS.register("cosface")(CosFaceHead)
