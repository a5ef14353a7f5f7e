"""pt.Executor: a concurrent.futures.Executor over the Pool machinery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time

import pytest

import polytask as pt
from helpers import run_python, wait_until


def square(x):
    return x * x


def napper(seconds):
    time.sleep(seconds)
    return os.getpid()


def gated(gate, x):
    """x * x once ``gate`` is set (a done callback added before then is not run at once)."""
    if not gate.wait(30):
        raise TimeoutError("the gate was never opened")
    return x * x


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
        # 1 s: room for the first item on a loaded machine, far short of the second.
        it = ex.map(napper, [0.0, 2.0], timeout=1.0)
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
    wait_until(running.running, 30, "the first task to run")
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


# -- issue 12: what the stdlib's own tests found
def test_map_results_can_be_read_after_the_with_block():
    # The most common ProcessPoolExecutor pattern; it raised "backend is shut down".
    with pt.Executor(max_workers=2) as ex:
        from_list = ex.map(square, [1, 2, 3])
        from_generator = ex.map(square, (x for x in range(50)))
    assert list(from_list) == [1, 4, 9]
    assert list(from_generator) == [x * x for x in range(50)]


def test_map_submits_even_if_its_results_are_never_read(tmp_path):
    with pt.Executor(max_workers=2, backend="thread") as ex:
        ex.map(touch, [tmp_path / f"f{i}" for i in range(10)])
    assert len(list(tmp_path.iterdir())) == 10


def touch(path):
    path.write_text("x")


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_shutdown_cancel_futures_on_a_fresh_executor_lets_started_work_finish(backend):
    # It cancelled all 50: they reported running() before any worker had them.
    ex = pt.Executor(max_workers=5, backend=backend)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20 and others
    assert all(f.done() and f.exception() is None for f in others)


def test_a_thread_task_is_running_only_once_its_thread_runs_it():
    started = threading.Event()
    release = threading.Event()

    def block():
        started.set()
        release.wait(30)
        return "first"

    ran = []
    with pt.Executor(max_workers=1, backend="thread") as ex:
        first = ex.submit(block)
        assert started.wait(30)
        second = ex.submit(ran.append, "second")
        assert first.running() and not second.running()
        assert second.cancel() and second.cancelled()
        release.set()
        assert first.result(timeout=30) == "first"
    assert ran == []


def test_cancelling_a_running_thread_task_flags_it_and_returns_false():
    # It returned True and cancelled() was True while the function ran on.
    started = threading.Event()

    def loop():
        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pt.current_task().cancelled:
                return "noticed"
            time.sleep(0.01)
        return "not told"

    for make in (
        lambda: pt.Executor(max_workers=1, backend="thread"),
        lambda: pt.Pool(1, backend="thread"),
    ):
        with make() as runner:
            started.clear()
            task = runner.submit(loop)
            assert started.wait(30) and task.running()
            assert task.cancel() is False
            assert not task.cancelled()
            assert task.result(timeout=30) == "noticed"


def test_map_timeout_then_close_drops_the_items_not_started():
    release = threading.Event()
    log = []

    def log_and_wait(name):
        log.append(name)
        release.wait(30)

    with pt.Executor(max_workers=1, backend="thread") as ex:
        first = ex.submit(log_and_wait, "first")
        try:
            gen = ex.map(log_and_wait, ["second", "third"], timeout=0)
            with pytest.raises(TimeoutError):
                next(gen)
            gen.close()
        finally:
            release.set()
        first.result(timeout=30)
    assert log == ["first"]


def test_executor_takes_the_stdlib_constructors_arguments(tmp_path):
    import multiprocessing

    with pt.Executor(2, multiprocessing.get_context("fork"), remember, (7,)) as ex:
        assert ex.submit(recall).result(timeout=30) == 7
    with pt.Executor(1, "spawn", max_tasks_per_child=1) as ex:
        pids = {ex.submit(os.getpid).result(timeout=30) for _ in range(3)}
    assert len(pids) == 3
    with pt.Executor(
        2, backend="thread", initializer=remember, initargs=(8,), thread_name_prefix="Mine"
    ) as ex:
        assert ex.submit(recall).result(timeout=30) == 8
        assert ex.submit(lambda: threading.current_thread().name).result(30).startswith("Mine_")
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        pt.Executor(0)
    with pytest.raises(ValueError, match="backend='thread'"):
        pt.Executor(2, "thread")
    with pytest.raises(ValueError, match="chunksize"):
        pt.Executor(1, backend="thread").map(abs, [1], chunksize=0)


_remembered = {}


def remember(value):
    _remembered["v"] = value


def recall():
    return _remembered.get("v")


EXIT_SCRIPT = """
import atexit, sys, time
import polytask as pt

