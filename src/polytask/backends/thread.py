"""The thread backend: tasks run on reused daemon threads of this process.

Threads cannot be killed, so a thread task that is cancelled or runs past its
timeout is *flagged* (``pt.current_task().cancelled``) and its caller is told
at once (:class:`TaskTimeout`), or when the thread ends (:class:`Cancelled`), or
when a ``shutdown(cancel=True)`` abandons it after its grace (:class:`Cancelled`).
The thread stops at its next cancellation point: ``pt.sleep`` (woken at once),
``pt.checkpoint``, or any blocking polytask call (which waits in slices of
``CANCEL_SLICE`` and looks at the flag between them), each raising
:class:`Cancelled`; or when the function returns.

It also owns the thread backend's synchronisation primitives (``threading``
wrapped so that every wait takes ``timeout=``, is a cancellation point and
joins lock-order checking) and its Channel (a deque under a condition).
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from queue import Empty, SimpleQueue
from threading import BrokenBarrierError
from typing import Any, ClassVar, TypeVar, cast

from .._core import debug as _dbg
from .._core.backend import Backend, expired_at_start
from .._core.channel import Channel, check_maxsize
from .._core.errors import (
    Cancelled,
    ChannelClosed,
    ChannelEmpty,
    ChannelFull,
    PolytaskError,
    SerializationError,
    TaskTimeout,
)
from .._core.primitives import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
    check_count_after_release,
    check_n,
    check_parties,
    check_value,
    label,
    no_pickle,
)
from .._core.task import (
    CANCEL_SLICE,
    CurrentTask,
    Task,
    _set_current,
    cancellable_task,
    delivering,
    serving,
    wait_cancellable,
)
from .._core.timeouts import FOREVER as _FOREVER
from .._core.timeouts import acquire_timeout, check_timeout
from .._core.timeouts import deadline as _deadline
from .._core.timer import call_later

__all__ = ["ThreadBackend"]

T = TypeVar("T")
# Timeouts a channel takes as they are, without check_timeout (see put/get).
_PLAIN = frozenset({int, float})

_Item = tuple[Task[Any], Callable[..., Any], Sequence[Any], Mapping[str, Any]] | None

#: An idle thread waits this long for work before it exits.
IDLE_SECONDS = 30.0


class ThreadBackend(Backend):
    """Runs each task on a thread; idle threads are reused.

    Args:
        max_workers: at most this many tasks run at once (None: no limit, as
            ``threading.Thread`` has none).
        initializer, initargs: ``initializer(*initargs)`` runs in each new thread
            before its first task, as in ``ThreadPoolExecutor``; if it raises, the
            task that thread was to run fails (``PolytaskError``, the error as its
            ``__cause__``) and the thread ends, as a process worker does.
        thread_name_prefix: name the threads ``<prefix>_<n>`` (as
            ``ThreadPoolExecutor`` does) instead of after their first task.
    """

    name: ClassVar[str] = "thread"
    primitives: ClassVar[Mapping[str, Any]] = {}  # filled below, once the classes exist

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        thread_name_prefix: str = "",
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, not {type(thread_name_prefix).__name__}"
            )
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._prefix = thread_name_prefix
        self._thread_ids = itertools.count()
        self._max = max_workers
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        # Tasks submitted and not yet returned from (queued or running).
        self._live: set[Task[Any]] = set()
        # Threads a shutdown(cancel=True) gave up on: no later shutdown waits for them.
        self._abandoned: set[threading.Thread] = set()
        # The task each of our threads runs (.task): the one a shutdown from inside a
        # task spares. Not the thread's CurrentTask: a Pool's item runs inside a chunk.
        self._here = threading.local()
        self._closed = False

    def submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str,
        timeout: float | None,
    ) -> Task[T]:
        task: Task[T] = Task(self, name, timeout)
        with self._lock:
            if self._closed:
                raise RuntimeError("this thread backend is shut down; create a new one")
            if timeout == 0:
                return expired_at_start(task)  # never queued: see there
            self._queue.put((task, fn, args, kwargs))
            self._live.add(task)
            if not self._idle.acquire(blocking=False) and (
                self._max is None or len(self._threads) < self._max
            ):
                t = threading.Thread(target=self._work, name=self._thread_name(name), daemon=True)
                self._threads.add(t)
                t.start()
        return task

    def _thread_name(self, task_name: str) -> str:
        # Called with self._lock held.
        if self._prefix:
            return f"{self._prefix}_{next(self._thread_ids)}"
        return f"polytask-thread-{task_name}"

    def _work(self) -> None:
        me = threading.current_thread()
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as exc:
                self._initializer_failed(me, exc)
                return
        while True:
            try:
                item = self._queue.get(timeout=IDLE_SECONDS)
            except Empty:
                with self._lock:
                    # Leave only if no task was handed to us in the meantime.
                    if self._idle.acquire(blocking=False):
                        self._threads.discard(me)
                        return
                continue
            if item is None:
                with self._lock:
                    self._threads.discard(me)
                return
            self._run(*item)
            del item
            self._idle.release()

    def _initializer_failed(self, me: threading.Thread, exc: BaseException) -> None:
        """Fail the task this thread was started for, and end the thread."""
        with self._lock:
            self._threads.discard(me)
        try:
            item = self._queue.get_nowait()
        except Empty:
            return  # another thread took it
        if item is None:
            self._queue.put(None)  # a shutdown's stop signal, for another thread
            return
        task = item[0]
        err = PolytaskError(f"the pool's initializer failed in a worker thread: {exc!r}")
        err.__cause__ = exc
        if task.set_running_or_notify_cancel():
            task._finish(exc=err)
        with self._lock:
            self._live.discard(task)
            # Tasks still queued need a thread (which tries the initializer again).
            if (
                not self._closed
                and not self._queue.empty()
                and (self._max is None or len(self._threads) < self._max)
            ):
                t = threading.Thread(
                    target=self._work, name=self._thread_name(task.name), daemon=True
                )
                self._threads.add(t)
                t.start()

    def _run(
        self,
        task: Task[Any],
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> None:
        if not task.set_running_or_notify_cancel():
            with self._lock:
                self._live.discard(task)
            return
        task._mark_started()
        here = self._here
        here.task = task
        info = CurrentTask(task.name, task)
        # Where cancel() finds the task's waker; set before the function runs, so a
        # cancel either sees it or came before the function's first look at the flag.
        task._slot = info
        if task.timeout is not None:
            task._timer = call_later(task.timeout, functools.partial(self._expire, task))
        _set_current(info)
        try:
            try:
                result = fn(*args, **kwargs)
                error: BaseException | None = None
            except BaseException as exc:  # Cancelled included: the task reports cancelled()
                result, error = None, exc
            # The task's done callbacks run here, on this worker, which the tasks
            # queued behind it may need: one waiting for them (Pool.join, a
            # shutdown(wait=True)) would wait for itself. Marked as the process
            # backend's reader is, so that those calls refuse instead of hanging. Not
            # for callbacks run elsewhere (a cancel() in the caller, a timeout's timer).
            outer = getattr(serving, "backends", ())
            serving.backends = (*outer, self)
            try:
                task._finish(result, error)
            finally:
                serving.backends = outer
        finally:
            _set_current(None)
            here.task = None
            task._slot = None  # task -> info -> task: a cycle per task for the GC otherwise
            with self._lock:
                self._live.discard(task)

    @staticmethod
    def _flag(task: Task[Any]) -> None:
        task._cancel_requested = True
        info = task._slot
        if isinstance(info, CurrentTask):
            info._wake()

    def _expire(self, task: Task[Any]) -> None:
        self._flag(task)
        task._finish(
            exc=TaskTimeout(
                f"task {task.name!r} ran past its timeout of {task.timeout:g} s; it runs on a "
                "thread, which cannot be killed: it was flagged cancelled "
                "(pt.current_task().cancelled) and its result will be dropped",
                name=task.name,
                timeout=task.timeout,
            )
        )

    def cancel(self, task: Task[Any]) -> bool:
        # Flagged already by Task.cancel(); wake its pt.sleep, and its blocking calls
        # notice within CANCEL_SLICE. The thread itself must stop: it cannot be killed.
        self._flag(task)
        return False

    def live_tasks(self) -> list[Task[Any]]:
        with self._lock:
            return list(self._live)

    def runs_here(self) -> bool:
        """True on one of this backend's threads while it runs a task: a wait there for
        all of the backend's tasks (a Pool's join) would wait for itself."""
        return getattr(self._here, "task", None) is not None

    def shutdown(self, *, wait: bool = True, cancel: bool = False, grace: float = 5.0) -> None:
        """Stop the threads. Running tasks that ignore their cancel flag are waited for
        at most ``grace`` seconds, then abandoned (daemon threads end with the process)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel:
            while True:
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    break
                if item is not None:
                    item[0].cancel()
                    with self._lock:
                        self._live.discard(item[0])  # it never reaches a thread now
            # Read after the queue is empty, not before: a task an idle thread took
            # off the queue in between is neither drained nor seen running by an
            # earlier look, and ran on uncancelled (on 3.13 the waiting thread wins
            # that race most times).
            with self._lock:
                live = list(self._live)
            for task in live:
                task.cancel()
        for _ in threads:
            self._queue.put(None)
        if delivering(self):
            # From a done callback on one of our workers: the tasks still to run may
            # need this very thread (as the process backend's reader, it does not wait).
            wait = False
        me = threading.current_thread()  # a task shutting its own backend down
        mine: Task[Any] | None = getattr(self._here, "task", None)  # ... goes on
        if wait:
            self._settle(threads, cancel, grace, me, mine)
        elif cancel:
            # Nobody waits here, but a task that ignores its cancellation must still be
            # abandoned after the grace (failed Cancelled), or what waits for it waits
            # for good: a Pool's join() after a terminate() from a done callback.
            threading.Thread(
                target=self._settle,
                args=(threads, cancel, grace, me, mine),
                name="polytask-thread-shutdown",
                daemon=True,
            ).start()

    def _settle(
        self,
        threads: list[threading.Thread],
        cancel: bool,
        grace: float,
        me: threading.Thread,
        mine: Task[Any] | None,
    ) -> None:
        """The waiting part of :meth:`shutdown`: for the threads (with ``cancel``, at
        most ``grace`` seconds), then abandon the tasks still out (failed Cancelled)."""
        start = time.monotonic()
        deadline = start + grace if cancel else None
        for t in threads:
            if t is me:
                continue
            # Looked at in the loop too: another shutdown may abandon it meanwhile.
            while t.is_alive() and t not in self._abandoned and not self._only_daemons_left():
                if deadline is None:
                    t.join(0.05)
                elif (left := deadline - time.monotonic()) > 0:
                    t.join(min(left, 0.05))
                else:
                    break
        with self._lock:
            # Not one an earlier shutdown abandoned (done already: told once).
            out = [task for task in self._live if task is not mine and not task._is_done()]
        late = [task.name for task in out if not task.daemon]
        if late and any(t.is_alive() for t in threads if t is not me):
            print(
                f"polytask: {len(late)} thread task(s) ignored cancellation for {grace:g} s and "
                "were abandoned (threads cannot be killed; call pt.checkpoint() in long "
                f"loops): {', '.join(map(repr, late[:10]))}",
                file=sys.stderr,
            )
        if cancel:
            with self._lock:
                self._abandoned.update(t for t in threads if t is not me and t.is_alive())
            # Abandoned: what they return later is dropped (as after a timeout). Told
            # now, so that nothing waits for them: a Pool's join() after terminate().
            # Daemon tasks alone are not waited for (see _only_daemons_left): no grace.
            waited = min(grace, time.monotonic() - start)
            for task in out:
                why = (
                    "as a daemon task it was not waited for"
                    if task.daemon and waited < grace
                    else f"it ignored its cancellation for {grace:g} s"
                )
                task._finish(
                    exc=Cancelled(
                        f"task {task.name!r} was cancelled; {why} and was abandoned (its "
                        "thread runs on, its result will be dropped)"
                    )
                )

    def _only_daemons_left(self) -> bool:
        # Daemon tasks are abandoned at exit (see backends.wait_at_exit), not waited for.
        with self._lock:
            return bool(self._live) and all(task.daemon for task in self._live)


