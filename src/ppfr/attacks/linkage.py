r"""The linkage attack: link protected representations to face photos by identity.

Pixel inversion asks whether a protected representation can be turned back into the face.
The identity attacks of 2025-2026 ask a cheaper question: can it be *linked* to a photo of
the person? FaceLinkGen (arXiv 2602.02914) distils a student embedder from pairs the
attacker makes itself and links MinusFace's protected images to photos with AUROC 0.995 on
LFW. This attack is that distillation, for every registered method:

1. The attacker holds the client (white box) and faces of its own identities (``aux``,
   disjoint from the victims), and a face recognizer :math:`R` of its own that is never the
   judge (:mod:`ppfr.attacks._recognizer`; by default the unprotected ArcFace trained on its
   identities).
2. It protects its faces with the client, drawing fresh protection randomness every epoch
   (as the recovery attack does), and mirrors each face with probability 1/2 before
   protecting it (a mirrored photo is as much the attacker's as the photo).
3. It trains a *student* :math:`S` (an IR backbone on the inverter's input,
   :func:`~ppfr.attacks._inversion.inversion_input`, standardised per channel) so that
   :math:`S(\mathrm{protect}(x))` matches :math:`R`'s flip-sum embedding of :math:`x` in
   cosine. The flip-sum target is the same for a face and its mirror image.
4. For the victims it compares :math:`S(\mathrm{protect}(x_a))` with :math:`R(x_b)`, the
   photo of another capture :math:`b \ne a`: the server-side representation is linked to a
   photo the attacker found elsewhere.

With ``views > 1`` the attacker sees several protections of each victim face and averages
the student's embeddings over them (then re-normalises): the mean is invariant to the order
in which the random choices were drawn, like the adaptive attack's statistics, and the
student needs no retraining. Scores: :func:`linkage_scores`.

Example:
    >>> from ppfr.attacks import create_attack
    >>> attack = create_attack("linkage", recognizer=arcface_model, epochs=12)
    >>> report = attack.run(model, victims, labels, aux=own_faces, seed=0)  # doctest: +SKIP
    >>> report["auc"], report["rank1"]                                      # doctest: +SKIP
    (0.97, 0.93)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ppfr.attacks._inversion import inversion_input, own
from ppfr.attacks._recognizer import (
    DEFAULT_RECOGNIZER_EPOCHS,
    AttackerRecognizer,
    attacker_recognizer,
)
from ppfr.attacks._registry import register_attack
from ppfr.attacks._scoring import check_labels, eval_mode, method_name
from ppfr.attacks.base import Attack, LinkageReport
from ppfr.errors import InputError
from ppfr.eval.verification import roc_auc, tar_at_far
from ppfr.judge import balanced_pairs, verification_accuracy
from ppfr.methods._checks import check_faces
from ppfr.nets import create_backbone, list_backbones

#: FARs at which the linkage TAR is reported; one the pairs cannot measure is None (n/a)
LINKAGE_FARS = (1e-2, 1e-3, 1e-4)
#: faces whose protections estimate the student's input statistics
_STATS_FACES = 64
#: learning-rate factor of the weights a student copies from the recognizer
_COPIED_LR_SCALE = 0.1
#: gradient-norm clip of the student's steps (a guard against rare spikes)
_MAX_GRAD_NORM = 100.0


class Student(nn.Module):
    """Protected representation -> unit embedding in the attacker's recognizer's space.

    Inputs are standardised per channel with statistics of the attacker's own protected
    faces (DCT coefficients reach several hundred, pixels stay below one), then rescaled to
    ``scale`` and ``shift`` (by default 1 and 0; a student started from the recognizer's
    own backbone takes the faces' statistics, so that it reads a face as the recognizer
    does), then an IR backbone (:mod:`ppfr.nets`) with ``in_channels`` input channels.

    Args:
        in_channels: channels of the representation the student reads.
        embedding_size: the recognizer's embedding size.
        width: IR width multiplier (ignored with ``net``).
        backbone: IR depth name (ignored with ``net``).
        net: a ready backbone to use instead (a copy of the recognizer's, see
            :meth:`from_backbone`).

    Shape:
        - input: :math:`(B, C, 112, 112)`, what
          :func:`~ppfr.attacks._inversion.inversion_input` returns
        - output: :math:`(B, D)`, unit rows

    Example:
        >>> s = Student(3, 64, width=0.125).eval()
        >>> s(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        in_channels: int,
        embedding_size: int,
        width: float = 0.25,
        backbone: str = "ir18",
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("mean", 0.0), ("std", 1.0), ("shift", 0.0), ("scale", 1.0)):
            self.register_buffer(name, torch.full((1, in_channels, 1, 1), value))
        self.net = net or create_backbone(
            backbone, in_channels=in_channels, embedding_size=embedding_size, width=width
        )
        #: modules trained from their initialisation; None: all of them (a fresh backbone),
        #: a list: only these, the rest copied from the recognizer (see :meth:`from_backbone`)
        self.fresh: list[nn.Module] | None = None

    def param_groups(self, lr: float, copied_scale: float) -> list[dict[str, Any]]:
        """Adam groups: fresh weights at ``lr``, weights copied from the recognizer at
        ``lr * copied_scale`` (Adam's normalised steps would otherwise move a trained network
        far from what made it good within a few steps)."""
        if self.fresh is None:
            return [{"params": list(self.parameters()), "lr": lr}]
        fresh = {id(p) for m in self.fresh for p in m.parameters()}
        new = [p for p in self.parameters() if id(p) in fresh]
        old = [p for p in self.parameters() if id(p) not in fresh]
        return [{"params": new, "lr": lr}, {"params": old, "lr": lr * copied_scale}]

    def train(self, mode: bool = True) -> Student:
        """Train mode, except the batch norms copied from the recognizer: their statistics
        describe faces as the recognizer saw them, and small batches would blur them."""
        super().train(mode)
        if mode and self.fresh is not None:
            fresh = {id(m) for m in self.fresh}
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in fresh:
                    m.eval()
        return self

    @classmethod
    def from_backbone(cls, backbone: nn.Module, in_channels: int, seed: int) -> Student:
        """A student starting from a copy of the recognizer's IR backbone.

        The copy keeps every weight; where the representation has another channel count
        than a face, the input convolution is replaced by a fresh one (drawn with ``seed``).
        """
        net = copy.deepcopy(backbone).float().cpu()
        for p in net.parameters():
            p.requires_grad_(True)
        fresh: list[nn.Module] = []
        if in_channels != net.in_channels:
            old = net.stem[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                new = nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=False)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            net.stem[0] = new
            net.stem[1] = nn.BatchNorm2d(old.out_channels)  # statistics of the new input
            net.in_channels = in_channels
            fresh = [net.stem[0], net.stem[1]]
        student = cls(in_channels, net.head[-1].num_features, net=net)
        student.fresh = fresh
        return student

    @torch.no_grad()
    def standardise_with(self, total: Tensor, total_sq: Tensor, count: int) -> None:
        """Set the per-channel mean and std from running sums over ``count`` values each."""
        mean, std = _mean_std(total, total_sq, count)
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))

    @torch.no_grad()
    def rescale_to(self, faces: Tensor) -> None:
        """After standardising, give each channel the mean and std of ``faces`` (B, C, H, W)."""
        x = faces.double()
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean, std = _mean_std(x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), n)
        self.shift.copy_(mean.view_as(self.shift))
        self.scale.copy_(std.view_as(self.scale))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net((x - self.mean) / self.std * self.scale + self.shift), dim=1)


