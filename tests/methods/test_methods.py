"""Every registered method through the shared API (timm-style registry-driven tests)."""

import pytest
import torch
from safetensors import safe_open

import ppfr
from ppfr.errors import CheckpointError, InputError, UnknownNameError
from tests.conftest import TINY_CONFIGS

METHODS = ppfr.list_methods()


def test_every_method_has_a_tiny_test_config():
    assert set(METHODS) == set(TINY_CONFIGS)


def _model(name, **extra):
    torch.manual_seed(0)
    return ppfr.create(name, num_classes=4, **TINY_CONFIGS[name], **extra).eval()


@pytest.mark.parametrize("name", METHODS)
def test_protect_embed_shapes(name, faces):
    m = _model(name)
    with torch.no_grad():
        p = m.protect(faces)
        t = m.embed(p)
    assert p.shape == (4, *m.representation_shape)
    assert t.shape == (4, 64)
    assert torch.allclose(t.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_save_load_identical(name, faces, tmp_path):
    m = _model(name)
    m.save(tmp_path / "b")
    back = ppfr.load(tmp_path / "b")
    g1, g2 = (torch.Generator().manual_seed(7) for _ in range(2))
    with torch.no_grad():
        p1, p2 = m.protect(faces, generator=g1), back.protect(faces, generator=g2)
        assert torch.equal(p1, p2)
        assert torch.equal(m.embed(p1), back.embed(p2))
    assert back.fingerprint("client") == m.fingerprint("client")


@pytest.mark.parametrize("name", METHODS)
def test_client_and_server_bundles_are_separate(name, faces, tmp_path):
    m = _model(name)
    m.save(tmp_path / "b")
    with safe_open(tmp_path / "b" / "client.safetensors", "pt") as f:
        client_keys = list(f.keys())
    with safe_open(tmp_path / "b" / "server.safetensors", "pt") as f:
        server_keys = list(f.keys())
    assert not any("recognizer" in k or "head" in k for k in client_keys)
    assert not any("generator" in k for k in server_keys)
    client = ppfr.load(tmp_path / "b", part="client")
    assert client.server is None and client.parts == ("client",)
    client.protect(faces)
    with pytest.raises(InputError, match="without its server part"):
        client.embed(torch.rand(1, *m.representation_shape))
    server = ppfr.load(tmp_path / "b", part="server")
    assert server.client is None
    with pytest.raises(InputError, match="without its client part"):
        server.protect(faces)


def test_client_bundle_alone_has_no_recognizer(tmp_path, faces):
    m = _model("minusface")
    m.save(tmp_path / "c", parts=["client"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["client.safetensors", "ppfr.toml"]
    with pytest.raises(CheckpointError, match="no server part"):
        ppfr.load(tmp_path / "c", part="server")
    assert ppfr.load(tmp_path / "c").parts == ("client",)


@pytest.mark.parametrize("name", METHODS)
def test_protect_rejects_bad_faces(name):
    m = _model(name)
    with pytest.raises(InputError, match="shape"):
        m.protect(torch.zeros(2, 1, 112, 112))
    with pytest.raises(InputError, match="float"):
        m.protect(torch.zeros(2, 3, 112, 112, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        m.protect(torch.full((2, 3, 112, 112), 200.0))
    with pytest.raises(InputError, match="NaN"):
        m.protect(torch.full((2, 3, 112, 112), float("nan")))


@pytest.mark.parametrize("name", METHODS)
def test_embed_rejects_bad_representation(name):
    m = _model(name)
    with pytest.raises(InputError, match="expects representations of shape"):
        m.embed(torch.zeros(2, 5, 112, 112))


def test_unknown_method_and_setting():
    with pytest.raises(
        UnknownNameError, match="unknown method 'minusfase'.*Did you mean 'minusface'"
    ):
        ppfr.create("minusfase")
    with pytest.raises(InputError, match="unknown minusface setting"):
        ppfr.create("minusface", generator_widht=3)


def test_missing_and_corrupt_bundles(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        ppfr.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="ppfr.toml is missing"):
        ppfr.load(tmp_path / "empty")
    m = _model("minusface")
    m.save(tmp_path / "b")
    weights = tmp_path / "b" / "client.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt weights"):
        ppfr.load(tmp_path / "b")
    (tmp_path / "b" / "ppfr.toml").write_text("method = [unclosed")
    with pytest.raises(CheckpointError, match="corrupt manifest"):
        ppfr.load(tmp_path / "b")


def test_weights_of_another_config_are_refused(tmp_path):
    _model("minusface").save(tmp_path / "b")
    manifest = (tmp_path / "b" / "ppfr.toml").read_text()
    (tmp_path / "b" / "ppfr.toml").write_text(
        manifest.replace("generator_width = 4", "generator_width = 8")
    )
    with pytest.raises(CheckpointError, match="do not match the model config"):
        ppfr.load(tmp_path / "b")
