r"""DCTDP: differential privacy with learnable budgets in the frequency domain.

Ji et al., ECCV 2022. The client turns a face :math:`X` into 192 block-DCT channels
:math:`x = e(X)` (:mod:`ppfr.freq`) and drops the DC coefficient of each colour (channels
0, 64, 128: most of the visual energy), keeping :math:`N = 189 \cdot 112 \cdot 112`
coefficients :math:`x_i`. Each gets Laplace noise, drawn anew for every image and call:

.. math:: p_i = x_i + \mu_i + b_i\,\ell_i, \qquad \ell_i \sim \mathrm{Laplace}(0, 1),
   \qquad b_i = \frac{\Delta_i}{\epsilon_i},
   \qquad \epsilon_i = \mathrm{softmax}(\rho)_i \cdot \bar\epsilon \cdot N.

:math:`\Delta_i` is the sensitivity of coefficient :math:`i` (its range), :math:`\epsilon_i`
its share of the privacy budget. The softmax fixes the total :math:`\sum_i \epsilon_i =
\bar\epsilon N`; training learns only how it is split (:math:`\rho`) and a noise offset
(:math:`\mu`), both starting at 0 (an even split, :math:`\epsilon_i = \bar\epsilon`).
The noise is reparameterised (:math:`b_i \ell_i` with :math:`\ell_i` drawn first), so
:math:`\rho` and :math:`\mu` are trained jointly with the recognizer :math:`f` on its
ArcFace loss :math:`\ell(f(p), y)`; the noise is there in training and at inference.
Published budgets: :math:`\bar\epsilon` = 0.5 and 1 (``eps_mean``, default 1).

Our choices, where the paper and its public code leave them open or differ:

- :math:`\rho, \mu` are **per element** (189x112x112 each, as in the paper and public
  code): the budget can follow the face's layout, not just its frequencies.
- **Sensitivity from data.** The public code fixes :math:`\Delta_i = 1`, which makes the
  noise negligible next to coefficients that reach hundreds. Ours is estimated once before
  training by :meth:`DCTDP.prepare` (the trainer's data hook): per channel, the range
  between the ``sensitivity_quantile`` and ``1 - sensitivity_quantile`` quantiles (0.1% /
  99.9%: a range robust to a few outliers) of that channel's coefficients over a sample
  of up to ``sensitivity_images`` training faces, at ``sensitivity_positions`` random
  block positions per face; floored at 1e-3 (below a thousandth of a grey level the
  channel carries nothing). Per channel, not per element: a per-position range from a
  few thousand faces would be noisy, and the learned split already adapts per element.
  Before ``prepare`` the sensitivity is the worst case over all images (each plane spans
  255 levels, so an AC coefficient spans at most :math:`255 \sum_a |D_{ua}| \sum_b
  |D_{vb}|`: :func:`ppfr.freq.coefficient_range`), a valid but far larger bound. It
  lives in a buffer of the client part, so bundles and checkpoints carry it and a resumed
  run does not estimate it again.
- **Noise per image.** The public code draws one noise map per batch; ours draws
  independent noise for every image (a shared draw would let a batch's images be
  subtracted from each other).
- **Optimiser.** The public code trains :math:`\rho, \mu` with Adam; the engine runs SGD,
  so they get their own learning-rate factor (``budget_lr_scale``, default 10) and no
  weight decay (decay would pull the split back to even for no reason). SGD with a large
  factor can throw single elements' :math:`\rho` far enough that their noise overflows,
  so :math:`\rho` is clamped to ``[-budget_logit_bound, budget_logit_bound]`` (10): the
  total stays fixed, no element's budget moves more than :math:`e^{10}` from even.
  The offset is parameterised in units of each channel's sensitivity
  (:math:`\mu_i = \Delta_i m_i`, ``mu`` stores :math:`m`): in raw units the channels'
  gradients differ by the ratio of their ranges (up to 10^5) and one learning rate cannot
  suit them all.
- **The total is exact.** The split and the noise scales :math:`b_i` are computed in
  float64 and the budgets renormalised to :math:`\bar\epsilon N`, so the stated total holds
  to float64 precision whatever summation order the CPU's kernels pick (in float32 it
  does not: docs/determinism.md); :math:`b_i` is cast to the coefficients' dtype only when the
  noise is drawn.
- **Scale.** The recognizer reads :math:`p_i / \Delta_i`: each channel divided by its
  sensitivity, so that at an even split the noise is :math:`\mathrm{Laplace}(1/\bar\epsilon)`
  in every channel and the signal spans about one unit (raw coefficients span 0.03 to 400
  across channels, and a single scale leaves the noisiest channels dominating the first
  convolution). The server keeps its own copy of the sensitivities (a buffer of the server
  part, set by ``prepare``), so a server bundle needs no client weights.

The representation is unbounded (Laplace noise), so ``representation_range`` is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods._builders import Recognition, RecognizerConfig, build_recognizer
from ppfr.methods._checks import check_faces
from ppfr.methods._registry import register_method
from ppfr.methods._steps import JointStep, Stage
from ppfr.methods.base import Client, Method

#: the 189 channels DCTDP keeps: all but the DC coefficient of each colour
KEPT_CHANNELS = tuple(c for c in range(freq.NUM_CHANNELS) if c % 64 != 0)
NUM_KEPT = len(KEPT_CHANNELS)
#: N: noisy elements per face, over which the total budget eps_mean * N is split
NUM_ELEMENTS = NUM_KEPT * freq.SIZE * freq.SIZE
#: smallest sensitivity an estimate may give (coefficient units)
MIN_SENSITIVITY = 1e-3


def worst_case_sensitivity() -> Tensor:
    """Per kept channel, the largest range any two images can give it: (189,) float32
    (:func:`ppfr.freq.coefficient_range`)."""
    return freq.coefficient_range(KEPT_CHANNELS).float()


@dataclass
class DCTDPConfig(RecognizerConfig):
    #: mean privacy budget per element; the total eps_mean * N is fixed (paper: 0.5, 1)
    eps_mean: float = 1.0
    #: learning-rate factor of the budget split rho and the offset mu
    budget_lr_scale: float = 10.0
    #: rho is clamped to [-bound, bound]: no element's budget moves more than e^bound from
    #: an even split, which keeps every noise scale finite whatever the optimiser does
    budget_logit_bound: float = 10.0
    #: sensitivity estimate: training faces sampled, block positions per face, tail quantile
    sensitivity_images: int = 2048
    sensitivity_positions: int = 256
    sensitivity_quantile: float = 0.001

    def __post_init__(self) -> None:
        if not self.eps_mean > 0:
            raise InputError(f"eps_mean must be positive, got {self.eps_mean}")
        if self.budget_lr_scale < 0 or self.budget_logit_bound <= 0:
            raise InputError("budget_logit_bound must be positive, budget_lr_scale >= 0")
        if self.sensitivity_images < 1 or self.sensitivity_positions < 1:
            raise InputError("sensitivity_images and sensitivity_positions must be positive")
        if not 0 <= self.sensitivity_quantile < 0.5:
            raise InputError("sensitivity_quantile must be in [0, 0.5)")


def laplace(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard Laplace samples by the inverse CDF: ``-sign(v) log(1 - 2|v|)``, v ~ U[-1/2, 1/2).

    ``1 - 2|v|`` is floored at 2^-24, the resolution of float32 uniforms, so the one draw
    ``v = -1/2`` gives a large finite sample (16.6) instead of infinity.
    """
    device = generator.device if generator is not None else like.device
    v = torch.rand(shape, generator=generator, device=device, dtype=like.dtype) - 0.5
    magnitude = -torch.log((1 - 2 * v.abs()).clamp_min(2.0**-24))
    return (torch.sign(v) * magnitude).to(like.device)


