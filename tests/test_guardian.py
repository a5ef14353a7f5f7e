"""The guardian's protocol, without processes, the guardian as ps shows it, and
its owner's sends to a guardian that does not read (SIGSTOP)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import polytask
from helpers import wait_until
from polytask._os import proc as _proc
from polytask._os.guardian import Registry


def test_registry_applies_whole_lines_only():
    r = Registry()
    r.feed(b"+12\n+13\n-12\np/dev/shm/a\nq/dev/shm/a\np/dev/shm/b\nPpre\nekey=1\nk5 99")
    assert r.groups == {13}
    assert r.paths == {"/dev/shm/b"}
    assert r.prefixes == {"pre"}
    assert r.markers == {b"key=1"}
    assert r.procs == set()  # the last line is not complete yet
    r.feed(b"\nl5 99\n")
    assert r.procs == set()


def test_registry_markers_exact_or_by_variable():
    r = Registry()
    r.feed(b"eJOB=7\neOWNER_1=\n")
    assert r.matches(b"A=1\0JOB=7\0")
    assert not r.matches(b"JOB=70\0")
    assert r.matches(b"X=1\0OWNER_1=anything\0")
    assert r.matches(b"OWNER_1=\0")
    assert not r.matches(b"OWNER_10=3\0OWNER_=1\0")


def test_registry_ignores_empty_and_unknown_lines():
    r = Registry()
    r.feed(b"\n+\nZzz\n")
    assert not (r.groups or r.paths or r.markers or r.procs or r.prefixes)


def test_files_expands_prefixes(tmp_path):
    (tmp_path / "seg-1").write_text("")
    (tmp_path / "seg-2").write_text("")
    (tmp_path / "other").write_text("")
    r = Registry()
    r.feed(b"P" + os.fsencode(tmp_path / "seg-") + b"\n")
    assert r.files() == {str(tmp_path / "seg-1"), str(tmp_path / "seg-2")}


def test_guardian_is_named_in_ps():
    """`ps` shows polytask's helper by name, not a page of Python source."""
    code = (
        "import os, sys, time, psutil\nfrom polytask._os import proc as _proc\n"
        "_proc.guard_path('/nonexistent/x')\n"
        "g = psutil.Process(_proc._guardian.pid)\n"
        "end = time.monotonic() + 20\n"
        "while g.name() == 'python' and time.monotonic() < end: time.sleep(0.01)\n"
        "print(g.cmdline()[0], len(' '.join(g.cmdline())), g.name())"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    argv0, length, comm = out.stdout.split()
    assert argv0 == "polytask-guardian"
    assert int(length) < 200
    assert comm.startswith("polytask-guard")


def test_the_guardian_carries_no_job_mark():
    """An outer owner's clean-up must not end a nested owner's guardian early."""
    _proc.guard_path("/nonexistent/y")
    try:
        env = psutil.Process(_proc._guardian.pid).environ()
    finally:
        _proc.unguard_path("/nonexistent/y")
    assert not [k for k in env if k.startswith("POLYTASK_TREE_")]


# ----------------------------------------------------------- a guardian that does not read

HANG = 60.0  # a bound for "does not hang", never a speed claim

# An owner whose guardian is SIGSTOPped registers far more than the guardian's
# 64 KiB pipe holds: first a marker longer than the pipe (so the pipe takes part
# of that line only), carried by a `sleep` it starts; then files, some of them
# unregistered (and some of those registered again). It also starts a worker
# and a command. With a blocking write it hung at the pipe's 64 KiB. It prints
# the guardian's pid and the sleep's, then "ready", then, once told, waits until
# every registration is in a pipe and prints "sent PID" (the guardian's, a new
# one if the test killed the stopped one), or exits if told to.
_OWNER = r"""
import os, signal, subprocess, sys, time
import polytask as pt
from polytask._os import proc as _proc
from polytask.backends.process.backend import ProcessBackend

folder, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
g = _proc._guardian
_proc.ensure_guardian()
first = g.pid
fill = "y" * 100_000
sleeper = subprocess.Popen(
    ["sleep", "600"], env=dict(os.environ, POLYTASK_TEST_FILL=fill),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(first, sleeper.pid, flush=True)
os.kill(first, signal.SIGSTOP)
while _proc.pid_state(first) != b"T":
    time.sleep(0.001)
_proc.guard_env("POLYTASK_TEST_FILL=" + fill)

def path(i):
    return os.path.join(folder, "f%05d-" % i + "x" * 200)

for i in range(count):
    open(path(i), "w").close()
    _proc.guard_path(path(i))
    if i % 3 == 1:
        _proc.unguard_path(path(i))
        if i % 5 == 0:
            _proc.guard_path(path(i))
be = ProcessBackend(1)
assert be.spawn(os.getpid, (), {}).result(60) != os.getpid()
be.shutdown()
assert pt.run(["true"]).returncode == 0
print("ready", flush=True)
if sys.stdin.readline() == "exit\n":
    sys.exit(0)
end = time.monotonic() + 60
while g._pending or (mode == "restart" and g.pid == first):
    assert time.monotonic() < end, "the backlog was never sent"
    time.sleep(0.01)
print("sent", g.pid, flush=True)
time.sleep(600)
"""

_COUNT = 1000  # 1000 lines of about 270 bytes, and a third more: far past 64 KiB


def _removed(i: int) -> bool:
    """Whether file ``i`` is registered at the end (see _OWNER)."""
    return i % 3 != 1 or i % 5 == 0


def _line(proc: subprocess.Popen[bytes], what: str) -> list[str]:
    """The owner's next line, or a failure (not a hang) if it does not come."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], HANG)[0]:
        pytest.fail(f"the owner printed no {what!r} in {HANG:g} s: hung")
    return proc.stdout.readline().decode().split()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_owner(tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    src = os.path.dirname(os.path.dirname(polytask.__file__))
    env = dict(os.environ, PYTHONPATH=src)
    argv = [sys.executable, "-c", _OWNER, str(tmp_path), str(_COUNT), mode]
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _end_owner(owner: subprocess.Popen[bytes], guardians: list[int], sleeper: int | None) -> None:
    """Whatever the test did: the guardians (perhaps stopped), the owner, its sleep gone."""
    for pid in guardians:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    owner.kill()
    owner.wait()
    for pipe in (owner.stdin, owner.stdout, owner.stderr):
        pipe.close()  # type: ignore[union-attr]
    if sleeper is not None and not _gone(sleeper):
        psutil.Process(sleeper).kill()


def _owner_with_a_stopped_guardian(tmp_path: Path, mode: str) -> None:
    owner = _start_owner(tmp_path, mode)
    assert owner.stdin is not None and owner.stderr is not None
    guardians, sleeper = [], None
    try:
        first, sleeper = map(int, _line(owner, "pids"))
        guardians.append(first)
        assert _line(owner, "ready") == ["ready"]
        if mode == "restart":
            os.kill(first, signal.SIGKILL)  # killed from outside, with a backlog
        else:
            os.kill(first, signal.SIGCONT)
        owner.stdin.write(b"go\n")
        owner.stdin.flush()
        sent = _line(owner, "sent")
        assert sent[0] == "sent", sent
        guardians.append(int(sent[1]))
        # Killed, the owner cannot send anything more: what the guardian does now it
        # does with what it was sent, in order.
        owner.kill()
        owner.wait(HANG)
        wait_until(lambda: _gone(guardians[-1]), HANG, "the guardian's clean-up")
        # All of it, even in a new guardian (which the old one's pipe never reached):
        # the marker the old pipe took part of (ending the sleep)...
        assert _gone(sleeper)
        # ... and every file, unregistered ones kept.
        left = {int(p.name[1:6]) for p in tmp_path.iterdir()}
        assert left == {i for i in range(_COUNT) if not _removed(i)}
        err = owner.stderr.read().decode()
        assert "does not read its pipe" in err, err
    finally:
        _end_owner(owner, guardians, sleeper)
    if mode == "restart":
        assert guardians[1] != guardians[0]


def test_a_stopped_guardian_holds_up_no_registration(tmp_path):
    """SIGSTOP on the guardian: spawns, commands and registrations go on (they
    used to hang once its pipe was full), and once it runs again it gets them
    all, in order: it removes what was registered, and what was unregistered
    after, not."""
    _owner_with_a_stopped_guardian(tmp_path, "continue")


def test_a_guardian_killed_with_a_backlog_is_replaced_and_sent_it(tmp_path):
    """The stopped guardian killed from outside: a new one gets what the old one
    was not sent, the line it got part of whole, with no send to trigger it."""
    _owner_with_a_stopped_guardian(tmp_path, "restart")


def test_an_owner_exits_with_its_guardian_stopped(tmp_path):
    """At exit the backlog waits for room for a while (close's timeout), then the
    guardian, still stopped, is killed: a clean-up from a list it was not sent all
    of could end groups whose numbers were reused since."""
    owner = _start_owner(tmp_path, "exit")
    assert owner.stdin is not None and owner.stderr is not None
    guardian = sleeper = None
    try:
        guardian, sleeper = map(int, _line(owner, "pids"))
        assert _line(owner, "ready") == ["ready"]
        owner.stdin.write(b"exit\n")
        owner.stdin.flush()
        assert owner.wait(HANG) == 0
        wait_until(lambda: _gone(guardian), HANG, "the stopped guardian killed")
        err = owner.stderr.read().decode()
        assert "ended without its clean-up" in err, err
    finally:
        _end_owner(owner, [] if guardian is None else [guardian], sleeper)
