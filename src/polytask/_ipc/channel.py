"""Channels: the queues between tasks, in one process or across processes.

``Channel(backend="thread")`` is a deque under a condition variable.
``Channel(backend="process")`` is a ring of frames in a shared-memory segment
(see ``_ring.py`` for the frame protocol), with no feeder thread and no pipe::

    producer process                shared memory segment               consumer process
    ────────────────                ─────────────────────               ────────────────
    put(item)                       ┌──────────────────────────┐
     pickle (protocol 5) ──────────>│ P mutex   C mutex        │
     big buffers out of band        │ data seq  space seq      │<──── get()
     ├─ small: copy under P ───────>│ ring: [frame][frame]...  │───── small: copy out under C
     └─ big: reserve under P,       │                          │      big: claim under C,
        copy outside, commit ──────>│                          │───── copy outside, release
     futex_wake(data seq) ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─> futex_wait(data seq)
     futex_wait(space seq) <─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─  futex_wake(space seq)
    frames bigger than half the ring: payload in a "spill" segment, named after the
    channel and reused by its writer once read (see "spills" below)

Producers share the P mutex and consumers the C mutex, so one producer and one
consumer never wait for each other. Both mutexes are *robust*: a process killed
while holding one leaves the next locker in charge of repairing the counters
(:meth:`Ring.recount`). A process killed while copying a big frame leaves an
unfinished frame with its pid; readers waiting at it check the pid and skip it.
Every wait is a futex wait in slices, with the caller's timeout. After a slice
with no news a waiter checks that the channel's owner (pid and start time, in
the ring's header) still runs: its death closes the channel for everyone, as
its dropping the channel without close() does. Inside a thread task the slices
are 50 ms and each ends with a cancellation check.

Speed (small items): a put is one pickle, one trylock, one struct call that
writes the frame's header (made beforehand: it depends only on the process and
the payload's length) and payload, two stores that publish it, one unlock; a get
the same backwards; no system call while nobody sleeps. The common case
of Ring.push / Ring.pop is inlined in put and get (fewer Python calls), and the
mutexes are called through ctypes without argument conversion. A short tuple's
frame is one cache line. When it finds the ring empty past Ring.WRAP_EARLY, the
writer wraps early (and skips the pad itself), so a channel that keeps up uses
only the ring's first pages: no page faults, and frames that stay in the caches. A
waiting side spins first (its peer is likely running on the other core), for a
budget that adapts: reset to the maximum when the sleep that followed a failed
spin was short, halved when it was long (a busy machine or an idle peer). A
sleeper's registration is used up by the wake-up, so a busy peer pays one
futex_wake per sleep, not one per item.

Lock order: C before P (never take C while holding P).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import pickle
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from .._core.channel import MAX_COUNT, Channel, check_max_items, check_maxsize
from .._core.errors import ChannelClosed, ChannelEmpty, ChannelFull, SerializationError
from .._core.task import CANCEL_SLICE, cancellable_task
from .._core.timeouts import FOREVER as _FOREVER
from .._core.timeouts import check_timeout
from .._core.timeouts import deadline as _deadline
from .._os import proc as _proc
from . import ring as R
from .codec import ATOMS, MAIN_REF, STACK_GLOBAL, dumps_buffers
from .codec import dumps as _codec_dumps
from .codec import loads as _codec_loads
from .ring import (
    ALIGN,
    DATA_OFFSET,
    FRAME_ROUND,
    HEAD,
    HEADER,
    NCLAIM,
    NRES,
    PACKED,
    READ,
    TAIL,
    WAIT_DATA,
    WAIT_SPACE,
)
from .shm import (
    FUTEX_TID_MASK,
    MUTEX_INCONSISTENT,
    OWNER_OFFSET,
    SHM_DIR,
    AttachCache,
    RobustMutex,
    Segment,
    _mutex_consistent,
    _mutex_trylock,
    _mutex_trylock_ref,
    _mutex_unlock,
    _mutex_unlock_ref,
    futex_wait,
    futex_wake,
    locked_mutex_ref,
    mutex_ref,
    pid_alive,
    process_alive,
    process_start,
)
from .shm import (
    lane_module as _lane_module,
)
from .spin import SPIN_MAX, after_sleep

__all__ = ["ProcessChannel"]

T = TypeVar("T")
# Timeouts a channel takes as they are, without check_timeout (see put/get).
_PLAIN = frozenset({int, float})

#: Default size of a process channel's ring (bytes); items bigger than half of it spill.
DEFAULT_CAPACITY = 8 * 1024 * 1024

# Item kinds stored in a frame header.
K_PICKLE, K_OOB, K_BYTES, K_BYTEARRAY, K_MEMORYVIEW, K_SPILL = 0, 1, 2, 3, 4, 5

# The C fast paths of put and get (_lane.c), built with the package when a
# compiler is there (shm imports it and checks its API); without it (or with
# POLYTASK_PURE_PYTHON=1, which the tests use to run the same suite on both) the
# Python ones below do the same.
_lane = _lane_module  # its let_go serves the Python paths too (see _let_go)
if os.environ.get("POLYTASK_PURE_PYTHON"):
    _lane = None  # type: ignore[assignment]
# fmt: off
_LANE_LAYOUT = (
    TAIL, NRES, WAIT_DATA, HEAD, READ, NCLAIM, WAIT_SPACE, R.P_MUTEX_OFFSET, R.C_MUTEX_OFFSET,
    DATA_OFFSET, HEADER, ALIGN, R.SMALL, R.READY, K_PICKLE, R.PAD,
)
# fmt: on
if _lane is not None and _lane.LAYOUT != _LANE_LAYOUT:  # pragma: no cover - a build out of step
    raise ImportError(
        f"polytask._ipc._lane was built for another ring layout ({_lane.LAYOUT} != "
        f"{_LANE_LAYOUT}): reinstall polytask (pip install -e .) to rebuild it"
    )

_SMALL_PAYLOAD = R.SMALL - R.HEADER
_SMALL_FRAME = R.SMALL
# An in-band pickle bigger than this is re-pickled with large bytes objects out of band.
_REPICKLE_OVER = 256 * 1024
_OOB_BYTES_MIN = 64 * 1024
# Seconds between checks that the process we wait for is alive: a writer or
# reader holding a frame, or (idle) the channel's owner, whose death closes it.
_LIVENESS_SLICE = 0.1
_IDLE_SLICE = 0.25

_EBUSY = errno.EBUSY
_WRAPPED = 2  # in put: Ring.push wrapped early (its other results: 1, 0, FULL, CLOSED)
_pid = os.getpid()
# The first header word of this process's small pickled frames (READY, kind 0, pid).
_hdr_pickle = R.READY | (K_PICKLE << 8) | (_pid << 32)
# The low half of that word (state READY, kind K_PICKLE, no buffers): get's fast path.
_READY_PICKLE = R.READY | (K_PICKLE << 8)
# Where a frame's header halves are among the u32 halves from its start (Ring.halves):
# w0's low half, w1's low half (the frame's size), w1's high half (the payload's length).
_W0_LOW, _W1_LOW, _W1_HIGH = (0, 2, 3) if sys.byteorder == "little" else (1, 3, 2)
# The hot paths pickle plainly first, as _ipc.codec does, and check its rule
# (STACK_GLOBAL, MAIN_REF) inline; everything else goes through codec's functions.
_pdumps = pickle.dumps
_ploads = _codec_loads
_futex_wake = futex_wake
_monotonic = time.monotonic
_yield = os.sched_yield


# put's fast path writes a small pickle's frame with its 16-byte header made
# beforehand: both header words depend only on this process (w0: READY, kind 0,
# pid) and the payload's length n (w1: frame size | n). One entry per n below
# PACKED, made at first use: (packer of header and payload, header, frame size).
# Packing the header as bytes, not as two u64 words, halves the packer's cost.
_FramePlan = tuple[Callable[..., None], bytes, int]
_small_frames: list[_FramePlan | None] = [None] * PACKED
_frame_words = struct.Struct("=QQ").pack


def _small_frame(n: int) -> _FramePlan:
    size = (n + FRAME_ROUND) & -ALIGN  # HEADER + n, aligned
    plan = (
        struct.Struct(f"=16s{n}s").pack_into,
        _frame_words(_hdr_pickle, size | (n << 32)),
        size,
    )
    _small_frames[n] = plan
    return plan


def _after_fork() -> None:
    global _pid, _hdr_pickle
    _pid = os.getpid()
    _hdr_pickle = R.READY | (K_PICKLE << 8) | (_pid << 32)
    _small_frames[:] = [None] * PACKED  # their headers name the parent


os.register_at_fork(after_in_child=_after_fork)


# --------------------------------------------------------------------------- encoding


class _OOBBytes:
    """Stands for a large bytes/bytearray inside a container, so it travels out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, _protocol: Any) -> Any:
        return (type(self.data), (pickle.PickleBuffer(self.data),))


