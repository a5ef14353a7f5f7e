"""The kill contract: a timeout stops the running work; so does a cancel where the
backend says it can (``can_kill_running``).

Process workers are killed; Dask and Ray run a task that has a timeout in a child
process of their worker, which the timeout kills, and every task with
``killable=True`` (see backends.cluster.child). Threads cannot be stopped: the
thread backend is not held to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import polytask as pt
from helpers import wait_for_file
from polytask.backends import Backend, make_backend

HANG = 60  # a bound for "does not hang", never a speed claim


def sleep_then_touch(seconds: float, path: str) -> str:
    Path(path + ".started").touch()
    time.sleep(seconds)
    Path(path).write_text("ran to the end")
    return "done"


def _skip_threads(backend_name: str) -> None:
    if backend_name == "thread":
        pytest.skip("a thread cannot be stopped; thread tasks check their cancel flag")


def test_a_timeout_stops_the_running_work(backend_name: str, tmp_path: Path) -> None:
    _skip_threads(backend_name)
    # The timeout counts from the submit; a cluster task with a timeout runs in a
    # fresh interpreter, which a loaded machine may not have started within 1 s. A
    # timeout before the start tests no stop: then again with a longer one.
    for limit in (1.0, 4.0, 15.0):
        marker = tmp_path / f"marker-{limit:g}"
        work = limit + 1.5  # always outlasts the timeout
        t = pt.spawn(sleep_then_touch, work, str(marker), backend=backend_name, timeout=limit)
        with pytest.raises(pt.TaskTimeout):
            t.result(timeout=HANG)
        if Path(str(marker) + ".started").exists():
            break
    else:
        raise AssertionError("the task never started, not even with a timeout of 15 s")
    # Deliberate: "nothing happens" needs its time; past when the work would end.
    time.sleep(work + 0.5)
    assert not marker.exists(), "the timed-out work ran on to its end"


@pytest.fixture
def killing(backend_name: str) -> Iterator[Backend]:
    """A backend of ``backend_name`` that kills running work on cancel."""
    _skip_threads(backend_name)
    options = {"killable": True} if backend_name in ("dask", "ray") else {}
    be = make_backend(backend_name, max_workers=2, **options)
    assert be.can_kill_running is True
    try:
        yield be
    finally:
        be.shutdown(wait=False, cancel=True)


def test_a_group_timeout_stops_the_running_work(killing: Backend, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(pt.TaskTimeout), pt.TaskGroup(backend=killing, timeout=1.0) as g:
        g.spawn(sleep_then_touch, 2.5, str(marker))
    time.sleep(3.0)  # deliberate: past the 2.5 s the work would run, it must not end
    assert not marker.exists(), "the timed-out work ran on to its end"


def test_cancel_stops_the_running_work(killing: Backend, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    t = pt.spawn(sleep_then_touch, 2.5, str(marker), backend=killing)
    wait_for_file(str(marker) + ".started", HANG)
    assert t.cancel() is True
    with pytest.raises(pt.Cancelled):
        t.result(timeout=HANG)
    time.sleep(3.0)  # deliberate: past the 2.5 s the work would run, it must not end
    assert not marker.exists(), "the cancelled work ran on to its end"
