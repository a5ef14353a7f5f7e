"""The task contract: what spawn, Task and TaskGroup promise on every backend.

Each test runs once per backend in CONTRACT_BACKENDS (see conftest.py). Task
functions live at module level so every backend can ship them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import pytest

import polytask as pt
from helpers import wait_for_file

HANG = 60  # a bound for "does not hang", never a speed claim


class Boom(ValueError):
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(msg: str) -> None:
    raise Boom(msg)


def nap(seconds: float, started: str | None = None) -> str:
    if started:
        Path(started).touch()  # the test waits for it: running on the backend
    time.sleep(seconds)
    return "woke"


def cooperative_nap(seconds: float, started: str | None = None) -> str:
    # Threads cannot be killed: a long thread task checks its flag.
    if started:
        Path(started).touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pt.current_task().raise_if_cancelled()
        time.sleep(0.01)
    return "woke"


def checkpointed_nap(seconds: float) -> str:
    pt.checkpoint()
    pt.sleep(seconds)
    pt.checkpoint()
    return "woke"


def pt_sleep_after_touching(started: str, seconds: float) -> None:
    Path(started).touch()
    pt.sleep(seconds)


def my_name() -> str:
    return pt.current_task().name


def test_result_and_kwargs(backend_name: str) -> None:
    t = pt.spawn(add, 2, b=3, backend=backend_name)
    assert t.result(timeout=HANG) == 5
    assert t.done() and not t.cancelled()
    assert t.exception(timeout=0) is None
    assert t.backend == backend_name


def test_name_defaults_to_the_function_and_is_visible_inside(backend_name: str) -> None:
    assert pt.spawn(my_name, backend=backend_name).result(HANG) == "my_name"
    t = pt.spawn(my_name, backend=backend_name, name="job-7")
    assert t.name == "job-7"
    assert t.result(HANG) == "job-7"


def test_exception_keeps_its_type_and_remote_traceback(backend_name: str) -> None:
    t = pt.spawn(fail, "bad input", backend=backend_name)
    with pytest.raises(Boom, match="bad input") as info:
        t.result(timeout=HANG)
    assert isinstance(t.exception(0), Boom)
    if backend_name != "thread":
        # The worker's traceback travels as the cause, naming the failing function.
        assert "fail" in str(info.value.__cause__)


def test_duration_grows_and_freezes(backend_name: str) -> None:
    t = pt.spawn(nap, 0.2, backend=backend_name)
    assert t.result(HANG) == "woke"
    frozen = t.duration
    assert frozen is not None and frozen >= 0.15
    time.sleep(0.05)  # deliberate: time passes, the duration of an ended task does not
    assert t.duration == frozen


def wait_for_path(path: str) -> str:
    deadline = time.monotonic() + HANG
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return "woke"


def test_wait_timeout_does_not_stop_the_task(backend_name: str, tmp_path: Path) -> None:
    # Runs until released, not for a fixed time: still running at the short wait,
    # however late this thread gets to it.
    release = tmp_path / "release"
    t = pt.spawn(wait_for_path, str(release), backend=backend_name)
    try:
        with pytest.raises(TimeoutError) as info:
            t.result(timeout=0.01)
        assert not isinstance(info.value, pt.TaskTimeout)
    finally:
        release.touch()
    assert t.result(timeout=HANG) == "woke"


def test_task_timeout(backend_name: str) -> None:
    fn = cooperative_nap if backend_name == "thread" else nap
    t = pt.spawn(fn, 30, backend=backend_name, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(pt.TaskTimeout) as info:
        t.result(timeout=HANG)
    assert time.monotonic() - started < 20
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, pt.PolytaskError)
    assert t.name in str(info.value)


def test_cancel_a_running_task(backend_name: str, tmp_path: Path) -> None:
    fn = cooperative_nap if backend_name == "thread" else nap
    started_file = tmp_path / "started"
    t = pt.spawn(fn, 30, str(started_file), backend=backend_name)
    wait_for_file(started_file, HANG)  # running on the backend, not merely dispatched
    started = time.monotonic()
    t.cancel()
    with pytest.raises(pt.Cancelled):
        t.result(timeout=HANG)
    assert t.cancelled()
    assert time.monotonic() - started < 20, "cancel() did not stop the running task"


def test_sleep_and_checkpoint_work_inside_tasks(backend_name: str) -> None:
    # Cancellation points of thread tasks; elsewhere time.sleep and a no-op.
    t = pt.spawn(checkpointed_nap, 0.05, backend=backend_name)
    assert t.result(HANG) == "woke"
    assert not t.cancelled()


def long_sleep(backend_name: str) -> float:
    # Dask cannot stop a running function: a short one, not to hold its workers busy.
    return 3.0 if backend_name == "dask" else 30.0


def test_cancel_a_task_in_pt_sleep(backend_name: str, tmp_path: Path) -> None:
    started_file = tmp_path / "started"
    t = pt.spawn(
        pt_sleep_after_touching, str(started_file), long_sleep(backend_name), backend=backend_name
    )
    wait_for_file(started_file, HANG)  # running on the backend, not merely dispatched
    time.sleep(0.05)  # kept: from the touch into pt.sleep, which cannot be observed
    started = time.monotonic()
    t.cancel()
    with pytest.raises(pt.Cancelled):
        t.result(timeout=HANG)
    assert t.cancelled()
    assert time.monotonic() - started < 20, "cancel() did not stop pt.sleep"


def test_works_with_concurrent_futures_wait_and_as_completed(backend_name: str) -> None:
    tasks = [pt.spawn(nap, 0.05 * i, backend=backend_name) for i in range(4)]
    done, not_done = concurrent.futures.wait(tasks, timeout=HANG)
    assert len(done) == 4 and not not_done
    more = [pt.spawn(add, i, backend=backend_name) for i in range(6)]
    got = sorted(f.result() for f in concurrent.futures.as_completed(more, timeout=HANG))
    assert got == list(range(6))


def test_done_callback_and_polling_done(backend_name: str) -> None:
    seen: list[int] = []
    t = pt.spawn(add, 40, 2, backend=backend_name)
    t.add_done_callback(lambda task: seen.append(task.result()))
    deadline = time.monotonic() + HANG
    u = pt.spawn(nap, 0.1, backend=backend_name)
    while not (u.done() and seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [42]
    assert u.result(0) == "woke"


def test_await_a_task(backend_name: str) -> None:
    async def main() -> list[int]:
        return list(
            await asyncio.gather(*(pt.spawn(add, i, 1, backend=backend_name) for i in range(3)))
        )

    assert asyncio.run(asyncio.wait_for(main(), HANG)) == [1, 2, 3]


def test_background_decorator(backend_name: str) -> None:
    later = pt.background(backend=backend_name)(add)
    task = later(20, b=1)
    assert isinstance(task, pt.Task)
    assert task.result(HANG) == 21


def test_group_waits_for_every_task(backend_name: str) -> None:
    with pt.TaskGroup(backend=backend_name) as g:
        slow = g.spawn(nap, 0.3)
        fast = g.spawn(add, 1, 1)
    assert slow.done() and fast.done()
    assert (slow.result(0), fast.result(0)) == ("woke", 2)


def test_group_failure_cancels_siblings_and_raises_exception_group(backend_name: str) -> None:
    fn = cooperative_nap if backend_name == "thread" else nap
    started = time.monotonic()
    with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
        with pt.TaskGroup(backend=backend_name) as g:
            sibling = g.spawn(fn, 30)
            g.spawn(fail, "first")
    assert time.monotonic() - started < 20, "the sibling was not stopped"
    errors = info.value.exceptions
    assert len(errors) == 1 and isinstance(errors[0], Boom)
    assert sibling.cancelled()


def test_group_failure_stops_a_sibling_in_pt_sleep(backend_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(ExceptionGroup):  # noqa: PT012
        with pt.TaskGroup(backend=backend_name) as g:
            sibling = g.spawn(pt.sleep, long_sleep(backend_name))
            g.spawn(fail, "first")
    assert time.monotonic() - started < 20, "the sibling was not stopped"
    assert sibling.cancelled()


def test_group_except_star(backend_name: str) -> None:
    caught = []
    try:
        with pt.TaskGroup(backend=backend_name) as g:
            g.spawn(fail, "x")
    except* Boom as eg:
        caught.extend(eg.exceptions)
    assert len(caught) == 1


def test_groups_nest(backend_name: str) -> None:
    with pt.TaskGroup(backend=backend_name) as outer:
        a = outer.spawn(add, 1)
        with pt.TaskGroup(backend=backend_name) as inner:
            b = inner.spawn(add, 2)
        assert b.done()
    assert (a.result(0), b.result(0)) == (1, 2)


def test_group_timeout(backend_name: str) -> None:
    fn = cooperative_nap if backend_name == "thread" else nap
    started = time.monotonic()
    with pytest.raises(pt.TaskTimeout), pt.TaskGroup(backend=backend_name, timeout=0.3) as g:
        g.spawn(fn, 30)
    assert time.monotonic() - started < 20
