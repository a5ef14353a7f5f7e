"""Nothing outlives its owner: the script that started the work ends in every way
a program can end, and no process it started is left (no orphan, no zombie).

Each script runs under a subreaper (tests/_harness.py), so orphans it leaves are
re-parented to the harness, which lists them.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from tests.helpers import Harness

START_WORK = """
import os, sys, time, signal
import polytask as pt

def nap(s):
    time.sleep(s)

def grandchild_then_nap(s, started):
    import subprocess
    subprocess.Popen(["sleep", "120"])
    open(started, "w").write("started")
    time.sleep(s)

ready = sys.argv[1]
how = sys.argv[2]
started = ready + ".grandchild"
# A task still running at exit is waited for, unless it is a daemon: these are, for
# the script that leaves by returning or raising. (Ctrl-C ends the others.)
daemon = how in ("return", "raise")
tasks = [pt.spawn(nap, 120, backend="process", daemon=daemon) for _ in range(2)]
tasks.append(pt.spawn(grandchild_then_nap, 120, started, backend="process", daemon=daemon))
tasks.append(pt.spawn(nap, 120, backend="thread", daemon=daemon))
while not (all(t.running() for t in tasks) and os.path.exists(started)):
    time.sleep(0.01)
open(ready, "w").write("ready")
if how == "return":
    # Leave while daemon tasks still run: exit hooks kill and reap them.
    sys.exit(0)
if how == "raise":
    raise RuntimeError("the script failed")
time.sleep(120)  # wait for a signal
"""


@pytest.mark.parametrize(
    ("how", "sig"),
    [
        ("return", None),
        ("raise", None),
        ("signal", signal.SIGINT),
        ("signal", signal.SIGTERM),
        ("signal", signal.SIGKILL),
    ],
    ids=["return", "exception", "SIGINT", "SIGTERM", "SIGKILL"],
)
def test_nothing_left_when_the_owner_ends(tmp_path, how, sig):
    ready = tmp_path / "ready"
    with Harness(START_WORK, tmp_path, str(ready), how) as h:
        h.wait_for_line(ready, "ready")
        # 3 process workers, 1 grandchild `sleep`, plus the guardian.
        # The script saw its worker start the grandchild `sleep 120` before "ready".
        assert (tmp_path / "ready.grandchild").exists()
        if sig is not None:
            h.signal(sig)
        code = h.wait()
        if how == "return":
            assert code == 0
        elif sig is not None:
            assert code != 0
        assert h.leftovers(within=10) == []


def _zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # reaped since it was listed
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited (or a zombie) since it was listed
        return ""


GROUP_CTRL_C = """
import sys, time
import polytask as pt

def nap(s):
    time.sleep(s)

ready, out = sys.argv[1], sys.argv[2]
try:
    with pt.TaskGroup(backend="process") as g:
        for _ in range(3):
            g.spawn(nap, 120)
        while not all(t.running() for t in g.tasks):
            time.sleep(0.01)
        open(ready, "w").write("ready")
        time.sleep(120)
except KeyboardInterrupt:
    open(out, "w").write(f"KeyboardInterrupt {time.monotonic()}")
    raise
"""


def test_ctrl_c_in_a_group_kills_children_and_raises_within_a_second(tmp_path):
    ready, out = tmp_path / "ready", tmp_path / "out"
    with Harness(GROUP_CTRL_C, tmp_path, str(ready), str(out)) as h:
        h.wait_for_line(ready, "ready")
        assert len([p for p in h.descendants() if "polytask" in _cmdline(p)]) >= 3
        sent = time.monotonic()
        h.signal(signal.SIGINT)
        h.wait_for_line(out, "KeyboardInterrupt")
        raised = float(out.read_text().split()[1])
        # CLOCK_MONOTONIC is system-wide on Linux, so the two clocks compare. The
        # promise is "within a second" (README) on a quiet machine; 3 s leave a
        # loaded one room and still catch a wait for the naps or for the group's
        # 5 s reap deadline (see TaskGroup._interrupted).
        assert raised - sent < 3.0
        assert h.wait() != 0
        assert h.leftovers(within=10) == []


def test_no_zombies_after_crashes_and_timeouts():
    import polytask as pt
    from polytask.backends.process.backend import ProcessBackend

    # Only the processes started here: a session engine's (a Dask worker being
    # replaced, Ray's) may be a zombie for a moment while its own parent reaps it.
    before = {p.pid for p in psutil.Process().children()}
    be = ProcessBackend(2)
    try:
        crash = [be.spawn(os._exit, (1,), {}) for _ in range(4)]
        late = [be.spawn(time.sleep, (30,), {}, timeout=0.2) for _ in range(2)]
        for t in crash:
            with pytest.raises(pt.WorkerCrashed):
                t.result(60)
        for t in late:
            with pytest.raises(pt.TaskTimeout):
                t.result(60)
        assert be.spawn(os.getpid, (), {}).result(60) > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            zombies = [p for p in psutil.Process().children() if p.pid not in before and _zombie(p)]
            if not zombies:
                break
            time.sleep(0.05)
        assert zombies == []
    finally:
        be.shutdown(wait=True, cancel=True)
