"""Shared-memory segments, and the two process-shared primitives built on them.

Everything polytask shares between processes (channel rings, process locks,
SharedArray data) lives in a :class:`Segment`: a file in ``/dev/shm`` named
``polytask-<kind>-<pid>-<random>``, created owner-only (mode 0600) and mapped
with ``mmap``. Python's ``multiprocessing.shared_memory`` is not used: on 3.11
it always registers with the resource tracker, an extra process that unlinks
segments behind our back and that the test suite would flag as a stray child.

Lifetime (the creating process is the *owner*)::

    owner: create ──> guard_path (the guardian unlinks it if the owner dies, even SIGKILL)
      │                at_shutdown (unlinked when the owner exits normally)
      └─ close()/unlink() ──> name removed, unguard_path
    other processes: attach(name) ──> map ──> close() (never unlink by default)

A name only matters for attaching: once a process has mapped a segment, the
memory stays valid until it unmaps it, whoever removed the name.

Two primitives work on words inside a segment:

- :class:`RobustMutex`, a process-shared *robust* pthread mutex: when its holder
  dies inside the critical section, the next locker is told (``EOWNERDEAD``) and
  can repair the state instead of waiting forever (faster-fifo's mutex is not
  robust and wedges in that case);
- :func:`futex_wait` / :func:`futex_wake` on a 32-bit word, to sleep until
  another process changes it (the wake-up for blocked readers and writers).
"""

from __future__ import annotations

import _ctypes
import collections
import ctypes
import errno
import mmap
import operator
import os
import platform
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from .._core.channel import MAX_COUNT
from .._os import proc as _proc

try:
    # The C helpers (_lane.c), built with the package when a compiler is there:
    # the channel's fast paths, and the mutex let-go the primitives use.
    from . import _lane as lane_module
except ImportError:  # pragma: no cover - the install had no C compiler
    lane_module = None  # type: ignore[assignment]
# What _lane.c's functions take (its API: 2 let_go(base, owed), 3 let_go_mutex). A
# stale in-place build failed with a TypeError in every exception handler.
_LANE_API = 3
if lane_module is not None and getattr(lane_module, "API", 1) != _LANE_API:  # pragma: no cover
    raise ImportError(
        f"polytask._ipc._lane is an older build (API {getattr(lane_module, 'API', 1)}, not "
        f"{_LANE_API}): reinstall polytask (pip install -e .) to rebuild it"
    )


__all__ = [
    "SHM_DIR",
    "RobustMutex",
    "Segment",
    "SharedArray",
    "futex_wait",
    "futex_wake",
    "lane_module",
    "let_go_mutex",
    "pid_alive",
    "process_alive",
    "process_start",
]

#: Where POSIX shared memory lives on Linux (``shm_open`` is an ``open`` here).
SHM_DIR = "/dev/shm"

_libc = ctypes.CDLL(None, use_errno=True)
# Calls that never block go through PyDLL: no GIL release and re-acquire, which
# is a third of the cost of a ctypes call.
_pylibc = ctypes.PyDLL(None, use_errno=True)


# --------------------------------------------------------------------------- segments

# Reentrant: a garbage collection inside a section under this lock may run a
# channel's finalizer, which removes its segment and so takes it again.
_owned_lock = threading.RLock()
_owned: dict[str, int] = {}  # path -> owning pid
_hook_installed = False


def _unlink_owned_at_exit() -> None:
    with _owned_lock:
        items = list(_owned.items())
        _owned.clear()
    me = os.getpid()
    for path, pid in items:
        if pid == me:
            try:
                os.unlink(path)
            except OSError:
                pass
            _proc.unguard_path(path)


def _forget_owned_after_fork() -> None:
    # A forked child does not own its parent's segments: its exit must not remove them.
    global _owned_lock, _hook_installed
    _owned.clear()
    _owned_lock = threading.RLock()
    _hook_installed = False  # the fork emptied the shutdown hooks (see proc)


os.register_at_fork(after_in_child=_forget_owned_after_fork)


def _register_owned(path: str) -> None:
    global _hook_installed
    with _owned_lock:
        _owned[path] = os.getpid()
        if not _hook_installed:
            _proc.at_shutdown(_unlink_owned_at_exit)
            _hook_installed = True
    _proc.guard_path(path)


