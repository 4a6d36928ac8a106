r"""FracFace: fractal-based privacy-preserving face recognition (NeurIPS 2025).

OpenReview JSSvYZKvL8. The client turns a face into block-DCT channels
:math:`x = e(X)` (:mod:`ppfr.freq`, the 192 channels MinusFace and PartialFace use) and
sends a representation whose *positions* no longer follow the face:

1. **Frequency channels refining.** The low frequencies, which carry what a person sees,
   are dropped (the 10 channels with :math:`u + v \le 3` of each colour: 192 -> 162), and a
   learned 1x1 layer mixes the sparse high-frequency channels into fewer, denser ones
   (162 -> 81). The paper's ablation: refining alone costs accuracy, with the mapping it
   does not.
2. **Frequency fractal mapping.** The refined maps are cut into tiles and the tiles are put
   in a fixed, self-similar order: a recursive quadrant remap of ``depth`` levels
   (:func:`ppfr.remap.fractal_order`; depth 2 is a 4x4 grid of 28x28 tiles). Inside a tile
   the layout stays, so the recognizer still reads local texture; the face's outline is
   broken up. Deeper maps hide more and cost accuracy beyond depth 2 (the paper's ablation).

The server's recognizer reads the 81 remapped maps; client (the refining layer) and server
train together in one stage with an ArcFace head.

**What we could not confirm.** The paper's text was not available to us, only its abstract
and the figures quoted in ``shared/research/field-2026.md`` (192 -> 162 -> 81 channels, a
fractal remap of feature positions, depth 2). Which 30 channels go first, what the refining
layer is (we use a 1x1 convolution with batch norm) and the exact fractal (we use the
quadrant remap above) are our reading, not the authors' code. The fractal order is fixed and
public, so an attacker holding the client undoes it exactly; ``inversion_input`` does so
for the attacks (the strongest honest reading of the threat model).

**Keyed client (ours, not the paper's).** With ``key`` set, the tiles go in the order
:func:`ppfr.remap.keyed_order` draws from that secret integer instead of the public fractal
order; the recognizer trains for that order, so each key needs its own server. A key is a
secret of the deployment: it sits in the model's config, so a client published without it
(and any attack on "the public client") lacks it. ``inversion_input`` still undoes the true
order, the case of a leaked key; :mod:`ppfr.attacks.keys` measures an attacker without it,
and how much of the key the protected faces themselves give away (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ppfr import freq, remap
from ppfr.errors import InputError
from ppfr.methods._builders import Recognition, RecognizerConfig, build_recognizer
from ppfr.methods._registry import register_method
from ppfr.methods._steps import JointStep, Stage
from ppfr.methods.base import Client, Method


@dataclass
class FracFaceConfig(RecognizerConfig):
    #: drop the channels with u + v <= this of every colour (3: 10 per colour, 192 -> 162)
    dropped_uv_sum: int = 3
    #: channels after refining (the paper's 81)
    refined_channels: int = 81
    #: levels of the fractal remap (grid 2^depth; it must divide 112: depth <= 4)
    depth: int = 2
    #: the refining layer sees the coefficients divided by this (they reach several hundred)
    coef_scale: float = 128.0
    #: None: the public fractal order (the paper); an integer: a secret keyed tile order
    #: (:func:`ppfr.remap.keyed_order`; draw one with ``secrets.randbits(63)``)
    key: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= 4:
            raise InputError(f"FracFace depth must be 0..4 (2^depth divides 112), got {self.depth}")
        if self.refined_channels < 1:
            raise InputError("FracFace refined_channels must be at least 1")
        if not 0 <= self.dropped_uv_sum < 14:
            raise InputError(f"FracFace dropped_uv_sum must be 0..13, got {self.dropped_uv_sum}")
        if self.key is not None:
            if isinstance(self.key, bool) or not isinstance(self.key, int):
                raise InputError(f"FracFace key must be an integer or None, got {self.key!r}")
            if not 0 <= self.key < 2**63:
                raise InputError(f"FracFace key must be in [0, 2**63), got {self.key}")
            if self.depth < 1:
                raise InputError("FracFace key needs depth >= 1 (a 1x1 grid has one order)")

    @property
    def grid(self) -> int:
        """Tiles per side of the remap (``2^depth``)."""
        return 1 << self.depth

    def tile_order(self) -> Tensor:
        """The client's tile order: keyed when ``key`` is set, else the fractal one."""
        if self.key is not None:
            return remap.keyed_order(self.grid, self.key)
        return remap.fractal_order(self.depth)


class FracFaceClient(Client):
    """The device side: encode, drop the low frequencies, refine, remap."""

    def __init__(self, cfg: FracFaceConfig) -> None:
        super().__init__()
        low = set(freq.low_frequency_channels(cfg.dropped_uv_sum))
        kept = [c for c in range(freq.NUM_CHANNELS) if c not in low]
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long))
        self.coef_scale = cfg.coef_scale
        self.refine = nn.Sequential(
            nn.Conv2d(len(kept), cfg.refined_channels, 1, bias=False),
            nn.BatchNorm2d(cfg.refined_channels),
        )
        self.grid = cfg.grid
        self.register_buffer("order", cfg.tile_order())

    def refined(self, x: Tensor) -> Tensor:
        """(B, refined_channels, 112, 112): the refined channels, positions as in the face."""
        f = freq.encode(x).index_select(1, self.kept)
        return self.refine(f / self.coef_scale)

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, refined_channels, 112, 112), tiles in the client's order (no randomness)."""
        return remap.remap_tiles(self.refined(x), self.order, self.grid)


@register_method
class FracFace(Method):
    name = "fracface"
    Config = FracFaceConfig
    representation_range = None  # batch-normalised channels, unbounded

    def build_client(self) -> nn.Module:
        return FracFaceClient(self.config)

    def build_server(self) -> nn.Module:
        return Recognition(build_recognizer(self.config, self.config.refined_channels))

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (self.config.refined_channels, freq.SIZE, freq.SIZE)

    def view(self, p: Tensor) -> Tensor:
        """The representation as a picture: each position's root mean square over the
        channels, scaled to [0, 1] per image, in grey (where the energy sits).

        Shape:
            - p: :math:`(N, 81, 112, 112)`; output: :math:`(N, 3, 112, 112)` in [0, 1]
        """
        energy = p.float().square().mean(1, keepdim=True).sqrt()
        top = energy.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (energy / top).expand(-1, 3, -1, -1)

    def inversion_input(self, p: Tensor) -> Tensor:
        """What the attacks read: the tiles put back (the attacker holds the public order,
        or a keyed client's leaked key)."""
        # from the config, so a server-only model reads it too
        order = remap.inverse_order(self.config.tile_order())
        return remap.remap_tiles(p, order, self.config.grid)

    def stages(self) -> list[Stage]:
        client = self._part("client")
        server = self._part("server")
        head = self._part("train")["head"]
        step = JointStep(client, server, head)
        return [Stage("joint", step, [self.param_group(server, head, client)])]
