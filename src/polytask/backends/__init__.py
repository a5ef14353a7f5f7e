"""Backends: where tasks run. One small abstract class, and a registry of names.

Everything above this layer (Task, TaskGroup, Pool, the CLI) is written once
against :class:`Backend`. A backend module is imported only when its name is
first asked for, so ``backends/dask.py`` costs nothing to a user of threads.
"""

from __future__ import annotations

import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any, ClassVar, TypeVar

from .._core.task import Task, check_timeout
from .._ipc.codec import fn_name

__all__ = ["Backend", "available", "get_backend", "make_backend", "shutdown_defaults"]

T = TypeVar("T")

#: name -> "module:Class"; modules are imported on first use.
_REGISTRY: dict[str, str] = {
    "thread": "polytask.backends.thread:ThreadBackend",
    "process": "polytask.backends.process.backend:ProcessBackend",
    "dask": "polytask.backends.cluster.dask:DaskBackend",
    "ray": "polytask.backends.cluster.ray:RayBackend",
}


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
        """Start ``fn(*args, **kwargs)``; the arguments are already checked."""

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

    def primitive(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """A synchronisation primitive (``"Lock"``, ``"Event"``...) or ``"Channel"``
        that works on this backend."""
        if kind == "Channel":
            from .._ipc.channel import Channel

            return Channel(*args, backend=self.name, **kwargs)
        from .._ipc.sync import make_primitive

        return make_primitive(kind, self.name, *args, **kwargs)


def _futures_wait(tasks: list[Task[Any]], timeout: float | None) -> tuple[set[Any], set[Any]]:
    import concurrent.futures

    return concurrent.futures.wait(tasks, timeout)


_defaults: dict[str, Backend] = {}
_defaults_lock = threading.Lock()


def available() -> list[str]:
    """The backend names that can be asked for."""
    return list(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None
    module, cls = target.split(":")
    return getattr(import_module(module), cls)  # type: ignore[no-any-return]


def make_backend(name: str, **options: Any) -> Backend:
    """A new, private backend of the named kind (a Pool owns one; shut it down when done).

    ``options`` go to the backend's constructor (``max_workers`` for every backend;
    ``start_method``, ``initializer``... for "process"; ``address``/``client`` for clusters).
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, not {type(name).__name__}")
    return backend_class(name)(**options)


def get_backend(backend: str | Backend, *, create: bool = True) -> Backend:
    """The shared backend for a name (created on first use), or ``backend`` itself."""
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or a Backend, not {type(backend).__name__}")
    be = _defaults.get(backend)
    if be is not None:
        return be
    cls = backend_class(backend)
    if not create:
        return None  # type: ignore[return-value]
    with _defaults_lock:
        be = _defaults.get(backend)
        if be is None:
            be = _defaults[backend] = cls()
    return be


def shutdown_defaults() -> None:
    """Shut the shared backends down (their running tasks are cancelled); used at exit."""
    with _defaults_lock:
        items = list(_defaults.values())
        _defaults.clear()
    for be in items:
        be.shutdown(wait=True, cancel=True)


def _live_default_tasks() -> list[Task[Any]]:
    with _defaults_lock:
        items = list(_defaults.values())
    return [t for be in items for t in be.live_tasks() if not t._is_done()]


def _names(tasks: list[Task[Any]]) -> str:
    shown = ", ".join(f"{t.name!r} ({t.backend})" for t in tasks[:10])
    return shown + (f" and {len(tasks) - 10} more" if len(tasks) > 10 else "")


def _end_at_exit(tasks: list[Task[Any]], why: str) -> None:
    """Cancel ``tasks`` (a process task is killed, a thread task flagged) and say so."""
    import signal

    # A second Ctrl-C must not cut this short: it asks for what is being done.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for t in tasks:
            # Given up on: the shutdown after this no longer waits for it either
            # (a thread task's grace to notice its flag is for a normal shutdown).
            t.daemon = True
            t.cancel()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    killed = [t for t in tasks if t.backend != "thread"]
    flagged = [t for t in tasks if t.backend == "thread"]
    parts = []
    if killed:
        parts.append(f"killed {len(killed)} task(s): {_names(killed)}")
    if flagged:
        parts.append(
            f"abandoned {len(flagged)} thread task(s) (threads cannot be killed; they were "
            f"flagged cancelled): {_names(flagged)}"
        )
    print(f"polytask: {why}: {'; '.join(parts)}", file=sys.stderr, flush=True)


def wait_at_exit() -> None:
    """At interpreter exit, settle the tasks of the shared backends (``pt.spawn``,
    ``@pt.background``, ``pt.TaskGroup``) that still run; nothing ends silently.

    A daemon task (``daemon=True``) is killed, with a warning naming it. Every
    other task is waited for, as ``concurrent.futures`` and non-daemon threads are;
    Ctrl-C during that wait kills them (with a warning) and the exit goes on. If
    the program itself ended by Ctrl-C, they are killed at once. Runs before the
    non-daemon threads are joined and before the ``atexit`` hooks (pools, shared
    memory), so the tasks still have what they use.
    """
    if _owner_pid != os.getpid():
        return  # a forked child: the tasks are its parent's
    last = getattr(sys, "last_type", None)
    interrupted = isinstance(last, type) and issubclass(last, KeyboardInterrupt)
    try:
        while True:
            live = _live_default_tasks()
            daemons = [t for t in live if t.daemon]
            if daemons:
                _end_at_exit(daemons, "at exit, daemon task(s) still running")
            rest = [t for t in live if not t.daemon]
            if not rest:
                return
            if interrupted:
                _end_at_exit(rest, "the program was interrupted (Ctrl-C)")
                return
            for t in rest:
                t.join()  # tasks they start are found on the next round
    except KeyboardInterrupt:
        _end_at_exit(
            _live_default_tasks(), "interrupted (Ctrl-C) while waiting at exit for running tasks"
        )


_owner_pid = os.getpid()


def _after_fork_in_child() -> None:
    # The shared backends' workers and threads belong to the parent: a forked
    # child starts with none (and its exit waits for none of the parent's tasks).
    global _owner_pid, _defaults_lock
    _owner_pid = os.getpid()
    _defaults.clear()
    _defaults_lock = threading.Lock()


def _register_exit_hook() -> None:
    from .._os.proc import at_shutdown

    at_shutdown(shutdown_defaults)
    try:
        # Where concurrent.futures waits for its work: before non-daemon threads are
        # joined and before the atexit hooks.
        threading._register_atexit(wait_at_exit)  # type: ignore[attr-defined]
    except RuntimeError:  # pragma: no cover - imported during interpreter shutdown
        pass
    os.register_at_fork(after_in_child=_after_fork_in_child)


_register_exit_hook()
