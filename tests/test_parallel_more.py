"""More of GNU parallel's options, side by side with GNU parallel 20221122.

``--retry-failed``, ``--termseq``, ``--files``, ``--progress``/``--eta``/``--bar``:
each case runs the same command lines under GNU parallel and under
``python -m polytask.cli parallel`` in a fresh directory each (the helpers of
test_parallel_gnu.py), and compares stdout, the exit status and, for joblogs,
the columns that do not depend on the clock.
"""

from __future__ import annotations

from pathlib import Path

import test_parallel_gnu
from test_parallel_gnu import Run, both

gnu_parallel = test_parallel_gnu.gnu_parallel  # the fixture: GNU parallel's path


def _joblog(run: Run, name: str = "jl") -> list[list[str]]:
    """The joblog's lines without Starttime and JobRuntime (the clock's columns)."""
    rows = []
    for line in (run.cwd / name).read_text().splitlines():
        cols = line.split("\t")
        rows.append(cols[:2] + cols[4:])
    return rows


# ------------------------------------------------------------------ --retry-failed

_FLAKY = "test -e m{} || { touch m{}; echo out{}; exit {}; }"


def test_retry_failed_reruns_the_failed_jobs_from_the_joblog(
    gnu_parallel: str, tmp_path: Path
) -> None:
    g, p = both(
        gnu_parallel, tmp_path, ["-j1", "--joblog", "jl", "exit {}", ":::", "0", "1", "2", "0"]
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("", 2)
    for _ in range(2):  # the same failures each time: the log grows by them
        # The command line is ignored: the commands come from the joblog.
        g, p = both(
            gnu_parallel,
            tmp_path,
            ["-j1", "--retry-failed", "--joblog", "jl", "echo", "no", ":::", "x"],
        )
        assert (p.out, p.rc) == (g.out, g.rc) == ("", 2)
        assert _joblog(p) == _joblog(g)
    assert [r[0] for r in _joblog(p)] == ["Seq", "1", "2", "3", "4", "2", "3", "2", "3"]


def test_retry_failed_stops_once_a_job_succeeded(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(gnu_parallel, tmp_path, ["-j1", "--joblog", "jl", _FLAKY, ":::", "1", "2", "3"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("out1\nout2\nout3\n", 3)
    for run in (g, p):
        (run.cwd / "m2").unlink()  # job 2 fails again, 1 and 3 succeed
    g, p = both(gnu_parallel, tmp_path, ["-j1", "--retry-failed", "--joblog", "jl"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("out2\n", 1)
    g, p = both(gnu_parallel, tmp_path, ["-j1", "--retry-failed", "--joblog", "jl"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("", 0)
    g, p = both(gnu_parallel, tmp_path, ["-j1", "--retry-failed", "--joblog", "jl"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("", 0)  # nothing left to retry: nothing runs
    assert _joblog(p) == _joblog(g)
    assert len(_joblog(p)) == 1 + 3 + 3 + 1


def test_retry_failed_with_a_new_joblog_runs_the_command_line(
    gnu_parallel: str, tmp_path: Path
) -> None:
    g, p = both(
        gnu_parallel, tmp_path, ["-k", "--retry-failed", "--joblog", "jl", "echo", ":::", "a", "b"]
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("a\nb\n", 0)
    assert _joblog(p) == _joblog(g)
    assert _joblog(p)[0][0] == "Seq"  # a new joblog gets its header


def test_retry_failed_keeps_newlines_and_quotes_of_the_commands(
    gnu_parallel: str, tmp_path: Path
) -> None:
    argv = ["-k", "-j1", "--joblog", "jl", "printf '%s\\n' {}; exit 3", ":::", "a b", "it's", 'x"y']
    g, p = both(gnu_parallel, tmp_path, argv)
    assert (p.out, p.rc) == (g.out, g.rc)
    g, p = both(gnu_parallel, tmp_path, ["-k", "-j1", "--retry-failed", "--joblog", "jl"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("a b\nit's\nx\"y\n", 3)
    # polytask quotes the inputs its own way: the Command columns differ in form.
    assert [r[:-1] for r in _joblog(p)] == [r[:-1] for r in _joblog(g)]


def test_retry_failed_runs_a_command_with_a_newline(gnu_parallel: str, tmp_path: Path) -> None:
    # The joblog holds the newline as a NUL; the command runs with the newline.
    g, p = both(
        gnu_parallel, tmp_path, ["-k", "-j1", "--joblog", "jl", "echo {}\nexit 3", ":::", "a", "b"]
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("a\nb\n", 2)
    g, p = both(gnu_parallel, tmp_path, ["-k", "-j1", "--retry-failed", "--joblog", "jl"])
    assert (p.out, p.rc) == (g.out, g.rc) == ("a\nb\n", 2)
    assert _joblog(p) == _joblog(g)
    assert "\0" in (p.cwd / "jl").read_text()


def test_retry_failed_needs_a_joblog(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "parallel", "--retry-failed", "echo", ":::", "a"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 255
    assert "--retry-failed need --joblog FILE" in r.stderr
    assert r.stdout == ""