def late_print(msg):
    time.sleep(0.5)
    print(msg, flush=True)

@atexit.register
def submit_after_exit_began():
    try:
        ex.submit(late_print, "never")
    except RuntimeError as exc:
        print("refused:", exc, flush=True)

ex = pt.Executor(2, backend=sys.argv[1])
ex.submit(late_print, "apple")
"""


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_at_exit_an_executor_finishes_its_work_and_takes_no_more(tmp_path, backend):
    # As concurrent.futures: the submitted task ran to its end (it was killed with
    # the pool before), and a submit from an atexit hook is refused.
    import subprocess
    import sys

    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), backend], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "apple",
        "refused: cannot schedule new futures after interpreter shutdown",
    ]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("wait", [True, False], ids=["wait", "nowait"])
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_shutdown_from_a_done_callback_never_hangs(backend, wait, workers):
    """Done callbacks run on the thread that delivers results (a process backend's
    reader, the thread worker that ran the task): shutdown(wait=True) there would
    wait for itself (it hung with one worker, the task queued behind needing that
    thread). It goes on in the background and says so with RuntimeError, as
    CPython's executors do (whatever the number of workers); the task queued
    behind still runs. wait=False there is quiet."""
    ex = pt.Executor(workers, backend=backend)
    gate = pt.Event(backend=backend)
    errors: list[BaseException] = []
    where: list[threading.Thread] = []
    stopped = threading.Event()

    def stop(_):
        where.append(threading.current_thread())
        try:
            ex.shutdown(wait=wait)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stopped.set()

    first = ex.submit(gated, gate, 3)
    second = ex.submit(square, 4)
    first.add_done_callback(stop)  # before it finishes: not run at once, here
    gate.set()
    try:
        # Not first.result() before: a process task's caller reads its result itself.
        assert stopped.wait(30), "shutdown() called from a done callback never returned"
        assert where != [threading.current_thread()]
        assert first.result(timeout=30) == 9
        assert second.result(timeout=30) == 16
        if wait:
            assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
            assert "done callback" in str(errors[0]) and "wait=False" in str(errors[0])
        else:
            assert errors == []
        with pytest.raises(RuntimeError):
            ex.submit(square, 5)  # shut down all the same
    finally:
        if stopped.is_set():
            ex.shutdown()  # from here it waits
        else:
            ex.pool.terminate()  # the failing case: do not wait for the stuck callback


_SHUTDOWN_WHILE_A_DROPPED_RUN_ENDS = r"""
import itertools, os, sys, threading, time
import polytask as pt


def endless():
    for i in itertools.count():
        if i == 100_000:
            print("the dropped map's input was read on", flush=True)
            os._exit(3)
        yield i


in_window, go = threading.Event(), threading.Event()


def hold(frame, event, arg):
    # In the thread that ends the dropped run: the run is off pool._ended, not ended yet.
    if event == "call" and frame.f_code.co_name == "_end_run" and not in_window.is_set():
        in_window.set()
        go.wait(30)


def release(frame, event, arg):
    # The shutdown has chosen the runs whose input it reads: let the run end now.
    if event == "call" and frame.f_code is pt.Pool.join.__code__:
        go.set()


ex = pt.Executor(2, backend="thread")
it = ex.map(abs, endless())
next(it)
pool = ex.pool
deadline = time.monotonic() + 30
while pool.statistics()["unsettled"]:  # idle: no pump ends the run, only its own thread
    assert time.monotonic() < deadline, "the pool never went idle"
    time.sleep(0.01)
threading.setprofile(hold)
del it  # dropped unfinished: its run is handed to a thread that ends it
threading.setprofile(None)
assert in_window.wait(30), "the run's end was never reached"
sys.setprofile(release)
ex.shutdown(wait=True)
sys.setprofile(None)
go.set()
print("ok")
"""


def test_shutdown_does_not_read_a_dropped_maps_input_while_its_end_is_pending():
    # A map iterator dropped unfinished hands its run to a thread that ends it. A
    # shutdown in the window after that thread took the run, before it marked it
    # ended, took the run for a live one and read its input to the end: for ever,
    # for an endless one. The drop itself marks the run, so no window is left.
    out = run_python(_SHUTDOWN_WHILE_A_DROPPED_RUN_ENDS, timeout=60)
    assert out.stdout.split("\n")[0] == "ok", (out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
