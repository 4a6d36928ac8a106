"""Unprotected ArcFace: the baseline every table needs.

There is no protection: ``protect`` hands the aligned face itself to the server, and the
server's IR backbone embeds it. Trained with the ArcFace head (s=64, m=0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ppfr.methods._builders import Recognition, RecognizerConfig, build_recognizer
from ppfr.methods._registry import register_method
from ppfr.methods._steps import RecognizerStep, Stage
from ppfr.methods.base import Client, Method


@dataclass
class ArcFaceConfig(RecognizerConfig):
    pass


class FaceAsIs(Client):
    """The client of no protection: it sends the face itself (and holds no weights)."""

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x


@register_method
class ArcFace(Method):
    name = "arcface"
    Config = ArcFaceConfig
    representation_range = (-1.0, 1.0)

    def build_client(self) -> nn.Module:
        return FaceAsIs()

    def build_server(self) -> nn.Module:
        return Recognition(build_recognizer(self.config, 3))

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (3, 112, 112)

    def stages(self) -> list[Stage]:
        server = self._part("server")
        head = self._part("train")["head"]
        step = RecognizerStep(nn.Identity(), server, head)
        return [Stage("recognizer", step, [self.param_group(server, head)])]
