"""pt.Executor: a concurrent.futures.Executor over the Pool machinery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import pytest

import polytask as pt


def square(x):
    return x * x


def napper(seconds):
    time.sleep(seconds)
    return os.getpid()


def kw(a, *, timeout, name):
    return (a, timeout, name)


def die(_):
    os._exit(7)


def test_is_a_real_executor():
    with pt.Executor(max_workers=2) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        fut = ex.submit(square, 7)
        assert isinstance(fut, concurrent.futures.Future) and isinstance(fut, pt.Task)
        assert fut.result(timeout=30) == 49
        futs = [ex.submit(square, i) for i in range(50)]
        done = {f.result() for f in concurrent.futures.as_completed(futs, timeout=60)}
        assert done == {i * i for i in range(50)}
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        # every keyword goes to the function, as the stdlib promises
        assert ex.submit(kw, 1, timeout=2, name="n").result(timeout=30) == (1, 2, "n")
        assert ex.pool.workers == 2


def test_map_timeout_bounds_the_wait():
    with pt.Executor(max_workers=1, backend="thread") as ex:
        it = ex.map(napper, [0.0, 2.0], timeout=0.5)
        assert next(it) > 0
        with pytest.raises(TimeoutError):
            next(it)


def test_a_crash_fails_one_future_only():
    with pt.Executor(max_workers=2) as ex:
        bad = ex.submit(die, 1)
        good = [ex.submit(square, i) for i in range(5)]
        with pytest.raises(pt.WorkerCrashed):
            bad.result(timeout=30)
        assert [g.result(timeout=30) for g in good] == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_shutdown_cancel_futures_and_after_shutdown(backend):
    # As in the stdlib, what the workers already hold runs (a process worker holds
    # up to two chunks, as ProcessPoolExecutor's call queue holds max_workers + 1
    # calls); everything else is cancelled, and nothing finishes in error.
    ex = pt.Executor(max_workers=1, backend=backend)
    running = ex.submit(napper, 0.5)
    queued = [ex.submit(napper, 0.05) for _ in range(20)]
    time.sleep(0.2)
    assert running.running()
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=10) > 0
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= 15
    assert all(f.done() and f.exception() is None for f in queued if not f.cancelled())
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(square, 1)


def test_shutdown_without_waiting_still_finishes_the_work():
    ex = pt.Executor(max_workers=2)
    futs = [ex.submit(napper, 0.1) for _ in range(4)]
    ex.shutdown(wait=False)
    assert all(f.result(timeout=30) > 0 for f in futs)
    deadline = time.monotonic() + 30
    while ex.pool._backend.statistics()["workers"] and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)


def test_run_in_executor():
    async def main():
        loop = asyncio.get_running_loop()
        with pt.Executor(max_workers=2) as ex:
            results = await asyncio.gather(
                *(loop.run_in_executor(ex, square, i) for i in range(10))
            )
        return results

    assert asyncio.run(main()) == [i * i for i in range(10)]
