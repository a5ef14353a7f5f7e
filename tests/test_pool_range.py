"""Pool.map over a range: sent as ranges (not lists of ints), with every promise of a map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import polytask as pt
from polytask import Pool


def square(x):
    return x * x


def fail_at(x):
    if x % 1_000 == 777:
        raise ValueError(f"bad item {x}")
    return x


def crash_at(x):
    if x == 4_321:
        os._exit(5)
    return x


def grow_and_return(x):
    # Over the memory limit from the first item: the worker stops early and the
    # pool sends the rest of the range again (to a new worker).
    global _blob
    if x == 0:
        _blob = bytearray(80 << 20)
    return x


_blob = b""


@pytest.fixture(params=["process", "thread"])
def backend(request):
    return request.param


def test_map_over_ranges_in_order(backend):
    with Pool(2, backend=backend) as pool:
        for r in (range(50_000), range(7, 40_007, 3), range(100, -100, -7), range(0), range(5, 6)):
            assert pool.map(square, r) == [x * x for x in r]
        for _ in range(2):  # the second map of a function starts with large chunks
            assert pool.map(square, range(200_000)) == [x * x for x in range(200_000)]
        assert pool.map_async(square, range(10_000)).get(60) == [x * x for x in range(10_000)]
        assert list(pool.imap(square, range(1_000))) == [x * x for x in range(1_000)]


def test_an_error_in_a_range_is_reported_with_its_item(backend):
    with Pool(2, backend=backend) as pool:
        with pytest.raises(ValueError, match="bad item 777"):
            pool.map(fail_at, range(30_000))
        out = pool.map(fail_at, range(30_000), return_exceptions=True)
        bad = [i for i, x in enumerate(out) if isinstance(x, ValueError)]
        assert bad == list(range(777, 30_000, 1_000))
        assert all(out[i] == i for i in range(30_000) if i % 1_000 != 777)


def test_a_crash_in_a_range_chunk_fails_only_its_item():
    with Pool(2) as pool:
        out = pool.map(crash_at, range(10_000), return_exceptions=True)
        assert isinstance(out[4_321], pt.WorkerCrashed) and out[4_321].exitcode == 5
        assert [x for i, x in enumerate(out) if i != 4_321] == [
            i for i in range(10_000) if i != 4_321
        ]
        with pytest.raises(pt.WorkerCrashed):
            pool.map(crash_at, range(10_000))


def test_a_worker_over_its_memory_limit_leaves_the_rest_of_the_range_to_the_next():
    with Pool(1, max_memory_per_worker=60 << 20) as pool:
        assert pool.map(grow_and_return, range(5_000), chunksize=5_000) == list(range(5_000))


def test_the_executor_maps_a_range():
    with pt.Executor(2) as ex:
        assert list(ex.map(square, range(20_000))) == [x * x for x in range(20_000)]


def _sleep_then(x: float) -> float:
    import time

    time.sleep(x)
    return x


def _wait_for(path: str) -> str:
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return "released"


@pytest.mark.parametrize("ahead", [True, False])
def test_a_send_ahead_task_goes_out_before_the_previous_ones_callbacks(
    ahead: bool, tmp_path: Path
) -> None:
    # A map's chunk is marked SEND_AHEAD: its worker gets it as soon as the previous
    # result is in, not after that result is unpickled and its callbacks ran. An
    # unmarked task is still pending in those callbacks (which may cancel it).
    import threading

    from polytask._pool import pool as pool_mod
    from polytask.backends.process.backend import SEND_AHEAD, ProcessBackend

    assert pool_mod._SEND_AHEAD == SEND_AHEAD
    be = ProcessBackend(max_workers=1)
    try:
        be.submit(_sleep_then, (0.0,), {}, name="warm", timeout=None).result(60)
        # `first` runs until released, not for a fixed time: all below is in place
        # before it ends, however slowly this thread gets to it.
        release = tmp_path / "release"
        first = be.submit(_wait_for, (str(release),), {}, name="first", timeout=None)
        nxt = be.submit(_sleep_then, (0.0,), {}, name="next", timeout=None)
        if ahead:
            nxt.__dict__[SEND_AHEAD] = True
        seen: list[bool] = []
        done = threading.Event()

        def callback(_: object) -> None:
            seen.append(nxt.running() or nxt.done())
            done.set()

        first.add_done_callback(callback)
        release.touch()
        assert first.result(60) == "released" and nxt.result(60) == 0.0
        assert done.wait(30)
        assert seen == [ahead]
    finally:
        be.shutdown(wait=True)


def test_a_map_chunk_is_marked_send_ahead(tmp_path: Path) -> None:
    from polytask._pool import DEFAULT
    from polytask.backends.process.backend import SEND_AHEAD

    release = tmp_path / "release"
    with Pool(1) as pool:
        busy = pool.submit(_wait_for, str(release))  # the worker is busy: the chunk stays pending
        run = pool._start(square, None, True, 10, DEFAULT, False)
        pool._preload(run, range(20))
        chunks = list(run.chunks)
        release.touch()
        assert chunks and all(c.__dict__.get(SEND_AHEAD) for c in chunks)
        assert busy.result(60) == "released"
        assert pool.map(square, range(100), chunksize=10) == [x * x for x in range(100)]
        pool._end_run(run)
