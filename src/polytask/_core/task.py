"""Task: the handle for one unit of work (``spawn``/``background`` in ``_spawn`` make one).

A Task is a :class:`concurrent.futures.Future`, so ``concurrent.futures.wait``,
``as_completed`` and ``asyncio.wrap_future`` accept it, and it is awaitable.
What it adds: a name, the duration, the worker's exit code, a ``cancel()``
that also stops *running* work where the backend can (a process task's worker
is killed; a thread task is flagged, see :class:`CurrentTask`), and
``result()`` that re-raises the task's own exception type.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, Generic, Protocol, TypeVar, cast

from .errors import Cancelled, WaitTimeout
from .timeouts import check_timeout


class Runner(Protocol):
    """What a Task asks of the backend that runs it (``_core.backend.Backend`` is one).

    A protocol, so that this module needs nothing from ``backend`` (which builds on
    Task): the arrow between them runs one way.
    """

    @property
    def name(self) -> str: ...
    def watch(self, task: Task[Any]) -> None: ...
    def wait(self, task: Task[Any], timeout: float | None) -> bool: ...
    def cancel(self, task: Task[Any]) -> bool: ...


__all__ = [
    "CANCEL_SLICE",
    "CurrentTask",
    "Task",
    "cancellable_task",
    "checkpoint",
    "current_task",
    "delivering",
    "finish_many",
    "refuse_wait_in_delivery",
    "serving",
    "sleep",
    "wait_cancellable",
    "wait_in_delivery_error",
]

T = TypeVar("T")
R = TypeVar("R")
_CancelledError = concurrent.futures.CancelledError
_DONE_STATES = frozenset(("CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"))
_CANCELLED_STATES = frozenset(("CANCELLED", "CANCELLED_AND_NOTIFIED"))
#: Guards state changes of tasks that have no condition yet, and the making of one
#: (see Task._condition). Held for a few attribute writes at a time.
_state_lock = threading.Lock()

#: ``serving.backends``: the backends whose results this thread is delivering (a
#: process backend's reader), or whose task's done callbacks it runs (a thread
#: backend's worker), innermost last. The results of those backends' other tasks
#: may wait on this very thread (to be read, or to run), so a callback here cannot
#: wait for them; another backend's tasks it can.
serving = threading.local()


def delivering(backend: object) -> bool:
    """Whether this thread is delivering ``backend``'s results (see :data:`serving`)."""
    return backend in getattr(serving, "backends", ())


def wait_in_delivery_error(what: str, instead: str) -> RuntimeError:
    """The error for ``what``, a wait called on the thread that delivers the results
    it would wait for; ``instead`` says what to do."""
    return RuntimeError(
        f"{what} was called from a task's done callback, on the thread that delivers "
        f"the results it would wait for: it cannot wait there. {instead}"
    )


def refuse_wait_in_delivery(what: str, instead: str, backend: object) -> None:
    """Raise RuntimeError if this thread delivers ``backend``'s results: ``what``,
    waiting for them, would wait for itself."""
    if delivering(backend):
        raise wait_in_delivery_error(what, instead)


def _reset_state_lock() -> None:
    # A fork while another thread held it would leave the child's copy locked.
    global _state_lock
    _state_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_state_lock)


