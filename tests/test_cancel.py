"""Cancelling thread tasks: pt.sleep, pt.checkpoint, and every blocking polytask call.

A thread cannot be killed, so a cancelled thread task (``task.cancel()``, its
timeout, or a failure in its TaskGroup) stops at its next cancellation point,
which raises :class:`pt.Cancelled`. These tests block siblings of a failing
task in each kind of call and check that the group ends long before the calls
would have returned on their own, and that each sibling reports
``cancelled()``. A watchdog unblocks every call after ``WATCHDOG`` seconds, so
that code without cancellation points fails these tests instead of hanging.
"""

from __future__ import annotations

import fcntl
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import polytask as pt
from helpers import thread_is_in, wait_until

HANG = 60.0  # a bound for "does not hang", never a speed claim
WATCHDOG = 10.0  # without cancellation points, the blocked calls end only then
#: The group must end far below WATCHDOG (and the 30 s sleeps); the promise is
#: 0.1 s, this is only a generous bound for a noisy machine.
BOUND = 5.0


class Boom(ValueError):
    pass


def fail_after(ready: threading.Event, seconds: float) -> None:
    ready.wait(HANG)
    time.sleep(seconds)
    raise Boom("first failure")


class Holder:
    """Holds a lock-like object on a plain thread until told to let go."""

    def __init__(self, acquire: Callable[[], Any], release: Callable[[], Any]) -> None:
        self._release = release
        self._held = threading.Event()
        self._stop = threading.Event()

        def hold() -> None:
            acquire()
            self._held.set()
            self._stop.wait(HANG)
            release()

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()
        assert self._held.wait(HANG)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(HANG)


class Case:
    """One kind of blocking call: ``block()`` blocks until ``unblock()`` (or cancel)."""

    def __init__(self, kind: str, backend: str, tmp_path: Any) -> None:
        self.kind = kind
        self.cleanups: list[Callable[[], Any]] = []
        self.after: Callable[[], None] = lambda: None
        self.block, self.unblock = self._make(kind, backend, tmp_path)

    def _make(self, kind: str, backend: str, tmp_path: Any) -> tuple[Callable[[], Any], Any]:
        if kind == "sleep":
            return (lambda: pt.sleep(30)), (lambda: None)
        if kind in ("lock", "rlock"):
            lock = (pt.Lock if kind == "lock" else pt.RLock)(backend=backend)
            holder = Holder(lock.acquire, lock.release)
            self.cleanups.append(holder.stop)
            return lock.acquire, holder.stop
        if kind == "filelock":
            path = tmp_path / "lock"
            mine, theirs = pt.FileLock(path), pt.FileLock(path)
            holder = Holder(mine.acquire, mine.release)
            self.cleanups.append(holder.stop)
            return theirs.acquire, holder.stop
        if kind == "event":
            event = pt.Event(backend=backend)
            return event.wait, event.set
        if kind == "condition":
            cond = pt.Condition(backend=backend)

            def wait() -> None:
                with cond:
                    cond.wait()

            def notify() -> None:
                with cond:
                    cond.notify_all()

            def after() -> None:
                # The cancelled wait re-took the lock and `with` released it.
                assert cond.acquire(timeout=HANG)
                cond.release()

            self.after = after
            return wait, notify
        if kind == "semaphore":
            sem = pt.Semaphore(0, backend=backend)
            return sem.acquire, (lambda: sem.release(5))
        if kind == "barrier":
            barrier = pt.Barrier(2, backend=backend)

            def after() -> None:
                # The others must not wait for a party that left: it is broken.
                assert barrier.broken

            self.after = after
            return barrier.wait, barrier.abort
        if kind in ("result", "join") and backend == "process":
            # A task nobody cancels, which ends by itself when the watchdog would fire.
            other = pt.spawn(time.sleep, WATCHDOG, backend="process")
            self.cleanups.append(other.cancel)
            return (other.result if kind == "result" else other.join), (lambda: None)
        if kind in ("result", "join"):
            gate = threading.Event()
            other = pt.spawn(gate.wait, HANG)  # a task nobody cancels
            self.cleanups.append(gate.set)
            self.cleanups.append(lambda: other.result(HANG))
            return (other.result if kind == "result" else other.join), gate.set
        if kind.startswith("fifo-"):
            return self._fifo(kind, tmp_path)
        if kind == "group":
            gate = pt.Event()

            def nested() -> None:
                with pt.TaskGroup(name="inner") as inner:
                    inner.spawn(gate.wait)

            return nested, gate.set
        raise AssertionError(kind)

    def _fifo(self, kind: str, tmp_path: Any) -> tuple[Callable[[], Any], Any]:
        fifo = pt.Fifo(tmp_path / "fifo")
        self.cleanups.append(fifo.unlink)
        if kind == "fifo-open":  # a writer waits for a reader
            opened: list[Any] = []
            self.cleanups.append(lambda: [r.close() for r in opened])
            return (lambda: fifo.open("w")), (lambda: opened.append(fifo.open("r")))
        reader = fifo.open("r")
        self.cleanups.append(reader.close)
        if kind == "fifo-recv":  # no writer has come yet
            writer: list[Any] = []
            self.cleanups.append(lambda: [w.close() for w in writer])

            def send() -> None:
                writer.append(fifo.open("w", timeout=HANG))
                writer[0].send(b"x")

            return (lambda: reader.recv()), send
        sender = fifo.open("w", timeout=HANG)
        self.cleanups.append(sender.close)
        if kind == "fifo-flock":  # another writer's long message holds the FIFO's lock
            fd = os.open(fifo.path, os.O_WRONLY | os.O_NONBLOCK)
            holder = Holder(
                lambda: fcntl.flock(fd, fcntl.LOCK_EX), lambda: fcntl.flock(fd, fcntl.LOCK_UN)
            )
            self.cleanups += [holder.stop, lambda: os.close(fd)]  # in this order
            return (lambda: sender.send(b"x" * 8192)), holder.stop
        # fifo-send: the reader does not read, so a message bigger than the pipe
        # waits for room.
        return (lambda: sender.send(b"x" * (1 << 20))), reader.close


