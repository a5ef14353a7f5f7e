"""Pool: map, imap, submit, chunking, timeouts, retries, recycling, asyncio, progress."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import polytask as pt
from helpers import run_python, wait_until
from polytask import Pool

HANG = 60  # a bound for "never happens", not a speed claim

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


def stop_on(x, bad=3):
    if x == bad:
        raise StopIteration(f"item {x}")
    return x


def gated(gate, x):
    """x * x once ``gate`` is set (a done callback added before then is not run at once)."""
    if not gate.wait(30):
        raise TimeoutError("the gate was never opened")
    return x * x


def sleepy(x):
    if x == "hang":
        time.sleep(60)
    return x


def fail_or_hang(x):
    if x == "bad":
        raise ValueError("bad item")
    return sleepy(x)


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
    wait_until(lambda: sum(t.running() for t in slow) == 2, 30, "both workers to run a task")
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


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_map_raises_an_error_without_waiting_for_the_rest(return_exceptions, monkeypatch):
    # map() wakes its caller once every result is in, or at once for an error. The
    # caller's poll made long: it alone found the error (0.25 s) when none woke it.
    monkeypatch.setattr("polytask._pool.pool._MAP_POLL", HANG)
    with Pool(2) as pool:
        t0 = time.monotonic()
        if return_exceptions:
            # No error raised: the caller waits for the rest, as it must.
            out = pool.map(fail_or_hang, ["bad", 1, 2], chunksize=1, return_exceptions=True)
            assert isinstance(out[0], ValueError) and out[1:] == [1, 2]
        else:
            with pytest.raises(ValueError, match="bad item"):
                pool.map(fail_or_hang, ["bad", "hang"], chunksize=1)
        assert time.monotonic() - t0 < 30, "map waited for a chunk after the error"
        pool.terminate()  # the hanging chunk runs on


@pytest.mark.parametrize("slow_caller", [False, True])
def test_map_raises_an_error_behind_a_slow_item_once_that_item_is_in(monkeypatch, slow_caller):
    # The error woke the caller, which found item 0 still out; item 0's result came
    # while item 2 ran on, and woke nobody (not the last, no error): the error was
    # raised only at the caller's next poll (0.25 s), here made long. slow_caller:
    # the error came before the caller asked for quiet (a loaded machine, in the
    # full suite), which then undid what the error had set.
    monkeypatch.setattr("polytask._pool.pool._MAP_POLL", HANG)
    if slow_caller:
        collect = Pool._collect

        def late_collect(self, *args):
            time.sleep(0.1)  # deliberate: item 1's error settles meanwhile
            return collect(self, *args)

        monkeypatch.setattr(Pool, "_collect", late_collect)
    first, third = threading.Event(), threading.Event()

    def item(x):
        if x == 0:
            assert first.wait(HANG)
        elif x == 1:
            first_later = threading.Timer(0.3, first.set)  # after the error is in
            first_later.start()
            raise ValueError("bad item 1")
        else:
            third.wait(HANG)
        return x

    with Pool(2, backend="thread") as pool:
        t0 = time.monotonic()
        try:
            with pytest.raises(ValueError, match="bad item 1"):
                pool.map(item, range(3), chunksize=1)
            assert time.monotonic() - t0 < HANG / 2, "the error waited for item 2"
        finally:
            first.set()
            third.set()


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


def _wait_for_file(path: str) -> None:
    # pt.sleep: a cancellation point, so a thread worker stops when cancelled too.
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        pt.sleep(0.01)


def _touch(path: str) -> None:
    open(path, "w").close()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_terminate_charges_no_attempt_to_a_task_that_never_started(backend, tmp_path):
    # Task.attempts is how many times the task was started: one still queued when
    # the pool is terminated never was (it said 1).
    flag = tmp_path / "go"
    with pt.Pool(1, backend=backend) as pool:
        running = pool.submit(_wait_for_file, str(flag))
        queued = pool.submit(_touch, str(tmp_path / "never"))
        wait_until(lambda: running.running(), what="the first task to start")
        pool.terminate()
    for t in (running, queued):
        with pytest.raises(pt.Cancelled):
            t.result(timeout=60)
    assert queued.attempts == 0
    assert not (tmp_path / "never").exists()


def _signal_and_wait(started: str, release: str) -> str:
    """Say it started (a file), then wait for ``release`` (a file)."""
    _touch(started)
    _wait_for_file(release)
    return "released"


def _one_chunk_behind_a_gate(pool: Pool, tmp_path: Path, calls: list[tuple]) -> list[pt.Task]:
    """Submit ``calls`` so that they go to the one worker of ``pool`` as one chunk.

    A first task is measured (submitted tasks start in chunks of one, which grow
    once one is measured), then a map's item holds the worker while the calls
    gather in the queue (a map's item: its duration is its function's measure,
    not the submitted tasks', which it would shrink to one or two a chunk), then
    it returns. ``pool`` needs ``retries`` (an idle pool hands a lone task to the
    backend as it is, outside the chunks, without them).
    """
    pool.submit(square, 0).result(timeout=60)
    # Settled too (on threads its chunk's callback may still be running): the gate
    # must find the worker free, not wait in the queue with the calls.
    wait_until(lambda: pool.statistics()["unsettled"] == 0, what="the first task to settle")
    go = tmp_path / "go"
    gate = pool.map_async(_wait_for_file, [str(go)])
    tasks = [pool.submit(fn, *args) for fn, *args in calls]
    _touch(str(go))
    gate.get(timeout=60)
    return tasks


def test_an_unpicklable_argument_is_tried_once_whichever_way_it_was_submitted(tmp_path):
    # It never runs: its task fails with SerializationError, and attempts says the
    # pool tried to send it once, as a map tries such an item once: sent alone to an
    # idle pool (which said 0) or in a chunk, whose failed launch is not charged
    # (the item then fails alone; 942cb8f charged it both: 2).
    with Pool(1) as pool:
        alone = pool.submit(square, threading.Lock())
        with pytest.raises(pt.SerializationError):
            alone.result(timeout=60)
    assert alone.attempts == 1
    with Pool(1, retries=1) as pool:
        tasks = _one_chunk_behind_a_gate(
            pool, tmp_path, [(square, 1), (square, threading.Lock()), (square, 3)]
        )
        assert tasks[0].result(timeout=60) == 1 and tasks[2].result(timeout=60) == 9
        with pytest.raises(pt.SerializationError):
            tasks[1].result(timeout=60)
        # The first, the gate, the three as one chunk, then each alone.
        assert pool.statistics()["chunks_sent"] == 6
    assert [t.attempts for t in tasks] == [1, 1, 1]


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_terminate_charges_a_running_chunk_to_its_first_item_only(backend, tmp_path):
    # As for a crash: only the chunk's first item surely started there. The items
    # behind it never ran (their files are not there) and were charged a run each.
    started, never = tmp_path / "started", tmp_path / "never"
    with Pool(1, backend=backend, retries=1) as pool:
        tasks = _one_chunk_behind_a_gate(
            pool,
            tmp_path,
            [(_signal_and_wait, str(started), str(never))]
            + [(_touch, str(tmp_path / f"ran{i}")) for i in range(2)],
        )
        wait_until(started.exists, what="the chunk's first item to start")
        assert pool.statistics()["chunks_sent"] == 3  # the three went as one chunk
        pool.terminate()
    for t in tasks:
        with pytest.raises(pt.Cancelled):
            t.result(timeout=60)
    assert [t.attempts for t in tasks] == [1, 0, 0]
    assert not list(tmp_path.glob("ran*"))


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_terminate_ends_a_map_with_cancelled_even_with_return_exceptions(backend, tmp_path):
    # return_exceptions=True puts the items' own failures in the results; terminate()
    # ends the whole call, which raises Cancelled (as concurrent.futures' map raises
    # CancelledError after a shutdown(cancel_futures=True)), whatever the race: the
    # items it stopped were given as Cancelled results when all were in flight.
    never = str(tmp_path / "never")
    with Pool(2, backend=backend) as pool:
        results = pool.imap(
            _wait_for_file, [str(tmp_path), never, never], chunksize=1, return_exceptions=True
        )
        assert next(results) is None  # what was in before terminate() is given
        pool.terminate()
        with pytest.raises(pt.Cancelled):
            next(results)
    started = tmp_path / "started"
    with Pool(2, backend=backend) as pool:
        stopper = threading.Thread(
            target=lambda: (wait_until(started.exists), pool.terminate()), daemon=True
        )
        stopper.start()
        with pytest.raises(pt.Cancelled):
            pool.map(
                functools.partial(_signal_and_wait, str(started)),
                [never] * 3,
                chunksize=1,
                return_exceptions=True,
            )
        stopper.join(60)


def _log_run(path: str, tag: str) -> str:
    with open(path, "a") as f:
        f.write(tag + "\n")
    if tag == "crash":
        os._exit(5)
    if tag.startswith("crash-once"):  # crashes on its first run only (a marker file)
        marker = f"{path}.{tag}"
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(6)
    return tag


def _map_logged(tmp_path: Path, tags: list[str]) -> tuple[list[object], list[str]]:
    """``tags`` in one chunk of Pool(1, retries=1): each item's outcome, and every run."""
    log = tmp_path / "runs"
    with Pool(1, retries=1) as pool:
        out = pool.map(
            functools.partial(_log_run, str(log)),
            tags,
            chunksize=len(tags),
            return_exceptions=True,
        )
    return out, log.read_text().split()


def test_an_item_that_crashes_its_chunk_runs_once_plus_its_retries(tmp_path):
    # A chunk that crashes is re-run one item at a time, to find the item that
    # crashed it. The chunk's first item surely ran there: that run is one of its
    # runs, charged when it crashes again alone (it ran 2 + retries times). Its
    # chunk-mates are not charged: "a" and "b" never started in the chunk.
    out, runs = _map_logged(tmp_path, ["crash", "a", "b"])
    assert isinstance(out[0], pt.WorkerCrashed) and out[1:] == ["a", "b"], out
    assert runs.count("crash") == 2, runs  # once in the chunk, once alone (its retry)
    assert runs.count("a") == 1 and runs.count("b") == 1, runs


def test_an_item_behind_a_flaky_one_keeps_its_retry(tmp_path):
    # The chunk died at "crash-once-a" (its first run), which then succeeds alone.
    # "crash-once-b" never ran in the chunk: its first run alone crashes, and it is
    # owed its retry. (Charged the chunk's run as "the first to fail alone", it
    # lost it and failed.)
    out, runs = _map_logged(tmp_path, ["crash-once-a", "crash-once-b"])
    assert out == ["crash-once-a", "crash-once-b"], out
    assert runs.count("crash-once-a") == 2 and runs.count("crash-once-b") == 2, runs


def test_a_chunk_mate_behind_the_crashing_item_keeps_all_its_retries(tmp_path):
    # "crash" kills the chunk before "crash-once" starts there: the chunk's run is
    # not one of its runs. Alone, its first run crashes: that is its first attempt,
    # so it is retried (and then succeeds); it must not be charged the chunk's run,
    # which is "crash"'s (charged to it: it runs 1 + retries times in all).
    out, runs = _map_logged(tmp_path, ["crash", "crash-once", "c"])
    assert isinstance(out[0], pt.WorkerCrashed) and out[1:] == ["crash-once", "c"], out
    assert runs.count("crash") == 2, runs
    assert runs.count("crash-once") == 2 and runs.count("c") == 1, runs


def test_two_items_that_crash_their_chunk_each_run_once_plus_their_retries(tmp_path):
    # Both crash whenever they run; the chunk crashed at the first, the second never
    # ran there. Each runs 1 + retries times: the first's chunk run is its first.
    out, runs = _map_logged(tmp_path, ["crash", "crash"])
    assert all(isinstance(x, pt.WorkerCrashed) for x in out), out
    assert runs.count("crash") == 4  # 2 + 2, not 2 + 1


def test_a_worker_that_cannot_be_set_up_uses_up_the_retries(tmp_path):
    # A failed launch (here: the initializer raises) is an attempt: with a
    # retry_on that matches its error, the task is tried 1 + retries times, then
    # fails. (Counted as "never started", it was retried for ever.)
    calls = tmp_path / "calls"

    with pt.Pool(
        1,
        backend="thread",
        initializer=_log_and_fail,
        initargs=(str(calls),),
        retries=2,
        retry_on=Exception,
    ) as pool:
        task = pool.submit(abs, -1)
        with pytest.raises(pt.PolytaskError):
            task.result(timeout=60)
    assert task.attempts == 3
    assert calls.read_text() == "x" * 3


def _log_and_fail(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")
    raise RuntimeError("no database")


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
    # 1 s: room for the quick items on a loaded machine, short of the late one's 1.5 s.
    with Pool(2, backend="thread", timeout=1.0) as pool:
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


# -- the multiprocessing.Pool surface (issue 12): a user replaces
# multiprocessing.Pool(n) by pt.Pool(n) and nothing else changes.
def mp_initializer(tag):
    _state["tag"] = tag


def mp_tag(_=None):
    return _state.get("tag")


def nap_and_return(x, seconds=0.0):
    time.sleep(seconds)
    return x


def wait_for_event(event, x):
    event.wait(30)
    return x


def test_constructor_takes_multiprocessing_positional_order():
    import multiprocessing

    # processes, initializer, initargs, maxtasksperchild, context
    with Pool(2, mp_initializer, ("ready",), 5, multiprocessing.get_context("spawn")) as pool:
        assert pool.map(mp_tag, range(4)) == ["ready"] * 4
    with Pool(1, mp_initializer, ("forked",), context="fork") as pool:
        assert pool.apply(mp_tag) == "forked"
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(2, maxtasksperchild=0)
    with pytest.raises(ValueError, match="disagree"):
        Pool(1, context="fork", start_method="spawn")
    with pytest.raises(TypeError, match="context"):
        Pool(1, context=3)


@pytest.mark.parametrize("value", ["12", 0.5, 0, -1, True])
def test_bad_max_tasks_per_worker_is_a_value_error(value):
    # It was reported as "backend 'process' does not take the options" for "12".
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        Pool(1, max_tasks_per_worker=value)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=value)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_apply_and_apply_async(backend):
    with Pool(2, backend=backend) as pool:
        assert pool.apply(pow, (2, 5)) == 32
        assert pool.apply(int, ("ff",), {"base": 16}) == 255
        seen = []
        res = pool.apply_async(add, (1, 2), callback=seen.append, error_callback=seen.append)
        assert isinstance(res, pt.AsyncResult)
        assert res.get(timeout=30) == 3
        # The callback ran before the result turned ready.
        assert res.ready() and res.successful() and seen == [3]
        bad = pool.apply_async(int, ("x",), callback=seen.append, error_callback=seen.append)
        bad.wait(30)
        assert bad.ready() and not bad.successful()
        assert isinstance(seen[-1], ValueError)
        with pytest.raises(ValueError, match="invalid literal"):
            bad.get()
        slow = pool.apply_async(nap_and_return, (1, 1.0))
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        with pytest.raises(multiprocessing_timeout()):
            slow.get(timeout=0.05)
        assert slow.get(timeout=30) == 1


def multiprocessing_timeout():
    import multiprocessing

    return multiprocessing.TimeoutError


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_map_async_and_starmap_async(backend):
    with Pool(2, backend=backend) as pool:
        seen = []
        res = pool.map_async(square, range(20), callback=seen.append)
        assert res.get(timeout=30) == [x * x for x in range(20)]
        assert seen == [[x * x for x in range(20)]]
        assert pool.map_async(square, []).get(timeout=30) == []
        assert pool.starmap_async(add, [(1, 2), (3, 4)], 1).get(timeout=30) == [3, 7]
        errors = []
        bad = pool.map_async(fail_on, [1, 2, 3], error_callback=errors.append, chunksize=1)
        with pytest.raises(TypeError):
            bad.get(timeout=30)  # fail_on needs two arguments
        assert len(errors) == 1 and isinstance(errors[0], TypeError)
        assert not bad.successful()


def test_positional_chunksize_in_map_imap_starmap():
    with Pool(2) as pool:
        assert pool.map(square, range(10), 3) == [x * x for x in range(10)]
        assert list(pool.imap(square, range(10), 4)) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10), 2)) == [x * x for x in range(10)]
        assert pool.starmap(add, [(1, 1), (2, 2)], 1) == [2, 4]
        assert pool.map(add, [1, 2], [3, 4], 1) == [4, 6]  # several iterables, then the int
        # None, multiprocessing's default, given positionally (as code written for
        # multiprocessing.Pool.map(func, iterable, chunksize=None) may pass it).
        assert pool.map(square, [1, 2, 3], None) == [1, 4, 9]
        assert pool.starmap(add, [(1, 1)], None) == [2]
        with pytest.raises(TypeError, match="twice"):
            pool.map(square, range(3), 2, chunksize=2)


