"""Pool and Executor: submit, map, imap over a private backend, in adaptive chunks.

::

    caller thread(s)                   Pool (under one lock)                  backend
    ────────────────                   ─────────────────────                  ───────
    submit(fn, *a) ─> _Item ─────────> queue: single items (submitted,
                                         retried, isolated) go first
    map/imap/amap: pull the input ───> _Run.todo: bare arguments, sent
      (bounded lookahead)                as _Block chunks, runs in turn
                                            │ _pump(): ChunkSizer picks the size
                                            └──> backend.spawn(_run_chunk, chunk) ──> worker runs
                                                                                     every item
    results <── _Run.ready / Task._finish <── _on_block / _on_chunk <── (values, errors, seconds)
    (the caller's thread waits on an Event,   (done callback, in the backend's thread;
     or an asyncio.Event for amap)             then _pump() again: no thread of our own)

A chunk is one backend task, so an item's exception stays with the item. A
chunk whose worker crashed, timed out or could not pickle its result is re-run
item by item (each a one-item chunk), so only the guilty item fails; items
may therefore run twice. Pumping happens in whichever thread made room (a
caller adding items, or the backend thread completing a chunk).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

from ._chunking import ChunkSizer
from ._core.backend import fn_name
from ._core.errors import Cancelled, PolytaskError, SerializationError, TaskTimeout, WorkerCrashed
from ._core.task import Task, current_task, finish_many
from ._core.timeouts import check_timeout
from ._factories import PrimitiveFactory
from ._ipc.codec import dumps, dumps_exception, loads_exception
from ._os.proc import usable_cpus
from ._progress import Progress, want_progress
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
#: The chunk size a lazy input's lookahead is counted in (see _Run._limit).
_LOOKAHEAD_CHUNK = 4096
_PAGE = os.sysconf("SC_PAGE_SIZE")
_LIVE_STATES = ("PENDING", "RUNNING")


# ---------------------------------------------------------------------------- in the worker
def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


#: A chunk's results: the values in order (None where an item failed) and the
#: failures by position (None when every item succeeded, the common case).
Results = tuple[list[Any], "dict[int, Any] | None"]


def _run_chunk(
    fn: Callable[..., Any] | None,
    calls: list[Any],
    remote: bool,
    max_memory: int | None,
    star: bool = True,
) -> tuple[list[Any], dict[int, Any] | None, float]:
    """Run a chunk in a worker: ``(values, errors by position or None, seconds of work)``.

    ``calls`` holds argument tuples for ``fn`` (single arguments if not ``star``),
    or ``(fn, args, kwargs)`` triples when ``fn`` is None. Errors are caught per item so they do not fail the
    chunk-mates; from another process they travel pickled with their traceback
    (:func:`dumps_exception`). Fewer values than calls means the worker stopped
    early (over its memory limit, or the chunk was cancelled): the Pool re-queues
    the rest.
    """
    values: list[Any] = []
    append = values.append
    errors: dict[int, Any] | None = None
    me = current_task()
    flagged = me._task is not None  # thread tasks can be flagged cancelled; stop early then
    simple = fn is not None and max_memory is None and not flagged
    start = last_check = time.perf_counter()
    n = len(calls)
    rest = iter(calls)
    stop = False
    while not stop:
        try:
            if simple:
                assert fn is not None
                # The hot loops: nothing but the calls.
                if star:
                    for args in rest:
                        append(fn(*args))
                else:
                    for x in rest:
                        append(fn(x))
                break
            for call in rest:
                if flagged and me.cancelled:
                    stop = True
                    break
                if fn is None:
                    append(call[0](*call[1], **call[2]))
                else:
                    append(fn(*call) if star else fn(call))
                if max_memory is not None:
                    # Reading /proc costs ~10 us: at most every 5 ms, and after the last item.
                    now = time.perf_counter()
                    if now - last_check > 0.005 or len(values) == n:
                        last_check = now
                        if _rss() > max_memory:
                            from .backends.process.worker import retire_after_task

                            retire_after_task()
                            stop = True
                            break
            break
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = dumps_exception(exc) if remote else exc
            append(None)
            del exc
    return values, errors, time.perf_counter() - start


def _run_initializer(blob: bytes) -> None:
    """Run the Pool's initializer in a worker (see Pool.__init__)."""
    fn, args = pickle.loads(blob)
    fn(*args)


