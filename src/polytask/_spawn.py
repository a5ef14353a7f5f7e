"""``spawn`` and ``@background``: start one task on a backend and return its Task.

They live above the backends (they pick one by name), while ``_core.task`` holds
the Task they return and knows no backend: that keeps ``_core`` at the bottom of
the import graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, TypeVarTuple, Unpack, overload

from ._core.backend import Backend
from ._core.task import Task
from ._core.timeouts import check_timeout
from .backends import get_backend

__all__ = ["background", "spawn"]

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

# How the signatures are typed, so that a type checker flags ``spawn(f, "wrong")``:
# ParamSpec cannot type ``spawn`` whole, because PEP 612 allows no keyword-only
# option (backend=, timeout=...) between ``*args: P.args`` and ``**kwargs: P.kwargs``.
# So, as trio and anyio do, the positional arguments are a TypeVarTuple matched
# against ``fn``'s parameters (``Callable[[*Ts], T]``), in three overloads tried in
# order:
#   1. positional arguments and options: every argument checked;
#   2. keyword arguments for ``fn`` and no option: ParamSpec checks them all
#      (and accepts a function whose required parameters come by keyword);
#   3. keyword arguments for ``fn`` and options: the positional ones are checked,
#      the keyword ones are not (a required keyword-only parameter of ``fn`` passed
#      with an option is refused: pass it through ``functools.partial``).
# mypy cannot see that one implementation serves a TypeVarTuple and a ParamSpec
# overload: hence the ``type: ignore[misc]`` on the implementations.


@overload
def spawn(
    fn: Callable[[Unpack[Ts]], T],
    /,
    *args: *Ts,
    backend: str | Backend = ...,
    timeout: float | None = ...,
    name: str | None = ...,
    daemon: bool = ...,
) -> Task[T]: ...
@overload
def spawn(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
@overload
def spawn(
    fn: Callable[[Unpack[Ts]], T],
    /,
    *args: *Ts,
    backend: str | Backend = ...,
    timeout: float | None = ...,
    name: str | None = ...,
    daemon: bool = ...,
    **kwargs: Any,
) -> Task[T]: ...


def spawn(  # type: ignore[misc]
    fn: Callable[[Unpack[Ts]], T],
    /,
    *args: *Ts,
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
            the task raises :class:`TaskTimeout`. 0 has expired before the task
            starts: ``fn`` is never called and the task raises ``TaskTimeout``,
            on every backend. None or ``float("inf")``: no limit.
        name: for messages and ``current_task().name`` (default: the function's name).
        daemon: what happens if the task still runs when the interpreter exits. False
            (default): the exit waits for it, as for a ``concurrent.futures`` task or a
            non-daemon thread (Ctrl-C during that wait kills it). True: it is killed
            (a thread task: abandoned, flagged cancelled) and a warning on stderr
            names it.

    Keyword arguments named ``backend``, ``timeout``, ``name`` or ``daemon`` are
    polytask's; pass such arguments to ``fn`` through ``functools.partial``.

    Type checkers check the arguments against ``fn``'s signature:
    ``pt.spawn(work, "text")`` is an error when ``work`` takes an ``int``.
    """
    return _start(fn, args, kwargs, backend, timeout, name, daemon)


def _start(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    backend: str | Backend,
    timeout: float | None,
    name: str | None,
    daemon: bool,
) -> Task[T]:
    if daemon is not False and daemon is not True:
        raise TypeError(f"daemon must be True or False, not {daemon!r}")
    be = get_backend(backend)
    task = be.spawn(fn, args, kwargs, name=name, timeout=timeout)
    if daemon:
        task.daemon = True
    return task


@overload
def background(fn: Callable[P, T], /) -> Callable[P, Task[T]]: ...
@overload
def background(
    *,
    backend: str | Backend = "thread",
    timeout: float | None = None,
    name: str | None = None,
    daemon: bool = False,
) -> Callable[[Callable[P, T]], Callable[P, Task[T]]]: ...


def background(
    fn: Callable[P, T] | None = None,
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
    instead of waited for). The decorated function keeps its parameters for type
    checkers (ParamSpec) and returns ``Task[its return type]``.
    """
    if backend is not None and isinstance(backend, str):
        get_backend(backend, create=False)  # unknown names fail here, at decoration
    check_timeout(timeout)
    if daemon is not False and daemon is not True:
        raise TypeError(f"daemon must be True or False, not {daemon!r}")

    def decorate(f: Callable[P, T]) -> Callable[P, Task[T]]:
        if not callable(f):
            raise TypeError(f"@background needs a function, got {type(f).__name__}")

        @functools.wraps(f)
        def start(*args: P.args, **kwargs: P.kwargs) -> Task[T]:
            return _start(f, args, kwargs, backend, timeout, name, daemon)

        start.__wrapped_task_function__ = f  # type: ignore[attr-defined]
        return start

    if fn is not None:
        return decorate(fn)
    return decorate