class Task(concurrent.futures.Future[T], Generic[T]):
    """The handle for one unit of work running on a backend.

    Made by :func:`spawn`, ``TaskGroup.spawn`` and ``Pool.submit``; not meant to be
    created directly.

    Example::

        t = pt.spawn(sum, [1, 2, 3])
        assert t.result(timeout=5) == 6
    """

    # Every attribute in a slot, Future's own included. Future has no __slots__,
    # so a Task still has a (lazily made, normally empty) __dict__; what counts is
    # fewer objects for the cyclic GC to walk (with 20,000 tasks alive, full
    # collections were most of a submit loop's time). Future's condition, waiter
    # list and callback list are made on first use (see _condition): most tasks
    # are finished by one thread and read by another without ever blocking.
    __slots__ = (
        "_backend",
        "_callbacks",
        "_cancel_requested",
        "_cond",
        "_exception",
        "_finished_at",
        "_keep",
        "_result",
        "_slot",
        "_started_at",
        "_state",
        "_timer",
        "_waiter_list",
        "_watched",
        "attempts",
        "daemon",
        "exitcode",
        "name",
        "timeout",
    )

    def __init__(self, backend: Runner, name: str, timeout: float | None = None) -> None:
        # Future.__init__ is not called: it would build the condition eagerly. What it
        # sets is set here (tests/test_core.py checks that the list is still complete).
        self._cond: threading.Condition | None = None
        self._state = "PENDING"
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiter_list: _WatchedWaiters | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None
        self.name = name
        #: The timeout the task runs under, in seconds (None: no limit).
        self.timeout = timeout
        #: How many times the task was started (more than 1 after retries).
        self.attempts = 0
        #: Exit status of the worker process that died running this task, else None.
        self.exitcode: int | None = None
        #: Killed (a thread task: abandoned) at interpreter exit, with a warning,
        #: instead of waited for. Set by ``spawn(..., daemon=True)``.
        self.daemon = False
        self._backend = backend
        #: What must stay alive until the task is done: its arguments, whose pickles
        #: may name shared objects (a process Semaphore, a spill segment) that die
        #: with their last handle; the worker unpickles them later.
        self._keep: Any = None
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._cancel_requested = False
        # Backend-private state (the worker the task runs on, its timer, ...).
        self._slot: Any = None
        self._timer: Any = None
        # Set once something other than result()/join() waits for this task (a done
        # callback, concurrent.futures.wait, a done() poll): the backend must then
        # complete it without a caller reading for it. See Backend.watch.
        self._watched = False

    # -- Future's lazily made parts. The condition is made under _state_lock, and a
    # task without one changes state under _state_lock: so either a waiter made the
    # condition first (and the change notifies it), or the change came first (and
    # the waiter sees the new state before it waits). Nobody can wait, or add a
    # waiter or a callback, without the condition.
    @property
    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _state_lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @_condition.setter
    def _condition(self, value: threading.Condition) -> None:
        self._cond = value

    @property
    def _waiters(self) -> list[Any]:
        # Used by Future's code and concurrent.futures.wait with the condition held.
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = _WatchedWaiters(self)
        return waiters

    @_waiters.setter
    def _waiters(self, value: list[Any]) -> None:
        self._waiter_list = _WatchedWaiters(self)
        self._waiter_list.extend(value)

    @property
    def _done_callbacks(self) -> list[Callable[[Any], object]]:
        callbacks = self._callbacks
        if callbacks is None:
            callbacks = self._callbacks = []
        return callbacks

    @_done_callbacks.setter
    def _done_callbacks(self, value: list[Callable[[Any], object]]) -> None:
        self._callbacks = value

    # -- state
    @property
    def duration(self) -> float | None:
        """Seconds the task ran (None until it has started); grows while it runs."""
        if self._started_at is None:
            return None
        end = self._finished_at if self._finished_at is not None else time.monotonic()
        return end - self._started_at

    @property
    def backend(self) -> str:
        """The name of the backend the task runs on."""
        return self._backend.name

    def cancelled(self) -> bool:
        """True if the task was cancelled (before or while it ran)."""
        state = self._state
        if state in _CANCELLED_STATES:
            return True
        return state == "FINISHED" and isinstance(self._exception, Cancelled)

    def running(self) -> bool:
        """True while the task runs."""
        # Reading one attribute needs no lock (Future.running takes the condition).
        return self._state == "RUNNING"

    def __repr__(self) -> str:
        if not self._is_done():
            state = "running" if self.running() else "pending"
        elif self._state in _CANCELLED_STATES:
            state = "cancelled"
        elif self._exception is not None:
            state = f"failed: {type(self._exception).__name__}"
        else:
            state = "done"
        return f"<Task {self.name!r} on {self._backend.name}: {state}>"

    def done(self) -> bool:
        """True if the task finished, failed or was cancelled."""
        if self._state in _DONE_STATES:
            return True
        if not self._watched:
            self._watch()
        return False

    def add_done_callback(self, fn: Callable[[Task[T]], object]) -> None:
        """Call ``fn(task)`` when the task is done (at once if it already is)."""
        super().add_done_callback(fn)  # type: ignore[arg-type]
        if not self._watched:
            self._watch()

    def _is_done(self) -> bool:
        # done() without marking the task watched: for backends and waiting loops.
        return self._state in _DONE_STATES

    def _watch(self) -> None:
        self._watched = True
        self._backend.watch(self)

    # -- waiting
    def _wait(self, timeout: float | None) -> bool:
        # Not a cancellation point: for a TaskGroup that must wait for its tasks.
        if self._is_done():
            return True
        return self._backend.wait(self, timeout)

    def _wait_public(self, timeout: float | None) -> bool:
        # result(), exception() and join(): in a cancelled thread task they raise Cancelled.
        if self._is_done():
            return True
        return wait_cancellable(functools.partial(self._backend.wait, self), timeout)

    def _wait_or_raise(self, timeout: float | None) -> None:
        timeout = check_timeout(timeout)
        if not self._wait_public(timeout):
            raise WaitTimeout(
                f"task {self.name!r} did not finish within {timeout:g} s of waiting; it goes on "
                "running (cancel() stops it, timeout= on spawn limits the task itself)"
            )

    def result(self, timeout: float | None = None) -> T:
        """Wait for the task and return its result, or raise its exception.

        Raises the task's own exception (same type, remote traceback as
        ``__cause__``), :class:`TaskTimeout`, :class:`WorkerCrashed` or
        :class:`Cancelled`; :class:`WaitTimeout` if ``timeout`` seconds of waiting
        passed first (the task goes on). Waiting inside a thread task that gets
        cancelled raises :class:`Cancelled` (see :func:`polytask.checkpoint`).
        """
        if self._state != "FINISHED":
            self._wait_or_raise(timeout)
        elif timeout is not None:
            check_timeout(timeout)  # bad input fails even when the result is there
        if self._state == "FINISHED" and self._exception is None:
            return cast(T, self._result)  # the hot path: no lock needed
        try:
            return super().result(0)
        except Cancelled:
            raise
        except _CancelledError:
            raise Cancelled(f"task {self.name!r} was cancelled before it started") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return its exception (None if it succeeded)."""
        self._wait_or_raise(timeout)
        state = self._state
        if state in _CANCELLED_STATES:
            return Cancelled(f"task {self.name!r} was cancelled before it started")
        if state == "FINISHED":
            return self._exception
        return super().exception(0)  # pragma: no cover - done means one of the above

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the task is done without raising its error; True if it is done."""
        return self._wait_public(check_timeout(timeout))

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # here, not at the top: it costs ~30 ms to import

        return asyncio.wrap_future(self).__await__()

    # -- cancelling
    def cancel(self) -> bool:
        """Stop the task.

        A pending task never starts. A running process task has its worker killed
        and raises :class:`Cancelled`. A running thread task cannot be killed: it
        is flagged (``pt.current_task().cancelled`` becomes true), its next
        cancellation point (``pt.sleep``, ``pt.checkpoint``, any blocking polytask
        call) raises :class:`Cancelled` in it, and this returns False, as
        ``Future.cancel`` does for work it cannot stop.
        """
        if super().cancel():
            return True
        if self._is_done():
            return False
        self._cancel_requested = True
        return self._backend.cancel(self)

    def _invoke_callbacks(self) -> None:
        # Future's own catches Exception only: a callback raising SystemExit (or any
        # BaseException) would skip the callbacks after it (an awaiting coroutine's,
        # a group's) and escape into the thread that finished the task, a backend's
        # service thread. Logged the same way, and the others still run.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                concurrent.futures._base.LOGGER.exception("exception calling callback for %r", self)

    # -- used by backends
    def _mark_started(self) -> None:
        self.attempts += 1
        if self._started_at is None:
            self._started_at = time.monotonic()

    def _set_running(self) -> bool:
        """``set_running_or_notify_cancel`` that also accepts an already running task.

        False if the task was cancelled before it started (its waiters are told).
        """
        with _state_lock:
            if self._cond is None:  # nobody waits: the global lock guards the state
                started = self._start_if_pending()
                if started is not None:
                    return started
        with self._condition:
            started = self._start_if_pending()
            if started is not None:
                return started
        return self.set_running_or_notify_cancel()  # cancelled: tell the waiters

    def _start_if_pending(self) -> bool | None:
        # With the state's lock held. None: cancelled, for Future's own handling.
        state = self._state
        if state == "PENDING":
            self._state = "RUNNING"
            return True
        if state == "RUNNING":
            return True
        if state == "FINISHED":
            return False
        return None

    def set_running_or_notify_cancel(self) -> bool:
        """``Future.set_running_or_notify_cancel``, without making the condition if unused."""
        with _state_lock:
            if self._cond is None and self._state == "PENDING":
                self._state = "RUNNING"
                return True
        return super().set_running_or_notify_cancel()

    def _finish(self, result: Any = None, exc: BaseException | None = None) -> bool:
        """Complete the task once; later calls (a timeout racing a result) are ignored.

        ``Future.set_result``/``set_exception`` in one lock acquisition: this runs once
        per task on the latency-critical path. A task nobody waited on has no
        condition to notify (see _condition): one short global lock is all it takes.
        """
        with _state_lock:
            cond = self._cond
            if cond is None:
                if self._state in _DONE_STATES:
                    return False
                self._finished_at = now = time.monotonic()
                if self._started_at is None:
                    self._started_at = now
                if exc is None:
                    self._result = result
                else:
                    self._exception = exc
                self._state = "FINISHED"
        if cond is not None:
            with cond:
                if self._state in _DONE_STATES:
                    return False
                self._finished_at = now = time.monotonic()
                if self._started_at is None:
                    self._started_at = now
                waiters = self._waiter_list or ()
                if exc is None:
                    self._result = result
                    self._state = "FINISHED"
                    for waiter in waiters:
                        waiter.add_result(self)
                else:
                    self._exception = exc
                    self._state = "FINISHED"
                    for waiter in waiters:
                        waiter.add_exception(self)
                cond.notify_all()
        self._keep = None
        if self._timer is not None:
            self._timer.cancel()
        if self._callbacks:
            self._invoke_callbacks()
        return True


