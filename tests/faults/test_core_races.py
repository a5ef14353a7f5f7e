"""Races and edge cases a review of the core found; each test fails without its fix."""

from __future__ import annotations

import gc
import os
import signal
import time
import weakref

import pytest
from tests.helpers import Harness, wait_until

import polytask as pt
from polytask.backends.process.backend import ProcessBackend

HANG = 60


def pid() -> int:
    return os.getpid()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def big(n: int) -> bytes:
    return b"x" * n


class Box:
    pass


def boxed() -> Box:
    return Box()


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def boom() -> None:
    raise ValueError("outer failure")


def test_idle_worker_killed_from_outside_is_replaced():
    be = ProcessBackend(1)
    try:
        for _ in range(3):
            victim = be.spawn(pid, (), {}).result(HANG)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda v=victim: not _alive(v), HANG, "the killed worker to die")
            # The next task must run (on a fresh worker), never hang or crash.
            assert be.spawn(pid, (), {}).result(HANG) != victim
        be.shutdown()
    finally:
        be.shutdown(cancel=True)


def test_cancel_racing_completion_never_hits_the_next_task():
    be = ProcessBackend(1)
    try:
        for i in range(40):
            first = be.spawn(nap, (0.002 * (i % 5),), {}, name=f"first-{i}")
            second = be.spawn(pid, (), {}, name=f"second-{i}")
            time.sleep(0.002 * (i % 7))  # deliberate: cancel at varying points of its run
            first.cancel()
            # Whatever happened to `first`, `second` runs normally.
            assert second.result(HANG) > 0
    finally:
        be.shutdown(cancel=True)


def test_a_finished_but_unread_result_is_not_a_timeout():
    be = ProcessBackend(1)
    try:
        t = be.spawn(big, (4 << 20,), {}, timeout=1.0)  # larger than a pipe buffer
        time.sleep(2.5)  # nobody reads meanwhile
        assert len(t.result(HANG)) == 4 << 20
    finally:
        be.shutdown()


def test_infinite_timeout_means_no_limit_and_timers_keep_working():
    t = pt.spawn(nap, 0.05, backend="process", timeout=float("inf"))
    assert t.result(timeout=float("inf")) > 0
    with pytest.raises(pt.TaskTimeout):
        pt.spawn(nap, 30, backend="process", timeout=0.2).result(HANG)


def test_results_of_finished_tasks_with_timeouts_are_freed():
    be = ProcessBackend(1)
    try:
        t = be.spawn(boxed, (), {}, timeout=3600)
        ref = weakref.ref(t.result(HANG))
        del t
        gc.collect()
        assert ref() is None, "a cancelled timer kept the task and its result alive"
    finally:
        be.shutdown()


def test_stateful_callables_are_not_cached_in_the_worker():
    be = ProcessBackend(1)
    try:
        counter = Counter()
        got = [be.spawn(counter.add, (1,), {}).result(HANG) for _ in range(3)]
        assert got == [1, 1, 1]  # each call gets the caller's object as it was sent
    finally:
        be.shutdown()


def test_shutdown_without_wait_finishes_pending_work():
    be = ProcessBackend(1)
    tasks = [be.spawn(nap, (0.1,), {}) for _ in range(3)]
    be.shutdown(wait=False)
    assert all(t.result(HANG) > 0 for t in tasks)
    with pytest.raises(RuntimeError, match="shut down"):
        be.spawn(pid, (), {})
    # The per-test check then proves every worker was reaped.
    deadline = time.monotonic() + HANG
    while be.statistics()["workers"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert be.statistics()["workers"] == 0


def test_shutdown_while_a_worker_is_still_starting():
    be = ProcessBackend(2)
    t = be.spawn(pid, (), {})
    be.shutdown(wait=True, cancel=True)  # right away: the worker is mid-start
    assert t.done()
    stats = be.statistics()
    assert stats.pop("started") <= 1  # 0 if the start was dropped: its task was gone
    assert stats == {"workers": 0, "idle": 0, "starting": 0, "pending": 0}


def test_fork_workers_do_not_hold_each_others_pipes():
    be = ProcessBackend(2, start_method="fork", max_tasks_per_worker=1)
    try:
        tasks = [be.spawn(nap, (0.2,), {}) for _ in range(2)]
        pids = [t.result(HANG) for t in tasks]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [p for p in pids if _alive(p)]
            if not alive:
                break
            time.sleep(0.05)
        assert alive == [], "a retired fork worker never saw EOF"
    finally:
        be.shutdown()


def _alive(p: int) -> bool:
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone between open and read: ESRCH
        return False


def test_outer_failure_cancels_a_nested_group():
    started = time.monotonic()
    with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
        with pt.TaskGroup(backend="process") as outer:
            outer.spawn(boom)
            with pt.TaskGroup(backend="process") as inner:
                slow = inner.spawn(nap, 30)
    assert time.monotonic() - started < 20
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert slow.cancelled()


def test_spawn_after_the_group_failed_never_starts(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ExceptionGroup):  # noqa: PT012
        with pt.TaskGroup(backend="process") as g:
            g.spawn(boom).join(HANG)
            late = g.spawn(marker.write_text, "x")
    assert late.cancelled()
    assert not marker.exists()


THREADS_CTRL_C = """
import sys, time
import polytask as pt

def stubborn(s):
    time.sleep(s)  # never checks current_task().cancelled

ready, out = sys.argv[1], sys.argv[2]
try:
    with pt.TaskGroup() as g:
        for _ in range(12):
            g.spawn(stubborn, 30)
        open(ready, "w").write("ready")
        time.sleep(60)
except KeyboardInterrupt:
    open(out, "w").write(f"KeyboardInterrupt {time.monotonic()}")
    import os
    os._exit(0)  # the stubborn threads cannot be killed; do not wait for them
"""


def test_ctrl_c_with_stubborn_thread_tasks_arrives_within_a_second(tmp_path):
    ready, out = tmp_path / "ready", tmp_path / "out"
    with Harness(THREADS_CTRL_C, tmp_path, str(ready), str(out)) as h:
        h.wait_for_line(ready, "ready")
        sent = time.monotonic()
        h.signal(signal.SIGINT)
        h.wait_for_line(out, "KeyboardInterrupt")
        # A second on a quiet machine (README); 3 s leave a loaded one room and
        # still catch a wait per thread task (12 x 0.5 s) instead of one for all.
        assert float(out.read_text().split()[1]) - sent < 3.0
        assert h.wait() == 0
        assert h.leftovers(within=10) == []
