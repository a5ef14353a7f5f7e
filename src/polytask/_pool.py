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
import types
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

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
    if remote:
        # The worker keeps its task's arguments until its next task: empty the
        # chunk (our own copy in this process), so that the items' arguments are
        # freed now, as the caller's are.
        calls.clear()
    return values, errors, time.perf_counter() - start


def _run_items(items: list[_Item]) -> tuple[list[Any], dict[int, Any] | None, float]:
    """Run a chunk of submitted tasks on a thread of this process (the thread backend).

    A task turns running only when this thread reaches it: until then ``cancel()``
    stops it for good (it is skipped here), and once it runs ``cancel()`` can only
    flag it (``pt.current_task()`` is the task itself). The format of the result is
    :func:`_run_chunk`'s; fewer values than items means the chunk was cancelled or
    timed out, and the pool re-queues the rest.
    """
    from ._core.task import CurrentTask, _set_current

    values: list[Any] = []
    errors: dict[int, Any] | None = None
    me = current_task()
    chunk = me._task
    start = time.perf_counter()
    try:
        for it in items:
            if chunk is not None and chunk._cancel_requested:
                break
            task = it.task
            if task is not None:
                if not task._set_running():
                    if errors is None:
                        errors = {}
                    errors[len(values)] = Cancelled(
                        f"task {task.name!r} was cancelled before it started"
                    )
                    values.append(None)
                    continue
                task._mark_started()
                _set_current(CurrentTask(task.name, task))
            try:
                values.append(it.fn(*it.args, **it.kwargs))
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                if errors is None:
                    errors = {}
                errors[len(values)] = exc
                values.append(None)
                del exc
    finally:
        _set_current(me if chunk is not None else None)
    return values, errors, time.perf_counter() - start


def _run_initializer(blob: bytes) -> None:
    """Start a process worker of a Pool: the caller's authkey, then its initializer.

    The authkey comes first, before the initargs are unpickled: a
    ``multiprocessing`` Manager proxy reads it when it is unpickled, and one made
    with another key cannot talk to its manager (``AuthenticationError``).
    Arguments of later tasks are unpickled after this, with the same key.
    """
    authkey, inner = pickle.loads(blob)
    if authkey is not None:
        import multiprocessing.process

        multiprocessing.process.current_process().authkey = authkey
    if inner is not None:
        fn, args = pickle.loads(inner)
        fn(*args)


