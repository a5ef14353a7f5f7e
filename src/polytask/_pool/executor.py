"""Executor: ``concurrent.futures.Executor`` over a :class:`Pool`.

A thin layer: every call goes to the Pool through its public API or the
internal methods named for this use (``_submit``, ``_start``, ``_start_list``,
``_preload``, ``_end_run``, ``_end_dropped``, ``_is_closed``, ``_cancel_pending``); the Executor
never reads the Pool's state. What it adds is the stdlib's contract: futures
submitted run even if never waited for, ``shutdown(wait, cancel_futures)``,
and at interpreter exit, open executors finish their work first.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from .._core.errors import Cancelled
from .._core.task import Task, wait_in_delivery_error
from .._core.timeouts import check_timeout
from .pool import DEFAULT, Pool, _Run
from .results import MapIterator
from .schedule import input_length, map_items, zip_inputs

__all__ = ["Executor"]

T = TypeVar("T")
P = ParamSpec("P")

_hook_lock = threading.Lock()

#: Executors still open, and whether the interpreter began to exit (see below).
_live_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_exiting = False
_executor_hook = False


def _executors_at_exit() -> None:
    """At interpreter exit, as ``concurrent.futures`` does: executors take no more
    work and finish what they were given (Ctrl-C during that wait ends them).

    Runs when the main thread ends, before the ``atexit`` hooks (which terminate
    the pools still open), through the hook concurrent.futures itself uses.
    """
    global _exiting
    _exiting = True
    try:
        for ex in list(_live_executors):
            if ex._owner == os.getpid():
                ex.shutdown(wait=True)
    except KeyboardInterrupt:
        left = [ex for ex in _live_executors if ex._owner == os.getpid()]
        print(
            f"polytask: interrupted (Ctrl-C) at exit: {len(left)} executor(s) not waited for; "
            "their tasks were killed",
            file=sys.stderr,
        )
        for ex in left:
            ex._pool.terminate()


def _install_executor_hook() -> None:
    global _executor_hook
    with _hook_lock:
        if not _executor_hook:
            # A private hook of the threading module, there for concurrent.futures:
            # it runs before the interpreter joins non-daemon threads and before atexit.
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_executors_at_exit)
            else:  # pragma: no cover - every supported Python has it
                import atexit

                atexit.register(_executors_at_exit)
            _executor_hook = True


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` over a :class:`Pool`.

    Drop-in for ``ProcessPoolExecutor`` (the same constructor, positional
    arguments in its order; ``mp_context`` may also be a start method name) and,
    with ``backend="thread"``, for ``ThreadPoolExecutor`` (``initializer``,
    ``initargs`` and ``thread_name_prefix`` by keyword). Usable with
    ``loop.run_in_executor``, with the Pool's crash isolation, timeouts, retries
    and batching. Futures are polytask :class:`Task` objects; docs/compat.md
    lists what differs from the stdlib. Example::

        with pt.Executor(max_workers=2) as ex:
            assert ex.submit(pow, 2, 5).result() == 32
            assert list(ex.map(abs, [-1, 2])) == [1, 2]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str = "process",
        **pool_options: Any,
    ) -> None:
        if isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
        if isinstance(mp_context, str) and mp_context not in ("spawn", "fork", "forkserver"):
            raise ValueError(
                f"mp_context {mp_context!r} is not a start method (spawn, fork, forkserver); "
                f"a backend is chosen by keyword: Executor(..., backend={mp_context!r})"
            )
        self._pool = Pool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            backend=backend,
            **pool_options,
        )
        # map() runs whose input is read lazily: shutdown() reads the rest (see there).
        self._open: set[_Run] = set()
        self._open_lock = threading.Lock()
        self._owner = os.getpid()
        _install_executor_hook()
        _live_executors.add(self)

    @property
    def pool(self) -> Pool:
        """The Pool underneath (for ``imap_unordered``, ``statistics()``...)."""
        return self._pool

    def _closed_error(self, exc: ValueError) -> RuntimeError:
        if not self._pool._is_closed():
            raise exc
        return RuntimeError("cannot schedule new futures after shutdown")

    def _check_exiting(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        """Schedule ``fn(*args, **kwargs)``; every keyword goes to ``fn``.

        Type checkers check the arguments against ``fn``'s signature (ParamSpec).
        """
        if _exiting:  # _check_exiting, inline: this is every submit's path
            self._check_exiting()
        try:
            return self._pool._submit(fn, args, kwargs, DEFAULT, None)
        except ValueError as exc:
            raise self._closed_error(exc) from exc

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> MapIterator[T]:
        """Results of ``fn`` over the inputs, in order.

        As in the stdlib, the items are submitted now, and they run even if the
        results are never read; ``timeout`` bounds the wait for results from
        this call on (``TimeoutError``, which ends the iteration and drops the
        items not started). An input without a length (a generator) is read
        lazily instead, a bounded number of items ahead of the results read, and
        its rest is read by ``shutdown()``. ``chunksize=1`` (the default) lets
        the pool size its chunks; a larger one fixes their size.
        """
        timeout = check_timeout(timeout)
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
        self._check_exiting()
        deadline = None if timeout is None else time.monotonic() + timeout
        pool = self._pool
        size = None if chunksize == 1 else chunksize
        total = input_length(iterables)
        try:
            if total is not None:
                items, star, borrowed = map_items(iterables)
                run = pool._start_list(fn, items, size, DEFAULT, star, borrowed)
                pool._preload(run, items)
            else:
                run = pool._start(
                    fn, zip_inputs(iterables), True, size, DEFAULT, len(iterables) != 1
                )
                with self._open_lock:
                    self._open = {r for r in self._open if r.input is not None}
                    self._open.add(run)
        except ValueError as exc:
            raise self._closed_error(exc) from exc
        it: MapIterator[T] = MapIterator(
            pool, run, False, total, deadline, False, timeout_ends=True, keep_if_unused=True
        )
        run.fill()  # the first items start now, as they would in the stdlib
        return it

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work, then stop the workers once the work is done.

        ``cancel_futures`` cancels what no worker has started (``map`` items
        included; their iterators raise :class:`Cancelled`); what runs finishes.
        The rest of a lazily read ``map`` input is read here, so that an iterator
        used after ``shutdown`` (after a ``with`` block) still gets every result.
        ``wait=False`` returns at once and does that in a background thread. Called
        from a task's done callback on the thread that delivers results, it cannot
        wait (it would wait for itself): it goes on as ``wait=False``, then raises
        ``RuntimeError`` unless ``wait=False`` was given (as CPython's executors do).
        """
        refuse = wait and self._pool._delivering()
        if refuse:
            wait = False
        pool = self._pool
        pool.close()
        _live_executors.discard(self)
        pool._end_dropped()  # a dropped iterator's input is not read below
        with self._open_lock:
            # Not the dropped ones: their end may be under way in another thread.
            runs = [r for r in self._open if not (r.cancelled or r.dropped)]
            self._open.clear()
        if cancel_futures:
            pool._cancel_pending(
                Cancelled(
                    "the executor was shut down with cancel_futures=True before this item ran"
                )
            )

        def finish() -> None:
            if not cancel_futures:
                for run in runs:
                    run.fill(everything=True)
            pool.join()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name="polytask-executor-shutdown", daemon=True).start()
        if refuse:
            raise wait_in_delivery_error(
                "Executor.shutdown(wait=True)",
                "The shutdown goes on in the background; pass wait=False there.",
            )
