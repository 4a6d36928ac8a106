"""The core runs without the ``serve`` extra (pyproject.toml), and missing extras say so.

``ppfr.create`` / ``protect`` / ``embed`` must not import the web server, the database
driver or FAISS: each check runs in a fresh interpreter, so what this test process already
imported cannot hide an import. A command that needs the extra names it instead of
failing with a traceback (checked with the extra's modules blocked in that interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys

SERVE_MODULES = ("fastapi", "uvicorn", "psycopg", "faiss")

_CORE = r"""
import sys
import torch
import ppfr

model = ppfr.create(
    "minusface", backbone="ir18", backbone_width=0.125, embedding_size=64, generator_width=4
)
faces = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    templates = model.embed(model.protect(faces))
assert templates.shape == (2, 64), templates.shape
print(",".join(m for m in sys.argv[1:] if m in sys.modules))
"""

# the extra's modules blocked: ``import x`` raises ModuleNotFoundError(name="x")
_BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None\n"


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_core_imports_no_serving_dependency() -> None:
    run = _python(_CORE, *SERVE_MODULES)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"the core imported {run.stdout.strip()}"


def test_core_runs_with_serving_dependencies_blocked() -> None:
    run = _python(_BLOCK.format(mods=(*SERVE_MODULES, "httpx")) + _CORE)
    assert run.returncode == 0, run.stderr


def test_serve_command_names_the_missing_extra(tmp_path) -> None:
    code = _BLOCK.format(mods=("uvicorn", "fastapi")) + (
        "from ppfr.cli import app\n"
        f"app(['serve', '--model', {str(tmp_path / 'model')!r}], prog_name='ppfr')\n"
    )
    run = _python(code)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "uvicorn is not installed" in run.stderr
    assert "pip install 'ppfr[serve]'" in run.stderr


def test_client_names_the_missing_extra() -> None:
    code = _BLOCK.format(mods=("httpx",)) + (
        "import ppfr\n"
        "try:\n"
        "    ppfr.Client\n"
        "except ppfr.errors.MissingExtraError as e:\n"
        "    print(e)\n"
    )
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        "httpx is not installed; it comes with ppfr's 'serve' extra: pip install 'ppfr[serve]'"
    )