#: Tasks finished per acquisition of _state_lock in finish_many: bounds how long
#: another thread may wait to make a condition.
_FINISH_BATCH = 512


def finish_many(results: list[tuple[Task[Any], Any]]) -> None:
    """``task._finish(value)`` for many tasks at once (a Pool's chunk of results).

    A task nobody waits on has no condition, timer or callback (each of those
    needs the condition first): for those, finishing is a few attribute writes,
    done under one acquisition of _state_lock per batch instead of one call and
    one lock per task. The rest go through :meth:`Task._finish`.
    """
    slow: list[tuple[Task[Any], Any]] = []
    now = time.monotonic()
    for lo in range(0, len(results), _FINISH_BATCH):
        with _state_lock:
            for task, value in results[lo : lo + _FINISH_BATCH]:
                if task._cond is not None or task._timer is not None or task._callbacks:
                    slow.append((task, value))
                elif task._state not in _DONE_STATES:
                    task._finished_at = now
                    if task._started_at is None:
                        task._started_at = now
                    task._result = value
                    task._state = "FINISHED"
                    task._keep = None
    for task, value in slow:
        task._finish(value)


class _WatchedWaiters(list[Any]):
    """``Future._waiters``: ``concurrent.futures.wait``/``as_completed`` append here.

    Appending marks the task watched, so a backend whose fast path is the caller
    reading its own result also completes tasks that are waited for this way.
    """

    __slots__ = ("_task",)

    def __init__(self, task: Task[Any]) -> None:
        super().__init__()
        # A weak reference: the task holds this list, so a strong one is a cycle
        # that only the cyclic GC could break.
        self._task = weakref.ref(task)

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        task = self._task()
        if task is not None and not task._watched:
            task._watch()


