r"""DuetFace: collaborative inference by splitting the frequency channels.

Mi et al., ACM MM 2022. The face :math:`X` is turned into 192 block-DCT channels
:math:`x = e(X)` (:mod:`ppfr.freq`) and split in two:

- the **low** part :math:`x_l`: the 30 channels of frequencies
  :math:`(u, v) \in \{(0,0), (0,1), (0,2), (0,3), (0,4), (0,5), (1,0), (1,1), (2,0), (3,0)\}`
  (indices 0, 1, 2, 3, 4, 5, 8, 9, 16, 24 of each colour), which carry almost all of the
  visual energy, **stays on the device**;
- the **high** part :math:`x_h`, the other 162 channels, is sent to the server. On its own
  it looks like faint edges on grey (:meth:`DuetFace.view`).

**Client.** A small MobileFaceNet :math:`f_c` (:mod:`ppfr.nets.mobilefacenet`) reads
:math:`x_l / \kappa_l` and produces four feature maps :math:`c_1..c_4` (64@28, 128@14,
128@7, 512@7 at full width). The client sends :math:`x_h` and :math:`c_1..c_4`.

**Server.** An IR backbone :math:`f_s` reads :math:`x_h / \kappa_h` (162 input channels).
After each of its four stages, with :math:`s_i` that stage's output, an *interaction block*
turns the client's map into a spatial attention mask and applies it:

.. math::
    a_i = \mathrm{up}\big(\mathrm{mean}_{ch}(W_i * c_i + b_i)\big), \qquad
    m_i = \frac{a_i - \min a_i}{\max(\max a_i - \min a_i,\ \epsilon)} \cdot R_i, \qquad
    s_i' = s_i + s_i \odot m_i \cdot w_i

with :math:`W_i` a 1x1 convolution from the client's channels to the stage's channels,
:math:`\mathrm{mean}_{ch}` the mean over channels, :math:`\mathrm{up}` bilinear resizing to
the stage's resolution (the client's maps are half the server's: 28 -> 56, 14 -> 28,
7 -> 14, 7 -> 7), min and max taken per image, :math:`R_i` the face-region mask at that
resolution (or 1 with ``face_mask = False``), and :math:`w_i` a learned scalar that starts
at 0, so the untrained server is the plain IR network. The 1x1 convolution is applied
before resizing: both are linear and bilinear weights sum to one, so this equals
resizing first (as the public code does) at a fraction of the cost. The :math:`\epsilon`
keeps a constant map finite (it becomes 0 instead of 0/0).

**Face region.** Inputs are aligned, so the landmarks sit at the template positions
(:data:`ppfr.align.TEMPLATE`) and the region is one fixed mask (:func:`face_region_mask`):
the convex hull of the five landmarks (eyes, mouth corners; the nose lies inside), dilated
by a disc of radius ``mask_margin`` times the inter-ocular distance (0.5 -> 17.6 px),
i.e. every pixel within that distance of the hull; area-averaged to each stage's
resolution. Being a function of the config, it is rebuilt by the server and never sent.

**Training.** Stage ``client``: :math:`f_c` and its own ArcFace head learn to recognise
from :math:`x_l` alone. Stage ``server``: :math:`f_c` is frozen; :math:`f_s`, the four
interaction blocks (:math:`W_i, b_i, w_i`) and the server's head are trained.

**What is sent** (:meth:`DuetFace.protect`): one flat float32 row per face,
``[x_h | c_1 | c_2 | c_3 | c_4]``, each block flattened in (channel, row, column) order;
:attr:`DuetFace.layout` gives every block's offset and shape and :meth:`DuetFace.unpack`
undoes it. :math:`x_h` travels as raw DCT coefficients (the scaling by :math:`\kappa_h` is
the server's business). At full width that is 162x112x112 + 106,624 floats, 8.56 MB per
face (the paper counts only :math:`x_h`, 54 times MinusFace's 3x112x112).

Where the public code and the paper differ: the public code creates the 1x1 convolution
anew, untrained, on every forward pass; ours are modules of the server, trained in stage 2
and saved with it. The public code also passes :math:`s_i` through a sigmoid before the
overlay and min-max normalises again after the region crop; we apply
:math:`s + s \odot m \cdot w` as the paper writes it. Our choices: :math:`\kappa_l = 128`
(as MinusFace; the low channels reach ~1000) and :math:`\kappa_h = 0.25` (the high channels
of 112-pixel faces upsampled x8 are small, a fraction of one), so both networks see
inputs of order one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._builders import RecognizerConfig, Rescale, build_head, build_recognizer
from ppfr.methods._registry import register_method
from ppfr.methods._steps import Stage
from ppfr.methods.base import Client, Method
from ppfr.nets import create_backbone, create_head
from ppfr.nets.iresnet import DEPTHS, IResNet
from ppfr.nets.mobilefacenet import feature_shapes

#: the (u, v) frequencies the client keeps, in each colour
LOW_FREQUENCIES = ((0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (2, 0), (3, 0))
#: the 30 channels that stay on the device, ascending
LOW_CHANNELS = tuple(freq.channel_index(c, u, v) for c in range(3) for u, v in LOW_FREQUENCIES)
#: the 162 channels the server receives, ascending
HIGH_CHANNELS = tuple(i for i in range(freq.NUM_CHANNELS) if i not in LOW_CHANNELS)
HIGH_SHAPE = (len(HIGH_CHANNELS), freq.SIZE, freq.SIZE)


@dataclass
class DuetFaceConfig(RecognizerConfig):
    #: MobileFaceNet channel multiplier (1.0 = the paper's network)
    client_width: float = 1.0
    #: size of the client's embedding (only used to pre-train it)
    client_embedding_size: int = 128
    #: kappa_l: the client reads the low channels divided by this
    coef_scale: float = 128.0
    #: kappa_h: the server reads the high channels divided by this
    high_coef_scale: float = 0.25
    #: multiply the attention masks by the face region around the template landmarks
    face_mask: bool = True
    #: the region's dilation radius, in inter-ocular distances
    mask_margin: float = 0.5
    #: floor of (max - min) in the min-max normalisation of the attention
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if str(self.backbone).lower() not in DEPTHS:
            raise InputError(
                f"duetface: the server backbone must be an IR network ({', '.join(DEPTHS)}), "
                f"got {self.backbone!r}"
            )
        for name in ("client_width", "coef_scale", "high_coef_scale", "eps"):
            if not getattr(self, name) > 0:
                raise InputError(f"duetface: {name} must be positive, got {getattr(self, name)}")
        if self.mask_margin < 0:
            raise InputError(f"duetface: mask_margin must be >= 0, got {self.mask_margin}")


# --------------------------------------------------------------------------- face region
@cache
def _region_cpu(margin: float) -> Tensor:
    # OpenCV is slow to load and only this mask, built once, needs it
    import cv2  # deferred: OpenCV

    from ppfr.align import TEMPLATE  # deferred: ppfr.align imports OpenCV

    size = freq.SIZE
    hull = cv2.convexHull(TEMPLATE.astype(np.float32))[:, 0]
    canvas = np.zeros((size, size), np.uint8)
    # fixed-point vertices (4 fractional bits) keep the template's sub-pixel positions
    cv2.fillConvexPoly(canvas, np.round(hull * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    radius = round(margin * float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0])))
    if radius > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        canvas = cv2.dilate(canvas, disc)
    return torch.from_numpy(canvas.astype(np.float32))


def face_region_mask(size: int = freq.SIZE, margin: float = 0.5) -> Tensor:
    """The face region of an aligned face at ``size`` x ``size``, values in [0, 1].

    Built at 112x112: the convex hull of the five template landmarks, dilated by a disc of
    radius ``margin`` inter-ocular distances (1 inside, 0 outside), then area-averaged to
    ``size`` (so cells on the border get the fraction of their pixels inside).

    Shape:
        - output: :math:`(size, size)`

    Example:
        >>> m = face_region_mask(7)
        >>> float(m[0, 0]), float(m[4, 3])  # a corner, the nose
        (0.0, 1.0)
    """
    if size < 1 or freq.SIZE % size:
        raise InputError(f"face_region_mask: size must divide {freq.SIZE}, got {size}")
    region = _region_cpu(float(margin))
    return F.interpolate(region[None, None], size=(size, size), mode="area")[0, 0].clone()


# --------------------------------------------------------------------------- interaction
def minmax_normalise(a: Tensor, eps: float = 1e-6) -> Tensor:
    """Map each image's values to [0, 1]: ``(a - min) / max(max - min, eps)``.

    A constant map (max == min) becomes all zeros rather than NaN.

    Shape:
        - a: :math:`(B, \\ldots)`; output: same
    """
    flat = a.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (a.ndim - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (a.ndim - 1))
    return (a - lo) / (hi - lo).clamp_min(eps)


class Interaction(nn.Module):
    """One interaction block: a client feature map becomes attention on a server stage.

    Shape:
        - s: :math:`(B, C_s, H, W)` (server stage output); c: :math:`(B, C_c, h, w)`
        - region: :math:`(H, W)` or None; output: same as ``s``
    """

    def __init__(self, client_channels: int, server_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(client_channels, server_channels, 1)
        #: w: the overlay's strength; 0 at first, so the server starts as the plain IR net
        self.weight = nn.Parameter(torch.zeros(()))
        self.eps = eps

    def attention(self, c: Tensor, size: tuple[int, int], region: Tensor | None = None) -> Tensor:
        """The mask m in [0, 1], (B, 1, *size)."""
        a = self.conv(c).mean(dim=1, keepdim=True)
        if tuple(a.shape[-2:]) != tuple(size):
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        m = minmax_normalise(a, self.eps)
        return m * region if region is not None else m

    def forward(self, s: Tensor, c: Tensor, region: Tensor | None = None) -> Tensor:
        m = self.attention(c, tuple(s.shape[-2:]), region)
        return s + s * m * self.weight


# --------------------------------------------------------------------------- the two sides
class DuetFaceClient(Client):
    """The device side: ``e``, the channel split, and the MobileFaceNet on the low part.

    Called, it returns the parts it sends (the high channels and the four maps);
    :meth:`protect` packs them into the one row that is sent.
    """

    def __init__(self, cfg: DuetFaceConfig) -> None:
        super().__init__()
        self.coef_scale = cfg.coef_scale
        self.backbone = create_backbone(
            "mobilefacenet",
            in_channels=len(LOW_CHANNELS),
            embedding_size=cfg.client_embedding_size,
            width=cfg.client_width,
        )
        self.register_buffer("low", torch.tensor(LOW_CHANNELS), persistent=False)
        self.register_buffer("high", torch.tensor(HIGH_CHANNELS), persistent=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Faces -> (low (B, 30, 112, 112), high (B, 162, 112, 112)) raw coefficients."""
        f = freq.encode(x)
        return f.index_select(1, self.low), f.index_select(1, self.high)

    def feature_maps(self, low: Tensor) -> list[Tensor]:
        return self.backbone.feature_maps(low / self.coef_scale)

    def embed_low(self, low: Tensor) -> Tensor:
        """The client's own embedding (pre-training only)."""
        return self.backbone(low / self.coef_scale)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Faces -> (high channels, the four feature maps): everything that is sent."""
        low, high = self.split(x)
        return high, self.feature_maps(low)

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Faces -> (B, total) packed rows (see :attr:`DuetFace.layout`). Deterministic: no
        randomness, so ``generator`` is unused."""
        return pack(*self(x))


