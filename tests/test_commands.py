"""pt.run, pt.stream, pt.run_many and TaskGroup.run against real programs."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import polytask as pt
from helpers import wait_until

PY = sys.executable

# A program whose tree has grandchildren (one through a shell), one of which
# ignores SIGTERM; it records every PID it started, then says "ready" and waits.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    import psutil
    kids = [
        subprocess.Popen(["sleep", "300"]),
        subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"]),
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]),
    ]
    deadline = time.monotonic() + 30  # until the shell started its own two children
    while len(psutil.Process(kids[1].pid).children()) < 2:
        assert time.monotonic() < deadline, "the shell never started its children"
        time.sleep(0.01)
    pids = [p.pid for k in kids for p in [psutil.Process(k.pid), *psutil.Process(k.pid).children()]]
    open(sys.argv[1], "w").write(" ".join(map(str, pids)))
    print("ready", flush=True)
    print("ready on stderr", file=sys.stderr, flush=True)
    time.sleep(300)
    """
)

# Writes `n` MB to stdout and to stderr, interleaved, in small writes.
SPAM = textwrap.dedent(
    """
    import sys
    n = int(sys.argv[1])
    line = b"x" * 1023 + b"\\n"
    for i in range(n * 1024):
        sys.stdout.buffer.write(line)
        sys.stderr.buffer.write(line)
    """
)


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def read_pids(path: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def alive(pids: list[int], within: float = 10.0) -> list[int]:
    """The pids still running (not zombies) after up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------- run


def test_run_result_fields() -> None:
    r = pt.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert r.returncode == 0 and r.ok
    assert r.stdout == "out\n" and r.stderr == "err\n"
    assert r.duration > 0 and r.pid > 0
    assert r.check() is r
    assert r.args == [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]


def test_run_bytes_and_invalid_utf8() -> None:
    code = "import sys; sys.stdout.buffer.write(b'\\xff\\x00ok')"
    assert pt.run([PY, "-c", code], text=False).stdout == b"\xff\x00ok"
    assert pt.run([PY, "-c", code]).stdout == "\ufffd\x00ok"


# What a new user writes: each was split at spaces and run without a shell,
# giving a wrong result and no error (`ls` got '*.py', `echo` printed '> out.txt').
SHELL_LINES = [
    "ps aux | grep x",
    "echo hi > out.txt",
    "cat < in.txt",
    "ls *.py",
    "ls file?.txt",
    "echo a; echo b",
    "true && echo x",
    "sleep 1 &",
    "echo $HOME",
    "echo ${HOME}",
    "echo `id`",
    "echo $(id)",
    "echo 'a  b'",
    'echo "a  b"',
    "echo a\\ b",
    "echo ~",
    "FOO=1 env",
    "cd /tmp",
    "export A=1",
    "echo one\necho two",
]


@pytest.mark.parametrize("line", SHELL_LINES)
def test_a_string_with_shell_syntax_raises_naming_shell_true(line: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("data\n")
    calls = {
        "run": lambda: pt.run(line, cwd=tmp_path),
        "stream": lambda: pt.stream(line, cwd=tmp_path),
        "run_many": lambda: pt.run_many([["true"], line], cwd=tmp_path),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="shell=True") as info:
            call()
        assert repr(line) in str(info.value), name
        assert "list" in str(info.value), name  # the other way out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # nothing ran


def test_shell_true_runs_shell_syntax(tmp_path: Path) -> None:
    for name in ("b.py", "a.py", "c.txt"):
        (tmp_path / name).write_text("")
    assert pt.run("ls *.py", shell=True, cwd=tmp_path).stdout == "a.py\nb.py\n"
    assert pt.run("echo hi > out.txt", shell=True, cwd=tmp_path).ok
    assert (tmp_path / "out.txt").read_text() == "hi\n"
    assert pt.run("printf 'x\\ny\\n' | grep y", shell=True).stdout == "y\n"
    lines = [line.text for line in pt.stream("echo a | tr a b; echo $((1+2))", shell=True)]
    assert lines == ["b", "3"]
    results = pt.run_many(["echo a && echo b", "echo $((2*3))"], shell=True)
    assert [r.stdout for r in results] == ["a\nb\n", "6\n"]


def test_a_plain_string_is_split_and_a_list_never_meets_a_shell() -> None:
    assert pt.run("echo  hello   world").stdout == "hello world\n"
    assert [line.text for line in pt.stream("echo split")] == ["split"]
    assert [r.stdout for r in pt.run_many(["echo a", "echo b"])] == ["a\n", "b\n"]
    words = ["a | b", "$HOME", "*.py", "x; echo INJECTED", "$(id)", "'q'"]
    assert pt.run(["echo", *words]).stdout == " ".join(words) + "\n"
    assert pt.run_many([["echo", *words]])[0].stdout == " ".join(words) + "\n"


def test_run_input_cwd_env(tmp_path: Path) -> None:
    data = "line\n" * 200_000  # bigger than a pipe buffer, written as it is read
    assert pt.run(["wc", "-l"], input=data).stdout.strip() == "200000"
    assert pt.run(["cat"], input=b"\x00\x01", text=False).stdout == b"\x00\x01"
    assert pt.run(["pwd"], cwd=tmp_path).stdout.strip() == str(tmp_path.resolve())
    env = {"PATH": os.environ["PATH"], "ONLY": "this"}
    assert pt.run(["sh", "-c", "echo $ONLY; env | wc -l"], env=env).stdout.split()[0] == "this"


def test_run_without_capture(capfd: pytest.CaptureFixture[str]) -> None:
    r = pt.run(["sh", "-c", "echo straight through; echo err >&2"], capture=False)
    assert r.stdout == "" and r.stderr == ""
    out, err = capfd.readouterr()
    assert "straight through" in out and "err" in err


def test_nonzero_exit_and_check() -> None:
    r = pt.run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"])
    assert r.returncode == 3 and not r.ok
    with pytest.raises(pt.CommandFailed) as info:
        r.check()
    assert info.value.returncode == 3
    with pytest.raises(pt.CommandFailed) as info:
        pt.run(["sh", "-c", "echo out; echo boom >&2; exit 4"], check=True)
    e = info.value
    assert e.returncode == 4 and e.stdout == "out\n" and e.stderr == "boom\n"
    assert "exited with code 4" in str(e) and "boom" in str(e)


def test_killed_by_signal_is_negative() -> None:
    r = pt.run(["sh", "-c", "kill -9 $$"])
    assert r.returncode == -signal.SIGKILL and not r.ok
    with pytest.raises(pt.CommandFailed, match="SIGKILL"):
        r.check()


def test_missing_program(tmp_path: Path) -> None:
    with pytest.raises(pt.ProgramNotFound) as info:
        pt.run(["no-such-program-polytask", "x"])
    e = info.value
    assert isinstance(e, FileNotFoundError) and isinstance(e, pt.PolytaskError)
    assert e.filename == "no-such-program-polytask"
    assert "no-such-program-polytask" in str(e) and "PATH" in str(e)
    with pytest.raises(pt.ProgramNotFound, match="does not exist"):
        pt.run([str(tmp_path / "missing.sh")])
    with pytest.raises(FileNotFoundError):
        pt.run(["ls"], cwd=tmp_path / "no-such-dir")
    with pytest.raises(pt.ProgramNotFound):
        pt.stream(["no-such-program-polytask"])


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"args": []}, ValueError, "empty command"),
        ({"args": ""}, ValueError, "empty command"),
        ({"args": "echo 'unclosed"}, ValueError, "shell=True"),
        ({"args": ["echo"], "shell": True}, TypeError, "one string"),
        ({"args": b"echo"}, TypeError, "not bytes"),
        ({"args": ["echo", 3]}, TypeError, "str or path-like"),
        ({"args": ["cat"], "input": 5}, TypeError, "input must be"),
    ],
)
def test_bad_input_raises_at_the_call(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        pt.run(**kwargs)


def _three_ways(args: list[str], **options: object) -> dict[str, object]:
    """Call run, stream (iterated) and run_many with the same options."""
    return {
        "run": lambda: pt.run(args, **options),
        "stream": lambda: list(pt.stream(args, **options)),
        "run_many": lambda: pt.run_many([args], **options),
    }


@pytest.mark.parametrize(
    ("timeout", "error", "text"),
    [
        (float("nan"), ValueError, ">= 0 seconds"),
        (-1, ValueError, ">= 0 seconds"),
        (-0.5, ValueError, ">= 0 seconds"),
        (float("-inf"), ValueError, ">= 0 seconds"),
        ("5", TypeError, "number of seconds or None, not str"),
        (True, TypeError, "not bool"),
        ([1], TypeError, "not list"),
    ],
)
def test_bad_timeouts_raise_at_the_call(timeout: object, error: type, text: str) -> None:
    for name, call in _three_ways(["echo", "x"], timeout=timeout).items():
        with pytest.raises(error, match=text):
            call()  # type: ignore[operator]
        assert name  # (for the traceback)


def test_an_infinite_timeout_is_no_limit() -> None:
    # It raised OverflowError from deep inside the wait.
    inf = float("inf")
    r = pt.run(["echo", "x"], timeout=inf)
    assert r.ok and r.stdout == "x\n" and r.timeout is None
    assert [line.text for line in pt.stream(["echo", "y"], timeout=inf)] == ["y"]
    [many] = pt.run_many([["echo", "z"]], timeout=inf)
    assert many.ok and many.stdout == "z\n" and many.timeout is None


def test_a_zero_timeout_has_already_expired() -> None:
    # As subprocess.run(timeout=0) raises TimeoutExpired: started, then ended at once.
    with pytest.raises(pt.CommandTimeout) as info:
        pt.run(["sleep", "30"], timeout=0)
    assert info.value.timeout == 0
    with pytest.raises(pt.CommandTimeout):
        list(pt.stream(["sleep", "30"], timeout=0))
    [late] = pt.run_many([["sleep", "30"]], timeout=0)
    assert late.timed_out and not late.ok and late.timeout == 0


def test_timeout_ends_the_whole_tree(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(pt.CommandTimeout) as info:
        pt.run([PY, script(tmp_path, "tree.py", TREE), str(pids_file)], timeout=3)
    assert time.monotonic() - t0 < 30
    e = info.value
    assert isinstance(e, pt.TaskTimeout) and isinstance(e, TimeoutError)
    assert e.stdout == "ready\n" and e.stderr == "ready on stderr\n"  # output so far
    assert e.timeout == 3 and "timed out" in str(e)
    pids = read_pids(pids_file)
    assert len(pids) >= 5
    assert alive(pids) == []  # the SIGTERM-ignoring grandchild too


def test_sigterm_ignoring_program_is_killed_after_the_grace() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    info = _timed_out_once_up(lambda limit: pt.run([PY, "-c", code], timeout=limit), 1.5)
    assert info.value.stdout == "up\n"


def test_leader_exit_ends_what_it_left_in_its_group(tmp_path: Path) -> None:
    # A background child of the program must not outlive its job.
    r = pt.run(["sh", "-c", "sleep 300 & echo $!"])
    assert r.ok
    assert alive([int(r.stdout)]) == []


def test_both_pipes_spammed_do_not_deadlock(tmp_path: Path) -> None:
    spam = script(tmp_path, "spam.py", SPAM)
    r = pt.run([PY, spam, "4"], timeout=120)
    assert len(r.stdout) == len(r.stderr) == 4 * 1024 * 1024
    # With a large input too: the program writes both pipes while we write its stdin.
    code = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); sys.stderr.buffer.write(d)"
    blob = os.urandom(3 * 1024 * 1024)
    r2 = pt.run([PY, "-c", code], input=blob, text=False, timeout=120)
    assert r2.stdout == blob and r2.stderr == blob


# --------------------------------------------------------------------------- stream


def test_stream_lines_tagged_and_returncode() -> None:
    code = "import sys\nfor i in range(3):\n print('o', i, flush=True); print('e', i, file=sys.stderr, flush=True)\nsys.stdout.write('partial')\nsys.exit(5)"
    s = pt.stream([PY, "-c", code])
    lines = list(s)
    assert s.returncode == 5
    assert [t for src, t in lines if src == "stdout"] == ["o 0", "o 1", "o 2", "partial"]
    assert [t for src, t in lines if src == "stderr"] == ["e 0", "e 1", "e 2"]
    assert all(isinstance(line, pt.OutputLine) for line in lines)


def test_stream_yields_lines_as_they_are_written(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # The program waits for a file that we create only after seeing its first line.
    code = f"import os, time\nprint('first', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\nprint('second')"
    with pt.stream([PY, "-c", code], timeout=60) as s:
        it = iter(s)
        assert next(it) == ("stdout", "first")
        gate.touch()
        assert next(it) == ("stdout", "second")
        assert list(it) == []
    assert s.returncode == 0


def _without_unbuffered() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("how", ["env=None", "env given"])
def test_stream_gets_a_python_programs_lines_before_it_exits(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No flush in the program: a Python child block-buffers a pipe, and its
    # first line came only at its exit (here: never, it waits for the gate).
    gate = tmp_path / "gate"
    code = (
        "import os, time\n"
        "print('first')\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "print('second')"
    )
    env: dict[str, str] | None = _without_unbuffered()
    if how == "env=None":
        monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
        env = None
    with pt.stream([PY, "-c", code], timeout=30, env=env) as s:
        it = iter(s)
        assert next(it) == ("stdout", "first")
        gate.touch()
        assert list(it) == [("stdout", "second")]
    assert s.returncode == 0


def test_a_timed_out_python_programs_output_so_far_is_kept() -> None:
    code = "import time; print('started'); time.sleep(60)"
    info = _timed_out_once_up(
        lambda limit: pt.run([PY, "-c", code], timeout=limit, env=_without_unbuffered()), 2.0
    )
    assert info.value.stdout == "started\n"


def test_the_callers_pythonunbuffered_is_kept() -> None:
    code = "import os; print(repr(os.environ.get('PYTHONUNBUFFERED')))"
    assert pt.run([PY, "-c", code], env=_without_unbuffered()).stdout == "'1'\n"
    off = {**_without_unbuffered(), "PYTHONUNBUFFERED": ""}
    assert pt.run([PY, "-c", code], env=off).stdout == "''\n"
    assert off["PYTHONUNBUFFERED"] == ""  # the caller's dict is not changed
    assert pt.run_many([[PY, "-c", code]], env=_without_unbuffered())[0].stdout == "'1'\n"


def test_stream_bytes_and_check() -> None:
    with pt.stream(
        ["sh", "-c", "printf 'a\\nb'; echo bad >&2; exit 2"], text=False, check=True
    ) as s:
        seen = []
        with pytest.raises(pt.CommandFailed) as info:
            for line in s:
                seen.append(line)
    assert ("stdout", b"a") in seen and ("stdout", b"b") in seen
    assert info.value.returncode == 2 and "bad" in str(info.value)


def test_stream_timeout_raises_from_the_loop(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    seen = []
    with pytest.raises(pt.CommandTimeout):
        for line in pt.stream([PY, script(tmp_path, "tree.py", TREE), str(pids_file)], timeout=3):
            seen.append(line.text)
    assert "ready" in seen
    assert alive(read_pids(pids_file)) == []


@pytest.mark.parametrize("how", ["break", "exception"])
def test_leaving_the_loop_early_ends_the_tree(tmp_path: Path, how: str) -> None:
    pids_file = tmp_path / "pids"
    s = pt.stream([PY, script(tmp_path, "tree.py", TREE), str(pids_file)])
    with pytest.raises(KeyError) if how == "exception" else _nothing():
        for line in s:  # `s` stays referenced: the loop's end alone must end the tree
            if line.text == "ready":
                if how == "exception":
                    raise KeyError(line)
                break
    pids = read_pids(pids_file)
    assert alive([s.pid, *pids]) == []
    assert s.returncode is not None and s.returncode < 0


def test_stream_both_pipes_spammed(tmp_path: Path) -> None:
    counts = {"stdout": 0, "stderr": 0}
    for src, text in pt.stream([PY, script(tmp_path, "spam.py", SPAM), "2"], timeout=120):
        counts[src] += 1
        assert len(text) == 1023
    assert counts == {"stdout": 2048, "stderr": 2048}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------- run_many


def test_run_many_order_and_results() -> None:
    cmds = [["sh", "-c", f"sleep {d}; echo {i}"] for i, d in enumerate([0.3, 0.0, 0.15])]
    results = pt.run_many(cmds, workers=3)
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n"]
    assert [r.args for r in results] == cmds
    unordered = pt.run_many(cmds, workers=3, keep_order=False)
    assert sorted(r.stdout for r in unordered) == ["0\n", "1\n", "2\n"]
    assert unordered[0].stdout == "1\n"  # the quick one finished first


def test_run_many_respects_workers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    cmd = f"echo + >> {log}; sleep 0.2; echo - >> {log}"
    results = pt.run_many([cmd] * 8, workers=2, shell=True)
    assert all(r.ok for r in results)
    running = peak = 0
    for mark in log.read_text().split():
        running += 1 if mark == "+" else -1
        peak = max(peak, running)
    assert 1 <= peak <= 2


def test_run_many_timeout_marks_only_that_command(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)
    results = pt.run_many([[PY, tree, str(pids_file)], ["echo", "fine"]], timeout=3, workers=2)
    slow, quick = results
    assert slow.timed_out and not slow.ok and slow.stdout == "ready\n"
    assert quick.ok and quick.stdout == "fine\n" and not quick.timed_out
    assert alive(read_pids(pids_file)) == []
    with pytest.raises(pt.CommandTimeout):
        slow.check()


def test_run_many_check_stops_the_others(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)
    t0 = time.monotonic()
    with pytest.raises(pt.CommandFailed):
        pt.run_many(
            [[PY, tree, str(pids_file)], ["sh", "-c", "sleep 1; exit 7"]], check=True, workers=2
        )
    assert time.monotonic() - t0 < 30
    assert alive(read_pids(pids_file)) == []


def test_run_many_bad_input() -> None:
    with pytest.raises(pt.ProgramNotFound):
        pt.run_many([["echo", "x"], ["no-such-program-polytask"]])
    with pytest.raises(ValueError, match="workers"):
        pt.run_many([["echo"]], workers=0)
    with pytest.raises(ValueError, match="empty command"):
        pt.run_many([["echo"], []])
    assert pt.run_many([]) == []


def test_run_many_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    # Off a terminal (as here) progress=True is silent; "force" draws it anyway.
    assert [r.returncode for r in pt.run_many([["true"]] * 3, progress=True)] == [0, 0, 0]
    assert capfd.readouterr() == ("", "")
    results = pt.run_many([["true"]] * 3, progress="force")
    assert [r.returncode for r in results] == [0, 0, 0]
    out, err = capfd.readouterr()
    assert out == ""  # the bar goes to stderr, never into the program's stdout
    assert "commands" in err and "3/3" in err


# --------------------------------------------------------------------------- TaskGroup.run


def test_group_run_returns_the_result() -> None:
    with pt.TaskGroup() as g:
        t = g.run(["echo", "hi"], timeout=30)
    assert t.result().stdout == "hi\n"


def test_failing_sibling_ends_a_running_program(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)

    def fail_when_ready() -> None:
        read_pids(pids_file)
        raise ZeroDivisionError("sibling failed")

    t0 = time.monotonic()
    with pytest.raises(ExceptionGroup) as info:
        with pt.TaskGroup() as g:
            sleeper = g.run(["sleep", "60"])
            tree_task = g.run([PY, tree, str(pids_file)])
            g.spawn(fail_when_ready)
    assert time.monotonic() - t0 < 30
    assert [type(e) for e in info.value.exceptions] == [ZeroDivisionError]
    for task in (sleeper, tree_task):
        assert isinstance(task.exception(5), pt.Cancelled)
    assert "process tree was ended" in str(sleeper.exception(5))
    assert alive(read_pids(pids_file)) == []


def test_cancelled_task_ends_stream_and_run_many() -> None:
    started = pt.Event(backend="thread") if hasattr(pt, "Event") else None

    def streaming() -> None:
        for _ in pt.stream(["sh", "-c", "while true; do echo x; sleep 0.01; done"]):
            if started is not None:
                started.set()

    def many() -> None:
        pt.run_many([["sleep", "60"]] * 2)

    a = pt.spawn(streaming)
    b = pt.spawn(many)
    if started is not None:
        assert started.wait(30)

    def both_sleeps_run() -> bool:
        kids = psutil.Process().children(recursive=True)
        return sum(_cmdline(k) == ["sleep", "60"] for k in kids) >= 2

    wait_until(both_sleeps_run, 30, "run_many to start both programs")
    a.cancel()
    b.cancel()
    for task in (a, b):
        assert isinstance(task.exception(30), pt.Cancelled)


def _timed_out_once_up(
    run: Callable[[float], object], limit: float
) -> pytest.ExceptionInfo[pt.CommandTimeout]:
    """``run(limit)`` must time out; once more with a longer limit while it printed nothing.

    A Python program may take more than ``limit`` seconds to start on a loaded
    machine: timed out before its first line, it tests nothing (and it may not
    have set its SIGTERM handler yet). Output lost at every try still fails.
    """
    for attempt in (limit, limit * 4, limit * 10):
        with pytest.raises(pt.CommandTimeout) as info:
            run(attempt)
        if info.value.stdout:
            break
    return info


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # ended meanwhile
        return []


def _until_cancelled(within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not pt.current_task().cancelled:
        assert time.monotonic() < deadline, "never cancelled"
        time.sleep(0.01)


def test_stream_notices_a_cancellation_with_lines_still_pending() -> None:
    # The program wrote far more than the loop has handed out: the lines already
    # read must not keep a cancelled task's loop going (it looked only when empty).
    first = threading.Event()
    seen: dict[str, object] = {}

    def consume() -> None:
        after = 0
        s = pt.stream(["seq", "1", "1000000"])
        seen["pid"] = s.pid
        try:
            for _ in s:
                if not first.is_set():
                    first.set()
                    _until_cancelled()
                else:
                    after += 1
        except pt.Cancelled as exc:
            seen["error"] = exc
        seen["after"] = after
        seen["returncode"] = s.returncode

    task = pt.spawn(consume)
    assert first.wait(30)
    task.cancel()
    task.join(30)
    deadline = time.monotonic() + 30
    while "after" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen["after"] == 0  # not one more line after the cancellation
    assert isinstance(seen.get("error"), pt.Cancelled)
    assert "process tree was ended" in str(seen["error"])
    assert seen["returncode"] is not None and seen["returncode"] < 0  # ended, not finished
    assert alive([seen["pid"]]) == []  # type: ignore[list-item]


@pytest.mark.parametrize("call", ["run", "stream", "run_many"])
def test_a_cancelled_task_starts_no_program(tmp_path: Path, call: str) -> None:
    marker = tmp_path / "ran"
    cmd = ["touch", str(marker)]
    seen: list[BaseException] = []

    started = threading.Event()

    def late() -> None:
        started.set()
        _until_cancelled()
        try:
            if call == "run":
                pt.run(cmd)
            elif call == "stream":
                list(pt.stream(cmd))
            else:
                pt.run_many([cmd, cmd])
        except pt.Cancelled as exc:
            seen.append(exc)

    task = pt.spawn(late)
    assert started.wait(30)
    task.cancel()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and isinstance(seen[0], pt.Cancelled)
    assert not marker.exists()


@pytest.mark.parametrize("call", ["run", "stream"])
def test_cancelling_a_waiting_run_or_stream_ends_its_tree(tmp_path: Path, call: str) -> None:
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)
    seen: list[BaseException] = []

    def wait_for_it() -> None:
        try:
            if call == "run":
                pt.run([PY, tree, str(pids_file)])
            else:
                for _ in pt.stream([PY, tree, str(pids_file)]):
                    pass
        except pt.Cancelled as exc:
            seen.append(exc)

    task = pt.spawn(wait_for_it)
    pids = read_pids(pids_file)
    task.cancel()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and "was cancelled" in str(seen[0])
    assert alive(pids) == []  # the SIGTERM-ignoring grandchild too


# --------------------------------------------------------------------------- stdin


def test_stdin_data_file_path_fd_and_devnull(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("from a file\n")
    assert pt.run(["cat"]).stdout == ""  # the default: /dev/null, never the terminal
    assert pt.run(["cat"], stdin=pt.DEVNULL).stdout == ""
    assert pt.run(["cat"], stdin=subprocess.DEVNULL).stdout == ""  # subprocess's name too
    assert pt.run(["cat"], stdin="text\n").stdout == "text\n"
    assert pt.run(["cat"], stdin=b"\x00bytes", text=False).stdout == b"\x00bytes"
    assert pt.run(["cat"], stdin=data).stdout == "from a file\n"  # a path
    with open(data, "rb") as f:
        assert pt.run(["cat"], stdin=f).stdout == "from a file\n"  # a file object
    fd = os.open(data, os.O_RDONLY)
    try:
        assert pt.run(["cat"], stdin=fd).stdout == "from a file\n"  # a descriptor...
        os.fstat(fd)  # ... that stays the caller's, open
    finally:
        os.close(fd)
    assert pt.run(["cat"], stdin=io.BytesIO(b"in memory")).stdout == "in memory"
    assert pt.run(["cat"], stdin=io.StringIO("text io")).stdout == "text io"


def test_stdin_for_stream_and_run_many(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("1\n2\n")
    assert [line.text for line in pt.stream(["cat"], stdin="a\nb\n")] == ["a", "b"]
    assert [line.text for line in pt.stream(["cat"], stdin=data)] == ["1", "2"]
    # Data and paths: each program gets all of it.
    results = pt.run_many([["cat"], ["wc", "-c"]], stdin="abc")
    assert [r.stdout.strip() for r in results] == ["abc", "3"]
    results = pt.run_many([["cat"], ["cat"]], stdin=data, workers=2)
    assert [r.stdout for r in results] == ["1\n2\n", "1\n2\n"]
    # A shared descriptor or the terminal: one program at a time, or their reads interleave.
    with open(data, "rb") as f:
        with pytest.raises(ValueError, match="workers=1"):
            pt.run_many([["cat"], ["cat"]], stdin=f, workers=2)
        results = pt.run_many([["head", "-n", "1"], ["cat"]], stdin=f, workers=1)
    assert results[0].stdout == "1\n"
    with pytest.raises(ValueError, match="workers=1"):
        pt.run_many([["cat"], ["cat"]], stdin=pt.INHERIT, workers=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"stdin": "x", "input": "y"}, ValueError, "stdin= or input="),
        ({"stdin": subprocess.DEVNULL, "input": "y"}, ValueError, "stdin= or input="),
        ({"stdin": 2.5}, TypeError, "stdin must be"),
        ({"stdin": True}, TypeError, "stdin must be"),
        ({"stdin": -7}, ValueError, "descriptor"),
        ({"stdin": 987654}, ValueError, "not an open file descriptor"),
    ],
)
def test_bad_stdin_raises_at_the_call(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        pt.run(["cat"], **kwargs)
    with pytest.raises(error, match=text):
        pt.stream(["cat"], **kwargs)
    if "input" not in kwargs:
        with pytest.raises(error, match=text):
            pt.run_many([["cat"]], **kwargs)


def test_stdin_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        pt.run(["cat"], stdin=tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError):
        pt.run(["cat"], stdin=tmp_path)


def test_stdin_named_pipe(tmp_path: Path) -> None:
    # Read as `cat < fifo` would: the writer's data, not an early end-of-file.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("through the pipe\n"))
    writer.start()
    try:
        assert pt.run(["cat"], stdin=fifo, timeout=30).stdout == "through the pipe\n"
    finally:
        writer.join(30)


# The program runs `cat` with stdin=pt.INHERIT: it reads what we write to it.
INHERITING = textwrap.dedent(
    """
    import sys
    import polytask as pt
    r = pt.run(["cat"], stdin=pt.INHERIT, timeout=60)
    print("cat said", repr(r.stdout), r.returncode)
    """
)


def test_inherit_passes_this_processes_stdin(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PY, script(tmp_path, "inherit.py", INHERITING)],
        input="piped in\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == "cat said 'piped in\\n' 0\n", proc.stderr


# Run under a terminal of its own: an interactive program reads from it, then
# the script itself reads from it again (the terminal must have come back).
INTERACTIVE = textwrap.dedent(
    """
    import os, sys
    os.setsid()
    os.close(os.open(os.ttyname(0), os.O_RDWR))  # the pty becomes our controlling terminal
    import polytask as pt
    child = "print('got', input(), flush=True)"
    r = pt.run([sys.executable, "-c", child], stdin=pt.INHERIT, capture=False, timeout=20)
    print("returncode", r.returncode, flush=True)
    print("back", input(), flush=True)
    """
)


# The program puts the terminal in raw mode and hangs; the timeout kills it.
KILLED_INTERACTIVE = textwrap.dedent(
    """
    import os, sys, termios
    os.setsid()
    os.close(os.open(os.ttyname(0), os.O_RDWR))
    import polytask as pt
    before = termios.tcgetattr(0)
    child = "import time, tty; tty.setraw(0); print('raw', flush=True); time.sleep(60)"
    try:
        pt.run([sys.executable, "-c", child], stdin=pt.INHERIT, capture=False, timeout=2)
    except pt.CommandTimeout:
        print("timed out", flush=True)
    print("modes restored", termios.tcgetattr(0) == before, flush=True)
    print("back", input(), flush=True)
    """
)


def _pty_run(tmp_path: Path, code: str, steps: list[tuple[bytes, bytes]]) -> None:
    """Run ``code`` on a new terminal; for each step, type its input, then wait for its text."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [PY, script(tmp_path, "on_a_tty.py", code)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    try:
        for typed, text in steps:
            if typed:
                os.write(master, typed)
            deadline = time.monotonic() + 30
            while text not in out:
                left = deadline - time.monotonic()
                assert left > 0, f"{text!r} never came; the terminal showed {out!r}"
                ready, _, _ = select.select([master], [], [], left)
                chunk = b""
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: every end of the terminal closed
                        pass
                    assert chunk, f"{text!r} never came; the terminal showed {out!r}"
                out += chunk
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_inherit_gives_the_terminal_back_restored_after_a_kill(tmp_path: Path) -> None:
    _pty_run(
        tmp_path,
        KILLED_INTERACTIVE,
        [
            (b"", b"raw"),
            (b"", b"timed out"),
            (b"", b"modes restored True"),
            (b"again\n", b"back again"),
        ],
    )


def test_inherit_hands_the_terminal_to_an_interactive_program(tmp_path: Path) -> None:
    # Each program runs in a process group of its own: without being handed the
    # terminal, its read stops it (SIGTTIN) and it never ends.
    _pty_run(
        tmp_path,
        INTERACTIVE,
        [(b"hello\n", b"got hello"), (b"", b"returncode 0"), (b"again\n", b"back again")],
    )