class CurrentTask:
    """What code running inside a task can ask about it: its name and whether to stop.

    Threads cannot be killed, so a cancelled or timed-out thread task is told
    through :attr:`cancelled`, and its cancellation points raise
    :class:`Cancelled`: :func:`polytask.sleep`, :func:`polytask.checkpoint` and
    every blocking polytask call (a lock, an event, ``Task.result()``...). A loop
    that only computes should check now and then::

        def crunch(items):
            for item in items:
                pt.checkpoint()  # or pt.current_task().raise_if_cancelled()
                ...
    """

    __slots__ = ("_task", "_waker", "name")

    def __init__(self, name: str, task: Task[Any] | None = None) -> None:
        self.name = name
        self._task = task
        # Made by the task's own thread on its first pt.sleep; set by cancel.
        self._waker: threading.Event | None = None

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, timed out, or its group failed."""
        return self._task is not None and self._task._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if :attr:`cancelled` is true."""
        if self.cancelled:
            raise self._cancelled_error()

    def _cancelled_error(self) -> Cancelled:
        return Cancelled(f"task {self.name!r} was cancelled")

    def _wake(self) -> None:
        """Wake a pt.sleep of this task: called after its cancel flag was set."""
        waker = self._waker
        if waker is not None:
            waker.set()

    def _sleep(self, seconds: float | None) -> None:
        waker = self._waker
        if waker is None:
            # Stored before the flag is read: a cancel that sets the flag after this
            # read finds the waker and sets it (see _wake), so no wake-up is lost.
            waker = self._waker = threading.Event()
        self.raise_if_cancelled()
        waker.wait(seconds)
        self.raise_if_cancelled()

    def _wait_in_slices(self, attempt: Callable[[float | None], R], timeout: float | None) -> R:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.cancelled:
                raise self._cancelled_error()
            if deadline is None:
                got = attempt(CANCEL_SLICE)
            else:
                left = deadline - time.monotonic()
                if left <= CANCEL_SLICE:
                    return attempt(max(0.0, left))
                got = attempt(CANCEL_SLICE)
            if got:
                return got

    def __repr__(self) -> str:
        return f"<CurrentTask {self.name!r}{' cancelled' if self.cancelled else ''}>"