def pack(high: Tensor, maps: list[Tensor]) -> Tensor:
    """High channels (B, 162, 112, 112) and the four maps -> (B, total) rows."""
    return torch.cat([high.flatten(1), *(m.flatten(1) for m in maps)], dim=1)


class DuetFaceServer(nn.Module):
    """The service side: the IR backbone on the high channels with four interaction blocks."""

    def __init__(self, cfg: DuetFaceConfig, client_shapes: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.recognizer = build_recognizer(cfg, len(HIGH_CHANNELS))
        if not isinstance(self.recognizer, IResNet):  # the config check makes this unreachable
            raise InputError("duetface: the server backbone must be an IR network")
        self.interactions = nn.ModuleList(
            Interaction(shape[0], channels, cfg.eps)
            for shape, channels in zip(client_shapes, self.recognizer.stage_channels, strict=True)
        )
        #: kappa_h: the recognizer reads the high channels divided by it
        self.input = Rescale(divisor=cfg.high_coef_scale)
        self.use_region = cfg.face_mask
        # stage i's output is 112 / 2^(i+1) wide (stride 2 at the start of every stage)
        for i in range(4):
            region = face_region_mask(freq.SIZE >> (i + 1), cfg.mask_margin)
            self.register_buffer(f"region{i}", region, persistent=False)  # rebuilt, never saved

    def region(self, i: int) -> Tensor | None:
        return getattr(self, f"region{i}") if self.use_region else None

    def forward(self, high: Tensor, maps: list[Tensor]) -> Tensor:
        """Scaled high channels and client maps -> (B, D) embeddings (not normalised)."""
        net = self.recognizer
        x = net.stem(high)
        start = 0
        for i, depth in enumerate(net.stage_depths):
            x = net.body[start : start + depth](x)
            start += depth
            x = self.interactions[i](x, maps[i], self.region(i))
        return net.head(x)


# --------------------------------------------------------------------------- training steps
class _ClientStep(nn.Module):
    """Stage 1: the MobileFaceNet and its head on the low channels."""

    def __init__(self, client: DuetFaceClient, head: nn.Module) -> None:
        super().__init__()
        self.client = client
        self.head = head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        low, _ = self.client.split(x)
        loss = self.head(self.client.embed_low(low), y)
        return loss, {"id": float(loss.detach())}


class _ServerStep(nn.Module):
    """Stage 2: the server (IR + interactions) and its head; the client is frozen."""

    def __init__(self, client: DuetFaceClient, server: DuetFaceServer, head: nn.Module) -> None:
        super().__init__()
        self.client = client
        self.server = server
        self.head = head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            high, maps = self.client(x)
        loss = self.head(self.server(self.server.input(high), maps), y)
        return loss, {"id": float(loss.detach())}


@register_method
class DuetFace(Method):
    name = "duetface"
    Config = DuetFaceConfig
    #: raw DCT coefficients and feature maps: any finite value
    representation_range = None
    representation_layout = "high channels and client feature maps packed as in DuetFace.layout"

    def build_client(self) -> nn.Module:
        return DuetFaceClient(self.config)

    def build_server(self) -> nn.Module:
        return DuetFaceServer(self.config, self.client_feature_shapes)

    def build_train(self) -> nn.Module:
        cfg = self.config
        return nn.ModuleDict(
            {
                "client_head": create_head(
                    cfg.head, embedding_size=cfg.client_embedding_size, num_classes=cfg.num_classes
                ),
                "head": build_head(cfg),
            }
        )

    # ---- the representation
    @property
    def client_feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of the client's four feature maps (known without building the client)."""
        return feature_shapes(self.config.client_width)

    @property
    def layout(self) -> list[tuple[str, int, tuple[int, ...]]]:
        """``(name, offset, shape)`` of each block of a packed representation row.

        Example:
            >>> import ppfr
            >>> [offset for _, offset, _ in ppfr.create("duetface").layout]
            [0, 2032128, 2082304, 2107392, 2113664]
        """
        blocks = [("high", HIGH_SHAPE)]
        blocks += [(f"map{i + 1}", s) for i, s in enumerate(self.client_feature_shapes)]
        out, offset = [], 0
        for name, shape in blocks:
            out.append((name, offset, tuple(shape)))
            offset += math.prod(shape)
        return out

    @property
    def representation_shape(self) -> tuple[int, ...]:
        _, offset, shape = self.layout[-1]
        return (offset + math.prod(shape),)

    @property
    def bytes_per_image(self) -> int:
        """Bytes the client sends per face (float32)."""
        return 4 * self.representation_shape[0]

    def pack(self, high: Tensor, maps: list[Tensor]) -> Tensor:
        """High channels (B, 162, 112, 112) and the four maps -> (B, total) rows."""
        return pack(high, maps)

    def unpack(self, p: Tensor, what: str = "unpack") -> tuple[Tensor, list[Tensor]]:
        """Undo :meth:`pack`: (B, total) -> (high (B, 162, 112, 112), [maps]) as views.

        Shape:
            - p: :math:`(B, T)` with ``T = representation_shape[0]``
            - output: :math:`(B, 162, 112, 112)` and the shapes of ``client_feature_shapes``
        """
        p = self.check_representation(p, what)
        parts = [
            p[:, offset : offset + math.prod(shape)].view(len(p), *shape)
            for _, offset, shape in self.layout
        ]
        return parts[0], parts[1:]

    # ---- the API
    def embed(self, p: Tensor) -> Tensor:
        """The server reads two inputs, the high channels (scaled by its ``input``) and the
        client's maps, so the packed row is unpacked first."""
        high, maps = self.unpack(p, "embed")
        server = self._part("server")
        return F.normalize(server(server.input(high), maps))

    def view(self, p: Tensor) -> Tensor:
        """What the sent coefficients look like: ``d`` of the 162 high channels with the 30
        low channels set to zero (a mid-grey image with faint edges), (B, 3, 112, 112)."""
        high, _ = self.unpack(p, "view")
        return freq.decode_channels(high, HIGH_CHANNELS)

    def inversion_input(self, p: Tensor) -> Tensor:
        """The high channels as the server's network sees them (divided by ``high_coef_scale``):
        (B, 162, 112, 112), the input of the recovery attack's inverter."""
        high, _ = self.unpack(p, "inversion_input")
        return high / self.config.high_coef_scale

    def stages(self) -> list[Stage]:
        client = self._part("client")
        server = self._part("server")
        train = self._part("train")
        stage1 = Stage(
            "client",
            _ClientStep(client, train["client_head"]),
            [self.param_group(client, train["client_head"])],
        )
        stage2 = Stage(
            "server",
            _ServerStep(client, server, train["head"]),
            [self.param_group(server, train["head"])],
            frozen=[client],
        )
        return [stage1, stage2]
