"""The synchronisation contract: every primitive behaves the same on every backend.

Primitives come from ``get_backend(name).primitive(kind, ...)`` (what
``g.Lock()`` uses; a channel from the same factory on the cluster backends,
``pt.Channel(backend=name)`` on thread and process), the "other side" is a task started with
``pt.spawn(..., backend=name)``, and the task bodies are module-level functions,
so that a new backend passes by being added to CONTRACT_BACKENDS. Each
primitive is checked for its semantics, ``timeout=`` on every wait, use from a
task of that backend, and its context-manager behaviour.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

import polytask as pt
from polytask.backends import get_backend

HANG = 30.0  # a bound for "does not hang", never a speed check
SHORT = 0.2


def make(backend_name: str, kind: str, *args):
    return get_backend(backend_name).primitive(kind, *args)


def spawn(backend_name: str, fn, *args):
    return pt.spawn(fn, *args, backend=backend_name)


def channel_for(backend_name: str, maxsize: int = 0) -> pt.Channel:
    """The backend's own channel: the cluster engines' comes from their primitive factory."""
    if backend_name in ("dask", "ray"):
        ch = get_backend(backend_name).primitive("Channel", maxsize)
    else:
        ch = pt.Channel(maxsize, backend=backend_name)
    assert ch.backend == backend_name  # not a shared-memory channel standing in for it
    return ch


# --------------------------------------------------------------------------- task bodies


def after_signalling(ready, fn, *args):
    """Set ``ready`` (the test waits for it: the task is running), then run ``fn``."""
    ready.set()
    return fn(*args)


def hold_until(lock, held, release) -> bool:
    with lock:
        held.set()
        return bool(release.wait(HANG))


def try_acquire(lock, timeout: float) -> bool:
    got = lock.acquire(timeout=timeout)
    if got:
        lock.release()
    return bool(got)


def wait_event(event, timeout: float) -> bool:
    return bool(event.wait(timeout=timeout))


def set_event(event) -> None:
    event.set()


def wait_for_flag(cond, flag, ready) -> bool:
    with cond:
        ready.set()
        return bool(cond.wait_for(flag.is_set, timeout=HANG))


def semaphore_slot(sem, timeout: float) -> bool:
    return bool(sem.acquire(timeout=timeout))


def barrier_wait(barrier, timeout: float) -> int:
    return int(barrier.wait(timeout=timeout))


def barrier_wait_broken(barrier, timeout: float) -> str:
    try:
        barrier.wait(timeout=timeout)
    except threading.BrokenBarrierError:
        return "broken"
    return "passed"


def send_numbers(ch, n: int) -> int:
    for i in range(n):
        ch.put(i, timeout=HANG)
    ch.close()
    return n


def get_one(ch, timeout: float) -> str:
    try:
        return repr(ch.get(timeout=timeout))
    except pt.ChannelClosed:
        return "closed"
    except queue.Empty:
        return "empty"


def drain(ch, timeout: float) -> list:
    out = []
    while True:
        try:
            out.append(ch.get(timeout=timeout))
        except (pt.ChannelClosed, queue.Empty):
            return out


# --------------------------------------------------------------------------- Lock


def test_lock_semantics_and_timeouts(backend_name):
    lock = make(backend_name, "Lock")
    assert not lock.locked()
    assert lock.acquire(timeout=1) is True and lock.locked()
    assert lock.acquire(blocking=False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=SHORT) is False
    assert time.monotonic() - t0 >= SHORT * 0.75
    lock.release()
    assert not lock.locked()
    with pytest.raises(ValueError):
        lock.acquire(timeout=-1)
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=1)


def test_lock_context_manager_releases_on_error(backend_name):
    lock = make(backend_name, "Lock")
    with pytest.raises(KeyError), lock:
        assert lock.locked()
        raise KeyError("inside")
    assert not lock.locked()


def test_lock_excludes_a_task(backend_name):
    lock = make(backend_name, "Lock")
    held, release = make(backend_name, "Event"), make(backend_name, "Event")
    task = spawn(backend_name, hold_until, lock, held, release)
    assert held.wait(timeout=HANG)
    assert lock.acquire(timeout=SHORT) is False  # the task holds it
    assert spawn(backend_name, try_acquire, lock, SHORT).result(timeout=HANG) is False
    release.set()
    assert task.result(timeout=HANG) is True
    assert lock.acquire(timeout=HANG)
    lock.release()


# --------------------------------------------------------------------------- RLock


def test_rlock_reentrant_for_its_owner_only(backend_name):
    rlock = make(backend_name, "RLock")
    with rlock:
        with rlock:
            assert rlock.acquire(timeout=1)
            assert spawn(backend_name, try_acquire, rlock, SHORT).result(timeout=HANG) is False
            rlock.release()
        assert spawn(backend_name, try_acquire, rlock, SHORT).result(timeout=HANG) is False
    assert spawn(backend_name, try_acquire, rlock, HANG).result(timeout=HANG) is True
    with pytest.raises(RuntimeError):
        rlock.release()  # not held


def test_rlock_held_by_a_task(backend_name):
    rlock = make(backend_name, "RLock")
    held, release = make(backend_name, "Event"), make(backend_name, "Event")
    task = spawn(backend_name, hold_until, rlock, held, release)
    assert held.wait(timeout=HANG)
    assert rlock.acquire(timeout=SHORT) is False
    release.set()
    task.result(timeout=HANG)
    assert rlock.acquire(timeout=HANG)
    rlock.release()


# --------------------------------------------------------------------------- Event


def test_event_semantics_and_timeouts(backend_name):
    event = make(backend_name, "Event")
    assert not event.is_set()
    t0 = time.monotonic()
    assert event.wait(timeout=SHORT) is False
    assert time.monotonic() - t0 >= SHORT * 0.75
    event.set()
    assert event.is_set() and event.wait(timeout=0) is True and event.wait() is True
    event.clear()
    assert not event.is_set() and event.wait(timeout=0) is False
    with pytest.raises(ValueError):
        event.wait(timeout=-1)


def test_event_between_a_task_and_us(backend_name):
    event, ready = make(backend_name, "Event"), make(backend_name, "Event")
    waiter = spawn(backend_name, after_signalling, ready, wait_event, event, HANG)
    assert ready.wait(timeout=HANG), "the waiting task never started"
    time.sleep(SHORT)  # kept: into wait() by now, which cannot be observed from here
    assert not waiter.done()
    event.set()
    assert waiter.result(timeout=HANG) is True
    other = make(backend_name, "Event")
    spawn(backend_name, set_event, other).result(timeout=HANG)
    assert other.wait(timeout=HANG) and other.is_set()
    assert (
        spawn(backend_name, wait_event, make(backend_name, "Event"), SHORT).result(timeout=HANG)
        is False
    )


# --------------------------------------------------------------------------- Condition


def test_condition_semantics_and_timeouts(backend_name):
    cond = make(backend_name, "Condition")
    with pytest.raises(RuntimeError):
        cond.wait(timeout=SHORT)  # the lock is not held
    with pytest.raises(RuntimeError):
        cond.notify()
    with cond:
        t0 = time.monotonic()
        assert cond.wait(timeout=SHORT) is False
        assert time.monotonic() - t0 >= SHORT * 0.75
        assert cond.wait_for(lambda: False, timeout=SHORT) is False
        assert cond.wait_for(lambda: 42, timeout=SHORT) == 42
        cond.notify_all()  # nobody waits: a no-op
    with pytest.raises(ValueError):
        cond.acquire(timeout=-1)


def test_condition_wakes_a_waiting_task(backend_name):
    cond = make(backend_name, "Condition")
    flag, ready = make(backend_name, "Event"), make(backend_name, "Event")
    task = spawn(backend_name, wait_for_flag, cond, flag, ready)
    assert ready.wait(timeout=HANG)
    with cond:  # the task is in wait() now: it released the lock
        flag.set()
        cond.notify_all()
    assert task.result(timeout=HANG) is True


def test_condition_over_a_given_lock_is_that_lock(backend_name):
    lock = make(backend_name, "Lock")
    cond = make(backend_name, "Condition", lock)
    with cond:
        assert lock.locked()
        assert spawn(backend_name, try_acquire, lock, SHORT).result(timeout=HANG) is False
    assert not lock.locked()


# --------------------------------------------------------------------------- Semaphores


def test_semaphore_semantics_and_timeouts(backend_name):
    sem = make(backend_name, "Semaphore", 2)
    assert sem.acquire(timeout=1) and sem.acquire(blocking=False)
    t0 = time.monotonic()
    assert sem.acquire(timeout=SHORT) is False
    assert time.monotonic() - t0 >= SHORT * 0.75
    assert spawn(backend_name, semaphore_slot, sem, SHORT).result(timeout=HANG) is False
    sem.release()
    assert spawn(backend_name, semaphore_slot, sem, HANG).result(timeout=HANG) is True
    sem.release(2)  # the task kept its slot: give back two, then both are free
    with sem, sem:
        assert sem.acquire(timeout=SHORT) is False
    assert sem.acquire(timeout=1)
    with pytest.raises(ValueError):
        make(backend_name, "Semaphore", -1)


def test_semaphore_release_wakes_a_waiting_task(backend_name):
    sem, ready = make(backend_name, "Semaphore", 0), make(backend_name, "Event")
    task = spawn(backend_name, after_signalling, ready, semaphore_slot, sem, HANG)
    assert ready.wait(timeout=HANG), "the waiting task never started"
    time.sleep(SHORT)  # kept: "stays blocked while no slot is free" needs some time
    assert not task.done()
    sem.release()
    assert task.result(timeout=HANG) is True


def test_bounded_semaphore_refuses_extra_release(backend_name):
    sem = make(backend_name, "BoundedSemaphore", 1)
    with pytest.raises(ValueError):
        sem.release()
    with sem:
        assert sem.acquire(timeout=SHORT) is False
    with pytest.raises(ValueError):
        sem.release()


# --------------------------------------------------------------------------- Barrier


def test_barrier_with_a_task(backend_name):
    barrier = make(backend_name, "Barrier", 2)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken
    task = spawn(backend_name, barrier_wait, barrier, HANG)
    mine = barrier.wait(timeout=HANG)
    assert {mine, task.result(timeout=HANG)} == {0, 1}
    # Reusable: a second round.
    task = spawn(backend_name, barrier_wait, barrier, HANG)
    assert {barrier.wait(timeout=HANG), task.result(timeout=HANG)} == {0, 1}


def test_barrier_timeout_breaks_it_for_everyone(backend_name):
    barrier = make(backend_name, "Barrier", 3)
    task = spawn(backend_name, barrier_wait_broken, barrier, HANG)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(timeout=SHORT * 2)  # the third party never comes
    assert task.result(timeout=HANG) == "broken"
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken
    barrier.abort()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(timeout=SHORT)


# --------------------------------------------------------------------------- channels from tasks


def test_channel_from_a_task(backend_name):
    ch = channel_for(backend_name)
    task = spawn(backend_name, send_numbers, ch, 200)
    assert list(ch) == list(range(200))
    assert task.result(timeout=HANG) == 200
    with pytest.raises(pt.ChannelClosed):
        ch.put(1)
    with pytest.raises(pt.ChannelClosed):
        ch.get(timeout=SHORT)


def test_channel_timeouts(backend_name):
    ch = channel_for(backend_name)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        ch.get(timeout=SHORT)
    assert time.monotonic() - t0 >= SHORT * 0.75
    with pytest.raises(queue.Empty):
        ch.get_nowait()
    with pytest.raises(ValueError):
        ch.get(timeout=-1)
    ch.close()


def test_channel_bounded_put_waits_then_times_out(backend_name):
    ch = channel_for(backend_name, 2)
    ch.put("a", timeout=1)
    ch.put_nowait("b")
    assert len(ch) == 2 and not ch.closed
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        ch.put("c", timeout=SHORT)
    assert time.monotonic() - t0 >= SHORT * 0.75
    with pytest.raises(queue.Full):
        ch.put_nowait("c")
    assert ch.get(timeout=1) == "a"
    ch.put("c", timeout=1)  # room again
    assert ch.get_many(10, timeout=1) == ["b", "c"]
    assert len(ch) == 0


def test_channel_items_keep_order_and_type(backend_name):
    ch = channel_for(backend_name)
    items = [1, "two", (3.0, None), {"four": [4]}, b"\x00five"]
    ch.put_many(items, timeout=HANG)
    assert [ch.get(timeout=HANG) for _ in items] == items


def test_channel_close_wakes_a_waiting_task_and_keeps_what_is_left(backend_name):
    ch, ready = channel_for(backend_name), make(backend_name, "Event")
    waiter = spawn(backend_name, after_signalling, ready, get_one, ch, HANG)
    assert ready.wait(timeout=HANG), "the waiting task never started"
    time.sleep(SHORT)  # kept: "stays blocked on an empty channel" needs some time
    assert not waiter.done()
    ch.close()
    assert waiter.result(timeout=HANG) == "closed"
    assert ch.closed
    other = channel_for(backend_name)
    other.put_many([1, 2, 3], timeout=HANG)
    other.close()
    with pytest.raises(pt.ChannelClosed):
        other.put(4, timeout=SHORT)
    # Closed, not drained: readers (here a task) still get what was put before.
    assert spawn(backend_name, drain, other, SHORT).result(timeout=HANG) == [1, 2, 3]
    with pytest.raises(pt.ChannelClosed):
        other.get(timeout=SHORT)


def test_channel_with_block_closes_it(backend_name):
    with channel_for(backend_name) as ch:
        ch.put(1, timeout=1)
    assert ch.closed
    assert list(ch) == [1]


def test_group_primitives_match_the_backend(backend_name):
    with pt.TaskGroup(backend=backend_name) as g:
        lock, event, sem = g.Lock(), g.Event(), g.Semaphore(1)
        held, release = g.Event(), g.Event()
        task = g.spawn(hold_until, lock, held, release)
        assert held.wait(timeout=HANG)
        assert lock.acquire(timeout=SHORT) is False
        release.set()
        event.set()
        assert sem.acquire(timeout=1)
    assert task.result() is True and event.is_set()
