"""Every public blocking call against every kind of ``timeout=`` value, ready or not.

Each call, ready or not, runs in a child process (the watchdog: a hang is a
failure, not a stuck run), each value in a thread of it: the call is watched
for a moment; if it still waits, what it waits for is released and it must then
finish (within 20 s, or it hangs). The rules
(``_core/timeouts``): ``None``, ``inf``, ``1e300`` and a finite timeout too
long for ``poll()`` (``1e7`` s, past its 24.8 days of milliseconds) wait until
released, never an OverflowError; ``0`` and ``1e-9`` time out at once when the
call must wait and succeed when it need not; any real number (a ``Fraction``,
a numpy scalar) is seconds; a negative number or NaN is a ValueError and a
bool, a string or a ``Decimal`` (not a real number in Python's numeric tower) a
TypeError, both naming the parameter, whether or not the call would wait. A
run-time limit (``spawn(timeout=)``, a map's, a group's, a program's) of 0
has expired before the work starts: it times out even when the work is ready.
"""

from __future__ import annotations

import io
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import polytask as pt

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is a test dependency here
    np = None

# name -> (value, what it must be treated as)
#   "forever": waits until released; "now": times out at once when it must wait;
#   "short": a real number of seconds small enough to time out within the watch;
#   ValueError / TypeError: refused at the call, ready or not.
VALUES: dict[str, tuple[Callable[[], Any], Any]] = {
    "zero": (lambda: 0, "now"),
    "zero_float": (lambda: 0.0, "now"),
    "tiny": (lambda: 1e-9, "now"),
    "none": (lambda: None, "forever"),
    "inf": (lambda: math.inf, "forever"),
    "huge": (lambda: 1e300, "forever"),
    "huge_int": (lambda: 10**400, "forever"),  # float() of it overflows
    "past_poll_limit": (lambda: 1e7, "forever"),  # 115 days: > poll()'s INT_MAX ms
    "fraction": (lambda: Fraction(1, 20), "short"),
    "minus_one": (lambda: -1, ValueError),
    "minus_inf": (lambda: -math.inf, ValueError),
    "nan": (lambda: math.nan, ValueError),
    "true": (lambda: True, TypeError),
    "string": (lambda: "1", TypeError),
    "decimal": (lambda: Decimal("0.05"), TypeError),
}
if np is not None:
    VALUES |= {
        "np_float64": (lambda: np.float64(0.05), "short"),
        "np_float32": (lambda: np.float32(0.05), "short"),
        "np_int64": (lambda: np.int64(0), "now"),
        "np_nan": (lambda: np.float64("nan"), ValueError),
    }


@dataclass
class Setup:
    """``call(timeout)`` runs the blocking call; ``release()`` gives it what it waits for."""

    call: Callable[[Any], Any]
    release: Callable[[], None] = lambda: None


# ----------------------------------------------------------------- the cases
# Each builder takes ``ready`` (the call has what it needs at once) and returns a Setup.

_TMP = ""


def _path(name: str) -> str:
    return os.path.join(_TMP, f"{name}-{time.monotonic_ns()}")


def _gate(backend: str) -> Any:
    return pt.Event(backend=backend)


def _task(backend: str, ready: bool) -> tuple[pt.Task[Any], Callable[[], None]]:
    ev = _gate(backend)
    if ready:
        ev.set()
    t = pt.spawn(ev.wait, 60, backend=backend)
    if ready:
        t.join(timeout=60)
    return t, ev.set


