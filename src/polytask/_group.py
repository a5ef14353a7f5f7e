"""TaskGroup: structured fork-join over any backend.

Leaving the ``with`` block waits for every task spawned in it. The first task
to fail cancels the others (process tasks are killed, pending ones never start,
thread tasks are flagged and raise :class:`Cancelled` at their next
cancellation point: ``pt.sleep``, ``pt.checkpoint``, a blocking polytask call);
the block then raises an ``ExceptionGroup`` of the real failures, so
``except* ValueError`` works. KeyboardInterrupt and SystemExit are not grouped:
every child is stopped and reaped, then they propagate as they are (as
asyncio.TaskGroup does).

A group whose block runs inside a thread task that gets cancelled passes the
cancel on to its tasks, still waits for them to end (they do at their next
cancellation point), then raises :class:`Cancelled`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, TypeVarTuple, Unpack, overload

from ._core.backend import fn_name
from ._core.errors import Cancelled, TaskTimeout
from ._core.task import CANCEL_SLICE, Task, cancellable_task
from ._core.timeouts import check_timeout
from ._core.timer import call_later
from ._factories import PrimitiveFactory
from .backends import Backend, get_backend

__all__ = ["TaskGroup"]

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

#: After Ctrl-C, how long to wait for thread tasks to notice they were cancelled.
_INTERRUPT_THREAD_WAIT = 0.5


_local = threading.local()


def _open_groups() -> list[TaskGroup]:
    """The groups whose ``with`` block this thread is in, innermost last."""
    stack: list[TaskGroup] | None = getattr(_local, "groups", None)
    if stack is None:
        stack = _local.groups = []
    return stack


class TaskGroup(PrimitiveFactory):
    """Run tasks together; nothing spawned in the block outlives it.

    Args:
        backend: ``"thread"``, ``"process"`` or a backend object; every task of
            the group runs there.
        timeout: seconds for the whole group; past it every task is cancelled
            and the block raises :class:`TaskTimeout` (0: expired at the start, so
            every task spawned in the block is born cancelled; inf: no limit).
        name: for messages.

    Example::

        with pt.TaskGroup(backend="process") as g:
            a = g.spawn(pow, 2, 10)
            b = g.spawn(pow, 3, 3)
        assert (a.result(), b.result()) == (1024, 27)
    """

    def __init__(
        self,
        backend: str | Backend = "thread",
        *,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        self._backend_spec = backend
        self._backend: Backend = get_backend(backend)
        self._timeout = check_timeout(timeout)
        self.name = name or "TaskGroup"
        self._tasks: list[Task[Any]] = []
        self._failed: list[Task[Any]] = []
        self._lock = threading.Lock()
        self._cancelling = False
        self._timed_out = False
        self._state = "new"
        self._timer: Any = None
        self._children: list[TaskGroup] = []
        self._parent_cancelled = False
        self._owner_cancelled = False

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def tasks(self) -> list[Task[Any]]:
        """The tasks spawned so far, in order."""
        return list(self._tasks)

    def __enter__(self) -> TaskGroup:
        if self._state != "new":
            raise RuntimeError("a TaskGroup can be entered only once; create a new one")
        self._state = "open"
        stack = _open_groups()
        if stack:
            # Nested in this thread: the outer group's failure or deadline reaches us.
            parent = stack[-1]
            with parent._lock:
                parent._children.append(self)
                cancelled = parent._cancelling
            if cancelled:
                self.cancel()
        stack.append(self)
        if self._timeout == 0:
            # Expired already: cancelled now, not by a timer that tasks spawned in the
            # block could beat. They are born cancelled, and the block raises TaskTimeout.
            self._on_deadline()
        elif self._timeout is not None:
            self._timer = call_later(self._timeout, self._on_deadline)
        return self

    # Typed as polytask.spawn is (the reasons are in _spawn.py): the arguments are
    # checked against fn's signature.
    @overload
    def spawn(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = ...,
        timeout: float | None = ...,
    ) -> Task[T]: ...
    @overload
    def spawn(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
    @overload
    def spawn(
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = ...,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> Task[T]: ...

    def spawn(  # type: ignore[misc]
        self,
        fn: Callable[[Unpack[Ts]], T],
        /,
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Task[T]:
        """Start ``fn(*args, **kwargs)`` as a task of this group; see :func:`polytask.spawn`."""
        if self._state != "open":
            raise RuntimeError(
                "TaskGroup.spawn() works only inside the group's with block "
                f"(the group is {self._state})"
            )
        if self._cancelling:
            # The group already failed: the task is born cancelled and never starts.
            task: Task[T] = Task(self._backend, name or fn_name(fn), check_timeout(timeout))
            task.cancel()
            return self._adopt(task)
        return self._adopt(self._backend.spawn(fn, args, kwargs, name=name, timeout=timeout))

    def run(self, args: Any, /, *, name: str | None = None, **options: Any) -> Task[Any]:
        """Run a program as a task of this group: :func:`polytask.run` on a thread.

        A program is already its own process, so a thread waits for it whatever the
        group's backend; cancelling the group ends the program's whole process tree.
        ``options`` are those of :func:`polytask.run`.
        """
        if self._state != "open":
            raise RuntimeError(
                "TaskGroup.run() works only inside the group's with block "
                f"(the group is {self._state})"
            )
        from ._commands import run

        label = name or (args if isinstance(args, str) else " ".join(map(str, args)))[:80]
        backend = get_backend("thread")
        if self._cancelling:
            # As in spawn: born cancelled, the program never starts (started, then
            # cancelled by _adopt, it ran whenever its thread got there first).
            task: Task[Any] = Task(backend, label, None)
            task.cancel()
            return self._adopt(task)
        return self._adopt(backend.spawn(run, (args,), options, name=label))

    def _adopt(self, task: Task[T]) -> Task[T]:
        with self._lock:
            self._tasks.append(task)
            cancelling = self._cancelling
        if cancelling:
            task.cancel()
        task.add_done_callback(self._child_done)
        return task

    def cancel(self) -> None:
        """Cancel every task of the group and of groups nested in it.

        The block still waits for them to end.
        """
        with self._lock:
            self._cancelling = True
            tasks = list(self._tasks)
            children = list(self._children)
        for t in tasks:
            if not t._is_done():
                t.cancel()
        for child in children:
            child._parent_cancelled = True
            child.cancel()

    def _child_done(self, task: Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception(0)
        if exc is None:
            return
        with self._lock:
            self._failed.append(task)
            first = not self._cancelling
        if first:
            self.cancel()

    def _on_deadline(self) -> None:
        if self._state == "open" or self._state == "closing":
            self._timed_out = True
            self.cancel()

    def _wait_all(self) -> None:
        # The thread task this block runs in, if it can be cancelled: its cancel is
        # passed on to the group's tasks, and the waiting goes on until they end.
        owner = cancellable_task()
        i = 0
        while True:
            with self._lock:
                if i >= len(self._tasks):
                    return
                task = self._tasks[i]
            if owner is None:
                task._wait(None)
            else:
                while not task._wait(CANCEL_SLICE):
                    if owner.cancelled and not self._owner_cancelled:
                        self._owner_cancelled = True
                        self.cancel()
            i += 1

    def _interrupted(self) -> None:
        """Ctrl-C while waiting: stop everything, reap the processes, do not hang."""
        self.cancel()
        now = time.monotonic()
        deadline = now + 5.0
        # One shared wait for all thread tasks: they cannot be killed, and Ctrl-C
        # must arrive within a second however many there are.
        thread_deadline = now + _INTERRUPT_THREAD_WAIT
        for task in list(self._tasks):
            if task._is_done():
                continue
            until = thread_deadline if task.backend == "thread" else deadline
            task._wait(max(0.0, until - time.monotonic()))  # not a cancellation point

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self._state = "closing"
        if exc is not None:
            self.cancel()
        try:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self._interrupted()
            else:
                try:
                    self._wait_all()
                except BaseException:
                    self._interrupted()
                    raise
        finally:
            self._state = "closed"
            if self._timer is not None:
                self._timer.cancel()
            stack = _open_groups()
            if self in stack:
                stack.remove(self)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return False
        errors: list[Exception] = []
        # A nested group we cancelled says so with Cancelled: not a failure of its own.
        if isinstance(exc, Exception) and not (isinstance(exc, Cancelled) and self._cancelling):
            errors.append(exc)
        for t in self._failed:
            e = t.exception(0)
            if e is None or isinstance(e, Cancelled):
                continue
            if isinstance(e, Exception):
                errors.append(e)
            else:  # a BaseException raised by a thread task (e.g. KeyboardInterrupt)
                raise e
        if self._owner_cancelled and not errors:
            raise Cancelled(f"{self.name} was cancelled because the task it runs in was cancelled")
        if self._parent_cancelled and not errors and not self._timed_out:
            # The body must not go on as if its tasks had run: the enclosing group
            # catches this and reports its own failure or timeout.
            raise Cancelled(f"{self.name} was cancelled by the group it is nested in")
        if self._timed_out and not errors:
            raise TaskTimeout(
                f"{self.name} ran past its timeout of {self._timeout:g} s; its tasks were cancelled",
                name=self.name,
                timeout=self._timeout,
            )
        if errors:
            n = len(errors)
            raise ExceptionGroup(
                f"{n} task{'s' if n > 1 else ''} of {self.name} failed", errors
            ) from None
        return False
