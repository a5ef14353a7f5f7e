"""Pool: submit, map, imap over a private backend, in adaptive chunks.

::

    caller thread(s)                   Pool (under one lock)                  backend
    ────────────────                   ─────────────────────                  ───────
    submit(fn, *a) ─> Item ──────────> queue: single items (submitted,
                                         retried, isolated) go first
    map/imap/amap: pull the input ───> _Run.todo: bare arguments, sent
      (bounded lookahead)                as Block chunks, runs in turn
                                            │ _pump(): ChunkSizer picks the size
                                            └──> backend.spawn(_run_chunk, chunk) ──> worker runs
                                                                                     every item
    results <── _Run.ready / Task._finish <── _on_done <─────────────── (values, errors, seconds)
    (the caller's thread waits on an Event,   (done callback, in the backend's thread;
     or an asyncio.Event for amap)             then _pump() again: no thread of our own)

A chunk is one backend task, so an item's exception stays with the item. A
chunk whose worker crashed, timed out or could not pickle its result is re-run
item by item (each a one-item chunk), so only the guilty item fails; items
may therefore run twice. Pumping happens in whichever thread made room (a
caller adding items, or the backend thread completing a chunk).

What is pure (which chunk goes next, how a run is cut into blocks) is in
``schedule.py``; what the worker runs is in ``batch.py``; what the caller
holds (AsyncResult, MapIterator) is in ``results.py``.
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
import types
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, TypeVarTuple, Unpack, cast, overload

from .._core import task as _task
from .._core.backend import expired_error, fn_name
from .._core.errors import (
    Cancelled,
    PolytaskError,
    SerializationError,
    TaskTimeout,
    WaitTimeout,
    WorkerCrashed,
)
from .._core.finalizing import start_thread
from .._core.task import Task, delivering, finish_many, refuse_wait_in_delivery
from .._core.timeouts import check_timeout
from .._factories import PrimitiveFactory
from .._ipc.codec import loads_exception
from .._os.proc import at_shutdown, usable_cpus
from .._progress import INTERVAL, Progress, want_progress
from ..backends import Backend, make_backend
from .batch import Results, _run_chunk, _run_items
from .chunking import ChunkSizer
from .results import AsyncResult, MapIterator, _Collector
from .schedule import (
    Block,
    Item,
    Items,
    RunQueue,
    Sink,
    args_bytes,
    chunk_timeout,
    input_length,
    map_items,
    positional_chunksize,
    star_items,
    take_chunk,
    zip_inputs,
)

__all__ = ["DEFAULT", "Pool"]

T = TypeVar("T")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

# How the calls are typed, so that a type checker checks them against ``fn``:
# * submit: as ``pt.spawn`` (see _spawn.py), three overloads, since PEP 612 allows
#   no keyword-only option (timeout=, name=) beside ``**kwargs: P.kwargs``.
# * map, imap, imap_unordered, amap: as ``builtins.map`` in typeshed, ``fn``'s parameters
#   against the element types of one or two iterables; from three on, only the
#   result type is kept. Each arity comes twice: ``return_exceptions=True`` puts
#   exceptions among the results (``list[T | BaseException]``).
# * apply, apply_async, starmap, map_async, starmap_async: as typeshed types
#   multiprocessing.Pool (their ``args``/``kwds`` or rows are not checked: a tuple
#   type could be matched against ``fn``, but a list of arguments is as valid).


class _Default:
    def __repr__(self) -> str:
        return "<pool default>"


#: "Use the pool's setting" for per-call options (None would mean "no limit").
DEFAULT: Final = _Default()

#: Chunks in flight per worker: one running, one waiting, so no worker idles a round trip.
_INFLIGHT_PER_WORKER = 2
#: The process backend's SEND_AHEAD key (not imported: a thread pool does not load
#: that backend; tests/test_pool_range.py checks that they match).
_SEND_AHEAD: Final = "_send_ahead"
#: The chunk size a lazy input's lookahead is counted in (see _Run._limit).
_LOOKAHEAD_CHUNK = 4096
#: How long a map's caller waits for a wake before it looks at its results anyway
#: (a result that did not wake it: see _Run.quiet).
_MAP_POLL = 0.25


def _weak(fn: Callable[..., Any]) -> Callable[[], Any] | None:
    """A weak reference to ``fn`` (a strong one to a builtin), or None if it has none."""
    if isinstance(fn, (types.BuiltinFunctionType, type)):
        return lambda: fn
    try:
        return weakref.ref(fn)
    except TypeError:
        return None


def _max_tasks(maxtasksperchild: Any, max_tasks_per_worker: Any) -> int | None:
    """The one limit of tasks per worker, from multiprocessing's name or ours."""
    if (
        maxtasksperchild is not None
        and max_tasks_per_worker is not None
        and maxtasksperchild != max_tasks_per_worker
    ):
        raise TypeError(
            "maxtasksperchild and max_tasks_per_worker are the same option: give one of them"
        )
    name = "max_tasks_per_worker" if max_tasks_per_worker is not None else "maxtasksperchild"
    value = max_tasks_per_worker if max_tasks_per_worker is not None else maxtasksperchild
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    return value


def _start_method(context: Any, start_method: str | None) -> str | None:
    """The start method named by a ``multiprocessing`` context (or its name), or ``start_method``.

    "forkserver" runs spawn workers: both start each worker as a fresh interpreter
    (forkserver only forks it from a server that is one), which polytask's spawn
    workers already do with their own process hygiene.
    """
    method: str | None = None
    if context is not None:
        if isinstance(context, str):
            method = context
        else:
            get = getattr(context, "get_start_method", None)
            if get is None:
                raise TypeError(
                    "context must be a multiprocessing context (multiprocessing.get_context()) "
                    f"or a start method name, got {type(context).__name__} {context!r}"
                )
            method = get()
        if method == "forkserver":
            method = "spawn"
    if start_method is not None and method is not None and start_method != method:
        raise ValueError(
            f"start_method={start_method!r} and context (start method {method!r}) disagree: "
            "give one of them"
        )
    return start_method if start_method is not None else method