def _task_result(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        t, release = _task(backend, ready)
        return Setup(lambda v: t.result(timeout=v), release)

    return build


def _task_exception(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        t, release = _task(backend, ready)
        return Setup(lambda v: t.exception(timeout=v) or "no exception", release)

    return build


def _task_join(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        t, release = _task(backend, ready)
        return Setup(lambda v: t.join(timeout=v), release)

    return build


def _lock(kind: str, backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        lock = getattr(pt, kind)(backend=backend)
        if not ready:
            held = threading.Event()
            free = threading.Event()

            def hold() -> None:
                lock.acquire()
                held.set()
                free.wait(60)
                lock.release()

            threading.Thread(target=hold, daemon=True).start()
            held.wait(60)
            return Setup(lambda v: lock.acquire(timeout=v), free.set)
        return Setup(lambda v: lock.acquire(timeout=v))

    return build


def _semaphore(kind: str, backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        sem = getattr(pt, kind)(1, backend=backend)
        if not ready:
            sem.acquire()
        return Setup(lambda v: sem.acquire(timeout=v), sem.release)

    return build


def _event(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        ev = pt.Event(backend=backend)
        if ready:
            ev.set()
        return Setup(lambda v: ev.wait(v), ev.set)

    return build


def _condition(backend: str, *, predicate: bool) -> Callable[[bool], Setup]:
    """Condition.wait (``predicate=False``; when ready, a wait_for already true) or
    Condition.wait_for."""

    def build(ready: bool) -> Setup:
        cond = pt.Condition(backend=backend)
        flag = [ready]

        def call(v: Any) -> Any:
            with cond:
                if predicate:
                    return cond.wait_for(lambda: flag[0], v)
                return cond.wait(v) if not flag[0] else cond.wait_for(lambda: True, v)

        def release() -> None:
            with cond:
                flag[0] = True
                cond.notify_all()

        return Setup(call, release)

    return build


def _barrier(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        b = pt.Barrier(1 if ready else 2, backend=backend)

        def release() -> None:
            threading.Thread(target=b.wait, args=(60,), daemon=True).start()

        return Setup(lambda v: b.wait(v), release)

    return build


def _barrier_default(backend: str) -> Callable[[bool], Setup]:
    # Barrier(timeout=) is the default of every wait(): the same rule, at the constructor.
    def build(ready: bool) -> Setup:
        box: list[Any] = []

        def call(v: Any) -> Any:
            box.append(pt.Barrier(1 if ready else 2, timeout=v, backend=backend))
            return box[0].wait()

        def release() -> None:
            threading.Thread(target=box[0].wait, args=(60,), daemon=True).start()

        return Setup(call, release)

    return build


def _channel_get(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        ch: pt.Channel[int] = pt.Channel(backend=backend)
        if ready:
            ch.put(1)
        return Setup(lambda v: ch.get(timeout=v), lambda: ch.put(1))

    return build


def _channel_get_many(backend: str) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        ch: pt.Channel[int] = pt.Channel(backend=backend)
        if ready:
            ch.put_many([1, 2])
        return Setup(lambda v: ch.get_many(10, timeout=v), lambda: ch.put(1))

    return build


def _channel_put(backend: str, *, many: bool = False) -> Callable[[bool], Setup]:
    def build(ready: bool) -> Setup:
        ch: pt.Channel[int] = pt.Channel(1, backend=backend)
        if not ready:
            ch.put(0)

        def call(v: Any) -> Any:
            return ch.put_many([1], timeout=v) if many else ch.put(1, timeout=v)

        return Setup(call, lambda: ch.get(timeout=60))

    return build


def _filelock(ready: bool) -> Setup:
    path = _path("lock")
    holder = pt.FileLock(path)
    if not ready:
        holder.acquire()
    return Setup(lambda v: pt.FileLock(path).acquire(timeout=v), holder.release)


def _filelock_default(ready: bool) -> Setup:
    # FileLock(timeout=) is the limit of ``with lock:`` (acquire() takes its own).
    path = _path("lock")
    holder = pt.FileLock(path)
    if not ready:
        holder.acquire()

    def call(v: Any) -> Any:
        with pt.FileLock(path, timeout=v):
            return "locked"

    return Setup(call, holder.release)


def _fifo_recv(ready: bool) -> Setup:
    fifo = pt.Fifo(_path("fifo"), format="pickle")
    reader = fifo.open("r", keep_open=True)
    writer = fifo.open("w", timeout=60)
    if ready:
        writer.send("hi")
    return Setup(lambda v: reader.recv(timeout=v), lambda: writer.send("hi"))


def _fifo_open_w(ready: bool) -> Setup:
    fifo = pt.Fifo(_path("fifo"))
    readers: list[Any] = []
    if ready:
        readers.append(fifo.open("r"))
    return Setup(lambda v: fifo.open("w", timeout=v), lambda: readers.append(fifo.open("r")))


def _fifo_send(ready: bool) -> Setup:
    # A writer whose pipe is full (nobody reads) waits for room; a reader draining it releases.
    fifo = pt.Fifo(_path("fifo"))
    reader = fifo.open("r")
    writer = fifo.open("w", timeout=60)
    while not ready:
        try:
            writer.send_bytes(b"x" * 4096, timeout=0)  # PIPE_BUF: all or nothing
        except TimeoutError:
            break

    def drain() -> None:
        while True:
            reader.recv()

    def release() -> None:
        threading.Thread(target=drain, daemon=True).start()

    return Setup(lambda v: writer.send_bytes(b"y", timeout=v), release)


def _pool(backend: str) -> pt.Pool:
    return pt.Pool(1, backend=backend)


def _async_result(ready: bool) -> tuple[Any, threading.Event]:
    """An AsyncResult of a task waiting for the event (set, and the result in, if ready)."""
    pool = _pool("thread")
    ev = threading.Event()
    if ready:
        ev.set()
    r = pool.apply_async(ev.wait, (60,))
    if ready:
        r.wait(60)
    return r, ev


def _async_get(ready: bool) -> Setup:
    r, ev = _async_result(ready)
    return Setup(lambda v: r.get(timeout=v), ev.set)


def _async_wait(ready: bool) -> Setup:
    r, ev = _async_result(ready)

    def call(v: Any) -> Any:
        r.wait(timeout=v)
        return r.ready()  # False: the wait timed out

    return Setup(call, ev.set)


def _imap_next(ready: bool) -> Setup:
    pool = _pool("thread")
    ev = threading.Event()
    if ready:
        ev.set()
    it = pool.imap(ev.wait, [60])
    if ready:
        time.sleep(0)  # next(timeout=...) is the only wait that matters
    return Setup(lambda v: it.next(timeout=v), ev.set)


def _pool_join(ready: bool) -> Setup:
    pool = _pool("thread")
    ev = threading.Event()
    if ready:
        ev.set()
    pool.apply_async(ev.wait, (60,))
    pool.close()

    def call(v: Any) -> Any:
        pool.join(timeout=v)
        return "joined"

    return Setup(call, ev.set)


def _pool_map(backend: str) -> Callable[[bool], Setup]:
    # timeout= of map is each item's run-time limit: 0 ends a blocked item at once.
    def build(ready: bool) -> Setup:
        flag = _path("flag")
        if ready:
            open(flag, "w").close()
        pool = _pool(backend)
        return Setup(
            lambda v: pool.map(_wait_for_file, [flag], timeout=v), lambda: open(flag, "w").close()
        )

    return build


def _executor_result(ready: bool) -> Setup:
    ex = pt.Executor(1, backend="thread")
    ev = threading.Event()
    if ready:
        ev.set()
    fut = ex.submit(ev.wait, 60)
    if ready:
        fut.result(60)
    return Setup(lambda v: fut.result(timeout=v), ev.set)


def _wait_for_file(path: str) -> bool:
    while not os.path.exists(path):
        pt.sleep(0.01)  # a cancellation point: a thread task's time limit ends it here
    return True


def _spawn_limit(backend: str) -> Callable[[bool], Setup]:
    # spawn(timeout=) is the run-time limit: 0 ends a task that must wait at once.
    def build(ready: bool) -> Setup:
        flag = _path("flag")
        if ready:
            open(flag, "w").close()

        def call(v: Any) -> Any:
            return pt.spawn(_wait_for_file, flag, backend=backend, timeout=v).result(timeout=60)

        return Setup(call, lambda: open(flag, "w").close())

    return build


def _group_limit(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()

    def call(v: Any) -> Any:
        with pt.TaskGroup(timeout=v) as g:
            t = g.spawn(_wait_for_file, flag)
        return t.result()

    return Setup(call, lambda: open(flag, "w").close())


def _command(flag: str) -> list[str]:
    return ["sh", "-c", f'while [ ! -e "{flag}" ]; do sleep 0.02; done; echo done']


def _run(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()
    return Setup(
        lambda v: pt.run(_command(flag), timeout=v).stdout, lambda: open(flag, "w").close()
    )


def _stream(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()

    def call(v: Any) -> Any:
        with pt.stream(_command(flag), timeout=v) as s:
            return list(s)

    return Setup(call, lambda: open(flag, "w").close())


def _run_many(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()

    def call(v: Any) -> Any:
        (r,) = pt.run_many([_command(flag)], timeout=v)
        if r.timed_out:
            raise TimeoutError("run_many: timed out")
        return r.stdout

    return Setup(call, lambda: open(flag, "w").close())


def _pipeline(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()
    return Setup(
        lambda v: list(pt.pipeline([flag], _wait_for_file, timeout=v)),
        lambda: open(flag, "w").close(),
    )


def _supervisor_wait(ready: bool) -> Setup:
    flag = _path("flag")
    if ready:
        open(flag, "w").close()
    sup = pt.Supervisor(
        {"w": " ".join(["sh", "-c", f"'while [ ! -e {flag} ]; do sleep 0.02; done'"])},
        restart="never",
        output=io.StringIO(),
    )
    sup.start()
    if ready:
        sup.wait(60)

    def call(v: Any) -> Any:
        return sup.wait(timeout=v)

    return Setup(call, lambda: open(flag, "w").close())


BUILDERS: dict[str, Callable[[bool], Setup]] = {}
for _b in ("thread", "process"):
    BUILDERS |= {
        f"Task.result[{_b}]": _task_result(_b),
        f"Task.exception[{_b}]": _task_exception(_b),
        f"Task.join[{_b}]": _task_join(_b),
        f"Lock.acquire[{_b}]": _lock("Lock", _b),
        f"RLock.acquire[{_b}]": _lock("RLock", _b),
        f"Semaphore.acquire[{_b}]": _semaphore("Semaphore", _b),
        f"BoundedSemaphore.acquire[{_b}]": _semaphore("BoundedSemaphore", _b),
        f"Event.wait[{_b}]": _event(_b),
        f"Condition.wait[{_b}]": _condition(_b, predicate=False),
        f"Condition.wait_for[{_b}]": _condition(_b, predicate=True),
        f"Barrier.wait[{_b}]": _barrier(_b),
        f"Barrier(timeout=)[{_b}]": _barrier_default(_b),
        f"Channel.get[{_b}]": _channel_get(_b),
        f"Channel.get_many[{_b}]": _channel_get_many(_b),
        f"Channel.put[{_b}]": _channel_put(_b),
        f"Channel.put_many[{_b}]": _channel_put(_b, many=True),
        f"spawn(timeout=)[{_b}]": _spawn_limit(_b),
        f"Pool.map(timeout=)[{_b}]": _pool_map(_b),
    }
BUILDERS |= {
    "FileLock.acquire": _filelock,
    "FileLock(timeout=)": _filelock_default,
    "FifoReader.recv": _fifo_recv,
    "Fifo.open(w)": _fifo_open_w,
    "FifoWriter.send_bytes": _fifo_send,
    "AsyncResult.get": _async_get,
    "AsyncResult.wait": _async_wait,
    "MapIterator.next": _imap_next,
    "Pool.join": _pool_join,
    "Executor future.result": _executor_result,
    "TaskGroup(timeout=)": _group_limit,
    "run": _run,
    "stream": _stream,
    "run_many": _run_many,
    "pipeline": _pipeline,
    "Supervisor.wait": _supervisor_wait,
}


# ----------------------------------------------------------------- the child side


def _outcome(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, str]]:
    box: dict[str, str] = {}

    def go() -> None:
        try:
            value = fn()
        except (TimeoutError, queue.Empty, queue.Full, threading.BrokenBarrierError) as e:
            box["kind"], box["detail"] = "timeout", f"{type(e).__name__}: {e}"
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            box["kind"], box["detail"] = type(e).__name__, str(e)
        else:
            box["kind"] = "timeout" if value is False else "ok"
            box["detail"] = repr(value)[:200]

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, box


def _probe(name: str, ready: bool, value_name: str) -> dict[str, Any]:
    setup = BUILDERS[name](ready)
    value = VALUES[value_name][0]()
    th, box = _outcome(lambda: setup.call(value))
    # How long it is watched before being released: a value that must wait is seen
    # waiting; one that must not gets a generous 5 s to return (a loaded machine).
    # (0.2 s is enough either way: a call that returned at once but slowly is seen
    # as waiting, released, and then reports "timeout", not "ok".)
    th.join(0.2 if VALUES[value_name][1] == "forever" else 5.0)
    waited = th.is_alive()
    if waited:
        setup.release()
        th.join(20)
        if th.is_alive():
            return {"waited": True, "kind": "hang", "detail": "still waiting after release"}
    return {"waited": waited, **box}


def _child_main(name: str, ready: bool) -> None:
    global _TMP
    _TMP = tempfile.mkdtemp(prefix="pt-timeout-values-")
    results = {}
    for value_name in VALUES:
        try:
            results[value_name] = _probe(name, ready, value_name)
        except BaseException as e:  # noqa: BLE001 - a failing setup is reported too
            results[value_name] = {"waited": False, "kind": "setup", "detail": repr(e)}
    print(json.dumps(results), flush=True)
    os._exit(0)  # leftover waiters (the hang cases) must not hold the exit


# ----------------------------------------------------------------- the parent side


def _expected(name: str, ready: bool, value_name: str, got: dict[str, Any]) -> str | None:
    """What is wrong with ``got`` (None: nothing)."""
    rule = VALUES[value_name][1]
    kind, detail, waited = got["kind"], got.get("detail", ""), got["waited"]
    param = "timeout"
    if rule in (ValueError, TypeError):
        if kind != rule.__name__ or param not in detail:
            return f"want {rule.__name__} naming {param!r} at the call, got {kind}: {detail}"
        if waited:
            return "the bad value was refused only after a wait"
        return None
    if kind in ("hang", "setup") or kind not in ("ok", "timeout"):
        return f"got {kind}: {detail}"
    if name in _RUN_LIMITS and value_name in _ZEROS:
        # A run-time limit of 0 has expired before the work starts: a timeout at
        # once, even for work that would finish at once (never a race with it).
        if waited or kind != "timeout":
            return f"0 has expired: must time out at once; got waited={waited} {kind}: {detail}"
        return None
    if ready:
        if kind != "ok" and not (name in _RUN_LIMITS and rule == "now"):
            return f"ready, yet: {kind}: {detail}"
        return None
    if rule == "forever":
        if not waited or kind != "ok":
            return f"must wait until released, then succeed; got waited={waited} {kind}: {detail}"
    elif rule == "now":
        if waited or kind != "timeout":
            return f"must time out at once; got waited={waited} {kind}: {detail}"
    elif rule == "short" and kind != "timeout":  # it may time out before or after the watch
        return f"must time out after its few ms; got {kind}: {detail}"
    return None


# The values that are exactly 0.
_ZEROS = {"zero", "zero_float", "np_int64"}
# Run-time limits: 0 ends even work that would finish at once (0 = already expired;
# tests/test_run_limits.py runs every path that takes one). 1e-9 may lose that race.
_RUN_LIMITS = {
    "run",
    "stream",
    "run_many",
    "pipeline",
    "TaskGroup(timeout=)",
    "spawn(timeout=)[thread]",
    "spawn(timeout=)[process]",
    "Pool.map(timeout=)[thread]",
    "Pool.map(timeout=)[process]",
}


@pytest.mark.parametrize("ready", [True, False], ids=["ready", "must_wait"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_timeout_value(name: str, ready: bool) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, "matrix", name, "ready" if ready else "wait"],
        capture_output=True,
        text=True,
        timeout=300,  # the watchdog over all the values (each has its own, 21 s)
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    wrong = {
        v: problem
        for v, got in results.items()
        if (problem := _expected(name, ready, v, got)) is not None
    }
    assert not wrong, "\n".join(f"{name} timeout={v}: {p}" for v, p in wrong.items())


def _no_item_lost(backend: str) -> None:
    """Items go through a one-slot channel by put/get with a 1e-9 s timeout each, retried
    when it passes: every item arrives once, in order (a timed-out get or put that
    took or left an item would show here)."""
    n = 3000
    ch: pt.Channel[int] = pt.Channel(1, backend=backend)
    producer = pt.spawn(_produce, ch, n, backend=backend)
    got: list[int] = []
    while len(got) < n:
        try:
            got.append(ch.get(timeout=1e-9))
        except queue.Empty:
            pass
    producer.result(timeout=60)
    assert got == list(range(n)), [i for i, x in enumerate(got) if x != i][:5]
    print(json.dumps("ok"), flush=True)


def _produce(ch: pt.Channel[int], n: int) -> None:
    for i in range(n):
        while True:
            try:
                ch.put(i, timeout=1e-9)
                break
            except queue.Full:
                pass


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_timed_out_gets_and_puts_lose_no_item(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, "lost", backend],
        capture_output=True,
        text=True,
        timeout=120,  # a lost item would leave the reader waiting for it: the watchdog
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == '"ok"', proc.stderr[-3000:]


@pytest.mark.parametrize("value_name", list(VALUES))
def test_sleep_values(value_name: str) -> None:
    """pt.sleep(seconds): the same rule, but None is a TypeError (a sleep has a length)."""
    make, rule = VALUES[value_name]
    value = make()
    if rule == "forever" and value is not None:
        # A thread task asleep for good: still asleep when looked at, then cancelled.
        task = pt.spawn(pt.sleep, value)
        assert not task.join(timeout=0.5), task.exception(timeout=0)
        task.cancel()
        assert isinstance(task.exception(timeout=30), pt.Cancelled)
        return
    th, box = _outcome(lambda: pt.sleep(value))
    th.join(30)  # the watchdog
    assert not th.is_alive(), f"pt.sleep({value!r}) hangs"
    if rule in ("now", "short"):
        assert box["kind"] == "ok", box
    else:
        want = "TypeError" if value is None else rule.__name__
        assert box["kind"] == want and "seconds" in box["detail"], box


def _within(fn: Callable[[], Any], seconds: float = 60) -> Any:
    """``fn()`` under a watchdog: a hang fails the test instead of stalling it."""
    th, box = _outcome(fn)
    th.join(seconds)
    assert not th.is_alive(), "still waiting past the watchdog"
    return box


def _supervisor(**options: Any) -> pt.Supervisor:
    return pt.Supervisor(
        {"a": "sleep 60"},
        restart="never",
        output=io.StringIO(),
        **options,
    )


@pytest.mark.parametrize("value", [1e7, Fraction(1, 2)], ids=["past_poll_limit", "fraction"])
def test_supervisor_calls_and_grace(value: Any) -> None:
    """Every Supervisor wait with a timeout poll() cannot take in one go (1e7 s stopped
    the supervisor's loop with an OverflowError), or a Fraction."""
    sup = _supervisor(timeout=value)
    sup.start()
    try:
        for call in (
            lambda: sup.wait_ready("a", timeout=value),
            lambda: sup.stop_program("a", timeout=value),
            lambda: sup.start_program("a", timeout=value),
            lambda: sup.restart_program("a", timeout=value),
        ):
            box = _within(call)
            assert box["kind"] in ("ok", "timeout"), box
        box = _within(lambda: sup.wait(timeout=0))
        assert box == {"kind": "timeout", "detail": "False"}, box
        box = _within(lambda: sup.stop(timeout=value))
        assert box["kind"] == "ok" and "stopped" in box["detail"], box
    finally:
        _within(lambda: sup.stop(timeout=5))


@pytest.mark.parametrize("value_name", [v for v, (_, r) in VALUES.items() if isinstance(r, type)])
def test_supervisor_refuses_bad_timeouts_at_each_call(value_name: str) -> None:
    make, error = VALUES[value_name]
    sup = _supervisor()
    sup.start()
    try:
        for call in (
            lambda: sup.wait(timeout=make()),
            lambda: sup.wait_ready("a", timeout=make()),
            lambda: sup.stop_program("a", timeout=make()),
            lambda: sup.start_program("a", timeout=make()),
            lambda: sup.restart_program("a", timeout=make()),
            lambda: sup.stop(timeout=make()),
            lambda: _supervisor(timeout=make()),
        ):
            box = _within(call)
            assert box["kind"] == error.__name__ and "timeout" in box["detail"], box
    finally:
        _within(lambda: sup.stop(timeout=5))


if __name__ == "__main__":
    if sys.argv[1] == "matrix":
        _child_main(sys.argv[2], sys.argv[3] == "ready")
    elif sys.argv[1] == "lost":
        _no_item_lost(sys.argv[2])
        os._exit(0)
