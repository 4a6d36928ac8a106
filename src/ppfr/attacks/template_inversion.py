r"""Template inversion: learn to turn stored templates back into faces.

The threat ISO/IEC 24745 calls irreversibility: whoever steals a database of templates
(with or without SlerpFace) trains a decoder on faces of people they have themselves
(auxiliary identities, disjoint from the victims), then decodes the stolen templates.

Model. A small decoder :math:`D_\phi` maps a template :math:`t \in \mathbb{R}^d`
(rescaled to norm :math:`\sqrt d`, so its entries are of unit size whatever the protection
does to the norm) through a linear layer to a :math:`8w \times 7 \times 7` map, then three
blocks of (nearest x2 upsampling, 3x3 conv, batch norm, ReLU) halving the width each time
(7 -> 14 -> 28 -> 56), a 3x3 conv to 3 channels with ``tanh``, and a bilinear x2 to the
aligned 112x112 face in [-1, 1]. Trained with

.. math:: \min_\phi \; \mathbb{E}_{x \in \text{aux}}
          \big\lVert D_\phi(T(x)) - x \big\rVert_1

by Adam, where :math:`T` is the template the attacker can compute for its own faces:

* raw templates: :math:`T(x) = \mathrm{embed}(\mathrm{protect}(x))` of the face recognition
  model (the attacker has the model, the usual white-box assumption), plus mirrored faces
  with their own templates (augmentation);
* SlerpFace-protected templates (``protection`` given): the adaptive attacker knows the
  algorithm and protects its templates with keys of its own, fresh every epoch, so the
  decoder learns to see through any key.

Scoring (:meth:`TemplateInversionAttack.evaluate`), as for the viewing attack: SSIM and PSNR
of each reconstruction against the victim's face, identity leakage (the independent judge's
verification accuracy on balanced (reconstruction of A, original of B) pairs, 0.5 = chance)
and rank-1 identification of reconstructions against one original per person.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.attacks._registry import register_attack
from ppfr.attacks._scoring import (
    check_labels,
    eval_mode,
    method_name,
    score_images,
)
from ppfr.attacks.base import Attack, TemplateInversionReport
from ppfr.attacks.metrics import to_unit_range
from ppfr.errors import InputError
from ppfr.methods._checks import check_faces
from ppfr.templates import SlerpFace


class TemplateDecoder(nn.Module):
    """Templates (N, dim) -> faces (N, 3, 112, 112) in [-1, 1] (module docstring).

    Args:
        dim: template dimension.
        width: channels of the last block; the first has ``8 * width``.
    """

    def __init__(self, dim: int, width: int = 16) -> None:
        super().__init__()
        self.dim = int(dim)
        c = 8 * int(width)
        self.fc = nn.Linear(self.dim, c * 7 * 7)
        self.start = c
        blocks: list[nn.Module] = []
        for _ in range(3):  # 7 -> 14 -> 28 -> 56
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, t: Tensor) -> Tensor:
        """Shape: ``(N, dim)`` -> ``(N, 3, 112, 112)``."""
        t = F.normalize(t.flatten(1).float(), dim=1) * math.sqrt(self.dim)
        x = self.fc(t).view(len(t), self.start, 7, 7)
        x = torch.tanh(self.out(self.body(F.relu(x))))
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@register_attack("template-inversion")
class TemplateInversionAttack(Attack):
    """Decoder-based template inversion, against raw or SlerpFace-protected templates.

    Args:
        protection: attack SlerpFace-protected templates (``None``: raw templates).
        epochs: passes over the auxiliary faces.
        batch_size: faces per optimisation step.
        lr: Adam learning rate.
        width: decoder width (see :class:`TemplateDecoder`).
        flip: also train on mirrored auxiliary faces.
    """

    name = "template-inversion"

    def __init__(
        self,
        protection: SlerpFace | None = None,
        *,
        epochs: int = 30,
        batch_size: int = 32,
        lr: float = 2e-3,
        width: int = 16,
        flip: bool = True,
    ) -> None:
        if int(epochs) < 1 or int(batch_size) < 1 or int(width) < 1:
            raise InputError("epochs, batch_size and width must be at least 1")
        if not lr > 0:
            raise InputError(f"lr must be positive, got {lr!r}")
        self.protection = protection
        self.epochs, self.batch_size, self.width = int(epochs), int(batch_size), int(width)
        self.lr, self.flip = float(lr), bool(flip)
        self.decoder: TemplateDecoder | None = None
        self.losses: list[float] = []  # mean L1 per epoch of the last fit

    # ---- templates
    @torch.no_grad()
    def templates(self, model: Any, faces: Tensor, batch_size: int = 64) -> Tensor:
        """Raw templates ``model.embed(model.protect(faces))``, float32 on the CPU.

        Shape:
            faces ``(N, 3, 112, 112)`` in [-1, 1] -> ``(N, D)``.
        """
        faces = check_faces(faces, "template inversion")
        device = getattr(model, "device", torch.device("cpu"))
        with eval_mode(model):
            out = [
                model.embed(model.protect(faces[i : i + batch_size].to(device))).float().cpu()
                for i in range(0, len(faces), batch_size)
            ]
        return torch.cat(out) if out else torch.empty(0, 0)

    def _stored(self, t: Tensor, generator: torch.Generator) -> Tensor:
        """What the database holds for templates ``t``: themselves, or protected ones."""
        if self.protection is None:
            return t
        return self.protection.protect(t, self.protection.draw_keys(len(t), generator))

    # ---- training
    def fit(
        self, model: Any, aux_faces: Tensor, *, seed: int = 0, progress: bool = False
    ) -> TemplateDecoder:
        """Train the decoder on the attacker's own faces ``aux_faces`` (N, 3, 112, 112)."""
        aux_faces = check_faces(aux_faces, "template inversion (auxiliary faces)")
        if len(aux_faces) < 2:
            raise InputError("the attacker needs at least two auxiliary faces")
        faces = aux_faces.detach().float().cpu()
        if self.flip:
            faces = torch.cat([faces, faces.flip(-1)])
        t = self.templates(model, faces)
        gen = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))  # decoder initialisation
        decoder = TemplateDecoder(t.shape[1], self.width)
        opt = torch.optim.Adam(decoder.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
        self.losses = []
        epochs = range(self.epochs)
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc="template decoder", leave=False)
        decoder.train()
        for _ in epochs:
            stored = self._stored(t, gen)  # fresh keys every epoch (adaptive attacker)
            order = torch.randperm(len(t), generator=gen)
            total = 0.0
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                if len(idx) < 2:  # batch norm needs two samples
                    continue
                loss = F.l1_loss(decoder(stored[idx]), faces[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            self.losses.append(total / len(order))
        self.decoder = decoder.eval()
        return self.decoder

    # ---- attacking
    @torch.no_grad()
    def reconstruct(self, stored: Tensor) -> Tensor:
        """Decode stored (raw or protected) templates to faces in [0, 1], (N, 3, 112, 112)."""
        if self.decoder is None:
            raise InputError("the template decoder is not trained yet: call fit() first")
        if (
            not isinstance(stored, Tensor)
            or stored.ndim != 2
            or stored.shape[1] != self.decoder.dim
        ):
            got = tuple(stored.shape) if isinstance(stored, Tensor) else type(stored).__name__
            raise InputError(f"templates must have shape (N, {self.decoder.dim}), got {got}")
        return to_unit_range(self.decoder(stored.float().cpu()), (-1.0, 1.0))

    def evaluate(
        self, model: Any, victims: Tensor, labels: Any, *, seed: int = 0, judge: Any = None
    ) -> TemplateInversionReport:
        """Steal the victims' stored templates, decode them and score the reconstructions.

        The victims' database is built here: templates of ``victims``, protected with keys
        drawn from ``seed`` when the attack has a ``protection``. The report
        (:class:`~ppfr.attacks.base.TemplateInversionReport`) has ``ssim``, ``psnr``
        (capped at :data:`ppfr.attacks._scoring.PSNR_CAP`), ``leakage``, ``rank1`` as in
        the viewing attack, plus ``attack``, ``method``, ``protected``, ``n``, ``seed``.
        """
        labels = check_labels(victims, labels, "template inversion")
        gen = torch.Generator().manual_seed(int(seed) + 1_000_003)  # not the training keys
        recon = self.reconstruct(self._stored(self.templates(model, victims), gen))
        scores = score_images(recon, victims, labels, seed=seed, judge=judge)
        return TemplateInversionReport(
            attack=self.name,
            method=method_name(model),
            protected=self.protection is not None,
            n=int(len(victims)),
            seed=int(seed),
            **scores,
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
        progress: bool = False,
    ) -> TemplateInversionReport:
        """:meth:`fit` on ``aux`` (the attacker's own faces, people other than the victims),
        then :meth:`evaluate`; the report adds ``final_l1``. ``aux_labels`` is accepted for
        the uniform attack API (:class:`~ppfr.attacks.base.Attack`) and not needed."""
        if aux is None:
            raise InputError(
                "template inversion trains its decoder on the attacker's own faces: pass aux= "
                "(faces of identities disjoint from the victims)"
            )
        self.fit(model, aux, seed=seed, progress=progress)
        report = self.evaluate(model, victims, labels, seed=seed, judge=judge)
        report.final_l1 = self.losses[-1] if self.losses else math.nan
        return report


__all__ = ["TemplateDecoder", "TemplateInversionAttack"]
