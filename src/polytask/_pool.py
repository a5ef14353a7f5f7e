"""Pool and Executor: submit, map, imap over a private backend, in adaptive chunks.

::

    caller thread(s)                 Pool                              backend (its own threads)
    ────────────────                 ────                              ─────────────────────────
    submit(fn, *a) ──> _Item ──┐
    map / imap / amap:         ├──> queue (deque of _Item) ──> _pump(): take a chunk
      pull input (bounded) ────┘      ^      │  (ChunkSizer picks its size)      │
                                      │      └──────── backend.spawn(_run_chunk, items) ──> worker:
                                      │                                           runs each item,
      results <── sink.settle <── _on_chunk (done callback) <── chunk Task <──── [(ok, value), ...]
      (Task._finish, or a _Run's        │  a chunk that crashed / timed out:
       ready list -> the caller)        └─ its unsettled items go back to the queue, one per chunk

A chunk is one backend task, so an item's exception stays with the item. A
chunk whose worker crashed, timed out or could not pickle its result is re-run
item by item, so only the guilty item fails; items may therefore run twice.
Pumping happens in whichever thread made room (a caller adding items, or the
backend thread completing a chunk): there is no scheduler thread of our own.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

from ._chunking import ChunkSizer
from ._errors import Cancelled, TaskTimeout, WorkerCrashed
from ._serialize import dumps_exception, fn_name, loads_exception
from ._task import Task, check_timeout, current_task
from .backends import Backend, make_backend

__all__ = ["Executor", "Pool"]

T = TypeVar("T")


class _Default:
    def __repr__(self) -> str:
        return "<pool default>"


#: "Use the pool's setting" for per-call options (None would mean "no limit").
DEFAULT: Final = _Default()

#: Chunks in flight per worker: one running, one waiting, so no worker idles a round trip.
_INFLIGHT_PER_WORKER = 2
_PROGRESS_INTERVAL = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- in the worker
def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _run_chunk(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
    remote: bool,
    max_memory: int | None,
) -> tuple[list[tuple[bool, Any]], float]:
    """Run a chunk of calls in a worker: ``([(ok, value or error), ...], seconds of work)``.

    Errors are caught per item so they do not fail the chunk-mates; in another
    process they travel pickled with their traceback (:func:`dumps_exception`).
    Fewer results than calls means the worker stopped early (over its memory
    limit, or the chunk was cancelled): the Pool re-queues the rest.
    """
    out: list[tuple[bool, Any]] = []
    me = current_task()
    start = time.perf_counter()
    for fn, args, kwargs in calls:
        if me.cancelled:  # a thread chunk that timed out: stop at the next item
            break
        try:
            value = fn(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            out.append((False, dumps_exception(exc) if remote else exc))
            del exc
        else:
            out.append((True, value))
        if max_memory is not None and _rss() > max_memory:
            from ._worker import retire_after_task

            retire_after_task()
            break
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------- items and sinks
class _Sink:
    """Where settled items go: a Task (submit) or a running map (_Run)."""

    __slots__ = ("cancelled", "sizer")

    def __init__(self, sizer: ChunkSizer) -> None:
        self.sizer = sizer
        self.cancelled = False

    def settle(self, done: list[tuple[_Item, bool, Any]]) -> None:
        raise NotImplementedError


class _Item:
    __slots__ = (
        "args",
        "attempts",
        "chunk",
        "fn",
        "index",
        "isolated",
        "kwargs",
        "settled",
        "sink",
        "started",
        "task",
        "timeout",
    )

    def __init__(
        self,
        sink: _Sink,
        index: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        task: Task[Any] | None = None,
    ) -> None:
        self.sink = sink
        self.index = index
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.task = task
        self.attempts = 0
        self.isolated = False  # runs alone: after its chunk failed, or to retry it
        self.settled = False
        self.started = False
        self.chunk: Task[Any] | None = None  # the backend task running it now

    def dropped(self) -> bool:
        return self.settled or self.sink.cancelled or (self.task is not None and self.task.done())


class _TaskSink(_Sink):
    """Items made by ``submit``: each settles its own Task."""

    __slots__ = ()

    def settle(self, done: list[tuple[_Item, bool, Any]]) -> None:
        for item, ok, value in done:
            task = item.task
            assert task is not None
            task.attempts = max(item.attempts, 1)
            if ok:
                task._finish(value)
            else:
                if isinstance(value, WorkerCrashed):
                    task.exitcode = value.exitcode
                task._finish(exc=value)


class _PoolView(Backend):
    """The backend a submitted Task reports to: waiting and cancelling go to the Pool."""

    name = "pool"

    def __init__(self, pool: Pool) -> None:
        self._pool = weakref.ref(pool)

    def submit(self, fn: Any, args: Any, kwargs: Any, *, name: str, timeout: Any) -> Task[Any]:
        raise RuntimeError("submit through the Pool")  # pragma: no cover

    def cancel(self, task: Task[Any]) -> bool:
        pool = self._pool()
        return pool._cancel_task(task) if pool is not None else False

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        pass


# ---------------------------------------------------------------------------- map runs
class _Run(_Sink):
    """One map/imap/amap call: pulls its input (bounded), yields its results."""

    __slots__ = (
        "_lock",
        "_notify",
        "ahead",
        "chunksize",
        "fn",
        "input",
        "next_index",
        "ordered",
        "pool",
        "pulled",
        "ready",
        "settled_count",
        "timeout",
        "yielded",
    )

    def __init__(
        self,
        pool: Pool,
        fn: Callable[..., Any],
        inputs: Iterator[tuple[Any, ...]],
        *,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        ahead: int | None,
    ) -> None:
        super().__init__(ChunkSizer(pool.workers, fixed=chunksize))
        self.pool = pool
        self.fn = fn
        self.input: Iterator[tuple[Any, ...]] | None = inputs
        self.ordered = ordered
        self.timeout = timeout
        self.ahead = ahead
        self.chunksize = chunksize
        self.pulled = 0
        self.yielded = 0
        self.settled_count = 0
        self.next_index = 0
        self.ready: dict[int, tuple[bool, Any]] | collections.deque[tuple[bool, Any]] = (
            {} if ordered else collections.deque()
        )
        self._lock = threading.Lock()
        self._notify: Callable[[], None] = lambda: None

    def settle(self, done: list[tuple[_Item, bool, Any]]) -> None:
        with self._lock:
            if isinstance(self.ready, dict):
                for item, ok, value in done:
                    self.ready[item.index] = (ok, value)
            else:
                self.ready.extend((ok, value) for _, ok, value in done)
            self.settled_count += len(done)
        self._notify()

    def _limit(self) -> int | None:
        if self.ahead is not None:
            return self.ahead
        # Lazy input: enough for every chunk in flight plus as many again.
        size = max(self.sizer.size(), self.chunksize or 1)
        return max(4 * self.pool.workers, 2 * self.pool._max_inflight * size)

    def fill(self) -> None:
        """Pull input items up to the bound and queue them (in the caller's thread)."""
        if self.input is None:
            return
        limit = self._limit()
        batch: list[_Item] = []
        fn, timeout = self.fn, self.timeout
        while limit is None or self.pulled - self.yielded < limit:
            try:
                args = next(self.input)
            except StopIteration:
                self.input = None
                break
            batch.append(_Item(self, self.pulled, fn, args, {}, timeout))
            self.pulled += 1
        if batch:
            self.pool._enqueue(batch)

    def take(self) -> list[tuple[bool, Any]]:
        """The results ready to yield, in order (ordered runs) or as they came."""
        out: list[tuple[bool, Any]] = []
        with self._lock:
            if isinstance(self.ready, dict):
                while self.next_index in self.ready:
                    out.append(self.ready.pop(self.next_index))
                    self.next_index += 1
            else:
                out.extend(self.ready)
                self.ready.clear()
        return out

    def finished(self) -> bool:
        return self.input is None and self.yielded >= self.pulled


def _raise_or_return(ok: bool, value: Any) -> Any:
    if ok:
        return value
    raise value


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s")

    return RateColumn()


class _Progress:
    """A rich progress bar, updated at most every 0.1 s from the caller's thread."""

    def __init__(self, description: str, total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _rate_column(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        self._id = self._bar.add_task(description, total=total)
        self._last = 0.0

    def update(self, completed: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= _PROGRESS_INTERVAL:
            self._last = now
            self._bar.update(self._id, completed=completed)

    def close(self, completed: int) -> None:
        self._bar.update(self._id, completed=completed)
        self._bar.stop()


def _want_progress(progress: bool | str) -> bool:
    if progress == "force":
        return True
    if progress is True:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    if progress is False or progress is None:
        return False
    raise ValueError(f"progress must be True, False or 'force', got {progress!r}")


# ---------------------------------------------------------------------------- the Pool
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_installed = False


def _terminate_live_pools() -> None:
    for pool in list(_live_pools):
        pool.terminate()


def _install_exit_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            from ._proc import at_shutdown

            at_shutdown(_terminate_live_pools)
            _hook_installed = True


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Pool:
    """A pool of workers for parallel map and many small tasks.

    Args:
        workers: how many tasks run at once (None: the usable CPU count).
        backend: ``"process"`` (default), ``"thread"``, or a cluster backend
            (``"dask"``, ``"ray"``) once installed; the pool owns a private one.
        timeout: default seconds each task (each item of a map) may run; past it
            a process task's worker is killed and replaced and the task raises
            :class:`TaskTimeout`.
        retries: re-run a task that failed with one of ``retry_on`` up to this
            many times (``Task.attempts`` counts the runs).
        retry_on: exception types that are worth a retry.
        max_tasks_per_worker: replace a worker after this many backend tasks
            (chunks) ran on it.
        max_memory_per_worker: replace a worker whose RSS exceeds this many
            bytes, after the item that made it grow.
        initializer, initargs: run ``initializer(*initargs)`` once in each worker
            process; module globals it sets stay for every later task there.
        start_method: ``"spawn"`` (default) or ``"fork"``.
        backend_options: passed to the backend (e.g. ``address=`` for Dask).

    Leaving the ``with`` block waits for the submitted tasks (``close`` and
    ``join``); leaving it by an exception, Ctrl-C included, kills everything
    (``terminate``). Example::

        with pt.Pool(2) as pool:
            assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str = "process",
        *,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (
            WorkerCrashed,
            TaskTimeout,
        ),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        start_method: str | None = None,
        **backend_options: Any,
    ) -> None:
        if workers is None:
            workers = _usable_cpus()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1 or None, got {workers!r}")
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name, not {type(backend).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must be an exception type or a tuple of them: {retry_on!r}")
        if max_memory_per_worker is not None and (
            not isinstance(max_memory_per_worker, int) or max_memory_per_worker <= 0
        ):
            raise ValueError(
                f"max_memory_per_worker must be a number of bytes > 0 or None, "
                f"got {max_memory_per_worker!r}"
            )
        self.workers = workers
        self.timeout = check_timeout(timeout)
        self.retries = retries
        self.retry_on = retry_on
        self._max_memory = max_memory_per_worker
        options: dict[str, Any] = dict(backend_options)
        for key, value in (
            ("start_method", start_method),
            ("initializer", initializer),
            ("max_tasks_per_worker", max_tasks_per_worker),
        ):
            if value is not None:
                options[key] = value
        if initializer is not None:
            options["initargs"] = tuple(initargs)
        if max_memory_per_worker is not None and backend != "process":
            raise ValueError(
                "max_memory_per_worker needs backend='process' (workers that can exit)"
            )
        try:
            self._backend: Backend = make_backend(backend, max_workers=workers, **options)
        except TypeError as exc:
            raise TypeError(
                f"backend {backend!r} does not take the options {sorted(options)}: {exc}"
            ) from exc
        self._remote = backend != "thread"
        self._view: Backend = type("_PoolView", (_PoolView,), {"name": backend})(self)
        self._max_inflight = _INFLIGHT_PER_WORKER * workers
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: collections.deque[_Item] = collections.deque()
        self._inflight = 0
        self._unsettled = 0  # items queued or running, for join()
        self._closed = False
        self._terminated = False
        self._submit_sink = _TaskSink(ChunkSizer(workers))
        self._ids = itertools.count()
        _live_pools.add(self)
        _install_exit_hook()

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        timeout: float | _Default | None = DEFAULT,
        name: str | None = None,
        **kwargs: Any,
    ) -> Task[T]:
        """Run ``fn(*args, **kwargs)`` on the pool; returns its :class:`Task` at once.

        ``timeout`` (default: the pool's) and ``name`` are the pool's keywords; pass
        arguments of those names to ``fn`` with ``functools.partial``. Submitted
        tasks are batched to the workers like a map's items.
        """
        return self._submit(fn, args, kwargs, timeout, name)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | _Default | None,
        name: str | None,
    ) -> Task[T]:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
        t = self._timeout_for(timeout)
        task: Task[T] = Task(self._view, name or fn_name(fn), t)
        item = _Item(self._submit_sink, next(self._ids), fn, args, kwargs, t, task)
        task._slot = item
        self._enqueue([item])
        return task

    def map(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
    ) -> list[T]:
        """``[fn(*args) for args in zip(*iterables)]`` in parallel, results in order.

        The inputs are read first (use :meth:`imap` for endless ones). Raises the
        first failing item's exception (in input order) after cancelling the rest.
        ``chunksize=None`` adapts the batch size to the measured task duration.
        ``progress=True`` shows a progress bar on a terminal (``"force"``: always).
        """
        items = list(_zip(iterables))
        run = self._start(fn, iter(items), True, chunksize, timeout, max(1, len(items)))
        return list(self._drive(run, progress, len(items), None))

    def starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
    ) -> list[T]:
        """Like :meth:`map`, with each element of ``iterable`` unpacked as the arguments."""
        items = [tuple(a) for a in iterable]
        run = self._start(fn, iter(items), True, chunksize, timeout, max(1, len(items)))
        return list(self._drive(run, progress, len(items), None))

    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
    ) -> Iterator[T]:
        """Lazy :meth:`map`: results in order as they are ready.

        The input is pulled on demand, a bounded number of items ahead of the
        results consumed, so an endless generator works in bounded memory.
        Leaving the loop early cancels the items not yet run.
        """
        run = self._start(fn, _zip(iterables), True, chunksize, timeout, None)
        return self._drive(run, progress, _length(iterables), None)

    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
    ) -> Iterator[T]:
        """Like :meth:`imap`, yielding results as they finish (any order)."""
        run = self._start(fn, _zip(iterables), False, chunksize, timeout, None)
        return self._drive(run, progress, _length(iterables), None)

    async def amap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> AsyncIterator[T]:
        """``async for r in pool.amap(fn, items)``: :meth:`imap` for asyncio code.

        The event loop never blocks: results arrive through ``call_soon_threadsafe``.
        """
        run = self._start(fn, _zip(iterables), ordered, chunksize, timeout, None)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def notify() -> None:
            loop.call_soon_threadsafe(ready.set)

        run._notify = notify
        try:
            while True:
                ready.clear()
                run.fill()
                batch = run.take()
                for ok, value in batch:
                    run.yielded += 1
                    yield _raise_or_return(ok, value)
                if run.finished():
                    return
                if not batch:
                    await ready.wait()
        finally:
            self._end_run(run)

    def close(self) -> None:
        """Accept no more work; what was submitted still runs (then :meth:`join`)."""
        with self._lock:
            self._closed = True

    def join(self, timeout: float | None = None) -> None:
        """Wait for every submitted task to finish, then stop the workers.

        Call :meth:`close` first. Raises ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        timeout = check_timeout(timeout)
        self._pump()  # drops queued tasks that were cancelled
        with self._lock:
            if not self._closed:
                raise ValueError("call close() (or terminate()) before join()")
            if not self._idle.wait_for(lambda: self._unsettled == 0, timeout):
                raise TimeoutError(
                    f"the pool's {self._unsettled} task(s) did not finish within {timeout:g} s; "
                    "call terminate() to stop them"
                )
        self._backend.shutdown(wait=True)
        _live_pools.discard(self)

    def terminate(self) -> None:
        """Stop now: tasks not finished raise :class:`Cancelled`; every worker is killed and reaped."""
        with self._lock:
            if self._terminated:
                return
            self._closed = self._terminated = True
            queued = list(self._queue)
            self._queue.clear()
        exc = Cancelled("the pool was terminated before the task finished")
        self._settle_many([(it, False, exc) for it in queued if not it.dropped()], final=True)
        self._backend.shutdown(wait=True, cancel=True)
        _live_pools.discard(self)

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            self.join()
        else:
            self.terminate()

    def statistics(self) -> dict[str, Any]:
        """Queued items, chunks in flight, and the chunk sizer's view of submitted tasks."""
        with self._lock:
            return {
                "queued": len(self._queue),
                "chunks_in_flight": self._inflight,
                "unsettled": self._unsettled,
                "closed": self._closed,
            }

    def __repr__(self) -> str:
        state = "terminated" if self._terminated else "closed" if self._closed else "running"
        return f"<Pool {self._backend.name} workers={self.workers} {state}>"

    # ------------------------------------------------------------------ map driving
    def _timeout_for(self, timeout: float | _Default | None) -> float | None:
        if isinstance(timeout, _Default):
            return self.timeout
        return check_timeout(timeout)

    def _start(
        self,
        fn: Callable[..., Any],
        inputs: Iterator[tuple[Any, ...]],
        ordered: bool,
        chunksize: int | None,
        timeout: float | _Default | None,
        ahead: int | None,
    ) -> _Run:
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__} {fn!r}")
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(f"chunksize must be an int >= 1 or None, got {chunksize!r}")
        self._check_open()
        return _Run(
            self,
            fn,
            inputs,
            ordered=ordered,
            chunksize=chunksize,
            timeout=self._timeout_for(timeout),
            ahead=ahead,
        )

    def _drive(
        self,
        run: _Run,
        progress: bool | str,
        total: int | None,
        deadline: float | None,
    ) -> Iterator[Any]:
        wake = threading.Event()
        run._notify = wake.set
        bar = _Progress(fn_name(run.fn), total) if _want_progress(progress) else None
        try:
            while True:
                wake.clear()
                run.fill()
                batch = run.take()
                for ok, value in batch:
                    run.yielded += 1
                    yield _raise_or_return(ok, value)
                if bar is not None:
                    bar.update(run.yielded)
                if run.finished():
                    return
                if not batch:
                    wait = 0.25
                    if deadline is not None:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            raise TimeoutError(
                                "the map's results were not ready within its timeout"
                            )
                        wait = min(wait, 0.25)
                    wake.wait(wait)
        except KeyboardInterrupt:
            self.terminate()
            raise
        finally:
            if bar is not None:
                bar.close(run.yielded)
            self._end_run(run)

    def _end_run(self, run: _Run) -> None:
        """The caller stopped consuming (done, error, break): drop its queued items."""
        if run.finished():
            return
        run.cancelled = True
        run.input = None
        with self._lock:
            kept: collections.deque[_Item] = collections.deque()
            for it in self._queue:
                if it.sink is not run:
                    kept.append(it)
                elif not it.settled:
                    it.settled = True
                    self._unsettled -= 1
            self._queue = kept
            self._idle.notify_all()

    # ------------------------------------------------------------------ scheduling
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this pool is closed (close(), terminate() or the end of its with-block); "
                "create a new Pool"
            )

    def _enqueue(self, items: list[_Item]) -> None:
        with self._lock:
            self._check_open()
            self._queue.extend(items)
            self._unsettled += len(items)
        self._pump()

    def _requeue(self, items: list[_Item]) -> None:
        # Called with self._lock held: back to the front, in order.
        self._queue.extendleft(reversed(items))

    def _take_chunk(self) -> list[_Item] | None:
        # Called with self._lock held.
        q = self._queue
        while q:
            first = q.popleft()
            if first.dropped():
                if not first.settled:
                    first.settled = True
                    self._unsettled -= 1
                continue
            chunk = [first]
            if first.isolated:
                return chunk
            size = first.sink.sizer.size(len(q) + 1)
            while len(chunk) < size and q:
                it = q[0]
                if it.sink is not first.sink or it.isolated or it.timeout != first.timeout:
                    break
                q.popleft()
                if not it.dropped():
                    chunk.append(it)
                elif not it.settled:
                    it.settled = True
                    self._unsettled -= 1
            return chunk
        return None

    def _pump(self) -> None:
        """Send chunks while there is room; called after anything that freed some."""
        while True:
            with self._lock:
                if self._terminated or self._inflight >= self._max_inflight:
                    if self._unsettled == 0:
                        self._idle.notify_all()
                    return
                chunk = self._take_chunk()
                if chunk is None:
                    if self._unsettled == 0:
                        self._idle.notify_all()
                    return
                self._inflight += 1
            self._launch(chunk)

    def _launch(self, chunk: list[_Item]) -> None:
        live: list[_Item] = []
        for it in chunk:
            if it.task is not None and not it.started:
                if not it.task.set_running_or_notify_cancel():
                    it.settled = True
                    with self._lock:
                        self._unsettled -= 1
                    continue
                it.task._mark_started()
            it.started = True
            live.append(it)
        if not live:
            self._chunk_gone()
            return
        n = len(live)
        t = live[0].timeout
        chunk_timeout: float | None = None
        if t is not None:
            chunk_timeout = t
            if n > 1:
                # A hung item should not wait n x T to be noticed: allow T plus a
                # generous multiple of the chunk's expected work.
                expected = live[0].sink.sizer.expected_seconds(n) or 0.0
                chunk_timeout = min(t * n, t + 4 * expected + 1.0)
        calls = [(it.fn, it.args, it.kwargs) for it in live]
        first = live[0]
        if n > 1:
            name = f"{fn_name(first.fn)} (chunk of {n})"
        elif first.task is not None:
            name = first.task.name
        else:
            name = f"{fn_name(first.fn)} (item {first.index})"
        try:
            task = self._backend.spawn(
                _run_chunk,
                (calls, self._remote, self._max_memory),
                {},
                name=name,
                timeout=chunk_timeout,
            )
        except BaseException as exc:
            self._chunk_gone()
            self._chunk_failed(live, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for it in live:
            it.chunk = task
        task.add_done_callback(lambda done: self._on_chunk(done, live))

    def _chunk_gone(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _on_chunk(self, task: Task[Any], chunk: list[_Item]) -> None:
        try:
            self._chunk_gone()
            exc = task.exception(0)
            if exc is None:
                results, work = task.result(0)
                chunk[0].sink.sizer.observe(len(results), work, task.duration or work)
                done: list[tuple[_Item, bool, Any]] = []
                for it, (ok, value) in zip(chunk, results, strict=False):
                    if not ok and self._remote:
                        value = loads_exception(*value)
                    done.append((it, ok, value))
                self._settle_many(done)
                if len(results) < len(chunk):
                    with self._lock:
                        self._requeue([it for it in chunk[len(results) :] if not it.dropped()])
            else:
                self._chunk_failed(chunk, exc)
        except BaseException as why:  # pragma: no cover - a callback must not lose items
            print(f"polytask: pool chunk callback error: {why!r}", file=sys.stderr)
            self._settle_many([(it, False, why) for it in chunk], final=True)
        self._pump()

    def _chunk_failed(self, chunk: list[_Item], exc: BaseException) -> None:
        """The chunk failed as a whole: re-run its items one by one, or fail a single one."""
        if len(chunk) == 1:
            self._settle_many([(chunk[0], False, exc)])
            return
        with self._lock:
            again = [it for it in chunk if not it.dropped()]
            for it in again:
                it.isolated = True
            if not self._terminated:
                self._requeue(again)
                return
        self._settle_many([(it, False, exc) for it in again], final=True)

    def _settle_many(self, done: list[tuple[_Item, bool, Any]], *, final: bool = False) -> None:
        """Give results to their sinks; failures worth a retry go back to the queue."""
        by_sink: dict[int, tuple[_Sink, list[tuple[_Item, bool, Any]]]] = {}
        retry: list[_Item] = []
        with self._lock:
            for it, ok, value in done:
                if it.settled:
                    continue
                it.attempts += 1
                it.chunk = None
                if (
                    not ok
                    and not final
                    and not self._terminated
                    and it.attempts <= self.retries
                    and isinstance(value, self.retry_on)
                    and not it.dropped()
                ):
                    it.isolated = True
                    retry.append(it)
                    continue
                it.settled = True
                self._unsettled -= 1
                by_sink.setdefault(id(it.sink), (it.sink, []))[1].append((it, ok, value))
            if retry:
                self._requeue(retry)
            if self._unsettled == 0:
                self._idle.notify_all()
        for sink, items in by_sink.values():
            if not sink.cancelled:
                sink.settle(items)

    def _cancel_task(self, task: Task[Any]) -> bool:
        """``Task.cancel()`` on a running submitted task: kill the chunk it runs in."""
        it = task._slot
        if not isinstance(it, _Item):
            return False
        chunk = it.chunk
        exc = Cancelled(f"task {task.name!r} was cancelled")
        self._settle_many([(it, False, exc)], final=True)
        if chunk is not None:
            # Its chunk-mates are re-run one by one when the killed chunk fails.
            chunk.cancel()
        return True


def _zip(iterables: tuple[Iterable[Any], ...]) -> Iterator[tuple[Any, ...]]:
    if not iterables:
        raise TypeError("map needs at least one iterable")
    if len(iterables) == 1:
        return ((x,) for x in iterables[0])
    return zip(*iterables, strict=False)


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- Executor
class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` over a :class:`Pool`.

    Drop-in for ``ProcessPoolExecutor`` (and usable with ``loop.run_in_executor``),
    with the Pool's crash isolation, timeouts, retries and batching. Futures are
    polytask :class:`Task` objects. Example::

        with pt.Executor(max_workers=2) as ex:
            assert ex.submit(pow, 2, 5).result() == 32
            assert list(ex.map(abs, [-1, 2])) == [1, 2]
    """

    def __init__(
        self, max_workers: int | None = None, backend: str = "process", **pool_options: Any
    ) -> None:
        self._pool = Pool(max_workers, backend, **pool_options)
        self._tasks: weakref.WeakSet[Task[Any]] = weakref.WeakSet()

    @property
    def pool(self) -> Pool:
        """The Pool underneath (for ``imap_unordered``, ``statistics()``...)."""
        return self._pool

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Task[T]:
        """Schedule ``fn(*args, **kwargs)``; every keyword goes to ``fn``."""
        try:
            return self._pool._submit(fn, args, kwargs, DEFAULT, None)
        except RuntimeError as exc:
            raise RuntimeError("cannot schedule new futures after shutdown") from exc

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Results of ``fn`` over the inputs, in order; the input is read lazily.

        ``timeout`` bounds the wait for results (``TimeoutError``), as in the
        stdlib; ``chunksize`` is ignored (the Pool sizes chunks itself).
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        run = self._pool._start(fn, _zip(iterables), True, None, DEFAULT, None)
        return self._pool._drive(run, False, None, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; ``cancel_futures`` cancels queued tasks; ``wait`` joins."""
        pool = self._pool
        pool.close()
        if cancel_futures:
            with pool._lock:
                queued = [it for it in pool._queue if it.task is not None]
            for it in queued:
                if it.task is not None:
                    it.task.cancel()
        if wait:
            pool.join()
        else:
            threading.Thread(
                target=pool.join, name="polytask-executor-shutdown", daemon=True
            ).start()