def _mean_std(total: Tensor, total_sq: Tensor, count: int) -> tuple[Tensor, Tensor]:
    mean = total.double() / count
    var = (total_sq.double() / count - mean**2).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(1e-6).float()


def linkage_scores(
    linked: Any,
    photos: Any,
    labels: Any,
    *,
    seed: int = 0,
    fars: Sequence[float] = LINKAGE_FARS,
) -> dict[str, Any]:
    """Score linkage embeddings ``linked`` against photo embeddings ``photos`` of the same faces.

    Row ``i`` of ``linked`` is what the attack makes of face ``i``'s protected
    representation, row ``i`` of ``photos`` the recognizer's embedding of face ``i``'s photo;
    ``labels[i]`` is its identity. A pair ``(a, b)`` compares ``linked[a]`` with
    ``photos[b]`` by cosine similarity, never ``a == b`` (the photo is another capture than
    the protected one).

    Returns:
        - ``accuracy``: verification accuracy on balanced same/different-person pairs drawn
          with ``seed`` (:func:`ppfr.judge.balanced_pairs`), threshold cross-validated over
          10 folds as the judge's leakage is (:func:`ppfr.judge.verification_accuracy`);
          0.5 is chance;
        - ``auc``: area under the ROC over *every* ordered pair ``a != b``
          (:func:`ppfr.eval.verification.roc_auc`); 0.5 is chance;
        - ``tar_at_far``: ``{"0.01": TAR, ...}`` over every ordered pair; ``None`` where the
          impostor pairs are fewer than ``1/far`` (:func:`ppfr.eval.verification.tar_at_far`);
        - ``rank1``: the linked embeddings of all but the first face of each identity as
          probes, the photos of those first faces as the gallery; ``1 / identities`` is
          chance (NaN without two identities and a probe);
        - ``pairs``, ``genuine``, ``impostor``: how many ordered pairs the AUC and TARs use.

    Shape:
        - linked, photos: :math:`(N, D)`; labels: :math:`(N,)`

    Example:
        >>> import numpy as np
        >>> e = np.eye(2)[[0, 0, 1, 1]]             # two people, perfectly linked
        >>> s = linkage_scores(e, e, [0, 0, 1, 1])
        >>> s["auc"], s["rank1"], s["accuracy"]
        (1.0, 1.0, 1.0)
    """
    s = _unit_rows(linked, "linked embeddings")
    p = _unit_rows(photos, "photo embeddings")
    labels = np.asarray(labels).ravel()
    if s.shape != p.shape or len(labels) != len(s):
        raise InputError(
            f"linkage scores need one linked and one photo embedding per label, got "
            f"{s.shape}, {p.shape} and {len(labels)} labels"
        )
    sim = s @ p.T  # sim[a, b]: linked face a against photo b
    a, b, same = balanced_pairs(labels, seed=int(seed))
    accuracy = verification_accuracy(sim[a, b], same, folds=min(10, len(same)))

    off = ~np.eye(len(labels), dtype=bool)
    all_same = (labels[:, None] == labels[None, :])[off]
    # the protocol functions take distances (smaller = same); 2 - 2cos is the squared L2
    # distance of unit vectors, so the ROC is the same as on the similarity itself
    dist = np.clip(2.0 - 2.0 * sim[off], 0.0, 4.0)
    auc = roc_auc(dist, all_same)
    tars = {format(f, "g"): tar_at_far(dist, all_same, f) for f in fars}

    _, first = np.unique(labels, return_index=True)
    probe = np.setdiff1d(np.arange(len(labels)), first)
    if len(probe) and len(first) > 1:
        nearest = first[np.argmax(s[probe] @ p[first].T, axis=1)]
        rank1 = float(np.mean(labels[nearest] == labels[probe]))
    else:
        rank1 = math.nan
    return {
        "accuracy": float(accuracy),
        "auc": math.nan if auc is None else float(auc),
        "tar_at_far": tars,
        "rank1": rank1,
        "pairs": int(off.sum()),
        "genuine": int(all_same.sum()),
        "impostor": int((~all_same).sum()),
    }


