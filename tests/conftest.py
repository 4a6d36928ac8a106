import pytest
import torch

import ppfr
from ppfr.data.orl import load_orl

# --seed-shift N / PPFR_SEED_SHIFT=N: rerun any test under other seeds (tests/_seed_shift.py)
from tests._seed_shift import pytest_addoption, pytest_configure, pytest_report_header  # noqa: F401

torch.set_num_threads(2)
# as every ppfr command does: the tests allocate and free large tensors in tight loops
ppfr.tune_allocator()

#: devices to run device-generic tests on: the CPU always, CUDA where present
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

TINY = {"backbone": "ir18", "backbone_width": 0.125, "embedding_size": 64}
TINY_MINUSFACE = {**TINY, "generator_width": 4}
TINY_PARTIALFACE = {**TINY, "train_repeats": 2}
TINY_DCTDP = {**TINY, "sensitivity_images": 16, "sensitivity_positions": 64}
TINY_DUETFACE = {**TINY, "client_width": 0.125, "client_embedding_size": 32}
TINY_FRACFACE = {**TINY, "refined_channels": 12}
TINY_CONFIGS = {
    "arcface": TINY,
    "minusface": TINY_MINUSFACE,
    "minusface-hardened": TINY_MINUSFACE,
    "partialface": TINY_PARTIALFACE,
    "dctdp": TINY_DCTDP,
    "duetface": TINY_DUETFACE,
    "fracface": TINY_FRACFACE,
}


@pytest.fixture(scope="session")
def orl4():
    """Real faces, small: 4 ORL identities x 10 images."""
    return load_orl([1, 2, 3, 4])


@pytest.fixture()
def faces():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 112, 112, generator=g) * 2 - 1


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """A saved tiny MinusFace bundle (untrained), both parts.

    Its generator is a plain U-Net: an untrained ``g(x) = x + U(x)`` (the default) starts
    near the identity, so its residue, and every face's protected image, is almost the same,
    and the serving tests need templates that tell faces apart.
    """
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "minusface"
    ppfr.create("minusface", **TINY_MINUSFACE, generator_skip=False).save(path)
    return path
