"""The owner of running programs dies or is interrupted: no process of any tree remains.

Each case runs a script under a subreaper (tests/helpers.py Harness) that starts
program trees with grandchildren (one through a shell, one ignoring SIGTERM)
through pt.run, pt.stream, pt.run_many or `polytask parallel`; the test then
kills or interrupts the script and lists every descendant it left behind.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from helpers import Harness

# One job: grandchildren of every kind, their PIDs written to argv[1], then wait.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    kids = [
        subprocess.Popen(["sleep", "300"]),
        subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"]),
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]),
    ]
    open(sys.argv[1], "w").write("ready")
    time.sleep(300)
    """
)

# The script the harness runs: argv = MODE TREE_SCRIPT DIR
DRIVER = textwrap.dedent(
    """
    import sys
    import polytask as pt
    mode, tree, d = sys.argv[1:4]
    py = sys.executable
    if mode == "run":
        pt.run([py, tree, d + "/ready.1"], timeout=300)
    elif mode == "stream":
        for line in pt.stream([py, tree, d + "/ready.1"]):
            pass
    elif mode == "run_many":
        pt.run_many([[py, tree, f"{d}/ready.{i}"] for i in (1, 2)], workers=2)
    elif mode == "parallel":
        from polytask.cli import main
        sys.exit(main(["parallel", "-j", "2", py, tree, d + "/ready.{}", ":::", "1", "2", "3"]))
    elif mode == "parallel-timeout":
        from polytask.cli import main
        sys.exit(main(["parallel", "--timeout", "2", py, tree, d + "/ready.{}", ":::", "1", "2"]))
    """
)


def _start(tmp_path: Path, mode: str) -> Harness:
    tree = tmp_path / "tree.py"
    tree.write_text(TREE)
    return Harness(DRIVER, tmp_path, mode, str(tree), str(tmp_path))


def _close(h: Harness) -> None:
    h.close()
    for pipe in (h.proc.stdin, h.proc.stdout):  # the harness's own pipes (ResourceWarning)
        if pipe is not None:
            pipe.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("mode", ["run", "stream", "run_many", "parallel"])
def test_owner_killed_or_interrupted_leaves_nothing(tmp_path: Path, mode: str, sig: int) -> None:
    h = _start(tmp_path, mode)
    try:
        jobs = 1 if mode in ("run", "stream") else 2
        for i in range(1, jobs + 1):
            h.wait_for_line(tmp_path / f"ready.{i}", "ready")
        assert len(h.descendants()) >= 4 * jobs  # the jobs and their grandchildren run
        h.signal(sig)
        code = h.wait()
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        elif mode == "parallel":
            assert code == 255  # as GNU parallel 20221122 (tests/test_parallel_gnu.py compares)
        else:
            assert code != 0
        assert h.leftovers(within=10) == []
    finally:
        _close(h)


def test_parallel_timeout_ends_trees_with_stubborn_grandchildren(tmp_path: Path) -> None:
    h = _start(tmp_path, "parallel-timeout")
    try:
        assert h.wait() == 2  # both jobs timed out: two failures
        assert (tmp_path / "ready.1").exists() and (tmp_path / "ready.2").exists()
        assert h.leftovers(within=10) == []
    finally:
        _close(h)
