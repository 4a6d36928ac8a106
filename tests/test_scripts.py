"""Every script in benchmarks/ and research/ still imports and answers ``--help``.

The scripts are not part of the package, so nothing else would notice when a change in
``ppfr`` breaks their imports. One child process imports them all (torch is loaded once),
each under its own module name so that its ``if __name__ == "__main__"`` block does not
run, then calls its ``main()`` with ``--help`` and expects argparse's usage and exit 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    p
    for folder in ("benchmarks", "research")
    for p in (ROOT / folder).glob("*.py")
    if not p.name.startswith("_")
)

CHILD = r"""
import contextlib, importlib.util, io, json, sys, traceback
from pathlib import Path

root = Path(sys.argv[1])
sys.path[:0] = [str(root / "benchmarks"), str(root / "research")]
results = {}
for path in sys.argv[2:]:
    path = Path(path)
    out = io.StringIO()
    try:
        spec = importlib.util.spec_from_file_location("script_" + path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.argv = [str(path), "--help"]
        code = None
        with contextlib.redirect_stdout(out):
            try:
                module.main()
            except SystemExit as exc:
                code = exc.code
        ok = code in (0, None) and "usage:" in out.getvalue()
        results[path.name] = {"ok": ok, "exit": code, "out": out.getvalue()[-400:]}
    except BaseException:
        results[path.name] = {"ok": False, "error": traceback.format_exc()[-1500:]}
print("RESULTS=" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_results() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PPFR_TUNE_ALLOCATOR="0")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULTS=")), None)
    assert line is not None, f"the child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[len("RESULTS=") :])


def test_the_folders_hold_the_scripts() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"bench_protect.py", "minusface_stage1.py", "frontier_3split.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_guards_main(script: Path) -> None:
    text = script.read_text()
    assert 'if __name__ == "__main__":' in text, f"{script.name} runs on import"
    assert "def main(" in text, f"{script.name} has no main()"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_answers_help(script: Path, help_results: dict) -> None:
    result = help_results[script.name]
    assert result["ok"], f"{script.name} --help failed: {result}"
