"""What the caller holds while a Pool works: :class:`AsyncResult` and :class:`MapIterator`.

Both are filled in the backend's threads (a chunk's done callback settles a
run's results, then notifies) and read in the caller's thread, which is the
only one that waits. They talk to the Pool through ``Pool.terminate``,
``Pool._end_run`` and ``Pool._end_later`` only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from .._core.backend import fn_name
from .._core.errors import WaitTimeout
from .._core.timeouts import check_timeout
from .._progress import Progress, want_progress
from .batch import Results

#: concurrent.futures' own logger, which says what a done callback raised.
_LOGGER = logging.getLogger("concurrent.futures")


class _Run(Protocol):
    """What the caller's side reads of a map run (``pool._Run``): named here, not
    imported, so that this module stays below the Pool that imports it."""

    fn: Callable[..., Any]
    yielded: int
    aborted: BaseException | None
    input_error: BaseException | None
    _notify: Callable[[], None]

    def fill(self, everything: bool = False) -> None: ...
    def take(self) -> list[Results]: ...
    def finished(self) -> bool: ...


class _Owner(Protocol):
    """The calls the caller's side makes on its Pool."""

    def terminate(self) -> None: ...
    def _end_run(self, run: Any) -> None: ...
    def _end_later(self, run: Any, bar: Progress | None) -> None: ...


__all__ = ["AsyncResult", "MapIterator"]

T = TypeVar("T")


class AsyncResult(Generic[T]):
    """The result of ``Pool.apply_async``, ``map_async`` or ``starmap_async``.

    As ``multiprocessing.pool.AsyncResult``: ``get(timeout)`` returns the result
    or raises the task's own exception (``multiprocessing.TimeoutError`` if it is
    not ready in time), ``wait(timeout)``, ``ready()``, ``successful()``. The
    callback or error callback given to the call has run by the time
    ``ready()`` is true.
    """

    __slots__ = ("_callback", "_error_callback", "_event", "_future")

    def __init__(
        self,
        future: concurrent.futures.Future[T],
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._future = future
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[T]) -> None:
        # In the thread that completed the task, before ready() turns true. An error
        # in a callback is logged by Future's own callback handling, after this.
        try:
            exc = _exception_of(future)
            if exc is None:
                if self._callback is not None:
                    self._callback(future.result(0))
            elif self._error_callback is not None:
                self._error_callback(exc)
        except Exception:
            raise
        except BaseException:
            # SystemExit, KeyboardInterrupt: Future's callback handling lets them
            # through, into the pool's thread that settled the call, in the middle of
            # its bookkeeping (a thread pool's join() then waited for good). Logged as
            # Future logs an error.
            _LOGGER.exception("exception calling callback for %r", future)
        finally:
            self._callback = self._error_callback = None  # no cycles through them
            self._event.set()

    def ready(self) -> bool:
        """True once the call is done (and its callback has run)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """True if the call returned without raising; ValueError if it is not done yet."""
        if not self._event.is_set():
            raise ValueError(f"{self!r} not ready")
        return _exception_of(self._future) is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the call is done, at most ``timeout`` seconds."""
        self._event.wait(check_timeout(timeout))

    def get(self, timeout: float | None = None) -> T:
        """The result; the call's own exception if it raised.

        Raises ``multiprocessing.TimeoutError`` if it is not done within ``timeout``
        seconds (the call goes on).
        """
        timeout = check_timeout(timeout)
        if not self._event.wait(timeout):
            raise _wait_timeout(f"the result was not ready within {timeout:g} s (the call goes on)")
        return self._future.result(0)

    def __repr__(self) -> str:
        state = "ready" if self._event.is_set() else "pending"
        return f"<AsyncResult {state} of {self._future!r}>"


def _exception_of(future: concurrent.futures.Future[Any]) -> BaseException | None:
    try:
        return future.exception(0)
    except concurrent.futures.CancelledError as exc:
        return exc


class _Collector:
    """Gathers a ``map_async`` run's results, in the pool's threads, into its future.

    The first failed item (in input order) fails the whole call, and the items not
    started yet are dropped, as in :meth:`Pool.map`.
    """

    __slots__ = ("_lock", "future", "out", "pool", "run")

    def __init__(self, pool: _Owner, run: _Run, future: concurrent.futures.Future[list[Any]]):
        self.pool = pool
        self.run = run
        self.future = future
        self.out: list[Any] = []
        self._lock = threading.Lock()

    def notify(self) -> None:
        run = self.run
        with self._lock:
            if self.future.done():
                return
            exc: BaseException | None = None
            for values, errors in run.take():
                run.yielded += len(values)
                if errors:
                    exc = errors[min(errors)]
                    break
                self.out.extend(values)
            if exc is None and run.aborted is not None:
                exc = run.aborted
            if exc is None and not run.finished():
                return
            out, self.out = self.out, []
            if exc is None:
                self.future.set_result(out)
            else:
                self.future.set_exception(exc)
        self.pool._end_run(run)
        run._notify = _nothing  # the run no longer points back here


def _nothing() -> None:
    return None