def test_imap_next_with_a_timeout_goes_on_after_it():
    with Pool(1, backend="thread") as pool:
        event = threading.Event()
        it = pool.imap(functools_partial(wait_for_event, event), [1, 2], 1)
        with pytest.raises(multiprocessing_timeout()) as info:
            it.next(timeout=0.05)
        assert isinstance(info.value, TimeoutError)  # also the builtin one
        event.set()
        assert it.next(timeout=30) == 1
        assert next(it) == 2
        with pytest.raises(StopIteration):
            it.next(timeout=1)


def functools_partial(fn, *args):
    import functools

    return functools.partial(fn, *args)


def failing_input(n, at):
    for i in range(n):
        if i == at:
            raise KeyError("the input failed")
        yield i


def test_an_input_that_raises_fails_at_its_place():
    # As multiprocessing: what the input gave before the error is still returned.
    with Pool(2) as pool:
        it = pool.imap(square, failing_input(10, 3))
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(KeyError, match="the input failed"):
            next(it)
        it = pool.imap(square, failing_input(20, 7), 2)  # the chunk being filled goes too
        assert [next(it) for _ in range(6)] == [x * x for x in range(6)]
        with pytest.raises(KeyError):
            next(it)


def test_use_after_close_is_a_value_error_and_with_needs_a_running_pool():
    pool = Pool(1, backend="thread")
    with pool:
        pass
    for call in (
        lambda: pool.apply(square, (1,)),
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.map(square, [1]),
        lambda: pool.map_async(square, [1]),
        lambda: pool.imap(square, [1]),
        lambda: pool.submit(square, 1),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    with pytest.raises(ValueError, match="Pool not running"):
        with pool:
            pass
    pool.join()


def test_thread_backend_initializer_runs_in_each_thread():
    seen = []
    lock = threading.Lock()

    def init(tag):
        with lock:
            seen.append((tag, threading.current_thread().name))

    with Pool(2, init, ("t",), backend="thread", thread_name_prefix="Worker") as pool:
        names = pool.map(lambda _: threading.current_thread().name, range(50), 1)
    assert set(names) <= {"Worker_0", "Worker_1"}
    assert {tag for tag, _ in seen} == {"t"} and {n for _, n in seen} == set(names)


def test_thread_backend_failing_initializer_fails_the_tasks():
    def init():
        raise RuntimeError("no database")

    with Pool(2, init, backend="thread") as pool:
        tasks = [pool.submit(square, i) for i in range(5)]
        for t in tasks:
            with pytest.raises(pt.PolytaskError, match="initializer failed") as info:
                t.result(timeout=30)
            assert isinstance(info.value.__cause__, RuntimeError)


def test_manager_proxies_in_initargs_and_arguments_on_spawn_workers():
    # Spawn workers adopt the caller's multiprocessing authkey before they unpickle
    # anything: a Manager proxy made here talks to its manager from there
    # (AuthenticationError before).
    import multiprocessing

    with multiprocessing.get_context("fork").Manager() as mgr:  # no resource tracker
        ns = mgr.Namespace()
        ns.count = 0
        event = mgr.Event()
        with Pool(1, bump_namespace, (ns,)) as pool:
            assert pool.apply(set_event, (event,)) == "set"
        assert event.is_set() and ns.count == 1


def bump_namespace(ns):
    ns.count += 1


def set_event(event):
    event.set()
    return "set"


class _Owner:
    def method(self):
        return 1


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_the_pool_keeps_no_callable_or_result_alive(backend):
    import gc
    import weakref

    with Pool(1, backend=backend) as pool:
        owner = _Owner()
        ref = weakref.ref(owner)
        assert pool.submit(owner.method).result(timeout=30) == 1
        del owner
        gc.collect()
        assert ref() is None  # the bound method (and so its object) was dropped
        for obj in pool.imap(make_owner, range(3)):
            wr = weakref.ref(obj)
            del obj
            gc.collect()
            assert wr() is None  # a result the iterator returned is not kept


def make_owner(_):
    return _Owner()


class FreedInWorker:
    """Writes ``path`` when the copy in a worker process is freed."""

    def __init__(self, path, parent):
        self.path = str(path)
        self.parent = parent

    def __del__(self):
        if os.getpid() != self.parent:
            with open(self.path, "w") as f:
                f.write("freed")


@pytest.mark.parametrize("how", ["submit", "map"])
def test_a_worker_frees_the_arguments_once_its_task_is_done(tmp_path, how):
    # The worker kept the last task's arguments alive until its next task.
    marker = tmp_path / "freed"
    with Pool(1) as pool:
        obj = FreedInWorker(marker, os.getpid())
        if how == "submit":
            assert pool.submit(id, obj).result(timeout=30)
        else:
            assert pool.map(id, [obj])
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()  # before the pool (and its worker) ended


def test_workers_keyword_is_the_same_as_processes() -> None:
    # pt.Pool(workers=N) was polytask's spelling before the multiprocessing surface.
    with pt.Pool(workers=1, backend="thread") as pool:
        assert pool.workers == 1 and pool.map(abs, [-1, -2]) == [1, 2]
    with pytest.raises(TypeError, match="not both"):
        pt.Pool(2, workers=2, backend="thread")


# ---------------------------------------------------------------- the lone-task fast path
def test_a_lone_submit_is_read_by_its_caller_as_spawn_is():
    # pool.submit(f, x).result() takes pt.spawn's path: the backend's own task, sent
    # unwatched, so no collector thread completes it; its caller reads the result.
    with Pool(1) as pool:
        for ex in (pool, pt.Executor(1)):
            t = ex.submit(pow, 2, 5)
            assert t.result(timeout=30) == 32
            assert t._is_done() and not t._watched
        ex.shutdown()


def test_a_lone_task_nobody_waits_for_still_completes():
    # Sent unwatched: whatever else happens must see it read in the background.
    with Pool(1) as pool:
        lone = pool.submit(os.getpid)
        more = [pool.submit(pow, 2, i) for i in range(20)]  # a queue forms behind it
        assert more[-1].result(timeout=30) == 2**19
        assert lone.result(timeout=30) > 0
    pool = Pool(1)
    lone = pool.submit(os.getpid)
    pool.close()
    pool.join(timeout=30)  # join reads it
    assert lone._is_done()
    with Pool(1) as pool:
        lone = pool.submit(os.getpid)
        done, _ = __import__("concurrent.futures").futures.wait([lone], timeout=30)
        assert done == {lone}
        seen = threading.Event()
        lone = pool.submit(os.getpid)
        lone.add_done_callback(lambda _: seen.set())
        assert seen.wait(30)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_lone_task_gets_no_done_callback_and_is_settled_later(workers):
    # pool.submit(f, x).result() costs what pt.spawn's does: no pool code runs when
    # its result comes (a done callback took a lock and a notify_all there); the
    # pool settles the task when it next looks, and keeps no result alive.
    import gc
    import weakref

    with Pool(workers) as pool:
        for ex in (pool, pt.Executor(workers)):
            t = ex.submit(pow, 2, 5)
            assert not t._callbacks
            assert t.result(timeout=30) == 32
            owner = ex.submit(make_owner, 0).result(timeout=30)
            ref = weakref.ref(owner)
            del owner
            gc.collect()
            assert ref() is None
            stats = (ex if ex is pool else ex.pool).statistics()
            assert stats["unsettled"] == 0 and stats["chunks_in_flight"] == 0, stats
            # A lone task nobody reads, then a map: the map's items wait for no caller.
            slow = ex.submit(time.sleep, 0.1)
            assert list(ex.map(abs, range(-30, 0))) == list(range(30, 0, -1))
            assert slow.result(timeout=30) is None
            done = ex.submit(os.getpid)
            assert done.result(timeout=30) > 0 and done.exception() is None
        ex.shutdown()
        assert pool.statistics()["unsettled"] == 0


def test_join_waits_for_a_lone_task_submitted_while_the_pool_closes():
    # A lone task gets no done callback (the pool settles it when it next looks):
    # one submitted as close() and join() run must still be settled, or join hangs.
    for _ in range(10):
        pool = Pool(2)
        pool.submit(os.getpid).result(timeout=30)  # workers up
        got: list[pt.Task[int]] = []

        def submit_until_closed() -> None:
            try:
                while True:
                    got.append(pool.submit(os.getpid))
                    got[-1].result(timeout=30)
            except ValueError:
                pass

        th = threading.Thread(target=submit_until_closed)
        th.start()
        wait_until(lambda: len(got) > 20, timeout=30)
        pool.close()
        pool.join(timeout=10)  # raised WaitTimeout
        th.join(30)
        assert all(t._is_done() for t in got)
        assert pool.statistics()["unsettled"] == 0


def test_a_lone_task_keeps_the_pool_semantics():
    with Pool(1, timeout=0.5) as pool:
        with pytest.raises(pt.TaskTimeout):
            pool.submit(time.sleep, 30).result(timeout=30)
        assert pool.submit(pow, 3, 2).result(timeout=30) == 9
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(timeout=30)
        assert pool.statistics()["unsettled"] == 0


def test_progress_bar_is_drawn_while_the_map_runs_and_ends_on_the_final_count(tmp_path):
    # The bar's start draws nothing (a short map pays one drawing): rich's refresh
    # thread must still show it on a terminal while items are running, and the
    # close must draw the final count.
    import select
    import subprocess
    import sys

    go = tmp_path / "go"
    script = tmp_path / "bar.py"
    script.write_text(
        "import os, time, polytask as pt\n"
        f"GO = {str(go)!r}\n"
        "def wait(x):\n"
        "    while not os.path.exists(GO):\n"
        "        time.sleep(0.01)\n"
        "    return x\n"
        "with pt.Pool(2, backend='thread') as pool:\n"
        "    assert pool.map(wait, range(4), progress=True) == [0, 1, 2, 3]\n"
    )
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen:
            assert time.monotonic() < deadline, (text, seen[-500:])
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
        assert text in seen, (text, seen[-500:])

    try:
        read_until(b"0/4")  # drawn while every item still waits
        read_until(b"0:00:01")  # and redrawn as time passes, with no result in
        assert b"4/4" not in seen
        go.touch()
        read_until(b"4/4")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_join_from_a_done_callback_never_hangs(backend, workers):
    """Pool.join() from a task's done callback on the thread that delivers the
    pool's results (a process backend's reader, the thread worker that ran the
    task) would wait for itself: with one worker, the task queued behind needs
    that very thread (it hung). RuntimeError says so and the pool goes on; joined
    from the caller's thread, it finishes. With more workers too: as CPython's
    executors refuse to join their own worker thread, whatever their size."""
    pool = pt.Pool(workers, backend=backend)
    gate = pt.Event(backend=backend)
    errors: list[BaseException] = []
    where: list[threading.Thread] = []
    stopped = threading.Event()

    def stop(_):
        where.append(threading.current_thread())
        try:
            pool.close()
            pool.join()
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            stopped.set()

    first = pool.submit(gated, gate, 3)
    second = pool.submit(square, 4)
    first.add_done_callback(stop)  # before it finishes: not run at once, here
    gate.set()
    try:
        # Not first.result() before: a process task's caller reads its result itself.
        assert stopped.wait(30), "join() called from a done callback never returned"
        assert where != [threading.current_thread()]
        assert first.result(timeout=30) == 9
        assert second.result(timeout=30) == 16
        assert len(errors) == 1 and "Pool.join()" in str(errors[0]), errors
    finally:
        if not stopped.is_set():
            pool.terminate()  # the failing case: do not wait for the stuck callback
        pool.close()
        pool.join(timeout=30)


def test_join_from_a_done_callback_run_by_cancel_waits():
    """A done callback that cancel() runs in the caller's thread is not on a
    worker: Pool.join() there waits, as it would anywhere in the caller."""
    pool = pt.Pool(1, backend="thread")
    gate = pt.Event(backend="thread")
    errors: list[BaseException] = []
    where: list[threading.Thread] = []

    def stop(_):
        where.append(threading.current_thread())
        gate.set()
        try:
            pool.close()
            pool.join(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    try:
        first = pool.submit(gated, gate, 3)
        second = pool.submit(square, 4)  # queued behind first: still pending
        second.add_done_callback(stop)
        assert second.cancel()
        assert where == [threading.current_thread()]
        assert errors == []
        assert first.result(timeout=30) == 9
        assert second.cancelled()
    finally:
        gate.set()
        pool.close()
        pool.join(timeout=30)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_another_pool_joined_from_a_done_callback_works(backend):
    """Only the pool whose results the callback's thread delivers is refused: a
    pool of its own, made and joined in the callback, is served by other threads
    (it was refused too, whatever pool it was)."""
    pool = pt.Pool(1, backend=backend)
    gate = pt.Event(backend=backend)
    got: list[object] = []
    done = threading.Event()

    def other(_):
        try:
            with pt.Pool(2, backend=backend) as inner:
                got.append(inner.map(square, range(5), timeout=30))
        except BaseException as exc:
            got.append(exc)
        finally:
            done.set()

    try:
        first = pool.submit(gated, gate, 3)
        first.add_done_callback(other)
        gate.set()
        assert done.wait(60), "the callback's own pool never finished"
        assert got == [[0, 1, 4, 9, 16]]
        assert first.result(timeout=30) == 9
    finally:
        gate.set()
        pool.close()
        pool.join(timeout=30)


def test_terminate_from_a_done_callback_on_a_thread_worker():
    """Pool.terminate() from a done callback on the thread worker that ran the task
    does not try to join that very thread (it raised 'cannot join current thread')."""
    pool = pt.Pool(2, backend="thread")
    gate = pt.Event(backend="thread")
    errors: list[BaseException] = []
    done = threading.Event()

    def stop(_):
        try:
            pool.terminate()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    try:
        first = pool.submit(gated, gate, 3)
        first.add_done_callback(stop)
        gate.set()
        assert done.wait(30), "terminate() from a done callback never returned"
        assert errors == []
        assert first.result(timeout=30) == 9
    finally:
        gate.set()
        pool.join(timeout=30)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_an_item_raising_stopiteration_fails_alone(backend):
    """A chunk's items run in a C loop (list.extend over map), which takes an item's
    StopIteration for the end of the chunk: the item fails with StopIteration all
    the same (it hung, the chunk taken for cut short and sent again)."""
    with pt.Pool(2, backend=backend) as pool:
        with pytest.raises(StopIteration):
            pool.map_async(stop_on, range(8), chunksize=4).get(60)
        with pytest.raises(StopIteration):
            pool.starmap_async(stop_on, [(x, 5) for x in range(8)], chunksize=4).get(60)
        assert pool.map(square, range(8), chunksize=4) == [x * x for x in range(8)]


def test_a_submit_racing_a_maps_end_is_not_lost():
    # A map's end (_end_run) replaces the pool's queue under the lock. A submit that
    # read the queue before it took the lock appended its task to the dropped deque:
    # the task never ran and join() waited for it for good. Here the map's end is
    # held inside its locked section until the submit waits for that lock.
    pool = Pool(1, backend="thread")  # a thread pool submits no task directly
    try:
        it = pool.imap(abs, iter(range(10**6)))  # a lazy input: the run stays open
        assert next(it) == 0
        source = inspect.getsource(Pool._submit).splitlines()
        lock_line = Pool._submit.__code__.co_firstlineno + source.index("        with self._lock:")
        submitted: list[pt.Task[int]] = []
        submitter = threading.Thread(target=lambda: submitted.append(pool.submit(abs, -7)))

        def waiting() -> bool:
            f = sys._current_frames().get(submitter.ident or 0)
            return f is not None and f.f_code is Pool._submit.__code__ and f.f_lineno == lock_line

        def hold(frame, event, arg):
            # run.queued() is called in _end_run's locked section.
            if event == "call" and frame.f_code.co_name == "queued":
                caller = frame.f_back
                if caller is not None and caller.f_code.co_name == "_end_run":
                    sys.setprofile(None)
                    submitter.start()
                    wait_until(waiting, what="the submit to wait for the pool's lock")

        sys.setprofile(hold)
        try:
            it.close()
        finally:
            sys.setprofile(None)
        submitter.join(30)
        assert submitted[0].result(timeout=30) == 7
    finally:
        pool.terminate()  # join() would wait for good for a lost task


_ITERATOR_FREED_IN_A_LOCKED_SECTION = r"""
import gc, sys, time, weakref
import polytask as pt

gc.disable()  # only the hook collects
pool = pt.Pool(2, backend="thread")
it = pool.imap(abs, iter(range(10**6)))  # a lazy input: the run is never finished
next(it)
run = it._run
it.me = it  # a cycle (an abandoned generator holding it): only the collector frees it
ref = weakref.ref(it)
del it
deadline = time.monotonic() + 30
while pool.statistics()["chunks_in_flight"] and time.monotonic() < deadline:
    time.sleep(0.01)  # the next pump reaches take_chunk


def collect_there(frame, event, arg):
    # take_chunk runs with the pool's lock held.
    if event == "call" and frame.f_code.co_name == "take_chunk":
        gc.collect()


sys.setprofile(collect_there)
task = pool.submit(abs, -1)
sys.setprofile(None)
assert task.result(timeout=30) == 1
assert ref() is None, "the iterator was not freed inside the section"
pool.statistics()
print(run.cancelled)
pool.terminate()
"""


def test_an_iterator_the_collector_frees_inside_the_pools_lock_does_not_hang():
    # Dropped unfinished, a map's iterator ends its run, which takes the pool's lock.
    # The collector frees one in a cycle wherever it runs, inside that lock's section
    # in the same thread even: the run must end later, not wait for the lock there.
    out = run_python(_ITERATOR_FREED_IN_A_LOCKED_SECTION, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]  # the run ended all the same


def test_an_iterator_dropped_on_an_idle_pool_lets_its_input_and_bar_go():
    # A dropped iterator hands its run's end over (it may be freed under the pool's
    # lock). With nothing in flight no pump comes: the end must come all the same,
    # or the input (a generator holding a file, say) stays open and the bar's
    # refresh thread keeps drawing until the pool is next used, or the exit.
    closed = threading.Event()

    def source():
        try:
            yield from itertools.count()
        finally:
            closed.set()

    with Pool(2, backend="thread") as pool:
        it = pool.imap(abs, source(), progress="force")
        bar = it._bar
        assert next(it) == 0
        wait_until(lambda: pool.statistics()["unsettled"] == 0, what="the pool to go idle")
        del it
        wait_until(closed.is_set, what="the dropped iterator's input to be closed")
        wait_until(lambda: not bar._bar.live.is_started, what="its bar to stop")


_ITERATOR_FREED_AT_EXIT = r"""
import itertools, sys
import polytask as pt

pool = pt.Pool(2, backend=sys.argv[1])
it = pool.imap(abs, itertools.count())
next(it)
it.me = it  # a cycle: the exit's last collection frees it, after the exit hooks
del it
print("end")
"""


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_an_iterator_the_collector_frees_at_exit_does_not_hang_it(backend):
    # A dropped iterator's run is ended by a thread of its own; at the exit's last
    # collections no thread starts, and waiting for one would hang the exit.
    out = run_python(_ITERATOR_FREED_AT_EXIT, backend, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["end"]
    assert "Exception ignored" not in out.stderr, out.stderr


def test_join_after_terminate_does_not_wait_for_a_thread_task_that_ignores_it():
    # A thread task that never reaches a cancellation point cannot be stopped: the
    # backend waits its grace (5 s), abandons it and fails it Cancelled, so the
    # pool's join() returns; it waited for that thread for good before.
    release = threading.Event()
    try:
        pool = Pool(1, backend="thread")
        task = pool.submit(release.wait, 60)
        wait_until(task.running)
        pool.terminate()
        pool.join(timeout=10)
        with pytest.raises(pt.Cancelled):
            task.result(0)
    finally:
        release.set()


def test_a_thread_pool_task_terminating_its_own_pool_keeps_its_result():
    # The backend spares the task that shuts it down, but it knew that task by the
    # running item's CurrentTask: a pool item runs inside a chunk (another backend
    # task), so the chunk was failed at once ("ignored its cancellation for 5 s and
    # was abandoned"), and with it the item.
    pool = Pool(1, backend="thread")

    def boss() -> str:
        pool.terminate()
        return "went on"

    try:
        assert pool.submit(boss).result(30) == "went on"
    finally:
        pool.terminate()
        pool.join(30)


def test_join_from_a_thread_pools_own_task_says_it_would_wait_for_itself():
    # The task is one of those join() waits for: after close() (or its own
    # terminate(), which spares it) join() waited for good. It says so instead.
    pool = Pool(1, backend="thread")

    def joiner() -> None:
        pool.close()
        pool.join(5)

    try:
        with pytest.raises(RuntimeError, match="own tasks"):
            pool.submit(joiner).result(30)
    finally:
        pool.terminate()
        pool.join(30)


def first_late(x, how, marks):
    """Item 1 fails at once (``how``: raises, or ends its worker, which takes the pool
    about 0.15 s to see); item 0 is in soon after that."""
    if x == 1:
        if how == "raise":
            raise ValueError("item 1")
        with open(marks, "a") as f:
            f.write("ran\n")
        os._exit(3)
    if x == 0:
        if how == "crash":
            wait_until(lambda: Path(marks).read_text(), timeout=30)
        time.sleep(0.05 if how == "raise" else 0.25)
    else:
        time.sleep(0.02)  # the rest are not all in when item 0 is
    return x


@pytest.mark.parametrize("how", ["raise", "crash"])
def test_map_raises_an_error_once_the_items_before_it_are_in(how, tmp_path):
    # The error of item 1 comes before item 0's result: that result, which lets map
    # raise the error, must wake the caller too. It did not (only the last result
    # or an error did), and map raised at its 0.25 s poll (the crash: an error
    # settled apart, by Pool._failed): 20 maps took 2-5 s more than the same 20
    # through imap. Compared with imap in the same run, not timed.
    expected = ValueError if how == "raise" else pt.WorkerCrashed
    marks = tmp_path / "marks"
    with Pool(2) as pool:
        pool.map(square, range(4))  # the workers are up
        took = {}
        for name in ["map", "imap"]:
            t0 = time.monotonic()
            for _ in range(20):
                marks.write_text("")
                fn = functools.partial(first_late, how=how, marks=str(marks))
                with pytest.raises(expected):
                    if name == "map":
                        pool.map(fn, range(60), chunksize=1)
                    else:
                        list(pool.imap(fn, range(60), chunksize=1))
            took[name] = time.monotonic() - t0
        assert took["map"] < took["imap"] + 20 * 0.08, took


def exit_3(_):
    sys.exit(3)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_callback_raising_systemexit_leaves_the_pool_working(backend, caplog):
    # map_async's callback runs in the pool's thread that settles the call:
    # SystemExit from it went through Future's callback handling (which takes
    # Exception only) into the pool's bookkeeping, and a thread pool's join()
    # then waited for good. It is logged, as an Exception from a callback is.
    pool = Pool(2, backend=backend)
    try:
        calls = [
            pool.map_async(abs, range(-5, 0), callback=exit_3),
            pool.starmap_async(pow, [(2, 3)], callback=exit_3),
            pool.apply_async(int, ("x",), error_callback=exit_3),
        ]
        assert calls[0].get(timeout=30) == [5, 4, 3, 2, 1]
        assert calls[1].get(timeout=30) == [8]
        with pytest.raises(ValueError):
            calls[2].get(timeout=30)
        assert pool.map(abs, [-1, -2]) == [1, 2]
    finally:
        pool.close()
        pool.join(timeout=30)
    assert "SystemExit" in caplog.text
