"""The Backend base class, and how a backend is found by its name.

Everything above this layer (Task, TaskGroup, Pool, the primitives, the CLI)
is written once against :class:`Backend`. A backend is a plug-in: ``BACKENDS``
names the module of each, imported on first use (so ``backends/cluster/dask.py``
costs nothing to a user of threads); nothing is registered at import time, and
this layer imports no backend. A backend owns its primitives (``primitives``),
which is how ``pt.Lock(backend="process")`` finds its class.
"""

from __future__ import annotations

import concurrent.futures
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any, ClassVar, TypeVar

from .errors import TaskTimeout
from .task import Task
from .timeouts import check_timeout

__all__ = [
    "BACKENDS",
    "Backend",
    "available",
    "backend_class",
    "expired_at_start",
    "expired_error",
    "fn_name",
    "load",
]

T = TypeVar("T")

#: name -> "module:Class" of every backend; the one registry, fixed (never filled at import time).
BACKENDS: Mapping[str, str] = {
    "thread": "polytask.backends.thread:ThreadBackend",
    "process": "polytask.backends.process.backend:ProcessBackend",
    "dask": "polytask.backends.cluster.dask:DaskBackend",
    "ray": "polytask.backends.cluster.ray:RayBackend",
}


def fn_name(fn: Callable[..., Any]) -> str:
    """How messages name a function: its qualified name (or its repr)."""
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def load(target: str) -> Any:
    """Import ``"module:Name"`` and return the name: the one plug-in loader."""
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def expired_at_start(task: Task[T]) -> Task[T]:
    """Fail ``task``, whose run-time limit is 0, with :class:`TaskTimeout`; it never runs.

    A limit of 0 has expired by the time any task could start. Started all the
    same, the function would race the timer: a fast one won on some paths and
    lost on others, and a thread, once running, cannot be stopped. So every
    backend's ``submit`` settles such a task here, after its usual checks (a shut
    down backend, an argument that cannot be pickled), instead of queueing it.
    """
    task._finish(exc=expired_error(task.name))
    return task


def expired_error(name: str) -> TaskTimeout:
    """The error of a task named ``name`` whose run-time limit of 0 expired before it started."""
    return TaskTimeout(
        f"task {name!r} was not run: its timeout of 0 s had expired before it could start",
        name=name,
        timeout=0.0,
    )


def available() -> list[str]:
    """The backend names that can be asked for."""
    return list(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The backend class called ``name`` (its module is imported now if need be)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, not {type(name).__name__}")
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    return load(target)  # type: ignore[no-any-return]


class Backend(ABC):
    """Runs tasks. Subclasses implement :meth:`submit`, :meth:`cancel` and :meth:`shutdown`."""

    #: The name users pass as ``backend=``.
    name: ClassVar[str]
    #: Whether cancel() and a timeout stop a task that already runs (a process can
    #: be killed; a thread, or a Dask task, runs on and its result is dropped).
    can_kill_running: ClassVar[bool] = False

    def spawn(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> Task[T]:
        """Check the call, then :meth:`submit` it: bad input fails here, in the caller."""
        if not callable(fn):
            raise TypeError(
                f"spawn() needs a callable as its first argument, got {type(fn).__name__} {fn!r}"
            )
        timeout = check_timeout(timeout)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        return self.submit(fn, args, kwargs, name=name or fn_name(fn), timeout=timeout)

    @abstractmethod
    def submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str,
        timeout: float | None,
    ) -> Task[T]:
        """Start ``fn(*args, **kwargs)``; the arguments are already checked.

        ``timeout`` is the task's run-time limit (None: no limit); a limit of 0
        has expired already: the task is settled by :func:`expired_at_start`
        and ``fn`` is never called, on every backend.
        """

    @abstractmethod
    def cancel(self, task: Task[Any]) -> bool:
        """Stop a running task; True if it will not complete normally."""

    def watch(self, task: Task[Any]) -> None:
        """Something other than :meth:`wait` now waits for ``task`` (callback, poll...).

        Backends whose results arrive by themselves ignore it; one whose fast path
        is the waiting caller reading its own result starts completing ``task``
        in the background. Called with the task's condition possibly held: no locks.
        """
        return None

    def wait(self, task: Task[Any], timeout: float | None) -> bool:
        """Block until ``task`` is done or ``timeout`` passes; True if done."""
        done, _ = _futures_wait([task], timeout)
        return bool(done)

    @abstractmethod
    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop accepting tasks; ``cancel`` stops running ones; ``wait`` blocks until all ended."""

    def live_tasks(self) -> list[Task[Any]]:
        """The tasks submitted and not done yet (running or waiting to run).

        What interpreter exit waits for (see :func:`wait_at_exit`); a backend
        whose tasks cannot outlive the interpreter's exit hooks returns none.
        """
        return []

    #: This backend's synchronisation primitives and Channel, by kind ("Lock", "RLock",
    #: "Event", "Condition", "Semaphore", "BoundedSemaphore", "Barrier", "Channel"): a
    #: class, or "module:Class" imported on first use.
    primitives: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def primitive_class(cls, kind: str) -> Callable[..., Any]:
        """The class (or factory) that builds primitive ``kind`` on this backend."""
        target = cls.primitives.get(kind)
        if target is None:
            raise ValueError(
                f"the {cls.name!r} backend has no {kind}; it has: {', '.join(cls.primitives)}"
            )
        return load(target) if isinstance(target, str) else target  # type: ignore[no-any-return]

    def primitive(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """Primitive ``kind`` bound to this backend object (a Pool's own cluster link)."""
        return self.primitive_class(kind)(*args, **kwargs)


def _futures_wait(tasks: list[Task[Any]], timeout: float | None) -> tuple[set[Any], set[Any]]:
    return concurrent.futures.wait(tasks, timeout)
