"""``spawn`` and ``@background``: start one task on a backend and return its Task.

They live above the backends (they pick one by name), while ``_core.task`` holds
the Task they return and knows no backend: that keeps ``_core`` at the bottom of
the import graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._core.backend import Backend
from ._core.task import Task
from ._core.timeouts import check_timeout
from .backends import get_backend

__all__ = ["background", "spawn"]

T = TypeVar("T")


def spawn(
    fn: Callable[..., T],
    /,
    *args: Any,
    backend: str | Backend = "thread",
    timeout: float | None = None,
    name: str | None = None,
    daemon: bool = False,
    **kwargs: Any,
) -> Task[T]:
    """Run ``fn(*args, **kwargs)`` in the background and return its :class:`Task`.

    Args:
        backend: ``"thread"`` (default), ``"process"``, or a backend object.
        timeout: seconds the task may run; past it a process task is killed and
            the task raises :class:`TaskTimeout`.
        name: for messages and ``current_task().name`` (default: the function's name).
        daemon: what happens if the task still runs when the interpreter exits. False
            (default): the exit waits for it, as for a ``concurrent.futures`` task or a
            non-daemon thread (Ctrl-C during that wait kills it). True: it is killed
            (a thread task: abandoned, flagged cancelled) and a warning on stderr
            names it.

    Keyword arguments named ``backend``, ``timeout``, ``name`` or ``daemon`` are
    polytask's; pass such arguments to ``fn`` through ``functools.partial``.
    """
    if daemon is not False and daemon is not True:
        raise TypeError(f"daemon must be True or False, not {daemon!r}")
    be = get_backend(backend)
    task = be.spawn(fn, args, kwargs, name=name, timeout=timeout)
    if daemon:
        task.daemon = True
    return task


@overload
def background(fn: Callable[..., T], /) -> Callable[..., Task[T]]: ...
@overload
def background(
    *,
    backend: str | Backend = "thread",
    timeout: float | None = None,
    name: str | None = None,
    daemon: bool = False,
) -> Callable[[Callable[..., T]], Callable[..., Task[T]]]: ...


def background(
    fn: Callable[..., T] | None = None,
    /,
    *,
    backend: str | Backend = "thread",
    timeout: float | None = None,
    name: str | None = None,
    daemon: bool = False,
) -> Any:
    """Decorate a function so that calling it starts a task and returns its :class:`Task`::

    @pt.background(backend="process")
    def crunch(x): ...

    t = crunch(3)      # returns at once
    t.result()

    The options are :func:`spawn`'s (``daemon=True``: killed at interpreter exit
    instead of waited for).
    """
    if backend is not None and isinstance(backend, str):
        get_backend(backend, create=False)  # unknown names fail here, at decoration
    check_timeout(timeout)
    if daemon is not False and daemon is not True:
        raise TypeError(f"daemon must be True or False, not {daemon!r}")

    def decorate(f: Callable[..., T]) -> Callable[..., Task[T]]:
        if not callable(f):
            raise TypeError(f"@background needs a function, got {type(f).__name__}")

        @functools.wraps(f)
        def start(*args: Any, **kwargs: Any) -> Task[T]:
            return spawn(
                f, *args, backend=backend, timeout=timeout, name=name, daemon=daemon, **kwargs
            )

        start.__wrapped_task_function__ = f  # type: ignore[attr-defined]
        return start

    if fn is not None:
        return decorate(fn)
    return decorate
