"""Killable cluster tasks: a task in a child process of its Dask or Ray worker.

With a timeout (or ``killable=True``) the call runs in a child process of the
engine's worker, so a timeout or a cancel kills the work, and what it started,
and frees the worker (see ``backends.cluster.child``). Real engines: the
session's LocalCluster and local Ray (tests/_engines.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import polytask as pt
from polytask.backends import make_backend

ENGINES = ["dask", "ray"]
_FIXTURE = {"dask": "dask_cluster", "ray": "ray_session"}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue(_FIXTURE[str(request.param)])
    return str(request.param)


@pytest.fixture
def killable(engine: str) -> Iterator[Any]:
    """A backend of the engine whose every task runs in a child (on the session's cluster)."""
    be = make_backend(engine, killable=True)
    try:
        yield be
    finally:
        be.shutdown(wait=False, cancel=True)


def sleep_then_touch(seconds: float, path: str) -> str:
    Path(path + ".started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(path).write_text("ran to the end")
    return "done"


def with_grandchild(path: str) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    Path(path).write_text(str(proc.pid))
    time.sleep(60)


def pids() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def boom(x: int) -> None:
    raise ValueError(f"bad value {x}")


def die() -> None:
    os._exit(9)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _gone(pid: int, timeout: float = 15, *, reaped: bool = True) -> bool:
    """Whether ``pid`` exited; with ``reaped``, also reaped (the worker's own child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            proc = psutil.Process(pid)
            if not reaped and proc.status() == psutil.STATUS_ZOMBIE:
                return True  # dead; reaping an orphan is its new parent's business
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    try:
        proc = psutil.Process(pid)
        state, ppid = proc.status(), proc.ppid()
    except psutil.NoSuchProcess:
        return True  # went at the last moment
    if not reaped and state == psutil.STATUS_ZOMBIE:
        return True
    try:  # what holds it (the parent may be a zombie itself: no cmdline then)
        parent = " ".join(psutil.Process(ppid).cmdline())
    except psutil.Error as exc:
        parent = type(exc).__name__
    print("still there:", pid, state, ppid, parent)
    return False


def _timed_out_once_started(backend: Any, tmp_path: Path) -> tuple[Path, int, float, Exception]:
    """Run ``sleep_then_touch`` past its timeout, once it got as far as starting.

    Returns its marker, the pid that ran it, how long it would have run and the
    TaskTimeout. The timeout counts from the submit, and the work runs in a fresh
    interpreter that imports this module: on a loaded machine that can take more
    than the first 1 s, and a timeout before the start tests no kill. Then it runs
    again with a longer one (the work always outlasts it).
    """
    for limit in (1.0, 4.0, 15.0):
        marker = tmp_path / f"marker-{limit:g}"
        work = limit + 2.0
        t = pt.spawn(sleep_then_touch, work, str(marker), backend=backend, timeout=limit)
        with pytest.raises(pt.TaskTimeout) as info:
            t.result(timeout=60)
        started = Path(str(marker) + ".started")
        ran = started.read_text() if started.exists() else ""
        if ran:
            return marker, int(ran), work, info.value
    raise AssertionError("the task never started, not even with a timeout of 15 s")


def test_a_timeout_kills_the_work_and_the_worker_goes_on(killable: Any, tmp_path: Path) -> None:
    marker, child, work, exc = _timed_out_once_started(killable, tmp_path)
    assert "was killed; the worker goes on" in str(exc)
    assert _gone(child), "the child running the task outlived its timeout"
    time.sleep(work)  # deliberate: past when the work would have written its marker
    assert not marker.exists()
    assert pt.spawn(pids, backend=killable).result(timeout=60)


def test_by_default_a_timeout_stops_the_work_on_both_engines(engine: str, tmp_path: Path) -> None:
    # Dask: the task runs in a child of its worker (Dask has no kill); Ray: the
    # worker running it is killed and replaced (ray.cancel(force=True)).
    marker, ran, work, _ = _timed_out_once_started(engine, tmp_path)
    assert _gone(ran), "the process running the task outlived its timeout"
    time.sleep(work)  # deliberate: past when the work would have written its marker
    assert not marker.exists()
    assert pt.spawn(pids, backend=engine).result(timeout=60)


def test_results_errors_and_crashes_come_back_from_the_child(killable: Any) -> None:
    child, worker = pt.spawn(pids, backend=killable).result(timeout=60)
    assert worker != os.getpid() and child != worker
    with pytest.raises(ValueError, match="bad value 3") as info:
        pt.spawn(boom, 3, backend=killable).result(timeout=60)
    assert "in boom" in str(info.value.__cause__)
    with pytest.raises(pt.WorkerCrashed, match="exit status 9"):
        pt.spawn(die, backend=killable).result(timeout=60)
    # The engine's worker survived the crash of the child.
    assert psutil.pid_exists(worker)
    assert pt.spawn(pids, backend=killable).result(timeout=60)[0] != child


def test_cancel_kills_a_running_task(killable: Any, tmp_path: Path) -> None:
    assert killable.can_kill_running is True
    marker = tmp_path / "marker"
    t = pt.spawn(sleep_then_touch, 3.0, str(marker), backend=killable)
    started = Path(str(marker) + ".started")
    _wait_for(started)
    assert t.cancel() is True
    with pytest.raises(pt.Cancelled):
        t.result(timeout=10)
    assert _gone(int(started.read_text())), "cancel() did not kill the running task"
    time.sleep(3.0)  # deliberate: past when the work would have written its marker
    assert not marker.exists()


def test_what_the_task_started_dies_with_it(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "grandchild"
    t = pt.spawn(with_grandchild, str(path), backend=engine, timeout=2.0)
    with pytest.raises(pt.TaskTimeout):
        t.result(timeout=60)
    _wait_for(path)
    assert _gone(int(path.read_text()), reaped=False), "the task's own child outlived it"


def test_pool_timeout_kills_a_chunk(engine: str, tmp_path: Path) -> None:
    with pt.Pool(1, backend=engine, timeout=1.5) as pool:
        t = pool.submit(sleep_then_touch, 4.0, str(tmp_path / "m"))
        with pytest.raises(pt.TaskTimeout):
            t.result(timeout=60)
        # The pool works on: the map's own limit leaves the engine time to start a
        # worker in place of the killed one (more than 1.5 s on a loaded machine).
        assert pool.map(abs, [-1, -2], timeout=60) == [1, 2]
    time.sleep(3.0)  # deliberate: past when the work would have written its marker
    assert not (tmp_path / "m").exists()


def set_event(ev: Any) -> bool:
    ev.set()
    return True


def test_a_task_in_a_child_uses_the_cluster_primitives(killable: Any) -> None:
    ev = killable.primitive("Event")
    assert pt.spawn(set_event, ev, backend=killable).result(timeout=120) is True
    assert ev.is_set()