def _lift_bytes(obj: Any, depth: int = 0) -> Any:
    t = type(obj)
    if (t is bytes or t is bytearray) and len(obj) >= _OOB_BYTES_MIN:
        return _OOBBytes(obj)
    if depth >= 4:
        return obj
    if t is tuple:
        return tuple(_lift_bytes(x, depth + 1) for x in obj)
    if t is list:
        return [_lift_bytes(x, depth + 1) for x in obj]
    if t is dict:
        return {k: _lift_bytes(v, depth + 1) for k, v in obj.items()}
    return obj


def _dumps(item: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    try:
        return dumps_buffers(item)
    except Exception as exc:
        raise SerializationError(
            f"cannot send an item of type {type(item).__qualname__} through a process channel: "
            f"it cannot be pickled ({type(exc).__name__}: {exc})"
        ) from exc


_NO_VIEWS: list[memoryview] = []
# Types whose items were big (or are raw bytes): they are encoded with their large
# buffers out of band. Others are first pickled plainly, a third cheaper than with
# a buffer_callback; one that turns out big is encoded again, and its type noted.
_BIG_TYPES: set[type] = {bytes, bytearray, memoryview}


def _encode_any(item: Any) -> tuple[int, bytes | memoryview, list[memoryview]]:
    """:func:`_encode`, with the cheap first try of ``put`` for small items."""
    t = type(item)
    if t not in _BIG_TYPES:
        try:
            payload = _pdumps(item, 5)
        except Exception:
            pass
        else:
            if len(payload) > _SMALL_PAYLOAD:
                _BIG_TYPES.add(t)
            elif t in ATOMS or STACK_GLOBAL not in payload or MAIN_REF not in payload:
                return K_PICKLE, payload, _NO_VIEWS
    return _encode(item)


def _encode(item: Any) -> tuple[int, bytes | memoryview, list[memoryview]]:
    """(kind, payload, out-of-band buffers) for one item."""
    t = type(item)
    if t is bytes:
        return K_BYTES, item, []
    if t is bytearray:
        return K_BYTEARRAY, memoryview(item), []
    if t is memoryview:
        m: memoryview = item
        if not m.c_contiguous:
            m = memoryview(m.tobytes())
        return K_MEMORYVIEW, m.cast("B") if m.format != "B" or m.ndim != 1 else m, []
    payload, bufs = _dumps(item)
    if not bufs and len(payload) > _REPICKLE_OVER and t in (tuple, list, dict):
        lifted = _lift_bytes(item)
        payload2, bufs2 = _dumps(lifted)
        if bufs2:
            payload, bufs = payload2, bufs2
    if bufs:
        return K_OOB, payload, _raw_views(bufs)
    return K_PICKLE, payload, []


def _raw_views(bufs: list[pickle.PickleBuffer]) -> list[memoryview]:
    views = []
    for b in bufs:
        try:
            views.append(b.raw())
        except BufferError:  # not contiguous: send a contiguous copy
            views.append(memoryview(bytes(memoryview(b))))
    return views


def _loads(data: Any, buffers: Any = None) -> Any:
    try:
        return _ploads(data, buffers=buffers)
    except Exception as exc:
        raise SerializationError(
            f"an item received from a process channel could not be unpickled "
            f"({type(exc).__name__}: {exc}); is its class importable in this process?"
        ) from exc


def _decode_small(kind: int, data: bytes) -> Any:
    if kind == K_PICKLE:
        return _loads(data)
    if kind == K_BYTES:
        return data
    if kind == K_BYTEARRAY:
        return bytearray(data)
    if kind == K_MEMORYVIEW:
        return memoryview(bytearray(data))
    if kind == K_SPILL:
        return _unspill(data)
    raise SerializationError(f"unknown frame kind {kind} in a process channel")


def _decode_views(kind: int, payload: memoryview, bufs: list[memoryview]) -> Any:
    """Decode a frame whose bytes are still in shared memory: everything is copied out once."""
    if kind == K_PICKLE:
        return _loads(payload)
    if kind == K_OOB:
        return _loads(payload, [bytearray(b) for b in bufs])
    if kind == K_BYTES:
        return bytes(payload)
    if kind == K_BYTEARRAY:
        return bytearray(payload)
    if kind == K_MEMORYVIEW:
        return memoryview(bytearray(payload))
    raise SerializationError(f"unknown frame kind {kind} in a process channel")


_LOST: Any = object()  # an item whose writer died before it was handed over
# The kind of a held spill frame that failed to decode: its data is the
# SerializationError. Not decoded again: its reader removed (one-off) or freed
# (pooled) the spill as it read it, so a second read finds it gone, or reused by
# the next item. (A small frame is kept as it is, and decoded again.)
_K_FAILED = -1


def _failed(kind: int, data: bytes, exc: BaseException) -> tuple[int, Any]:
    """What get_many holds of a frame that failed to decode with ``exc``."""
    if kind != K_SPILL:
        return kind, data
    # Without the tracebacks: their frames reach get_many's, which holds this handle.
    e: BaseException | None = exc
    while e is not None:
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return _K_FAILED, exc


# A mutex locked for good. While a handle holds frames (see ProcessChannel._hold),
# its get() tries this one instead of the ring's C mutex: the trylock fails, and
# get()'s contended path, which looks for it, serves the held frames first. So the
# usual get() pays nothing for them, and a get bound before they were held (by
# iter(), or ``get = ch.get``) serves them too.
_HELD_REF = locked_mutex_ref()


def _decode_frame(kind: int, data: Any) -> Any:
    """A small frame's item (or _LOST); SerializationError if it cannot be decoded."""
    if kind == K_PICKLE:
        try:
            return _ploads(data)
        except Exception:
            pass  # _decode_small raises the SerializationError
    elif kind == _K_FAILED:
        try:
            raise data
        finally:
            del data  # not kept by its own traceback's frame
    return _decode_small(kind, data)


# --------------------------------------------------------------------------- spills
#
# An item too big for the ring travels in a segment of its own, a *spill*, named
# after its channel: ``<channel name>-<writer pid>-<random>``. The ring carries
# a small K_SPILL frame: (spill name, kind, payload length, buffer lengths,
# pooled). A spill starts with a state word (FULL while it holds an unread
# item, FREE once its reader copied it out), then the item's bytes.
#
# A writer keeps up to _POOL_SIZE spills per channel and reuses a FREE one for
# its next big item, and a reader keeps its last few mappings: a stream of big
# items maps (and has the kernel zero-fill) fresh memory only at the start. When
# every pooled spill is busy, a one-off spill is made, which its reader removes.
#
# Who removes a spill's name:
#   - its reader, for a one-off spill, right after mapping it;
#   - its writer, for pooled spills that are FREE, when its handle of the
#     channel is released and when it exits (an unread one is left in place for
#     its reader, unless the channel itself is gone, marked: see below);
#   - the channel's owner, when it releases the channel: every name with the
#     channel's prefix;
#   - the writer's guardian, if the writer dies (however: SIGKILL, or os._exit as
#     a forked multiprocessing child ends), its spills that hold no item
#     (guard_spill); a FULL one holds an item whose put may have returned, so it is
#     left to its reader, marked (byte 1) so that the reader removes it once read;
#     a FULL one whose item was not written in full (byte 2 unset: the writer
#     died copying it, its put never returned) is removed, and so is every one
#     whose channel is gone; one written in full whose frame never reached the
#     ring (the writer died in between) stays until the channel is released;
#   - a reader, for a pooled spill so marked (its writer gone or done with the
#     channel), once it copied the item out. Writer and guardian set byte 1, then
#     read byte 0; the reader sets byte 0, then reads byte 1: one of them sees
#     the other's write and removes the spill (at worst, it stays until the
#     channel is released);
#   - the owner's guardian: every name with the channel's prefix if the owner
#     dies (guard_prefix), so even a spill whose writer exited normally is
#     removed when the owner is killed.

_SPILL_HEADER = 64
_SPILL_FREE, _SPILL_FULL = 0, 1
_SPILL_WRITER_GONE = 1  # a byte set when nobody will reuse the spill (see above)
_SPILL_WRITTEN = 2  # a byte set once the item is written in full (see above)
_POOL_SIZE = 4
_READER_CACHE = 4

_pools: dict[str, list[Segment]] = {}  # channel name -> this process's pooled spills
_rcache: dict[str, Segment] = {}  # spill name -> mapping (oldest first), for readers
_handed_spills: set[str] = set()  # one-off spills written here and handed to a channel
# Reentrant: a garbage collection inside a section under this lock may run a
# channel's finalizer (_release_channel), which takes it again.
_spills_lock = threading.RLock()
_spill_hook = False


def _spill_layout(payload_len: int, buf_lens: list[int]) -> tuple[int, list[int]]:
    offs = []
    end = _SPILL_HEADER + payload_len
    for n in buf_lens:
        end = (end + R.BUF_ALIGN - 1) & -R.BUF_ALIGN
        offs.append(end)
        end += n
    return end, offs


def _spill_state(seg: Segment) -> int:
    return seg.buf[0]


def _channel_of(spill_name: str) -> str:
    return spill_name.rsplit("-", 2)[0]


def _adopt(seg: Segment) -> None:
    """A new spill: its writer's exit lets go of it (see _spills_at_exit)."""
    global _spill_hook
    if not _spill_hook:
        _proc.at_shutdown(_spills_at_exit)
        _spill_hook = True


def _spill(
    channel: str, kind: int, payload: bytes | memoryview, bufs: list[memoryview]
) -> tuple[bytes, Segment, bool]:
    """Write an item into a spill; returns (frame payload, spill, pooled)."""
    lens = [b.nbytes for b in bufs]
    need, offs = _spill_layout(len(payload), lens)
    seg: Segment | None = None
    with _spills_lock:
        pool = _pools.setdefault(channel, [])
        for s in list(pool):
            if s.size >= need and _spill_state(s) == _SPILL_FREE:
                if not s.exists():  # removed by the channel's owner: the channel is gone
                    pool.remove(s)
                    s.owner = False
                    s.close()
                    continue
                seg = s
                break
        pooled = True
        if seg is None:
            pooled = len(pool) < _POOL_SIZE
            # Pooled spills are sized to a power of two so they fit later items
            # too; the file is sparse, so pages never written cost nothing.
            size = 1 << (need - 1).bit_length() if pooled else need
            seg = Segment.create("spill", size, prefix=channel + "-", spill=True)
            _adopt(seg)
            if pooled:
                pool.append(seg)
            else:
                _handed_spills.add(seg.path)
                if len(_handed_spills) > 256:  # forget those read (and removed) since
                    for path in [p for p in _handed_spills if not os.path.exists(p)]:
                        _handed_spills.discard(path)
                        _proc.unguard_spill(path)
        seg.buf[0] = _SPILL_FULL
        seg.buf[_SPILL_WRITTEN] = 0
    try:
        mv = seg.buf
        mv[_SPILL_HEADER : _SPILL_HEADER + len(payload)] = payload
        for off, b in zip(offs, bufs, strict=True):
            mv[off : off + b.nbytes] = b
        # In full: should this process die from here on, its guardian leaves the
        # spill to its reader (before, it removes it: the put never returned).
        mv[_SPILL_WRITTEN] = 1
    except BaseException:
        _spill_not_sent(seg, pooled)
        raise
    ref = _codec_dumps((seg.name, kind, len(payload), lens, pooled))
    return ref, seg, pooled


def _spill_sent(seg: Segment, pooled: bool) -> None:
    """The frame naming ``seg`` is in the ring: a one-off spill now belongs to its reader."""
    if not pooled:
        seg.owner = False
        seg.close()


def _spill_not_sent(seg: Segment, pooled: bool) -> None:
    """The put failed (timeout, closed channel): take the spill back."""
    if pooled:
        seg.buf[0] = _SPILL_FREE
        return
    with _spills_lock:
        _handed_spills.discard(seg.path)
    seg.unlink()
    _proc.unguard_spill(seg.path)
    seg.close()


def _unspill(ref: bytes) -> Any:
    name, kind, plen, lens, pooled = _ploads(ref)
    seg = None
    if pooled:
        # Out of the cache while in use, so no other thread closes it meanwhile.
        with _spills_lock:
            seg = _rcache.pop(name, None)
    if seg is None:
        try:
            seg = Segment.attach(name)
        except FileNotFoundError:
            # Removed with its channel (the owner released it, or died): lost
            # with the channel.
            return _LOST
        if not pooled:
            seg.unlink()
    try:
        _, offs = _spill_layout(plen, lens)
        mv = seg.buf
        payload = mv[_SPILL_HEADER : _SPILL_HEADER + plen]
        views = [mv[o : o + n] for o, n in zip(offs, lens, strict=True)]
        try:
            return _decode_views(kind, payload, views)
        finally:
            payload.release()
            for v in views:
                v.release()
    finally:
        if pooled:
            seg.buf[0] = _SPILL_FREE  # copied out: the writer may reuse it
            # Its writer's guardian sets this byte (before it reads byte 0) when the
            # writer is gone: nobody reuses the spill then, so it goes now.
            orphan = seg.buf[_SPILL_WRITER_GONE] != 0
            if orphan:
                seg.unlink()
            with _spills_lock:
                unused = [seg] if orphan or name in _rcache else []
                if not unused:
                    _rcache[name] = seg  # most recently used last
                while len(_rcache) > _READER_CACHE:
                    unused.append(_rcache.pop(next(iter(_rcache))))
            for old in unused:
                old.close()
        else:
            seg.close()


def _drop_spills(channel: str, ring_gone: bool) -> None:
    """This process is done with ``channel``: let go of its pooled spills and mappings."""
    with _spills_lock:
        pool = _pools.pop(channel, [])
        # Over a copy, taken in one C call: a finalizer the collector runs in the loop
        # (the lock is reentrant for it) may release another channel, which takes
        # its own entries out; the loop over the dict itself then raised.
        cached = [n for n in list(_rcache) if _channel_of(n) == channel]
        mappings = [seg for n in cached if (seg := _rcache.pop(n, None)) is not None]
    for seg in pool:
        # A FREE spill is ours to remove; a FULL one holds an unread item, left
        # for its reader, who removes it once read (or, once the channel is gone,
        # removed too). Byte 1 first, then byte 0: the reader does the reverse.
        seg.buf[_SPILL_WRITER_GONE] = 1
        if ring_gone or _spill_state(seg) == _SPILL_FREE:
            seg.unlink()
        _proc.unguard_spill(seg.path)
        seg.owner = False
        seg.close()
    for seg in mappings:
        seg.close()


def _spills_at_exit() -> None:
    with _spills_lock:
        channels = list(_pools)
        handed = list(_handed_spills)
        _handed_spills.clear()
    for channel in channels:
        _drop_spills(channel, not os.path.exists(os.path.join(SHM_DIR, channel)))
    for path in handed:
        # Unread one-off spills belong to their channel from now on; if the
        # channel is gone, nobody will read them.
        if os.path.exists(path) and not os.path.exists(
            os.path.join(SHM_DIR, _channel_of(os.path.basename(path)))
        ):
            try:
                os.unlink(path)
            except OSError:
                pass
        _proc.unguard_spill(path)


def _forget_spills_after_fork() -> None:
    global _spills_lock, _spill_hook
    # The parent's pools and mappings are the parent's to manage.
    _pools.clear()
    _rcache.clear()
    _handed_spills.clear()
    _spills_lock = threading.RLock()
    _spill_hook = False


os.register_at_fork(after_in_child=_forget_spills_after_fork)


def _remove_channel_spills(channel: str) -> None:
    """The owner releases ``channel``: remove every spill of it, read or not."""
    start = channel + "-"
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for n in names:
        if n.startswith(start):
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except OSError:
                pass


# --------------------------------------------------------------------------- process backend

_attached = AttachCache()


class ProcessChannel(Channel[T]):
    """A channel whose items live in a shared-memory ring (see the module docstring)."""

    def __init__(
        self,
        maxsize: int = 0,
        *,
        backend: str = "process",
        capacity: int | None = None,
        _segment: Segment | None = None,
    ):
        self.backend = "process"
        if _segment is None:
            check_maxsize(maxsize)
            cap = R.Ring.round_capacity(DEFAULT_CAPACITY if capacity is None else int(capacity))
            seg = Segment.create("ch", R.Ring.buffer_size(cap))
            try:
                RobustMutex.initialize(seg.address + R.P_MUTEX_OFFSET)
                RobustMutex.initialize(seg.address + R.C_MUTEX_OFFSET)
                me = os.getpid()
                ring = R.Ring.initialise(
                    seg.buf, cap, maxsize, me, seg.mapping, owner_start=process_start(me)
                )
                # If this process is killed, the guardian removes the channel's
                # spills too, even those whose writer exited normally.
                _proc.guard_prefix(os.path.join(SHM_DIR, seg.name + "-"))
            except BaseException:
                seg.close()
                raise
        else:
            seg = _segment
            ring = R.Ring(seg.buf, seg.mapping)
        self._seg = seg
        self._ring = ring
        self.maxsize = ring.maxsize
        base = seg.address
        self._base = base
        self._p_addr = base + R.P_MUTEX_OFFSET
        self._c_addr = base + R.C_MUTEX_OFFSET
        self._pm = RobustMutex(self._p_addr, _owed)
        self._cm = RobustMutex(self._c_addr, _owed)
        self._p_ref = mutex_ref(self._p_addr)
        self._c_ring_ref = mutex_ref(self._c_addr)
        self._c_ref = self._c_ring_ref  # what get() tries: _HELD_REF while frames are held
        self._data_seq_addr = base + R.DATA_SEQ_OFFSET
        self._space_seq_addr = base + R.SPACE_SEQ_OFFSET
        self._push = ring.push
        self._pop = ring.pop
        # The ring's fixed parts, for the inlined fast paths of put and get.
        self._w, self._b, self._raw = ring.words, ring.view, ring.raw
        self._halves = ring.halves
        self._mask, self._cap, self._wrap = ring.capacity - 1, ring.capacity, ring.wrap_at
        # Where put's fast path must stop and ask Ring.push (_set_limit): the
        # first of the next point where it may wrap early and the end of the
        # room left by the readers, at this handle's last look (the tail and the
        # head only grow, so a stale limit is only too cautious); and the
        # readers' count of items, for maxsize (the same).
        self._limit = 0
        self._claimed_seen = 0
        self._tail_seen = 0  # the same for get: the tail only grows
        # The same two fast paths in C, with their own limit and tail seen
        # (_set_limit tells it the limit; each stale value is only too cautious).
        self._lane = None if _lane is None else _lane.Lane(base, ring.capacity, self.maxsize)
        # Frames get_many took off the ring but could not return: the one that
        # failed to decode and those after it (see _hold). While any are held,
        # _c_ref is _HELD_REF, so get() serves them first at no cost to the usual
        # get(). The handle is one per process, shared by its threads: the lock
        # makes taking held frames (a batch: decoded under it, in order) and
        # switching _c_ref one step. Reentrant: decoding runs the items' code.
        self._held: collections.deque[tuple[int, Any]] = collections.deque()
        self._held_lock = threading.RLock()
        self._spin = SPIN_MAX
        self._finalizer = weakref.finalize(self, _release_channel, seg, ring, weakref.ref(self))
        if _segment is None:
            _attached.put(seg.name, self)

    @property
    def name(self) -> str:
        """The shared-memory segment's name (what a pickled channel carries)."""
        return self._seg.name

    def __reduce__(self) -> Any:
        return (_attach_channel, (self._seg.name,))

    def _release_now(self) -> None:
        """Let go of this process's mapping now, as dropping the last handle does
        (the owner's also closes the channel and removes its name).

        For a caller done with the handle for good whose threads no longer use it
        (a pipeline once its threads ended). Not the finalizer called directly: run
        with the handle alive, that one takes itself for the exit and leaves the
        mapping (see _release_channel).
        """
        info = self._finalizer.detach()
        if info is not None:
            seg, ring = info[2][:2]
            _release_channel(seg, ring)

    # ------------------------------------------------------------------ locks and repair

    def _lock_p(
        self, deadline: float | None, rc: int | None = None, late: type[Exception] = ChannelFull
    ) -> None:
        """Take the producer mutex (``rc``: the result of a trylock the caller already made).

        Raises ``late`` (ChannelFull for a put, ChannelEmpty for a get: what their
        callers catch, as queue.Full and queue.Empty) if ``deadline`` passes first.
        """
        if rc is None:
            rc = _mutex_trylock(self._p_addr)
        while rc != 0:
            try:
                if not self._pm._acquire_slow(rc, deadline):
                    return
            except TimeoutError:
                raise _late(late) from None
            # The previous holder died inside: repair needs both locks, taken C first.
            self._pm.release()
            self._repair()
            rc = _mutex_trylock(self._p_addr)

    def _lock_c(
        self, deadline: float | None, rc: int | None = None, late: type[Exception] = ChannelEmpty
    ) -> None:
        """Take the consumer mutex (as _lock_p; ``late``: ChannelEmpty for a get, ChannelFull for a put)."""
        if rc is None:
            rc = _mutex_trylock(self._c_addr)
        try:
            if rc == 0 or not self._cm._acquire_slow(rc, deadline):
                return
        except TimeoutError:
            raise _late(late) from None
        try:
            self._repair_holding_c()
        except BaseException:
            _mutex_unlock(self._c_addr)  # never kept past the call
            raise

    # The repair takes its mutexes with no deadline: the dead holder's mutex is
    # marked consistent already, so a repair left undone would stay undone (the
    # next holder is not told); and a get() that gave up holding the consumer
    # mutex kept it for good, every reader of the channel then hung. Mutexes are
    # held for a few stores and copies, or handed over by a dead holder.

    def _repair(self) -> None:
        self._lock_c(None)
        try:
            self._repair_holding_c()
        finally:
            _mutex_unlock(self._c_addr)

    def _repair_holding_c(self) -> None:
        if self._pm.acquire(None):
            pass  # the dead producer's half-done work is what recount fixes
        try:
            self._ring.recount(pid_alive)
            self._ring.bump_data()
            self._ring.bump_space()
            _repaired(self._base)
        finally:
            _mutex_unlock(self._p_addr)
        futex_wake(self._data_seq_addr)
        futex_wake(self._space_seq_addr)

    # ------------------------------------------------------------------ put

    def put(self, item: T, timeout: float | None = None) -> None:
        try:
            # The common case (a small picklable item) is inlined, and so is the
            # common case of Ring.push under the lock (kept in step with it: same
            # words, same order of stores): at a million items a second every Python
            # call and attribute lookup shows. Anything unusual goes to Ring.push.
            # A bad timeout fails even when there is room; a plain one skips the call.
            if timeout is not None and (type(timeout) not in _PLAIN or not 0 <= timeout < _FOREVER):
                timeout = check_timeout(timeout)
            t = type(item)
            if t not in _BIG_TYPES:
                try:
                    data = _pdumps(item, 5)
                except Exception:
                    pass  # _put_other says why (or cloudpickles it)
                else:
                    n = len(data)
                    # codec's rule, inlined: a pickle naming __main__ goes by value.
                    # (The memchr first: it settles containers of atoms, which ATOMS does not.)
                    if n <= _SMALL_PAYLOAD and (
                        STACK_GLOBAL not in data or t in ATOMS or MAIN_REF not in data
                    ):
                        lane = self._lane
                        if lane is not None:
                            rc = lane.put(data, _hdr_pickle)
                            if rc:  # not by the fast path (see _lane.c): the whole story
                                self._put_pickle(data, timeout, rc if rc > 0 else None)
                            return
                        if n >= PACKED:
                            self._put_pickle(data, timeout)
                            return
                        pack, head, size = _small_frames[n] or _small_frame(n)
                        m = self._p_ref
                        rc = _mutex_trylock_ref(m)
                        if rc:
                            self._lock_p(_deadline(timeout), rc)
                        try:
                            w = self._w
                            pos = w[TAIL]
                            if (
                                pos + size > self._limit
                                or w[WAIT_DATA]  # readers to wake, or R.CLOSED_FLAG
                                or (self.maxsize and w[NRES] - self._claimed_seen >= self.maxsize)
                            ):
                                # Wrapping, perhaps full, readers asleep, or closed:
                                # the whole story.
                                rc = self._push(data, _hdr_pickle)
                                self._set_limit()
                                if self._ring.wrapped and not rc:
                                    rc = _WRAPPED  # _put_done skips the pad
                            else:
                                # The frame (the same bytes as Ring.push writes), then
                                # the counters in its order.
                                pack(self._b, DATA_OFFSET + (pos & self._mask), head, data)
                                w[NRES] += 1
                                w[TAIL] = pos + size  # publishes the frame
                                rc = 0  # no reader sleeps: WAIT_DATA was 0, under our lock
                        finally:
                            _mutex_unlock_ref(m)
                        if rc:
                            self._put_done(rc, data, timeout)
                        return
                    if n > _SMALL_PAYLOAD:
                        _BIG_TYPES.add(t)  # big: its buffers go out of band
            self._put_other(item, timeout)
        except BaseException:
            _let_go(self._base, _owed)
            if _owed:
                _repair_owed(self._base, self._ring)
            raise

    def _put_pickle(self, data: bytes, timeout: float | None, rc: int | None = None) -> None:
        """put() of a small pickle by Ring.push: PACKED bytes or more, or one the
        C fast path left (``rc``: its trylock's error, if that was why)."""
        self._lock_p(_deadline(timeout), rc)
        try:
            rc = self._push(data, _hdr_pickle)
            self._set_limit()
            if self._ring.wrapped and not rc:
                rc = _WRAPPED  # _put_done skips the pad
        finally:
            _mutex_unlock(self._p_addr)
        if rc:
            self._put_done(rc, data, timeout)

    def _put_done(self, rc: int, data: bytes, timeout: float | None) -> None:
        """The rest of a put whose Ring.push said more than "done" (P lock released)."""
        if rc == 1:
            _futex_wake(self._data_seq_addr)
        elif rc < 0:
            self._put_small_wait(K_PICKLE, data, timeout, rc)
        if self._ring.wrapped:
            self._skip_pads()

    def _skip_pads(self) -> None:
        """After this handle wrapped early: skip the pad for the readers, if none is busy."""
        self._ring.wrapped = False
        rc = _mutex_trylock(self._c_addr)
        if rc == _EBUSY:
            return  # a busy reader skips it itself, soon
        if rc:
            self._lock_c(None, rc)  # a reader died holding it: repair first
        try:
            self._ring.skip_pads()
        finally:
            _mutex_unlock(self._c_addr)

    def _set_limit(self) -> None:
        """A fresh look at the ring for put's fast path (P lock)."""
        w = self._w
        tail = w[TAIL]
        off = tail & self._mask
        if off < self._wrap:
            limit = tail - off + self._wrap  # Ring.push decides whether to wrap early
        else:
            # Past that point with the readers behind: Ring.push looks again for
            # an empty ring every 1/64 of it (and at the end of the ring).
            limit = min(tail + (self._wrap >> 6), tail - off + self._cap)
        self._limit = limit = min(limit, w[HEAD] + self._cap)  # the room the readers left
        self._claimed_seen = claimed = w[NCLAIM]
        if self._lane is not None:
            self._lane.look(limit, claimed)

    def _put_other(self, item: T, timeout: float | None) -> None:
        """put() of an item that is big, raw bytes, or not picklable by pickle."""
        kind, payload, views = _encode(item)
        if views or len(payload) > _SMALL_PAYLOAD:
            self._put_big(kind, payload, views, timeout)
            return
        self._lock_p(_deadline(timeout))
        try:
            rc = self._ring.put_small(payload, kind, _pid)
        finally:
            _mutex_unlock(self._p_addr)
        if rc > 0:
            futex_wake(self._data_seq_addr)
        elif rc < 0:
            self._put_small_wait(kind, payload, timeout, rc)
        if self._ring.wrapped:
            self._skip_pads()

    def _put_small_wait(
        self, kind: int, payload: bytes | memoryview, timeout: float | None, rc: int
    ) -> None:
        ring = self._ring
        deadline = _deadline(timeout)
        size = R.Ring.frame_size(len(payload))
        while True:
            if rc == R.CLOSED:
                raise self._closed_error("put()")
            if rc == R.TOO_BIG:
                # Over half of a small ring: it could wait for room forever (see
                # Ring._make_room), so it travels in a spill like a big item.
                self._put_big(kind, payload, [], _left(deadline))
                return
            self._wait_space(size, deadline)
            self._lock_p(deadline)
            try:
                rc = ring.put_small(payload, kind, _pid)
            finally:
                _mutex_unlock(self._p_addr)
            if rc >= 0:
                if rc:
                    futex_wake(self._data_seq_addr)
                if ring.wrapped:
                    self._skip_pads()
                return

    def _put_big(
        self, kind: int, payload: bytes | memoryview, bufs: list[memoryview], timeout: float | None
    ) -> None:
        ring = self._ring
        deadline = _deadline(timeout)
        lens = [b.nbytes for b in bufs]
        spill_seg: Segment | None = None
        pooled = False
        if not ring.fits(R.Ring.frame_size(len(payload), lens)):
            ref, spill_seg, pooled = _spill(self._seg.name, kind, payload, bufs)
            kind, payload, bufs, lens = K_SPILL, ref, [], []
        pos = -1
        try:
            size = R.Ring.frame_size(len(payload), lens)
            while True:
                self._lock_p(deadline)
                try:
                    pos = ring.reserve(len(payload), lens, kind, _pid)
                finally:
                    _mutex_unlock(self._p_addr)
                if pos >= 0:
                    break
                if pos == R.CLOSED:
                    raise self._closed_error("put()")
                self._wait_space(size, deadline)
            if ring.wrapped:
                self._skip_pads()
            # Copy outside the lock: other producers and consumers go on meanwhile.
            pv = ring.payload_view(pos)
            views = ring.buffer_views(pos)
            try:
                pv[:] = payload
                for v, b in zip(views, bufs, strict=True):
                    v[:] = b
            finally:
                pv.release()
                for v in views:
                    v.release()
            self._lock_p(None)
            try:
                ring.commit(pos)
                wake = ring.bump_data()
            finally:
                _mutex_unlock(self._p_addr)
            if wake:
                futex_wake(self._data_seq_addr)
        except BaseException:
            # First what an interrupt left held (between a _lock_p and its try): the
            # withdrawal takes the producer mutex, and waited for itself for good.
            _let_go(self._base, _owed)
            if pos >= 0:
                self._withdraw(pos)
            if spill_seg is not None:
                _spill_not_sent(spill_seg, pooled)
            raise
        if spill_seg is not None:
            _spill_sent(spill_seg, pooled)

    def _withdraw(self, pos: int) -> None:
        """A big put failed (an exception while copying, a KeyboardInterrupt the program
        catches) between reserving its frame and committing it: readers skip the frame
        from now on, rather than wait behind it while this process lives."""
        self._lock_p(None)
        try:
            withdrawn = self._ring.withdraw(pos, _pid)
            wake = self._ring.bump_data() if withdrawn else 0
        finally:
            _mutex_unlock(self._p_addr)
        if wake:
            futex_wake(self._data_seq_addr)

    def _spin_until(self, ready: Callable[[], bool]) -> bool:
        """Spin up to this handle's budget for ``ready()`` (the peer is likely running)."""
        end = _monotonic() + self._spin
        while _monotonic() < end:
            if ready():
                return True
            _yield()
        return False

    def _sleep(self, addr: int, seq: int, timeout: float) -> None:
        """futex_wait, and adapt the spin budget: had the wake-up come within
        SPIN_MAX, spinning would have caught it (the peer runs, spin again);
        a longer sleep means the peer is idle or descheduled (spin less)."""
        t0 = _monotonic()
        futex_wait(addr, seq, timeout)
        self._spin = after_sleep(self._spin, _monotonic() - t0)

    def _wait_space(self, size: int, deadline: float | None) -> None:
        """Sleep until a reader frees room (or the deadline passes: ChannelFull)."""
        ring = self._ring
        cap = ring.capacity
        maxsize = ring.maxsize

        def room() -> bool:
            if ring.closed:
                return True
            if maxsize and ring.items() >= maxsize:
                return False
            return ring.used() + 2 * size <= cap or ring.used() == 0

        if deadline is not None and time.monotonic() >= deadline:
            raise ChannelFull("the channel stayed full until put()'s timeout")
        task = cancellable_task()
        if task is not None:
            task.raise_if_cancelled()
        if self._spin and self._spin_until(room):
            return
        self._lock_c(deadline, late=ChannelFull)
        try:
            seq = ring.writer_sleeps()
            stuck = ring.reader_at_head()
        finally:
            _mutex_unlock(self._c_addr)
        try:
            if room():
                return
            slice_ = _LIVENESS_SLICE if stuck is not None else _IDLE_SLICE
            if task is not None:
                slice_ = CANCEL_SLICE
            left = slice_ if deadline is None else min(slice_, deadline - time.monotonic())
            if left > 0:
                self._sleep(self._space_seq_addr, seq, left)
        finally:
            if ring.space_seq == seq:  # else a reader used our registration up
                self._lock_c(None)
                try:
                    ring.writer_woke(seq)
                finally:
                    _mutex_unlock(self._c_addr)
        if ring.space_seq == seq:  # a slice with no news: is anyone we wait for dead?
            if stuck is not None and not pid_alive(stuck[1]):
                self._free_dead_reader(*stuck)
            else:
                self._check_owner(deadline)
        if task is not None:
            task.raise_if_cancelled()

    def _check_owner(self, deadline: float | None) -> None:
        """Close the channel for everyone if the process that created it is gone.

        Nothing else would: a process attached by name and waiting in get()
        would wait for good. Called by waiters after a slice with no news, so a
        dead owner is noticed within _IDLE_SLICE. The owner's pid and start time
        are in the ring's header: a pid reused since does not pass for it.
        """
        ring = self._ring
        owner = ring.owner
        if owner == _pid or ring.closed or process_alive(owner, ring.owner_start):
            return
        _close_ring(self._seg, ring, R.OWNER_DIED, deadline)

    def _closed_error(self, call: str) -> ChannelClosed:
        """The ChannelClosed for ``call`` (``"put()"``...), saying who closed the channel."""
        ring = self._ring
        text = (
            "get() on a closed and drained channel"
            if call == "get()"
            else f"{call} on a closed channel"
        )
        reason = ring.close_reason
        if reason == R.OWNER_DIED:
            text += f": the process that created it (pid {ring.owner}) died"
        elif reason == R.OWNER_RELEASED:
            text += (
                f": the process that created it (pid {ring.owner}) dropped its last handle "
                "without close()"
            )
        return ChannelClosed(text)

    def _free_dead_reader(self, pos: int, pid: int) -> None:
        self._lock_c(None)
        try:
            if self._ring.reader_at_head() == (pos, pid):
                self._ring.release(pos)
                self._ring.bump_space()
        finally:
            _mutex_unlock(self._c_addr)
        futex_wake(self._space_seq_addr)

    # ------------------------------------------------------------------ get

    def get(self, timeout: float | None = None) -> T:
        try:
            # One item at a time, never more: a reader that took items ahead of its
            # caller could hold back another reader's items (or the sentinel that
            # would end another reader's loop). get_many() is the batched form.
            # The common case of Ring.pop is inlined, as in put (kept in step with
            # it); anything else (a big frame, a pad, a writer to wake) goes to it.
            # A bad timeout fails even when an item is there; a plain one skips the call.
            if timeout is not None and (type(timeout) not in _PLAIN or not 0 <= timeout < _FOREVER):
                timeout = check_timeout(timeout)
            lane = self._lane
            if lane is not None:
                r = lane.take()
                if type(r) is bytes:
                    try:
                        return _ploads(r)  # type: ignore[no-any-return]
                    except Exception:
                        return _loads(r)  # type: ignore[no-any-return]  # raises SerializationError
                if r == -2:
                    return self._get_held(timeout)
                if r != -1:  # its trylock's error: the lock, as below
                    self._lock_c(_deadline(timeout), cast(int, r))
                    return self._get_locked(timeout)
            m = self._c_ref
            rc = _mutex_trylock_ref(m)
            if rc:
                if m is _HELD_REF:
                    return self._get_held(timeout)
                self._lock_c(_deadline(timeout), rc)
            return self._get_locked(timeout)
        except BaseException:
            _let_go(self._base, _owed)
            if _owed:
                _repair_owed(self._base, self._ring)
            raise

    def _get_locked(self, timeout: float | None) -> T:
        """get() holding the C lock: the inlined fast path of Ring.pop, else Ring.pop."""
        m = self._c_ring_ref
        try:
            w = self._w
            read = w[READ]
            if read >= self._tail_seen:
                # Frames before a tail seen once stay published: while the reader
                # is behind, it leaves the writers' cache line alone.
                self._tail_seen = w[TAIL]
            if read != self._tail_seen:
                start = DATA_OFFSET + (read & self._mask)
                # The frame's header read as u32 halves, which come as small ints
                # (w0's low half: state, kind, buffers; w1's: size, then length).
                i = start >> 2
                h = self._halves
                size = h[i + _W1_LOW]
                # READY, kind 0, no buffers; small; no writer asleep; nothing claimed before it
                if (
                    h[i + _W0_LOW] == _READY_PICKLE
                    and size <= _SMALL_FRAME
                    and not w[WAIT_SPACE]
                    and w[HEAD] == read
                ):
                    start += HEADER
                    r: bytes | tuple[int, bytes, int] | int = self._raw[
                        start : start + h[i + _W1_HIGH]
                    ]
                    w[READ] = w[HEAD] = read + size  # READ first, then HEAD
                    w[NCLAIM] += 1
                else:
                    r = self._pop(_pid)
            else:
                r = self._pop(_pid)
        finally:
            _mutex_unlock_ref(m)
        if type(r) is bytes:
            try:
                return _ploads(r)  # type: ignore[no-any-return]
            except Exception:
                return _loads(r)  # type: ignore[no-any-return]  # raises SerializationError
        return self._get_other(cast("tuple[int, bytes, int] | int", r), timeout)

    def _get_held(self, timeout: float | None = None) -> T:
        """get() while frames are held (see _hold): they came off the ring first."""
        out: list[T] = []
        deadline = _deadline(timeout)  # validated: inf (no limit) is None here
        if not self._take_held(out, 1, _left(deadline)):
            raise ChannelEmpty(
                "get()'s timeout passed while another thread of this process was "
                "decoding the items get_many() held back"
            )
        if out:
            return out[0]
        # None left (lost, or another thread took them): the ring.
        return self.get(_left(deadline))

    def _take_held(self, out: list[T], max_items: int, timeout: float | None = None) -> bool:
        """Append held items to ``out``, in order, until it has ``max_items``.

        A frame that fails to decode ends the batch before it: with nothing
        before it in ``out`` it is taken and raises (as get() takes a frame that
        fails), else it stays first and raises at the next call. Once none are
        left, the usual get() again. One batch at a time (_held_lock): another
        thread's get waits for it, so a batch is a run of consecutive items;
        False if that wait outlasts ``timeout`` (a big item can take long to decode).
        """
        held = self._held
        lock = self._held_lock
        if not lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            while held and len(out) < max_items:
                if out and held[0][0] == _K_FAILED:
                    break  # stays first: it raises at the next call
                kind, data = held.popleft()
                try:
                    item = _decode_frame(kind, data)
                except SerializationError as exc:
                    if not out:
                        raise  # taken, as get() takes a frame that fails
                    held.appendleft(_failed(kind, data, exc))  # stays first, as above
                    break
                finally:
                    del data  # a failed one's exception: not kept by its traceback's frame
                if item is not _LOST:
                    out.append(cast(T, item))
        finally:
            if not held:
                self._c_ref = self._c_ring_ref  # the usual get() again
                if self._lane is not None:
                    self._lane.hold(False)
            lock.release()
        return True

    def _hold(self, frames: Iterable[tuple[int, Any]]) -> None:
        """Keep frames get_many took but cannot return now, for the next get.

        An item that cannot be decoded ends a batch there: the items before it are
        returned, it raises at the next get (or get_many), and the ones after it
        follow; none is lost and their order stays.
        """
        with self._held_lock:
            _holders.add(self)
            self._held.extend(frames)
            if self._held:
                self._c_ref = _HELD_REF  # get() serves them first
                if self._lane is not None:
                    self._lane.hold(True)
        # A get of another thread asleep on the ring takes them (see _get_slow). The
        # wake-up reaches sleepers in other processes too: they look and sleep again.
        futex_wake(self._data_seq_addr)

    def _get_other(self, r: tuple[int, bytes, int] | int, timeout: float | None) -> T:
        """get() after :meth:`Ring.pop` gave something other than a small pickle."""
        if type(r) is tuple:
            if r[2]:
                futex_wake(self._space_seq_addr)
            item = _decode_small(r[0], r[1])
            if item is not _LOST:
                return cast(T, item)
        return self._get_slow(r, timeout)

    def _get_slow(self, r: tuple[int, bytes, int] | int, timeout: float | None) -> T:
        ring = self._ring
        deadline = _deadline(timeout)
        while True:
            if type(r) is tuple:
                item = _LOST  # the fast path decoded it already: a lost spill
            else:
                pos = cast(int, r)
                if pos < 0:
                    if self._c_ref is _HELD_REF:  # held by another thread meanwhile: first
                        return self._get_held(_left(deadline))
                    if pos == R.EMPTY and ring.closed:
                        # close() holds the P lock, so every frame reserved before it
                        # is behind the tail already: nothing more can come.
                        self._seg.unlink()
                        raise self._closed_error("get()")
                    self._wait_data(pos == R.BLOCKED, deadline)
                    item = _LOST
                else:
                    item = self._read_big(pos)
            if item is not _LOST:
                return cast(T, item)
            self._lock_c(deadline)
            try:
                r = ring.take(_pid)
            finally:
                _mutex_unlock(self._c_addr)
            if type(r) is tuple:
                if r[2]:
                    futex_wake(self._space_seq_addr)
                item = _decode_small(r[0], r[1])
                if item is not _LOST:
                    return cast(T, item)

    def _read_big(self, pos: int) -> Any:
        ring = self._ring
        kind = ring.header(pos)[1]
        pv = ring.payload_view(pos)
        views = ring.buffer_views(pos)
        try:
            if kind == K_SPILL:
                ref = bytes(pv)
            else:
                return _decode_views(kind, pv, views)
        finally:
            pv.release()
            for v in views:
                v.release()
            self._lock_c(None)
            try:
                ring.release(pos)
                wake = ring.bump_space()
            finally:
                _mutex_unlock(self._c_addr)
            if wake:
                futex_wake(self._space_seq_addr)
        return _unspill(ref)

    def _wait_data(self, blocked: bool, deadline: float | None) -> None:
        """Sleep until a writer publishes a frame (or the deadline passes: ChannelEmpty)."""
        ring = self._ring
        if deadline is not None and time.monotonic() >= deadline:
            raise ChannelEmpty("the channel stayed empty until get()'s timeout")
        task = cancellable_task()
        if task is not None:
            task.raise_if_cancelled()
        if self._spin and not blocked and self._spin_until(ring.not_empty_for_reader):
            return
        self._lock_p(deadline, late=ChannelEmpty)
        try:
            seq = ring.reader_sleeps()
        finally:
            _mutex_unlock(self._p_addr)
        writer = None
        try:
            if blocked:
                self._lock_c(None)
                try:
                    writer = ring.writer_at_read()
                finally:
                    _mutex_unlock(self._c_addr)
            if not blocked and (not ring.empty_for_reader() or ring.closed):
                return
            if blocked and writer is None:
                return  # it was finished meanwhile
            slice_ = _LIVENESS_SLICE if writer is not None else _IDLE_SLICE
            if task is not None:
                slice_ = CANCEL_SLICE
            left = slice_ if deadline is None else min(slice_, deadline - time.monotonic())
            if left > 0:
                self._sleep(self._data_seq_addr, seq, left)
        finally:
            if ring.data_seq == seq:  # else a writer used our registration up
                self._lock_p(None)
                try:
                    ring.reader_woke(seq)
                finally:
                    _mutex_unlock(self._p_addr)
        if ring.data_seq == seq:  # a slice with no news: is anyone we wait for dead?
            if writer is not None and not pid_alive(writer[1]):
                self._lock_c(None)
                try:
                    ring.abandon_writer(*writer)
                    wake = ring.bump_space()
                finally:
                    _mutex_unlock(self._c_addr)
                if wake:
                    futex_wake(self._space_seq_addr)
            else:
                self._check_owner(deadline)
        if task is not None:
            task.raise_if_cancelled()

    # ------------------------------------------------------------------ many at once

    def put_many(self, items: Iterable[T], timeout: float | None = None) -> None:
        try:
            deadline = _deadline(timeout)
            pending: list[tuple[int, bytes | memoryview]] = []
            append = pending.append
            for item in items:
                if type(item) not in _BIG_TYPES:  # the common case of _encode_any, inlined
                    try:
                        data = _pdumps(item, 5)
                    except Exception:
                        pass
                    else:
                        # codec's rule: no STACK_GLOBAL opcode (a memchr) settles most.
                        if len(data) <= _SMALL_PAYLOAD and (
                            STACK_GLOBAL not in data or MAIN_REF not in data
                        ):
                            append((K_PICKLE, data))
                            continue
                kind, payload, bufs = _encode_any(item)
                if bufs or len(payload) > _SMALL_PAYLOAD:
                    self._flush_small(pending, deadline)
                    self._put_big(kind, payload, bufs, _left(deadline))
                else:
                    append((kind, payload))
            self._flush_small(pending, deadline)
        except BaseException:
            _let_go(self._base, _owed)
            if _owed:
                _repair_owed(self._base, self._ring)
            raise

    def _flush_small(
        self, pending: list[tuple[int, bytes | memoryview]], deadline: float | None
    ) -> None:
        """Put the small frames ``pending`` (emptied), as many per P lock as fit.

        A pickle goes by put()'s fast path, inlined (same words, same order of
        stores): at a million items a second the call of Ring.push per item was
        a third of put_many's own time. The rest goes through the ring.
        """
        ring = self._ring
        lane = self._lane
        i, count = 0, len(pending)
        while i < count:
            self._lock_p(deadline)
            wake = rc = 0
            try:
                w, b, mask, hdr = self._w, self._b, self._mask, _hdr_pickle
                limit, maxsize = self._limit, self.maxsize
                # Under the P lock only this writer moves TAIL and NRES, and readers
                # register in WAIT_DATA (the channel closes under it too): all three
                # are read once here and again after a Ring.push, not per frame.
                pos, nres, slow = w[TAIL], w[NRES], w[WAIT_DATA]
                while i < count:
                    if lane is not None and not slow:
                        # The C fast path writes what it can (_lane.c), this loop the rest.
                        j = lane.write(pending, i, hdr)
                        if j != i:
                            i = j
                            pos, nres = w[TAIL], w[NRES]
                            if i == count:
                                break
                    kind, payload = pending[i]
                    n = len(payload)
                    size = (n + FRAME_ROUND) & -ALIGN  # HEADER + n, aligned
                    if (
                        slow  # readers to wake, or R.CLOSED_FLAG
                        or kind != K_PICKLE
                        or pos + size > limit
                        or n >= PACKED
                        or (maxsize and nres - self._claimed_seen >= maxsize)
                    ):
                        if kind == K_PICKLE:
                            rc = self._push(payload, hdr)  # type: ignore[arg-type]  # bytes
                        else:
                            rc = ring.put_small(payload, kind, _pid)
                        self._set_limit()
                        limit = self._limit
                        pos, nres, slow = w[TAIL], w[NRES], w[WAIT_DATA]
                        if rc < 0:
                            break
                        wake |= rc
                    else:
                        pack, head, _ = _small_frames[n] or _small_frame(n)
                        pack(b, DATA_OFFSET + (pos & mask), head, payload)
                        nres += 1
                        w[NRES] = nres
                        pos += size
                        w[TAIL] = pos  # publishes the frame
                    i += 1
            finally:
                _mutex_unlock(self._p_addr)
            if wake:
                futex_wake(self._data_seq_addr)
            wrapped = ring.wrapped
            if wrapped:
                self._skip_pads()
            if i < count:
                if rc == R.CLOSED:
                    raise self._closed_error("put_many()")
                if rc == R.TOO_BIG:  # see _put_small_wait
                    kind, payload = pending[i]
                    i += 1
                    self._put_big(kind, payload, [], _left(deadline))
                    continue
                if wrapped and rc == R.FULL:
                    # A frame of this batch wrapped early, and its pad took the room
                    # until skipped (just now): look again before waiting. (A wait
                    # with timeout 0 said ChannelFull on an empty ring.) Each time
                    # follows a frame written: no endless loop.
                    continue
                self._wait_space(R.Ring.frame_size(len(pending[i][1])), deadline)
        pending.clear()

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        try:
            if type(max_items) is not int or not 1 <= max_items <= MAX_COUNT:
                check_max_items(max_items)
            out = [self.get(timeout)]
            if max_items == 1:
                return out
            if self._held:  # frames taken before come first: no new ones this time
                # An item in hand already: never wait for another thread's batch.
                self._take_held(out, max_items, 0)
                return out
            ring = self._ring
            lane = self._lane
            self._lock_c(None)
            try:
                if lane is None:
                    datas, kinds = ring.take_many(max_items - 1, K_PICKLE)
                else:
                    # The C fast path takes the small pickles in a row (_lane.c); if it
                    # stopped before the tail and the batch is not full, Ring.take_many.
                    datas, kinds = lane.take_many(max_items - 1), None
                    w = self._w
                    left = max_items - 1 - len(datas)
                    if left and w[READ] != w[TAIL]:
                        more, more_kinds = ring.take_many(left, K_PICKLE)
                        if more_kinds is not None:
                            kinds = [K_PICKLE] * len(datas) + more_kinds
                        datas += more
                wake = ring.wake_writers() if datas else 0
            finally:
                _mutex_unlock(self._c_addr)
            if wake:
                futex_wake(self._space_seq_addr)
            done = 0
            if kinds is None:  # all pickles, the usual batch: unpickled in one C loop
                first = len(out)
                try:
                    out.extend(map(_ploads, datas))
                    return out
                except Exception:
                    done = len(out) - first  # the one that failed is held (see _hold)
            append = out.append
            for j in range(done, len(datas)):
                k = K_PICKLE if kinds is None else kinds[j]
                try:
                    item = _decode_frame(k, datas[j])
                except SerializationError as exc:
                    rest = datas[j + 1 :]
                    ks = [K_PICKLE] * len(rest) if kinds is None else kinds[j + 1 :]
                    self._hold([_failed(k, datas[j], exc), *zip(ks, rest, strict=True)])
                    return out
                if item is not _LOST:
                    append(cast(T, item))
            return out
        except BaseException:
            _let_go(self._base, _owed)
            if _owed:
                _repair_owed(self._base, self._ring)
            raise

    # ------------------------------------------------------------------ the rest

    def close(self) -> None:
        _close_ring(self._seg, self._ring, R.BY_CLOSE, None)

    @property
    def closed(self) -> bool:
        return self._seg.closed or self._ring.closed

    def __len__(self) -> int:
        return len(self._held) + (0 if self._seg.closed else self._ring.items())


def _let_go_py(base: int, owed: set[tuple[int, int]]) -> int:
    """_lane.let_go in Python, for an install without the C extension: the same,
    but an interrupt can land inside it too."""
    me = threading.get_native_id()
    freed = 0
    for off in (R.P_MUTEX_OFFSET, R.C_MUTEX_OFFSET):
        owner = ctypes.c_int.from_address(base + off + OWNER_OFFSET).value
        if owner == me:
            _mutex_unlock(base + off)
            freed += 1
        elif (
            owner == MUTEX_INCONSISTENT
            and ctypes.c_int.from_address(base + off).value & FUTEX_TID_MASK == me
        ):
            # Taken from a dead holder, not yet marked consistent (see _lane.c): the
            # repair is owed; unlocked as it is, the mutex would be unusable for good.
            owed.add((base + off, threading.get_ident()))
            _mutex_consistent(base + off)
            _mutex_unlock(base + off)
            freed += 1
    return freed


#: Repairs owed: (mutex address, thread ident) of a ring mutex a thread took from a
#: dead holder (EOWNERDEAD), noted before the mutex is marked consistent (by
#: RobustMutex, or by _let_go if an interrupt came first), dropped once the
#: counters are recounted. An exception landing in between (a KeyboardInterrupt
#: while the repair waits for the other mutex, or during the recount) left the
#: repair undone for good: the mutex was consistent again, so no later holder was
#: told. The exception's way out does it now (_repair_owed).
_owed: set[tuple[int, int]] = set()

#: After an exception left put, get, put_many, get_many or close: unlock a mutex of
#: the channel that this thread still holds. An exception a signal handler raises
#: (KeyboardInterrupt) can land between taking a mutex and the ``try`` that
#: releases it; the thread then kept it while its process lived, and every other
#: process's put or get waited (attack14c). Every section releases in its
#: ``finally``, so a mutex this thread still owns then is such a one, its section
#: not begun. In C (one call, so an interrupt cannot land half-way) when built;
#: called first thing in the handler (a Python function there would let an
#: interrupt land at its start). Then ``if _owed: _repair_owed(...)``.
_let_go: Callable[[int, set[tuple[int, int]]], int] = (
    _let_go_py if _lane_module is None else _lane_module.let_go
)


def _repaired(base: int) -> None:
    """The counters were recounted: this thread owes no repair of this ring now."""
    if _owed:
        me = threading.get_ident()
        _owed.discard((base + R.P_MUTEX_OFFSET, me))
        _owed.discard((base + R.C_MUTEX_OFFSET, me))


def _repair_owed(base: int, ring: R.Ring) -> None:
    """Do the repair of this ring an exception kept this thread from doing (_owed):
    recount under both mutexes (C, then P; no deadline, as ProcessChannel._repair)."""
    me = threading.get_ident()
    if (base + R.P_MUTEX_OFFSET, me) not in _owed and (base + R.C_MUTEX_OFFSET, me) not in _owed:
        return
    cm = RobustMutex(base + R.C_MUTEX_OFFSET, _owed)
    pm = RobustMutex(base + R.P_MUTEX_OFFSET, _owed)
    try:
        cm.acquire(None)
        try:
            pm.acquire(None)
            try:
                ring.recount(pid_alive)
                ring.bump_data()
                ring.bump_space()
                _repaired(base)
            finally:
                pm.release()
        finally:
            cm.release()
    except BaseException:
        _let_go(base, _owed)  # another interrupt: nothing kept, the repair stays noted
        raise
    futex_wake(base + R.DATA_SEQ_OFFSET)
    futex_wake(base + R.SPACE_SEQ_OFFSET)


# Handles that held frames in this process (see ProcessChannel._hold).
_holders: weakref.WeakSet[ProcessChannel[Any]] = weakref.WeakSet()


def _drop_held_after_fork() -> None:
    # Held frames were taken off the ring by the parent: its handle hands them
    # out, so the child's copy starts without them (or both would deliver them).
    # A fresh lock too: a thread of the parent's may have held it at the fork.
    for ch in list(_holders):
        ch._held = collections.deque()
        ch._held_lock = threading.RLock()
        ch._c_ref = ch._c_ring_ref
        if ch._lane is not None:
            ch._lane.hold(False)
    _holders.clear()


os.register_at_fork(after_in_child=_drop_held_after_fork)


def _late(error: type[Exception]) -> Exception:
    """The error of a put (ChannelFull) or get (ChannelEmpty) whose timeout passed
    while another process (or thread) held a mutex of the channel."""
    call = "put()" if error is ChannelFull else "get()"
    return error(f"{call}'s timeout passed while another process or thread held the channel's lock")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _close_ring(seg: Segment, ring: R.Ring, reason: int, deadline: float | None) -> bool:
    """Close ``ring`` for ``reason`` under both locks (C, then P) and wake every waiter.

    Repairs the counters first if a process died holding a lock. Returns False
    if the locks could not be had by ``deadline``. Holding the P lock means
    every frame reserved before is behind the tail: readers that find the ring
    closed and empty know nothing more can come.
    """
    if seg.closed:
        return True
    base = seg.address
    cm = RobustMutex(base + R.C_MUTEX_OFFSET, _owed)
    pm = RobustMutex(base + R.P_MUTEX_OFFSET, _owed)
    try:
        try:
            repair = cm.acquire(deadline)
        except TimeoutError:
            return False
        try:
            try:
                repair = pm.acquire(deadline) or repair
            except TimeoutError:
                return False
            try:
                if repair:  # a process died inside: make the counters right first
                    ring.recount(pid_alive)
                    _repaired(base)
                ring.close(reason)
                ring.bump_data()
                ring.bump_space()
                empty = ring.items() == 0
            finally:
                pm.release()
        finally:
            cm.release()
    except BaseException:
        # An interrupt between taking a mutex and the try that releases it kept the
        # mutex while this process lived (as in put and get; see _let_go).
        _let_go(base, _owed)
        if _owed:
            _repair_owed(base, ring)
        raise
    futex_wake(seg.address + R.DATA_SEQ_OFFSET)
    futex_wake(seg.address + R.SPACE_SEQ_OFFSET)
    if empty:
        # Nothing left to read: a process that attaches later finds no name
        # and sees a closed, empty channel, which it is.
        seg.unlink()
    return True


def _release_channel(
    seg: Segment, ring: R.Ring, handle: weakref.ref[ProcessChannel[Any]] | None = None
) -> None:
    # The last handle in this process is gone. The owner closes the channel
    # (blocked readers and writers elsewhere get ChannelClosed), then removes
    # the name and every spill of it: the channel is over for everyone. Others
    # let go of their own spills.

    if seg.closed:
        return
    owner = seg.owned
    if owner and not ring.closed:
        # A bounded wait: this runs in a finalizer, maybe at exit; if another
        # process holds a lock that long, its waiters find the owner gone later.
        try:
            _close_ring(seg, ring, R.OWNER_RELEASED, time.monotonic() + 1.0)
        except Exception:  # best effort (a corrupt ring): the segment goes all the same
            pass
    _drop_spills(seg.name, owner or not seg.exists())
    at_exit = handle is not None and handle() is not None
    if owner:
        _remove_channel_spills(seg.name)
        if not at_exit:
            _proc.unguard_prefix(os.path.join(SHM_DIR, seg.name + "-"))
    if at_exit:
        # Run at exit with the handle still alive: a daemon thread may be in put or
        # get on this mapping right now, and unmapping it under that thread crashed
        # the interpreter (SIGSEGV at exit). The name goes; the exit unmaps it. The
        # guardian keeps watching the spills' prefix: such a thread may still make
        # one before the interpreter stops it, and the guardian removes it after.
        if owner:
            seg.unlink()
        return
    ring.detach()
    seg.close()


class _GoneChannel(Channel[Any]):
    """What a process channel unpickles to once its segment was removed: closed and empty."""

    def __init__(self, name: str) -> None:
        self.backend = "process"
        self.maxsize = 0
        self._name = name

    def put(self, item: Any, timeout: float | None = None) -> None:
        raise ChannelClosed(f"put() on a closed channel (its shared memory {self._name} is gone)")

    def get(self, timeout: float | None = None) -> Any:
        raise ChannelClosed("get() on a closed and drained channel")

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return True

    def __len__(self) -> int:
        return 0

    def __reduce__(self) -> Any:
        return (_attach_channel, (self._name,))


def _attach_channel(name: str) -> Channel[Any]:
    ch = _attached.get(name)
    if ch is not None:
        return cast("Channel[Any]", ch)
    try:
        seg = Segment.attach(name)
    except FileNotFoundError:
        return _GoneChannel(name)
    try:
        new: ProcessChannel[Any] = object.__new__(ProcessChannel)
        new.__init__(_segment=seg)  # type: ignore[misc]
    except BaseException:
        seg.close()
        raise
    kept = _attached.put(name, new)
    return cast("Channel[Any]", kept)
