from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _api import served_app
from typer.testing import CliRunner

import ppfr
from ppfr import freq
from ppfr.cli import app as cli
from ppfr.errors import InputError
from ppfr.export import _DenseEncode, export_client, protect_module
from ppfr.serve.wire import encode_representation

#: onnxruntime vs PyTorch on outputs in [0, 1] (float32 through a U-Net and two transforms)
ATOL = 1e-4


def _noise(generator: torch.Generator, b: int, n: int) -> torch.Tensor:
    """What MinusFace's protect draws: per shuffle, torch.rand(b, 192), in call order."""
    return torch.stack([torch.rand(b, freq.NUM_CHANNELS, generator=generator) for _ in range(n)], 1)


def test_dense_encode_matches_freq(faces):
    np.testing.assert_allclose(_DenseEncode()(faces), freq.encode(faces), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("shuffles,skip", [(1, True), (2, False)])
def test_onnx_parity_with_pytorch(tmp_path, faces, shuffles, skip):
    torch.manual_seed(0)
    bundle = tmp_path / "m"
    cfg = {"backbone": "ir18", "backbone_width": 0.125, "embedding_size": 64}
    model = ppfr.create(
        "minusface", generator_width=4, shuffles=shuffles, generator_skip=skip, **cfg
    )
    model.save(bundle)
    out = export_client(bundle, tmp_path / "client.onnx")
    model = ppfr.load(bundle, part="client")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["ppfr_method"] == "minusface"
    assert meta["ppfr_client_fingerprint"] == model.fingerprint("client")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for b in (1, len(faces)):  # the batch dimension is dynamic
        x = faces[:b]
        with torch.inference_mode():
            ref = model.protect(x, generator=torch.Generator().manual_seed(5)).numpy()
        noise = _noise(torch.Generator().manual_seed(5), b, shuffles).numpy()
        got = sess.run(None, {"faces": x.numpy(), "noise": noise})[0]
        assert got.shape == ref.shape == (b, 3 * shuffles, 112, 112)
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # the permutation follows the noise: other noise, other output (the same channels)
    other = sess.run(None, {"faces": x.numpy(), "noise": np.random.rand(*noise.shape).astype("f")})
    # (an untrained g(x) = x + U(x) has a tiny residue, so its views differ by little)
    assert np.abs(other[0] - got).max() > (1e-4 if skip else 0.01)


def test_onnx_output_is_accepted_by_the_server(bundle, tmp_path, faces):
    out = export_client(bundle, tmp_path / "c.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    fp = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["ppfr_client_fingerprint"]
    noise = np.random.default_rng().random((2, 1, 192), dtype=np.float32)
    p = sess.run(None, {"faces": faces[:2].numpy(), "noise": noise})[0]
    s = served_app(bundle, tmp_path)
    assert s.post("/v1/galleries/g1/subjects/a", encode_representation(p, fp)).status_code == 200
    r = s.post("/v1/galleries/g1/subjects/a/verify", encode_representation(p[:1], fp))
    assert r.json()["score"] > 0.999


def test_arcface_and_unsupported(tmp_path, faces):
    torch.manual_seed(0)
    path = tmp_path / "arc"
    ppfr.create("arcface", backbone="ir18", backbone_width=0.125, embedding_size=64).save(path)
    out = export_client(path, tmp_path / "arc.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["faces"]
    np.testing.assert_allclose(sess.run(None, {"faces": faces.numpy()})[0], faces.numpy())
    with pytest.raises(InputError, match="not exportable yet"):
        protect_module(SimpleNamespace(name="partialface"))


def test_a_hardened_client_the_graph_cannot_follow_is_refused():
    small = {"backbone_width": 0.125, "embedding_size": 64, "generator_width": 4}
    for option in ({"equalise": True}, {"tile_grid": 2}):
        model = ppfr.create("minusface-hardened", **small, **option)
        with pytest.raises(InputError, match=next(iter(option))):
            protect_module(model)
    # the hardened options the graph does not read (stage 1's) still export
    assert protect_module(ppfr.create("minusface-hardened", **small, pixel_clamp=False))


def test_export_cli(bundle, tmp_path):
    out = tmp_path / "x" / "c.onnx"
    r = CliRunner().invoke(cli, ["export", "--model", str(bundle), "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "wrote" in r.stdout
    r = CliRunner().invoke(
        cli, ["export", "--model", str(bundle), "--part", "server", "--onnx", "y"]
    )
    assert r.exit_code == 2 and "only --part client" in r.output