# --------------------------------------------------------------------------- primitives


def _acquire_timeout(lock: Any, timeout: float | None) -> bool:
    # threading's locks spell "no limit" as -1.
    return bool(lock.acquire(True, -1 if timeout is None else timeout))


class _ThreadLock(Lock):
    backend = "thread"

    def __init__(self, *, backend: str = "thread", name: str | None = None) -> None:
        self._lock = threading.Lock()
        self._key = _dbg.new_key()
        self.name = name
        self._label = label("Lock", name, self._key)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = acquire_timeout(blocking, timeout)
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, blocking)
            ok = self._acquire(blocking, timeout)
            if ok:
                _dbg.after_acquire(self._key)
            return ok
        return self._acquire(blocking, timeout)

    def _acquire(self, blocking: bool, timeout: float | None) -> bool:
        lock = self._lock
        if lock.acquire(False):  # the fast path: free, nothing to wait for
            return True
        if not blocking:
            return False
        return wait_cancellable(lambda t: _acquire_timeout(lock, t), timeout)

    def release(self) -> None:
        self._lock.release()
        if _dbg.enabled:
            _dbg.on_release(self._key)

    def locked(self) -> bool:
        return self._lock.locked()

    # What a Condition uses to wait with this lock.
    def _release_save(self) -> None:
        self.release()

    def _acquire_restore(self, state: None) -> None:
        # Not a cancellation point: a Condition's wait must return (or raise) with
        # its lock held, whatever happens, or the `with cond:` around it breaks.
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, True)
        self._lock.acquire()
        if _dbg.enabled:
            _dbg.after_acquire(self._key)

    def _is_owned(self) -> bool:
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def __reduce__(self) -> Any:
        return no_pickle(self)

    def __repr__(self) -> str:
        return f"<{self._label} backend='thread' {'locked' if self.locked() else 'unlocked'}>"


