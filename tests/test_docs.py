"""Every ```python example in the README and docs/ runs, as a user would run it.

The blocks of one file run in order as one script (later blocks may use names
from earlier ones), in a fresh interpreter, in an empty temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
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


def test_every_doc_has_runnable_examples_or_says_why() -> None:
    # A guide without a single runnable example cannot be checked; the README must have some.
    assert blocks(ROOT / "README.md")


def test_demo_runs_and_every_promise_holds() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "demo", "--quick", "--plain"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every promise held" in proc.stdout
