"""Tasks still running when the interpreter exits: never ended silently.

A task is waited for (as ``concurrent.futures`` and non-daemon threads are);
Ctrl-C during that wait kills it, with a warning naming it; a daemon task
(``daemon=True``) is killed at once, with a warning naming it. Thread and
process tasks behave alike (a thread cannot be killed: it is abandoned,
flagged cancelled). Each case runs a real script in its own interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import polytask
import polytask as pt

HANG = 60
SRC = str(Path(polytask.__file__).resolve().parents[1])

SCRIPT = """
import os, sys, threading, time
import polytask as pt

def nap_then_write(path, seconds):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path + ".pid")
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")

if __name__ == "__main__":
    backend, how, path, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if how == "background":
        pt.background(backend=backend, daemon=True, name="napper")(nap_then_write)(path, seconds)
    else:
        options = {"daemon": True} if how == "daemon" else {}
        pt.spawn(nap_then_write, path, seconds, backend=backend, name="napper", **options)
    deadline = time.monotonic() + 30
    while not os.path.exists(path + ".pid") and time.monotonic() < deadline:
        time.sleep(0.01)
    print("main done", flush=True)
    # Runs first at exit (registered after polytask's exit wait), then that wait starts.
    threading._register_atexit(lambda: print("at exit", flush=True))
    if how == "interrupted":
        raise KeyboardInterrupt  # the program itself ends by Ctrl-C
"""


class Script:
    def __init__(self, tmp_path: Path, backend: str, how: str, seconds: float) -> None:
        path = tmp_path / "script.py"
        path.write_text(textwrap.dedent(SCRIPT))
        self.out = tmp_path / "out"
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, str(path), backend, how, str(self.out), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert self.proc.stdout is not None
            assert self.proc.stdout.readline().strip() == "main done"
            self.runner = int((tmp_path / "out.pid").read_text())  # the task's process
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Script:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def finish(self, timeout: float = HANG) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def runner_gone(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(self.runner).status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
            time.sleep(0.05)
        return False


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_exit_waits_for_a_running_task(tmp_path, backend):
    with Script(tmp_path, backend, "plain", 1.0) as s:
        code, err = s.finish()
    assert code == 0, err
    assert s.out.read_text() == "done"  # the task ran to its end
    assert "polytask:" not in err


@pytest.mark.parametrize("backend", ["process", "thread"])
@pytest.mark.parametrize("how", ["daemon", "background"])
def test_a_daemon_task_is_killed_at_exit_and_named(tmp_path, backend, how):
    with Script(tmp_path, backend, how, HANG * 2) as s:
        code, err = s.finish()  # well before the task would have ended
    assert code == 0, err
    assert not s.out.exists()
    assert "daemon" in err and "'napper'" in err
    if backend == "process":
        assert "killed 1 task(s): 'napper' (process)" in err
        assert s.runner_gone()
    else:
        assert "abandoned 1 thread task(s)" in err


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_ctrl_c_during_the_exit_wait_kills_the_task(tmp_path, backend):
    with Script(tmp_path, backend, "plain", HANG * 2) as s:
        # At exit, about to wait for its task (a Ctrl-C a moment earlier kills it too).
        assert s.proc.stdout is not None and s.proc.stdout.readline() == "at exit\n"
        time.sleep(0.05)  # kept: out of the print's hook into the wait, not observable
        s.proc.send_signal(signal.SIGINT)
        _, err = s.finish()
    assert not s.out.exists()
    assert "Ctrl-C" in err and "'napper'" in err, err
    if backend == "process":
        assert "killed 1 task(s)" in err
        assert s.runner_gone()
    else:
        assert "abandoned 1 thread task(s)" in err


def test_a_program_ended_by_ctrl_c_kills_its_tasks_without_waiting(tmp_path):
    with Script(tmp_path, "process", "interrupted", HANG * 2) as s:
        code, err = s.finish()
    assert code != 0
    assert "the program was interrupted (Ctrl-C): killed 1 task(s): 'napper'" in err
    assert not s.out.exists()
    assert s.runner_gone()


def nap(seconds: float) -> None:
    time.sleep(seconds)


def test_daemon_must_be_a_bool():
    with pytest.raises(TypeError, match="daemon must be True or False"):
        pt.spawn(nap, 0, daemon="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="daemon must be True or False"):
        pt.background(daemon=1)  # type: ignore[call-overload]


def test_daemon_is_recorded_on_the_task():
    t = pt.spawn(nap, 0, backend="process", daemon=True)
    assert t.daemon
    t.result(HANG)
    assert not pt.spawn(nap, 0).daemon