def _unregister_owned(path: str) -> None:
    with _owned_lock:
        owned = _owned.pop(path, None) is not None
    if owned:
        _proc.unguard_path(path)


def _valid_name(name: str) -> str:
    if not isinstance(name, str) or "/" in name or not name.startswith("polytask-"):
        raise ValueError(f"{name!r} is not the name of a polytask shared-memory segment")
    return name


class Segment:
    """One shared-memory file in /dev/shm, mapped read-write in this process.

    ``buf`` is a memoryview of the whole mapping and ``address`` its address
    (for the mutex and futex calls). Create with :meth:`create` (the caller
    becomes the owner) or :meth:`attach` (by name, from another process).
    """

    __slots__ = (
        "__weakref__",
        "_anchor",
        "_closed",
        "_mm",
        "_pid",
        "address",
        "buf",
        "name",
        "owner",
        "size",
    )

    def __init__(self, name: str, mm: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.size = len(mm)
        self._mm = mm
        self.buf = memoryview(mm)
        # from_buffer pins the mapping (close() would fail while it lives) and gives its address.
        self._anchor: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * self.size).from_buffer(
            mm
        )
        self.address = ctypes.addressof(self._anchor)
        self.owner = owner
        self._pid = os.getpid()
        self._closed = False

    @property
    def owned(self) -> bool:
        """Whether this process owns the segment (a forked child's copy of the object does not)."""
        return self.owner and self._pid == os.getpid()

    @property
    def path(self) -> str:
        return os.path.join(SHM_DIR, self.name)

    @property
    def mapping(self) -> mmap.mmap:
        """The mmap itself (slicing it gives ``bytes`` in one step, faster than ``buf``)."""
        return self._mm

    @classmethod
    def create(
        cls, kind: str, size: int, *, prefix: str | None = None, spill: bool = False
    ) -> Segment:
        """Create a new zero-filled segment of ``size`` bytes, owned by this process.

        Its name is ``polytask-<kind>-<pid>-<random>``, or ``<prefix><pid>-<random>``
        when ``prefix`` is given (a channel's spills are named after the channel,
        so that one guardian registration of the prefix covers all of them).
        A ``spill`` (a channel's) is guarded with ``guard_spill``, not removed when
        it holds an item, and left out of the exit-time unlinking: its channel's
        code manages it.
        """
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        if prefix is not None:
            _valid_name(prefix)
        for _ in range(8):
            if prefix is None:
                name = f"polytask-{kind}-{os.getpid()}-{secrets.token_hex(6)}"
            else:
                name = f"{prefix}{os.getpid()}-{secrets.token_hex(6)}"
            path = os.path.join(SHM_DIR, name)
            if spill:
                # Guarded before the file exists: a daemon thread that the interpreter
                # stops at exit right after creating it (any return from a call that
                # let go of the GIL: the open, the chmod) left it behind, empty, with
                # no one to remove it. The guardian removes an empty or half-made one.
                _proc.guard_spill(path)
            try:
                fd = os.open(
                    path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
            except BaseException as exc:
                if spill:  # not ours (a name taken, 48 random bits collided) or none made
                    _proc.unguard_spill(path)
                if isinstance(exc, FileExistsError):  # pragma: no cover
                    continue
                raise
            break
        else:  # pragma: no cover
            raise FileExistsError("could not find a free shared-memory name")
        try:
            os.fchmod(fd, 0o600)
            if not spill:
                _register_owned(path)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            if spill:
                _proc.unguard_spill(path)
            else:
                _unregister_owned(path)
            raise
        os.close(fd)
        return cls(name, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map the existing segment ``name`` (raises FileNotFoundError once it was removed)."""
        path = os.path.join(SHM_DIR, _valid_name(name))
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise FileNotFoundError(
                    errno.ENOENT, "segment is being created or was truncated", path
                )
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(name, mm, owner=False)

    def unlink(self) -> None:
        """Remove the name (mappings stay valid); idempotent, from any process."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        _unregister_owned(self.path)

    def close(self) -> None:
        """Unmap this process's view; the owner also removes the name.

        If views of the memory are still exported (a NumPy array a user kept),
        unmapping is left to the garbage collector.
        """
        if self._closed:
            return
        self._closed = True
        if self.owned:
            self.unlink()
        self._anchor = None
        try:
            self.buf.release()
            self._mm.close()
        except BufferError:
            pass  # someone still holds a view: the mapping goes when they drop it

    @property
    def closed(self) -> bool:
        return self._closed

    def exists(self) -> bool:
        """Whether the name is still present in /dev/shm."""
        return os.path.exists(self.path)


# --------------------------------------------------------------------------- robust mutex

_EOWNERDEAD = errno.EOWNERDEAD
_ENOTRECOVERABLE = errno.ENOTRECOVERABLE
_EBUSY = errno.EBUSY
_ETIMEDOUT = errno.ETIMEDOUT

#: Bytes reserved for a pthread_mutex_t (40 on x86-64 glibc, 48 on aarch64).
MUTEX_SIZE = 64


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _fn(
    lib: ctypes.CDLL, name: str, argtypes: list[type], restype: type = ctypes.c_int
) -> Callable[..., int]:
    f = getattr(lib, name)
    f.argtypes = argtypes
    f.restype = restype
    return f  # type: ignore[no-any-return]


_vp = ctypes.c_void_p
_mutexattr_init = _fn(_libc, "pthread_mutexattr_init", [_vp])
_mutexattr_destroy = _fn(_libc, "pthread_mutexattr_destroy", [_vp])
_mutexattr_setpshared = _fn(_libc, "pthread_mutexattr_setpshared", [_vp, ctypes.c_int])
_mutexattr_setrobust = _fn(_libc, "pthread_mutexattr_setrobust", [_vp, ctypes.c_int])
_mutex_init = _fn(_libc, "pthread_mutex_init", [_vp, _vp])
_mutex_timedlock = _fn(_libc, "pthread_mutex_timedlock", [_vp, _vp])
_mutex_trylock = _fn(_pylibc, "pthread_mutex_trylock", [_vp])
_mutex_unlock = _fn(_pylibc, "pthread_mutex_unlock", [_vp])
_mutex_consistent = _fn(_pylibc, "pthread_mutex_consistent", [_vp])
#: glibc's robust mutex while its holder has not marked it consistent since it
#: found the previous holder dead (__data.__owner; PTHREAD_MUTEX_INCONSISTENT).
MUTEX_INCONSISTENT = 0x7FFFFFFF
# Where glibc keeps a mutex's owner (__data.__owner) and, in its futex word, the
# holder's thread id (the rest are the robust list's flags).
OWNER_OFFSET = 8
FUTEX_TID_MASK = 0x3FFFFFFF


class _RawIntCall(_ctypes.CFuncPtr):
    """A C function called with the GIL held (as PyDLL's) whose C ``int`` result
    comes back as it is: with no restype at all, ctypes skips its result
    conversion (a sixth of a call's cost)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI


def _raw_int_call(fn: Any) -> Callable[[Any], int]:
    address = ctypes.cast(fn, ctypes.c_void_p).value
    if not address:  # pragma: no cover - a libc function has an address
        raise OSError(f"no address for {fn!r}")
    return cast("Callable[[Any], int]", _RawIntCall(address))


# The same two calls for the channels' hot paths, taking a mutex_ref rather than
# an address: no argtypes to convert through, and the pointer argument made once
# (a byref), not per call. The unlock's result is not even made (restype None):
# the hot paths never look at it (unlocking a mutex we hold does not fail).
_mutex_trylock_ref = _raw_int_call(ctypes.PyDLL(None).pthread_mutex_trylock)
_mutex_unlock_ref: Callable[[Any], None] = ctypes.PyDLL(None).pthread_mutex_unlock
_mutex_unlock_ref.restype = None  # type: ignore[attr-defined]


def mutex_ref(address: int) -> Any:
    """The mutex at ``address`` as a ready pointer argument, for ``_mutex_trylock_ref`` /
    ``_mutex_unlock_ref``.

    It does not keep the memory mapped: its user must hold the Segment.
    """
    return ctypes.byref((ctypes.c_char * MUTEX_SIZE).from_address(address))


def locked_mutex_ref() -> Any:
    """A private mutex, locked for good, as a ``mutex_ref``: every trylock on it fails (EBUSY).

    A default (not robust) mutex: no thread owns it in a way its exit would undo,
    and a forked child's copy is locked too.
    """
    m = (ctypes.c_char * MUTEX_SIZE)()
    _check(_mutex_init(ctypes.addressof(m), None), "pthread_mutex_init")
    ref = ctypes.byref(m)  # keeps m alive
    _check(_mutex_trylock_ref(ref), "pthread_mutex_trylock")
    return ref


#: How long a lock wait whose deadline has passed still waits once, GIL released
#: (see RobustMutex._acquire_slow): a critical section's length, with room to spare.
_GRACE = 0.01


class RobustMutex:
    """A process-shared, robust pthread mutex at ``address`` (inside a Segment).

    ``acquire`` returns True when the previous holder died inside its critical
    section: the caller then owns the mutex and must repair the state it guards
    (the mutex itself is marked consistent again before returning).
    """

    __slots__ = ("_addr", "_owed", "_try", "_unlock")

    def __init__(self, address: int, owed: set[tuple[int, int]] | None = None) -> None:
        self._addr = address
        # Where a repair this mutex's holder owes is noted, (address, thread id), before
        # the mutex is marked consistent: an exception (a KeyboardInterrupt) landing
        # before the caller's repair finishes then lets its handler do the repair,
        # which was lost otherwise (the next holder is not told). The channel's.
        self._owed = owed
        self._try = _mutex_trylock
        self._unlock = _mutex_unlock

    @staticmethod
    def initialize(address: int) -> None:
        """Initialise a new mutex at ``address`` (by the segment's creator, before sharing it)."""
        attr = ctypes.create_string_buffer(64)
        _check(_mutexattr_init(attr), "pthread_mutexattr_init")
        try:
            _check(_mutexattr_setpshared(attr, 1), "pthread_mutexattr_setpshared")
            _check(_mutexattr_setrobust(attr, 1), "pthread_mutexattr_setrobust")
            _check(_mutex_init(address, attr), "pthread_mutex_init")
        finally:
            _mutexattr_destroy(attr)

    def acquire(self, deadline: float | None = None) -> bool:
        """Lock; returns True if the previous holder died holding it.

        Raises TimeoutError if ``deadline`` (a ``time.monotonic()`` value)
        passes first. Critical sections are short, so waiting long means the
        holder is stopped, not working.
        """
        rc = self._try(self._addr)
        if rc == 0:
            return False
        return self._acquire_slow(rc, deadline)

    def _acquire_slow(self, rc: int, deadline: float | None) -> bool:
        spins = 0
        waited = False
        while True:
            if rc == 0:
                return False
            if rc == _EOWNERDEAD:
                if self._owed is not None:
                    self._owed.add((self._addr, threading.get_ident()))
                _mutex_consistent(self._addr)
                return True
            if rc == _ENOTRECOVERABLE:  # pragma: no cover - we always mark it consistent
                raise OSError(rc, "a polytask shared mutex is not recoverable")
            if rc != _EBUSY and rc != _ETIMEDOUT:
                raise OSError(rc, os.strerror(rc))
            if spins < 64:
                # The holder is most likely running on the other core: a few retries beat a sleep.
                spins += 1
                rc = self._try(self._addr)
                continue
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if waited:
                    raise TimeoutError("timed out waiting for a polytask shared mutex")
                # Past the deadline (timeout 0) without having waited once with the
                # GIL released: the holder may be a thread of this process, which the
                # spins above kept from finishing. (get_nowait gave up with thousands
                # of items in the ring while a get_many of another thread held it.)
                deadline = now + _GRACE
            waited = True
            slice_ = 1.0 if deadline is None else min(1.0, deadline - now)
            abst = time.time() + slice_
            ts = _timespec(int(abst), int((abst % 1.0) * 1e9))
            rc = _mutex_timedlock(self._addr, ctypes.byref(ts))

    def release(self) -> None:
        rc = self._unlock(self._addr)
        if rc != 0:
            raise OSError(rc, f"pthread_mutex_unlock: {os.strerror(rc)}")

    def let_go(self) -> None:
        """Unlock the mutex if the calling thread holds it; else do nothing (see
        :func:`let_go_mutex`)."""
        let_go_mutex(self._addr)


def _let_go_mutex_py(address: int) -> int:
    """let_go_mutex in Python, for an install without the C extension: the same,
    but an interrupt can land inside it too."""
    me = threading.get_native_id()
    owner = ctypes.c_int.from_address(address + OWNER_OFFSET).value
    if owner == MUTEX_INCONSISTENT:
        if ctypes.c_int.from_address(address).value & FUTEX_TID_MASK != me:
            return 0
        _mutex_consistent(address)
    elif owner != me:
        return 0
    _mutex_unlock(address)
    return 1


#: Unlock the robust mutex at an address if the calling thread holds it (1), else
#: nothing (0). For the ways out of a critical section: a KeyboardInterrupt can
#: land right after a lock was taken (a signal handler runs after each C call
#: returns) or before a Python unlock call runs, and the mutex was then kept while
#: the process lived (every other process waited on it). In C it is one call, so
#: no interrupt lands inside it. One taken from a dead holder and not marked
#: consistent yet is marked first (unlocked as it is, it would be unusable for
#: good): the state it guards is its holder's to keep harmless.
let_go_mutex: Callable[[int], int] = (
    _let_go_mutex_py if lane_module is None else lane_module.let_go_mutex
)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(rc, f"{what}: {os.strerror(rc)}")


# --------------------------------------------------------------------------- futex

_SYS_FUTEX = {
    "x86_64": 202,
    "amd64": 202,
    "aarch64": 98,
    "arm64": 98,
    "riscv64": 98,
    "ppc64le": 221,
    "ppc64": 221,
    "s390x": 238,
}.get(platform.machine().lower())
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1

if _SYS_FUTEX is not None:
    _syscall_block = _fn(
        _libc,
        "syscall",
        [ctypes.c_long, _vp, ctypes.c_int, ctypes.c_int, _vp, _vp, ctypes.c_int],
        ctypes.c_long,
    )
    _syscall_fast = _fn(
        _pylibc,
        "syscall",
        [ctypes.c_long, _vp, ctypes.c_int, ctypes.c_int, _vp, _vp, ctypes.c_int],
        ctypes.c_long,
    )


def futex_wait(address: int, expected: int, timeout: float | None) -> None:
    """Sleep while the 32-bit word at ``address`` equals ``expected`` (at most ``timeout`` s).

    Returns on a wake-up, a change of the word, a signal or the timeout; the
    caller re-checks its condition. Without a futex syscall for this machine it
    sleeps briefly instead (correct, slower).
    """
    if expected >= 1 << 31:
        expected -= 1 << 32
    if _SYS_FUTEX is None:  # pragma: no cover - other architectures
        time.sleep(min(0.001, timeout) if timeout is not None else 0.001)
        return
    if timeout is None:
        _syscall_block(_SYS_FUTEX, address, _FUTEX_WAIT, expected, None, None, 0)
        return
    timeout = max(0.0, timeout)
    ts = _timespec(int(timeout), int((timeout % 1.0) * 1e9))
    _syscall_block(_SYS_FUTEX, address, _FUTEX_WAIT, expected, ctypes.byref(ts), None, 0)


def futex_wake(address: int, count: int = 0x7FFFFFFF) -> None:
    """Wake up to ``count`` processes sleeping in :func:`futex_wait` on ``address``."""
    if _SYS_FUTEX is not None:
        _syscall_fast(_SYS_FUTEX, address, _FUTEX_WAKE, count, None, None, 0)


# --------------------------------------------------------------------------- liveness


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not reaped, counts as dead)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def process_start(pid: int) -> int:
    """When process ``pid`` started (clock ticks after boot), or 0 if it is gone or a zombie.

    With the pid it names one process for good: a pid reused by a later
    process comes with a later start time (``/proc/<pid>/stat``, field 22).
    """
    if pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # The fields after the command name (in parentheses, which may hold spaces
    # and parentheses): state is the first, the start time the twentieth.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return 0
    return int(fields[19])


def process_alive(pid: int, start: int) -> bool:
    """Whether the process that :func:`process_start` saw start at ``start`` still runs.

    ``start`` 0 (not known): whether any live process has the pid.
    """
    now = process_start(pid)
    return now != 0 and (start == 0 or now == start)


# --------------------------------------------------------------------------- attachments


class AttachCache:
    """Per-process map from segment name to the live object using it.

    Unpickling the same channel or lock twice in one process gives the same
    object back, so it is mapped once (and lock-order checking sees one lock).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objs: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()
        # A fork while another thread held the lock (attaching) would leave the
        # child's copy locked for good: its first attach would hang.
        os.register_at_fork(after_in_child=self._reset_lock)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def get(self, name: str) -> object | None:
        with self._lock:
            return self._objs.get(name)

    def put(self, name: str, obj: object) -> object:
        """Store ``obj`` unless another thread stored one first; return the one kept."""
        with self._lock:
            old = self._objs.get(name)
            if old is not None:
                return old
            self._objs[name] = obj
            return obj

    def clear(self) -> None:
        with self._lock:
            self._objs.clear()


# --------------------------------------------------------------------------- SharedArray

_SA_MAGIC = 0x59415252_41485350  # "PSHARRAY"
_SA_HEADER = 4096  # data starts page-aligned: right for every dtype
_SA_MUTEX = 64
_SA_REFS = 16  # u64 index (byte 128): handles alive plus pickled copies not yet unpickled


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is a dev/bench extra
        raise ImportError("pt.SharedArray needs NumPy: pip install numpy") from exc
    return numpy


#: How many :func:`_sa_count` calls this thread is in, and the drops the collector
#: ran meanwhile (see :func:`_sa_drop`), for the outermost one to do.
_sa_local = threading.local()
_sa_later: collections.deque[tuple[Segment, RobustMutex, memoryview]] = collections.deque()
os.register_at_fork(after_in_child=_sa_later.clear)  # the parent's handles


def _sa_count(mutex: RobustMutex, words: memoryview, delta: int) -> int:
    """Add ``delta`` to an array's count of handles, under its mutex; the new count."""
    local = _sa_local
    local.depth = getattr(local, "depth", 0) + 1  # before the mutex: see _sa_drop
    try:
        mutex.acquire(time.monotonic() + 5.0)
        try:
            count = max(0, words[_SA_REFS] + delta)
            words[_SA_REFS] = count
        finally:
            mutex.release()
    finally:
        local.depth -= 1
        while not local.depth and _sa_later:
            try:
                later = _sa_later.popleft()
            except IndexError:  # another thread's took the last
                break
            _sa_drop(*later)
    return count


def _sa_drop(seg: Segment, mutex: RobustMutex, words: memoryview) -> None:
    """One handle is gone: the last one removes the name (the memory lives while views do)."""
    if getattr(_sa_local, "depth", 0):
        # The collector ran this finalizer inside a count of this thread's (another
        # handle's pickling or drop), maybe of this array, its mutex held by this
        # very thread: waiting for it stalled 5 s and lost the drop. The count's
        # end does it (a deque's append takes no lock).
        _sa_later.append((seg, mutex, words))
        return
    try:
        if seg.exists() and _sa_count(mutex, words, -1) == 0:
            seg.unlink()
    except (TimeoutError, OSError, ValueError):  # pragma: no cover - best effort at teardown
        pass
    words.release()
    seg.close()


def _check_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, or a ValueError at the call saying what is wrong
    (int() took 1.5 and "3", and 2**64 failed deep inside as OverflowError)."""
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    out: list[int] = []
    for n in dims:
        try:
            d = operator.index(n)  # ints, numpy's ints; not floats or strings
        except TypeError:
            d = -1
        if isinstance(n, bool) or not 0 <= d <= MAX_COUNT:
            raise ValueError(
                "shape must be an int or a tuple of ints, each from 0 to 2**63-1 "
                f"(as numpy's shapes), got {shape!r}"
            )
        out.append(d)
    return tuple(out)


class SharedArray:
    """A NumPy array in shared memory, sent to other processes without copying.

    ``pt.SharedArray(shape, dtype="float64")`` makes a zero-filled array;
    ``pt.SharedArray.from_array(a)`` copies ``a`` in once. ``.array`` is the
    NumPy view (``numpy.asarray(sa)`` works too). Passing a SharedArray to a
    process task or through a Channel pickles only its name, shape and dtype:
    the receiver maps the same memory, so the cost does not grow with the size
    and writes on either side are seen by the other.

    The memory is released when every handle and view in every process is
    gone. Its name (needed to map it) lives until the creator drops its handle
    or exits (or every handle is dropped), so a receiver must receive it before
    that; a receiver that has mapped it keeps using the memory afterwards.
    """

    def __init__(self, shape: int | tuple[int, ...], dtype: Any = "float64") -> None:
        np = _numpy()
        self.dtype = np.dtype(dtype)
        if self.dtype.hasobject:
            raise TypeError("a SharedArray cannot hold Python objects (dtype=object)")
        self.shape = _check_shape(shape)
        count = 1
        for n in self.shape:
            count *= n
        self.nbytes = count * self.dtype.itemsize
        if self.nbytes > MAX_COUNT:
            raise ValueError(
                f"a SharedArray of shape {self.shape} and dtype {self.dtype} would take "
                f"{self.nbytes} bytes: more than any memory (at most 2**63-1)"
            )
        seg = Segment.create("array", _SA_HEADER + max(self.nbytes, 1))
        try:
            RobustMutex.initialize(seg.address + _SA_MUTEX)
            words = seg.buf[:_SA_HEADER].cast("Q")
            words[_SA_REFS] = 1
            words[0] = _SA_MAGIC
        except BaseException:
            seg.close()
            raise
        self._init(seg, words)

    def _init(self, seg: Segment, words: memoryview) -> None:
        np = _numpy()
        self._seg = seg
        self._words = words
        self._mutex = RobustMutex(seg.address + _SA_MUTEX)
        count = self.nbytes // self.dtype.itemsize if self.dtype.itemsize else 0
        self.array = np.frombuffer(seg.buf, self.dtype, count, _SA_HEADER).reshape(self.shape)
        self._finalizer = weakref.finalize(self, _sa_drop, seg, self._mutex, words)

    @classmethod
    def from_array(cls, a: Any) -> SharedArray:
        """A SharedArray holding a copy of array-like ``a`` (the one copy)."""
        np = _numpy()
        a = np.asarray(a)
        sa = cls(a.shape, a.dtype)
        sa.array[...] = a
        return sa

    @property
    def name(self) -> str:
        return self._seg.name

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        if dtype is None or _numpy().dtype(dtype) == self.dtype:
            return self.array
        return self.array.astype(dtype)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value

    def close(self) -> None:
        """Drop this handle now (views already taken stay valid)."""
        self._finalizer()

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        if not self._finalizer.alive:
            raise ValueError("cannot send a closed SharedArray")
        # The pickled copy holds a reference until it is unpickled, so the name
        # cannot vanish while it is in flight (unless the creator exits).
        _sa_count(self._mutex, self._words, 1)
        return (_attach_shared_array, (self._seg.name, self.shape, self.dtype.str))

    def __repr__(self) -> str:
        return f"<SharedArray shape={self.shape} dtype={self.dtype} name={self._seg.name!r}>"


def _attach_shared_array(name: str, shape: tuple[int, ...], dtype: str) -> SharedArray:
    np = _numpy()
    try:
        seg = Segment.attach(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            "this SharedArray's shared memory is gone: its creating process exited "
            "(or every handle was dropped) before it was received",
            name,
        ) from None
    words = seg.buf[:_SA_HEADER].cast("Q")
    if words[0] != _SA_MAGIC:
        words.release()
        seg.close()
        raise ValueError(f"shared memory {name!r} does not hold a polytask SharedArray")
    sa = object.__new__(SharedArray)
    sa.dtype = np.dtype(dtype)
    sa.shape = tuple(shape)
    count = 1
    for n in sa.shape:
        count *= n
    sa.nbytes = count * sa.dtype.itemsize
    sa._init(seg, words)  # takes over the reference the pickled copy held
    return sa