def blocked(ready: threading.Event, block: Callable[[], Any]) -> None:
    ready.set()
    block()


@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    yield
    # A finished group and its tasks form reference cycles (task -> done callback
    # -> group -> tasks; task -> Cancelled -> traceback -> frames): collect them now,
    # so the process primitives their frames hold release their segments in this test.
    gc.collect()


@pytest.fixture
def watchdog() -> Iterator[Callable[[Callable[[], Any]], None]]:
    """Unblock the given calls after WATCHDOG seconds if the test has not ended."""
    calls: list[Callable[[], Any]] = []
    timer = threading.Timer(WATCHDOG, lambda: [c() for c in calls])
    timer.daemon = True
    timer.start()
    yield calls.append
    timer.cancel()


THREAD_KINDS = ["sleep", "group", "filelock", "fifo-open", "fifo-recv", "fifo-send", "fifo-flock"]
#: Blocking calls on a thread or a process object (waited for in a thread task either way).
PRIMITIVE_KINDS = ["lock", "rlock", "event", "condition", "semaphore", "barrier", "result", "join"]
CASES = [(k, "thread") for k in THREAD_KINDS] + [
    (k, b) for k in PRIMITIVE_KINDS for b in ("thread", "process")
]


@pytest.mark.parametrize(("kind", "backend"), CASES, ids=[f"{k}-{b}" for k, b in CASES])
def test_group_failure_stops_a_sibling_blocked_in_a_polytask_call(
    kind: str, backend: str, tmp_path: Any, watchdog: Any
) -> None:
    case = Case(kind, backend, tmp_path)
    watchdog(case.unblock)
    ready = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
            with pt.TaskGroup() as g:
                sibling = g.spawn(blocked, ready, case.block, name=f"blocked-in-{kind}")
                g.spawn(fail_after, ready, 0.1)
        took = time.monotonic() - started
    finally:
        for cleanup in case.cleanups:
            cleanup()
    assert [type(e) for e in info.value.exceptions] == [Boom]
    assert took < BOUND, f"the group waited {took:.1f} s for a sibling blocked in {kind}"
    assert sibling.cancelled(), sibling.exception(0)
    assert isinstance(sibling.exception(0), pt.Cancelled)
    case.after()


def test_every_sibling_reports_cancelled(tmp_path: Any, watchdog: Any) -> None:
    cases = [Case(k, "thread", tmp_path / k) for k in ("sleep", "event", "lock", "semaphore")]
    for case in cases:
        watchdog(case.unblock)
    ready = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(ExceptionGroup), pt.TaskGroup() as g:  # noqa: PT012
            siblings = [g.spawn(blocked, threading.Event(), c.block) for c in cases]
            g.spawn(fail_after, ready, 0.1)
            ready.set()
    finally:
        for case in cases:
            for cleanup in case.cleanups:
                cleanup()
    assert time.monotonic() - started < BOUND
    assert [s.cancelled() for s in siblings] == [True] * len(siblings)


