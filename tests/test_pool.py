"""Pool: map, imap, submit, chunking, timeouts, retries, recycling, asyncio, progress."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import threading
import time

import psutil
import pytest

import polytask as pt
from polytask import Pool

# -- functions run in the workers (module level, so they pickle by reference)
_state: dict[str, object] = {}


def square(x):
    return x * x


def add(a, b):
    return a + b


def pid_after(delay):
    time.sleep(delay)
    return os.getpid()


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleepy(x):
    if x == "hang":
        time.sleep(60)
    return x


def remember(value):
    _state["value"] = value


def recall(_):
    return _state.get("value"), os.getpid()


def grow(mb):
    _state.setdefault("blobs", []).append(bytearray(mb << 20))  # type: ignore[union-attr]
    return os.getpid()


def crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "second try"


def always_crash(_):
    os._exit(5)


def make_lock(_):
    return threading.Lock()


@pytest.fixture(params=["process", "thread"])
def backend(request):
    return request.param


# -- basics
def test_map_in_order_on_both_backends(backend):
    with Pool(2, backend=backend) as pool:
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
        assert pool.map(add, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.map(square, []) == []
        assert sorted(pool.imap_unordered(square, range(20))) == [x * x for x in range(20)]
        assert list(pool.imap(square, iter(range(10)))) == [x * x for x in range(10)]


def test_submit_returns_a_task():
    with Pool(2) as pool:
        t = pool.submit(add, 2, 3, name="adder")
        assert isinstance(t, pt.Task)
        assert t.result(timeout=30) == 5
        assert t.name == "adder" and t.attempts == 1 and t.backend == "process"
        assert t.duration is not None and t.duration >= 0
        tasks = [pool.submit(square, i) for i in range(500)]
        assert [x.result(timeout=30) for x in tasks] == [i * i for i in range(500)]


def test_workers_default_to_usable_cpus_and_bad_options_fail_at_the_call():
    pool = Pool(backend="thread")
    assert pool.workers == len(os.sched_getaffinity(0))
    pool.close()
    pool.join()
    with pytest.raises(ValueError, match="workers"):
        Pool(0)
    with pytest.raises(ValueError, match="retries"):
        Pool(1, retries=-1)
    with pytest.raises(TypeError, match="retry_on"):
        Pool(1, retry_on=(ValueError, 3))
    with pytest.raises(ValueError, match="unknown backend"):
        Pool(1, backend="nope")
    # The second positional argument is the initializer, as in multiprocessing.Pool.
    with pytest.raises(TypeError, match=r"backend='thread'"):
        Pool(1, "thread")
    with pytest.raises(TypeError, match="does not take"):
        Pool(1, backend="thread", start_method="fork")
    with Pool(1, backend="thread") as pool:
        with pytest.raises(TypeError, match="callable"):
            pool.submit(3)
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(ValueError, match="progress"):
            pool.map(square, [1], progress="loud")
        with pytest.raises(ValueError, match="timeout"):
            pool.map(square, [1], timeout=-1)


def test_close_join_terminate():
    pool = Pool(2)
    tasks = [pool.submit(pid_after, 0.05) for _ in range(4)]
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.submit(square, 1)
    pool.join(timeout=60)
    assert all(t.done() for t in tasks)
    pool.terminate()  # after join: harmless

    pool = Pool(2)
    slow = [pool.submit(pid_after, 30) for _ in range(4)]
    time.sleep(0.3)
    started = time.monotonic()
    pool.terminate()
    assert time.monotonic() - started < 10
    for t in slow:
        with pytest.raises(pt.Cancelled):
            t.result(timeout=5)


def test_an_error_is_raised_with_its_remote_traceback():
    with Pool(2) as pool:
        with pytest.raises(ValueError, match="bad item 7") as info:
            pool.map(fail_on, range(50), [7] * 50)
        assert "fail_on" in str(info.value.__cause__)
        out = pool.map(fail_on, range(10), [3] * 10, return_exceptions=True)
        assert isinstance(out[3], ValueError)
        assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        # the pool goes on
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_imap_yields_results_before_the_error():
    with Pool(2) as pool:
        got = []
        with pytest.raises(ValueError):
            for r in pool.imap(fail_on, range(10), [5] * 10):
                got.append(r)
        assert got == [0, 1, 2, 3, 4]


# -- chunking
def test_tiny_tasks_are_batched():
    with Pool(2) as pool:
        assert pool.map(square, range(20_000)) == [x * x for x in range(20_000)]
        assert pool.statistics()["chunks_sent"] < 2_000


def test_slow_tasks_are_spread_over_every_worker():
    with Pool(2) as pool:
        pids = pool.map(pid_after, [0.2] * 8)
    assert len(set(pids)) == 2


def test_a_known_rest_is_cut_into_equal_chunks_a_multiple_of_the_workers():
    from polytask._pool import DEFAULT

    with Pool(2, backend="thread") as pool:
        run = pool._start(square, None, True, None, DEFAULT, False)
        # As measured for tiny items: chunks capped by max_size, not by their duration.
        run.sizer.observe(1_000, 1e-4, 1e-3)
        run.sizer.observe(run.sizer.max_size, 1e-3, 1e-2)
        run.todo = list(range(50_000))
        sizes = [len(block.args) for block in iter(run.next_block, None)]
        run.cancelled = True
    assert sum(sizes) == 50_000
    assert len(sizes) % 2 == 0 and max(sizes) - min(sizes) <= 1
    assert max(sizes) <= run.sizer.max_size


def test_map_reads_a_list_in_place_and_leaves_it_as_it_was():
    items = list(range(30_000))
    with Pool(2) as pool:
        for _ in range(2):  # the second map runs in large chunks
            assert pool.map(square, items) == [x * x for x in items]
        got = pool.map(fail_on, items, [7] * len(items), return_exceptions=True)
        assert isinstance(got[7], ValueError) and got[8] == 8
        assert pool.map(fail_on, [(1, 2)] * 3, [0] * 3) == [(1, 2)] * 3
    assert items == list(range(30_000))


def test_explicit_chunksize():
    with Pool(2) as pool:
        assert pool.map(square, range(100), chunksize=10) == [x * x for x in range(100)]
        assert pool.statistics()["chunks_sent"] == 10


# -- lazy inputs
def test_imap_over_an_endless_generator_pulls_a_bounded_amount():
    pulled = itertools.count()

    def endless():
        while True:
            yield next(pulled)

    with Pool(2) as pool:
        it = pool.imap(square, endless())
        got = [next(it) for _ in range(5_000)]
        assert got == [x * x for x in range(5_000)]
        ahead = next(pulled) - 5_000
        it.close()  # leaving early drops the rest
        assert ahead < 40_000
        it2 = pool.imap_unordered(square, endless())
        assert len([next(it2) for _ in range(1_000)]) == 1_000
        it2.close()


def test_imap_memory_stays_bounded():
    def blobs():
        while True:
            yield b"x" * 10_000

    me = psutil.Process()
    with Pool(2) as pool:
        it = pool.imap(len, blobs())
        for _ in range(2_000):
            next(it)
        base = me.memory_info().rss
        for _ in range(20_000):  # 200 MB of input in total
            assert next(it) == 10_000
        grown = me.memory_info().rss - base
        it.close()
    assert grown < 100 << 20


# -- timeouts, crashes, retries
def test_timeout_kills_only_the_late_task():
    # A task's clock starts when a worker takes it, and a fresh worker first
    # imports this test module (and pytest): allow for that on a busy machine.
    with Pool(2) as pool:
        pool.map(square, range(4), chunksize=1)  # warm both workers up
        tasks = [pool.submit(sleepy, x, timeout=2.5) for x in ["a", "hang", "b", "c"]]
        with pytest.raises(pt.TaskTimeout):
            tasks[1].result(timeout=30)
        assert [tasks[i].result(timeout=30) for i in (0, 2, 3)] == ["a", "b", "c"]
        items = ["x"] * 20 + ["hang"] + ["y"] * 20
        out = pool.map(sleepy, items, timeout=2.5, return_exceptions=True)
        assert isinstance(out[20], pt.TaskTimeout)
        assert out[:20] == ["x"] * 20 and out[21:] == ["y"] * 20


def test_retries_count_attempts(tmp_path):
    with Pool(2, retries=2) as pool:
        t = pool.submit(crash_once, str(tmp_path / "m1"))
        assert t.result(timeout=60) == "second try"
        assert t.attempts == 2
        bad = pool.submit(always_crash, 1)
        with pytest.raises(pt.WorkerCrashed) as info:
            bad.result(timeout=60)
        assert bad.attempts == 3 and info.value.exitcode == 5 and bad.exitcode == 5
        assert pool.map(crash_once, [str(tmp_path / "m2")]) == ["second try"]
    with Pool(1, retries=1, retry_on=ValueError) as pool:
        t = pool.submit(fail_on, 1, 1)
        with pytest.raises(ValueError):
            t.result(timeout=30)
        assert t.attempts == 2


def test_cancel_a_running_task():
    with Pool(2) as pool:
        t = pool.submit(pid_after, 60)
        other = pool.submit(pid_after, 0.1)
        deadline = time.monotonic() + 30
        while not t.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.cancel()
        with pytest.raises(pt.Cancelled):
            t.result(timeout=10)
        assert other.result(timeout=30) > 0
        queued = [pool.submit(pid_after, 0.2) for _ in range(6)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()


def test_unpicklable_argument_and_result_fail_only_their_item():
    with Pool(2) as pool:
        out = pool.map(square, [1, 2, threading.Lock(), 4], return_exceptions=True)
        assert out[0:2] == [1, 4] and out[3] == 16
        assert isinstance(out[2], (pt.SerializationError, TypeError, pickle.PicklingError))
        res = pool.map(make_lock, range(3), return_exceptions=True)
        assert all(isinstance(r, pt.SerializationError) for r in res)


# -- workers: recycling, initializer
def test_max_tasks_per_worker_recycles():
    with Pool(1, max_tasks_per_worker=1) as pool:
        pids = [pool.submit(pid_after, 0).result(timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3


def test_max_memory_per_worker_recycles():
    with Pool(1, max_memory_per_worker=150 << 20) as pool:
        pids = [pool.submit(grow, 100).result(timeout=30) for _ in range(3)]
    # each task pushes the worker over 150 MB at the latest on its second blob
    assert len(set(pids)) >= 2
    with pytest.raises(ValueError, match="process"):
        Pool(1, backend="thread", max_memory_per_worker=1 << 30)


def test_initializer_state_is_kept_between_tasks():
    with Pool(2, initializer=remember, initargs=("ready",)) as pool:
        out = pool.map(recall, range(20), chunksize=1)
    assert {v for v, _ in out} == {"ready"}


# -- asyncio and progress
def test_asyncio_submit_and_amap():
    async def main():
        with Pool(2) as pool:
            r = await pool.submit(square, 12)
            ordered = [x async for x in pool.amap(square, range(50))]
            unordered = [x async for x in pool.amap(square, range(50), ordered=False)]
            with pytest.raises(ValueError):
                async for _ in pool.amap(fail_on, range(5), [2] * 5):
                    pass
            return r, ordered, sorted(unordered)

    r, ordered, unordered = asyncio.run(main())
    assert r == 144
    assert ordered == unordered == [x * x for x in range(50)]


def test_progress_is_silent_off_a_terminal_and_shown_when_forced(capfd):
    with Pool(2, backend="thread") as pool:
        assert pool.map(square, range(100), progress=True) == [x * x for x in range(100)]
        assert capfd.readouterr().err == ""
        assert pool.map(square, range(100), progress="force") == [x * x for x in range(100)]
    err = capfd.readouterr()
    assert "100/100" in err.err + err.out


def test_exports():
    assert pt.Pool is Pool
    assert "Pool" in pt.__all__ and "Executor" in pt.__all__


def test_thread_backend_timeout_flags_the_late_item():
    with Pool(2, backend="thread", timeout=0.5) as pool:
        out = pool.map(pid_after, [0.0, 1.5, 0.0], return_exceptions=True)
    assert isinstance(out[1], pt.TaskTimeout)
    assert out[0] == out[2] == os.getpid()


def test_terminate_from_another_thread_ends_a_running_map():
    pool = Pool(2)
    threading.Timer(0.5, pool.terminate).start()
    with pytest.raises(pt.Cancelled):
        pool.map(pid_after, [30] * 4, chunksize=1)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
