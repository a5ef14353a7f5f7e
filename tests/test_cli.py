"""The ``polytask`` command's entry points: ``python -m polytask`` and ``python -m polytask.cli``."""

from __future__ import annotations

import subprocess
import sys

import pytest


def polytask(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("module", ["polytask", "polytask.cli"])
def test_python_dash_m_works_like_the_command(module: str) -> None:
    helped = polytask(module, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: polytask") and "parallel" in helped.stdout
    ran = polytask(module, "parallel", "-k", "echo", ":::", "a", "b")
    assert (ran.returncode, ran.stdout) == (0, "a\nb\n"), ran.stderr
    bad = polytask(module, "no-such-command")
    assert bad.returncode == 2 and "unknown command 'no-such-command'" in bad.stderr
    failed = polytask(module, "parallel", "exit {}", ":::", "0", "3")
    assert failed.returncode == 1  # the exit status comes through: one job failed


def test_both_entry_points_print_the_same_help() -> None:
    assert polytask("polytask", "--help").stdout == polytask("polytask.cli", "--help").stdout
