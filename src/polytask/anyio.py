"""polytask tasks in anyio code, on both of anyio's backends (asyncio and trio).

::

    import anyio
    import polytask.anyio

    async def main():
        # One task: await its result; cancelling the scope kills the process task.
        with anyio.move_on_after(5):
            total = await polytask.anyio.run_task(crunch, 10, backend="process")

        # A group of polytask tasks inside an anyio task group.
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_requests)
            async with polytask.anyio.TaskGroup(backend="process") as g:
                left = g.spawn(crunch, 1)
                right = g.spawn(crunch, 2)
            tg.cancel_scope.cancel()

    anyio.run(main)                   # or anyio.run(main, backend="trio")

Three names, each the async twin of one polytask call:

- :func:`run_task` is ``pt.spawn(...)`` then the result, awaited;
- :func:`wait` awaits a :class:`~polytask.Task` you already have (from ``pt.spawn``,
  ``Pool.submit``...);
- :class:`TaskGroup` is ``pt.TaskGroup`` with ``async with``: the same object comes
  out of it (``g.spawn``, ``g.run``, ``g.Lock()``...), and leaving the block waits
  for the tasks without blocking the event loop.

Cancellation is anyio's: when the enclosing cancel scope is cancelled (a timeout,
``tg.cancel_scope.cancel()``, a failing sibling in an anyio task group) while one of
these waits, the tasks it waits for are cancelled as ``task.cancel()`` does: a
process task's worker and everything the task started are killed and reaped, a
thread task stops at its next cancellation point. The wait goes on, shielded,
until they have ended, and then the cancellation propagates: nothing outlives
the scope that started it. (The same holds for a pt.TaskGroup block: it waits
for its tasks; a thread task that never reaches a cancellation point is waited
for.)

How the event loop learns that a task ended, without a thread per wait: a task's
done callback (run on whatever thread finished it) writes a byte to a pipe, and
the coroutine waits for the pipe to be readable with ``anyio.wait_readable``,
which both backends provide. anyio's own ``to_thread``/``to_process`` were the
other choice: they take a thread from a limited pool for each wait.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal, TypeVar, TypeVarTuple

try:
    import anyio
except ImportError as exc:  # pragma: no cover - anyio is an optional dependency
    from ._core.errors import BackendUnavailable

    raise BackendUnavailable(
        "polytask.anyio needs anyio: pip install anyio (and trio for its trio backend)"
    ) from exc

from . import _group
from ._core.backend import Backend
from ._core.task import Task
from ._spawn import spawn

__all__ = ["TaskGroup", "run_task", "wait"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Wakeup:
    """A pipe that done callbacks write to, from any thread, and a coroutine awaits.

    The write end is closed under a lock that the callbacks take too: a callback
    that runs after the wait ended must not write to a descriptor number the
    process has since reused for another file.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, _task: object = None) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the reader will wake anyway

    async def wait(self) -> None:
        await anyio.wait_readable(self._r)
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self._w)
        os.close(self._r)


async def _wait_all(tasks: Callable[[], Iterable[Task[Any]]], cancel: Callable[[], object]) -> None:
    """Wait until every task of ``tasks()`` is done; if cancelled, ``cancel()`` them first.

    ``tasks`` is called again after each wake-up, so that tasks added meanwhile (a
    task spawning into its own group) are waited for too.
    """
    wakeup = _Wakeup()
    try:
        watched: set[int] = set()
        try:
            await _until_done(tasks, watched, wakeup)
        except anyio.get_cancelled_exc_class():
            cancel()
            with anyio.CancelScope(shield=True):
                await _until_done(tasks, watched, wakeup)
            raise
    finally:
        wakeup.close()


async def _until_done(
    tasks: Callable[[], Iterable[Task[Any]]], watched: set[int], wakeup: _Wakeup
) -> None:
    while True:
        pending = [t for t in tasks() if not t.done()]
        if not pending:
            return
        for t in pending:
            if id(t) not in watched:
                watched.add(id(t))
                t.add_done_callback(wakeup)  # at once if it is done by now
        # A task that ended since the list was made has written its byte already.
        await wakeup.wait()