# --------------------------------------------------------------- a thread Pool's tasks
# A task submitted to a thread Pool (or Executor) runs inside a chunk, the backend's
# own task: its cancel() flags the task, terminate() and its timeout the chunk.
# Either must reach the cancellation point the task is blocked in (they did not:
# pt.sleep slept on after cancel(), and nothing saw terminate() or the timeout).

POOL_KINDS = [
    ("sleep", "thread"),
    ("event", "thread"),
    ("lock", "process"),
    ("fifo-recv", "thread"),
    ("group", "thread"),
]
# cancel() flags the task itself, which the waits in slices always saw: pt.sleep,
# woken by the cancel, is the case there. terminate() and the timeout flag the chunk.
POOL_CASES = [(e, "sleep", "thread") for e in ("pool-cancel", "executor-cancel")] + [
    (e, k, b) for e in ("pool-terminate", "pool-timeout") for k, b in POOL_KINDS
]


@pytest.mark.parametrize(
    ("entry", "kind", "backend"), POOL_CASES, ids=[f"{e}-{k}-{b}" for e, k, b in POOL_CASES]
)
def test_a_thread_pool_task_stops_at_its_cancellation_point(
    entry: str, kind: str, backend: str, tmp_path: Any, watchdog: Any, capfd: Any
) -> None:
    case = Case(kind, backend, tmp_path)
    watchdog(case.unblock)
    ready, ended = threading.Event(), threading.Event()

    def run() -> None:
        try:
            blocked(ready, case.block)
        finally:
            ended.set()

    runner: pt.Pool | pt.Executor = (
        pt.Executor(max_workers=1, backend="thread")
        if entry == "executor-cancel"
        else pt.Pool(1, backend="thread")
    )
    expected: type[Exception] = pt.TaskTimeout if entry == "pool-timeout" else pt.Cancelled
    try:
        with runner:
            if isinstance(runner, pt.Pool) and entry == "pool-timeout":
                task = runner.submit(run, timeout=0.2)
            else:
                task = runner.submit(run)
            assert ready.wait(HANG), "the task never ran"
            time.sleep(0.1)  # into the call (a cancel before it is seen at its start)
            if entry == "pool-terminate":
                assert isinstance(runner, pt.Pool)
                runner.terminate()
                # It waited for the thread, which left its call; not 5 s and abandoned.
                assert ended.is_set(), f"terminate() left the task in its {kind} call"
            elif entry != "pool-timeout":
                assert task.cancel() is False  # a running thread cannot be stopped from outside
            assert ended.wait(BOUND), f"the task stayed in its {kind} call after {entry}"
            with pytest.raises(expected):
                task.result(HANG)
            if expected is pt.Cancelled:
                assert task.cancelled()
    finally:
        for cleanup in case.cleanups:
            cleanup()
    assert "abandoned" not in capfd.readouterr().err
    case.after()


@pytest.mark.parametrize("stop", ["cancel", "terminate"])
def test_cancelling_a_thread_pool_task_spares_its_chunk_mates(stop: str) -> None:
    gate = threading.Event()
    threads: list[int] = []

    def step(i: int) -> int:
        if i == 1:
            threads.append(threading.get_ident())
            pt.sleep(WATCHDOG)
        return i

    pool = pt.Pool(1, backend="thread")
    try:
        # As if tiny tasks were measured: tasks queued behind a busy worker go in one
        # chunk. The worker is kept busy by a map, which the submit sizer does not measure.
        pool._submit_sink.sizer.observe(1_000, 1e-4, 1e-3)
        blocker = pool.map_async(gate.wait, [HANG])
        tasks = [pool.submit(step, i) for i in range(4)]
        gate.set()
        wait_until(lambda: threads and thread_is_in(threads[0], "_sleep"), HANG, "pt.sleep")
        # Task 0 ran in task 1's chunk, tasks 2 and 3 wait there (nothing settled yet).
        chunk = tasks[1]._slot.chunk
        assert chunk is not None
        assert all(t._slot is not None and t._slot.chunk is chunk for t in tasks)
        if stop == "cancel":
            assert tasks[1].cancel() is False
            with pytest.raises(pt.Cancelled, match="step"):
                tasks[1].result(BOUND)
            assert [tasks[i].result(HANG) for i in (0, 2, 3)] == [0, 2, 3]
        else:
            pool.terminate()
            assert tasks[0].result(BOUND) == 0  # done before the terminate: it stands
            for task in tasks[1:]:
                # Task 1 was stopped in its pt.sleep; 2 and 3 never start (they hung).
                with pytest.raises(pt.Cancelled):
                    task.result(BOUND)
        assert blocker.get(HANG) == [True]
    finally:
        pool.terminate()


