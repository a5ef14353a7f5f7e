"""`polytask parallel` side by side with GNU parallel (Debian's 20221122).

Each case runs the same command line, in a fresh directory each, under GNU
parallel and under ``python -m polytask.cli parallel``, and compares what
they print (sorted where GNU parallel does not promise an order, exactly
with ``-k`` or one job at a time), their exit status and, where the case
says so, their stderr (``parallel:`` read as ``polytask parallel:``) and the
files they leave. GNU parallel is installed by the ``gnu_parallel`` fixture
(``apt-get install -y parallel`` when running as root); without it these
tests are skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from helpers import apt_install

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
BASH = shutil.which("bash") or "/bin/bash"


def _is_gnu(path: str) -> bool:
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return r.stdout.startswith("GNU parallel")


@pytest.fixture(scope="session")
def gnu_parallel() -> str:
    """The path of GNU parallel, installed with apt-get if missing and we are root."""
    path = shutil.which("parallel")
    if path and _is_gnu(path):
        return path
    if path:
        pytest.skip(f"{path} is not GNU parallel (moreutils' parallel?): no side-by-side tests")
    why = apt_install("parallel")
    path = shutil.which("parallel")
    if why or not path or not _is_gnu(path):
        pytest.skip(why or f"{path} is not GNU parallel after apt-get install parallel")
    return path


class Run:
    """What one implementation did with a command line."""

    def __init__(self, r: subprocess.CompletedProcess[str], cwd: Path) -> None:
        self.rc = r.returncode
        self.out = r.stdout
        self.err = r.stderr
        self.cwd = cwd

    def files(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.cwd.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(self.cwd))] = p.read_text(errors="replace")
        return out


def _env(home: Path, extra: dict[str, str] | None) -> dict[str, str]:
    # PARALLEL_SHELL pins GNU's shell: without it GNU takes the nearest shell among
    # its parent processes (under make's recipe that is dash, whose echo reads
    # backslashes and which has no exported functions), before $SHELL.
    env = dict(os.environ, PYTHONPATH=SRC, SHELL=BASH, PARALLEL_SHELL=BASH, PARALLEL_HOME=str(home))
    env.pop("PARALLEL", None)
    env.update(extra or {})
    return env


def both(
    gnu: str,
    tmp_path: Path,
    argv: Sequence[str],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> tuple[Run, Run]:
    """Run ``argv`` under GNU parallel and polytask, each in a fresh directory of its own.

    ``wrap``: a command that runs them (e.g. ``bash -c '... "$@"' x``), the program appended.
    """
    home = tmp_path / "parallel-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "will-cite").touch()  # GNU parallel's citation notice, once and for all
    runs = []
    for name, prog in (("gnu", [gnu]), ("pt", [PY, "-m", "polytask.cli", "parallel"])):
        cwd = tmp_path / name
        cwd.mkdir(exist_ok=True)
        r = subprocess.run(
            [*wrap, *prog, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env=_env(home, env),
        )
        runs.append(Run(r, cwd))
    return runs[0], runs[1]


def same_err(g: Run, p: Run) -> None:
    assert p.err == g.err.replace("parallel: ", "polytask parallel: ")


# (argv, how to compare stdout: "exact" | "sorted", compare stderr too)
CASES: list[tuple[list[str], str, bool]] = [
    # --- A: halt, its lines and status
    (
        ["-j2", "--halt", "now,fail=1", "sh -c 'sleep 0.{}; echo {}; exit {}'", ":::", *"00123"],
        "exact",
        True,
    ),
    (["-j1", "--halt", "now,success=2", "echo", ":::", *"123456"], "exact", True),
    (
        [
            "-k",
            "-j3",
            "--halt",
            "now,fail=1",
            "sleep {}; echo {}; test {} != 0.2",
            ":::",
            "0.5",
            "0.1",
            "0.2",
        ],
        "exact",
        True,
    ),
    (
        [
            "-k",
            "-j3",
            "--halt",
            "now,fail=1",
            "sleep {}; echo {}; test {} != 0.2",
            ":::",
            "0.05",
            "0.1",
            "0.2",
            "1",
        ],
        "exact",
        True,
    ),
    (
        ["-j2", "--halt", "soon,fail=1", "sleep {}; echo {}; exit 3", ":::", "1", "0.3"],
        "exact",
        True,
    ),
    (["-j1", "--halt", "soon,done=2", "echo {}; exit {}", ":::", "0", "4", "0"], "exact", True),
    (["-j1", "--halt", "now,fail=50%", "exit {}", ":::", "0", "1", "0", "2"], "exact", True),
    (
        ["-j1", "--halt", "soon,fail=2", "echo {}; exit {}", ":::", "1", "0", "2", "3"],
        "exact",
        True,
    ),
    # --- A: {-1}, $PARALLEL_SEQ / $PARALLEL_JOBSLOT, options accepted silently
    (["-k", "echo", "{-1}", "{-2}", "{-1.}", ":::", "a", "b", ":::", "c.x", "d.y"], "exact", True),
    (["-j1", "echo $PARALLEL_SEQ $PARALLEL_JOBSLOT {}", ":::", "a", "b", "c"], "exact", True),
    (["-j3", "-k", "echo $PARALLEL_SEQ {}", ":::", "a", "b", "c", "d"], "exact", True),
    (["--will-cite", "-k", "echo", ":::", "a", "b"], "exact", True),
    (["-k", "echo", "{1}-{2}", ":::", "a", "b", ":::", "1", "2"], "exact", True),
    (["-k", "echo", "{3}", "x", ":::", "a", ":::", "b"], "exact", True),
    # --- B: several inputs per job
    (["-k", "-n2", "echo", "{1}+{2}", ":::", *"abcde"], "exact", True),
    (["-k", "-N2", "echo", "{1}+{2}", ":::", *"abcde"], "exact", True),
    (["-k", "-n2", "echo", ":::", *"abcde"], "exact", True),
    (["-k", "-n2", "echo", "{}", "x", ":::", *"abc"], "exact", True),
    (["-k", "-N0", "echo", "hi", ":::", *"abc"], "exact", True),
    (["-k", "-n0", "echo", "hi", ":::", *"ab"], "exact", True),
    (["-k", "-X", "echo", "pre{}post", ":::", *"abc"], "exact", True),
    (["-k", "-m", "echo", "pre{}post", ":::", *"abc"], "exact", True),
    (["-k", "--xargs", "echo", "pre{}post", ":::", *"abc"], "exact", True),
    (["-k", "-j4", "-m", "echo", ":::", *map(str, range(1, 11))], "exact", True),
    (["-k", "-j4", "-X", "echo", "x{}y", ":::", *map(str, range(1, 11))], "exact", True),
    (["-k", "-N2", "echo", "{1}", "{2}", "{3}", ":::", *"abcde"], "exact", True),
    (["-k", "-N2", "echo", ":::", "a", "b", ":::", "c", "d"], "exact", True),
    (["-k", "-X", "echo", "x{}y", ":::", "a", "b", ":::", "c", "d"], "exact", True),
    (["-k", "-X", "echo", "x{}y", "{#}", '"q{}"', ":::", *"abcd"], "exact", True),
    (["-k", "-X", "-j1", "echo", "{1}", "{2}", "x{.}", ":::", "a.1", "b.2", "c"], "exact", True),
    (["-k", "-m", "--tag", "echo", ":::", *"abc"], "exact", True),
    (["-k", "-n3", "sh -c 'echo $#' x", ":::", *"abcdefg"], "exact", True),
    (["-k", "-N3", "echo {1} {2} {3}", ":::", "a  b", "c'd", 'e"f', "$HOME"], "exact", True),
    (["-k", "-X", "echo x{}", ":::", "a  b", "c'd", 'e"f', "$HOME", "`id`"], "exact", True),
    # --- C: columns, named columns, linked sources
    (
        ["-k", "--colsep", ",", "echo", "[{2}]", "[{}]", "[{3}]", ":::", "a, b,c", "d,e , f"],
        "exact",
        True,
    ),
    (["-k", "--colsep", ",+", "echo", "{2}{1}", ":::", "a,,b", "c,d"], "exact", True),
    (
        ["-k", "--colsep", ",", "echo", "{1}-{2}-{3}", ":::", "a,b", "c,d", ":::", "e"],
        "exact",
        True,
    ),
    (
        ["-k", "--header", ":", "echo", "{f1}", "{f2.}", ":::", "f1", "A", "B", ":::", "f2", "C.x"],
        "exact",
        True,
    ),
    (["-k", "--link", "echo", ":::", "a", "b", "c", ":::", "1", "2"], "exact", True),
    (["-k", "--xapply", "echo", ":::", "a", "b", ":::", "1", "2"], "exact", True),
    (["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", ":::", "x", "y"], "exact", True),
    (["-k", "echo", ":::", "a", ":::+", "1", "2", "3"], "exact", True),
    (["-k", "--link", "-N2", "echo", ":::", *"abcd", ":::", *"1234"], "exact", True),
    # --- D: xargs habits
    (["--arg-sep", ",,", "-k", "echo", ",,", "a", "b", ",,+", "1", "2"], "exact", True),
    (["-k", "-I", "XX", "echo", "XX-XX", "{}", "{#}", ":::", "a", "b"], "exact", True),
    (["-k", "-I", "{in}", "echo", "{in}.{.}", ":::", "a.b"], "exact", True),
    # --- E: zero durations: --timeout 0 is no limit, --delay 0 no delay
    (["-k", "--timeout", "0", "sleep 0.1; echo {}", ":::", "a", "b"], "exact", True),
    (["-k", "--delay", "0", "echo", ":::", "a", "b"], "exact", True),
]


@pytest.mark.parametrize(("argv", "mode", "stderr"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_same_as_gnu(
    gnu_parallel: str, tmp_path: Path, argv: list[str], mode: str, stderr: bool
) -> None:
    g, p = both(gnu_parallel, tmp_path, argv)
    assert p.rc == g.rc, (g.err, p.err)
    if mode == "sorted":
        assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())
    else:
        assert p.out == g.out
    if stderr:
        same_err(g, p)
    assert p.files() == g.files()


def test_halt_now_prints_nothing_after_the_halt(gnu_parallel: str, tmp_path: Path) -> None:
    # The reported race: a job that ended in the same wake-up as the failing
    # one was printed (job "2", in 4 of 8 runs); done=50% printed 51 lines.
    for i in range(4):
        argv = ["-j2", "--halt", "now,fail=1", "sh -c 'sleep 0.{}; echo {}; exit {}'"]
        g, p = both(gnu_parallel, tmp_path / f"fail{i}", [*argv, ":::", *"00123"])
        assert (p.out, p.rc) == (g.out, g.rc) == ("0\n0\n1\n", 1)
        g, p = both(
            gnu_parallel,
            tmp_path / f"done{i}",
            ["--halt", "now,done=50%", "echo", ":::", *map(str, range(1, 101))],
        )
        # GNU parallel itself, on a busy machine, sometimes prints a 51st.
        assert len(p.out.splitlines()) == 50 and len(g.out.splitlines()) in (50, 51)
        assert p.rc == g.rc == 0
        assert p.err.count("This job finished:") == 50


def test_bad_options_exit_255(gnu_parallel: str, tmp_path: Path) -> None:
    for i, argv in enumerate(
        (["--bogus", "echo", ":::", "a"], ["-j", "abc", "echo", ":::", "a"], ["--halt", "x"])
    ):
        g, p = both(gnu_parallel, tmp_path / str(i), argv)
        assert p.rc == g.rc == 255
        assert p.out == "" and p.err.count("\n") == 1  # GNU prints its usage on stdout


def test_joblog_appended_to_a_new_file_has_no_header(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(gnu_parallel, tmp_path, ["-j1", "--joblog", "+log", "echo", ":::", "a", "b"])
    for run in (g, p):
        rows = [line.split("\t") for line in (run.cwd / "log").read_text().splitlines()]
        assert [(r[0], r[6], r[8]) for r in rows] == [("1", "0", "echo a"), ("2", "0", "echo b")]


def test_options_from_the_parallel_variable(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(gnu_parallel, tmp_path, ["echo", ":::", "x", "y"], env={"PARALLEL": "--tag -k"})
    assert p.out == g.out == "x\tx\ny\ty\n"


def test_exported_bash_functions_run(gnu_parallel: str, tmp_path: Path) -> None:
    wrap = [BASH, "-c", 'my_func() { echo "in my_func $1"; }; export -f my_func; "$@"', "x"]
    g, p = both(gnu_parallel, tmp_path, ["-k", "my_func", ":::", "1", "2"], wrap=wrap)
    assert (p.out, p.rc) == (g.out, g.rc) == ("in my_func 1\nin my_func 2\n", 0)
    g, p = both(gnu_parallel, tmp_path / "stdin", ["-k"], wrap=wrap, input="my_func a\n")
    assert (p.out, p.rc) == (g.out, g.rc) == ("in my_func a\n", 0)


def test_parallel_pid_is_the_runner(gnu_parallel: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "will-cite").touch()
    for prog in ([gnu_parallel], [PY, "-m", "polytask.cli", "parallel"]):
        proc = subprocess.Popen(
            [*prog, "-j2", "echo $PARALLEL_PID #", ":::", "a", "b"],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(home, None),
        )
        out, _ = proc.communicate(timeout=60)
        assert out.split() == [str(proc.pid)] * 2, prog


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ended_by_a_signal_exits_255(gnu_parallel: str, tmp_path: Path, signum: int) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "will-cite").touch()
    for name, prog in (("gnu", [gnu_parallel]), ("pt", [PY, "-m", "polytask.cli", "parallel"])):
        cwd = tmp_path / name
        cwd.mkdir()
        proc = subprocess.Popen(
            [*prog, "-j2", "touch {}; exec sleep 60", ":::", "a", "b"],
            cwd=cwd,
            env=_env(home, None),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not ((cwd / "a").exists() and (cwd / "b").exists()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 255, name


STDIN_CASES: list[tuple[list[str], str]] = [
    (["-k", "--colsep", ",", "echo", "[{2}]", "[{}]"], "a, b,c\nd,e , f\n"),
    (["-k", "--header", ":", "echo", "{x}-{y}", "{1}"], "x\ty\n1\t2\n3\t4\n"),
    (["-k", "--header", ":", "--colsep", ",", "echo", "{y.}", "{x/}"], "x,y\na/b,c.d\n"),
    (["-k", "--header", ":", "--tagstring", "{y}", "echo", "{x}"], "x\ty\n1\t2\n"),
    (["-k", "-r", "echo", "x"], "a\n\n \nb\n"),
    (["-k", "-r", "echo", "y"], " \n"),
    (["-k", "-E", "END", "echo"], "a\nEND\nb\n"),
    (["-k", "-d", ":", "echo"], "a:b:c"),
    (["-k", "-d", ":", "echo"], "a:b:c:"),
    (["-k", "-d", "\\t", "echo"], "a\tb\\tc\n"),
    (["-k", "--delimiter", "\\n", "echo"], "a\nb\n"),
    (["-k", "-I", "XX", "echo", "XX-XX", "{}"], "a\nb\n"),
    (["-k", "-0", "echo"], "a b\0c\nd\0"),
    (["-k", "-a", "-", "echo", ":::", "x", "y"], "1\n2\n"),
    # -L without --pipe (xargs -L): N lines a job, a line ending in a blank goes
    # on on the next; -l [N] / --max-lines [N] the same, 0 or none being 1.
    (["-k", "-L", "2", "echo", "{2}-{1}"], "a b\nc d\ne f\n"),
    (["-k", "-L", "2", "printf", "'<%s>'"], "a\n\nb \nc\nd\ne\n"),
    (["-k", "-L", "1", "echo", "pre{}post"], "a \n\nb\t\nc\nd \n"),
    (["-k", "-L", "0", "echo", "x"], "a \nb\nc\n"),
    (["-k", "-l", "-j1", "echo"], "a \nb\nc\n"),
    (["-k", "-l", "0", "echo"], "a\nb\n"),
    (["-k", "--max-lines=2", "-m", "echo"], "a b\nc\nd\n"),
    (["-k", "-N", "1", "-L", "2", "echo"], "a\nb\nc\n"),
    # -L gives its lines as -N does (not spread over the job slots as -X);
    # -l as -n (no word repeated per input), and it wins over -L in any order.
    (["-k", "-L", "5", "echo"], "a\nb\nc\nd\n"),
    (["-k", "-j3", "-L", "4", "echo"], "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"),
    (["-k", "-L", "2", "echo", "x{}y"], "a\nb\nc\nd\n"),
    (["-k", "-l", "2", "echo", "x{}y"], "a\nb\nc\nd\n"),
    (["-k", "-L", "2", "-l", "1", "echo"], "a\nb\nc\n"),
    (["-k", "--maxlines", "2", "echo"], "a\nb\nc\n"),
    (["-k", "--trim", "lr", "-l", "2", "echo"], "a\nb\nc\n"),
    # -E and -r look at the lines as read, before -L joins them; any of Perl's
    # \s is a blank (a CR of CRLF input too).
    (["-k", "-E", "EOF", "-L", "1", "echo"], "a \nEOF\nb\n"),
    (["-k", "-r", "-L", "1", "echo"], "a\n  \nb\nc\n"),
    (["-k", "-L", "1", "echo"], "a\r\nb\r\nc\n"),
    # -n, -N and -L read a count as GNU's --block reads a size: 1k = 1000, 1K = 1024
    (["-k", "-L", "1k", "echo"], "a\nb\nc\n"),
    (["-k", "-n", "0.002k", "echo"], "a\nb\nc\n"),
    (["-k", "-N1Ki", "echo", "{1}", "{2}"], "a\nb\nc\n"),
    (["-k", "--max-args=1M", "echo"], "a\nb\nc\n"),
    # A fraction is the next whole number (GNU gives a job inputs until it has N).
    (["-k", "-L", "2.5", "echo"], "a\nb \nc\nd\ne\nf\ng\n"),
    (["-k", "-l", "1.5", "echo"], "a\nb \nc\nd\ne\nf\ng\n"),
    (["-k", "-l2.5", "echo"], "a\nb\nc\nd\n"),
    (["-k", "--max-lines=.5", "echo"], "a\nb\nc\n"),
    (["-k", "-n", "0.5", "echo"], "a\nb\nc\n"),
    (["-k", "-N", "2.5", "echo", "{1}", "{2}", "{3}"], "a\nb\nc\nd\ne\n"),
    # -L and -l below 0: one (joined) line a job, as 1.
    (["-k", "-L", "-1", "echo", "x{}y"], "a \nb\nc \nd\ne\n"),
    (["-k", "-l", "-1", "echo"], "a \nb\nc \nd\ne\n"),
    (["-k", "--max-lines=-2.5", "echo"], "a \nb\nc\n"),
    # -n and -N below 0 too: one input a job.
    (["-k", "-n", "-1", "echo", "x"], "a\nb\nc\n"),
    (["-k", "-N", "-1", "echo", "{1}-{2}"], "a\nb\nc\n"),
    (["-k", "-n", "-0.5", "-X", "echo"], "a\nb\nc\n"),
    # -n 0 beside -L or -l is as if not given (GNU's Perl reads 0 as false); -N 0 is not.
    (["-k", "-L", "2", "-n", "0", "echo", "x"], "a\nb\nc\n"),
    (["-k", "-l", "2", "-n", "0", "echo", "x"], "a\nb\nc\n"),
    (["-k", "-N", "0", "-L", "2", "echo", "x"], "a\nb\nc\n"),
    # -l in a bundle of short options, as GNU's Getopt::Long reads it: the number
    # that starts the rest of the bundle is its value, the rest more options.
    (["-kl2", "echo"], "a\nb \nc\nd\ne\n"),
    (["-kl", "echo"], "a\nb \nc\n"),
    (["-lk", "echo"], "a\nb \nc\n"),
    (["-l2.5k", "echo"], "a\nb\nc\nd\ne\n"),
    (["-kl1k", "echo"], "a\nb\nc\n"),
    (["-kvl-1", "echo"], "a \nb\nc\n"),
    (["-kL2", "echo"], "a\nb\nc\n"),
    (["-kn2", "echo"], "a\nb\nc\n"),
    # -L's inputs are given as -N gives them also with -n or -l, not with -m, --xargs.
    (["-k", "-L", "3", "-n", "2", "echo", "x{}y"], "a\nb\nc\nd\ne\nf\n"),
    (["-k", "-L", "2", "-l", "3", "echo", "x{}y"], "a\nb\nc\nd\ne\nf\n"),
    (["-k", "-j2", "-L", "2", "-m", "echo", "x{}y"], "a\nb\nc\nd\ne\nf\n"),
    (["-k", "-L", "2", "--xargs", "echo", "x{}y"], "a\nb\nc\nd\ne\n"),
    # --header's line is the first as read: not joined with the next (-L), not
    # -E's end nor dropped by -r; they apply from the line after it.
    (["-k", "--header", ":", "-L", "1", "echo", "H={h}", "X={x}", "A={}"], "h \nx\na\nb\n"),
    (["-k", "--header", ":", "-L", "2", "echo", "H={h}", "A={}"], "h \na \nb\nc\n"),
    (["-k", "--header", ":", "-E", "h", "echo", "H={h}", "A={}"], "h\na\nb\n"),
    (["-k", "--header", ":", "-r", "echo", "H={h}", "A={}"], "\na\nb\n"),
    (
        ["-k", "--header", ":", "-L", "1", "-a", "-", "echo", "{h}", "{}", ":::", "k ", "y"],
        "h \nx\n",
    ),
]


@pytest.mark.parametrize(("argv", "stdin"), STDIN_CASES, ids=[" ".join(c[0]) for c in STDIN_CASES])
def test_same_as_gnu_from_stdin(
    gnu_parallel: str, tmp_path: Path, argv: list[str], stdin: str
) -> None:
    g, p = both(gnu_parallel, tmp_path, argv, input=stdin)
    assert (p.out, p.rc) == (g.out, g.rc)
    same_err(g, p)


def test_max_lines_joins_arguments_and_files_too(gnu_parallel: str, tmp_path: Path) -> None:
    # -L's continuation holds for the arguments of ::: and the lines of -a files.
    for name in ("gnu", "pt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x \ny\nz \n")
    argv = ["-k", "-L", "1", "-a", "f", "printf", "'<%s>'", ":::", "a ", "b", "c "]
    g, p = both(gnu_parallel, tmp_path, argv)
    assert (p.out, p.rc) == (g.out, g.rc)
    assert p.out == "<x y><a b><x y><c ><z ><a b><z ><c >"


def test_linked_files_and_file_separator(gnu_parallel: str, tmp_path: Path) -> None:
    for name in ("gnu", "pt"):
        d = tmp_path / name
        d.mkdir()
        (d / "f1").write_text("a b\n")
        (d / "f2").write_text("1\n2\n")
    g, p = both(
        gnu_parallel, tmp_path, ["-k", "--arg-file-sep", "//", "echo", "//", "f2", "//+", "f1"]
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("1 a b\n", 0)


def test_several_inputs_from_stdin(gnu_parallel: str, tmp_path: Path) -> None:
    lines = "".join(f"{i}\n" for i in range(1, 12))
    for i, argv in enumerate(
        (["-k", "-n3", "echo"], ["-k", "-j3", "-m", "echo"], ["-k", "-j2", "-X", "echo", "<{}>"])
    ):
        g, p = both(gnu_parallel, tmp_path / str(i), argv, input=lines)
        assert (p.out, p.rc) == (g.out, g.rc)


# --- E: output
E_CASES: list[tuple[list[str], str]] = [
    (["-k", "--tagstring", "{}-x{#}", "echo", ":::", "a", "b"], "exact"),
    (["-k", "--tagstring", "<{2}>", "echo", ":::", "a", "b", ":::", "c"], "exact"),
    (["-k", "-v", "echo", ":::", "a", "b"], "exact"),
    (["-k", "-v", "--tag", "echo {}; echo e >&2", ":::", "a"], "exact"),
    (["-k", "-v", "--dry-run", "echo", ":::", "a"], "exact"),
    (["-u", "-j1", "echo {}; echo e{} >&2", ":::", "a", "b"], "exact"),
    (["-u", "-j2", "echo", ":::", "a", "b", "c"], "sorted"),
    (["--shuf", "echo", ":::", *map(str, range(20))], "sorted"),
    (["-k", "--nice", "7", "nice; true", ":::", "a"], "exact"),
    (["-k", "--nice", "3", "nice", ":::", "-n", "2"], "exact"),
    (["-k", "--delay", "0.1", "echo", ":::", "a", "b", "c"], "exact"),
]


@pytest.mark.parametrize(("argv", "mode"), E_CASES, ids=[" ".join(c[0]) for c in E_CASES])
def test_same_output_as_gnu(gnu_parallel: str, tmp_path: Path, argv: list[str], mode: str) -> None:
    g, p = both(gnu_parallel, tmp_path, argv)
    assert p.rc == g.rc, (g.err, p.err)
    if mode == "sorted":
        assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())
        assert sorted(p.err.splitlines()) == sorted(g.err.splitlines())
    else:
        assert p.out == g.out
        same_err(g, p)


def test_shuf_numbers_the_jobs_in_their_new_order(gnu_parallel: str, tmp_path: Path) -> None:
    values = [str(i) for i in range(30)]
    g, p = both(gnu_parallel, tmp_path, ["--shuf", "-j1", "echo", "{#}", "{}", ":::", *values])
    for run in (g, p):
        rows = [line.split() for line in run.out.splitlines()]
        assert [r[0] for r in rows] == [str(i) for i in range(1, 31)]
        assert sorted(r[1] for r in rows) == sorted(values)
        assert [r[1] for r in rows] != values  # 1 chance in 30! to fail


def _no_times(text: str) -> str:
    import re

    text = re.sub(r"\b\d{10}\.\d{3}\b", "T", text)  # Starttime
    text = re.sub(r'(JobRuntime": |[,\t])\d+\.\d{3}([,\t])', r"\1R\2", text)
    return text


@pytest.mark.parametrize(
    "argv",
    [
        ["-k", "--results", "out.csv", "echo {}; echo err{} >&2", ":::", "a", "b,c", 'd"e'],
        ["-k", "--results", "out.tsv", "echo {}; exit {#}", ":::", "a", "b\tc"],
        ["-k", "--results", "out.json", "echo {}", ":::", "a", 'b"c', ":::", "x\\y"],
        ["-k", "--results", "out.csv", "--header", ":", "echo", "{x}", ":::", "x", "1", "2"],
        ["-k", "--results", "my_{}", "echo {}; echo e >&2", ":::", "a", "b"],
        ["-k", "--results", "res/{1}/x{2}", "echo", ":::", "a", ":::", "b", "c"],
        ["-k", "--results", "r2/{}/", "echo", ":::", "a", "b"],
        ["-k", "--results", "plain", "echo", ":::", "a", "b"],
    ],
)
def test_results_as_gnu(gnu_parallel: str, tmp_path: Path, argv: list[str]) -> None:
    g, p = both(gnu_parallel, tmp_path, argv)
    assert (p.out, p.rc) == (g.out, g.rc)
    gf, pf = g.files(), p.files()
    assert sorted(pf) == sorted(gf)
    for name in gf:
        assert _no_times(pf[name]) == _no_times(gf[name]), name


def test_results_to_stdout(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(gnu_parallel, tmp_path, ["-k", "--results", "-.csv", "echo", ":::", "a", "b"])
    assert (_no_times(p.out), p.rc) == (_no_times(g.out), g.rc)
    assert p.out.count("\n") == 5  # the header and two jobs of two lines each


# The examples of GNU parallel's own tutorial (man parallel_tutorial) that use
# only what polytask supports, as printed there, each in a directory holding
# the tutorial's input files. Their order is not promised: compared sorted.
TUTORIAL = r"""
echo ::: A B C
-a abc-file echo
echo ::: A B C ::: D E F
-a abc-file -a def-file echo
echo ::: A B C :::: def-file
--link echo ::: A B C ::: D E F
--link echo ::: A B C D E ::: F G
echo :::: abc-file :::+ G H I :::: def-file
echo :::: abc-file ::: G H I ::::+ def-file
echo ::: A B C D E :::+ F G
--arg-sep ,, echo ,, A B C :::: def-file
--arg-file-sep // echo ::: A B C // def-file
-d _ echo :::: abc_-file
-d '\0' echo :::: abc0-file
-0 echo :::: abc0-file
-E stop echo ::: A B stop C D
::: ls 'echo foo'
echo ::: A/B.C
echo {} ::: A/B.C
echo {.} ::: A/B.C
echo {/} ::: A/B.C
echo {//} ::: A/B.C
echo {/.} ::: A/B.C
echo {#} ::: A B C
-I ,, echo ,, ::: A/B.C
echo {1} and {2} ::: A B ::: C D
echo /={1/} //={1//} /.={1/.} .={1.} ::: A/B.C D/E.F
echo 1={1} 2={2} 3={3} -1={-1} -2={-2} -3={-3} ::: A B ::: C D ::: E F
--colsep '\t' echo 1={1} 2={2} :::: tsv-file.tsv
--header : echo f1={f1} f2={f2} ::: f1 A B ::: f2 C D
--header : --colsep '\t' echo f1={f1} f2={f2} :::: tsv-file.tsv
--jobs 4 -m echo ::: 1 2 3 4 5 6 7 8 9 10
--jobs 4 -m echo pre-{}-post ::: A B C D E F G
--jobs 4 -X echo pre-{}-post ::: A B C D E F G
-N3 echo ::: A B C D E F G H
-N3 echo 1={1} 2={2} 3={3} ::: A B C D E F G H
-N0 echo foo ::: 1 2 3
-q perl -e 'print "@ARGV\n"' ::: This works
perl -e \''print "@ARGV\n"'\' ::: This works, too
echo \={} ::: zsh bash ls
--tag echo foo-{} ::: A B C
--tagstring {}-bar echo foo-{} ::: A B C
--dryrun echo {} ::: A B C
--verbose echo {} ::: A B C
-j2 -k 'printf "%s-start\n%s" {} {}; sleep {}; printf "%s\n" -middle; echo {}-end' ::: 0.4 0.2 0.1
--results outdir echo ::: A B C
--header : --results outdir echo ::: f1 A B ::: f2 C D
--shuf echo ::: 1 2 3 ::: a b c ::: A B C
--timeout 4.1 sleep {}\; echo {} ::: 0.2 0.4 6
--joblog log exit ::: 1 2 3 0
-j1 --halt soon,fail=1 echo {}\; exit {} ::: 0 0 1 2 3
-j1 --halt now,fail=1 echo {}\; exit {} ::: 0 0 1 2 3
-j1 --halt now,success=1 echo {}\; exit {} ::: 1 2 3 0 4 5 6
-k --retries 3 'echo tried {} >>runs; echo completed {}; exit {}' ::: 1 2 0
--nice 17 echo this is being run with nice -n ::: 17
"""
TUTORIAL_CASES = [line for line in TUTORIAL.strip().splitlines()]


@pytest.mark.parametrize("line", TUTORIAL_CASES)
def test_tutorial_examples(gnu_parallel: str, tmp_path: Path, line: str) -> None:
    import shlex

    for name in ("gnu", "pt"):
        d = tmp_path / name
        d.mkdir()
        (d / "abc-file").write_text("A\nB\nC\n")
        (d / "def-file").write_text("D\nE\nF\n")
        (d / "abc_-file").write_text("A_B_C_")
        (d / "abc0-file").write_text("A\0B\0C\0")
        (d / "tsv-file.tsv").write_text("f1\tf2\nA\tB\nC\tD\n")
    g, p = both(gnu_parallel, tmp_path, shlex.split(line))
    assert p.rc == g.rc, (g.err, p.err)
    assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())
    assert sorted(p.err.splitlines()) == sorted(
        g.err.replace("parallel: ", "polytask parallel: ").splitlines()
    )
    gf, pf = g.files(), p.files()
    assert sorted(pf) == sorted(gf)
    for f in gf:
        lines = sorted(_no_times(pf[f]).splitlines())
        if f == "log":  # joblog: the command and exit value of each job
            lines = sorted(tuple(r.split("\t")[6:]) for r in lines)  # type: ignore[misc]
            assert lines == sorted(tuple(r.split("\t")[6:]) for r in _no_times(gf[f]).splitlines())
        else:
            assert lines == sorted(_no_times(gf[f]).splitlines()), f


# Examples of GNU parallel's man page, as shell lines (pipes, $PARALLEL ...):
# `parallel` is a shell function that runs the implementation under test.
MAN_LINES = r"""
seq 6 7 | parallel -k -a - -a <(seq 4 5) echo {1} {2} {3} ::: 1 2 3
seq 4 5 | parallel -k echo {1} {2} {3} :::: <(seq 6 7) - ::: 1 2 3
seq 10 | parallel -k -N2 echo seq:\$PARALLEL_SEQ arg1:{1} arg2:{2}
echo test | parallel echo {} $VAR
echo test | parallel VAR=this_is_set_after_starting \; echo {} \$VAR
echo test | parallel echo {} \\\$VAR
echo test | parallel -q echo {} \$VAR
printf 'abc-file\ndef-file\n' > list; cat list | parallel -j1 -k -v ls
printf 'abc-file\ndef-file\n' > list; cat list | PARALLEL="-kvj1" parallel ls
echo 1,2,3 | parallel -vkd, echo a{}b
seq 3 | parallel -k -X echo {}.gz {#}
seq 5 | parallel -k -n2 -I %% echo a%%b
printf 'a b\nc d\n' | parallel -k --colsep ' ' echo {2} {1}
printf 'a\tb\n' | parallel --colsep '\t' --tagstring '{2}' echo {1}
seq 3 | parallel -k --results out.json echo; cat out.json | sed 's/"Starttime": [0-9.]*/T/; s/"JobRuntime": [0-9.]*/R/'
"""
MAN_CASES = MAN_LINES.strip().splitlines()


@pytest.mark.parametrize("line", MAN_CASES)
def test_man_page_examples(gnu_parallel: str, tmp_path: Path, line: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "will-cite").touch()
    runs = []
    for name, prog in (("gnu", gnu_parallel), ("pt", f"{PY} -m polytask.cli parallel")):
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "abc-file").write_text("A\nB\nC\n")
        (cwd / "def-file").write_text("D\nE\nF\n")
        script = f'parallel() {{ {prog} "$@"; }}\n{line}\n'
        r = subprocess.run(
            [BASH, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env=_env(home, None),
        )
        runs.append(r)
    g, p = runs
    assert (p.stdout, p.returncode) == (g.stdout, g.returncode), (g.stderr, p.stderr)
    assert p.stderr == g.stderr.replace("parallel: ", "polytask parallel: ")