async def wait(task: Task[T]) -> T:
    """Wait for ``task`` without blocking the event loop and return its result.

    Raises what :meth:`Task.result` raises (the task's own exception, ``TaskTimeout``,
    ``WorkerCrashed``, ``Cancelled``). If the enclosing cancel scope is cancelled
    meanwhile, the task is cancelled (a process task is killed with its process
    tree), waited for until it has ended, and the cancellation propagates.
    """
    if not isinstance(task, Task):
        raise TypeError(f"polytask.anyio.wait() needs a polytask Task, got {type(task).__name__}")
    await _wait_all(lambda: (task,), task.cancel)
    return task.result(0)


async def run_task(
    fn: Callable[[*Ts], T],
    /,
    *args: *Ts,
    backend: str | Backend = "thread",
    timeout: float | None = None,
    name: str | None = None,
) -> T:
    """Run ``fn(*args)`` as a polytask task and await its result.

    ``pt.spawn(fn, *args, backend=..., timeout=..., name=...)`` followed by
    :func:`wait`: cancelling the enclosing cancel scope cancels the task (a process
    task is killed with everything it started) and waits until it has ended.
    Pass keyword arguments for ``fn`` with ``functools.partial``, as anyio's
    ``to_thread.run_sync`` asks.

    Example::

        total = await polytask.anyio.run_task(sum, [1, 2, 3], backend="process")
    """
    return await wait(spawn(fn, *args, backend=backend, timeout=timeout, name=name))


class TaskGroup:
    """``pt.TaskGroup`` for ``async with``: leaving the block awaits the tasks.

    Args:
        backend: ``"thread"``, ``"process"`` or a backend object, as for
            ``pt.TaskGroup``.
        timeout: seconds for the whole group; past it every task is cancelled and
            the block raises :class:`~polytask.TaskTimeout`.
        name: for messages.

    ``async with`` gives the ``pt.TaskGroup`` itself: ``g.spawn(fn, *args)`` starts a
    task and returns its :class:`~polytask.Task` at once (await it with
    :func:`wait`). The rules are pt.TaskGroup's: the first task to fail cancels the
    others and the block raises an ``ExceptionGroup`` of the failures. What anyio
    adds: if the enclosing cancel scope is cancelled while the block waits (or the
    block's own code is cancelled), every task is cancelled, the block waits until
    each has ended (process trees killed and reaped), and the cancellation goes on.

    Groups in different anyio tasks are independent, even on one thread (a
    ``pt.TaskGroup`` nested in another's ``with`` block on the same thread is its
    child: here nesting is anyio's business).
    """

    def __init__(
        self,
        backend: str | Backend = "thread",
        *,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        self._group = _group.TaskGroup(backend, timeout=timeout, name=name)

    async def __aenter__(self) -> _group.TaskGroup:
        # pt.TaskGroup nests by a per-thread stack of open blocks; on an event loop
        # the blocks of unrelated coroutines interleave on one thread, so enter with
        # an empty stack and leave this group off it.
        stack = _group._open_groups()
        saved = stack[:]
        stack.clear()
        try:
            self._group.__enter__()
        finally:
            stack[:] = saved
        return self._group

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        group = self._group
        if exc is not None:
            group.cancel()
            with anyio.CancelScope(shield=True):
                await _wait_all(lambda: group.tasks, group.cancel)
            return group.__exit__(exc_type, exc, tb)
        try:
            await _wait_all(lambda: group.tasks, group.cancel)
        except anyio.get_cancelled_exc_class() as cancelled:
            # Every task has ended. pt.TaskGroup's exit reports the real failures (an
            # ExceptionGroup, which then carries the cancellation as its context);
            # without any, the cancellation goes on to the scope that was cancelled.
            group.__exit__(type(cancelled), cancelled, cancelled.__traceback__)
            raise
        # Every task has ended: pt.TaskGroup's exit does not block, and reports as it
        # does for a with block (an ExceptionGroup of the failures, TaskTimeout...).
        return group.__exit__(None, None, None)
