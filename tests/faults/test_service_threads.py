"""A BaseException in a service thread (the process backend's collector, a timer
callback, the Pool's done callbacks) fails the task it concerns, clearly, and the
backend or pool goes on: the next task still works, nothing hangs."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time

import pytest

import polytask as pt
from polytask.backends import make_backend
from polytask.backends.process.backend import ProcessBackend

HANG = 60


def _raise(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise GeneratorExit("a BaseException of another kind")


class Poison:
    """Pickles fine in the worker; unpickling it in the caller raises ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_raise, (self.kind,))


def poison(kind: str) -> Poison:
    return Poison(kind)


def double(x: int) -> int:
    return 2 * x


def double_when(x: int, path: str) -> int:
    deadline = time.monotonic() + HANG
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return 2 * x


KINDS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]


def _check_poisoned(exc: BaseException | None, kind: str) -> None:
    assert isinstance(exc, pt.SerializationError), repr(exc)
    assert "could not be unpickled in the caller" in str(exc)
    assert kind in str(exc)
    assert type(exc.__cause__).__name__ == kind


@pytest.mark.parametrize("kind", ["SystemExit", "GeneratorExit"])
def test_spawn_result_that_cannot_be_unpickled_fails_only_its_task(kind):
    # The caller reads its own result here (its thread runs the unpickling).
    t = pt.spawn(poison, kind, backend="process")
    assert t.join(HANG)
    _check_poisoned(t.exception(0), kind)
    assert pt.spawn(double, 21, backend="process").result(HANG) == 42


@pytest.mark.parametrize("kind", KINDS)
def test_the_collector_survives_a_result_that_cannot_be_unpickled(kind):
    # Watched tasks are completed by the collector thread: it must live on.
    be = ProcessBackend(1)
    try:
        for _ in range(2):
            bad = be.spawn(poison, (kind,), {})
            done, _ = concurrent.futures.wait([bad], timeout=HANG)
            assert done, "the poisoned task never completed"
            _check_poisoned(bad.exception(0), kind)
            good = be.spawn(double, (4,), {})
            done, _ = concurrent.futures.wait([good], timeout=HANG)
            assert done, "the collector died: the next task hangs"
            assert good.result(0) == 8
    finally:
        be.shutdown()


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_a_done_callback_that_raises_systemexit_stops_nothing_else(backend, caplog, tmp_path):
    be = make_backend(backend, max_workers=1)
    go = tmp_path / "go"
    try:
        seen: list[object] = []
        first = be.spawn(double_when, (1, str(go)), {})
        # Queued behind it on the one worker: sent when the first completes.
        second = be.spawn(double, (2,), {})
        second.add_done_callback(lambda t: seen.append(t.result()))
        first.add_done_callback(lambda t: sys.exit("a callback called sys.exit"))
        first.add_done_callback(lambda t: seen.append("the next callback"))
        go.touch()  # the callbacks are in place: let the first task finish
        assert second.result(HANG) == 4
        assert first.result(0) == 2
        third = be.spawn(double, (3,), {})
        done, _ = concurrent.futures.wait([third], timeout=HANG)
        assert done and third.result(0) == 6
        assert sorted(map(str, seen)) == ["4", "the next callback"]
    finally:
        be.shutdown()
    assert "exception calling callback" in caplog.text
    assert "a callback called sys.exit" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_pool_submit_and_map_report_the_poisoned_item_and_go_on(kind):
    with pt.Pool(2) as pool:
        bad = pool.submit(poison, kind)
        good = pool.submit(double, 5)
        assert bad.join(HANG) and good.join(HANG)
        _check_poisoned(bad.exception(0), kind)
        assert good.result(0) == 10
        # In a map, the poisoned item's chunk is re-run item by item: only it fails.
        out = pool.map(_poison_or_double, [1, 2, "bad", 4], return_exceptions=True)
        assert out[:2] == [2, 4] and out[3] == 8
        _check_poisoned(out[2], kind="SystemExit")
        assert pool.submit(double, 6).result(HANG) == 12
        assert pool.map(double, range(100)) == [2 * x for x in range(100)]


