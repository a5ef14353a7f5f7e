"""One rule for ``timeout=`` across every public blocking call (see ``_core/timeouts``).

For each call: ``inf`` is no limit (never an OverflowError), ``0`` does not wait
(the call times out or returns False at once instead of blocking), a negative
number or NaN is a ValueError, a string or a bool is a TypeError, and the bad
values fail at the call, before anything blocks.
"""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import polytask as pt
from polytask._core.timeouts import acquire_timeout, check_timeout


@dataclass
class Case:
    """``blocked(timeout)`` would wait; ``ready(timeout)`` has what it needs at once."""

    blocked: Callable[[Any], Any]
    ready: Callable[[Any], Any]


def _finished_task() -> pt.Task[int]:
    t = pt.spawn(abs, -1)
    t.result(timeout=60)
    return t


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


def _cases(backend: str, gate: threading.Event, tmp: Path) -> dict[str, Case]:
    pending = pt.spawn(gate.wait, 60)
    held = pt.Lock(backend=backend)
    held.acquire()
    full = pt.Channel(1, backend=backend)
    full.put(1)
    with_item = pt.Channel(backend=backend)
    with_item.put(1)
    set_event = pt.Event(backend=backend)
    set_event.set()
    cond = pt.Condition(backend=backend)

    def cond_wait(timeout: Any) -> Any:
        with cond:
            return cond.wait(timeout)

    def cond_ready(timeout: Any) -> Any:
        with cond:
            return cond.wait_for(lambda: True, timeout)

    def rlock_held_elsewhere() -> pt.RLock:
        r = pt.RLock(backend=backend)
        t = threading.Thread(target=r.acquire)
        t.start()
        t.join()
        return r

    rlock = rlock_held_elsewhere()
    return {
        "Task.result": Case(pending.result, _finished_task().result),
        "Task.exception": Case(pending.exception, _finished_task().exception),
        "Lock.acquire": Case(
            lambda t: held.acquire(timeout=t), lambda t: pt.Lock(backend=backend).acquire(timeout=t)
        ),
        "RLock.acquire": Case(
            lambda t: rlock.acquire(timeout=t),
            lambda t: pt.RLock(backend=backend).acquire(timeout=t),
        ),
        "Semaphore.acquire": Case(
            lambda t: pt.Semaphore(0, backend=backend).acquire(timeout=t),
            lambda t: pt.Semaphore(1, backend=backend).acquire(timeout=t),
        ),
        "Event.wait": Case(pt.Event(backend=backend).wait, set_event.wait),
        "Condition.wait": Case(cond_wait, cond_ready),
        "Channel.get": Case(pt.Channel(backend=backend).get, with_item.get),
        "Channel.put": Case(
            lambda t: full.put(2, timeout=t),
            lambda t: pt.Channel(backend=backend).put(2, timeout=t),
        ),
    }


BAD: list[tuple[Any, type[Exception]]] = [
    (-1.5, ValueError),
    (math.nan, ValueError),
    ("1", TypeError),
    (True, TypeError),
]


def _names() -> list[str]:
    return [
        "Task.result",
        "Task.exception",
        "Lock.acquire",
        "RLock.acquire",
        "Semaphore.acquire",
        "Event.wait",
        "Condition.wait",
        "Channel.get",
        "Channel.put",
    ]


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("name", _names())
def test_each_blocking_call_keeps_the_one_rule(
    backend: str, name: str, gate: threading.Event, tmp_path: Path
) -> None:
    case = _cases(backend, gate, tmp_path)[name]
    case.ready(math.inf)  # no OverflowError, no wait: it has what it needs
    try:
        outcome = case.blocked(0)
    except (TimeoutError, queue.Empty, queue.Full):  # a Channel times out as queue.Queue does
        outcome = False
    assert outcome is False, f"{name}(timeout=0) gave {outcome!r}: it must time out at once"
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            case.blocked(value)


def test_barrier_wait_times_out_or_refuses_bad_values() -> None:
    with pytest.raises(threading.BrokenBarrierError):
        pt.Barrier(2).wait(0)
    assert pt.Barrier(1).wait(math.inf) == 0
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            pt.Barrier(2).wait(value)


def test_run_and_sleep_keep_the_rule() -> None:
    assert pt.run([sys.executable, "-c", "pass"], timeout=math.inf).returncode == 0
    with pytest.raises(pt.CommandTimeout):
        pt.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0)
    pt.sleep(0)
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            pt.run(["true"], timeout=value)
        with pytest.raises(error, match="seconds"):
            pt.sleep(value)


def test_pool_waits_keep_the_rule() -> None:
    # Two workers: the imap below runs beside the slow task, not behind it.
    with pt.Pool(2, backend="thread") as pool:
        done = pool.apply_async(abs, (-1,))
        assert done.get(timeout=math.inf) == 1
        slow = pool.apply_async(pt.sleep, (30,))
        with pytest.raises(TimeoutError):
            slow.get(timeout=0)
        it = pool.imap(abs, [-1])
        assert it.next(timeout=math.inf) == 1
        for value, error in BAD:
            with pytest.raises(error, match="timeout"):
                slow.get(timeout=value)
            with pytest.raises(error, match="timeout"):
                slow.wait(timeout=value)
        pool.terminate()


def test_spawn_timeout_is_the_run_time_limit_with_the_same_rule() -> None:
    assert pt.spawn(abs, -2, timeout=math.inf).result(timeout=60) == 2
    with pytest.raises(pt.TaskTimeout):
        pt.spawn(pt.sleep, 30, backend="process", timeout=0).result(timeout=60)
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            pt.spawn(abs, -1, timeout=value)


def test_fifo_recv_keeps_the_rule(tmp_path: Path) -> None:
    with pt.Fifo(tmp_path / "f") as fifo, fifo.open("r") as reader:
        with pytest.raises(TimeoutError):
            reader.recv(timeout=0)
        for value, error in BAD:
            with pytest.raises(error, match="timeout"):
                reader.recv(timeout=value)


def test_the_validator_itself() -> None:
    assert check_timeout(None) is None
    assert check_timeout(math.inf) is None
    assert check_timeout(10**30) is None
    assert check_timeout(0) == 0.0
    assert check_timeout(2) == 2.0
    # threading's -1 ("forever") is a negative timeout like any other here.
    with pytest.raises(ValueError, match="timeout"):
        acquire_timeout(True, -1)
    assert acquire_timeout(False, None) == 0.0
    with pytest.raises(ValueError, match="non-blocking"):
        acquire_timeout(False, 1)
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            check_timeout(value)


def test_acquire_forever_is_none_or_inf_on_each_backend() -> None:
    for backend in ("thread", "process"):
        lock = pt.Lock(backend=backend)
        assert lock.acquire(True, None) is True
        lock.release()
        assert lock.acquire(timeout=math.inf) is True
        lock.release()
    code = "import polytask as pt; l = pt.Lock(backend='process'); print(l.acquire(timeout=float('inf')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