def _unit_rows(x: Any, what: str) -> np.ndarray:
    a = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise InputError(f"{what}: expected an (N, D) array with N >= 2, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{what}: contains NaN or infinite values")
    a = a.astype(np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


@register_attack("linkage")
class LinkageAttack(Attack):
    """Distil the attacker's recognizer into a student that reads protected representations.

    Args:
        recognizer: the attacker's recognizer ``R`` (see
            :func:`~ppfr.attacks._recognizer.attacker_recognizer`): a ppfr model, a bundle
            directory, an ``.onnx`` path, a torch module, or ``None`` to train an unprotected
            ArcFace on the attacker's labelled faces (``aux_labels`` in :meth:`run`).
        width: width multiplier of the student's IR backbone.
        backbone: the student's backbone (``ppfr.nets.list_backbones()``; IR-18 default).
        epochs: passes over the attacker's faces, each with fresh protection randomness.
        batch_size: faces per optimisation step.
        lr: Adam learning rate, cosine-annealed over the epochs; weights the student copies
            from the recognizer train at a tenth of it.
        views: protections of each victim face whose student embeddings are averaged.
        flip: mirror each training face with probability 1/2 before protecting it.
        init: ``"recognizer"`` starts the student from a copy of the recognizer's own IR
            backbone where it has one (an unprotected ppfr model or an IR module; a new
            input convolution where the channel counts differ): its features already tell
            faces apart, which 300 faces could not teach from scratch. ``"scratch"`` (and
            any recognizer without a torch backbone, such as an ONNX file) builds a fresh
            IR backbone of ``backbone`` and ``width``.
        recognizer_epochs: epochs of the recognizer trained when ``recognizer`` is None.
        onnx_range: pixel range an ONNX recognizer expects.
        progress: show a progress bar while training.
    """

    name = "linkage"

    def __init__(
        self,
        recognizer: Any = None,
        *,
        width: float = 0.25,
        backbone: str = "ir18",
        epochs: int = 20,
        batch_size: int = 16,
        lr: float = 1e-3,
        views: int = 1,
        flip: bool = True,
        init: str = "recognizer",
        recognizer_epochs: int = DEFAULT_RECOGNIZER_EPOCHS,
        onnx_range: tuple[float, float] = (0.0, 255.0),
        progress: bool = True,
    ) -> None:
        if not float(width) > 0 or int(epochs) < 1 or int(batch_size) < 2 or not lr > 0:
            raise InputError(
                f"width and lr must be positive, epochs at least 1 and batch_size at least 2 "
                f"(batch norm), got width={width}, epochs={epochs}, batch_size={batch_size}, "
                f"lr={lr}"
            )
        if int(views) < 1:
            raise InputError(f"views must be at least 1, got {views}")
        if init not in ("recognizer", "scratch"):
            raise InputError(f"init must be 'recognizer' or 'scratch', got {init!r}")
        if backbone not in list_backbones():
            raise InputError(
                f"unknown student backbone {backbone!r}; known: {', '.join(list_backbones())}"
            )
        self.recognizer_source = recognizer
        self.width, self.backbone = float(width), backbone
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.views, self.flip, self.init = int(views), bool(flip), init
        self.recognizer_epochs, self.onnx_range = int(recognizer_epochs), onnx_range
        self.progress = progress
        self.recognizer: AttackerRecognizer | None = None
        self.student: Student | None = None
        self.history: list[float] = []

    # ---- what the student reads
    @staticmethod
    @torch.no_grad()
    def features(model: Any, faces: Tensor, generator: torch.Generator) -> Tensor:
        """Protect ``faces`` with randomness from ``generator``: the student's (N, C, 112, 112)."""
        device = getattr(model, "device", torch.device("cpu"))
        return inversion_input(model, model.protect(faces.to(device), generator)).float().cpu()

    def _recognizer(self, aux: Tensor, aux_labels: Any, seed: int) -> AttackerRecognizer:
        if self.recognizer is None:
            self.recognizer = attacker_recognizer(
                self.recognizer_source,
                aux=aux,
                aux_labels=aux_labels,
                seed=seed,
                epochs=self.recognizer_epochs,
                onnx_range=self.onnx_range,
                progress=self.progress,
            )
        return self.recognizer

    # ---- training
    def fit(self, model: Any, aux: Tensor, aux_labels: Any = None, *, seed: int = 0) -> Student:
        """Train the student on the attacker's faces ``aux`` ((N, 3, 112, 112) in [-1, 1]).

        ``aux_labels`` is needed only when the attack trains its own recognizer.
        """
        aux = check_faces(aux, "linkage attack (attacker's faces)").float().cpu()
        if len(aux) < 2:
            raise InputError("linkage attack: the attacker needs at least 2 faces")
        recognizer = self._recognizer(aux, aux_labels, seed)
        target = recognizer.embed_flip(aux)  # flip-invariant, so mirrored faces share it
        g = torch.Generator().manual_seed(int(seed))
        mine = own(model)  # the attacker's training data: its faces as it protects them
        with eval_mode(model):
            # per-channel statistics from one protection of a sample of the faces
            pick = torch.randperm(len(aux), generator=g)[:_STATS_FACES]
            total = total_sq = None
            count = 0
            for i in range(0, len(pick), 32):
                x = self.features(mine, aux[pick[i : i + 32]], g).double()
                s, s2 = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
                total, total_sq = (s, s2) if total is None else (total + s, total_sq + s2)
                count += x.shape[0] * x.shape[2] * x.shape[3]
            student = self._student(recognizer, len(total), target.shape[1], aux, seed)
            student.standardise_with(total, total_sq, count)
            opt = torch.optim.Adam(student.param_groups(self.lr, _COPIED_LR_SCALE))
            base_lrs = [group["lr"] for group in opt.param_groups]
            self.history = []
            bar = tqdm(
                range(self.epochs),
                desc=f"linkage attack on {method_name(model)}",
                unit="epoch",
                disable=not self.progress,
                leave=False,
            )
            for epoch in bar:
                for group, base in zip(opt.param_groups, base_lrs, strict=True):
                    group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
                order = torch.randperm(len(aux), generator=g)
                # a last batch of one would break batch norm: fold it into the one before
                starts = list(range(0, len(order), self.batch_size))
                if len(starts) > 1 and len(order) - starts[-1] < 2:
                    starts.pop()
                student.train()
                total_loss = 0.0
                for k, i in enumerate(starts):
                    end = starts[k + 1] if k + 1 < len(starts) else len(order)
                    idx = order[i:end]
                    faces = aux[idx]
                    if self.flip:
                        mirror = torch.rand(len(idx), generator=g) < 0.5
                        faces = torch.where(mirror.view(-1, 1, 1, 1), faces.flip(-1), faces)
                    x = self.features(mine, faces, g)  # fresh randomness every step
                    loss = (1.0 - (student(x) * target[idx]).sum(dim=1)).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    # an input with no variation at all (a protection that sends a constant)
                    # makes every batch norm divide by ~sqrt(eps): the gradients overflow.
                    # Skip such a step; the student then keeps its initial, constant answer
                    norm = torch.nn.utils.clip_grad_norm_(student.parameters(), _MAX_GRAD_NORM)
                    if torch.isfinite(norm):
                        opt.step()
                    total_loss += float(loss.detach()) * len(idx)
                self.history.append(total_loss / len(order))
                bar.set_postfix(cos_loss=f"{self.history[-1]:.4f}")
        self.student = student.eval()
        return self.student

    def _student(
        self, recognizer: AttackerRecognizer, channels: int, dim: int, aux: Tensor, seed: int
    ) -> Student:
        backbone = recognizer.backbone() if self.init == "recognizer" else None
        usable = (
            backbone is not None
            and hasattr(backbone, "stem")
            and hasattr(backbone, "in_channels")
            and isinstance(getattr(backbone, "head", None), nn.Sequential)
            and getattr(backbone.head[-1], "num_features", None) == dim
        )
        self.started_from = "recognizer" if usable else "scratch"
        if usable:
            student = Student.from_backbone(backbone, channels, seed)
            if channels == 3:  # read a 3-channel representation on the scale faces have
                student.rescale_to(aux)
            return student
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return Student(channels, dim, self.width, self.backbone)

    # ---- attacking
    @torch.no_grad()
    def link(self, model: Any, faces: Tensor, *, seed: int = 1) -> Tensor:
        """The student's embeddings of the victims' protected faces: (N, D), unit rows.

        Each face is protected ``views`` times (randomness from ``seed``, independent of the
        training draws); the student's embeddings of the views are averaged and
        re-normalised.
        """
        if self.student is None:
            raise InputError("linkage attack: call fit() (or run()) before link()")
        faces = check_faces(faces, "linkage attack (victims)").float().cpu()
        g = torch.Generator().manual_seed(int(seed))
        out = []
        with eval_mode(model):
            for i in range(0, len(faces), 32):
                chunk = faces[i : i + 32]
                e = sum(self.student(self.features(model, chunk, g)) for _ in range(self.views))
                out.append(F.normalize(e, dim=1))
        return torch.cat(out)

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
    ) -> LinkageReport:
        """Fit on ``aux``, link the ``victims`` (identities ``labels``) and score them.

        The report (:class:`~ppfr.attacks.base.LinkageReport`) has ``accuracy``, ``auc``,
        ``tar_at_far``, ``rank1`` (:func:`linkage_scores`, the student's embedding of a
        protected face against the recognizer's flip-sum embedding of another photo), the
        same four for the recognizer's photos against each other (``recognizer_accuracy``,
        ... : the upper bound a perfect student reaches),
        ``chance_rank1``, ``train_loss`` (last epoch's mean ``1 - cos``), ``fit_seconds``,
        ``recognizer`` (its name), the settings, ``method``, ``n``, ``aux`` and ``seed``.
        ``judge`` is accepted for a uniform attack API and not used: the linkage is scored
        in the attacker's own recognizer's space, which is what the attacker would use.
        """
        labels = check_labels(victims, labels, "linkage attack")
        if aux is None:
            raise InputError(
                "the linkage attack trains on the attacker's own faces: pass aux= "
                "(faces of identities disjoint from the victims)"
            )
        t0 = time.perf_counter()
        self.fit(model, aux, aux_labels, seed=seed)
        fit_s = time.perf_counter() - t0
        assert self.recognizer is not None
        linked = self.link(model, victims, seed=seed + 1)
        photos = self.recognizer.embed_flip(victims.float().cpu())
        scores = linkage_scores(linked, photos, labels, seed=seed)
        upper = linkage_scores(photos, photos, labels, seed=seed)
        return LinkageReport(
            attack=self.name,
            method=method_name(model),
            n=int(len(victims)),
            aux=int(len(aux)),
            seed=int(seed),
            **scores,
            **{f"recognizer_{k}": upper[k] for k in ("accuracy", "auc", "tar_at_far", "rank1")},
            chance_rank1=1.0 / len(np.unique(labels)),
            recognizer=self.recognizer.name,
            train_loss=self.history[-1],
            fit_seconds=fit_s,
            settings=self.settings(),
        )

    def settings(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "backbone": self.backbone,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "views": self.views,
            "flip": self.flip,
            "init": getattr(self, "started_from", self.init),
        }


__all__ = ["LINKAGE_FARS", "LinkageAttack", "Student", "linkage_scores"]
