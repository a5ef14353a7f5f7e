"""``g.Lock()``, ``pool.Channel()``...: primitives built by their owner's backend.

Each factory's primitive is handed to the owner's own tasks (threads, or worker
processes that unpickle it), which must coordinate through it.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import polytask as pt

cloudpickle.register_pickle_by_value(sys.modules[__name__])

HANG = 30.0  # a bound for "does not hang", never a speed check


def _count_under(lock, counter_ch, n):
    for _ in range(n):
        with lock:
            counter_ch.put(1, timeout=HANG)
    return n


def _meet(barrier, event, sem):
    index = barrier.wait(timeout=HANG)
    with sem:
        pass
    assert event.wait(timeout=HANG)
    return index


def _notify(cond, box):
    with cond:
        box.put("ready", timeout=HANG)
        cond.notify_all()
    return True


def _reenter(rlock):
    with rlock, rlock:
        return True


def _produce(ch, n):
    for i in range(n):
        ch.put(i, timeout=HANG)
    return n


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_task_group_factories_work_for_its_tasks(backend):
    with pt.TaskGroup(backend=backend) as g:
        lock, rlock, ch = g.Lock(name="counter"), g.RLock(), g.Channel(100)
        barrier, event, sem = g.Barrier(2), g.Event(), g.BoundedSemaphore(1)
        a = g.spawn(_count_under, lock, ch, 10)
        b = g.spawn(_count_under, lock, ch, 10)
        meets = [g.spawn(_meet, barrier, event, sem) for _ in range(2)]
        r = g.spawn(_reenter, rlock)
        event.set()
    assert a.result() == b.result() == 10
    assert sorted(m.result() for m in meets) == [0, 1]  # both passed the barrier
    assert r.result() is True
    assert sum(ch.get(timeout=HANG) for _ in range(20)) == 20
    ch.close()
    # Each primitive is the backend's own: a thread lock for threads, shared memory else.
    assert isinstance(lock, pt.Lock) and isinstance(ch, pt.Channel)
    assert isinstance(sem, pt.BoundedSemaphore) and isinstance(barrier, pt.Barrier)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_task_group_condition_and_semaphore(backend):
    with pt.TaskGroup(backend=backend) as g:
        cond, box, sem = g.Condition(), g.Channel(1), g.Semaphore(2)
        assert sem.acquire(timeout=HANG) and sem.acquire(timeout=HANG)
        assert not sem.acquire(timeout=0.05)  # the value given was honoured
        sem.release()
        sem.release()
        t = g.spawn(_notify, cond, box)
        assert box.get(timeout=HANG) == "ready"
    assert t.result() is True
    box.close()


def test_task_group_channel_crosses_processes():
    with pt.TaskGroup(backend="process") as g:
        ch = g.Channel(maxsize=8)  # bounded: the producer waits for this consumer
        task = g.spawn(_produce, ch, 200)
        got = [ch.get(timeout=HANG) for _ in range(200)]
    assert task.result() == 200 and got == list(range(200))
    ch.close()


def _add_under(lock, ch, x):
    with lock:
        ch.put(x, timeout=HANG)
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_pool_factories_work_for_its_tasks(backend):
    with pt.Pool(2, backend=backend) as pool:
        lock, ch, event = pool.Lock(), pool.Channel(), pool.Event()
        assert pool.map(_add_under, [lock] * 50, [ch] * 50, range(50)) == list(range(50))
        barrier = pool.Barrier(2)
        waits = [pool.submit(_meet, barrier, event, pool.Semaphore(1)) for _ in range(2)]
        event.set()
        assert sorted(t.result(timeout=HANG) for t in waits) == [0, 1]
    assert sorted(ch.get(timeout=HANG) for _ in range(50)) == list(range(50))
    ch.close()


def test_factory_bad_input_fails_at_the_call():
    with pt.TaskGroup(backend="thread") as g:
        with pytest.raises(ValueError):
            g.Semaphore(-1)
        with pytest.raises(ValueError):
            g.Barrier(0)
        with pytest.raises(ValueError):
            g.Channel(-1)


def test_dask_group_factories_live_on_the_cluster(dask_cluster):
    with pt.TaskGroup(backend="dask") as g:
        lock, ch = g.Lock(), g.Channel(100)
        tasks = [g.spawn(_count_under, lock, ch, 5) for _ in range(2)]
    assert [t.result() for t in tasks] == [5, 5]
    assert sum(ch.get(timeout=HANG) for _ in range(10)) == 10
    assert type(lock).__module__.endswith("cluster.sync")
    ch.close()