class _ThreadRLock(RLock):
    backend = "thread"

    def __init__(self, *, backend: str = "thread", name: str | None = None) -> None:
        self._lock = threading.RLock()
        self._key = _dbg.new_key()
        self.name = name
        self._label = label("RLock", name, self._key)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = acquire_timeout(blocking, timeout)
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, blocking)
            ok = self._acquire(blocking, timeout)
            if ok:
                _dbg.after_acquire(self._key)
            return ok
        return self._acquire(blocking, timeout)

    def _acquire(self, blocking: bool, timeout: float | None) -> bool:
        lock = self._lock
        if lock.acquire(False):  # free, or ours already
            return True
        if not blocking:
            return False
        return wait_cancellable(lambda t: _acquire_timeout(lock, t), timeout)

    def release(self) -> None:
        self._lock.release()
        if _dbg.enabled:
            _dbg.on_release(self._key)

    def _release_save(self) -> Any:
        state = self._lock._release_save()  # type: ignore[attr-defined]
        if _dbg.enabled:
            for _ in range(state[0]):
                _dbg.on_release(self._key)
        return state

    def _acquire_restore(self, state: Any) -> None:
        # Not a cancellation point (see _ThreadLock._acquire_restore).
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, True)
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]
        if _dbg.enabled:
            for _ in range(state[0]):
                _dbg.after_acquire(self._key)

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def __reduce__(self) -> Any:
        return no_pickle(self)

    def __repr__(self) -> str:
        return f"<{self._label} backend='thread'>"


