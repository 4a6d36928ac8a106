"""Unprotected ArcFace: the baseline every table needs.

There is no protection: ``protect`` hands the aligned face itself to the server, and the
server's IR backbone embeds it. Trained with the ArcFace head (s=64, m=0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.methods._registry import register_method
from ppfr.methods.base import (
    Method,
    RecognizerConfig,
    RecognizerStep,
    Stage,
    build_head,
    build_recognizer,
    check_faces,
)


@dataclass
class ArcFaceConfig(RecognizerConfig):
    pass


@register_method
class ArcFace(Method):
    name = "arcface"
    Config = ArcFaceConfig
    representation_range = (-1.0, 1.0)

    def build_client(self) -> nn.Module:
        return nn.Module()  # nothing runs on the device

    def build_server(self) -> nn.Module:
        return nn.ModuleDict({"recognizer": build_recognizer(self.config, 3)})

    def build_train(self) -> nn.Module:
        return nn.ModuleDict({"head": build_head(self.config)})

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (3, 112, 112)

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._part("client")  # same contract as every method: protecting is the client's job
        return check_faces(x)

    def embed(self, p: Tensor) -> Tensor:
        p = self.check_representation(p)
        return F.normalize(self._part("server")["recognizer"](p))

    def stages(self) -> list[Stage]:
        recognizer = self._part("server")["recognizer"]
        head = self._part("train")["head"]
        step = RecognizerStep(nn.Identity(), recognizer, head)
        params = list(recognizer.parameters()) + list(head.parameters())
        return [Stage("recognizer", step, [{"params": params, "lr_scale": 1.0}])]