class _Local(threading.local):
    # A class-level default: reading it outside tasks is a plain lookup, not a
    # caught AttributeError (cancellation checks run on fast paths).
    current: CurrentTask | None = None


_local = _Local()
_MAIN = CurrentTask("main")

#: The longest a blocking polytask call inside a thread task waits before it looks
#: at the task's cancel flag again: a cancelled task notices within this.
CANCEL_SLICE = 0.05


def current_task() -> CurrentTask:
    """The task the calling code runs in (outside any task: one named 'main', never cancelled)."""
    return _local.current or _MAIN


def _set_current(info: CurrentTask | None) -> None:
    _local.current = info


def cancellable_task() -> CurrentTask | None:
    """The calling thread's task if it can be cancelled while it runs (a thread task), else None.

    Process, Dask and Ray workers stop a cancelled task by killing it (or not at
    all): their tasks have no flag to watch, and neither has code outside tasks.
    """
    info = _local.current
    if info is None or info._task is None:
        return None
    return info


def wait_cancellable(attempt: Callable[[float | None], R], timeout: float | None) -> R:
    """Make one blocking wait a cancellation point of the calling thread task.

    ``attempt(t)`` waits at most ``t`` seconds (None: no limit) and returns a
    false value if the time ran out; ``timeout`` is already checked
    (:func:`check_timeout`). Outside thread tasks ``attempt(timeout)`` is all
    that happens. Inside one, it waits in slices of at most :data:`CANCEL_SLICE`
    and raises :class:`Cancelled` (before the first slice too) once the task is
    cancelled. Callers try their non-blocking fast path first: a call that can
    complete at once completes, even in a cancelled task (so clean-up code can
    still take a free lock).
    """
    me = cancellable_task()
    if me is None:
        return attempt(timeout)
    return me._wait_in_slices(attempt, timeout)


def sleep(seconds: float) -> None:
    """``time.sleep`` that a cancelled thread task wakes from at once.

    Inside a thread task that is cancelled (``task.cancel()``, its timeout, or a
    failure in its TaskGroup) it raises :class:`Cancelled`: at the call if the task
    is already cancelled, else the moment the cancel comes. Outside a task it is
    ``time.sleep``. ``float("inf")`` sleeps until cancelled.

    Example::

        def poll(url):
            while True:
                check(url)
                pt.sleep(5)   # the group's failure ends this loop at once
    """
    if seconds is None:
        raise TypeError("seconds must be a number of seconds, not None")
    limit = check_timeout(seconds, "seconds")
    me = cancellable_task()
    if me is not None:
        me._sleep(limit)
    elif limit is not None:
        time.sleep(limit)
    else:
        while True:  # no task can cancel this: only a signal ends it
            time.sleep(86400.0)


def checkpoint() -> None:
    """Raise :class:`Cancelled` if the calling thread task was cancelled; else do nothing.

    The cheap check for loops that compute without blocking (blocking polytask
    calls and :func:`sleep` check by themselves). Outside a task it does nothing;
    it is ``pt.current_task().raise_if_cancelled()``.
    """
    info = _local.current
    if info is not None:
        info.raise_if_cancelled()