class _Cond:
    """A condition variable whose waits are cancellation points of thread tasks.

    ``threading.Condition``'s algorithm (each waiter sleeps on a lock of its own
    that ``notify`` releases), with the sleep done by :func:`wait_cancellable`. A
    waiter stays registered across the slices, so no notification falls between
    two of them; a waiter cancelled after it was notified passes the
    notification on, so ``notify(1)`` is not lost either. It works over our
    thread locks, ``threading.Lock`` and ``threading.RLock``.
    """

    __slots__ = ("_acquire_restore", "_is_owned", "_lock", "_release_save", "_waiters")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiters: deque[Any] = deque()
        # As threading.Condition: the lock's own helpers where it has them (an RLock
        # must be released fully for the wait and restored to its depth after it).
        self._release_save: Callable[[], Any] = getattr(lock, "_release_save", lock.release)
        restore = getattr(lock, "_acquire_restore", None)
        self._acquire_restore: Callable[[Any], Any] = (
            restore if restore is not None else lambda _state: lock.acquire()
        )
        owned = getattr(lock, "_is_owned", None)
        self._is_owned: Callable[[], bool] = owned if owned is not None else self._probe_owned

    def _probe_owned(self) -> bool:
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def __enter__(self) -> bool:
        return bool(self._lock.acquire())

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Wait (lock held) until notified; False if ``timeout`` (checked) passed first."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = threading.Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        saved = self._release_save()
        try:
            got = wait_cancellable(lambda t: _acquire_timeout(waiter, t), timeout)
        except BaseException:
            self._acquire_restore(saved)
            if not self._forget(waiter):
                self._notify(1)  # we were notified as the cancel came: pass it on
            raise
        self._acquire_restore(saved)
        if not got and not self._forget(waiter):
            got = True  # notified just as the time ran out
        return got

    def _forget(self, waiter: Any) -> bool:
        """Unregister a waiter that stopped waiting; False if a notify had taken it."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None) -> Any:
        """Wait (lock held) until ``predicate()``; returns its last value."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._notify(n)

    def _notify(self, n: int) -> None:
        waiters = self._waiters
        while waiters and n > 0:
            waiters.popleft().release()
            n -= 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters))