# ---------------------------------------------------------------------------- items and sinks
class _Sink:
    """Where settled items go: a Task (submit) or a running map (_Run)."""

    __slots__ = ("__weakref__", "cancelled", "sizer")

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
        # Reads the Task's state without its lock: a stale answer only delays the drop.
        return (
            self.settled
            or self.sink.cancelled
            or (self.task is not None and self.task._state not in _LIVE_STATES)
        )


class _TaskSink(_Sink):
    """Items made by ``submit``: each settles its own Task."""

    __slots__ = ()

    def settle(self, done: list[tuple[_Item, bool, Any]]) -> None:
        results: list[tuple[Task[Any], Any]] = []
        for item, ok, value in done:
            task = item.task
            assert task is not None
            task.attempts = item.attempts or 1
            if ok:
                results.append((task, value))
                continue
            if isinstance(value, WorkerCrashed):
                task.exitcode = value.exitcode
            try:
                task._finish(exc=value)
            except BaseException as exc:  # a done callback's: the other tasks go on
                _report("a task's done callback", exc)
            task._slot = None
        if results:
            try:
                finish_many(results)
            except BaseException as exc:
                # A done callback raised (SystemExit included): the tasks after it
                # must still finish.
                _report("a task's done callback", exc)
                for task, value in results:
                    if not task._is_done():
                        try:
                            task._finish(value)
                        except BaseException as again:
                            _report("a task's done callback", again)
            # Task and item point at each other: break the cycle now that the task is
            # done (nothing asks for its item any more), so both are freed by their
            # reference counts instead of waiting for a full GC pass.
            for task, _ in results:
                task._slot = None


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
class _Block:
    """Consecutive items of one map run, sent as one chunk."""

    __slots__ = ("args", "run", "start")

    def __init__(self, run: _Run, start: int, args: list[Any]) -> None:
        self.run = run
        self.start = start
        self.args = args


