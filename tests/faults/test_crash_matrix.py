"""Crash matrix for the process backend: every way a worker can die or misbehave.

Each row kills (or breaks) a worker in one way, and checks three promises: only
the task it held fails, with an error that says what happened; the worker is
replaced, so the next task runs on a fresh process; nothing is left running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from tests.helpers import wait_for_file

import polytask as pt
from polytask.backends.process.backend import ProcessBackend

HANG = 60


def segfault() -> None:
    ctypes.string_at(0)


def exit_3() -> None:
    os._exit(3)


def sigkill_self() -> None:  # what the OOM killer does
    os.kill(os.getpid(), signal.SIGKILL)


def sys_exit() -> None:
    raise SystemExit(7)


def sleep_ignoring_sigterm(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def pid() -> int:
    return os.getpid()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def touch_then_nap(path: str, seconds: float) -> int:
    Path(path).touch()  # the test waits for it: the task runs in its worker
    return nap(seconds)


def returns_lock() -> object:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("has a lock")
        self.lock = threading.Lock()


def raises_unpicklable() -> None:
    raise Unpicklable()


CRASHES = [
    pytest.param(segfault, -signal.SIGSEGV, "segmentation fault", id="segfault"),
    pytest.param(exit_3, 3, "exit", id="os._exit(3)"),
    pytest.param(sigkill_self, -signal.SIGKILL, "SIGKILL", id="SIGKILL"),
    pytest.param(sys_exit, 7, "exit", id="SystemExit(7)"),
]


@pytest.fixture
def backend():
    be = ProcessBackend(1)
    yield be
    be.shutdown(wait=True, cancel=True)


@pytest.mark.parametrize(("fn", "code", "words"), CRASHES)
def test_crash_fails_only_its_task_and_the_worker_is_replaced(backend, fn, code, words):
    before = backend.spawn(pid, (), {}).result(HANG)
    t = backend.spawn(fn, (), {}, name="victim")
    with pytest.raises(pt.WorkerCrashed) as info:
        t.result(HANG)
    err = info.value
    assert err.exitcode == code and t.exitcode == code
    assert err.name == "victim" and "'victim'" in str(err)
    assert words.lower() in str(err).lower()
    if code < 0:
        assert err.signal == -code
    after = backend.spawn(pid, (), {}).result(HANG)
    assert after != before  # a fresh worker


@pytest.mark.parametrize(("fn", "code", "words"), CRASHES)
def test_crash_in_a_group_fails_the_group_with_worker_crashed(fn, code, words):
    with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
        with pt.TaskGroup(backend="process") as g:
            sibling = g.spawn(nap, 30)
            g.spawn(fn)
    assert [type(e) for e in info.value.exceptions] == [pt.WorkerCrashed]
    assert info.value.exceptions[0].exitcode == code
    assert sibling.cancelled()


def test_worker_killed_from_outside(backend, tmp_path):
    started = tmp_path / "started"
    t = backend.spawn(touch_then_nap, (str(started), 30), {})
    wait_for_file(started, HANG)
    os.kill(t._slot.pid, signal.SIGKILL)
    with pytest.raises(pt.WorkerCrashed, match="SIGKILL"):
        t.result(HANG)
    assert backend.spawn(pid, (), {}).result(HANG) > 0


def test_worker_killed_while_it_polls_for_the_next_task(backend):
    # Right after a tiny task the worker polls its request pipe before it sleeps.
    victim = backend.spawn(pid, (), {}).result(HANG)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + HANG
    while backend.statistics()["workers"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the death of an idle worker fails no task
    assert backend.spawn(pid, (), {}).result(HANG) not in (victim, os.getpid())


def test_crash_while_the_caller_polls_for_the_result(backend):
    # Many short tasks in a row, each crash landing while the caller still polls.
    for _ in range(5):
        assert backend.spawn(pid, (), {}).result(HANG) > 0
        with pytest.raises(pt.WorkerCrashed, match="SIGKILL"):
            backend.spawn(sigkill_self, (), {}, name="victim").result(HANG)


def test_timeout_kills_a_task_that_ignores_sigterm(backend):
    victim = backend.spawn(pid, (), {}).result(HANG)  # the warm worker it will run on
    t = backend.spawn(sleep_ignoring_sigterm, (60,), {}, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(pt.TaskTimeout) as info:
        t.result(HANG)
    assert time.monotonic() - started < 30
    assert "0.3" in str(info.value)
    assert not os.path.exists(f"/proc/{victim}"), "the SIGTERM-proof worker was not killed"
    assert backend.spawn(pid, (), {}).result(HANG) != victim


def test_unpicklable_result_is_a_serialization_error_and_the_worker_lives(backend):
    before = backend.spawn(pid, (), {}).result(HANG)
    with pytest.raises(pt.SerializationError, match="cannot be pickled"):
        backend.spawn(returns_lock, (), {}).result(HANG)
    assert backend.spawn(pid, (), {}).result(HANG) == before


def test_unpicklable_exception_arrives_as_remote_error_with_traceback(backend):
    with pytest.raises(pt.RemoteError) as info:
        backend.spawn(raises_unpicklable, (), {}).result(HANG)
    assert "Unpicklable" in str(info.value)
    assert "raises_unpicklable" in str(info.value.__cause__)


def test_unpicklable_argument_fails_at_the_call_naming_it():
    lock = threading.Lock()
    with pytest.raises(pt.SerializationError, match="argument 2") as info:
        pt.spawn(nap, 1, lock, backend="process")
    assert "lock" in str(info.value).lower()


def test_lambdas_closures_and_main_functions_travel_by_value(backend):
    k = 10
    assert backend.spawn(lambda x: x + k, (1,), {}).result(HANG) == 11

    def inner(x: int) -> int:
        return x * k

    assert backend.spawn(inner, (4,), {}).result(HANG) == 40


def test_many_crashes_in_a_row_do_not_poison_the_backend(backend):
    for fn in (exit_3, segfault, sigkill_self, exit_3):
        with pytest.raises(pt.WorkerCrashed):
            backend.spawn(fn, (), {}).result(HANG)
    assert backend.spawn(nap, (0,), {}).result(HANG) > 0