class _ThreadEvent(Event):
    backend = "thread"

    def __init__(self, *, backend: str = "thread") -> None:
        self._cond = _Cond(threading.Lock())
        self._flag = False
        self._sets = 0

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._sets += 1
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        timeout = check_timeout(timeout)
        if self._flag:
            return True
        with self._cond:
            sets = self._sets
            # True once set, even if cleared again before this waiter woke (as threading.Event).
            return bool(self._cond.wait_for(lambda: self._flag or self._sets != sets, timeout))

    def __reduce__(self) -> Any:
        return no_pickle(self)


class _ThreadCondition(Condition):
    backend = "thread"

    def __init__(self, lock: Any = None, *, backend: str | None = "thread") -> None:
        if lock is None:
            lock = _ThreadRLock()
        elif getattr(lock, "backend", "thread") != "thread":
            raise TypeError("a Condition(backend='thread') needs a thread Lock or RLock")
        self._lock = lock
        self._cond = _Cond(lock)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        return self._cond.wait(check_timeout(timeout))

    def notify(self, n: int = 1) -> None:
        self._cond.notify(n)

    def notify_all(self) -> None:
        self._cond.notify_all()

    def __reduce__(self) -> Any:
        return no_pickle(self)


class _ThreadSemaphore(Semaphore):
    backend = "thread"
    _bounded = False

    def __init__(self, value: int = 1, *, backend: str = "thread") -> None:
        check_value(value)
        self._sem = (
            threading.BoundedSemaphore(value) if self._bounded else threading.Semaphore(value)
        )

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = acquire_timeout(blocking, timeout)
        sem = self._sem
        if sem.acquire(False):
            return True
        if not blocking:
            return False
        # The count is state: a release between two slices is seen by the next one.
        return wait_cancellable(lambda t: sem.acquire(True, t), timeout)

    def release(self, n: int = 1) -> None:
        check_n(n)
        # threading.Semaphore.release(n) as it is, but one notify of up to n
        # waiters: its own notifies them one call per unit, and release(2**40) hung.
        sem = cast(Any, self._sem)
        with sem._cond:
            value = sem._value + n
            if self._bounded and value > sem._initial_value:
                raise ValueError("Semaphore released too many times")
            check_count_after_release(value)
            sem._value = value
            sem._cond.notify(n)

    def __reduce__(self) -> Any:
        return no_pickle(self)


class _ThreadBoundedSemaphore(_ThreadSemaphore, BoundedSemaphore):
    _bounded = True


# _ThreadBarrier's states (threading.Barrier's).
_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2