class DCTDPClient(Client):
    """The device side: ``e`` without DC, the learned budget split and offset, the noise."""

    def __init__(self, cfg: DCTDPConfig) -> None:
        super().__init__()
        shape = (NUM_KEPT, freq.SIZE, freq.SIZE)
        self.eps_mean, self.bound = cfg.eps_mean, cfg.budget_logit_bound
        self.rho = nn.Parameter(torch.zeros(shape))
        self.mu = nn.Parameter(torch.zeros(shape))
        self.register_buffer("sensitivity", worst_case_sensitivity())
        #: 1 once ``sensitivity`` was estimated from data, 0 while it is the worst case
        self.register_buffer("sensitivity_estimated", torch.zeros((), dtype=torch.uint8))
        self.register_buffer("kept", torch.tensor(KEPT_CHANNELS), persistent=False)

    def coefficients(self, x: Tensor) -> Tensor:
        """Faces -> the 189 non-DC channels (B, 189, 112, 112)."""
        return freq.encode(x).index_select(1, self.kept)

    def budgets(self) -> Tensor:
        """eps_i = softmax(rho)_i * eps_mean * N, (189, 112, 112) float64.

        The total eps_mean * N is the privacy guarantee, so it holds by construction, not
        to a tolerance: the split is computed in float64 and renormalised to the total. In
        float32 the softmax's normaliser is a sum of 2.4M terms whose rounding depends on the
        summation order PyTorch's kernels pick for the CPU (docs/determinism.md); in float64
        the sum is the total to ~1e-15 relative on any kernels.
        """
        with torch.autocast(self.rho.device.type, enabled=False):
            logits = self.rho.double().clamp(-self.bound, self.bound).flatten()
            share = torch.softmax(logits, 0)
            total = self.eps_mean * NUM_ELEMENTS
            eps = share * (total / share.sum())
        return eps.view_as(self.rho)

    def noise_scale(self, dtype: torch.dtype | None = None) -> Tensor:
        """b_i = sensitivity_i / eps_i, (189, 112, 112), in ``dtype`` (default: rho's).

        Computed from the float64 budgets and cast only at the end, so the noise follows
        the budgets whose total is guaranteed. Finite: rho's clamp keeps every eps_i above
        eps_mean * e^-20 (no float64 underflow) and b_i below float32's range.
        """
        b = self.sensitivity.double()[:, None, None] / self.budgets()
        return b.to(dtype or self.rho.dtype)

    def protect(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 189, 112, 112): non-DC coefficients plus fresh Laplace noise per image and call."""
        c = self.coefficients(x)
        noise = laplace(tuple(c.shape), generator, c)
        return c + self.offset() + self.noise_scale(c.dtype) * noise

    def offset(self) -> Tensor:
        """The learned noise offset in coefficient units: mu_i * sensitivity_i."""
        return self.mu * self.sensitivity[:, None, None]

    @torch.no_grad()
    def estimate_sensitivity(
        self,
        dataset,
        *,
        images: int,
        positions: int,
        quantile: float,
        generator: torch.Generator | None = None,
        batch_size: int = 32,
    ) -> Tensor:
        """Per-channel robust range of the coefficients of (a sample of) ``dataset``."""
        if len(dataset) == 0:
            raise InputError("DCTDP: cannot estimate the sensitivity from an empty dataset")
        cells = freq.SIZE * freq.SIZE
        samples = []
        for f in freq.sample_coefficients(
            dataset,
            images,
            generator=generator,
            device=self.rho.device,
            batch_size=batch_size,
            check=lambda x: check_faces(x, "DCTDP sensitivity"),
        ):
            c = f.index_select(1, self.kept).flatten(2)
            pos = torch.randint(cells, (len(c), 1, positions), generator=generator)
            pos = pos.to(c.device).expand(-1, NUM_KEPT, -1)
            samples.append(torch.gather(c, 2, pos).transpose(0, 1).flatten(1))
        values = torch.cat(samples, 1).sort(1).values  # (189, M)
        m = values.shape[1]
        lo = values[:, int(math.floor(quantile * (m - 1)))]
        hi = values[:, int(math.ceil((1 - quantile) * (m - 1)))]
        estimate = (hi - lo).clamp_min(MIN_SENSITIVITY)
        self.sensitivity.copy_(estimate)
        self.sensitivity_estimated.fill_(1)
        return estimate


class InputScale(nn.Module):
    """The server's per-channel input normalisation: divide by the sensitivities."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sensitivity", worst_case_sensitivity())

    def forward(self, p: Tensor) -> Tensor:
        return p / self.sensitivity[:, None, None]


