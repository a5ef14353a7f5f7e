"""Synchronisation primitives with the same behaviour on every backend.

``Lock``, ``RLock``, ``Event``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Barrier`` take ``backend=``:

- ``"thread"``: the ``threading`` primitives, wrapped so that every wait takes
  ``timeout=`` (None: no limit) and locks join lock-order checking;
- ``"process"``: state in a small shared-memory segment, guarded by a robust
  process-shared mutex, with futex wake-ups. They pass to other processes as
  pickled arguments (they re-attach by name: the worker need not be a fork of
  the creator, unlike ``multiprocessing.Lock``), and a Lock or RLock whose
  holder *process* dies is released, like a FileLock, so that its waiters do
  not wait forever.

::

    process A                 segment "polytask-sync-..." (4 KiB)             process B
    lock.acquire() ──M──> [ mutex M | seq (futex) | fields | waiter slots ] <──M── lock.acquire()
                           taken? count a waiter, unlock M, futex_wait(seq)
    lock.release() ──M──> free it, seq += 1, unlock M, futex_wake(seq) ─────────> wakes, retries

``FileLock(path)`` (fcntl/flock, for unrelated processes) completes the set
(``Fifo`` lives in ``_fifo.py``). :func:`make_primitive` is what
``TaskGroup.Lock()`` and friends call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any

from .._core import debug as _dbg
from .._core.errors import SerializationError
from .._core.task import CANCEL_SLICE, cancellable_task, check_timeout, wait_cancellable
from .shm import AttachCache, RobustMutex, Segment, futex_wait, futex_wake, pid_alive

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "FileLock",
    "Lock",
    "RLock",
    "Semaphore",
    "make_primitive",
    "register_primitive",
]

#: Seconds a process waiter sleeps before it re-checks (e.g. that a lock's holder is alive).
_SLICE = 0.25


# The Fifo code below still spells it so (it moves to a module of its own).


def _acquire_args(blocking: bool, timeout: float | None) -> float | None:
    """Validate ``acquire(blocking, timeout)``; returns the timeout (None: no limit)."""
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    return check_timeout(timeout)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _no_pickle(obj: object) -> Any:
    kind = type(obj).__mro__[1].__name__
    raise SerializationError(
        f"a {kind}(backend='thread') lives in one process and cannot be sent to another; "
        f"create it with backend='process' to pass it to process tasks"
    )


def _label(kind: str, name: str | None, key: object) -> str:
    if name:
        return f"{kind} {name!r}"
    if _dbg.enabled:
        return f"{kind}#{key} (created at {_dbg.call_site()})"
    return f"{kind}#{key}"


# --------------------------------------------------------------------------- registry

_FACTORIES: dict[tuple[str, str], Callable[..., Any]] = {}


def register_primitive(kind: str, backend: str, factory: Callable[..., Any]) -> None:
    """Make ``Kind(..., backend=backend)`` call ``factory(...)`` (for the dask and ray backends)."""
    _FACTORIES[(kind, backend)] = factory


def _dispatch(kind: str, backend: str) -> Callable[..., Any]:
    factory = _FACTORIES.get((kind, backend))
    if factory is None and isinstance(backend, str):
        # A cluster backend registers its primitives when its module is imported.
        from ..backends import available, backend_class

        if backend in available():
            backend_class(backend)
            factory = _FACTORIES.get((kind, backend))
    if factory is None:
        known = sorted({b for k, b in _FACTORIES if k == kind})
        raise ValueError(f"unknown backend {backend!r} for {kind}; choose one of {known}")
    return factory


def make_primitive(kind: str, backend: str, *args: Any, **kwargs: Any) -> Any:
    """Build primitive ``kind`` ("Lock", "RLock", "Event", "Condition", "Semaphore",
    "BoundedSemaphore", "Barrier") for ``backend`` ("thread", "process"...)."""
    cls = _PUBLIC.get(kind)
    if cls is None:
        raise ValueError(f"unknown primitive {kind!r}; choose one of {sorted(_PUBLIC)}")
    return cls(*args, backend=backend, **kwargs)


class _Primitive:
    """Base of the public classes: ``Kind(..., backend=)`` builds the backend's subclass."""

    _kind = ""

    def __new__(cls, *args: Any, backend: str = "thread", **kwargs: Any) -> Any:
        if cls.__dict__.get("_public", False):
            impl = _dispatch(cls._kind, backend)
            if isinstance(impl, type):
                return object.__new__(impl)
            return impl(*args, **kwargs)
        return object.__new__(cls)