class _ThreadBarrier(Barrier):
    """``threading.Barrier``'s algorithm over a :class:`_Cond`, so waiting is a
    cancellation point; a waiter that is cancelled breaks the barrier (as a
    timeout does), since the others would otherwise wait for a party that left."""

    backend = "thread"

    def __init__(
        self,
        parties: int,
        action: Callable[[], Any] | None = None,
        timeout: float | None = None,
        *,
        backend: str = "thread",
    ) -> None:
        check_parties(parties)
        self._cond = _Cond(threading.Lock())
        self._action = action
        self._timeout = check_timeout(timeout)
        self._parties = parties
        self._state = _FILLING
        self._count = 0

    def wait(self, timeout: float | None = None) -> int:
        timeout = check_timeout(timeout)
        if timeout is None:
            timeout = self._timeout
        with self._cond:
            # Wait while a previous round drains or a reset completes.
            self._cond.wait_for(lambda: self._state not in (_DRAINING, _RESETTING), None)
            if self._state == _BROKEN:
                raise BrokenBarrierError
            index = self._count
            self._count += 1
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                self._count -= 1
                if self._count == 0 and self._state in (_DRAINING, _RESETTING):
                    self._state = _FILLING
                    self._cond.notify_all()

    def _release(self) -> None:
        try:
            if self._action is not None:
                self._action()
            self._state = _DRAINING
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None) -> None:
        try:
            done = self._cond.wait_for(lambda: self._state != _FILLING, timeout)
        except BaseException:
            self._break()
            raise
        if not done:
            self._break()
            raise BrokenBarrierError
        if self._state < 0:
            raise BrokenBarrierError

    def _break(self) -> None:
        self._state = _BROKEN
        self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            if self._count > 0:
                if self._state == _FILLING or self._state == _BROKEN:
                    self._state = _RESETTING  # its waiters raise BrokenBarrierError
            else:
                self._state = _FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._break()

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return self._count if self._state == _FILLING else 0

    @property
    def broken(self) -> bool:
        return self._state == _BROKEN

    def __reduce__(self) -> Any:
        return no_pickle(self)


# --------------------------------------------------------------------------- channel


class _ThreadChannel(Channel[T]):
    """A deque under one lock, with two conditions (like queue.Queue) and close."""

    def __init__(self, maxsize: int = 0, *, backend: str = "thread", capacity: int | None = None):
        check_maxsize(maxsize)
        self.backend = "thread"
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    def put(self, item: T, timeout: float | None = None) -> None:
        # A bad timeout fails even when there is room; a plain one skips the call.
        if timeout is not None and (type(timeout) not in _PLAIN or not 0 <= timeout < _FOREVER):
            timeout = check_timeout(timeout)
        with self._not_full:
            if self._closed:
                raise ChannelClosed("put() on a closed channel")
            if self.maxsize and len(self._items) >= self.maxsize:
                deadline = _deadline(timeout)
                task = cancellable_task()
                while len(self._items) >= self.maxsize:
                    if self._closed:
                        raise ChannelClosed("the channel was closed while put() waited for room")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise ChannelFull(f"the channel stayed full for {timeout:g} s")
                    if task is None:
                        self._not_full.wait(left)
                    else:
                        if not task.cancelled:
                            self._not_full.wait(
                                CANCEL_SLICE if left is None else min(left, CANCEL_SLICE)
                            )
                        if task.cancelled:
                            self._not_full.notify()  # pass on a wake-up this waiter may have had
                            task.raise_if_cancelled()
            self._items.append(item)
            self._not_empty.notify()

    def get(self, timeout: float | None = None) -> T:
        # A bad timeout fails even when an item is there; a plain one skips the call.
        if timeout is not None and (type(timeout) not in _PLAIN or not 0 <= timeout < _FOREVER):
            timeout = check_timeout(timeout)
        with self._not_empty:
            if not self._items:
                deadline = _deadline(timeout)
                task = cancellable_task()
                while not self._items:
                    if self._closed:
                        raise ChannelClosed("get() on a closed and drained channel")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise ChannelEmpty(f"the channel stayed empty for {timeout:g} s")
                    if task is None:
                        self._not_empty.wait(left)
                    else:
                        if not task.cancelled:
                            self._not_empty.wait(
                                CANCEL_SLICE if left is None else min(left, CANCEL_SLICE)
                            )
                        if task.cancelled:
                            self._not_empty.notify()  # pass on a wake-up this waiter may have had
                            task.raise_if_cancelled()
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def __reduce__(self) -> Any:
        raise SerializationError(
            "a Channel(backend='thread') lives in one process and cannot be sent to another; "
            "create it with backend='process' to pass it to process tasks"
        )


ThreadBackend.primitives = {
    "Lock": _ThreadLock,
    "RLock": _ThreadRLock,
    "Event": _ThreadEvent,
    "Condition": _ThreadCondition,
    "Semaphore": _ThreadSemaphore,
    "BoundedSemaphore": _ThreadBoundedSemaphore,
    "Barrier": _ThreadBarrier,
    "Channel": _ThreadChannel,
}
