"""Every ```python example in the README and docs/ runs, as a user would run it.

The blocks of one file run in order as one script (later blocks may use names
from earlier ones), in a fresh interpreter, in an empty temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_examples_run(path: Path, tmp_path: Path) -> None:
    parts = []
    for i, code in enumerate(blocks(path), 1):
        parts.append(f"# --- {path.name}, example {i}\n{code}")
    script = tmp_path / f"{path.stem}_examples.py"
    script.write_text("\n".join(parts))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"{path.name} examples failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_doc_has_runnable_examples(path: Path) -> None:
    # A guide without a single runnable example cannot be checked by test_examples_run.
    assert blocks(path), f"{path.name} has no ```python example"


def test_demo_runs_and_every_promise_holds() -> None:
    # What `make demo` runs. The README promises it ends within 30 s; it takes a
    # few, so the bound is a hang check with a wide margin, not a speed test.
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "demo", "--plain"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every promise held" in proc.stdout
    assert took < 30, f"polytask demo took {took:.1f} s"
