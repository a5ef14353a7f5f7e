"""Type checkers check the calls of pt.spawn, TaskGroup.spawn, @pt.background, Pool and Executor.

mypy (the one the project runs) checks tests/typecheck/calls.py, a file of right
and wrong calls: it must report an error on exactly the lines marked
``# E: <codes>``, with those error codes, and nothing else; each ``reveal_type``
must show the type after ``# R:``. The file is not collected by pytest (it is no
``test_*.py``) and is outside the main mypy run (``files`` in pyproject.toml).
pyright, the other checker users run, must err on the same lines and reveal the
same types.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_pyright_flags_the_same_lines(tmp_path: Path) -> None:
    """The second checker users run: pyright (in its default mode) errs on the same lines.

    Its rule names are not mypy's error codes, so only the lines are compared; a
    gap pinned in calls.py is a gap for both.
    """
    pytest.importorskip("pyright", reason="pyright comes with the test extra")
    expected_errors, expected_reveals = _expected()
    config = tmp_path / "pyrightconfig.json"
    # This tree's polytask first; the running interpreter's packages for the rest.
    config.write_text(json.dumps({"extraPaths": [str(ROOT / "src")], "pythonVersion": "3.11"}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--outputjson",
            "--project",
            str(config),
            "--pythonpath",
            sys.executable,
            str(CALLS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out  # 1: errors found; more: pyright itself failed
    errors: set[int] = set()
    reveals: dict[int, str] = {}
    for d in json.loads(proc.stdout)["generalDiagnostics"]:
        line = d["range"]["start"]["line"] + 1
        assert Path(d["file"]) == CALLS, f"pyright error outside calls.py:\n{out}"
        if d["severity"] == "error":
            errors.add(line)
        elif m := re.fullmatch(r'Type of ".*" is "(.*)"', d["message"], re.S):
            reveals[line] = m.group(1)
    assert errors == set(expected_errors), f"pyright erred on {sorted(errors)}\n{out}"
    assert reveals.keys() == expected_reveals.keys(), out
    for number, want in expected_reveals.items():
        assert reveals[number].endswith(want), f"line {number}: {reveals[number]}, want {want}"