# --------------------------------------------------------------- pt.sleep and pt.checkpoint


def test_sleep_and_checkpoint_outside_tasks() -> None:
    started = time.monotonic()
    assert pt.sleep(0.05) is None
    assert time.monotonic() - started >= 0.05  # it slept (a lower bound, not a speed claim)
    pt.sleep(0)
    assert pt.checkpoint() is None


@pytest.mark.parametrize(
    ("seconds", "error"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (None, TypeError)],
)
def test_sleep_checks_its_argument(seconds: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="seconds"):
        pt.sleep(seconds)


def test_cancel_wakes_pt_sleep_at_once() -> None:
    ended = threading.Event()
    threads: list[int] = []

    def nap() -> None:
        threads.append(threading.get_ident())
        try:
            pt.sleep(math.inf)  # until cancelled
        finally:
            ended.set()

    task = pt.spawn(nap)
    wait_until(lambda: threads and thread_is_in(threads[0], "_sleep"), HANG, "pt.sleep")
    started = time.monotonic()
    assert task.cancel() is False  # a running thread cannot be stopped from outside
    with pytest.raises(pt.Cancelled):
        task.result(HANG)
    assert time.monotonic() - started < BOUND
    assert ended.is_set() and task.cancelled()


def test_checkpoint_raises_in_a_cancelled_task() -> None:
    running = threading.Event()

    def crunch() -> None:
        while True:
            running.set()
            pt.checkpoint()
            time.sleep(0.001)

    task = pt.spawn(crunch)
    assert running.wait(HANG), "the task never ran"
    task.cancel()
    with pytest.raises(pt.Cancelled, match="crunch"):
        task.result(HANG)
    assert task.cancelled()


def test_a_timed_out_thread_task_stops_at_its_sleep() -> None:
    ended = threading.Event()

    def nap() -> None:
        try:
            pt.sleep(30)
        finally:
            ended.set()

    task = pt.spawn(nap, timeout=0.2)
    with pytest.raises(pt.TaskTimeout):
        task.result(HANG)
    assert ended.wait(BOUND), "the thread slept on after its timeout"


def test_a_cancelled_task_still_takes_what_is_free() -> None:
    # Cancellation points raise only where the call would block, so clean-up
    # code in a cancelled task can still take a free lock.
    lock = pt.Lock()
    done = pt.Event()
    done.set()
    seen: list[str] = []

    threads: list[int] = []

    def body() -> None:
        threads.append(threading.get_ident())
        try:
            pt.sleep(30)
        finally:
            with lock:
                seen.append("cleaned up")
            assert done.wait()

    task = pt.spawn(body)
    wait_until(lambda: threads and thread_is_in(threads[0], "_sleep"), HANG, "pt.sleep")
    task.cancel()
    with pytest.raises(pt.Cancelled):
        task.result(HANG)
    assert seen == ["cleaned up"]
    assert not lock.locked()


def test_a_group_inside_a_cancelled_task_raises_cancelled_after_its_tasks_end() -> None:
    gate = pt.Event()
    inner_tasks: list[pt.Task[Any]] = []

    threads: list[int] = []

    def outer() -> None:
        threads.append(threading.get_ident())
        with pt.TaskGroup(name="inner") as inner:
            inner_tasks.append(inner.spawn(gate.wait))

    task = pt.spawn(outer)
    # The inner task runs and the outer one waits for it at the end of its group.
    wait_until(
        lambda: inner_tasks and inner_tasks[0].running() and thread_is_in(threads[0], "__exit__"),
        HANG,
        "the outer task to wait for its group",
    )
    task.cancel()
    with pytest.raises(pt.Cancelled, match="inner"):
        task.result(HANG)
    assert inner_tasks[0].done() and inner_tasks[0].cancelled()
