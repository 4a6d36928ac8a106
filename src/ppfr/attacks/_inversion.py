"""Plumbing shared by the attacks that learn to invert a protection (recovery, adaptive).

The attacker owns the client bundle (white box) and a set of faces of its own (*auxiliary*
identities, disjoint from the victims). It protects its faces with the client, drawing its
own per-image randomness afresh every epoch, and trains an :class:`Inverter` to map what
the server would receive back to the face, with an L1 loss (the published recovery attack).
Subclasses decide what the inverter reads (:meth:`InversionAttack.features`).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ppfr.attacks._scoring import (
    average_face_scores,
    check_labels,
    eval_mode,
    method_name,
    score_images,
)
from ppfr.attacks.base import Attack, InversionReport
from ppfr.errors import InputError
from ppfr.methods._checks import check_faces
from ppfr.nets.unet import UNet

FACE_SHAPE = (3, 112, 112)


def inversion_input(model: Any, p: Tensor) -> Tensor:
    """What an inverter reads from representations ``p``: (N, C, 112, 112) float.

    A method whose representation is not a stack of 112x112 maps (DuetFace's packed
    vector) says how to read it with ``inversion_input(p)``; otherwise ``p`` itself.
    """
    custom = getattr(model, "inversion_input", None)
    x = custom(p) if callable(custom) else p
    if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[-2:]) != FACE_SHAPE[1:]:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(
            f"cannot invert a {method_name(model)} representation of shape {got}: the method "
            "needs an inversion_input(p) method returning (N, C, 112, 112) maps"
        )
    return x.float()


class _OwnFaces:
    """``model`` as the attacker applies it to its own faces: ``protect`` is the model's
    ``protect_own``; everything else is the model's."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def protect(self, faces: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._model.protect_own(faces, generator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def own(model: Any) -> Any:
    """The model through which the attacker protects its *own* training faces.

    Usually the model itself: the attacker holds the client. A model that defines
    ``protect_own(faces, generator)`` says otherwise: an attacker who lacks a secret of the
    deployment (a keyed tile order, :mod:`ppfr.attacks.keys`) protects its faces as it
    believes the deployment does, while the victims' representations come from the real
    ``protect``.
    """
    return _OwnFaces(model) if callable(getattr(model, "protect_own", None)) else model