class MapIterator(Iterator[T]):
    """The results of :meth:`Pool.imap`, :meth:`Pool.imap_unordered` and
    :meth:`Executor.map`, as they are ready.

    ``next(timeout)`` waits at most ``timeout`` seconds for the next result and
    raises ``multiprocessing.TimeoutError`` (a ``TimeoutError`` too) without
    ending the iteration, as multiprocessing's iterator does. ``close()`` (or
    leaving a ``for`` loop and dropping the iterator) drops the items no worker
    has started. A result is not kept once it was returned.
    """

    def __init__(
        self,
        pool: _Owner,
        run: _Run,
        progress: bool | str,
        total: int | None,
        deadline: float | None,
        return_exceptions: bool,
        *,
        timeout_ends: bool = False,
        keep_if_unused: bool = False,
    ) -> None:
        self._pool = pool
        self._run: _Run | None = run
        self._segs: collections.deque[Results] = collections.deque()
        self._values: list[Any] = []
        self._errors: dict[int, Any] | None = None
        self._pos = 0
        self._deadline = deadline
        self._return_exceptions = return_exceptions
        # Executor.map: its deadline counts from the call and, as in the stdlib, a
        # timeout ends the iteration (and drops what had not started).
        self._timeout_ends = timeout_ends
        # Executor.map: an iterator dropped before its first next() leaves its items
        # running, as the stdlib's submitted futures do (Executor.shutdown waits).
        self._keep_if_unused = keep_if_unused
        self._started = False
        self._wake = threading.Event()
        run._notify = self._wake.set
        self._bar = Progress(fn_name(run.fn), total) if want_progress(progress) else None

    def __iter__(self) -> MapIterator[T]:
        return self

    def __next__(self) -> T:
        return self._next(self._deadline)

    def next(self, timeout: float | None = None) -> T:
        """The next result, waiting at most ``timeout`` seconds (None: no limit)."""
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._deadline is not None:
            deadline = self._deadline if deadline is None else min(deadline, self._deadline)
        return self._next(deadline)

    def _next(self, deadline: float | None) -> T:
        self._started = True
        while True:
            values, pos = self._values, self._pos
            if pos < len(values):
                value = values[pos]
                values[pos] = None  # returned: this iterator does not keep it alive
                self._pos = pos + 1
                errors = self._errors
                if errors is not None and pos in errors:
                    exc = errors.pop(pos)
                    if not self._return_exceptions:
                        self.close()
                        raise exc
                    value = exc
                return value  # type: ignore[no-any-return]
            self._refill(deadline)

    def _refill(self, deadline: float | None) -> None:
        """Wait for the next segment of results; StopIteration at the end."""
        run = self._run
        if run is None:
            raise StopIteration
        try:
            while True:
                self._wake.clear()
                run.fill()
                self._segs.extend(run.take())
                if self._segs:
                    # Counted as yielded when handed over, so the input is pulled
                    # ahead of what was consumed, not of what arrived.
                    self._values, self._errors = self._segs.popleft()
                    self._pos = 0
                    run.yielded += len(self._values)
                    if self._bar is not None:
                        self._bar.update(run.yielded)
                    return
                if run.finished():
                    error = run.input_error
                    self.close()
                    if error is not None:
                        raise error
                    raise StopIteration
                if run.aborted is not None:
                    self.close()
                    raise run.aborted
                wait = 0.25
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        if self._timeout_ends:
                            self.close()
                        raise _wait_timeout(
                            "the map's next result was not ready within its timeout"
                        )
                    wait = min(wait, 0.25)
                self._wake.wait(wait)
        except KeyboardInterrupt:
            self._pool.terminate()
            self.close()
            raise

    def close(self) -> None:
        """Stop: the items no worker has started are dropped."""
        run, self._run = self._run, None
        if run is None:
            return
        self._segs.clear()
        self._values, self._errors = [], None
        if self._bar is not None:
            self._bar.close(run.yielded)
        self._pool._end_run(run)

    def __del__(self) -> None:
        run = self._run
        if run is not None and not (self._keep_if_unused and not self._started):
            # Only handed over, without a lock: the collector frees an iterator in a
            # cycle wherever it runs, in a section under the pool's lock (which the
            # run's end takes) in this very thread even, or under a task's or the
            # bar's. That hung; a thread of the pool's ends the run instead (_end_later).
            self._run = None
            self._pool._end_later(run, self._bar)


_timeout_type: type[Exception] | None = None


def _wait_timeout(message: str) -> Exception:
    """A wait for a result timed out: ``multiprocessing.TimeoutError``, which the
    multiprocessing API raises, and also :class:`WaitTimeout` (a builtin
    ``TimeoutError``, what ``concurrent.futures`` and the rest of polytask raise). Made on first use:
    importing multiprocessing costs more than a Pool that never times out needs."""
    global _timeout_type
    if _timeout_type is None:
        import multiprocessing

        _timeout_type = type(
            "WaitTimeout",
            (multiprocessing.TimeoutError, WaitTimeout),
            {"__module__": __name__, "__doc__": _wait_timeout.__doc__},
        )
    return _timeout_type(message)
