"""Type checkers check the calls of pt.spawn, TaskGroup.spawn, @pt.background, Pool and Executor.

mypy (the one the project runs) checks tests/typecheck/calls.py, a file of right
and wrong calls: it must report an error on exactly the lines marked
``# E: <codes>``, with those error codes, and nothing else; each ``reveal_type``
must show the type after ``# R:``. The file is not collected by pytest (it is no
``test_*.py``) and is outside the main mypy run (``files`` in pyproject.toml).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLS = ROOT / "tests" / "typecheck" / "calls.py"
ERROR = re.compile(r"^[^:]*calls\.py:(\d+): error: .*\[([\w-]+)\]$")
REVEALED = re.compile(r'^[^:]*calls\.py:(\d+): note: Revealed type is "(.*)"$')


def _expected() -> tuple[dict[int, set[str]], dict[int, str]]:
    errors: dict[int, set[str]] = {}
    reveals: dict[int, str] = {}
    for number, line in enumerate(CALLS.read_text().splitlines(), 1):
        if m := re.search(r"# E: ([\w, -]+)$", line):
            errors[number] = {code.strip() for code in m.group(1).split(",")}
        if m := re.search(r"# R: (.+)$", line):
            reveals[number] = m.group(1).strip()
    return errors, reveals


def test_mypy_flags_exactly_the_wrong_calls(tmp_path: Path) -> None:
    expected_errors, expected_reveals = _expected()
    assert len(expected_errors) >= 10 and len(expected_reveals) >= 4  # the markers parse
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--follow-imports=silent",  # polytask's own modules are checked by `make typecheck`
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--hide-error-context",
            "--no-error-summary",
            str(CALLS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # This tree's polytask, not another installed copy.
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
    )
    out = proc.stdout + proc.stderr
    errors: dict[int, set[str]] = {}
    reveals: dict[int, str] = {}
    for line in out.splitlines():
        if m := ERROR.match(line):
            errors.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif m := REVEALED.match(line):
            reveals[int(m.group(1))] = m.group(2)
        elif ": error:" in line:
            raise AssertionError(f"mypy error outside calls.py or without a code:\n{out}")
    assert errors == expected_errors, f"mypy reported (line: codes) {errors}\n{out}"
    assert reveals.keys() == expected_reveals.keys(), out
    for number, want in expected_reveals.items():
        assert reveals[number].endswith(want), f"line {number}: {reveals[number]}, want {want}"
    assert proc.returncode == 1, out  # errors were found, and mypy itself did not crash
