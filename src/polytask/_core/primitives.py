"""The synchronisation primitives users write, the same on every backend.

``Lock``, ``RLock``, ``Event``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Barrier`` take ``backend=``. Each public class asks
that backend for its own implementation (anyio's shape: ``Event()`` returns the
backend's event), which subclasses the public one, so ``isinstance(x, pt.Lock)``
holds on every backend and nothing is registered at import time:

- ``"thread"`` (``backends/thread.py``): the ``threading`` primitives, wrapped
  so that every wait takes ``timeout=`` and is a cancellation point in a thread
  task, and locks join lock-order checking;
- ``"process"`` (``_ipc/sync.py``): state in a small shared-memory segment,
  robust to a holder's death, that passes to other processes as an argument;
- ``"dask"``, ``"ray"`` (``backends/cluster/sync.py``): held by a hub on the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any

from . import debug as _dbg
from .backend import Backend, backend_class
from .channel import MAX_COUNT, _is_count
from .errors import SerializationError
from .timeouts import deadline as _deadline

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "check_count_after_release",
    "check_n",
    "check_parties",
    "check_value",
    "label",
    "make_primitive",
    "no_pickle",
]


def no_pickle(obj: object) -> Any:
    kind = type(obj).__mro__[1].__name__
    raise SerializationError(
        f"a {kind}(backend='thread') lives in one process and cannot be sent to another; "
        f"create it with backend='process' to pass it to process tasks"
    )


def label(kind: str, name: str | None, key: object) -> str:
    if name:
        return f"{kind} {name!r}"
    if _dbg.enabled:
        return f"{kind}#{key} (created at {_dbg.call_site()})"
    return f"{kind}#{key}"


def _implementation(kind: str, backend: str | Backend) -> Callable[..., Any]:
    if isinstance(backend, Backend):
        return lambda *args, **kwargs: backend.primitive(kind, *args, **kwargs)
    return backend_class(backend).primitive_class(kind)


def make_primitive(kind: str, backend: str | Backend, *args: Any, **kwargs: Any) -> Any:
    """Build primitive ``kind`` ("Lock", "RLock", "Event", "Condition", "Semaphore",
    "BoundedSemaphore", "Barrier") for ``backend`` (a name, or a backend object)."""
    cls = _PUBLIC.get(kind)
    if cls is None:
        raise ValueError(f"unknown primitive {kind!r}; choose one of {sorted(_PUBLIC)}")
    if isinstance(backend, Backend):
        return backend.primitive(kind, *args, **kwargs)
    return cls(*args, backend=backend, **kwargs)


class _Primitive:
    """Base of the public classes: ``Kind(..., backend=)`` builds the backend's subclass."""

    _kind = ""

    def __new__(cls, *args: Any, backend: str = "thread", **kwargs: Any) -> Any:
        if cls.__dict__.get("_public", False):
            impl = _implementation(cls._kind, backend)
            if isinstance(impl, type):
                return object.__new__(impl)  # Python then calls its __init__
            return impl(*args, **kwargs)
        return object.__new__(cls)


class Lock(_Primitive):
    """A mutual-exclusion lock: ``pt.Lock(backend="thread" | "process", name=None)``.

    ``acquire(blocking=True, timeout=None) -> bool``, ``release()``,
    ``locked()``, and ``with lock:``. Any thread (or process) may release it,
    as with ``threading.Lock``. ``name`` appears in lock-order reports.
    """

    _kind = "Lock"
    _public = True
    name: str | None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def locked(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RLock(_Primitive):
    """A re-entrant lock: the owner may acquire it again; it is free after as many releases."""

    _kind = "RLock"
    _public = True
    name: str | None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Event(_Primitive):
    """A flag: ``set()``, ``clear()``, ``is_set()``, ``wait(timeout=None) -> bool``."""

    _kind = "Event"
    _public = True

    def set(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def is_set(self) -> bool:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> bool:
        raise NotImplementedError


class Condition(_Primitive):
    """A condition variable over a Lock or RLock (a new RLock by default).

    ``wait(timeout=None) -> bool``, ``wait_for(predicate, timeout=None)``,
    ``notify(n=1)``, ``notify_all()``, and ``with cond:`` for its lock.
    ``backend`` defaults to the lock's backend.
    """

    _kind = "Condition"
    _public = True

    def __new__(
        cls, lock: Any = None, *args: Any, backend: str | None = None, **kwargs: Any
    ) -> Any:
        if cls is Condition:
            if backend is None:
                backend = getattr(lock, "backend", "thread")
            return _Primitive.__new__(cls, lock, *args, backend=backend, **kwargs)
        return object.__new__(cls)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (checked with the lock held); returns its last value."""
        deadline = _deadline(timeout)
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        raise NotImplementedError

    def notify_all(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Semaphore(_Primitive):
    """A counter: ``acquire`` takes one (waiting while it is 0), ``release(n=1)`` gives back."""

    _kind = "Semaphore"
    _public = True

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def release(self, n: int = 1) -> None:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A Semaphore whose ``release`` raises ValueError past the initial value."""

    _kind = "BoundedSemaphore"
    _public = True


class Barrier(_Primitive):
    """``parties`` tasks wait for each other: ``wait(timeout=None)`` returns 0..parties-1.

    ``action`` runs in one of them (the last to arrive) before all go on; a
    timeout, ``abort()`` or a failing action breaks the barrier
    (``threading.BrokenBarrierError`` in every waiter) until ``reset()``.
    """

    _kind = "Barrier"
    _public = True

    def wait(self, timeout: float | None = None) -> int:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    @property
    def parties(self) -> int:
        raise NotImplementedError

    @property
    def n_waiting(self) -> int:
        raise NotImplementedError

    @property
    def broken(self) -> bool:
        raise NotImplementedError


_PUBLIC: dict[str, type[_Primitive]] = {
    c._kind: c for c in (Lock, RLock, Event, Condition, Semaphore, BoundedSemaphore, Barrier)
}


def check_value(value: int) -> None:
    if not _is_count(value, 0):
        raise ValueError(f"semaphore initial value must be an int from 0 to 2**63-1, got {value!r}")


def check_n(n: int) -> None:
    if not _is_count(n, 1):
        raise ValueError(f"n must be an int from 1 to 2**63-1, got {n!r}")


def check_count_after_release(value: int) -> None:
    """A semaphore's count after a release must fit a process semaphore's word."""
    if value > MAX_COUNT:
        raise ValueError(
            f"a semaphore's value cannot go above 2**63-1: this release would make it {value}"
        )


def check_parties(parties: int) -> None:
    if not _is_count(parties, 1):
        raise ValueError(f"parties must be an int from 1 to 2**63-1, got {parties!r}")