# ---------------------------------------------------------------------------- items and sinks
class _TaskSink(Sink):
    """Items made by ``submit``: each settles its own Task."""

    __slots__ = ()

    def settle(self, done: list[tuple[Item, bool, Any]]) -> None:
        results: list[tuple[Task[Any], Any]] = []
        for item, ok, value in done:
            task = item.task
            assert task is not None
            task.attempts = item.attempts  # 0: it never ran (a limit of 0)
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
    """The backend a submitted Task reports to: waiting and cancelling go to the Pool.

    Waiting is the fast path of ``pool.submit(f, x).result()``: the caller waits on
    the chunk its task runs in, through the chunk's backend, so on the process
    backend it reads its own result (no hop through the collector thread, as for
    ``pt.spawn``); the chunk's done callback then settles the task in the caller.
    """

    name = "pool"

    def __init__(self, pool: Pool) -> None:
        self._pool = weakref.ref(pool)

    def watch(self, task: Task[Any]) -> None:
        # Something else waits for the task (a callback, as_completed): its chunk's
        # result must come without a caller reading for it.
        it = task._slot
        chunk = it.chunk if isinstance(it, Item) else None
        if chunk is not None and not chunk._watched:
            chunk._watch()

    def wait(self, task: Task[Any], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not task._is_done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            it = task._slot
            chunk = it.chunk if isinstance(it, Item) else None
            if chunk is not None and not chunk._is_done():
                chunk._backend.wait(chunk, remaining)
                continue
            # Queued in the pool (or its chunk's callback runs in another thread):
            # whoever runs it settles it. A lone chunk nobody reads would hold up
            # the queue, so it is read in the background from now on.
            pool = self._pool()
            if pool is not None:
                pool._unlone()
            step = 0.05 if remaining is None else min(remaining, 0.05)
            with task._condition:
                if not task._is_done():
                    task._condition.wait(step)
        return True

    def submit(self, fn: Any, args: Any, kwargs: Any, *, name: str, timeout: Any) -> Task[Any]:
        raise RuntimeError("submit through the Pool")  # pragma: no cover

    def cancel(self, task: Task[Any]) -> bool:
        pool = self._pool()
        return pool._cancel_task(task) if pool is not None else False

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        pass


# ---------------------------------------------------------------------------- map runs


class _Run(RunQueue):
    """One map/imap/amap call: pulls its input (bounded), yields its results.

    The scheduling of its items (what waits, how it is cut into blocks) is the
    :class:`RunQueue`'s, guarded by the pool's lock; this adds the input side
    (``fill``, in the consumer's thread) and the results side (``ready``, under
    the run's own lock, filled in the backend's threads).
    """

    __slots__ = (
        "_fill_lock",
        "_lock",
        "_notify",
        "aborted",
        "ahead",
        "dropped",
        "errored",
        "input_error",
        "next_index",
        "pool",
        "pulled",
        "quiet",
        "ready",
        "settled",
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
        super().__init__(pool._sizer_for(fn, chunksize), pool.workers, fn, inputs, timeout, star)
        self.pool = pool
        self.ahead: int | None = None
        self.pulled = 0
        self.yielded = 0
        self.next_index = 0
        self.aborted: BaseException | None = None
        # Its iterator was dropped unfinished (_end_later): no more input is read.
        self.dropped = False
        self.ready: dict[int, Results] | collections.deque[Results] = (
            {} if ordered else collections.deque()
        )
        self._lock = threading.Lock()
        self._notify: Callable[[], None] = lambda: None
        # Items with a result in (under _lock); whether the consumer wants waking only
        # once they all are, or an error came (see Pool._collect); and whether one
        # came: from then on every result wakes it. Apart, because the consumer asks
        # for quiet after the chunks went out, maybe after an error came.
        self.settled = 0
        self.quiet = False
        self.errored = False
        # The input raised: what it gave before runs, then this is raised in its place.
        self.input_error: BaseException | None = None
        self._fill_lock = threading.Lock()  # the consumer and a shutdown may both pull

    # -- results (any thread)
    # Once aborted (terminate()), results are no longer taken: the caller raises
    # ``aborted`` after the ones already in, whatever became of the items in flight
    # (a chunk the terminate killed fails its items with Cancelled, which
    # return_exceptions=True would have returned as results, a list of them when
    # every item was in flight, instead of raising).
    def settle_block(self, start: int, values: list[Any], errors: dict[int, Any] | None) -> None:
        if not values:
            return
        with self._lock:
            if self.aborted is not None:
                return
            if isinstance(self.ready, dict):
                self.ready[start] = (values, errors)
            else:
                self.ready.append((values, errors))
            self.settled += len(values)
            if errors is not None:
                # Woken for it, the consumer may find an earlier item still out: the
                # one that fills that gap must wake it too, so no more quiet.
                self.errored = True
            elif self.quiet and not self.errored and self.settled < self.pulled:
                return
        self._notify()

    def settle(self, done: list[tuple[Item, bool, Any]]) -> None:
        with self._lock:
            if self.aborted is not None:
                return
            for item, ok, value in done:
                if not ok:
                    self.errored = True  # as in settle_block
                seg: Results = ([value], None) if ok else ([None], {0: value})
                if isinstance(self.ready, dict):
                    self.ready[item.index] = seg
                else:
                    self.ready.append(seg)
            self.settled += len(done)
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

    def fill(self, everything: bool = False) -> None:
        """Pull input items up to the bound (or ``everything``) and queue them.

        Runs in the consumer's thread (or in ``Executor.shutdown``). If the input
        raises, the items it gave before still run and the error takes the next
        place in the results, as in ``multiprocessing``; with a fixed chunksize
        the items of the chunk it was filling are dropped with it, as there too.
        """
        with self._fill_lock:
            if self.input is None or self.dropped:
                return
            room = sys.maxsize if everything else self._limit() - (self.pulled - self.yielded)
            if room <= 0:
                return
            fixed = self.sizer.fixed
            if fixed and not everything:
                room = max(room - room % fixed, fixed)  # whole chunks (see above)
            batch: list[Any] = []
            try:
                # extend() keeps what the input gave before it raised.
                batch.extend(itertools.islice(self.input, room))
            except Exception as exc:
                self.input = None
                if fixed:
                    partial = min((self.pulled + len(batch)) % fixed, len(batch))
                    del batch[len(batch) - partial :]
                self.input_error = exc
            else:
                if len(batch) < room:
                    self.input = None
            if batch and self.pulled == 0:
                self.sizer.observe_bytes(args_bytes(batch[0] if self.star else (batch[0],)))
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
        """The pool was terminated: the caller raises ``exc`` once the ready results are out
        (the ones in now: no more are taken)."""
        with self._lock:
            self.aborted = exc
        self._notify()


def _check_callbacks(*callbacks: Any) -> None:
    for cb in callbacks:
        if cb is not None and not callable(cb):
            raise TypeError(f"a callback must be callable or None, got {type(cb).__name__}")


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
            at_shutdown(_terminate_live_pools)
            _hook_installed = True


def _forget_pools_after_fork() -> None:
    # The parent's pools are the parent's (terminating one here would kill its
    # workers); the fork emptied the shutdown hooks (see proc): a pool this child
    # makes registers the hook again.
    global _hook_installed, _hook_lock
    _live_pools.clear()
    _hook_lock = threading.Lock()
    _hook_installed = False


os.register_at_fork(after_in_child=_forget_pools_after_fork)


class Pool(PrimitiveFactory):
    """A pool of workers for parallel map and many small tasks.

    A drop-in for ``multiprocessing.Pool``: the same constructor (positional
    arguments in its order), ``apply``, ``apply_async``, ``map``, ``map_async``,
    ``starmap``, ``starmap_async``, ``imap``, ``imap_unordered`` (with their
    ``chunksize`` positional too), ``close``, ``join``, ``terminate``; see
    docs/compat.md for what differs.

    Args:
        processes: how many tasks run at once (None: the usable CPU count).
        workers: the same, by polytask's name (``Pool(workers=4)``); give one of them.
        initializer, initargs: run ``initializer(*initargs)`` once in each worker
            (process or thread) before its first task; module globals it sets stay
            for every later task there.
        maxtasksperchild: multiprocessing's name for ``max_tasks_per_worker``.
        context: a ``multiprocessing`` context, or a start method name: "spawn"
            (polytask's default), "fork", or "forkserver" (runs spawn workers).
        backend: ``"process"`` (default), ``"thread"``, or a cluster backend
            (``"dask"``, ``"ray"``) once installed; the pool owns a private one.
        timeout: default seconds each task (each item of a map) may run; past it
            a process task's worker is killed and replaced and the task raises
            :class:`TaskTimeout` (0: expired before it starts, so it never runs;
            None or ``float("inf")``: no limit).
        retries: re-run a task that failed with one of ``retry_on`` up to this
            many times (``Task.attempts`` counts the runs).
        retry_on: exception types that are worth a retry.
        max_tasks_per_worker: replace a worker after this many backend tasks
            (chunks) ran on it.
        max_memory_per_worker: replace a worker whose RSS exceeds this many
            bytes, after the item that made it grow.
        start_method: ``"spawn"`` (default) or ``"fork"`` (``context`` by name).
        backend_options: passed to the backend (e.g. ``address=`` for Dask,
            ``thread_name_prefix=`` for threads).

    Leaving the ``with`` block waits for the submitted tasks (``close`` and
    ``join``); leaving it by an exception, Ctrl-C included, kills everything
    (``terminate``). ``pool.Lock()``, ``pool.Channel()`` and the other
    primitives of :class:`PrimitiveFactory` work for the pool's tasks. Example::

        with pt.Pool(2) as pool:
            assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        workers: int | None = None,
        backend: str = "process",
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (
            WorkerCrashed,
            TaskTimeout,
        ),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: str | None = None,
        **backend_options: Any,
    ) -> None:
        if workers is not None:
            # polytask's own name for it (processes= is multiprocessing's).
            if processes is not None:
                raise TypeError("give processes= or workers=, not both (they are the same)")
            processes = workers
        workers = usable_cpus() if processes is None else processes
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(
                f"processes (the number of workers) must be an int >= 1 or None, got {workers!r}"
            )
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name, not {type(backend).__name__}")
        if initializer is not None and not callable(initializer):
            hint = (
                f"; a backend is chosen by keyword: Pool(..., backend={initializer!r})"
                if isinstance(initializer, str)
                else ""
            )
            raise TypeError(
                f"initializer must be callable, got {type(initializer).__name__} "
                f"{initializer!r}{hint}"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must be an exception type or a tuple of them: {retry_on!r}")
        max_tasks = _max_tasks(maxtasksperchild, max_tasks_per_worker)
        if max_memory_per_worker is not None and (
            isinstance(max_memory_per_worker, bool)
            or not isinstance(max_memory_per_worker, int)
            or max_memory_per_worker <= 0
        ):
            raise ValueError(
                f"max_memory_per_worker must be a number of bytes > 0 or None, "
                f"got {max_memory_per_worker!r}"
            )
        if max_memory_per_worker is not None and backend != "process":
            raise ValueError(
                "max_memory_per_worker needs backend='process' (workers that can exit)"
            )
        method = _start_method(context, start_method)
        self.workers = workers
        self.timeout = check_timeout(timeout)
        self.retries = retries
        self.retry_on = retry_on
        self._max_memory = max_memory_per_worker
        options: dict[str, Any] = dict(backend_options)
        if method is not None:
            options["start_method"] = method
        if max_tasks is not None:
            options["max_tasks_per_worker"] = max_tasks
        initargs = tuple(initargs)
        # The process backend sends multiprocessing's authkey before it unpickles
        # the initargs (a Manager proxy needs it), and a forked worker inherits
        # initargs that cannot be pickled (a multiprocessing.Queue).
        if initializer is not None:
            options["initializer"] = initializer
            options["initargs"] = initargs
        try:
            self._backend: Backend = make_backend(backend, max_workers=workers, **options)
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            raise TypeError(
                f"backend {backend!r} does not take the options {sorted(options)}: {exc}"
            ) from exc
        self._remote = backend != "thread"
        self._view: Backend = type("_PoolView", (_PoolView,), {"name": backend})(self)
        self._max_inflight = _INFLIGHT_PER_WORKER * workers
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: collections.deque[Item] = collections.deque()
        self._inflight = 0
        self._chunks_sent = 0
        # Chunks of submitted tasks in flight: id -> (backend task, items).
        self._item_chunks: dict[int, tuple[Task[Any], list[Item]]] = {}
        self._unsettled = 0  # items queued or running, for join()
        self._closed = False
        self._terminated = False
        self._runs: collections.deque[RunQueue] = collections.deque()
        # Runs whose iterator was dropped, to end soon (see _end_later).
        self._ended: collections.deque[tuple[_Run, Progress | None]] = collections.deque()
        self._live_runs: weakref.WeakSet[_Run] = weakref.WeakSet()
        self._submit_sink = _TaskSink(ChunkSizer(workers))
        # The last function submitted and its name (see _submit): weakly, so that a
        # bound method does not keep its object alive after its task is done.
        self._last_fn: tuple[Callable[[], Any] | None, str] = (None, "")
        self._sizers: weakref.WeakKeyDictionary[Callable[..., Any], ChunkSizer] = (
            weakref.WeakKeyDictionary()
        )
        self._ids = itertools.count()
        # The chunk of a lone submitted task, sent unwatched: only its caller reads
        # its result (see _launch); anything else the pool does watches it (_unlone).
        self._lone: Task[Any] | None = None
        # The lone task submitted directly (_submit_direct), by weak reference: it has
        # no done callback, its caller reads it as pt.spawn's, and it stays counted in
        # _inflight and _unsettled until the pool next looks (_take_deferred): the
        # next submit, a map, join, statistics. Settling it in a done callback cost a
        # lock, a Condition.notify_all and the callback's calls on every
        # pool.submit(f, x).result(). Weakly, so the pool keeps no result alive.
        self._deferred: weakref.ref[Task[Any]] | None = None
        # Whether submit may hand a lone task to the backend as it is (_submit_direct).
        self._direct = backend == "process" and max_memory_per_worker is None
        _live_pools.add(self)
        _install_exit_hook()

    # ------------------------------------------------------------------ public API
    @overload
    def submit(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        timeout: float | _Default | None = DEFAULT,
        name: str | None = None,
    ) -> Task[T]: ...
    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
    @overload
    def submit(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        timeout: float | _Default | None = DEFAULT,
        name: str | None = None,
        **kwargs: Any,
    ) -> Task[T]: ...
    def submit(  # type: ignore[misc]  # one implementation for TypeVarTuple and ParamSpec
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        timeout: float | _Default | None = DEFAULT,
        name: str | None = None,
        **kwargs: Any,
    ) -> Task[T]:
        """Run ``fn(*args, **kwargs)`` on the pool; returns its :class:`Task` at once.

        ``timeout`` (default: the pool's) and ``name`` are the pool's keywords; pass
        arguments of those names to ``fn`` with ``functools.partial``. Submitted
        tasks are batched to the workers like a map's items. Type checkers check
        the arguments against ``fn``'s signature, as for :func:`spawn` (keyword
        arguments for ``fn`` given together with ``timeout=`` or ``name=`` are not).
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
        if last[0] is None or last[0]() is not fn:
            if not callable(fn):
                raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
            last = self._last_fn = (_weak(fn), fn_name(fn))
        t = self.timeout if timeout is DEFAULT else self._timeout_for(timeout)
        if self._direct and not self.retries:
            with self._lock:
                if self._closed:
                    self._check_open()
                # The previous lone task, settled now if it is done (the sequential
                # submit(...).result() loop), else given its done callback below.
                pending = self._take_deferred() if self._deferred is not None else None
                direct = not self._queue and not self._runs and self._inflight < self.workers
                if direct:
                    self._inflight += 1
                    self._chunks_sent += 1
                    self._unsettled += 1
                    lone, self._lone = self._lone, None
            if pending is not None:
                pending.add_done_callback(self._direct_done)  # and watched: a queue may form
            if direct:
                return self._submit_direct(fn, args, kwargs, t, name or last[1], lone)
        task: Task[T] = Task(self._view, name or last[1], t)
        item = Item(self._submit_sink, next(self._ids), fn, args, kwargs, t, task)
        task._slot = item
        with self._lock:
            if self._closed:
                self._check_open()
            # Once anything queues, a deferred lone task is settled by a callback (see _pump).
            pending = self._take_deferred() if self._deferred is not None else None
            # Under the lock: a map's end (_end_run) replaces the deque.
            self._queue.append(item)
            self._unsettled += 1
            lone, self._lone = self._lone, None
            if (
                self._inflight >= self.workers
                and not self._runs
                and len(self._queue) < self._submit_sink.sizer.size(None)
            ):
                gather = True  # every worker is busy: let a full chunk gather (see _take_chunk)
            else:
                gather = False
        if pending is not None:
            pending.add_done_callback(self._direct_done)
        if lone is not None and not lone._is_done():
            lone._watch()  # a queue may form behind it now
        if not gather:
            self._pump()
        return task

    @overload
    def map(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> list[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> list[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> list[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> list[T | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> list[T | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> list[T | BaseException]: ...
    def map(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Any,  # Iterable, then maybe multiprocessing's positional chunksize
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``[fn(*args) for args in zip(*iterables)]`` in parallel, results in order.

        The inputs are read first (use :meth:`imap` for endless ones). Raises the
        first failing item's exception (in input order); the items not started
        yet are dropped. With ``return_exceptions=True`` a failed item's
        exception takes its place in the results instead. ``chunksize=None``
        adapts the batch size to the measured task duration; as in
        ``multiprocessing``, it may also follow the iterable positionally
        (``pool.map(fn, items, 10)``: an int after the iterables is the chunksize).
        ``progress=True`` shows a progress bar on a terminal (``"force"``: always).
        """
        iterables, chunksize = positional_chunksize(iterables, chunksize)
        items, star, borrowed = map_items(iterables)
        run = self._start_list(fn, items, chunksize, timeout, star, borrowed)
        total = len(items)
        self._preload(run, items)  # the run owns (and consumes) the list now, unless borrowed
        return self._collect(run, progress, total, return_exceptions)

    def starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> list[T]:
        """Like :meth:`map`, with each element of ``iterable`` unpacked as the arguments."""
        items = star_items(iterable)
        run = self._start_list(fn, items, chunksize, timeout, True)
        total = len(items)
        self._preload(run, items)  # the run owns (and consumes) the list now
        return self._collect(run, progress, total, return_exceptions)

    @overload
    def imap(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    @overload
    def imap(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    @overload
    def imap(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    def imap(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Any,  # Iterable, then maybe multiprocessing's positional chunksize
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> MapIterator[Any]:
        """Lazy :meth:`map`: results in order as they are ready.

        The input is pulled on demand, a bounded number of items ahead of the
        results consumed, so an endless generator works in bounded memory.
        Leaving the loop early (or ``close()``) drops the items not started yet.
        ``next(timeout)`` on the iterator waits at most that long
        (``multiprocessing.TimeoutError``), as multiprocessing's does.
        """
        iterables, chunksize = positional_chunksize(iterables, chunksize)
        run = self._start(fn, zip_inputs(iterables), True, chunksize, timeout, len(iterables) != 1)
        return MapIterator(self, run, progress, input_length(iterables), None, return_exceptions)

    @overload
    def imap_unordered(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: Literal[False] = False,
    ) -> MapIterator[T]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        chunksize: int | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any] | int,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool,
    ) -> MapIterator[T | BaseException]: ...
    def imap_unordered(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Any,  # Iterable, then maybe multiprocessing's positional chunksize
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> MapIterator[Any]:
        """Like :meth:`imap`, yielding results as they finish (any order)."""
        iterables, chunksize = positional_chunksize(iterables, chunksize)
        run = self._start(fn, zip_inputs(iterables), False, chunksize, timeout, len(iterables) != 1)
        return MapIterator(self, run, progress, input_length(iterables), None, return_exceptions)

    # -- multiprocessing.Pool's asynchronous calls
    def apply(
        self, fn: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None
    ) -> T:
        """``fn(*args, **kwds)`` on a worker; waits for its result (multiprocessing's ``apply``)."""
        return self._submit(fn, tuple(args), dict(kwds or {}), DEFAULT, None).result()

    def apply_async(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """``fn(*args, **kwds)`` on a worker, as an :class:`AsyncResult`.

        ``callback(result)`` or ``error_callback(exception)`` runs in a thread of
        the pool when the task is done, before ``ready()`` turns true; it must
        not block.
        """
        _check_callbacks(callback, error_callback)
        task = self._submit(fn, tuple(args), dict(kwds or {}), DEFAULT, None)
        return AsyncResult(task, callback, error_callback)

    def map_async(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """:meth:`map` without waiting: an :class:`AsyncResult` whose ``get()`` is the list."""
        items, star, borrowed = map_items((iterable,))
        return self._map_async(fn, items, chunksize, star, borrowed, callback, error_callback)

    def starmap_async(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """:meth:`starmap` without waiting (see :meth:`map_async`)."""
        items = star_items(iterable)
        return self._map_async(fn, items, chunksize, True, False, callback, error_callback)

    def _map_async(
        self,
        fn: Callable[..., Any],
        items: Items,
        chunksize: int | None,
        star: bool,
        borrowed: bool,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> AsyncResult[Any]:
        _check_callbacks(callback, error_callback)
        run = self._start_list(fn, items, chunksize, DEFAULT, star, borrowed)
        future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        result: AsyncResult[Any] = AsyncResult(future, callback, error_callback)
        collector = _Collector(self, run, future)
        run._notify = collector.notify
        self._preload(run, items)
        collector.notify()  # an empty input is done at once
        return result

    def _start_list(
        self,
        fn: Callable[..., Any],
        items: Items,
        chunksize: int | None,
        timeout: float | _Default | None,
        star: bool,
        borrowed: bool = False,
    ) -> _Run:
        """A run over an input read whole (map, starmap), not fed yet (see _preload)."""
        run = self._start(fn, None, True, chunksize, timeout, star)
        run.borrowed = borrowed
        return run

    @overload
    def amap(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: Literal[False] = False,
    ) -> AsyncIterator[T]: ...
    @overload
    def amap(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: Literal[False] = False,
    ) -> AsyncIterator[T]: ...
    @overload
    def amap(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: Literal[False] = False,
    ) -> AsyncIterator[T]: ...
    @overload
    def amap(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: bool,
    ) -> AsyncIterator[T | BaseException]: ...
    @overload
    def amap(
        self,
        fn: Callable[[A1, A2], T],
        iterable1: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: bool,
    ) -> AsyncIterator[T | BaseException]: ...
    @overload
    def amap(
        self,
        fn: Callable[..., T],
        iterable1: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: bool,
    ) -> AsyncIterator[T | BaseException]: ...
    async def amap(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """``async for r in pool.amap(fn, items)``: :meth:`imap` for asyncio code.

        The event loop never blocks: results arrive through ``call_soon_threadsafe``.
        """
        run = self._start(
            fn, zip_inputs(iterables), ordered, chunksize, timeout, len(iterables) != 1
        )
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
                    if run.input_error is not None:
                        raise run.input_error
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

        Call :meth:`close` first. Raises :class:`WaitTimeout` if ``timeout`` seconds pass first,
        and ``RuntimeError`` if called from a task's done callback on the thread that
        delivers results, or from one of a thread pool's own tasks (it would wait for
        itself); join from another thread then.
        """
        timeout = check_timeout(timeout)
        refuse_wait_in_delivery(
            "Pool.join()",
            "Join from another thread (close() alone already stops new work).",
            self._backend,
        )
        runs_here = getattr(self._backend, "runs_here", None)
        if runs_here is not None and runs_here():
            # A thread pool's own task: it is one of the tasks join() waits for (after a
            # terminate() too, since the task that calls it is spared). It hung for good.
            raise RuntimeError(
                "Pool.join() was called from one of the pool's own tasks, which it would "
                "wait for (itself included); join from the thread that made the pool"
            )
        self._unlone()
        self._pump()  # drops queued tasks that were cancelled
        with self._lock:
            if not self._closed:
                raise ValueError("call close() (or terminate()) before join()")
            if not self._idle.wait_for(lambda: self._unsettled == 0, timeout):
                raise WaitTimeout(
                    f"the pool's {self._unsettled} task(s) did not finish within {timeout:g} s; "
                    "call terminate() to stop them"
                )
        self._backend.shutdown(wait=True)
        self._last_fn = (None, "")  # do not keep the caller's function alive
        _live_pools.discard(self)

    def terminate(self) -> None:
        """Stop now: tasks not finished raise :class:`Cancelled`; every worker is killed and reaped.

        A map running meanwhile raises :class:`Cancelled` too (``return_exceptions=True``
        or not), once the results that were in are given.
        """
        if self._ended:
            self._end_dropped()  # their bars too
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
        # Queued: not started (this time; a retry waiting keeps its past attempts).
        self._settle_many(
            [(it, False, exc) for it in queued if not it.dropped()], final=True, ran=False
        )
        self._backend.shutdown(wait=True, cancel=True)
        self._last_fn = (None, "")
        _live_pools.discard(self)

    def __enter__(self) -> Pool:
        self._check_open()
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
        if self._ended:
            self._end_dropped()
        with self._lock:
            if self._deferred is not None:
                task = self._deferred()
                if task is None or task._is_done():
                    self._take_deferred()
            return {
                "queued": len(self._queue),
                "chunks_in_flight": self._inflight,
                "chunks_sent": self._chunks_sent,
                "unsettled": self._unsettled,
                "closed": self._closed,
            }

    # ------------------------------------------------------------------ for the Executor
    def _is_closed(self) -> bool:
        """Whether the pool takes no more work (``close``, ``terminate``)."""
        return self._closed

    def _delivering(self) -> bool:
        """Whether this thread delivers this pool's results (a done callback there
        cannot wait for them: see :func:`~polytask._core.task.delivering`)."""
        return delivering(self._backend)

    def _cancel_pending(self, exc: BaseException) -> None:
        """Cancel what no worker has started: queued tasks, tasks of chunks still
        pending, and the map runs (their consumers raise ``exc``); what runs finishes."""
        with self._lock:
            tasks = [it.task for it in self._queue if it.task is not None]
            for chunk, items in self._item_chunks.values():
                # A chunk a worker has taken is running as a whole, as the stdlib's
                # work item taken by a worker is (even if its thread has not
                # reached every task of it yet).
                if chunk._state == "PENDING":
                    tasks.extend(it.task for it in items if it.task is not None)
            runs = list(self._live_runs)
        for task in tasks:
            # Only a task no worker has started is pending: running ones finish.
            concurrent.futures.Future.cancel(task)
        for run in runs:
            if not run.finished():
                run.abort(exc)
                self._end_run(run)

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
                if sizer is None:
                    if len(self._sizers) >= 128:
                        self._sizers.clear()
                    sizer = self._sizers[fn] = ChunkSizer(self.workers)
            except TypeError:  # an unhashable callable, or one without weak references
                return ChunkSizer(self.workers)
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

    def _preload(self, run: _Run, items: Items) -> None:
        run.pulled = len(items)
        if items:
            first: Any = items[0]
            run.sizer.observe_bytes(args_bytes(first if run.star else (first,)))
        self._feed(run, items)

    def _segments(
        self, run: _Run, progress: bool | str, total: int | None
    ) -> Generator[Results, None, None]:
        """Yield the result segments of a map over a list as they become ready; the
        caller's thread waits, draws the progress bar, and terminates on Ctrl-C."""
        wake = threading.Event()
        run._notify = wake.set
        # This thread only waits: it redraws the bar itself (see Progress's ticker).
        bar = Progress(fn_name(run.fn), total, ticker=False) if want_progress(progress) else None
        try:
            while True:
                wake.clear()
                run.fill()
                batch = run.take()
                for seg in batch:
                    run.yielded += len(seg[0])
                    yield seg
                if bar is not None:
                    bar.update(run.yielded)  # redrawn at most every INTERVAL
                if run.finished():
                    return
                if not batch and run.aborted is not None:
                    raise run.aborted
                if not batch:
                    wake.wait(_MAP_POLL if bar is None else INTERVAL)
        except KeyboardInterrupt:
            self.terminate()
            raise
        finally:
            if bar is not None:
                bar.close(run.yielded)
            self._end_run(run)

    def _collect(
        self, run: _Run, progress: bool | str, total: int, return_exceptions: bool
    ) -> list[Any]:
        out: list[Any] = []
        if not want_progress(progress):
            # The whole input is queued and nothing is drawn: waking this thread for
            # each chunk's results only takes the GIL from the thread unpickling the
            # next (on a 2-core machine a 20,000-item map of x + 1 took 1.93 ms, 0.26
            # of it that hand-over). An error still wakes it at once, and from then on
            # each result does (see _Run.settle_block).
            run.quiet = True
        segments = self._segments(run, progress, total)
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
            kept: collections.deque[Item] = collections.deque()
            for it in self._queue:
                if it.sink is not run:
                    kept.append(it)
                elif not it.settled:
                    it.settled = True
                    self._unsettled -= 1
            self._queue = kept
            self._idle.notify_all()
        self._cancel_chunks(run)

    def _end_later(self, run: _Run, bar: Progress | None) -> None:
        """:meth:`_end_run` soon, in a thread of its own, or at the next pump (or
        statistics, terminate, an Executor's shutdown) if that comes first: called
        from a finalizer, which may run anywhere, under any lock of this thread's, so
        it only appends to a deque (atomic, and takes no lock) and starts a thread.

        The thread, because no pump may come: a pool with nothing in flight (every
        result in, the consumer gone) kept the run, its input (a generator and what
        it holds open) and its bar (drawn by its refresh thread) until it was next
        used, or until the exit.

        The run is marked dropped here, at once: between that thread taking it off
        ``_ended`` and ending it, an Executor's shutdown would otherwise take it for
        a live run and read its input to the end (for ever, for an endless one)."""
        run.dropped = True  # a plain store: no lock, as above
        self._ended.append((run, bar))
        # At the exit, none starts: the exit hook's terminate() has ended the run.
        start_thread(self._end_dropped_here, "polytask-pool-end-run")

    def _end_dropped(self) -> None:
        """End the runs :meth:`_end_later` left (called with no lock held)."""
        while self._ended:
            try:
                run, bar = self._ended.popleft()
            except IndexError:  # another thread took the last one
                return
            if bar is not None:
                bar.close(run.yielded)
            self._end_run(run)

    def _end_dropped_here(self) -> None:
        # The thread _end_later starts: an error is said, not raised into nothing.
        try:
            self._end_dropped()
        except BaseException as exc:
            _report("ending a dropped map iterator's run", exc)

    def _cancel_chunks(self, run: _Run) -> None:
        """Cancel the run's chunks that no worker has started; running ones finish."""
        for chunk in list(run.chunks):
            concurrent.futures.Future.cancel(chunk)  # only a pending one: never kills

    # ------------------------------------------------------------------ scheduling
    def _check_open(self) -> None:
        if self._closed:
            # ValueError, as multiprocessing.Pool's "Pool not running".
            raise ValueError(
                "Pool not running: it was closed (close(), terminate() or the end of its "
                "with-block); create a new Pool"
            )

    def _submit_direct(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        name: str,
        lone: Task[Any] | None,
    ) -> Task[T]:
        """A task submitted while a worker is free and nothing waits: the backend's
        own task, as ``pt.spawn`` makes it (called with a slot of _inflight taken).

        No item, no chunk, no thread hop, no done callback: its caller reads the
        result itself, and the pool settles it later (see _deferred), unless work
        queued meanwhile or another lone task runs (then it is watched and settled by
        its callback). Only without retries and memory limits, which need the item
        machinery.
        """
        if lone is not None and not lone._is_done():
            lone._watch()
        try:
            task = self._backend.spawn(fn, args, kwargs, name=name, timeout=timeout)
        except BaseException as exc:
            with self._lock:
                self._inflight -= 1
                self._unsettled -= 1
                if self._unsettled == 0:
                    self._idle.notify_all()
            if not isinstance(exc, Exception):
                raise
            # As for a chunk that could not be sent: the task fails, submit does not,
            # and the try is charged, as there (a map's item that cannot be sent is
            # tried once too).
            failed: Task[T] = Task(self._view, name, timeout)
            failed.attempts = 1
            failed._finish(exc=exc)
            return failed
        with self._lock:
            # Closed meanwhile: join() may have looked for a deferred task already
            # (_unlone) and now waits for this one, which must settle by its callback.
            watch = bool(
                self._queue
                or self._runs
                or self._lone is not None
                or self._deferred is not None
                or self._closed
            )
            if not watch:
                # No done callback: settled when the pool next looks (_take_deferred).
                self._deferred = weakref.ref(task)
        if watch:
            task.add_done_callback(self._direct_done)
        return task

    def _take_deferred(self) -> Task[Any] | None:
        """Settle the deferred lone task if it is done; else return it, for the caller
        to give it ``_direct_done`` as its done callback (outside the lock).

        Called with self._lock held and ``self._deferred`` set. Either way it is no
        longer deferred: whoever takes it settles it once. A task the weak reference
        lost is done: the backend holds every task it has not finished.
        """
        ref = self._deferred
        assert ref is not None
        self._deferred = None
        task = ref()
        if task is not None and not task._is_done():
            return task
        self._inflight -= 1
        self._unsettled -= 1
        if self._unsettled == 0 and self._closed:  # only join() waits, once closed
            self._idle.notify_all()
        return None

    def _direct_done(self, task: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._inflight -= 1
            self._unsettled -= 1
            if self._lone is task:
                self._lone = None
            if self._unsettled == 0 and self._closed:  # only join() waits, once closed
                self._idle.notify_all()
            queued = bool(self._queue or self._runs)
        if queued:
            self._pump()

    def _unlone(self) -> None:
        """Have the lone task's result read in the background (see _launch and
        _submit_direct), and a deferred lone task settled once done."""
        with self._lock:
            lone, self._lone = self._lone, None
            pending = self._take_deferred() if self._deferred is not None else None
        if pending is not None:
            pending.add_done_callback(self._direct_done)  # watches it too
        if lone is not None and not lone._is_done():
            lone._watch()

    def _feed(self, run: _Run, args: Items) -> None:
        self._unlone()
        with self._lock:
            if self._terminated or run.cancelled:
                return  # the caller raises run.aborted
            if args:
                run.add(args)
                self._unsettled += len(args)
            if not run.active and (run.todo_pos < len(run.todo) or run.redo):
                self._runs.append(run)
                run.active = True
        self._pump()

    def _requeue(self, items: list[Item]) -> None:
        # Called with self._lock held: back to the front, in order.
        self._queue.extendleft(reversed(items))

    def _drop(self, it: Item) -> None:
        """Settle an item that will not run (called with self._lock held)."""
        if not it.settled:
            it.settled = True
            self._unsettled -= 1
        if it.task is not None:
            it.task._slot = None  # the task <-> item cycle, as in _TaskSink.settle

    def _pump(self) -> None:
        """Send chunks while there is room; called after anything that freed some."""
        if self._ended:
            self._end_dropped()  # first: their items need not be sent
        if self._deferred is not None:
            # Work waits: a deferred lone task counts as a busy worker until it is
            # settled, so it must be settled as soon as it is done, by a callback.
            with self._lock:
                pending = (
                    self._take_deferred()
                    if self._deferred is not None and (self._queue or self._runs)
                    else None
                )
            if pending is not None:
                pending.add_done_callback(self._direct_done)
        while True:
            with self._lock:
                if self._terminated or self._inflight >= self._max_inflight:
                    return
                chunk = take_chunk(
                    self._queue, self._runs, self._inflight >= self.workers, self._drop
                )
                if chunk is None:
                    if self._unsettled == 0:
                        self._idle.notify_all()
                    return
                self._inflight += 1
                self._chunks_sent += 1
            self._launch(chunk)

    # ------------------------------------------------------------------ one chunk's life
    # A chunk is a map's Block (bare arguments of one run) or a list of Items
    # (submitted tasks, or a map's items run alone). Both go through one path:
    # _launch hands it to the backend, _on_done takes its results, _failed re-runs
    # its items one by one when it failed as a whole; what differs by kind is in
    # _items_call / _block_done / _items_done / _isolate.
    def _launch(self, chunk: list[Item] | Block) -> None:
        """Hand one chunk to the backend (called with a slot of _inflight taken)."""
        if (chunk.run.timeout if isinstance(chunk, Block) else chunk[0].timeout) == 0:
            self._expire(chunk)
            return
        fn: Callable[..., Any]
        args: tuple[Any, ...]
        if isinstance(chunk, Block):
            run = chunk.run
            n = len(chunk.args)
            name = f"{fn_name(run.fn)} (items {chunk.start}..{chunk.start + n - 1})"
            fn, args = _run_chunk, (run.fn, chunk.args, self._remote, self._max_memory, run.star)
            timeout = chunk_timeout(run.sizer, run.timeout, n)
        else:
            chunk = self._start_items(chunk)
            if not chunk:
                self._chunk_gone()
                self._pump()
                return
            fn, args, name, timeout = self._items_call(chunk)
        try:
            task = self._backend.spawn(fn, args, {}, name=name, timeout=timeout)
        except BaseException as exc:
            self._chunk_gone()
            self._failed(chunk, exc)
            if not isinstance(exc, Exception):
                raise
            return
        # Recorded before the done callback, which may run at once.
        lone = False
        if isinstance(chunk, Block):
            # It may go to a worker before the chunk ahead of it is unpickled and its
            # callbacks ran: nothing cancels a map's chunk but the map's end, which
            # cancels pending ones only (see SEND_AHEAD; other backends ignore it).
            task.__dict__[_SEND_AHEAD] = True
            chunk.run.chunks.add(task)
        else:
            for it in chunk:
                it.chunk = task
            first = chunk[0].task
            with self._lock:
                self._item_chunks[id(task)] = (task, chunk)
                # One submitted task alone in the pool (pool.submit(f, x).result()):
                # its chunk is not watched, so the backend does not wake its collector
                # for it and the caller reads the result itself (_PoolView.wait), as
                # for pt.spawn. Whatever else comes first watches it (_unlone).
                if (
                    first is not None
                    and len(chunk) == 1
                    and chunk[0].attempts == 0
                    and not first._watched
                    and self._inflight == 1
                    and not self._queue
                    and not self._runs
                    and not self._closed
                ):
                    lone = True
                    self._lone = task
        done_chunk = chunk
        if lone:
            concurrent.futures.Future.add_done_callback(
                task, lambda done: self._on_done(cast(Task[Any], done), done_chunk)
            )
        else:
            task.add_done_callback(lambda done: self._on_done(done, done_chunk))
        if isinstance(chunk, Block) and chunk.run.cancelled:
            # The consumer left while this chunk was being launched.
            concurrent.futures.Future.cancel(task)

    def _expire(self, chunk: list[Item] | Block) -> None:
        """A chunk whose run-time limit is 0: each item fails with TaskTimeout and none
        runs (see ``expired_at_start``). Settled here, in _pump's loop: a backend task
        that failed at once would launch the next chunk from its done callback, inside
        this one, and a long map would recurse."""
        self._chunk_gone()
        items = self._isolate(chunk) if isinstance(chunk, Block) else chunk
        # Not run, so not a run to charge (Task.attempts stays 0) nor one to retry:
        # a retry would expire as well, and counted each one as an attempt.
        self._settle_many(
            [
                (it, False, expired_error(it.task.name if it.task is not None else _item_name(it)))
                for it in items
            ],
            final=True,
            ran=False,
        )

    def _start_items(self, chunk: list[Item]) -> list[Item]:
        """The items of ``chunk`` still to run, their tasks turned running."""
        live: list[Item] = []
        append = live.append
        # On threads a task turns running when its thread reaches it (_run_items);
        # elsewhere when its chunk is handed to the backend.
        local = not self._remote
        for it in chunk:
            task = it.task
            if task is not None and not it.started and not local:
                # False if it was cancelled, or settled (_cancel_task) since it was taken.
                if not task._set_running():
                    with self._lock:
                        self._drop(it)
                    continue
                task._mark_started()
            it.started = True
            append(it)
        return live

    def _items_call(
        self, live: list[Item]
    ) -> tuple[Callable[..., Any], tuple[Any, ...], str, float | None]:
        """What runs a chunk of items: ``(function, arguments, name, timeout)``."""
        n = len(live)
        first = live[0]
        if n > 1:
            name = f"{fn_name(first.fn)} (chunk of {n})"
        elif first.task is not None:
            name = first.task.name
        else:
            name = _item_name(first)
        timeout = chunk_timeout(first.sink.sizer, first.timeout, n)
        if not self._remote:
            return _run_items, (live,), name, timeout
        fn: Callable[..., Any] | None = first.fn
        for it in live:
            if it.fn is not fn or it.kwargs:
                fn = None
                break
        calls: list[Any]
        if fn is not None:
            # One function and no keywords (a submit loop): send the argument tuples
            # alone, which pickle smaller and run in the worker's tight loop.
            calls = [it.args for it in live]
        else:
            calls = [(it.fn, it.args, it.kwargs) for it in live]
        return _run_chunk, (fn, calls, self._remote, self._max_memory, True), name, timeout

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

    def _on_done(self, task: Task[Any], chunk: list[Item] | Block) -> None:
        """A chunk's backend task is done (its done callback, in the backend's thread)."""
        block = isinstance(chunk, Block)
        try:
            if not block:
                with self._lock:
                    self._item_chunks.pop(id(task), None)
                    if self._lone is task:
                        self._lone = None
            self._chunk_gone()
            exc = task.exception(0)
            sizer = chunk.run.sizer if isinstance(chunk, Block) else chunk[0].sink.sizer
            got = self._results(task, sizer) if exc is None else exc
            if isinstance(got, BaseException):
                # A chunk that terminate() cancelled before it started ran none of
                # its items. Only then: a launch that failed (the backend never
                # marked the task started) must still count, or a retry_on that
                # matches its error would retry it for ever; and a crash may be
                # seen before the start is marked. Terminated, nothing is retried.
                ran = task.attempts > 0 or not self._terminated
                self._failed(chunk, got, ran=ran)
            elif isinstance(chunk, Block):
                self._block_done(chunk, *got)
            else:
                self._items_done(chunk, *got)
        except BaseException as why:
            # The bookkeeping itself failed: the chunk's items must not be lost. A
            # block's items run again one by one; single items fail with this error.
            _report("the pool's results callback", why)
            try:
                if isinstance(chunk, Block):
                    self._failed(chunk, _callback_error(chunk.run.fn, why))
                else:
                    err = _callback_error(chunk[0].fn, why)
                    self._settle_many([(it, False, err) for it in chunk], final=True)
            except BaseException as again:  # pragma: no cover - nothing more to try
                _report("the pool's results callback", again)
        # The backend may keep the finished task (and so this callback) for a while:
        # do not keep the chunk's arguments alive with it.
        if isinstance(chunk, Block):
            chunk.args = []
        else:
            chunk.clear()
        self._pump()

    def _items_done(
        self, chunk: list[Item], values: list[Any], errors: dict[int, Any] | None
    ) -> None:
        done: list[tuple[Item, bool, Any]]
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
        if len(values) < len(chunk):  # the worker stopped early: send the rest again
            with self._lock:
                rest = [it for it in chunk[len(values) :] if not it.dropped()]
                if not self._terminated:
                    self._requeue(rest)
                    return
            # terminate() stopped the chunk (a thread's, between two tasks): no queue
            # runs the rest now.
            exc = Cancelled("the pool was terminated before the task finished")
            self._settle_many([(it, False, exc) for it in rest], final=True, ran=False)

    def _block_done(self, blk: Block, values: list[Any], errors: dict[int, Any] | None) -> None:
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
                run.redo.appendleft(Block(run, blk.start + k, blk.args[k:]))
                if not run.active:
                    self._runs.append(run)
                    run.active = True
            if retry_idx:
                again = []
                for j in retry_idx:
                    x: Any = blk.args[j]
                    args = x if run.star else (x,)
                    it = Item(run, blk.start + j, run.fn, args, {}, run.timeout)
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

    def _failed(self, chunk: list[Item] | Block, exc: BaseException, *, ran: bool = True) -> None:
        """A whole chunk failed (crash, timeout, pickling, its launch): re-run its items
        one by one (each a chunk of its own), or fail a single one with ``exc``.
        ``ran``: whether the chunk started (an attempt is charged to its items)."""
        block = isinstance(chunk, Block)
        items = self._isolate(chunk) if isinstance(chunk, Block) else chunk
        if len(items) == 1:
            it = items[0]
            if it.suspect is not None:
                with self._lock:
                    kind, it.suspect = it.suspect, None
                    if ran and not self._terminated and not it.settled and isinstance(exc, kind):
                        # The first item of a chunk lost to a crash or a timeout, failing
                        # alone the same way: that chunk's run was one of its runs too
                        # (uncharged, an item crashing its worker ran 2 + retries
                        # times). Only the first: it surely started there; one behind it
                        # may never have (its chunk died at a flaky item ahead of it),
                        # and charging it would take a retry it is owed.
                        it.attempts += 1
            self._settle_many([(it, False, exc)], ran=ran)
            return
        # Lost to a crash or a timeout (not a cancel() of one of them, not its launch):
        # its first item surely ran there.
        lost = type(exc) if ran and isinstance(exc, (WorkerCrashed, TaskTimeout)) else None
        with self._lock:
            again = [it for it in items if not it.dropped()]
            for it in again:
                it.isolated = True
                it.suspect = lost if it is items[0] else None
            # A block's items are new: all are dropped if its run ended, and then
            # they are settled below (so that join() does not wait for them).
            if not self._terminated and (again or not block):
                self._requeue(again)
                return
        # Terminated: none runs again. As for a crash, only the first item is charged
        # the chunk's run (it surely started there; terminate() may have killed the
        # chunk before the others did).
        first = items[0]
        ended = items if block else again
        self._settle_many([(it, False, exc) for it in ended if it is first], final=True, ran=ran)
        self._settle_many(
            [(it, False, exc) for it in ended if it is not first], final=True, ran=False
        )

    def _isolate(self, blk: Block) -> list[Item]:
        """A block's items as single items (to run alone: their block failed)."""
        run = blk.run
        items = []
        for j, x in enumerate(blk.args):
            args = x if run.star else (x,)
            it = Item(run, blk.start + j, run.fn, args, {}, run.timeout)
            it.isolated = it.started = True
            items.append(it)
        return items

    def _settle_many(
        self, done: list[tuple[Item, bool, Any]], *, final: bool = False, ran: bool = True
    ) -> None:
        """Give results to their sinks; failures worth a retry go back to the queue
        (unless ``final``). Each item is charged an attempt unless it did not run
        (``ran=False``)."""
        by_sink: dict[Sink, list[tuple[Item, bool, Any]]] = {}
        retry: list[Item] = []
        settled = 0
        with self._lock:
            for entry in done:
                it, ok, value = entry
                if it.settled:
                    continue
                if ran:
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
                    it.suspect = None  # failed alone on its own: the chunk is not its
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
        if not isinstance(it, Item):
            return False
        chunk = it.chunk
        if not self._backend.can_kill_running and (
            task._state == "RUNNING" and (chunk is None or chunk._state == "RUNNING")
        ):
            # It runs on a thread (or a cluster task) that cannot be stopped: it was
            # flagged (pt.current_task().cancelled), as for pt.spawn, and its next
            # cancellation point raises Cancelled, which fails it alone (a result it
            # returns all the same stands); Future.cancel says False for work it
            # cannot stop. On threads, its chunk's slot holds its current-task info
            # while it runs (batch._run_items): wake its pt.sleep.
            info = chunk._slot if chunk is not None else None
            if isinstance(info, _task.CurrentTask) and info._task is task:
                info._wake()
            return False
        exc = Cancelled(f"task {task.name!r} was cancelled")
        self._settle_many([(it, False, exc)], final=True)
        if chunk is not None:
            # Its chunk-mates are re-run one by one when the killed chunk fails.
            chunk.cancel()
        return True


def _item_name(it: Item) -> str:
    """How messages name a map's item that runs alone."""
    return f"{fn_name(it.fn)} (item {it.index})"


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