@register_method
class DCTDP(Method):
    name = "dctdp"
    Config = DCTDPConfig
    representation_range = None

    def build_client(self) -> nn.Module:
        return DCTDPClient(self.config)

    def build_server(self) -> nn.Module:
        return Recognition(build_recognizer(self.config, NUM_KEPT), InputScale())

    @property
    def representation_shape(self) -> tuple[int, ...]:
        return (NUM_KEPT, freq.SIZE, freq.SIZE)

    def budgets(self) -> Tensor:
        """The learned per-element budgets eps_i, (189, 112, 112) float64; they sum to
        ``eps_mean * N`` to float64 precision on any machine."""
        return self._part("client").budgets()

    def noise_scale(self) -> Tensor:
        """The Laplace scale of every element, sensitivity_i / eps_i, (189, 112, 112)."""
        return self._part("client").noise_scale()

    def prepare(self, dataset, *, generator: torch.Generator | None = None) -> None:
        """Estimate each channel's sensitivity from the training faces (module docstring)."""
        cfg = self.config
        estimate = self._part("client").estimate_sensitivity(
            dataset,
            images=cfg.sensitivity_images,
            positions=cfg.sensitivity_positions,
            quantile=cfg.sensitivity_quantile,
            generator=generator,
        )
        if self.server is not None:
            self.server["input"].sensitivity.copy_(estimate)

    def view(self, p: Tensor) -> Tensor:
        """The noisy coefficients as a picture: DC set to zero (mid-grey), decoded with ``d``.

        Shape:
            - p: :math:`(N, 189, 112, 112)`; output: :math:`(N, 3, 112, 112)` in [0, 1]
        """
        return freq.decode_channels(p, KEPT_CHANNELS)

    def inversion_input(self, p: Tensor) -> Tensor:
        """What a recovery attack's inverter reads: each channel / its sensitivity.

        The attacker holds the client, hence its sensitivities (the server's copy where
        only the server part is loaded).
        """
        part = self.client if self.client is not None else self._part("server")["input"]
        return p / part.sensitivity[:, None, None]

    def stages(self) -> list[Stage]:
        client = self._part("client")
        server = self._part("server")
        head = self._part("train")["head"]
        budgets = self.param_group(
            client.rho, client.mu, lr_scale=self.config.budget_lr_scale, weight_decay=0.0
        )
        step = JointStep(client, server, head)
        return [Stage("joint", step, [self.param_group(server, head), budgets])]