class Inverter(nn.Module):
    """U-Net from protected maps to a face in [0, 1].

    Inputs are standardised per channel with statistics of the attacker's training data
    (DCT coefficients reach several hundred, pixels are below one), then a U-Net with
    four down-sampling levels and a sigmoid output.

    Shape:
        - input: :math:`(B, C, 112, 112)`; output: :math:`(B, 3, 112, 112)` in [0, 1]
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.net = UNet(in_channels, 3, width=width)

    @torch.no_grad()
    def standardise_with(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net((x - self.mean) / self.std))


class InversionAttack(Attack):
    """Train an :class:`Inverter` on the attacker's faces, then reconstruct the victims'.

    Args:
        width: U-Net base width (64 is the full-size network of the published attack; the
            demo uses a smaller one to fit its time budget).
        epochs: passes over the attacker's faces, each with fresh protection randomness.
        batch_size: faces per optimisation step.
        lr: Adam learning rate (halved at 60% and 85% of the epochs).
        progress: show a progress bar while training.
    """

    name = "inversion"

    def __init__(
        self,
        width: int = 64,
        epochs: int = 30,
        batch_size: int = 16,
        lr: float = 2e-3,
        progress: bool = True,
    ) -> None:
        if int(width) < 1 or int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
            raise InputError(
                f"width, epochs and batch_size must be at least 1 and lr positive, got "
                f"width={width}, epochs={epochs}, batch_size={batch_size}, lr={lr}"
            )
        self.width, self.epochs, self.batch_size = int(width), int(epochs), int(batch_size)
        self.lr, self.progress = float(lr), progress
        self.inverter: Inverter | None = None
        self.history: list[float] = []

    # ---- what the inverter reads (subclasses)
    @abstractmethod
    def features(self, model: Any, faces: Tensor, generator: torch.Generator) -> Tensor:
        """Faces -> what the inverter reads, (N, C, 112, 112); randomness from ``generator``."""

    @torch.no_grad()
    def _features(
        self, model: Any, faces: Tensor, generator: torch.Generator, out: Tensor | None = None
    ) -> Tensor:
        """:meth:`features` of ``faces`` in batches of 32, written into ``out`` when given.

        One buffer, filled in place and reused across epochs: the features of a wide
        representation are large (DCTDP sends 9.5 MB a face), and a list of chunks
        joined by ``cat``, built while the previous epoch's features were still alive, held
        three copies of them at once.
        """
        device = getattr(model, "device", torch.device("cpu"))
        for i in range(0, len(faces), 32):
            f = self.features(model, faces[i : i + 32].to(device), generator)
            if out is None:
                out = torch.empty((len(faces), *f.shape[1:]), dtype=torch.float32)
            out[i : i + len(f)] = f
        if out is None:
            raise InputError(f"{self.name} attack: no faces to protect")
        return out

    # ---- the training loss (subclasses may add terms)
    def prepare(self, model: Any, aux: Tensor, aux_labels: Any, seed: int) -> None:  # noqa: B027
        """Called once before training with the attacker's faces (default: nothing)."""

    def loss(self, output: Tensor, target: Tensor, idx: Tensor) -> Tensor:
        """Training loss of reconstructions ``output`` against faces ``target`` (both in
        [0, 1]); ``idx`` indexes the batch in the attacker's faces. The published L1."""
        return F.l1_loss(output, target)

    # ---- training and reconstruction
    def fit(self, model: Any, aux: Tensor, *, seed: int = 0, aux_labels: Any = None) -> Inverter:
        """Train the inverter on the attacker's faces ``aux`` ((N, 3, 112, 112) in [-1, 1]).

        ``aux_labels`` (their identities) is used only by attacks that need it.
        """
        aux = check_faces(aux, f"{self.name} attack (attacker's faces)")
        if len(aux) < 2:
            raise InputError(f"{self.name} attack: the attacker needs at least 2 faces")
        self.prepare(model, aux, aux_labels, int(seed))
        g = torch.Generator().manual_seed(int(seed))
        target = (aux.float().cpu() + 1) / 2
        mine = own(model)  # the attacker's training data: its faces as it protects them
        with eval_mode(model):
            x = self._features(mine, aux, g)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                inverter = Inverter(x.shape[1], self.width)
            inverter.standardise_with(x)
            opt = torch.optim.Adam(inverter.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, [int(self.epochs * 0.6), int(self.epochs * 0.85)], gamma=0.5
            )
            self.history = []
            bar = tqdm(
                range(self.epochs),
                desc=f"{self.name} attack on {method_name(model)}",
                unit="epoch",
                disable=not self.progress,
                leave=False,
            )
            for epoch in bar:
                if epoch:  # fresh randomness for every pass, as the attacker can draw it
                    x = self._features(mine, aux, g, out=x)
                order = torch.randperm(len(aux), generator=g)
                inverter.train()
                total = 0.0
                for i in range(0, len(order), self.batch_size):
                    idx = order[i : i + self.batch_size]
                    loss = self.loss(inverter(x[idx]), target[idx], idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                sched.step()
                self.history.append(total / len(order))
                bar.set_postfix(l1=f"{self.history[-1]:.4f}")
        self.inverter = inverter.eval()
        return self.inverter

    @torch.no_grad()
    def reconstruct(self, model: Any, faces: Tensor, *, seed: int = 1) -> Tensor:
        """Victims' faces -> the attacker's reconstructions, (N, 3, 112, 112) in [0, 1].

        The victims' protection randomness is drawn with ``seed``, independently of the
        attacker's training randomness.
        """
        if self.inverter is None:
            raise InputError(f"{self.name} attack: call fit() (or run()) before reconstruct()")
        faces = check_faces(faces, f"{self.name} attack (victims)")
        with eval_mode(model):
            x = self._features(model, faces, torch.Generator().manual_seed(int(seed)))
        return torch.cat(
            [self.inverter(x[i : i + 64]) for i in range(0, len(x), 64)]
            or [torch.empty(0, *FACE_SHAPE)]
        )

    def run(
        self,
        model: Any,
        victims: Tensor,
        labels: Any,
        *,
        aux: Tensor | None = None,
        aux_labels: Any = None,
        seed: int = 0,
        judge: Any = None,
    ) -> InversionReport:
        """Fit on ``aux``, reconstruct ``victims`` (identities ``labels``) and score them.

        The report (:class:`~ppfr.attacks.base.InversionReport`) has ``ssim``, ``psnr``,
        ``leakage``, ``rank1`` (see
        :func:`ppfr.attacks._scoring.score_images`), ``floor_ssim`` and ``floor_psnr`` (what
        the attacker's average face scores without looking at anything: the floor a
        reconstruction must rise above, :func:`~ppfr.attacks._scoring.average_face_scores`),
        ``train_l1`` (last epoch's training loss: the L1, plus any term a subclass adds),
        ``fit_seconds``, the attack's settings, ``method``, ``n`` and ``seed``.
        """
        labels = check_labels(victims, labels, f"{self.name} attack")
        if aux is None:
            raise InputError(
                f"the {self.name} attack trains on the attacker's own faces: pass aux= "
                "(faces of identities disjoint from the victims)"
            )
        t0 = time.perf_counter()
        self.fit(model, aux, seed=seed, aux_labels=aux_labels)
        fit_s = time.perf_counter() - t0
        recon = self.reconstruct(model, victims, seed=seed + 1)
        scores = score_images(recon, victims, labels, seed=seed, judge=judge)
        return InversionReport(
            attack=self.name,
            method=method_name(model),
            n=int(len(victims)),
            aux=int(len(aux)),
            seed=int(seed),
            **scores,
            **average_face_scores(aux, victims),
            train_l1=self.history[-1],
            fit_seconds=fit_s,
            settings=self.settings(),
        )

    def settings(self) -> dict[str, Any]:
        return {"width": self.width, "epochs": self.epochs, "batch_size": self.batch_size}
