r"""Export the client's protect path to ONNX, so a device without PyTorch can protect faces.

``ppfr export --model DIR --part client --onnx OUT.onnx`` writes a graph with

- input ``faces``: float32 :math:`(B, 3, 112, 112)`, aligned RGB in [-1, 1];
- input ``noise``: float32 :math:`(B, n, 192)` for MinusFace (``n`` = its ``shuffles``):
  i.i.d. uniform [0, 1) numbers that the caller draws fresh for every call;
- output ``protected``: float32 :math:`(B, 3n, 112, 112)`, the representation
  :meth:`Method.protect` would send.

Why the randomness is an input. MinusFace puts the 192 residue channels in a fresh random
order for every image and call; baking one order into the graph would hand every device
the same permutation, and ONNX's ``RandomUniform`` leaves the generator (and its seeding)
to the runtime. So the graph argsorts the caller's ``noise`` (``TopK``), exactly as
:func:`ppfr.methods.minusface.shuffle_channels` argsorts ``torch.rand``. Draw it from the
operating system's CSPRNG::

    import os, numpy as np
    noise = np.frombuffer(os.urandom(4 * b * n * 192), np.uint32).reshape(b, n, 192)
    noise = (noise >> 8).astype(np.float32) / 2**24        # uniform in [0, 1), 24 bits
    protected = session.run(None, {"faces": faces, "noise": noise})[0]

The same noise gives the same permutation as PyTorch: ``tests/test_export.py`` feeds the
numbers of a seeded ``torch.Generator`` to both and compares outputs (max abs difference
below 1e-4 on [0, 1] outputs).

The frequency transform in the graph. :func:`ppfr.freq.encode` writes its output with
in-place multiply-adds on a strided view and ``unfold``, which the TorchScript exporter
cannot trace; the graph therefore computes the same linear map in its dense separable form,
:math:`F = A\,c\,A^\top` per colour plane with :math:`A = (I_{112} \otimes D)\,U`
(:math:`U` the x8 bilinear upsampling, :math:`D` the 8x8 DCT), built from
:func:`ppfr.freq.resize_matrix` and :func:`ppfr.freq.dct_matrix`. Its agreement with
``freq.encode`` is part of the parity test. ``freq.decode`` exports as it is.

Methods: ``minusface`` (and ``minusface-hardened``, through the same graph) and ``arcface``
(its client sends the face itself: the graph is the identity, ``noise`` absent). Others
raise a clear "not exportable yet" error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ppfr import freq
from ppfr.errors import InputError
from ppfr.methods import Method, load

EXPORTABLE = ("minusface", "minusface-hardened", "arcface")
#: the methods exported through MinusFace's graph. The graph has no step for the hardened
#: variant's equalise or tile_grid, so a client that uses either is refused, not exported
#: without it (its ONNX protect would send what the server was not trained on)
MINUSFACE = ("minusface", "minusface-hardened")
UNEXPORTED_OPTIONS = ("equalise", "tile_grid")
OPSET = 17


class _DenseEncode(nn.Module):
    """``freq.encode`` as two matrix products (see the module docstring).

    Shape:
        - x: :math:`(B, 3, 112, 112)` in [-1, 1]; output: :math:`(B, 192, 112, 112)`
    """

    def __init__(self) -> None:
        super().__init__()
        s, k = freq.SIZE, freq.SCALE
        up = freq.resize_matrix(s, s * k)  # (896, 112)
        a = torch.block_diag(*[freq.dct_matrix(k)] * s) @ up  # row 8I + u
        m = torch.tensor(
            [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
            dtype=torch.float64,
        )
        shift = torch.tensor([-128.0, 0.0, 0.0], dtype=torch.float64)
        self.register_buffer("a", a.float())
        self.register_buffer("ycc_w", (127.5 * m).float())
        self.register_buffer("ycc_b", (127.5 * m.sum(1) + shift).float().view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        s, k = freq.SIZE, freq.SCALE
        c = torch.einsum("oc,bchw->bohw", self.ycc_w, x) + self.ycc_b
        f = self.a @ c @ self.a.t()  # (B, 3, 896, 896): rows 8I + u, columns 8J + v
        f = f.reshape(-1, 3, s, k, s, k).permute(0, 1, 3, 5, 2, 4)
        return f.reshape(-1, freq.NUM_CHANNELS, s, s)


class _MinusFaceProtect(nn.Module):
    def __init__(self, model: Method) -> None:
        super().__init__()
        self.encode = _DenseEncode()
        client = model._part("client")
        self.generator = client.generator
        self.skip = bool(getattr(client, "skip", False))
        self.shuffles = model.config.shuffles

    def forward(self, faces: Tensor, noise: Tensor) -> Tensor:
        f = self.encode(faces)
        u = self.generator(f)
        r = -u if self.skip else f - u  # the residue exactly as MinusFaceClient.regenerate
        h, w = r.shape[2], r.shape[3]
        views = []
        for i in range(self.shuffles):
            order = noise[:, i].argsort(dim=1)  # a uniform random permutation per row
            idx = order[:, :, None, None].expand(-1, -1, h, w)
            views.append(freq.decode(torch.gather(r, 1, idx)))
        return torch.cat(views, dim=1)


class _Identity(nn.Module):
    def forward(self, faces: Tensor) -> Tensor:
        return faces * 1.0


def protect_module(model: Method) -> nn.Module:
    """The exportable protect path of a loaded client (see the module docstring)."""
    if model.name not in EXPORTABLE:
        raise InputError(
            f"{model.name}: ONNX export of the client is not exportable yet "
            f"(exportable: {', '.join(EXPORTABLE)})"
        )
    used = [k for k in UNEXPORTED_OPTIONS if getattr(model.config, k, False)]
    if used:
        raise InputError(
            f"{model.name}: ONNX export does not implement {' and '.join(used)}; this client "
            "uses it, so an exported graph would not protect as the model does"
        )
    return (_MinusFaceProtect(model) if model.name in MINUSFACE else _Identity()).eval()


def export_client(model_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the client bundle's protect path as ONNX to ``out``; returns the path.

    The graph's metadata carries the method and the client fingerprint, so what it produces
    can be sent with :func:`ppfr.serve.wire.encode_representation`.
    """
    import onnx

    model = load(model_dir, part="client")
    module = protect_module(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    faces = torch.zeros(1, 3, freq.SIZE, freq.SIZE)
    names, axes = ["faces"], {"faces": {0: "batch"}, "protected": {0: "batch"}}
    args: tuple[Tensor, ...] = (faces,)
    if model.name in MINUSFACE:
        args = (faces, torch.rand(1, model.config.shuffles, freq.NUM_CHANNELS))
        names.append("noise")
        axes["noise"] = {0: "batch"}
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape checks
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            input_names=names,
            output_names=["protected"],
            dynamic_axes=axes,
            opset_version=OPSET,
        )
    graph = onnx.load(str(tmp))
    for key, value in (
        ("ppfr_method", model.name),
        ("ppfr_client_fingerprint", model.fingerprint("client")),
        ("ppfr_representation_shape", ",".join(map(str, model.representation_shape))),
    ):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(tmp))
    os.replace(tmp, out)
    return out