# --------------------------------------------------------------------------- public classes


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
        deadline = _deadline(check_timeout(timeout))
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


# --------------------------------------------------------------------------- thread backend


def _acquire_timeout(lock: Any, timeout: float | None) -> bool:
    # threading's locks spell "no limit" as -1.
    return bool(lock.acquire(True, -1 if timeout is None else timeout))


class _ThreadLock(Lock):
    backend = "thread"

    def __init__(self, *, backend: str = "thread", name: str | None = None) -> None:
        self._lock = threading.Lock()
        self._key = _dbg.new_key()
        self.name = name
        self._label = _label("Lock", name, self._key)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = _acquire_args(blocking, timeout)
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
        return _no_pickle(self)

    def __repr__(self) -> str:
        return f"<{self._label} backend='thread' {'locked' if self.locked() else 'unlocked'}>"


class _ThreadRLock(RLock):
    backend = "thread"

    def __init__(self, *, backend: str = "thread", name: str | None = None) -> None:
        self._lock = threading.RLock()
        self._key = _dbg.new_key()
        self.name = name
        self._label = _label("RLock", name, self._key)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = _acquire_args(blocking, timeout)
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
        return _no_pickle(self)

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
        return _no_pickle(self)


class _ThreadCondition(Condition):
    backend = "thread"

    def __init__(self, lock: Any = None, *, backend: str | None = "thread") -> None:
        if lock is None:
            lock = _ThreadRLock()
        elif isinstance(lock, (_ProcessLock, _ProcessRLock)):
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
        return _no_pickle(self)


class _ThreadSemaphore(Semaphore):
    backend = "thread"
    _bounded = False

    def __init__(self, value: int = 1, *, backend: str = "thread") -> None:
        _check_value(value)
        self._sem = (
            threading.BoundedSemaphore(value) if self._bounded else threading.Semaphore(value)
        )

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = _acquire_args(blocking, timeout)
        sem = self._sem
        if sem.acquire(False):
            return True
        if not blocking:
            return False
        # The count is state: a release between two slices is seen by the next one.
        return wait_cancellable(lambda t: sem.acquire(True, t), timeout)

    def release(self, n: int = 1) -> None:
        _check_n(n)
        self._sem.release(n)

    def __reduce__(self) -> Any:
        return _no_pickle(self)


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
        _check_parties(parties)
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
        return _no_pickle(self)


def _check_value(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"semaphore initial value must be an int >= 0, got {value!r}")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


def _check_parties(parties: int) -> None:
    if not isinstance(parties, int) or isinstance(parties, bool) or parties < 1:
        raise ValueError(f"parties must be an int >= 1, got {parties!r}")


# --------------------------------------------------------------------------- process backend

_MAGIC = 0x434E5953_54505450  # "PTPTSYNC"
_KIND_CODES = {
    "Lock": 1,
    "RLock": 2,
    "Event": 3,
    "Condition": 4,
    "Semaphore": 5,
    "BoundedSemaphore": 6,
    "Barrier": 7,
}
_SEGMENT_SIZE = 4096
_MUTEX_OFFSET = 64
_SEQ_OFFSET = 128  # u32 futex word
_F = 24  # first field (u64 index): byte 192
_WAITERS = _F  # every kind: processes sleeping on the sequence word
_SLOTS_OFFSET = 512  # Condition waiter slots: u32 state, u32 pid, u64 ticket
_SLOT_SIZE = 16
_NSLOTS = (_SEGMENT_SIZE - _SLOTS_OFFSET) // _SLOT_SIZE

_attached = AttachCache()
_me_pid = os.getpid()