def _poison_or_double(x: object) -> object:
    return Poison("SystemExit") if x == "bad" else 2 * x  # type: ignore[operator]


def test_pool_imap_with_a_poisoned_item_does_not_hang():
    with pt.Pool(2) as pool:
        it = pool.imap(_poison_or_double, [1, "bad", 3], return_exceptions=True)
        out = list(it)
        assert out[0] == 2 and out[2] == 6
        _check_poisoned(out[1], "SystemExit")


def test_executor_reports_the_poisoned_future_and_goes_on():
    with pt.Executor(max_workers=2) as ex:
        bad = ex.submit(poison, "SystemExit")
        done, _ = concurrent.futures.wait([bad], timeout=HANG)
        assert done
        _check_poisoned(bad.exception(0), "SystemExit")
        assert ex.submit(double, 7).result(HANG) == 14
        assert list(ex.map(double, [1, 2, 3], timeout=HANG)) == [2, 4, 6]


def _rebuild(caller: int, message: str) -> BaseException:
    if os.getpid() == caller:
        raise SystemExit("raised while unpickling in the caller")
    return ValueError(message)


class CallerPoison(Exception):
    """Round-trips in the worker (so it is sent pickled), raises SystemExit in the caller."""

    def __init__(self, caller: int) -> None:
        super().__init__(caller)
        self.caller = caller

    def __reduce__(self) -> tuple[object, tuple[int, str]]:
        return (_rebuild, (self.caller, "fine elsewhere"))


def fail_at(x: int, caller: int) -> int:
    if x == 2:
        raise CallerPoison(caller)
    return 2 * x


def test_an_exception_that_cannot_be_unpickled_in_the_caller_fails_only_its_item():
    me = os.getpid()
    with pt.Pool(2) as pool:
        out = pool.map(fail_at, [1, 2, 3, 4], [me] * 4, return_exceptions=True)
        assert out[0] == 2 and out[2:] == [6, 8]
        assert isinstance(out[1], pt.SerializationError), repr(out[1])
        assert "SystemExit" in str(out[1])
        bad = pool.submit(fail_at, 2, me)
        assert bad.join(HANG)
        assert isinstance(bad.exception(0), pt.SerializationError)
        assert pool.submit(fail_at, 5, me).result(HANG) == 10
    t = pt.spawn(fail_at, 2, me, backend="process")
    assert t.join(HANG)
    _check_poisoned(t.exception(0), "SystemExit")
    assert pt.spawn(fail_at, 3, me, backend="process").result(HANG) == 6


class ExitOnPickle:
    """Its pickling, in the worker, raises SystemExit."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        raise SystemExit("raised while pickling in the worker")


class ExitOnPickleError(Exception):
    def __reduce__(self) -> tuple[object, tuple[()]]:
        raise SystemExit("raised while pickling the exception in the worker")


def return_exit_on_pickle() -> ExitOnPickle:
    return ExitOnPickle()


def raise_exit_on_pickle() -> None:
    raise ExitOnPickleError("the task's own error")


def test_pickling_that_raises_systemexit_in_the_worker_is_an_error_not_a_crash():
    be = ProcessBackend(1)
    try:
        first = be.spawn(pid_of_worker, (), {}).result(HANG)
        with pytest.raises(pt.SerializationError, match="cannot be pickled.*SystemExit"):
            be.spawn(return_exit_on_pickle, (), {}).result(HANG)
        with pytest.raises(pt.RemoteError, match="ExitOnPickleError.*SystemExit"):
            be.spawn(raise_exit_on_pickle, (), {}).result(HANG)
        assert be.spawn(pid_of_worker, (), {}).result(HANG) == first  # the same worker
    finally:
        be.shutdown()


def pid_of_worker() -> int:
    return os.getpid()
