"""``Channel``: the queue between tasks that users write; each backend has its own.

``Channel(maxsize=0, backend="thread")`` builds the backend's channel class
(anyio's shape, as for the primitives in :mod:`.primitives`): a deque under a
condition in ``backends/thread.py``, a shared-memory ring in ``_ipc/channel.py``,
a hub-held queue in ``backends/cluster/sync.py``.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar, cast

from .backend import backend_class
from .errors import ChannelClosed
from .timeouts import deadline as _deadline

__all__ = ["MAX_COUNT", "Channel", "check_max_items", "check_maxsize"]

#: The largest bound or count polytask takes (maxsize, a semaphore's value,
#: parties, max_items): a process channel or primitive keeps it in a 64-bit word
#: of shared memory, and 2**63 - 1 also fits a Py_ssize_t. The same for every
#: backend, so that a program does not fail only once moved to processes.
MAX_COUNT = 2**63 - 1

T = TypeVar("T")


class Channel(Generic[T]):
    """A FIFO channel between tasks: many producers, many consumers.

    ``Channel(maxsize=0, backend="thread")`` connects threads of one process;
    ``backend="process"`` connects processes through shared memory, and the
    channel can be passed to process tasks as an argument. ``maxsize`` bounds
    the number of items (0: no bound) so that producers wait when consumers
    fall behind. A process channel is also bounded by its ring's ``capacity``
    in bytes (items bigger than half of it take a slower path).

    Iterating yields items until the channel is closed and drained::

        ch = pt.Channel(maxsize=100)
        ch.put(1); ch.close()
        assert list(ch) == [1]

    ``put`` and ``get`` take ``timeout=`` (seconds, None to wait as long as it
    takes) and raise :class:`ChannelFull` / :class:`ChannelEmpty` when it passes
    (subclasses of ``queue.Full`` / ``queue.Empty``, as ``queue.Queue`` raises); ``put`` on a closed channel and ``get`` on a closed and
    drained one raise :class:`ChannelClosed`. Inside a thread task a blocking
    ``put`` or ``get`` raises :class:`Cancelled` once the task is cancelled.

    A process channel belongs to the process that created it: when that
    process dies, or drops its last handle without ``close()``, the channel is
    closed for every process attached to it (a blocked ``get`` or ``put``
    raises :class:`ChannelClosed` within a second).
    """

    backend: str
    maxsize: int

    def __new__(
        cls,
        maxsize: int = 0,
        *,
        backend: str = "thread",
        capacity: int | None = None,
    ) -> Channel[T]:
        check_capacity(capacity)
        if cls is not Channel:
            return super().__new__(cls)
        impl = backend_class(backend).primitive_class("Channel")
        return cast("Channel[T]", object.__new__(cast(type, impl)))

    # The methods below are provided by each backend.

    def put(self, item: T, timeout: float | None = None) -> None:
        """Add ``item``; wait up to ``timeout`` s for room (:class:`ChannelFull` after)."""
        raise NotImplementedError

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item; wait up to ``timeout`` s (:class:`ChannelEmpty` after)."""
        raise NotImplementedError

    def put_many(self, items: Iterable[T], timeout: float | None = None) -> None:
        """Add several items, in order (cheaper per item than ``put``)."""
        deadline = _deadline(timeout)
        for item in items:
            self.put(item, None if deadline is None else max(0.0, deadline - time.monotonic()))

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Wait for at least one item, then return up to ``max_items`` that are ready.

        An item that cannot be unpickled ends the batch before it: it raises
        :class:`SerializationError` at the next ``get``/``get_many`` of this handle,
        and the items after it follow, in order (none is lost).
        """
        check_max_items(max_items)
        out = [self.get(timeout)]
        while len(out) < max_items:
            try:
                out.append(self.get_nowait())
            except (queue.Empty, ChannelClosed):
                break
        return out

    def close(self) -> None:
        """Refuse further puts; readers get what is left, then :class:`ChannelClosed`."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (by any process)."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of items waiting (a snapshot: others may be putting and getting)."""
        raise NotImplementedError

    def put_nowait(self, item: T) -> None:
        """``put`` without waiting: :class:`ChannelFull` if there is no room."""
        self.put(item, 0)

    def get_nowait(self) -> T:
        """``get`` without waiting: :class:`ChannelEmpty` if there is no item."""
        return self.get(0)

    def __iter__(self) -> Iterator[T]:
        get = self.get
        while True:
            try:
                item = get()
            except ChannelClosed:
                return
            yield item

    def __enter__(self) -> Channel[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<Channel backend={self.backend!r} maxsize={self.maxsize} items={len(self)} {state}>"
        )


def check_capacity(capacity: int | None) -> None:
    # int() would take 1.5 or "4096", and a size of 0 or less was silently the least.
    if capacity is not None and (
        not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1
    ):
        raise ValueError(
            "capacity must be an int >= 1 (the bytes of a process channel's ring, rounded "
            f"up to a power of two of at least 4096) or None for the default, got {capacity!r}"
        )


def _is_count(n: object, least: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and least <= n <= MAX_COUNT


def check_maxsize(maxsize: int) -> None:
    if not _is_count(maxsize, 0):
        raise ValueError(
            "maxsize must be an int from 0 to 2**63-1 (the most items the channel holds; "
            f"0 = no limit), got {maxsize!r}"
        )


def check_max_items(max_items: int) -> None:
    if not _is_count(max_items, 1):
        raise ValueError(
            f"max_items must be an int from 1 to 2**63-1 (the most items to return), got {max_items!r}"
        )
