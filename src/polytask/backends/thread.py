"""The thread backend: tasks run on reused daemon threads of this process.

Threads cannot be killed, so a thread task that is cancelled or runs past its
timeout is *flagged* (``pt.current_task().cancelled``) and its caller is told
at once (:class:`TaskTimeout`), or when the thread ends (:class:`Cancelled`).
The thread stops at its next cancellation point: ``pt.sleep`` (woken at once),
``pt.checkpoint``, or any blocking polytask call (which waits in slices of
``CANCEL_SLICE`` and looks at the flag between them), each raising
:class:`Cancelled`; or when the function returns.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from queue import Empty, SimpleQueue
from typing import Any, ClassVar, TypeVar

from .._errors import PolytaskError, TaskTimeout
from .._task import CurrentTask, Task, _set_current
from .._timer import call_later
from . import Backend

__all__ = ["ThreadBackend"]

T = TypeVar("T")

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
        info = CurrentTask(task.name, task)
        # Where cancel() finds the task's waker; set before the function runs, so a
        # cancel either sees it or came before the function's first look at the flag.
        task._slot = info
        if task.timeout is not None:
            task._timer = call_later(task.timeout, functools.partial(self._expire, task))
        _set_current(info)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # Cancelled included: the task reports cancelled()
            task._finish(exc=exc)
        else:
            task._finish(result)
        finally:
            _set_current(None)
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

    def shutdown(self, *, wait: bool = True, cancel: bool = False, grace: float = 5.0) -> None:
        """Stop the threads. Running tasks that ignore their cancel flag are waited for
        at most ``grace`` seconds, then abandoned (daemon threads end with the process)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            running = [t for t in self._live if t.running()]
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
            for task in running:
                task.cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            deadline = time.monotonic() + grace if cancel else None
            for t in threads:
                while t.is_alive() and not self._only_daemons_left():
                    if deadline is None:
                        t.join(0.05)
                    elif (left := deadline - time.monotonic()) > 0:
                        t.join(min(left, 0.05))
                    else:
                        break
            with self._lock:
                late = [task.name for task in self._live if not task.daemon]
            if late and any(t.is_alive() for t in threads):
                print(
                    f"polytask: {len(late)} thread task(s) ignored cancellation for {grace:g} s and "
                    "were abandoned (threads cannot be killed; call pt.checkpoint() in long "
                    f"loops): {', '.join(map(repr, late[:10]))}",
                    file=sys.stderr,
                )

    def _only_daemons_left(self) -> bool:
        # Daemon tasks are abandoned at exit (see backends.wait_at_exit), not waited for.
        with self._lock:
            return bool(self._live) and all(task.daemon for task in self._live)