class _Run(_Sink):
    """One map/imap/amap call: pulls its input (bounded), yields its results.

    Its items wait in ``todo`` as bare argument tuples (no object per item) and
    leave it as :class:`_Block` chunks; only an item that must run alone (its
    chunk failed, or it is retried) becomes an :class:`_Item`.
    """

    __slots__ = (
        "_lock",
        "_notify",
        "aborted",
        "active",
        "ahead",
        "borrowed",
        "fn",
        "input",
        "next_index",
        "plan",
        "plan_from",
        "plan_left",
        "pool",
        "pulled",
        "ready",
        "redo",
        "star",
        "timeout",
        "todo",
        "todo_index",
        "todo_pos",
        "yielded",
    )

    def __init__(
        self,
        pool: Pool,
        fn: Callable[..., Any],
        inputs: Iterator[Any] | None,
        *,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        star: bool,
    ) -> None:
        super().__init__(pool._sizer_for(fn, chunksize))
        self.star = star
        self.pool = pool
        self.fn = fn
        self.input = inputs
        self.timeout = timeout
        self.ahead: int | None = None
        self.pulled = 0
        self.yielded = 0
        self.next_index = 0
        # Guarded by the pool's lock: items not sent yet.
        self.todo: list[Any] = []
        # todo is the caller's own list (map over a list): read it, never change it.
        self.borrowed = False
        self.todo_pos = 0
        self.todo_index = 0
        self.redo: collections.deque[_Block] = collections.deque()
        # The even cut of a known rest (see next_block): the chunk size, the sizer's
        # size it was made from, and how many items were left then.
        self.plan = 0
        self.plan_from = 0
        self.plan_left = 0
        self.active = False
        self.aborted: BaseException | None = None
        self.ready: dict[int, Results] | collections.deque[Results] = (
            {} if ordered else collections.deque()
        )
        self._lock = threading.Lock()
        self._notify: Callable[[], None] = lambda: None

    # -- the pool side (called with the pool's lock held)
    def queued(self) -> int:
        return len(self.todo) - self.todo_pos + sum(len(b.args) for b in self.redo)

    def next_block(self) -> _Block | None:
        if self.redo:
            return self.redo.popleft()
        left = len(self.todo) - self.todo_pos
        if left <= 0:
            return None
        n = min(self.sizer.size(left), left)
        if self.input is None and n < left and self.sizer.fixed is None:
            # The whole rest is known (map, or an input read to its end): cut it into
            # equal chunks, a multiple of the workers in number, so that no worker
            # gets a short extra chunk after the others went idle. The cut is kept
            # while the sizer does not grow, so every chunk of the rest is the same size.
            if n > self.plan_from or self.plan_left < left:
                workers = self.pool.workers
                k = -(-left // n)
                k = -(-k // workers) * workers
                self.plan_from, self.plan_left, self.plan = n, left, -(-left // k)
            n = min(n, self.plan)
        pos = self.todo_pos
        blk = _Block(self, self.todo_index + pos, self.todo[pos : pos + n])
        pos += n
        # Drop what was sent (amortised O(1)), so sent items are not kept alive; a
        # borrowed list is the caller's, which keeps them alive anyway.
        if 2 * pos >= len(self.todo) and not self.borrowed:
            del self.todo[:pos]
            self.todo_index += pos
            pos = 0
        self.todo_pos = pos
        return blk

    # -- results (any thread)
    def settle_block(self, start: int, values: list[Any], errors: dict[int, Any] | None) -> None:
        if not values:
            return
        with self._lock:
            if isinstance(self.ready, dict):
                self.ready[start] = (values, errors)
            else:
                self.ready.append((values, errors))
        self._notify()

    def settle(self, done: list[tuple[_Item, bool, Any]]) -> None:
        with self._lock:
            for item, ok, value in done:
                seg: Results = ([value], None) if ok else ([None], {0: value})
                if isinstance(self.ready, dict):
                    self.ready[item.index] = seg
                else:
                    self.ready.append(seg)
        self._notify()

    # -- the caller side
    def _limit(self) -> int:
        if self.ahead is not None:
            return self.ahead
        # Lazy input: enough for every chunk in flight plus as many again, counting
        # chunks of at most _LOOKAHEAD_CHUNK items: larger chunks pay off for an
        # input already in memory (map), but must not make imap read further ahead.
        size = min(max(self.sizer.size(), 1), _LOOKAHEAD_CHUNK)
        return max(4 * self.pool.workers, 2 * self.pool._max_inflight * size)

    def fill(self) -> None:
        """Pull input items up to the bound and queue them (in the caller's thread)."""
        if self.input is None:
            return
        room = self._limit() - (self.pulled - self.yielded)
        if room <= 0:
            return
        batch = list(itertools.islice(self.input, room))
        if len(batch) < room:
            self.input = None
        if batch and self.pulled == 0:
            self.sizer.observe_bytes(_args_bytes(batch[0] if self.star else (batch[0],)))
        self.pulled += len(batch)
        self.pool._feed(self, batch)

    def take(self) -> list[Results]:
        """The result segments ready to yield, in order (ordered runs) or as they came."""
        out: list[Results] = []
        with self._lock:
            if isinstance(self.ready, dict):
                ready, i = self.ready, self.next_index
                while True:
                    seg = ready.pop(i, None)
                    if seg is None:
                        break
                    out.append(seg)
                    i += len(seg[0])
                self.next_index = i
            else:
                out.extend(self.ready)
                self.ready.clear()
        return out

    def finished(self) -> bool:
        return self.input is None and self.yielded >= self.pulled

    def abort(self, exc: BaseException) -> None:
        """The pool was terminated: the caller raises ``exc`` once the ready results are out."""
        self.aborted = exc
        self._notify()


def _args_bytes(args: tuple[Any, ...]) -> int:
    """A cheap estimate of an item's size (flat: exact for bytes, str, arrays)."""
    try:
        return sum(sys.getsizeof(a) for a in args)
    except Exception:
        return 64


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
            from ._os.proc import at_shutdown

            at_shutdown(_terminate_live_pools)
            _hook_installed = True


class Pool(PrimitiveFactory):
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
    (``terminate``). ``pool.Lock()``, ``pool.Channel()`` and the other
    primitives of :class:`PrimitiveFactory` work for the pool's tasks. Example::

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
            workers = usable_cpus()
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
            if not callable(initializer):
                raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
            # Pickled here with polytask's rules (a function of __main__ travels by
            # value), so the worker never has to import the caller's script.
            try:
                blob = dumps((initializer, tuple(initargs)))
            except Exception as exc:
                raise SerializationError(
                    f"the initializer {fn_name(initializer)!r} or its initargs cannot be "
                    f"pickled for the workers: {type(exc).__name__}: {exc}"
                ) from exc
            options["initializer"] = _run_initializer
            options["initargs"] = (blob,)
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
        self._chunks_sent = 0
        # Chunks of submitted tasks in flight: id -> (backend task, items).
        self._item_chunks: dict[int, tuple[Task[Any], list[_Item]]] = {}
        self._unsettled = 0  # items queued or running, for join()
        self._closed = False
        self._terminated = False
        self._runs: collections.deque[_Run] = collections.deque()
        self._live_runs: weakref.WeakSet[_Run] = weakref.WeakSet()
        self._submit_sink = _TaskSink(ChunkSizer(workers))
        # The last function submitted and its name (see _submit).
        self._last_fn: tuple[Any, str] = (None, "")
        self._sizers: dict[Callable[..., Any], ChunkSizer] = {}
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
        # The hot path of a submit loop: a few attribute reads, two small objects,
        # one lock. The function's name is kept from the previous call (one tuple,
        # so threads submitting different functions never mix name and function).
        last = self._last_fn
        if last[0] is not fn:
            if not callable(fn):
                raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
            last = self._last_fn = (fn, fn_name(fn))
        t = self.timeout if timeout is DEFAULT else self._timeout_for(timeout)
        task: Task[T] = Task(self._view, name or last[1], t)
        item = _Item(self._submit_sink, next(self._ids), fn, args, kwargs, t, task)
        task._slot = item
        q = self._queue
        with self._lock:
            if self._closed:
                self._check_open()
            q.append(item)
            self._unsettled += 1
            if (
                self._inflight >= self.workers
                and not self._runs
                and len(q) < self._submit_sink.sizer.size(None)
            ):
                return task  # every worker is busy: let a full chunk gather (see _take_chunk)
        self._pump()
        return task

    def map(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> list[T]:
        """``[fn(*args) for args in zip(*iterables)]`` in parallel, results in order.

        The inputs are read first (use :meth:`imap` for endless ones). Raises the
        first failing item's exception (in input order); the items not started
        yet are dropped. With ``return_exceptions=True`` a failed item's
        exception takes its place in the results instead. ``chunksize=None`` adapts the batch size to the measured
        task duration. ``progress=True`` shows a progress bar on a terminal
        (``"force"``: always).
        """
        star = len(iterables) != 1
        # A list is read in place, never changed (see _Run.borrowed): copying 20,000
        # items cost more than a tenth of a map of tiny tasks before its first chunk left.
        borrowed = not star and type(iterables[0]) is list
        items = iterables[0] if borrowed else list(_zip(iterables))
        assert isinstance(items, list)
        total = len(items)
        run = self._start(fn, None, True, chunksize, timeout, star)
        run.borrowed = borrowed
        self._preload(run, items)  # the run owns (and consumes) the list now, unless borrowed
        return self._collect(run, progress, total, return_exceptions)

    def starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> list[T]:
        """Like :meth:`map`, with each element of ``iterable`` unpacked as the arguments."""
        items = [tuple(a) for a in iterable]
        total = len(items)
        run = self._start(fn, None, True, chunksize, timeout, True)
        self._preload(run, items)  # the run owns (and consumes) the list now
        return self._collect(run, progress, total, return_exceptions)

    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> Iterator[T]:
        """Lazy :meth:`map`: results in order as they are ready.

        The input is pulled on demand, a bounded number of items ahead of the
        results consumed, so an endless generator works in bounded memory.
        Leaving the loop early drops the items not started yet.
        """
        run = self._start(fn, _zip(iterables), True, chunksize, timeout, len(iterables) != 1)
        return self._drive(run, progress, _length(iterables), None, return_exceptions)

    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> Iterator[T]:
        """Like :meth:`imap`, yielding results as they finish (any order)."""
        run = self._start(fn, _zip(iterables), False, chunksize, timeout, len(iterables) != 1)
        return self._drive(run, progress, _length(iterables), None, return_exceptions)

    async def amap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: bool = False,
    ) -> AsyncIterator[T]:
        """``async for r in pool.amap(fn, items)``: :meth:`imap` for asyncio code.

        The event loop never blocks: results arrive through ``call_soon_threadsafe``.
        """
        run = self._start(fn, _zip(iterables), ordered, chunksize, timeout, len(iterables) != 1)
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
                for values, errors in batch:
                    for j, value in enumerate(values):
                        run.yielded += 1
                        if errors is not None and j in errors:
                            if not return_exceptions:
                                raise errors[j]
                            value = errors[j]
                        yield value
                if run.finished():
                    return
                if not batch and run.aborted is not None:
                    raise run.aborted
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
        self._last_fn = (None, "")  # do not keep the caller's function alive
        _live_pools.discard(self)

    def terminate(self) -> None:
        """Stop now: tasks not finished raise :class:`Cancelled`; every worker is killed and reaped."""
        with self._lock:
            if self._terminated:
                return
            self._closed = self._terminated = True
            queued = list(self._queue)
            self._queue.clear()
            runs = list(self._live_runs)
        exc = Cancelled("the pool was terminated before the task finished")
        for run in runs:
            run.abort(exc)
        self._settle_many([(it, False, exc) for it in queued if not it.dropped()], final=True)
        self._backend.shutdown(wait=True, cancel=True)
        self._last_fn = (None, "")
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
        """Counts: tasks queued, chunks in flight and sent, tasks not settled yet."""
        with self._lock:
            return {
                "queued": len(self._queue),
                "chunks_in_flight": self._inflight,
                "chunks_sent": self._chunks_sent,
                "unsettled": self._unsettled,
                "closed": self._closed,
            }

    def __repr__(self) -> str:
        state = "terminated" if self._terminated else "closed" if self._closed else "running"
        return f"<Pool {self._backend.name} workers={self.workers} {state}>"

    # ------------------------------------------------------------------ map driving
    def _sizer_for(self, fn: Callable[..., Any], chunksize: int | None) -> ChunkSizer:
        """The chunk sizer of ``fn``: what earlier maps of it measured is kept, so a
        second map of the same function starts with well-sized chunks."""
        if chunksize is not None:
            return ChunkSizer(self.workers, fixed=chunksize)
        with self._lock:
            try:
                sizer = self._sizers.get(fn)
            except TypeError:  # an unhashable callable
                return ChunkSizer(self.workers)
            if sizer is None:
                if len(self._sizers) >= 128:
                    self._sizers.clear()
                sizer = self._sizers[fn] = ChunkSizer(self.workers)
            return sizer

    def _timeout_for(self, timeout: float | _Default | None) -> float | None:
        if isinstance(timeout, _Default):
            return self.timeout
        return check_timeout(timeout)

    def _start(
        self,
        fn: Callable[..., Any],
        inputs: Iterator[Any] | None,
        ordered: bool,
        chunksize: int | None,
        timeout: float | _Default | None,
        star: bool,
    ) -> _Run:
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__} {fn!r}")
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(f"chunksize must be an int >= 1 or None, got {chunksize!r}")
        self._check_open()
        run = _Run(
            self,
            fn,
            inputs,
            ordered=ordered,
            chunksize=chunksize,
            timeout=self._timeout_for(timeout),
            star=star,
        )
        with self._lock:
            self._live_runs.add(run)
        return run

    def _preload(self, run: _Run, items: list[Any]) -> None:
        run.pulled = len(items)
        if items:
            run.sizer.observe_bytes(_args_bytes(items[0] if run.star else (items[0],)))
        self._feed(run, items)

    def _segments(
        self, run: _Run, progress: bool | str, total: int | None, deadline: float | None
    ) -> Generator[Results, None, None]:
        """Yield a run's result segments as they become ready; the caller's thread
        pulls the input, waits, draws the progress bar, and terminates on Ctrl-C."""
        wake = threading.Event()
        run._notify = wake.set
        bar = Progress(fn_name(run.fn), total) if want_progress(progress) else None
        try:
            while True:
                wake.clear()
                run.fill()
                batch = run.take()
                for seg in batch:
                    run.yielded += len(seg[0])
                    yield seg
                if batch and bar is not None:
                    bar.update(run.yielded)
                if run.finished():
                    return
                if not batch and run.aborted is not None:
                    raise run.aborted
                if not batch:
                    wait = 0.25
                    if deadline is not None:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            raise TimeoutError(
                                "the map's next result was not ready within its timeout"
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

    def _drive(
        self,
        run: _Run,
        progress: bool | str,
        total: int | None,
        deadline: float | None,
        return_exceptions: bool,
    ) -> Iterator[Any]:
        for values, errors in self._segments(run, progress, total, deadline):
            if errors is None:
                yield from values
                continue
            for j, value in enumerate(values):
                if j in errors:
                    if not return_exceptions:
                        raise errors[j]
                    yield errors[j]
                else:
                    yield value

    def _collect(
        self, run: _Run, progress: bool | str, total: int, return_exceptions: bool
    ) -> list[Any]:
        out: list[Any] = []
        segments = self._segments(run, progress, total, None)
        try:
            for values, errors in segments:
                if errors is not None:
                    for j, exc in errors.items():
                        if not return_exceptions:
                            raise exc
                        values[j] = exc
                out.extend(values)
        finally:
            segments.close()
        return out

    def _end_run(self, run: _Run) -> None:
        """The caller stopped consuming (done, error, break): drop its items not started."""
        if run.finished():
            return
        run.input = None
        with self._lock:
            run.cancelled = True
            self._unsettled -= run.queued()
            run.todo, run.todo_pos = [], 0
            run.redo.clear()
            if run.active:
                self._runs.remove(run)
                run.active = False
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

    def _feed(self, run: _Run, args: list[Any]) -> None:
        with self._lock:
            if self._terminated or run.cancelled:
                return  # the caller raises run.aborted
            if args:
                if run.todo_pos == len(run.todo):
                    run.todo_index += run.todo_pos
                    run.todo, run.todo_pos = args, 0
                else:
                    run.todo.extend(args)
                self._unsettled += len(args)
            if not run.active and (run.todo_pos < len(run.todo) or run.redo):
                self._runs.append(run)
                run.active = True
        self._pump()

    def _requeue(self, items: list[_Item]) -> None:
        # Called with self._lock held: back to the front, in order.
        self._queue.extendleft(reversed(items))

    def _drop(self, it: _Item) -> None:
        """Settle an item that will not run (called with self._lock held)."""
        if not it.settled:
            it.settled = True
            self._unsettled -= 1
        if it.task is not None:
            it.task._slot = None  # the task <-> item cycle, as in _TaskSink.settle

    def _take_chunk(self) -> list[_Item] | _Block | None:
        # Called with self._lock held. Single items (submitted, retried, isolated)
        # go first, then the map runs in turn.
        q = self._queue
        while q:
            first = q[0]
            if first.dropped():
                q.popleft()
                self._drop(first)
                continue
            if first.isolated:
                return [q.popleft()]
            if self._inflight >= self.workers:
                # Every worker has a chunk: send only full-sized chunks, so tasks
                # submitted one by one still travel in large batches.
                size = first.sink.sizer.size(None)
                if len(q) < size:
                    break
            else:
                size = first.sink.sizer.size(len(q))
            sink, timeout = first.sink, first.timeout
            chunk = [q.popleft()]
            # Runs once per submitted task: dropped() inlined.
            n, append, popleft = 1, chunk.append, q.popleft
            while n < size and q:
                it = q[0]
                if it.sink is not sink or it.isolated or it.timeout != timeout:
                    break
                popleft()
                task = it.task
                if not (
                    it.settled
                    or sink.cancelled
                    or (task is not None and task._state not in _LIVE_STATES)
                ):
                    append(it)
                    n += 1
                else:
                    self._drop(it)
            return chunk
        runs = self._runs
        while runs:
            run = runs[0]
            blk = run.next_block()
            if blk is None:
                runs.popleft()
                run.active = False
                continue
            runs.rotate(-1)
            return blk
        return None

    def _pump(self) -> None:
        """Send chunks while there is room; called after anything that freed some."""
        while True:
            with self._lock:
                if self._terminated or self._inflight >= self._max_inflight:
                    return
                chunk = self._take_chunk()
                if chunk is None:
                    if self._unsettled == 0:
                        self._idle.notify_all()
                    return
                self._inflight += 1
                self._chunks_sent += 1
            if isinstance(chunk, _Block):
                self._launch_block(chunk)
            else:
                self._launch(chunk)

    def _chunk_timeout(self, sizer: ChunkSizer, t: float | None, n: int) -> float | None:
        if t is None or n == 1:
            return t
        # A hung item should not wait n x T to be noticed: allow T plus a
        # generous multiple of the chunk's expected work.
        expected = sizer.expected_seconds(n) or 0.0
        return min(t * n, t + 4 * expected + 1.0)

    def _spawn(
        self,
        fn: Callable[..., Any] | None,
        calls: list[Any],
        name: str,
        timeout: float | None,
        star: bool = True,
    ) -> Task[Any]:
        return self._backend.spawn(
            _run_chunk,
            (fn, calls, self._remote, self._max_memory, star),
            {},
            name=name,
            timeout=timeout,
        )

    def _launch_block(self, blk: _Block) -> None:
        run = blk.run
        n = len(blk.args)
        name = f"{fn_name(run.fn)} (items {blk.start}..{blk.start + n - 1})"
        try:
            task = self._spawn(
                run.fn, blk.args, name, self._chunk_timeout(run.sizer, run.timeout, n), run.star
            )
        except BaseException as exc:
            self._chunk_gone()
            self._block_failed(blk, exc)
            if not isinstance(exc, Exception):
                raise
            return
        task.add_done_callback(lambda done: self._on_block(done, blk))

    def _launch(self, chunk: list[_Item]) -> None:
        live: list[_Item] = []
        append = live.append
        for it in chunk:
            task = it.task
            if task is not None and not it.started:
                # False if it was cancelled, or settled (_cancel_task) since it was taken.
                if not task._set_running():
                    with self._lock:
                        self._drop(it)
                    continue
                task._mark_started()
            it.started = True
            append(it)
        if not live:
            self._chunk_gone()
            self._pump()
            return
        n = len(live)
        first = live[0]
        if n > 1:
            name = f"{fn_name(first.fn)} (chunk of {n})"
        elif first.task is not None:
            name = first.task.name
        else:
            name = f"{fn_name(first.fn)} (item {first.index})"
        fn: Callable[..., Any] | None = first.fn
        for it in live:
            if it.fn is not fn or it.kwargs:
                fn = None
                break
        if fn is not None:
            # One function and no keywords (a submit loop): send the argument tuples
            # alone, which pickle smaller and run in the worker's tight loop.
            calls: list[Any] = [it.args for it in live]
        else:
            calls = [(it.fn, it.args, it.kwargs) for it in live]
        try:
            task = self._spawn(
                fn, calls, name, self._chunk_timeout(first.sink.sizer, first.timeout, n)
            )
        except BaseException as exc:
            self._chunk_gone()
            self._chunk_failed(live, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for it in live:
            it.chunk = task
        with self._lock:
            self._item_chunks[id(task)] = (task, live)
        task.add_done_callback(lambda done: self._on_chunk(done, live))

    def _chunk_gone(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _results(self, task: Task[Any], sizer: ChunkSizer) -> Results | BaseException:
        """The chunk's values and errors, or the error that kept them from the caller."""
        try:
            values, errors, work = task.result(0)
            sizer.observe(len(values), work, task.duration or work)
            if errors and self._remote:
                errors = {j: loads_exception(*e) for j, e in errors.items()}
        except BaseException as why:
            # An item's exception that unpickles here by raising (SystemExit, even):
            # the chunk fails, and its items are re-run one by one to find the guilty one.
            err = SerializationError(
                f"the results of {task.name!r} could not be taken in the caller: "
                f"{type(why).__name__}: {why}"
            )
            err.__cause__ = why
            return err
        return values, errors

    def _on_block(self, task: Task[Any], blk: _Block) -> None:
        run = blk.run
        try:
            self._chunk_gone()
            exc = task.exception(0)
            got = self._results(task, run.sizer) if exc is None else exc
            if isinstance(got, BaseException):
                self._block_failed(blk, got)
            else:
                self._block_done(blk, *got)
        except BaseException as why:
            # The bookkeeping itself failed: the block's items must not be lost.
            _report("the pool's results callback", why)
            try:
                self._block_failed(blk, _callback_error(blk.run.fn, why))
            except BaseException as again:  # pragma: no cover - nothing more to try
                _report("the pool's results callback", again)
        # The backend may keep the finished task (and so this callback) for a while:
        # do not keep the chunk's arguments alive with it.
        blk.args = []
        self._pump()

    def _block_done(self, blk: _Block, values: list[Any], errors: dict[int, Any] | None) -> None:
        run = blk.run
        retry_idx: list[int] = []
        if self.retries and errors:
            retry_idx = sorted(j for j, e in errors.items() if isinstance(e, self.retry_on))
        k = len(values)
        with self._lock:
            if run.cancelled:
                self._unsettled -= len(blk.args)
                return
            self._unsettled -= k - len(retry_idx)
            if k < len(blk.args):  # the worker stopped early: send the rest again
                run.redo.appendleft(_Block(run, blk.start + k, blk.args[k:]))
                if not run.active:
                    self._runs.append(run)
                    run.active = True
            if retry_idx:
                again = []
                for j in retry_idx:
                    args = blk.args[j] if run.star else (blk.args[j],)
                    it = _Item(run, blk.start + j, run.fn, args, {}, run.timeout)
                    it.attempts = 1
                    it.isolated = it.started = True
                    again.append(it)
                self._requeue(again)
            if self._unsettled == 0:
                self._idle.notify_all()
        if not retry_idx:
            run.settle_block(blk.start, values, errors)
            return
        # Settle the segments between the retried items.
        assert errors is not None
        lo = 0
        for j in [*retry_idx, k]:
            sub = {i - lo: e for i, e in errors.items() if lo <= i < j} or None
            run.settle_block(blk.start + lo, values[lo:j], sub)
            lo = j + 1

    def _block_failed(self, blk: _Block, exc: BaseException) -> None:
        """A whole chunk failed (crash, timeout, pickling): run its items one by one."""
        run = blk.run
        items = []
        for j, x in enumerate(blk.args):
            args = x if run.star else (x,)
            it = _Item(run, blk.start + j, run.fn, args, {}, run.timeout)
            it.isolated = it.started = True
            items.append(it)
        if len(items) == 1:
            self._settle_many([(items[0], False, exc)])
            return
        with self._lock:
            if not self._terminated and not run.cancelled:
                self._requeue(items)
                return
        self._settle_many([(it, False, exc) for it in items], final=True)

    def _on_chunk(self, task: Task[Any], chunk: list[_Item]) -> None:
        try:
            with self._lock:
                self._item_chunks.pop(id(task), None)
            self._chunk_gone()
            exc = task.exception(0)
            got = self._results(task, chunk[0].sink.sizer) if exc is None else exc
            if isinstance(got, BaseException):
                self._chunk_failed(chunk, got)
            else:
                values, errors = got
                done: list[tuple[_Item, bool, Any]]
                if errors is None:
                    # Every item succeeded (the common case): zip builds the triples in C.
                    done = list(zip(chunk, itertools.repeat(True), values))
                else:
                    done = []
                    for j, (it, value) in enumerate(zip(chunk, values, strict=False)):
                        if j in errors:
                            done.append((it, False, errors[j]))
                        else:
                            done.append((it, True, value))
                self._settle_many(done)
                if len(values) < len(chunk):
                    with self._lock:
                        self._requeue([it for it in chunk[len(values) :] if not it.dropped()])
        except BaseException as why:
            # The bookkeeping itself failed: the chunk's items must not be lost.
            _report("the pool's results callback", why)
            err = _callback_error(chunk[0].fn, why)
            self._settle_many([(it, False, err) for it in chunk], final=True)
        chunk.clear()  # see _on_block
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
        by_sink: dict[_Sink, list[tuple[_Item, bool, Any]]] = {}
        retry: list[_Item] = []
        settled = 0
        with self._lock:
            for entry in done:
                it, ok, value = entry
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
                settled += 1
                items = by_sink.get(it.sink)
                if items is None:
                    items = by_sink[it.sink] = []
                items.append(entry)
            self._unsettled -= settled
            if retry:
                self._requeue(retry)
            if self._unsettled == 0:
                self._idle.notify_all()
        for sink, items in by_sink.items():
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


def _report(what: str, exc: BaseException) -> None:
    """An error in a callback that must not end the thread running it: say so on stderr."""
    try:
        print(f"polytask: error in {what}: {type(exc).__name__}: {exc!r}", file=sys.stderr)
    except BaseException:  # pragma: no cover - stderr closed at exit
        pass


def _callback_error(fn: Callable[..., Any], why: BaseException) -> PolytaskError:
    err = PolytaskError(
        f"the pool failed to take the results of {fn_name(fn)!r} "
        f"({type(why).__name__}: {why}); the items of that chunk failed with this error"
    )
    err.__cause__ = why
    return err


def _zip(iterables: tuple[Iterable[Any], ...]) -> Iterator[Any]:
    """The items of a map: the elements themselves for one iterable, else tuples."""
    if not iterables:
        raise TypeError("map needs at least one iterable")
    if len(iterables) == 1:
        return iter(iterables[0])
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
        run = self._pool._start(fn, _zip(iterables), True, None, DEFAULT, len(iterables) != 1)
        return self._pool._drive(run, False, None, deadline, False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; ``cancel_futures`` cancels queued tasks; ``wait`` joins."""
        pool = self._pool
        pool.close()
        if cancel_futures:
            with pool._lock:
                queued = [it for it in pool._queue if it.task is not None]
                # Chunks handed to the backend that no worker has taken yet.
                for chunk, items in pool._item_chunks.values():
                    if not chunk.running() and not chunk.done():
                        queued.extend(items)
            for it in queued:
                if it.task is not None:
                    it.task.cancel()
        if wait:
            pool.join()
        else:
            threading.Thread(
                target=pool.join, name="polytask-executor-shutdown", daemon=True
            ).start()
