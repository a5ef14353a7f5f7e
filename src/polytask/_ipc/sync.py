"""Process-shared synchronisation primitives: the "process" backend's Lock, RLock,
Event, Condition, Semaphore, BoundedSemaphore and Barrier.

State lives in a small shared-memory segment, guarded by a robust
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
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any

from .._core import debug as _dbg
from .._core.primitives import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
    check_count_after_release,
    check_n,
    check_parties,
    check_value,
    label,
)
from .._core.task import CANCEL_SLICE, cancellable_task
from .._core.timeouts import acquire_timeout, check_timeout
from .._core.timeouts import deadline as _deadline
from .shm import (
    AttachCache,
    RobustMutex,
    Segment,
    futex_wait,
    futex_wake,
    pid_alive,
)
from .shm import let_go_mutex as _let_go

__all__ = [
    "PROCESS_CLASSES",
    "ProcessBarrier",
    "ProcessBoundedSemaphore",
    "ProcessCondition",
    "ProcessEvent",
    "ProcessLock",
    "ProcessRLock",
    "ProcessSemaphore",
]

#: Seconds a process waiter sleeps before it re-checks (e.g. that a lock's holder is alive).
_SLICE = 0.25


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

    __slots__ = ("__weakref__", "addr", "i", "mutex", "seg", "seq_addr", "w")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.w = seg.buf.cast("Q")
        self.i = seg.buf.cast("I")
        self.addr = seg.address + _MUTEX_OFFSET
        self.mutex = RobustMutex(self.addr)
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
        try:
            self.mutex.acquire(deadline)
        except BaseException:
            # An interrupt right after the mutex was taken (it comes after a C call
            # returns): the caller's try has not begun. Past this function's
            # return no call comes before the caller's try, so none lands there.
            _let_go(self.addr)
            raise

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
            _let_go(self.addr)
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


def _release(sh: _Shared, handle: Callable[[], object]) -> None:
    """A primitive's finalizer: unmap its segment (the owner's close also removes the name).

    Run at exit with the primitive still alive, it only removes the name: a daemon
    thread may be inside acquire or wait on this mapping, and unmapping it under
    that thread crashed the interpreter (SIGSEGV at exit). The exit unmaps it.
    """
    if handle() is not None:
        if sh.seg.owned:
            sh.seg.unlink()
        return
    sh.close()


def _attach(kind: str, name: str, extra: tuple[Any, ...] = ()) -> Any:
    obj = _attached.get(name)
    if obj is not None:
        return obj
    cls = PROCESS_CLASSES[kind]
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
        self._finalizer = weakref.finalize(self, _release, sh, weakref.ref(self))

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


class ProcessLock(_ProcessPrimitive, Lock):
    _kind = "Lock"
    # fields
    _LOCKED, _PID, _TID = _F + 1, _F + 2, _F + 3

    def __init__(self, *, backend: str = "process", name: str | None = None) -> None:
        self._create(name)

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        self.name = extra[0] if extra else None
        self._label = label("Lock", self.name or sh.name, sh.name)

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
        return self._acquire(blocking, _deadline(acquire_timeout(blocking, timeout)), True)

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
            _let_go(sh.addr)
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
            _let_go(sh.addr)
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


class ProcessRLock(_ProcessPrimitive, RLock):
    _kind = "RLock"
    _COUNT, _PID, _TID = _F + 1, _F + 2, _F + 3

    def __init__(self, *, backend: str = "process", name: str | None = None) -> None:
        self._create(name)

    def _setup(self, sh: _Shared, *extra: Any) -> None:
        super()._setup(sh)
        self.name = extra[0] if extra else None
        self._label = label("RLock", self.name or sh.name, sh.name)

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
        return self._acquire(blocking, _deadline(acquire_timeout(blocking, timeout)), 1)

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
            _let_go(sh.addr)
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
            _let_go(sh.addr)
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


class ProcessEvent(_ProcessPrimitive, Event):
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
            _let_go(sh.addr)
        if waiters:
            sh.wake()

    def clear(self) -> None:
        sh = self._sh
        sh.lock()
        try:
            self._w[self._FLAG] = 0
        finally:
            _let_go(sh.addr)

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
            _let_go(sh.addr)


class ProcessSemaphore(_ProcessPrimitive, Semaphore):
    _kind = "Semaphore"
    _VALUE, _BOUND = _F + 1, _F + 2

    def __init__(self, value: int = 1, *, backend: str = "process") -> None:
        check_value(value)
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
        deadline = _deadline(acquire_timeout(blocking, timeout))
        sh = self._sh
        try:
            sh.lock(deadline)
        except TimeoutError:
            return False
        try:
            return self._take() or (blocking and sh.wait(self._take, deadline))
        finally:
            _let_go(sh.addr)

    def release(self, n: int = 1) -> None:
        check_n(n)
        sh = self._sh
        w = self._w
        sh.lock()
        try:
            bound = w[self._BOUND]
            value = w[self._VALUE] + n
            if bound and value > bound:
                raise ValueError("Semaphore released too many times")
            check_count_after_release(value)
            w[self._VALUE] = value
            waiters = sh.changed()
        finally:
            _let_go(sh.addr)
        if waiters:
            sh.wake()

    @property
    def value(self) -> int:
        """The current count (a snapshot)."""
        return int(self._w[self._VALUE])


class ProcessBoundedSemaphore(ProcessSemaphore, BoundedSemaphore):
    _kind = "BoundedSemaphore"


class ProcessBarrier(_ProcessPrimitive, Barrier):
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
        check_parties(parties)
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
            _let_go(sh.addr)
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
            _let_go(sh.addr)
        if waiters:
            sh.wake()

    def abort(self) -> None:
        sh = self._sh
        sh.lock()
        try:
            waiters = self._break()
        finally:
            _let_go(sh.addr)
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


class ProcessCondition(_ProcessPrimitive, Condition):
    """Waiters take a slot (with a ticket for FIFO order) and sleep on its own futex word."""

    _kind = "Condition"
    _TICKET = _F + 1

    def __init__(self, lock: Any = None, *, backend: str | None = "process") -> None:
        if lock is None:
            lock = ProcessRLock()
        elif not isinstance(lock, (ProcessLock, ProcessRLock)):
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
            _let_go(sh.addr)
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
                _let_go(sh.addr)
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
            _let_go(sh.addr)
        for k in woken:
            futex_wake(sh.seg.address + _SLOTS_OFFSET + k * _SLOT_SIZE, 1)

    def notify_all(self) -> None:
        self.notify(_NSLOTS)


PROCESS_CLASSES: dict[str, type[_ProcessPrimitive]] = {
    "Lock": ProcessLock,
    "RLock": ProcessRLock,
    "Event": ProcessEvent,
    "Condition": ProcessCondition,
    "Semaphore": ProcessSemaphore,
    "BoundedSemaphore": ProcessBoundedSemaphore,
    "Barrier": ProcessBarrier,
}
