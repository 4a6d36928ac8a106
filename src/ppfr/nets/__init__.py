"""Networks: IR and MobileFaceNet backbones, the U-Net generator and margin heads, by name.

Example:
    >>> from ppfr import nets
    >>> net = nets.create_backbone("ir18", in_channels=3, width=0.25)
    >>> sorted(nets.list_backbones())
    ['ir100', 'ir18', 'ir34', 'ir50', 'mobilefacenet']
"""

from ppfr.nets._registries import BACKBONES, GENERATORS, HEADS
from ppfr.nets.heads import ArcFaceHead, CosFaceHead, MarginHead
from ppfr.nets.iresnet import IResNet
from ppfr.nets.mobilefacenet import MobileFaceNet
from ppfr.nets.unet import UNet


def create_backbone(name: str, **config) -> IResNet | MobileFaceNet:
    return BACKBONES.build(name, **config)


def create_generator(name: str, **config) -> UNet:
    return GENERATORS.build(name, **config)


def create_head(name: str, **config) -> MarginHead:
    return HEADS.build(name, **config)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_heads() -> list[str]:
    return HEADS.names()


__all__ = [
    "ArcFaceHead",
    "CosFaceHead",
    "IResNet",
    "MarginHead",
    "MobileFaceNet",
    "UNet",
    "create_backbone",
    "create_generator",
    "create_head",
    "list_backbones",
    "list_heads",
]
