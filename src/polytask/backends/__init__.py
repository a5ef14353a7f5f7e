"""Backends: where tasks run. The base class and the table of names live in
``_core/backend.py``; this package holds the backends themselves (``thread``,
``process/``, ``cluster/``) and the *shared* backend of each name that
``pt.spawn``, ``@pt.background`` and ``pt.TaskGroup`` use: made on first use,
waited for (or killed, for daemon tasks) at interpreter exit.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TypeVar

from .._core.backend import Backend, available, backend_class
from .._core.task import Task
from .._os.proc import at_shutdown

__all__ = [
    "Backend",
    "available",
    "backend_class",
    "get_backend",
    "make_backend",
    "shutdown_defaults",
    "wait_at_exit",
]

T = TypeVar("T")


_defaults: dict[str, Backend] = {}
_defaults_lock = threading.Lock()


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
    # The fork emptied the shutdown hooks (proc's fork handler, registered before
    # this one, runs first): the child's own shared backends are shut at its exit.
    at_shutdown(shutdown_defaults)


def _register_exit_hook() -> None:
    at_shutdown(shutdown_defaults)
    try:
        # Where concurrent.futures waits for its work: before non-daemon threads are
        # joined and before the atexit hooks.
        threading._register_atexit(wait_at_exit)  # type: ignore[attr-defined]
    except RuntimeError:  # pragma: no cover - imported during interpreter shutdown
        pass
    os.register_at_fork(after_in_child=_after_fork_in_child)


_register_exit_hook()
