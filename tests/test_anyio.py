"""polytask.anyio: process and thread tasks awaited from anyio code, on asyncio and trio.

Real worker processes; "gone" is checked with psutil on the pids the task itself
reported (its worker and a child it started), after the cancelled scope exits.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import psutil
import pytest

import polytask as pt
import polytask.anyio as pta

pytestmark = pytest.mark.anyio

HANG = 60  # a bound for waits on state, far above what they take


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_child_and_nap(path: str) -> None:
    """Start a child process (a process tree), report both pids, then sleep."""
    child = subprocess.Popen(["sleep", "300"])
    Path(path).write_text(f"{os.getpid()} {child.pid}\n")
    time.sleep(300)


def nap(seconds: float) -> None:
    time.sleep(seconds)


def fail(message: str) -> None:
    raise ValueError(message)


async def wait_for_pids(path: Path) -> list[int]:
    with anyio.fail_after(HANG):
        while not (path.exists() and path.read_text().endswith("\n")):
            await anyio.sleep(0.02)  # also shows that the event loop runs meanwhile
    return [int(p) for p in path.read_text().split()]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(worker: int, child: int) -> None:
    # The worker was reaped before the wait ended: it is gone now, not later.
    assert not psutil.pid_exists(worker) or not alive(worker), "the worker outlived the scope"
    # Its child got the same SIGTERM/SIGKILL (its process group); it may take a
    # moment to be scheduled and die.
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(child), "the task's child process outlived the scope"


# --------------------------------------------------------------------------- run_task / wait


async def test_run_task_returns_the_result(anyio_backend: str) -> None:
    assert await pta.run_task(pow, 2, 10, backend="process") == 1024
    assert await pta.run_task(pow, 3, 3) == 27  # thread, the default


async def test_run_task_raises_the_tasks_own_error(anyio_backend: str) -> None:
    with pytest.raises(ValueError, match="boom"):
        await pta.run_task(fail, "boom", backend="process")


async def test_cancelling_the_scope_kills_the_process_task_and_its_tree(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "pids"
    outcome: list[str] = []

    async def runner() -> None:
        try:
            await pta.run_task(start_child_and_nap, str(path), backend="process")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        worker, child = await wait_for_pids(path)
        assert alive(worker) and alive(child)
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    assert_gone(worker, child)


async def test_a_timeout_scope_kills_the_process_task(anyio_backend: str, tmp_path: Path) -> None:
    path = tmp_path / "pids"
    task = pt.spawn(start_child_and_nap, str(path), backend="process")
    worker, child = await wait_for_pids(path)
    with anyio.move_on_after(0.2) as scope:
        await pta.wait(task)
    assert scope.cancelled_caught
    assert task.cancelled()  # ended before the scope exited
    assert_gone(worker, child)


async def test_a_cancelled_thread_task_stops_at_its_cancellation_point(anyio_backend: str) -> None:
    task = pt.spawn(pt.sleep, HANG)  # a thread task; pt.sleep wakes on cancel
    with anyio.move_on_after(0.1) as scope:
        await pta.wait(task)
    assert scope.cancelled_caught and task.done() and task.cancelled()


async def test_wait_refuses_what_is_not_a_task(anyio_backend: str) -> None:
    with pytest.raises(TypeError, match="needs a polytask Task"):
        await pta.wait(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TaskGroup


async def test_task_group_waits_for_its_tasks_without_blocking_the_loop(
    anyio_backend: str,
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with pta.TaskGroup(backend="process") as g:
            a = g.spawn(pow, 2, 10)
            b = g.spawn(nap, 0.5)
            c = g.spawn(pow, 3, 3)
        assert b.done()
        tg.cancel_scope.cancel()
    assert (a.result(), c.result()) == (1024, 27)
    assert ticks >= 5  # the loop ran while the group waited for the half-second nap


async def test_task_group_first_failure_cancels_the_rest(anyio_backend: str) -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with pta.TaskGroup(backend="process") as g:
            slow = g.spawn(nap, HANG)
            g.spawn(fail, "bad input")
    assert [str(e) for e in info.value.exceptions] == ["bad input"]
    assert slow.cancelled()


async def test_task_group_in_an_anyio_task_group_dies_with_its_sibling(
    anyio_backend: str, tmp_path: Path
) -> None:
    # An anyio sibling fails: anyio cancels the task group's scope, and the
    # polytask group inside it kills its process tasks before the error comes out.
    path = tmp_path / "pids"
    tasks: list[pt.Task[None]] = []

    async def polytask_side() -> None:
        async with pta.TaskGroup(backend="process") as g:
            tasks.append(g.spawn(start_child_and_nap, str(path)))

    async def failing_sibling() -> None:
        await wait_for_pids(path)
        raise KeyError("sibling failed")

    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(polytask_side)
            tg.start_soon(failing_sibling)
    assert info.group_contains(KeyError, match="sibling failed")
    assert tasks[0].cancelled()
    assert_gone(*[int(p) for p in path.read_text().split()])


async def test_task_groups_of_two_coroutines_are_independent(anyio_backend: str) -> None:
    # On one event loop thread: one group's failure must not cancel the other's tasks.
    results: dict[str, object] = {}

    async def failing() -> None:
        try:
            async with pta.TaskGroup() as g:
                g.spawn(pt.sleep, 0.05)
                g.spawn(fail, "first")
        except ExceptionGroup as eg:
            results["failing"] = [str(e) for e in eg.exceptions]

    async def steady() -> None:
        async with pta.TaskGroup() as g:
            t = g.spawn(pt.sleep, 0.5)
            await anyio.sleep(0)  # let the other group open and fail meanwhile
        results["steady"] = t.cancelled()

    async with anyio.create_task_group() as tg:
        tg.start_soon(steady)
        tg.start_soon(failing)
    assert results == {"failing": ["first"], "steady": False}


async def test_cancelled_body_cancels_the_group(anyio_backend: str, tmp_path: Path) -> None:
    path = tmp_path / "pids"
    with anyio.move_on_after(HANG) as scope:
        async with pta.TaskGroup(backend="process") as g:
            task = g.spawn(start_child_and_nap, str(path))
            pids = await wait_for_pids(path)
            scope.cancel()
            await anyio.sleep(HANG)  # cancelled here, inside the block
    assert scope.cancelled_caught and task.cancelled()
    assert_gone(*pids)
