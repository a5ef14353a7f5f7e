"""The adaptive chunk-size controller of the Pool: pure arithmetic, no I/O.

A Pool sends items to its backend in chunks (one backend task runs many
items). Chunks amortise the per-task round trip of the backend (pickling, a
pipe write, a wake-up: ~0.1 ms for local processes, ~1 ms for Dask or Ray),
but a chunk that is too large holds many slow items on one worker while the
others go idle. :class:`ChunkSizer` picks the size of the next chunk from what
finished chunks measured:

* ``per_item``: seconds of work per item, measured in the worker;
* ``overhead``: seconds a chunk spent outside the items (wall time seen by the
  caller minus the work), i.e. the price of one round trip.

The target duration of a chunk is ``overhead / overhead_fraction`` (so the round
trip costs at most that fraction of the time), clamped to
``[min_seconds, max_seconds]``; the size is that target over ``per_item``.
Three brakes keep workers busy and avoid stragglers: the size starts at 1 and
grows at most ``growth`` x per finished chunk; it is never more than a
``1 / (2 x workers)`` share of the items still queued (so chunks shrink as the
input drains and the last ones are spread over every worker), unless that
share is so small that the round trip would cost over a quarter of its time;
and it never exceeds ``max_size`` items nor ``max_bytes`` of arguments (so
a lazy input of large items stays small in memory).
"""

from __future__ import annotations

import math

__all__ = ["ChunkSizer"]


class ChunkSizer:
    """Chooses chunk sizes from measured work and overhead (see the module docstring).

    Args:
        workers: how many workers run chunks at once.
        fixed: a chunk size chosen by the user (then nothing adapts).
        overhead_fraction: the share of time the round trip may cost.
        min_seconds, max_seconds: bounds of a chunk's target duration.
        max_size: the largest chunk ever proposed.
        growth: how much a chunk may grow over the largest one that finished.
        smoothing: weight of a new measurement in the running averages.
    """

    __slots__ = (
        "_free_size",
        "_largest",
        "fixed",
        "growth",
        "item_bytes",
        "max_bytes",
        "max_seconds",
        "max_size",
        "min_seconds",
        "overhead",
        "overhead_fraction",
        "per_item",
        "smoothing",
        "workers",
    )

    def __init__(
        self,
        workers: int,
        *,
        fixed: int | None = None,
        overhead_fraction: float = 0.05,
        min_seconds: float = 0.001,
        max_seconds: float = 0.25,
        max_size: int = 16384,
        max_bytes: int = 1 << 20,
        growth: float = 16.0,
        smoothing: float = 0.3,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if fixed is not None and fixed < 1:
            raise ValueError(f"chunksize must be >= 1 or None, got {fixed}")
        self.workers = workers
        self.fixed = fixed
        self.overhead_fraction = overhead_fraction
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self.max_size = max_size
        self.max_bytes = max_bytes
        #: Estimated size in memory of one item's arguments (None: unknown).
        self.item_bytes: float | None = None
        self.growth = growth
        self.smoothing = smoothing
        #: Running average of seconds of work per item (None until measured).
        self.per_item: float | None = None
        #: Running average of seconds of round-trip overhead per chunk.
        self.overhead: float | None = None
        self._largest = 0
        # size(None), which depends only on the measurements: asked once per
        # submitted task, so it is computed once per measurement instead.
        self._free_size: int | None = None

    def observe(self, items: int, work: float, wall: float) -> None:
        """Record a finished chunk: ``items`` ran in ``work`` s; the caller saw ``wall`` s."""
        if items <= 0:
            return
        per = max(work, 0.0) / items
        over = max(wall - work, 0.0)
        a = self.smoothing
        self.per_item = per if self.per_item is None else (1 - a) * self.per_item + a * per
        self.overhead = over if self.overhead is None else (1 - a) * self.overhead + a * over
        self._largest = max(self._largest, items)
        self._free_size = None

    def observe_bytes(self, item_bytes: float) -> None:
        """Record the estimated size of an item (caps chunks at ``max_bytes``)."""
        self.item_bytes = float(max(item_bytes, 1))
        self._free_size = None

    def target_seconds(self) -> float:
        """The duration a chunk should last, from the measured overhead."""
        if self.overhead is None:
            return self.min_seconds
        return min(self.max_seconds, max(self.min_seconds, self.overhead / self.overhead_fraction))

    def size(self, queued: int | None = None) -> int:
        """The size of the next chunk, with ``queued`` items waiting (None: unknown)."""
        if self.fixed is not None:
            return self.fixed
        if queued is None:
            free = self._free_size
            if free is None:
                free = self._free_size = self._size(None)
            return free
        return self._size(queued)

    def _size(self, queued: int | None) -> int:
        if self.per_item is None:
            return 1
        ideal = self.target_seconds() / max(self.per_item, 1e-9)
        n = min(ideal, self._largest * self.growth, float(self.max_size))
        if self.item_bytes:
            n = min(n, self.max_bytes / self.item_bytes)
        if queued is not None:
            # Shrink towards a fair share of what is left, but not below a chunk
            # whose round trip costs a quarter of its time: smaller ones would
            # spend more on overhead than they save in balance.
            floor = (4 * (self.overhead or 0.0)) / max(self.per_item, 1e-9)
            n = min(n, max(math.ceil(queued / (2 * self.workers)), floor))
        return max(1, int(n))

    def expected_seconds(self, items: int) -> float | None:
        """How long a chunk of ``items`` should take (None until measured)."""
        return None if self.per_item is None else self.per_item * items

    def __repr__(self) -> str:
        return (
            f"<ChunkSizer per_item={self.per_item!r} overhead={self.overhead!r} next={self.size()}>"
        )