def _after_fork() -> None:
    global _me_pid
    _me_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class _Shared:
    """The shared-memory state of one process primitive: mutex, sequence word, fields."""

    __slots__ = ("__weakref__", "i", "mutex", "seg", "seq_addr", "w")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.w = seg.buf.cast("Q")
        self.i = seg.buf.cast("I")
        self.mutex = RobustMutex(seg.address + _MUTEX_OFFSET)
        self.seq_addr = seg.address + _SEQ_OFFSET

    @classmethod
    def create(cls, kind: str) -> _Shared:
        seg = Segment.create("sync", _SEGMENT_SIZE)
        try:
            RobustMutex.initialize(seg.address + _MUTEX_OFFSET)
            sh = cls(seg)
            sh.w[1] = _KIND_CODES[kind]
            sh.w[0] = _MAGIC
        except BaseException:
            seg.close()
            raise
        return sh

    @classmethod
    def attach(cls, name: str, kind: str) -> _Shared:
        try:
            seg = Segment.attach(name)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the process {kind} {name!r} no longer exists: the process that created it "
                "exited or closed it before this copy was unpickled"
            ) from None
        sh = cls(seg)
        if sh.w[0] != _MAGIC or sh.w[1] != _KIND_CODES[kind]:
            sh.close()
            raise ValueError(f"shared memory {name!r} does not hold a polytask {kind}")
        return sh

    @property
    def name(self) -> str:
        return self.seg.name

    def lock(self, deadline: float | None = None) -> None:
        # A previous holder that died left fields half-updated at worst; every
        # update below is a single store or ordered so that this is harmless.
        self.mutex.acquire(deadline)

    def unlock(self) -> None:
        self.mutex.release()

    def changed(self) -> int:
        """Advance the sequence word (mutex held); returns the number of sleepers."""
        self.i[_SEQ_OFFSET // 4] = (self.i[_SEQ_OFFSET // 4] + 1) & 0x7FFFFFFF
        return int(self.w[_WAITERS])

    def wake(self) -> None:
        futex_wake(self.seq_addr)

    def wait(
        self,
        ready: Callable[[], bool],
        deadline: float | None,
        each_slice: Callable[[], None] | None = None,
        *,
        cancellable: bool = True,
    ) -> bool:
        """Sleep until ``ready()`` (mutex held on entry and exit); False at the deadline.

        A cancellation point of the calling thread task unless ``cancellable`` is
        false: it then raises :class:`Cancelled` (mutex held) within CANCEL_SLICE.
        """
        w = self.w
        if ready():
            return True
        me = cancellable_task() if cancellable else None
        step = _SLICE if me is None else CANCEL_SLICE
        while not ready():
            if me is not None:
                me.raise_if_cancelled()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            seq = self.i[_SEQ_OFFSET // 4]
            w[_WAITERS] += 1
            self.unlock()
            try:
                left = step if deadline is None else min(step, deadline - now)
                futex_wait(self.seq_addr, seq, left)
            finally:
                self.lock()
                w[_WAITERS] = max(0, w[_WAITERS] - 1)
            if each_slice is not None:
                each_slice()
        return True

    def close(self) -> None:
        self.w.release()
        self.i.release()
        self.seg.close()


def _attach(kind: str, name: str, extra: tuple[Any, ...] = ()) -> Any:
    obj = _attached.get(name)
    if obj is not None:
        return obj
    cls = _PROCESS_CLASSES[kind]
    sh = _Shared.attach(name, kind)
    new = object.__new__(cls)
    new._setup(sh, *extra)
    return _attached.put(name, new)


class _ProcessPrimitive:
    """Common plumbing of the process primitives: the segment, pickling, cleanup."""

    backend = "process"
    _kind = ""
    _sh: _Shared

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        import weakref

        self._sh = sh
        self._w = sh.w
        self._finalizer = weakref.finalize(self, sh.close)

    def _create(self, *extra: Any) -> None:
        sh = _Shared.create(self._kind)
        self._setup(sh, *extra)
        _attached.put(sh.name, self)

    def _extra(self) -> tuple[Any, ...]:
        return ()

    def __reduce__(self) -> Any:
        return (_attach, (self._kind, self._sh.name, self._extra()))

    @property
    def shm_name(self) -> str:
        """The name of its shared-memory segment."""
        return self._sh.name


def _me() -> tuple[int, int]:
    return _me_pid, threading.get_ident()


class _ProcessLock(_ProcessPrimitive, Lock):
    _kind = "Lock"
    # fields
    _LOCKED, _PID, _TID = _F + 1, _F + 2, _F + 3

    def __init__(self, *, backend: str = "process", name: str | None = None) -> None:
        self._create(name)

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        self.name = extra[0] if extra else None
        self._label = _label("Lock", self.name or sh.name, sh.name)

    def _extra(self) -> tuple[Any, ...]:
        return (self.name,)

    def _take(self) -> bool:
        w = self._w
        if w[self._LOCKED]:
            return False
        pid, tid = _me()
        w[self._PID] = pid
        w[self._TID] = tid
        w[self._LOCKED] = 1
        return True

    def _reap_dead_holder(self) -> None:
        w = self._w
        if w[self._LOCKED] and not pid_alive(int(w[self._PID])):
            w[self._LOCKED] = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return self._acquire(blocking, _deadline(_acquire_args(blocking, timeout)), True)

    def _acquire(self, blocking: bool, deadline: float | None, cancellable: bool) -> bool:
        if _dbg.enabled:
            _dbg.before_acquire(self._sh.name, self._label, blocking)
        sh = self._sh
        try:
            sh.lock(deadline)
        except TimeoutError:
            return False
        try:
            ok = self._take() or (
                blocking
                and sh.wait(self._take, deadline, self._reap_dead_holder, cancellable=cancellable)
            )
            if not ok and blocking:
                self._reap_dead_holder()
                ok = self._take()
        finally:
            sh.unlock()
        if ok and _dbg.enabled:
            _dbg.after_acquire(self._sh.name)
        return ok

    def release(self) -> None:
        sh = self._sh
        w = self._w
        sh.lock()
        try:
            if not w[self._LOCKED]:
                raise RuntimeError("release unlocked lock")
            w[self._LOCKED] = 0
            w[self._PID] = 0
            waiters = sh.changed()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()
        if _dbg.enabled:
            _dbg.on_release(self._sh.name)

    def locked(self) -> bool:
        return bool(self._w[self._LOCKED])

    def _is_owned(self) -> bool:
        w = self._w
        return bool(w[self._LOCKED]) and (int(w[self._PID]), int(w[self._TID])) == _me()

    def _release_save(self) -> Any:
        self.release()
        return None

    def _acquire_restore(self, state: Any) -> None:
        # Not a cancellation point: a Condition's wait ends with its lock held.
        self._acquire(True, None, False)

    def __repr__(self) -> str:
        return f"<{self._label} backend='process' {'locked' if self.locked() else 'unlocked'}>"


class _ProcessRLock(_ProcessPrimitive, RLock):
    _kind = "RLock"
    _COUNT, _PID, _TID = _F + 1, _F + 2, _F + 3

    def __init__(self, *, backend: str = "process", name: str | None = None) -> None:
        self._create(name)

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        self.name = extra[0] if extra else None
        self._label = _label("RLock", self.name or sh.name, sh.name)

    def _extra(self) -> tuple[Any, ...]:
        return (self.name,)

    def _owner(self) -> tuple[int, int]:
        return int(self._w[self._PID]), int(self._w[self._TID])

    def _take(self, count: int = 1) -> bool:
        w = self._w
        if w[self._COUNT] == 0:
            pid, tid = _me()
            w[self._PID] = pid
            w[self._TID] = tid
            w[self._COUNT] = count
            return True
        return False

    def _reap_dead_holder(self) -> None:
        w = self._w
        if w[self._COUNT] and not pid_alive(int(w[self._PID])):
            w[self._COUNT] = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return self._acquire(blocking, _deadline(_acquire_args(blocking, timeout)), 1)

    def _acquire(
        self, blocking: bool, deadline: float | None, count: int, cancellable: bool = True
    ) -> bool:
        if _dbg.enabled:
            _dbg.before_acquire(self._sh.name, self._label, blocking)
        sh = self._sh
        w = self._w
        try:
            sh.lock(deadline)
        except TimeoutError:
            return False
        try:
            if w[self._COUNT] and self._owner() == _me():
                w[self._COUNT] += count
                ok = True
            else:
                ok = self._take(count) or (
                    blocking
                    and sh.wait(
                        lambda: self._take(count),
                        deadline,
                        self._reap_dead_holder,
                        cancellable=cancellable,
                    )
                )
        finally:
            sh.unlock()
        if ok and _dbg.enabled:
            for _ in range(count):
                _dbg.after_acquire(self._sh.name)
        return ok

    def release(self) -> None:
        self._release(1)

    def _release(self, count: int) -> int:
        sh = self._sh
        w = self._w
        sh.lock()
        try:
            if not w[self._COUNT] or self._owner() != _me():
                raise RuntimeError("cannot release un-acquired lock")
            if count == 0:
                count = int(w[self._COUNT])
            w[self._COUNT] -= count
            waiters = 0
            if w[self._COUNT] == 0:
                w[self._PID] = 0
                waiters = sh.changed()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()
        if _dbg.enabled:
            for _ in range(count):
                _dbg.on_release(self._sh.name)
        return count

    def _is_owned(self) -> bool:
        return bool(self._w[self._COUNT]) and self._owner() == _me()

    def _release_save(self) -> Any:
        return self._release(0)

    def _acquire_restore(self, state: Any) -> None:
        # Not a cancellation point: a Condition's wait ends with its lock held.
        self._acquire(True, None, int(state), cancellable=False)

    def __repr__(self) -> str:
        return f"<{self._label} backend='process'>"


class _ProcessEvent(_ProcessPrimitive, Event):
    _kind = "Event"
    _FLAG, _SETS = _F + 1, _F + 2

    def __init__(self, *, backend: str = "process") -> None:
        self._create()

    def set(self) -> None:
        sh = self._sh
        sh.lock()
        try:
            self._w[self._FLAG] = 1
            self._w[self._SETS] += 1
            waiters = sh.changed()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()

    def clear(self) -> None:
        sh = self._sh
        sh.lock()
        try:
            self._w[self._FLAG] = 0
        finally:
            sh.unlock()

    def is_set(self) -> bool:
        return bool(self._w[self._FLAG])

    def wait(self, timeout: float | None = None) -> bool:
        timeout = check_timeout(timeout)
        w = self._w
        if w[self._FLAG]:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        sh = self._sh
        try:
            sh.lock(deadline)
        except TimeoutError:
            return False
        try:
            sets = w[self._SETS]
            # True once set, even if cleared again before this waiter woke (as threading.Event).
            return sh.wait(lambda: bool(w[self._FLAG]) or w[self._SETS] != sets, deadline)
        finally:
            sh.unlock()


class _ProcessSemaphore(_ProcessPrimitive, Semaphore):
    _kind = "Semaphore"
    _VALUE, _BOUND = _F + 1, _F + 2

    def __init__(self, value: int = 1, *, backend: str = "process") -> None:
        _check_value(value)
        self._create()
        self._w[self._VALUE] = value
        self._w[self._BOUND] = value if self._kind == "BoundedSemaphore" else 0

    def _take(self) -> bool:
        w = self._w
        if w[self._VALUE] > 0:
            w[self._VALUE] -= 1
            return True
        return False

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        deadline = _deadline(_acquire_args(blocking, timeout))
        sh = self._sh
        try:
            sh.lock(deadline)
        except TimeoutError:
            return False
        try:
            return self._take() or (blocking and sh.wait(self._take, deadline))
        finally:
            sh.unlock()

    def release(self, n: int = 1) -> None:
        _check_n(n)
        sh = self._sh
        w = self._w
        sh.lock()
        try:
            bound = w[self._BOUND]
            if bound and w[self._VALUE] + n > bound:
                raise ValueError("Semaphore released too many times")
            w[self._VALUE] += n
            waiters = sh.changed()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()

    @property
    def value(self) -> int:
        """The current count (a snapshot)."""
        return int(self._w[self._VALUE])


class _ProcessBoundedSemaphore(_ProcessSemaphore, BoundedSemaphore):
    _kind = "BoundedSemaphore"


class _ProcessBarrier(_ProcessPrimitive, Barrier):
    _kind = "Barrier"
    _PARTIES, _COUNT, _GEN, _BROKEN, _RESETS = _F + 1, _F + 2, _F + 3, _F + 4, _F + 5

    def __init__(
        self,
        parties: int,
        action: Callable[[], Any] | None = None,
        timeout: float | None = None,
        *,
        backend: str = "process",
    ) -> None:
        _check_parties(parties)
        self._create()
        self._w[self._PARTIES] = parties
        self._action = action
        self._timeout = check_timeout(timeout)

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        self._action, self._timeout = extra if extra else (None, None)

    def _extra(self) -> tuple[Any, ...]:
        return (self._action, self._timeout)

    def _break(self) -> int:
        self._w[self._BROKEN] = 1
        return self._sh.changed()

    def wait(self, timeout: float | None = None) -> int:
        timeout = check_timeout(timeout)
        if timeout is None:
            timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        sh = self._sh
        w = self._w
        sh.lock()
        waiters = 0
        try:
            if w[self._BROKEN]:
                raise BrokenBarrierError
            gen = int(w[self._GEN])
            index = int(w[self._COUNT])
            w[self._COUNT] = index + 1
            if index + 1 == w[self._PARTIES]:
                if self._action is not None:
                    try:
                        self._action()
                    except BaseException:
                        waiters = self._break()
                        raise
                w[self._RESETS] &= ~(1 << (gen % 64))
                w[self._COUNT] = 0
                w[self._GEN] = gen + 1
                waiters = sh.changed()
                return index
            try:
                done = sh.wait(lambda: w[self._GEN] != gen or bool(w[self._BROKEN]), deadline)
            except BaseException:
                # Cancelled: the others must not wait for a party that left (as on a timeout).
                waiters = self._break()
                raise
            if w[self._GEN] != gen:
                if w[self._RESETS] >> (gen % 64) & 1:
                    raise BrokenBarrierError
                return index
            if not done:
                waiters = self._break()
            raise BrokenBarrierError
        finally:
            sh.unlock()
            if waiters:
                sh.wake()

    def reset(self) -> None:
        sh = self._sh
        w = self._w
        sh.lock()
        try:
            gen = int(w[self._GEN])
            if w[self._COUNT]:
                w[self._RESETS] |= 1 << (gen % 64)  # its waiters raise BrokenBarrierError
            else:
                w[self._RESETS] &= ~(1 << (gen % 64))
            w[self._COUNT] = 0
            w[self._BROKEN] = 0
            w[self._GEN] = gen + 1
            waiters = sh.changed()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()

    def abort(self) -> None:
        sh = self._sh
        sh.lock()
        try:
            waiters = self._break()
        finally:
            sh.unlock()
        if waiters:
            sh.wake()

    @property
    def parties(self) -> int:
        return int(self._w[self._PARTIES])

    @property
    def n_waiting(self) -> int:
        return 0 if self._w[self._BROKEN] else int(self._w[self._COUNT])

    @property
    def broken(self) -> bool:
        return bool(self._w[self._BROKEN])


_FREE, _WAITING, _NOTIFIED = 0, 1, 2


class _ProcessCondition(_ProcessPrimitive, Condition):
    """Waiters take a slot (with a ticket for FIFO order) and sleep on its own futex word."""

    _kind = "Condition"
    _TICKET = _F + 1

    def __init__(self, lock: Any = None, *, backend: str | None = "process") -> None:
        if lock is None:
            lock = _ProcessRLock()
        elif not isinstance(lock, (_ProcessLock, _ProcessRLock)):
            raise TypeError(
                f"a Condition(backend='process') needs a process Lock or RLock, got {lock!r}"
            )
        self._create()
        self._lock = lock

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        if extra:
            self._lock = extra[0]
        self._i = sh.i

    def _extra(self) -> tuple[Any, ...]:
        return (self._lock,)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    @staticmethod
    def _word(k: int) -> int:
        return (_SLOTS_OFFSET + k * _SLOT_SIZE) // 4

    def wait(self, timeout: float | None = None) -> bool:
        timeout = check_timeout(timeout)
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        deadline = None if timeout is None else time.monotonic() + timeout
        sh = self._sh
        i = self._i
        w = self._w
        sh.lock()
        try:
            for k in range(_NSLOTS):
                if i[self._word(k)] == _FREE:
                    break
            else:
                raise RuntimeError(f"more than {_NSLOTS} processes wait on one Condition")
            i[self._word(k) + 1] = _me_pid
            w[(_SLOTS_OFFSET + k * _SLOT_SIZE) // 8 + 1] = w[self._TICKET]
            w[self._TICKET] += 1
            i[self._word(k)] = _WAITING
        finally:
            sh.unlock()
        addr = sh.seg.address + _SLOTS_OFFSET + k * _SLOT_SIZE
        me = cancellable_task()
        step = _SLICE if me is None else CANCEL_SLICE
        cancelled = False
        saved = self._lock._release_save()
        try:
            while i[self._word(k)] == _WAITING:
                if me is not None and me.cancelled:
                    cancelled = True
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                left = step if deadline is None else min(step, deadline - now)
                futex_wait(addr, _WAITING, left)
        finally:
            sh.lock()
            try:
                notified = i[self._word(k)] == _NOTIFIED
                i[self._word(k)] = _FREE
            finally:
                sh.unlock()
            self._lock._acquire_restore(saved)
        if cancelled and me is not None:
            if notified:
                self.notify(1)  # notified as the cancel came: pass it on to another waiter
            me.raise_if_cancelled()
        return notified

    def notify(self, n: int = 1) -> None:
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        if n <= 0:
            return
        sh = self._sh
        i = self._i
        w = self._w
        woken: list[int] = []
        sh.lock()
        try:
            waiting = []
            for k in range(_NSLOTS):
                if i[self._word(k)] == _WAITING:
                    waiting.append((int(w[(_SLOTS_OFFSET + k * _SLOT_SIZE) // 8 + 1]), k))
            waiting.sort()
            for _, k in waiting:
                if len(woken) >= n:
                    break
                pid = int(i[self._word(k) + 1])
                if pid != _me_pid and not pid_alive(pid):
                    i[self._word(k)] = _FREE  # a waiter that died must not swallow the wake-up
                    continue
                i[self._word(k)] = _NOTIFIED
                woken.append(k)
        finally:
            sh.unlock()
        for k in woken:
            futex_wake(sh.seg.address + _SLOTS_OFFSET + k * _SLOT_SIZE, 1)

    def notify_all(self) -> None:
        self.notify(_NSLOTS)


_PROCESS_CLASSES: dict[str, type[_ProcessPrimitive]] = {
    "Lock": _ProcessLock,
    "RLock": _ProcessRLock,
    "Event": _ProcessEvent,
    "Condition": _ProcessCondition,
    "Semaphore": _ProcessSemaphore,
    "BoundedSemaphore": _ProcessBoundedSemaphore,
    "Barrier": _ProcessBarrier,
}

for _k, _cls in {
    "Lock": _ThreadLock,
    "RLock": _ThreadRLock,
    "Event": _ThreadEvent,
    "Condition": _ThreadCondition,
    "Semaphore": _ThreadSemaphore,
    "BoundedSemaphore": _ThreadBoundedSemaphore,
    "Barrier": _ThreadBarrier,
}.items():
    register_primitive(_k, "thread", _cls)
for _k, _pcls in _PROCESS_CLASSES.items():
    register_primitive(_k, "process", _pcls)


# --------------------------------------------------------------------------- FileLock


class FileLock:
    """An advisory lock on a file, for unrelated processes (``flock``).

    ``pt.FileLock(path, timeout=None)``: ``acquire(blocking=True,
    timeout=None) -> bool``, ``release()``, ``locked()``; ``with lock:`` waits
    up to the lock's ``timeout`` and raises ``TimeoutError`` after it. The
    kernel releases it when its holder dies, however it dies. It is not
    re-entrant; threads of one process exclude each other too. The lock file
    is created (mode 0600) and never removed: removing it while another
    process waits would let two processes hold "the" lock.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float | None = None, mode: int = 0o600
    ):
        self.path = os.fspath(path)
        self.timeout = check_timeout(timeout)
        self.mode = mode
        self._fd: int | None = None
        self._key = ("FileLock", os.path.abspath(self.path))
        self._label = f"FileLock {self.path!r}"

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot create lock file: directory {os.path.dirname(self.path)!r} does not exist",
                self.path,
            ) from None
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, "a FileLock needs a file path, not a directory", self.path
            ) from None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        deadline = _deadline(_acquire_args(blocking, timeout))
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, blocking)
        fd = self._open()
        delay = 0.001
        me = None
        looked = False  # for the current task: only once it must wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not looked:
                        me, looked = cancellable_task(), True
                    if me is not None:
                        me.raise_if_cancelled()
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        os.close(fd)
                        return False
                    # flock has no timeout: poll, backing off to CANCEL_SLICE (50 ms).
                    time.sleep(delay if deadline is None else min(delay, deadline - now))
                    delay = min(delay * 2, CANCEL_SLICE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if _dbg.enabled:
            _dbg.after_acquire(self._key)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"release() of {self._label}, which this object does not hold")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if _dbg.enabled:
            _dbg.on_release(self._key)

    def locked(self) -> bool:
        """Whether anyone (this object or another process) holds the lock now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> FileLock:
        if not self.acquire(timeout=self.timeout):
            raise TimeoutError(
                f"could not lock {self.path!r} within {self.timeout} s: another process holds it"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> Any:
        return (_filelock, (self.path, self.timeout, self.mode))

    def __repr__(self) -> str:
        return f"<FileLock {self.path!r} {'held' if self._fd is not None else 'not held'}>"


def _filelock(path: str, timeout: float | None, mode: int) -> FileLock:
    return FileLock(path, timeout=timeout, mode=mode)
