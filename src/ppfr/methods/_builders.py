"""The server's recognizer, built the same way by every method: its settings
(:class:`RecognizerConfig`), the backbone and margin head (:func:`build_recognizer`,
:func:`build_head`) and the server part around them (:class:`Recognition`, :class:`Rescale`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ppfr.nets import create_backbone, create_head


@dataclass
class RecognizerConfig:
    """Settings every method shares: the server's recognizer and its training head."""

    backbone: str = "ir18"
    backbone_width: float = 1.0
    embedding_size: int = 512
    dropout: float = 0.0
    head: str = "arcface"
    #: training identities; only training needs it (it sizes the margin head)
    num_classes: int = 0


def build_recognizer(cfg: RecognizerConfig, in_channels: int) -> nn.Module:
    return create_backbone(
        cfg.backbone,
        in_channels=in_channels,
        embedding_size=cfg.embedding_size,
        width=cfg.backbone_width,
        dropout=cfg.dropout,
    )


def build_head(cfg: RecognizerConfig) -> nn.Module:
    return create_head(cfg.head, embedding_size=cfg.embedding_size, num_classes=cfg.num_classes)


class Rescale(nn.Module):
    """A network's input scaling: ``(x - shift) / divisor`` (no weights).

    Brings a representation to inputs of order one: MinusFace's X_p in [0, 1] to [-1, 1]
    (``shift = divisor = 0.5``), DuetFace's high channels divided by ``high_coef_scale``.
    """

    def __init__(self, divisor: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.divisor, self.shift = float(divisor), float(shift)

    def forward(self, x: Tensor) -> Tensor:
        if self.shift:
            x = x - self.shift
        return x / self.divisor if self.divisor != 1.0 else x

    def extra_repr(self) -> str:
        return f"divisor={self.divisor:g}, shift={self.shift:g}"


class Recognition(nn.ModuleDict):
    """The server part of a method whose server is one recognizer: ``recognizer(input(p))``.

    ``input`` is the scaling the recognizer was trained with (:class:`Rescale`, or a module
    with weights of its own such as DCTDP's sensitivities; none: the representation as it
    is). Keys ``input`` and ``recognizer`` name the weights in bundles.
    """

    def __init__(self, recognizer: nn.Module, input_scale: nn.Module | None = None) -> None:
        scale = nn.Identity() if input_scale is None else input_scale
        super().__init__({"input": scale, "recognizer": recognizer})

    def forward(self, p: Tensor) -> Tensor:
        return self["recognizer"](self["input"](p))