def _initializer_blob(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> bytes:
    """What :func:`_run_initializer` gets: the authkey of the caller's
    ``multiprocessing`` (as its own child processes would), and the initializer."""
    import multiprocessing.process

    inner = None
    if initializer is not None:
        # Pickled here with polytask's rules (a function of __main__ travels by
        # value), so the worker never has to import the caller's script.
        try:
            inner = dumps((initializer, initargs))
        except Exception as exc:
            raise SerializationError(
                f"the initializer {fn_name(initializer)!r} or its initargs cannot be "
                f"pickled for the workers: {type(exc).__name__}: {exc}"
            ) from exc
    authkey = bytes(multiprocessing.process.current_process().authkey)
    return pickle.dumps((authkey, inner), protocol=5)


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
        "_fill_lock",
        "_lock",
        "_notify",
        "aborted",
        "active",
        "ahead",
        "borrowed",
        "chunks",
        "fn",
        "input",
        "input_error",
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
        # The input raised: what it gave before runs, then this is raised in its place.
        self.input_error: BaseException | None = None
        # The chunks handed to the backend (to cancel those not started, see _end_run).
        self.chunks: weakref.WeakSet[Task[Any]] = weakref.WeakSet()
        self._fill_lock = threading.Lock()  # the consumer and a shutdown may both pull

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

    def fill(self, everything: bool = False) -> None:
        """Pull input items up to the bound (or ``everything``) and queue them.

        Runs in the consumer's thread (or in ``Executor.shutdown``). If the input
        raises, the items it gave before still run and the error takes the next
        place in the results, as in ``multiprocessing``; with a fixed chunksize
        the items of the chunk it was filling are dropped with it, as there too.
        """
        with self._fill_lock:
            if self.input is None:
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


def _positional_chunksize(
    iterables: tuple[Any, ...], chunksize: int | None
) -> tuple[tuple[Iterable[Any], ...], int | None]:
    """``map(fn, items, 10)``: multiprocessing's positional chunksize, an int after the
    iterables (an int is never iterable, so it cannot be meant as one)."""
    if len(iterables) >= 2:
        last = iterables[-1]
        if isinstance(last, int) and not isinstance(last, bool):
            if chunksize is not None:
                raise TypeError("chunksize given twice: after the iterables and as chunksize=")
            return iterables[:-1], last
    return iterables, chunksize


def _map_items(iterables: tuple[Iterable[Any], ...]) -> tuple[list[Any], bool, bool]:
    """A map's items as a list: ``(items, star, borrowed)``; a list given alone is used
    as it is (borrowed: read, never changed)."""
    if not iterables:
        raise TypeError("map needs at least one iterable")
    star = len(iterables) != 1
    borrowed = not star and type(iterables[0]) is list
    items = iterables[0] if borrowed else list(_zip(iterables))
    assert isinstance(items, list)
    return items, star, borrowed


def _star_items(iterable: Iterable[Iterable[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(a) for a in iterable]


def _check_callbacks(*callbacks: Any) -> None:
    for cb in callbacks:
        if cb is not None and not callable(cb):
            raise TypeError(f"a callback must be callable or None, got {type(cb).__name__}")


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

    def __init__(self, pool: Pool, run: _Run, future: concurrent.futures.Future[list[Any]]):
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
        pool: Pool,
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
        if self._run is not None and not (self._keep_if_unused and not self._started):
            self.close()


_timeout_type: type[Exception] | None = None


def _wait_timeout(message: str) -> Exception:
    """A wait for a result timed out: ``multiprocessing.TimeoutError``, which the
    multiprocessing API raises, and also the builtin ``TimeoutError`` (what
    ``concurrent.futures`` and the rest of polytask raise). Made on first use:
    importing multiprocessing costs more than a Pool that never times out needs."""
    global _timeout_type
    if _timeout_type is None:
        import multiprocessing

        _timeout_type = type(
            "WaitTimeout",
            (multiprocessing.TimeoutError, TimeoutError),
            {"__module__": __name__, "__doc__": _wait_timeout.__doc__},
        )
    return _timeout_type(message)


# ---------------------------------------------------------------------------- the Pool
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_installed = False


def _terminate_live_pools() -> None:
    for pool in list(_live_pools):
        pool.terminate()


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


def _install_exit_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            from ._os.proc import at_shutdown

            at_shutdown(_terminate_live_pools)
            _hook_installed = True


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
            :class:`TaskTimeout`.
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
        if backend == "process":
            options["initializer"] = _run_initializer
            options["initargs"] = (_initializer_blob(initializer, initargs),)
        elif initializer is not None:
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
        # The last function submitted and its name (see _submit): weakly, so that a
        # bound method does not keep its object alive after its task is done.
        self._last_fn: tuple[Callable[[], Any] | None, str] = (None, "")
        self._sizers: weakref.WeakKeyDictionary[Callable[..., Any], ChunkSizer] = (
            weakref.WeakKeyDictionary()
        )
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
        if last[0] is None or last[0]() is not fn:
            if not callable(fn):
                raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
            last = self._last_fn = (_weak(fn), fn_name(fn))
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
        exception takes its place in the results instead. ``chunksize=None``
        adapts the batch size to the measured task duration; as in
        ``multiprocessing``, it may also follow the iterable positionally
        (``pool.map(fn, items, 10)``: an int after the iterables is the chunksize).
        ``progress=True`` shows a progress bar on a terminal (``"force"``: always).
        """
        iterables, chunksize = _positional_chunksize(iterables, chunksize)
        items, star, borrowed = _map_items(iterables)
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
        items = _star_items(iterable)
        run = self._start_list(fn, items, chunksize, timeout, True)
        total = len(items)
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
    ) -> MapIterator[T]:
        """Lazy :meth:`map`: results in order as they are ready.

        The input is pulled on demand, a bounded number of items ahead of the
        results consumed, so an endless generator works in bounded memory.
        Leaving the loop early (or ``close()``) drops the items not started yet.
        ``next(timeout)`` on the iterator waits at most that long
        (``multiprocessing.TimeoutError``), as multiprocessing's does.
        """
        iterables, chunksize = _positional_chunksize(iterables, chunksize)
        run = self._start(fn, _zip(iterables), True, chunksize, timeout, len(iterables) != 1)
        return MapIterator(self, run, progress, _length(iterables), None, return_exceptions)

    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | _Default | None = DEFAULT,
        progress: bool | str = False,
        return_exceptions: bool = False,
    ) -> MapIterator[T]:
        """Like :meth:`imap`, yielding results as they finish (any order)."""
        iterables, chunksize = _positional_chunksize(iterables, chunksize)
        run = self._start(fn, _zip(iterables), False, chunksize, timeout, len(iterables) != 1)
        return MapIterator(self, run, progress, _length(iterables), None, return_exceptions)

    # -- multiprocessing.Pool's asynchronous calls
    def apply(
        self, fn: Callable[..., T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> T:
        """``fn(*args, **kwds)`` on a worker; waits for its result (multiprocessing's ``apply``)."""
        return self._submit(fn, tuple(args), dict(kwds or {}), DEFAULT, None).result()

    def apply_async(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
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
        fn: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """:meth:`map` without waiting: an :class:`AsyncResult` whose ``get()`` is the list."""
        items, star, borrowed = _map_items((iterable,))
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
        items = _star_items(iterable)
        return self._map_async(fn, items, chunksize, True, False, callback, error_callback)

    def _map_async(
        self,
        fn: Callable[..., Any],
        items: list[Any],
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
        items: list[Any],
        chunksize: int | None,
        timeout: float | _Default | None,
        star: bool,
        borrowed: bool = False,
    ) -> _Run:
        """A run over an input read whole (map, starmap), not fed yet (see _preload)."""
        run = self._start(fn, None, True, chunksize, timeout, star)
        run.borrowed = borrowed
        return run

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

    def _preload(self, run: _Run, items: list[Any]) -> None:
        run.pulled = len(items)
        if items:
            run.sizer.observe_bytes(_args_bytes(items[0] if run.star else (items[0],)))
        self._feed(run, items)

    def _segments(
        self, run: _Run, progress: bool | str, total: int | None
    ) -> Generator[Results, None, None]:
        """Yield the result segments of a map over a list as they become ready; the
        caller's thread waits, draws the progress bar, and terminates on Ctrl-C."""
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
                    wake.wait(0.25)
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
            kept: collections.deque[_Item] = collections.deque()
            for it in self._queue:
                if it.sink is not run:
                    kept.append(it)
                elif not it.settled:
                    it.settled = True
                    self._unsettled -= 1
            self._queue = kept
            self._idle.notify_all()
        self._cancel_chunks(run)

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
        run.chunks.add(task)
        task.add_done_callback(lambda done: self._on_block(done, blk))
        if run.cancelled:  # the consumer left while this chunk was being launched
            concurrent.futures.Future.cancel(task)

    def _launch(self, chunk: list[_Item]) -> None:
        live: list[_Item] = []
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
        if not live:
            self._chunk_gone()
            self._pump()
            return
        n = len(live)
        first = live[0]
        calls: list[Any]
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
        if local:
            calls = []
        elif fn is not None:
            # One function and no keywords (a submit loop): send the argument tuples
            # alone, which pickle smaller and run in the worker's tight loop.
            calls = [it.args for it in live]
        else:
            calls = [(it.fn, it.args, it.kwargs) for it in live]
        timeout = self._chunk_timeout(first.sink.sizer, first.timeout, n)
        try:
            if local:
                task = self._backend.spawn(_run_items, (live,), {}, name=name, timeout=timeout)
            else:
                task = self._spawn(fn, calls, name, timeout)
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
        if not self._backend.can_kill_running and (
            task._state == "RUNNING" and (chunk is None or chunk._state == "RUNNING")
        ):
            # It runs on a thread (or a cluster task) that cannot be stopped: it was
            # flagged (pt.current_task().cancelled) and its result stands, as for
            # pt.spawn; Future.cancel says False for work it cannot stop.
            return False
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
        if not self._pool._closed:
            raise exc
        return RuntimeError("cannot schedule new futures after shutdown")

    def _check_exiting(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Task[T]:
        """Schedule ``fn(*args, **kwargs)``; every keyword goes to ``fn``."""
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
        total = _length(iterables)
        try:
            if total is not None:
                items, star, borrowed = _map_items(iterables)
                run = pool._start_list(fn, items, size, DEFAULT, star, borrowed)
                pool._preload(run, items)
            else:
                run = pool._start(fn, _zip(iterables), True, size, DEFAULT, len(iterables) != 1)
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
        ``wait=False`` returns at once and does that in a background thread.
        """
        pool = self._pool
        pool.close()
        _live_executors.discard(self)
        with self._open_lock:
            runs = [r for r in self._open if not r.cancelled]
            self._open.clear()
        if cancel_futures:
            self._cancel_pending()

        def finish() -> None:
            if not cancel_futures:
                for run in runs:
                    run.fill(everything=True)
            pool.join()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name="polytask-executor-shutdown", daemon=True).start()

    def _cancel_pending(self) -> None:
        pool = self._pool
        with pool._lock:
            tasks = [it.task for it in pool._queue if it.task is not None]
            for chunk, items in pool._item_chunks.values():
                # A chunk a worker has taken is running as a whole, as the stdlib's
                # work item taken by a worker is (even if its thread has not
                # reached every task of it yet).
                if chunk._state == "PENDING":
                    tasks.extend(it.task for it in items if it.task is not None)
            runs = list(pool._live_runs)
        for task in tasks:
            # Only a task no worker has started is pending: running ones finish.
            concurrent.futures.Future.cancel(task)
        exc = Cancelled("the executor was shut down with cancel_futures=True before this item ran")
        for run in runs:
            if not run.finished():
                run.abort(exc)
                pool._end_run(run)
