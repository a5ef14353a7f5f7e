"""Pipelines: stages of workers joined by channels, with bounded memory.

``pt.pipeline(source, pt.stage(parse, workers=4), pt.stage(store), backend="process")``
runs every stage's workers as tasks of one private backend; the caller's process
keeps a feeder thread (it iterates ``source``) and one collector thread per stage
(it puts the stage's outputs back in order and hands them to the next stage)::

    caller process                                            stage i workers (tasks)
    ──────────────                                            ───────────────────────
    feeder: for x in source ──(seq, x)──> inbox[0] ──get──> fn(x) ─┐ (ONE|MANY|END, seq, out)
                                                                    v
    collector 0 <───────────────────────────────────────────── outbox[0]
      orders by seq (ordered=True), frees one window slot per input it passed on
      └──(seq', out)──> inbox[1] ──> stage 1 workers ──> outbox[1] ──> collector 1 ── ...
    for r in pipeline: <── results (a thread channel, maxsize items) <── last collector

Memory is bounded: each stage admits at most ``maxsize`` inputs that its
collector has not passed on yet (a semaphore per stage, taken by whoever feeds
the stage and given back by its collector), and the caller's result channel
holds at most ``maxsize`` items. An endless source is read only as fast as the
caller consumes results.

Failure: the first exception in the source or in any stage is recorded (with a
note naming the stage), every channel is closed so that every thread and worker
stops, the backend is shut down (process workers are killed), and the caller's
iteration raises that exception.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Generic, TypeVar

from ._core.backend import backend_class, fn_name
from ._core.channel import MAX_COUNT, Channel
from ._core.errors import ChannelClosed, TaskTimeout
from ._core.finalizing import start_thread
from ._core.timeouts import check_timeout
from .backends import make_backend

__all__ = ["Pipeline", "Stage", "pipeline", "stage"]

T = TypeVar("T")

# What a worker sends to its stage's collector: (kind, seq, value).
_ONE = 0  # the only output of input seq (the input is done)
_MANY = 1  # one output of a generator for input seq
_END = 2  # the generator for input seq is exhausted (value unused)

#: Items each stage may hold (queued, being worked on, waiting to be re-ordered).
DEFAULT_MAXSIZE = 64
# Seconds between checks of the stop flag while a thread of ours waits for room.
_POLL = 0.1


class _Stopped(Exception):
    """The pipeline is stopping: a feeder or collector thread leaves quietly."""


#: The most workers a stage may have: each is a task (a thread or a process) started
#: with the pipeline, so a huge count would start tasks until the machine gives out.
MAX_WORKERS: Final = 4096


class Stage:
    """One step of a pipeline: ``fn`` run by ``workers`` tasks (see :func:`stage`)."""

    __slots__ = ("fn", "name", "ordered", "workers")

    def __init__(
        self, fn: Callable[[Any], Any], workers: int = 1, ordered: bool = True, name: str = ""
    ) -> None:
        self.fn = fn
        self.workers = workers
        self.ordered = ordered
        self.name = name

    def __repr__(self) -> str:
        return f"<Stage {self.name!r} workers={self.workers} ordered={self.ordered}>"


def stage(
    fn: Callable[[Any], Any],
    *,
    workers: int = 1,
    ordered: bool = True,
    name: str | None = None,
) -> Stage:
    """A pipeline stage: ``workers`` tasks each calling ``fn(item)`` for the items they get.

    ``fn`` returns one output per input, or is a generator function that may
    yield any number of outputs per input. With ``ordered=True`` (the default)
    the stage's outputs leave in the order of its inputs (a generator's outputs
    stay together); ``ordered=False`` passes each output on as soon as it is
    ready. ``name`` (default: the function's name) appears in errors.

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: ``workers`` is not an int from 1 to 4,096.
    """
    if not callable(fn):
        raise TypeError(f"stage() needs a callable, got {type(fn).__name__} {fn!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(
            f"workers must be an int from 1 to {MAX_WORKERS} (each is a task the pipeline "
            f"starts at once), got {workers!r}"
        )
    return Stage(fn, workers, bool(ordered), name or fn_name(fn))


def _stage_worker(fn: Callable[[Any], Any], inbox: Any, outbox: Any) -> None:
    """A stage worker (a task): apply ``fn`` to inputs until ``inbox`` is closed and drained."""
    get, put = inbox.get, outbox.put
    while True:
        try:
            seq, item = get()
        except ChannelClosed:
            return
        result = fn(item)
        try:
            if isinstance(result, types.GeneratorType):
                for out in result:
                    put((_MANY, seq, out))
                put((_END, seq, None))
            else:
                put((_ONE, seq, result))
        except ChannelClosed:
            return  # the pipeline is stopping


class Pipeline(Generic[T]):
    """A running pipeline: iterate it for the last stage's results (see :func:`pipeline`).

    It starts on the first iteration (or ``with``); leaving the ``with`` block,
    breaking out of the loop or calling :meth:`close` stops every stage.
    """

    def __init__(
        self,
        source: Iterable[Any],
        stages: list[Stage],
        backend: str,
        maxsize: int,
        timeout: float | None,
    ) -> None:
        self._source = source
        self._stages = stages
        self._backend_name = backend
        self.maxsize = maxsize
        self.timeout = timeout
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._stopping = False
        self._started = False
        self._finished = False
        self._iterated = False
        self._channels: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._tasks: list[Any] = []
        self._backend: Any = None

    # ------------------------------------------------------------------ start

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a pipeline runs once: build a new one to run it again")
        self._started = True
        if self.timeout == 0:
            # Expired before the run began: nothing starts, iterating raises TaskTimeout.
            self._finished = True
            return
        n = len(self._stages)
        total = sum(s.workers for s in self._stages)
        # The backend's own Channel: a Dask pipeline's channels live on its own cluster.
        self._backend = be = make_backend(self._backend_name, max_workers=total)
        self._inboxes: list[Channel[Any]] = [be.primitive("Channel") for _ in range(n)]
        self._outboxes: list[Channel[Any]] = [be.primitive("Channel") for _ in range(n)]
        self._results: Any = Channel(self.maxsize, backend="thread")
        self._channels = [*self._inboxes, *self._outboxes, self._results]
        self._windows = [threading.Semaphore(self.maxsize) for _ in range(n)]
        self._left = [s.workers for s in self._stages]
        try:
            for i, st in enumerate(self._stages):
                for k in range(st.workers):
                    task = self._backend.spawn(
                        _stage_worker,
                        (st.fn, self._inboxes[i], self._outboxes[i]),
                        {},
                        name=f"{st.name}#{k + 1}",
                    )
                    self._tasks.append(task)
                    task.add_done_callback(functools.partial(self._worker_done, i))
            self._thread(self._feed, "feeder")
            for i in range(n):
                self._thread(functools.partial(self._collect, i), f"collector-{i + 1}")
        except BaseException as exc:
            self._fail(exc, "starting the pipeline")
            self._shutdown()
            raise

    def _thread(self, target: Callable[[], None], what: str) -> None:
        t = threading.Thread(target=target, name=f"polytask-pipeline-{what}", daemon=True)
        self._threads.append(t)
        t.start()

    def _label(self, i: int) -> str:
        return f"pipeline stage {i + 1} ({self._stages[i].name!r})"

    # ------------------------------------------------------------------ failure and stop

    def _fail(self, exc: BaseException, where: str) -> None:
        with self._lock:
            # Once stopping (an earlier failure, or close()), later errors are its echoes.
            if self._error is None and not self._stopping:
                exc.add_note(f"raised in {where}; the pipeline was stopped")
                self._error = exc
            self._stopping = True
        self._close_channels()

    def _close_channels(self) -> None:
        for ch in self._channels:
            ch.close()

    def _worker_done(self, i: int, task: Any) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._fail(exc, self._label(i))
            return
        with self._lock:
            self._left[i] -= 1
            last = self._left[i] == 0
        if last:
            # Every worker of the stage returned, so every output is in the outbox.
            self._outboxes[i].close()

    # ------------------------------------------------------------------ threads

    def _emitter(self, j: int) -> Callable[[Any], None]:
        """A function passing one value on to stage ``j`` (or to the results)."""
        if j == len(self._stages):
            results = self._results

            def to_results(value: Any) -> None:
                results.put(value)

            return to_results
        inbox = self._inboxes[j]
        window = self._windows[j]
        counter = itertools.count()

        def to_stage(value: Any) -> None:
            while not window.acquire(timeout=_POLL):
                if self._stopping:
                    raise _Stopped
            inbox.put((next(counter), value))

        return to_stage

    def _feed(self) -> None:
        emit = self._emitter(0)
        try:
            for item in self._source:
                if self._stopping:
                    return
                emit(item)
        except (_Stopped, ChannelClosed) as exc:
            if not self._stopping:
                self._fail(exc, "the pipeline's source")
            return
        except BaseException as exc:
            self._fail(exc, "the pipeline's source")
            return
        self._inboxes[0].close()

    def _collect(self, i: int) -> None:
        ordered = self._stages[i].ordered
        outbox = self._outboxes[i]
        window = self._windows[i]
        emit = self._emitter(i + 1)
        waiting: dict[int, list[Any]] = {}  # outputs of inputs that finished out of turn
        growing: dict[int, list[Any]] = {}  # outputs of generators still running
        nxt = 0
        try:
            for kind, seq, value in outbox:
                if not ordered:
                    if kind != _END:
                        emit(value)
                    if kind != _MANY:
                        window.release()
                    continue
                if seq == nxt:
                    # In turn: outputs go on at once, even a running generator's.
                    if kind != _END:
                        emit(value)
                    else:
                        for v in growing.pop(seq, ()):
                            emit(v)
                    if kind == _MANY:
                        continue
                    window.release()
                    nxt += 1
                elif kind == _ONE:
                    waiting[seq] = [value]
                    continue
                elif kind == _MANY:
                    growing.setdefault(seq, []).append(value)
                    continue
                else:
                    waiting[seq] = growing.pop(seq, [])
                    continue
                while True:
                    if nxt in waiting:
                        for v in waiting.pop(nxt):
                            emit(v)
                        window.release()
                        nxt += 1
                        continue
                    if nxt in growing:
                        # The generator now in turn still runs: pass on what it made so far.
                        for v in growing[nxt]:
                            emit(v)
                        growing[nxt] = []
                    break
        except (_Stopped, ChannelClosed):
            return
        except BaseException as exc:  # pragma: no cover - a bug of ours, reported not hidden
            self._fail(exc, f"the collector of {self._label(i)}")
            return
        if not self._stopping:
            (self._inboxes[i + 1] if i + 1 < len(self._stages) else self._results).close()

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[T]:
        if self._iterated:
            raise RuntimeError("a pipeline runs once: build a new one to run it again")
        self._iterated = True
        if not self._started:
            self._start()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        consumer = threading.get_ident()
        try:
            while True:
                if self._error is not None:
                    raise self._error
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise self._timed_out()
                try:
                    item = self._results.get(timeout=left)
                except ChannelClosed:
                    break
                except queue.Empty:
                    continue
                yield item
                consumer = threading.get_ident()
            self._shutdown()
            if self._error is not None:
                raise self._error
        finally:
            if threading.get_ident() == consumer:
                self.close()
            else:
                # The collector freed this generator (left in a cycle) in another
                # thread: maybe one of this pipeline's own or of its backend's, inside
                # a section under a lock close() takes (it hung there), or one that
                # close() waits for. A thread of its own closes the pipeline; none at
                # the exit (the collector's last passes), where it would hang the exit.
                start_thread(self.close, "polytask-pipeline-close")

    def _timed_out(self) -> TaskTimeout:
        if self.timeout == 0:
            # Nothing started (see _start): nothing "did not finish", nothing to stop.
            return TaskTimeout(
                "the pipeline was not run: its timeout of 0 s had expired before it could start",
                timeout=0.0,
            )
        exc = TaskTimeout(
            f"the pipeline did not finish within {self.timeout:g} s", timeout=self.timeout
        )
        self._fail(exc, "the pipeline (timeout=)")
        return exc

    def close(self) -> None:
        """Stop every stage (workers are cancelled, process workers killed) and release all."""
        if not self._started or self._finished:
            return
        with self._lock:
            self._stopping = True
        self._close_channels()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._finished:
            return
        self._finished = True
        cancel = self._stopping or self._error is not None
        if self._backend is not None:
            self._backend.shutdown(wait=True, cancel=cancel)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(10.0)
        # A thread still running (one of ours closing, or stuck past the join) may
        # yet touch a channel: its mapping is then left to the collector.
        done = not any(t.is_alive() for t in self._threads)
        for ch in self._channels:
            ch.close()
            release = getattr(ch, "_release_now", None)
            if done and release is not None:
                release()  # a process channel's segment goes now, read or not

    def __enter__(self) -> Pipeline[T]:
        if not self._started:
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = " -> ".join(s.name for s in self._stages)
        return f"<Pipeline {names} backend={self._backend_name!r}>"


def pipeline(
    source: Iterable[Any],
    *stages: Stage | Callable[[Any], Any],
    backend: str = "thread",
    maxsize: int = DEFAULT_MAXSIZE,
    timeout: float | None = None,
) -> Pipeline[Any]:
    """Run ``source``'s items through ``stages``; iterate the result for the last stage's outputs.

    Each stage (a :func:`stage`, or a plain function for one ordered worker)
    reads the previous stage's outputs. ``backend`` ("thread" or "process")
    runs the workers; ``maxsize`` bounds the items each stage holds, so memory
    stays bounded for an endless source; ``timeout`` bounds the whole run
    (:class:`TaskTimeout`; 0 has expired before it begins: no stage runs; inf:
    no limit). The first exception in the source or any stage stops every
    stage and is raised in the caller, with a note naming the stage::

        def double(x):
            return 2 * x

        for y in pt.pipeline(range(5), pt.stage(double, workers=2)):
            print(y)  # 0 2 4 6 8

    Raises:
        TypeError: ``source`` is not iterable or a stage is not callable.
        ValueError: no stage, or ``maxsize`` is not an int >= 1.
    """
    if not stages:
        raise ValueError("pipeline() needs at least one stage after the source")
    try:
        iter(source)
    except TypeError:
        raise TypeError(
            f"pipeline() needs an iterable source, got {type(source).__name__}"
        ) from None
    if not isinstance(maxsize, int) or isinstance(maxsize, bool) or not 1 <= maxsize <= MAX_COUNT:
        raise ValueError(
            f"maxsize must be an int from 1 to 2**63-1 (items per stage), got {maxsize!r}"
        )
    timeout = check_timeout(timeout)
    backend_class(backend)  # an unknown name fails here, at the call
    built = [s if isinstance(s, Stage) else stage(s) for s in stages]
    return Pipeline(source, built, backend, maxsize, timeout)
