"""The channel ring's protocol: frames in a byte ring, with no I/O.

A :class:`Ring` works on any writable buffer (a ``bytearray`` in the tests, a
shared-memory mapping in a process channel). All of its state lives in that
buffer, so every process mapping it sees the same ring. It does no locking,
sleeping or system calls: the channel holds the right lock around each call
(named in each method's docstring), and does the waiting.

Buffer layout (offsets in bytes)::

    0     control words (u64): magic, capacity, maxsize, owner pid, closed (why),
          owner start time
    64    producer words:  tail, reserved-count, sleeping readers
    128   consumer words:  head, read, claimed-count, sleeping writers
    256   producer mutex (P)     320  consumer mutex (C)
    384   data sequence (u32 futex word)   448  space sequence (u32 futex word)
    4096  ring data: ``capacity`` bytes (a power of two)

Positions (head <= read <= tail) grow forever; ``pos & (capacity - 1)`` is the
place in the ring. A frame is contiguous; a PAD frame fills the end of the
ring when the next frame would not fit::

    head            read                  tail
     v               v                     v
     [DONE][READING][READY][WRITING][READY] ......free...... (wraps to head)
     └─ claimed ───┘└─ not yet claimed ──┘

Frame: a 16-byte header of two u64 words, then (big frames) one u64 length
per out-of-band buffer, the payload, and each buffer at a 64-byte boundary::

    w0: state (8 bits) | kind (8) | number of buffers (16) | pid (32)
    w1: frame size in bytes (32 bits) | payload length (32)

(Frames are multiples of 32 bytes: a short tuple's frame is one cache line.)

Why a half-written frame is never visible: a small frame is written whole,
then ``tail`` moves past it (one store); a big frame is *reserved* (state
WRITING, with the writer's pid) and copied outside the lock, and readers wait
at it until it is READY. If the writer dies, its pid shows it, and a reader
skips the frame (:meth:`abandon_writer`). Counters are recomputed from the
frames after a process died holding a lock (:meth:`recount`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["Ring"]

MAGIC = 0x3130474E49525450  # b"PTRING01" little-endian

# control words (u64 indexes into Ring.words)
_MAGIC, _CAP, _MAXSIZE, _OWNER, _CLOSED, _OWNER_START = 0, 1, 2, 3, 4, 5
#: Producer words (P lock): the tail position, frames reserved or written since
#: the start, sleeping readers (| CLOSED_FLAG). Public, with the consumer words,
#: for the channel's inlined fast paths (_ipc/channel.py), which must read and
#: write exactly what Ring.push and Ring.pop do.
TAIL, NRES, WAIT_DATA = 8, 9, 10
#: Consumer words (C lock): the head (the oldest frame not yet released), the
#: read position (the next frame to claim), frames claimed since the start,
#: sleeping writers.
HEAD, READ, NCLAIM, WAIT_SPACE = 16, 17, 18, 19

P_MUTEX_OFFSET = 256
C_MUTEX_OFFSET = 320
DATA_SEQ_OFFSET = 384
SPACE_SEQ_OFFSET = 448
_DATA_SEQ_WORD = DATA_SEQ_OFFSET // 4
_SPACE_SEQ_WORD = SPACE_SEQ_OFFSET // 4
DATA_OFFSET = 4096

#: A frame's header: two u64 words (w0: state | kind | buffers | pid; w1: size | payload length).
HEADER = 16
#: Frames start at multiples of this; a small frame of payload n takes
#: ``(n + FRAME_ROUND) & -ALIGN`` bytes.
ALIGN = 32
FRAME_ROUND = HEADER + ALIGN - 1
BUF_ALIGN = 64
#: Frames up to this size are copied in and out while holding the lock.
SMALL = 64 * 1024
#: Offset past which a producer wraps early when the ring is empty (at most cap/8).
WRAP_EARLY = 256 * 1024

#: Set in the sleeping readers' count (WAIT_DATA) by close: a writer tests that
#: word alone on its fast path (closed, or readers to wake: both go to push).
CLOSED_FLAG = 1 << 62

# why the ring was closed (the _CLOSED word; 0: open)
BY_CLOSE = 1  # close() was called
OWNER_DIED = 2  # a waiter found the creating process dead
OWNER_RELEASED = 3  # the creating process dropped its last handle without close()

# frame states
WRITING, READY, READING, DONE, PAD = 1, 2, 3, 4, 5

# results of put_small / push / reserve
FULL = -1
CLOSED = -2
#: From put_small / push: the frame is bigger than half the ring, so an empty
#: ring cannot be promised to take it (the caller spills it instead).
TOO_BIG = -3

# results of take (besides a (kind, bytes) tuple or a claimed frame's offset >= 0)
EMPTY = -1
BLOCKED = -2  # the oldest frame is still being written

MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 31
MAX_BUFFERS = 0xFFFF
#: The low half of a header word: w0's state, kind and buffer count; w1's frame size
#: (its high half is the pid, or the payload length).
LOW32 = 0xFFFFFFFF
_LOW = LOW32


assert (_CLOSED, TAIL, NRES, WAIT_DATA, HEAD, READ, NCLAIM, WAIT_SPACE) == (
    4,
    8,
    9,
    10,
    16,
    17,
    18,
    19,
)
assert (HEADER, ALIGN, DATA_OFFSET, READY) == (16, 32, 4096, 2)


class _Sliceable(Protocol):
    def __getitem__(self, key: slice, /) -> bytes: ...


class _BytesOf:
    """Slices of a memoryview as ``bytes`` (what an mmap gives directly, faster)."""

    __slots__ = ("_mv",)

    def __init__(self, mv: memoryview) -> None:
        self._mv = mv

    def __getitem__(self, key: slice) -> bytes:
        return bytes(self._mv[key])


#: Frames with a payload shorter than PACKED bytes are written by one struct
#: call: ``(PACKERS[n] or make_packer(n))(buf, start, header word, size word, payload)``
#: writes the header and the payload.
PACKED = 512
PACKERS: list[Callable[..., None] | None] = [None] * PACKED


def make_packer(n: int) -> Callable[..., None]:
    pack = struct.Struct(f"=QQ{n}s").pack_into
    PACKERS[n] = pack
    return pack


def _align(n: int, a: int) -> int:
    return (n + a - 1) & -a


class Ring:
    """Frames in a byte ring stored entirely in ``buf``; see the module docstring."""

    __slots__ = (
        "_b",
        "_cap",
        "_claimed_seen",
        "_head_seen",
        "_i",
        "_mask",
        "_maxsize",
        "_raw",
        "_w",
        "_wrap",
        "wrapped",
    )

    def __init__(self, buf: memoryview | bytearray, raw: _Sliceable | None = None) -> None:
        """``raw``: the object behind ``buf`` if slicing it gives ``bytes`` (an mmap), for speed."""
        mv = memoryview(buf).cast("B")
        if len(mv) < DATA_OFFSET + MIN_CAPACITY:
            raise ValueError(
                f"a ring needs at least {DATA_OFFSET + MIN_CAPACITY} bytes, got {len(mv)}"
            )
        self._b = mv
        self._raw: _Sliceable = raw if raw is not None else _BytesOf(mv)
        self._w = mv.cast("Q")
        self._i = mv.cast("I")
        if self._w[_MAGIC] != MAGIC:
            raise ValueError("buffer does not hold a polytask ring (bad magic number)")
        cap = self._w[_CAP]
        if DATA_OFFSET + cap > len(mv) or cap & (cap - 1):
            raise ValueError(f"ring capacity {cap} does not fit the buffer of {len(mv)} bytes")
        self._cap = cap
        self._mask = cap - 1
        self._maxsize = int(self._w[_MAXSIZE])  # fixed at creation
        # Past this offset the producer wraps early whenever the ring is empty
        # (see _make_room), so a channel that keeps up only ever touches the
        # ring's first pages: no page faults, and data that stays in the
        # caches, instead of streaming through the whole ring.
        self._wrap = min(cap >> 3, WRAP_EARLY)
        #: Set when this handle wrote a pad (the writer then calls skip_pads); never reset here.
        self.wrapped = False
        # The producer's last look at the consumers' words. Both only grow, so a
        # stale value under-counts the room: put_small re-reads them only when
        # they say "full", and the consumers' cache line stays on their core.
        self._head_seen = 0
        self._claimed_seen = 0

    # ------------------------------------------------------------------ setup

    @staticmethod
    def buffer_size(capacity: int) -> int:
        """Bytes of buffer a ring of ``capacity`` data bytes needs."""
        return DATA_OFFSET + capacity

    @staticmethod
    def round_capacity(capacity: int) -> int:
        """The power of two at least ``capacity`` (and at least MIN_CAPACITY)."""
        if capacity > MAX_CAPACITY:
            raise ValueError(f"capacity must be at most {MAX_CAPACITY} bytes, got {capacity}")
        cap = MIN_CAPACITY
        while cap < capacity:
            cap <<= 1
        return cap

    @classmethod
    def initialise(
        cls,
        buf: memoryview | bytearray,
        capacity: int,
        maxsize: int,
        owner: int,
        raw: _Sliceable | None = None,
        owner_start: int = 0,
    ) -> Ring:
        """Write an empty ring into ``buf`` (zero-filled) and return it.

        ``owner`` and ``owner_start`` (its start time, 0 if not known) name the
        creating process, whose death closes the channel (see the channel's waits).
        """
        if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY or capacity & (capacity - 1):
            raise ValueError(
                f"capacity must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}, got {capacity}"
            )
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0 (0 = no limit), got {maxsize}")
        w = memoryview(buf).cast("B").cast("Q")
        w[_CAP] = capacity
        w[_MAXSIZE] = maxsize
        w[_OWNER] = owner
        w[_OWNER_START] = owner_start
        w[_MAGIC] = MAGIC
        w.release()
        return cls(buf, raw)

    def detach(self) -> None:
        """Drop the views of the buffer (so a mapping behind it can be closed)."""
        self._i.release()
        self._w.release()
        self._b.release()

    # ------------------------------------------------------------------ state

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def maxsize(self) -> int:
        return self._maxsize

    # The buffer's views, for a caller that inlines the hot paths of push and pop.

    @property
    def words(self) -> memoryview:
        """The buffer as u64 words."""
        return self._w

    @property
    def halves(self) -> memoryview:
        """The buffer as u32 words (each u64 word's two halves, in the machine's order)."""
        return self._i

    @property
    def view(self) -> memoryview:
        """The buffer as bytes (writable)."""
        return self._b

    @property
    def raw(self) -> _Sliceable:
        """What slices of the buffer into ``bytes`` fastest."""
        return self._raw

    @property
    def wrap_at(self) -> int:
        """A frame ending past this offset goes through the wrapping logic of push."""
        return self._wrap

    @property
    def owner(self) -> int:
        return int(self._w[_OWNER])

    @property
    def owner_start(self) -> int:
        """The owner's start time (see ``_shm.process_start``; 0: not known)."""
        return int(self._w[_OWNER_START])

    @property
    def closed(self) -> bool:
        return bool(self._w[_CLOSED])

    @property
    def close_reason(self) -> int:
        """Why the ring was closed: BY_CLOSE, OWNER_DIED, OWNER_RELEASED (0: open)."""
        return int(self._w[_CLOSED])

    def close(self, reason: int = BY_CLOSE) -> None:
        """Mark closed, for ``reason`` unless it was closed already (both locks)."""
        if not self._w[_CLOSED]:
            self._w[_CLOSED] = reason
        # Also in the word a writer reads anyway: one test sends it off its fast path.
        self._w[WAIT_DATA] |= CLOSED_FLAG

    def items(self) -> int:
        """Frames reserved and not yet claimed (no lock needed: an estimate while others work)."""
        n = self._w[NRES] - self._w[NCLAIM]
        return n if 0 <= n < 1 << 62 else 0

    def empty_for_reader(self) -> bool:
        """No frame waits to be claimed (a lock-free hint: readers spin on it before sleeping)."""
        return bool(self._w[READ] == self._w[TAIL])

    def not_empty_for_reader(self) -> bool:
        """A frame waits to be claimed (the opposite hint, for spinning without a lambda)."""
        return bool(self._w[READ] != self._w[TAIL])

    def used(self) -> int:
        """Bytes between head and tail (no lock needed: an estimate)."""
        return int(self._w[TAIL] - self._w[HEAD])

    @property
    def data_seq(self) -> int:
        return int(self._i[_DATA_SEQ_WORD])

    @property
    def space_seq(self) -> int:
        return int(self._i[_SPACE_SEQ_WORD])

    # Sleepers and wake-ups. A sleeper registers (counts itself in WAIT_*) and
    # sleeps on the sequence word it read. Whoever advances the sequence wakes
    # every sleeper at once and sets the count to 0: the registrations are used
    # up, so a busy writer pays for one wake-up per sleep, not one per item
    # while the sleeper is still getting up. A sleeper whose sequence did not
    # move (timeout) takes its own registration back.

    def bump_data(self) -> int:
        """Advance the data sequence (P lock); returns how many readers must be woken."""
        i = self._i
        i[_DATA_SEQ_WORD] = (i[_DATA_SEQ_WORD] + 1) & 0x7FFFFFFF
        n = int(self._w[WAIT_DATA] & ~CLOSED_FLAG)
        self._w[WAIT_DATA] &= CLOSED_FLAG
        return n

    def bump_space(self) -> int:
        """Advance the space sequence (C lock); returns how many writers must be woken."""
        i = self._i
        i[_SPACE_SEQ_WORD] = (i[_SPACE_SEQ_WORD] + 1) & 0x7FFFFFFF
        n = int(self._w[WAIT_SPACE])
        self._w[WAIT_SPACE] = 0
        return n

    def wake_writers(self) -> int:
        """Advance the space sequence if writers sleep (C lock); returns 1 if they must be woken."""
        if self._w[WAIT_SPACE]:
            self._w[WAIT_SPACE] = 0
            i = self._i
            i[_SPACE_SEQ_WORD] = (i[_SPACE_SEQ_WORD] + 1) & 0x7FFFFFFF
            return 1
        return 0

    def reader_sleeps(self) -> int:
        """Register a reader going to sleep (P lock); returns the data sequence to sleep on."""
        self._w[WAIT_DATA] += 1
        return int(self._i[_DATA_SEQ_WORD])

    def reader_woke(self, seq: int) -> None:
        """A reader that slept on ``seq`` is up (P lock): withdraw its registration if unused."""
        w = self._w
        if self._i[_DATA_SEQ_WORD] == seq and w[WAIT_DATA] & ~CLOSED_FLAG:
            w[WAIT_DATA] -= 1

    def writer_sleeps(self) -> int:
        """Register a writer going to sleep (C lock); returns the space sequence to sleep on."""
        self._w[WAIT_SPACE] += 1
        return int(self._i[_SPACE_SEQ_WORD])

    def writer_woke(self, seq: int) -> None:
        """A writer that slept on ``seq`` is up (C lock): withdraw its registration if unused."""
        w = self._w
        if self._i[_SPACE_SEQ_WORD] == seq and w[WAIT_SPACE]:
            w[WAIT_SPACE] -= 1

    # ------------------------------------------------------------------ frames

    @staticmethod
    def frame_size(payload_len: int, buf_lens: Sequence[int] = ()) -> int:
        """Bytes a frame takes (room for aligning each buffer, wherever the frame starts)."""
        if not buf_lens:
            return _align(HEADER + payload_len, ALIGN)
        n = HEADER + 8 * len(buf_lens) + payload_len
        for b in buf_lens:
            n += b + BUF_ALIGN - 1
        return _align(n, ALIGN)

    def fits(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes is always stored once the ring is empty.

        That holds up to half the ring (the pad a frame may need at the ring's
        end is shorter than the frame); a bigger frame is refused (TOO_BIG).
        """
        return size <= self._cap // 2

    # ------------------------------------------------------------------ producer side (P lock)

    def _make_room(self, size: int, tail: int) -> int:
        """Where a frame of ``size`` goes (writing a PAD first if needed), FULL or TOO_BIG.

        A frame of at most half the ring always fits an empty ring, wherever
        the tail stands (the pad before it is shorter than the frame). A bigger
        one may never fit (the tail past the ring's middle, short of the frame's
        size, leaves neither the end nor the start wide enough), so it is
        refused for good, not FULL: a writer waiting for room would wait forever.
        """
        w = self._w
        cap = self._cap
        if size > cap >> 1:
            return TOO_BIG
        off = tail & self._mask
        head = w[HEAD]
        if off + size > cap or (off > self._wrap and head == tail and size <= off):
            # Wrap: the frame must be contiguous. (Also wrap early when the ring
            # is empty: a channel that keeps up then only touches its first
            # pages. The pad is then all the readers have to skip, and until they
            # do, it takes room: the writer skips it itself, see skip_pads.)
            pad = cap - off
            if tail + pad + size - head > cap:
                return FULL
            i = (DATA_OFFSET + off) >> 3
            w[i + 1] = pad
            w[i] = PAD
            self.wrapped = True
            return tail + pad
        if tail + size - head > cap:
            return FULL
        return tail

    def put_small(self, data: bytes | bytearray | memoryview, kind: int, pid: int) -> int:
        """Store a whole frame with no buffers and publish it (P lock).

        Returns 1 if sleeping readers must be woken (the data sequence was
        advanced), 0 if none sleep, FULL, CLOSED, or TOO_BIG for a frame that
        does not :meth:`fit <fits>` (the caller spills it).
        """
        return self.push(
            data if type(data) is bytes else bytes(data), READY | (kind << 8) | (pid << 32)
        )

    def push(self, data: bytes, hdr: int) -> int:
        """:meth:`put_small` with the frame's first header word ready-made (P lock).

        ``hdr`` is ``READY | kind << 8 | pid << 32``: a writer computes it once.
        """
        # The hot path of every put: word indexes are written out (see the
        # layout at the top) because each global lookup shows at this rate.
        w = self._w
        if w[4]:  # _CLOSED
            return CLOSED
        if self._maxsize and w[9] - self._claimed_seen >= self._maxsize:  # NRES - NCLAIM
            self._claimed_seen = w[18]
            if w[9] - self._claimed_seen >= self._maxsize:
                return FULL
        n = len(data)
        size = (n + 47) & -32  # HEADER + n, aligned to ALIGN
        pos = w[8]  # TAIL
        off = pos & self._mask
        if off + size > self._wrap:
            # Near the end of the ring, or far enough in to wrap early if the
            # ring is empty (a channel that keeps up only touches its first pages).
            pos = self._make_room(size, pos)
            if pos < 0:
                return pos  # FULL or TOO_BIG
            off = pos & self._mask
        elif pos + size - self._head_seen > self._cap:
            self._head_seen = w[16]  # HEAD
            if pos + size - self._head_seen > self._cap:
                return FULL
        start = 4096 + off  # DATA_OFFSET
        if n < PACKED:
            # Header, length and payload in one call (half the cost of three stores).
            (PACKERS[n] or make_packer(n))(self._b, start, hdr, size | (n << 32), data)
        else:
            self._b[start + 16 : start + 16 + n] = data  # HEADER
            i = start >> 3
            w[i + 1] = size | (n << 32)
            w[i] = hdr
        w[9] += 1  # NRES
        w[8] = pos + size  # TAIL: publishes the frame
        if w[10]:  # WAIT_DATA (not CLOSED_FLAG: the channel is open, we hold the P lock)
            w[10] = 0
            seqs = self._i
            seqs[_DATA_SEQ_WORD] = (seqs[_DATA_SEQ_WORD] + 1) & 0x7FFFFFFF
            return 1
        return 0

    def reserve(self, payload_len: int, buf_lens: Sequence[int], kind: int, pid: int) -> int:
        """Reserve a frame (state WRITING) for the caller to fill (P lock).

        Returns the frame's position, FULL or CLOSED. The caller writes into
        :meth:`payload_view` and :meth:`buffer_views`, then calls :meth:`commit`.
        """
        if len(buf_lens) > MAX_BUFFERS:
            raise ValueError(f"a frame holds at most {MAX_BUFFERS} buffers, got {len(buf_lens)}")
        w = self._w
        if w[_CLOSED]:
            return CLOSED
        if self._maxsize and w[NRES] - w[NCLAIM] >= self._maxsize:
            return FULL
        tail = w[TAIL]
        size = self.frame_size(payload_len, buf_lens)
        if not self.fits(size):
            raise ValueError(f"a frame of {size} bytes does not fit a ring of {self._cap} bytes")
        pos = self._make_room(size, tail)
        if pos < 0:
            return FULL
        start = DATA_OFFSET + (pos & self._mask)
        i = start >> 3
        for k, n in enumerate(buf_lens):
            w[i + 2 + k] = n
        w[i + 1] = size | (payload_len << 32)
        w[i] = WRITING | (kind << 8) | (len(buf_lens) << 16) | (pid << 32)
        w[NRES] += 1
        w[TAIL] = pos + size
        return pos

    def commit(self, pos: int) -> None:
        """Mark a reserved frame READY (by its writer, then bump_data under the P lock)."""
        i = (DATA_OFFSET + (pos & self._mask)) >> 3
        h = self._w[i]
        self._w[i] = (h & ~0xFF) | READY

    def withdraw(self, pos: int, pid: int) -> bool:
        """Turn the frame at ``pos``, reserved by ``pid`` and not committed, into a pad (P lock).

        For a writer that gives up on a reserved frame while it lives (an exception
        while copying): readers skip the pad, where they would wait behind the
        unfinished frame for as long as its writer lives. False if the frame is no
        longer that writer's unfinished frame (committed, or abandoned already).
        """
        i = (DATA_OFFSET + (pos & self._mask)) >> 3
        w = self._w
        h = w[i]
        if h & 0xFF != WRITING or h >> 32 != pid:
            return False
        w[i] = PAD  # its size stays in the second word: readers skip it whole
        w[NRES] -= 1  # no longer an item (recount counts only WRITING and READY frames)
        return True

    def reader_at_head(self) -> tuple[int, int] | None:
        """(position, pid) of a claimed frame holding the ring's head back, if any (C lock)."""
        w = self._w
        head = w[HEAD]
        if head == w[READ]:
            return None
        h = w[(DATA_OFFSET + (head & self._mask)) >> 3]
        if h & 0xFF == READING:
            return int(head), int(h >> 32)
        return None

    # ------------------------------------------------------------------ frame contents

    def header(self, pos: int) -> tuple[int, int, int, int, int, int]:
        """(state, kind, number of buffers, pid, size, payload length) of the frame at ``pos``."""
        i = (DATA_OFFSET + (pos & self._mask)) >> 3
        h = self._w[i]
        return (
            int(h & 0xFF),
            int((h >> 8) & 0xFF),
            int((h >> 16) & 0xFFFF),
            int(h >> 32),
            int(self._w[i + 1] & _LOW),
            int(self._w[i + 1] >> 32),
        )

    def _layout(self, pos: int) -> tuple[int, int, list[tuple[int, int]]]:
        off = pos & self._mask
        start = DATA_OFFSET + off
        i = start >> 3
        h = self._w[i]
        nbufs = (h >> 16) & 0xFFFF
        plen = self._w[i + 1] >> 32
        lens = [int(self._w[i + 2 + k]) for k in range(nbufs)]
        p = HEADER + 8 * nbufs
        spans = []
        end = off + p + plen
        for n in lens:
            b = _align(end, BUF_ALIGN)
            spans.append((DATA_OFFSET + b, n))
            end = b + n
        return start + p, int(plen), spans

    def payload_view(self, pos: int) -> memoryview:
        """The payload bytes of the frame at ``pos`` (a view into the buffer)."""
        p, n, _ = self._layout(pos)
        return self._b[p : p + n]

    def buffer_views(self, pos: int) -> list[memoryview]:
        """The out-of-band buffers of the frame at ``pos`` (views into the buffer)."""
        _, _, spans = self._layout(pos)
        return [self._b[s : s + n] for s, n in spans]

    # ------------------------------------------------------------------ consumer side (C lock)

    def take(self, pid: int) -> tuple[int, bytes, int] | int:
        """Take the oldest frame for reader ``pid`` (C lock).

        Returns ``(kind, payload, wake)`` for a small frame (copied out and
        freed at once; ``wake`` is 1 if sleeping writers must be woken), the
        position (>= 0) of a big frame now claimed by the caller (read it, then
        :meth:`release` it), EMPTY, or BLOCKED when the oldest frame is still
        being written (see :meth:`writer_at_read`).
        """
        # The hot path of every get: word indexes written out, as in put_small.
        w = self._w
        read = w[17]  # READ
        tail = w[8]  # TAIL
        while read != tail:
            start = 4096 + (read & self._mask)  # DATA_OFFSET
            i = start >> 3
            h = w[i]
            sz = w[i + 1]
            size = sz & 0xFFFFFFFF
            if h & 0xFFFF00FF == 2 and size <= SMALL:  # READY, no buffers
                data = self._raw[start + 16 : start + 16 + (sz >> 32)]  # HEADER
                w[17] = read + size
                w[18] += 1  # NCLAIM
                if w[16] == read:  # HEAD
                    w[16] = read + size
                else:
                    w[i] = (h & ~0xFF) | DONE
                    self._advance_head()
                if w[19]:  # WAIT_SPACE
                    w[19] = 0
                    seqs = self._i
                    seqs[_SPACE_SEQ_WORD] = (seqs[_SPACE_SEQ_WORD] + 1) & 0x7FFFFFFF
                    return (h >> 8) & 0xFF, data, 1
                return (h >> 8) & 0xFF, data, 0
            state = h & 0xFF
            if state == READY:
                w[i] = (h & _LOW & ~0xFF) | READING | (pid << 32)
                w[READ] = read + size
                w[NCLAIM] += 1
                return int(read)
            if state == WRITING:
                return BLOCKED
            # PAD (or a frame abandoned by a dead writer): skip it.
            if w[HEAD] == read:
                w[HEAD] = read + size
            read += size
            w[READ] = read
        return EMPTY

    def pop(self, pid: int) -> bytes | tuple[int, bytes, int] | int:
        """:meth:`take`, with the common case cheaper (C lock).

        Returns the payload alone (``bytes``) for a small frame of kind 0 when
        no writer needs waking, else whatever :meth:`take` returns.
        """
        w = self._w
        read = w[17]  # READ
        if read != w[8]:  # TAIL
            start = 4096 + (read & self._mask)  # DATA_OFFSET
            i = start >> 3
            sz = w[i + 1]
            size = sz & 0xFFFFFFFF
            # READY, kind 0, no buffers (the pid is in the high half), copied under the lock
            if w[i] & 0xFFFFFFFF == 2 and size <= SMALL and not w[19]:  # WAIT_SPACE
                data = self._raw[start + 16 : start + 16 + (sz >> 32)]  # HEADER
                w[17] = read + size
                w[18] += 1  # NCLAIM
                if w[16] == read:  # HEAD
                    w[16] = read + size
                else:
                    w[i] = (w[i] & ~0xFF) | DONE
                    self._advance_head()
                return data
        return self.take(pid)

    def take_many(self, limit: int, common: int) -> tuple[list[bytes], list[int] | None]:
        """Take up to ``limit`` small frames in a row (C lock); stops at the first big or unfinished one.

        Returns their payloads and their kinds, the kinds None if every frame is
        of kind ``common`` (the caller then decodes them all alike, in one call).
        Call :meth:`wake_writers` afterwards.
        """
        datas: list[bytes] = []
        kinds: list[int] | None = None
        append = datas.append
        w = self._w
        raw = self._raw
        mask = self._mask
        read = w[READ]
        tail = w[TAIL]
        head_was_read = w[HEAD] == read
        claimed = 0
        while read != tail and claimed < limit:
            start = DATA_OFFSET + (read & mask)
            i = start >> 3
            h = w[i]
            sz = w[i + 1]
            size = sz & _LOW
            if h & 0xFFFF00FF == READY and size <= SMALL:  # READY, no buffers
                append(raw[start + HEADER : start + HEADER + (sz >> 32)])
                kind = (h >> 8) & 0xFF
                if kinds is not None:
                    kinds.append(kind)
                elif kind != common:
                    kinds = [common] * claimed + [kind]
                if not head_was_read:
                    w[i] = (h & ~0xFF) | DONE
                claimed += 1
                read += size
            elif h & 0xFF == PAD:
                read += size
            else:
                break
        w[READ] = read
        w[NCLAIM] += claimed
        if head_was_read:
            w[HEAD] = read
        else:
            self._advance_head()
        return datas, kinds

    def skip_pads(self) -> None:
        """Skip the pads at the read position, as a reader would (C lock).

        A writer that wrapped early calls it, so that the pad frees its room
        at once rather than when a reader next comes by.
        """
        w = self._w
        read = w[READ]
        while read != w[TAIL]:
            i = (DATA_OFFSET + (read & self._mask)) >> 3
            if w[i] & 0xFF != PAD:
                return
            head_was_read = w[HEAD] == read
            read += w[i + 1] & _LOW
            w[READ] = read
            if head_was_read:
                w[HEAD] = read

    def writer_at_read(self) -> tuple[int, int] | None:
        """(position, pid) of the unfinished frame readers wait for, if any (C lock)."""
        w = self._w
        read = w[READ]
        if read == w[TAIL]:
            return None
        h = w[(DATA_OFFSET + (read & self._mask)) >> 3]
        if h & 0xFF == WRITING:
            return int(read), int(h >> 32)
        return None

    def abandon_writer(self, pos: int, pid: int) -> bool:
        """Skip the unfinished frame at ``pos`` whose writer ``pid`` died (C lock).

        Returns False if the frame is no longer that writer's unfinished frame.
        """
        w = self._w
        if w[READ] != pos:
            return False
        i = (DATA_OFFSET + (pos & self._mask)) >> 3
        h = w[i]
        if h & 0xFF != WRITING or h >> 32 != pid:
            return False
        w[i] = (h & ~0xFF) | DONE
        w[READ] = pos + (w[i + 1] & _LOW)
        w[NCLAIM] += 1
        self._advance_head()
        return True

    def release(self, pos: int) -> None:
        """Free a claimed frame after reading it (C lock)."""
        i = (DATA_OFFSET + (pos & self._mask)) >> 3
        h = self._w[i]
        self._w[i] = (h & ~0xFF) | DONE
        self._advance_head()

    def _advance_head(self) -> None:
        w = self._w
        head = w[HEAD]
        read = w[READ]
        mask = self._mask
        while head < read:
            i = (DATA_OFFSET + (head & mask)) >> 3
            if w[i] & 0xFF == READING:
                break
            head += w[i + 1] & _LOW
        w[HEAD] = head

    def recount(self, alive: Callable[[int], bool]) -> None:
        """Make the counters agree with the frames again (both locks held).

        Called after a process died holding a lock, between any two of its
        stores. Claimed frames of dead readers are freed; unfinished frames of
        dead writers are left for readers to skip (they see the dead pid).
        """
        w = self._w
        mask = self._mask
        head, read, tail = w[HEAD], w[READ], w[TAIL]
        if not head <= read <= tail or tail - head > self._cap:
            raise RuntimeError(
                f"polytask channel ring is corrupt (head={head}, read={read}, tail={tail})"
            )
        pending = 0
        pos = read
        while pos < tail:
            i = (DATA_OFFSET + (pos & mask)) >> 3
            state = w[i] & 0xFF
            size = w[i + 1] & _LOW
            if size == 0 or size % ALIGN or pos + size > tail:
                raise RuntimeError(
                    f"polytask channel ring is corrupt (frame at {pos}, size {size})"
                )
            if state in (WRITING, READY):
                pending += 1
            pos += size
        w[NRES] = w[NCLAIM] + pending
        pos = head
        while pos < read:
            i = (DATA_OFFSET + (pos & mask)) >> 3
            h = w[i]
            if h & 0xFF == READING and not alive(int(h >> 32)):
                w[i] = (h & ~0xFF) | DONE
            pos += w[i + 1] & _LOW
        self._advance_head()
