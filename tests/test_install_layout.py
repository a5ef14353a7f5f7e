"""polytask's own processes (guardian, workers) find polytask however it is installed.

They start with ``python -S`` (no site-packages, so no ``.pth`` file of an
editable install) and ``PYTHONPATH`` set to the directory that holds the
``polytask`` package. The re-layering moved that computation one directory
deeper (``_os/proc.py``) and it named ``src/polytask`` instead of ``src``: the
guardian then failed to start (``No module named 'polytask'``) wherever
PYTHONPATH did not already hold it, e.g. in a fresh clone's ``make test``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_package_parent_holds_polytask() -> None:
    from polytask._os.proc import _PKG_PARENT

    assert (Path(_PKG_PARENT) / "polytask" / "__init__.py").is_file(), _PKG_PARENT


def test_a_process_task_runs_without_pythonpath(tmp_path: Path) -> None:
    # This tree's polytask, found through sys.path only, as an install would be.
    code = (
        f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
        "import polytask as pt\n"
        "assert pt.__file__.startswith(sys.path[0]), pt.__file__\n"
        "print(pt.spawn(pow, 2, 10, backend='process').result(timeout=60))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1024"
    assert proc.stderr == "", proc.stderr  # the guardian and the worker started
