"""The Pool's scheduling, pure: items, map runs cut into blocks, which chunk goes next.

No I/O, no threads, no locks: the Pool calls these with its own lock held, and
the tests call them without any Pool (``tests/test_schedule.py``). The chunk
sizes come from :class:`ChunkSizer` (``chunking.py``, pure arithmetic too).

Two kinds of chunk leave the Pool, one backend task each:

* a list of :class:`Item` (submitted tasks, and single items of a map that
  must run alone: their chunk failed, or they are retried), taken from the
  Pool's queue by :func:`take_chunk`;
* a :class:`Block`: consecutive items of one map run, as bare arguments (no
  object per item), cut from the run's :class:`RunQueue` by
  :meth:`RunQueue.next_block`.
"""

from __future__ import annotations

import collections
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .chunking import ChunkSizer

if TYPE_CHECKING:
    from .._core.task import Task

__all__ = [
    "LIVE_STATES",
    "Block",
    "Item",
    "RunQueue",
    "Sink",
    "args_bytes",
    "chunk_timeout",
    "input_length",
    "map_items",
    "positional_chunksize",
    "star_items",
    "take_chunk",
    "zip_inputs",
]

#: A map's items read whole: a list, or a range (kept as it is: see map_items).
Items = list[Any] | range

#: The states of a Task that may still run.
LIVE_STATES = ("PENDING", "RUNNING")


class Sink:
    """Where settled items go: a Task (submit) or a running map (a RunQueue)."""

    __slots__ = ("__weakref__", "cancelled", "sizer")

    def __init__(self, sizer: ChunkSizer) -> None:
        self.sizer = sizer
        self.cancelled = False

    def settle(self, done: list[tuple[Item, bool, Any]]) -> None:
        raise NotImplementedError


class Item:
    """One call that travels on its own: a submitted task, or a map item run alone."""

    __slots__ = (
        "args",
        "attempts",
        "chunk",
        "fn",
        "index",
        "isolated",
        "kwargs",
        "settled",
        "sink",
        "started",
        "suspect",
        "task",
        "timeout",
    )

    def __init__(
        self,
        sink: Sink,
        index: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        task: Task[Any] | None = None,
    ) -> None:
        self.sink = sink
        self.index = index
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.task = task
        self.attempts = 0
        self.isolated = False  # runs alone: after its chunk failed, or to retry it
        self.settled = False
        self.started = False
        # Re-run alone after its chunk was lost to a crash or a timeout:
        # how it was lost, for its first item only (it surely started there). If it
        # fails alone the same way, that chunk's run is charged to it too.
        self.suspect: type[BaseException] | None = None
        self.chunk: Task[Any] | None = None  # the backend task running it now

    def dropped(self) -> bool:
        # Reads the Task's state without its lock: a stale answer only delays the drop.
        return (
            self.settled
            or self.sink.cancelled
            or (self.task is not None and self.task._state not in LIVE_STATES)
        )


class Block:
    """Consecutive items of one map run, sent as one chunk."""

    __slots__ = ("args", "run", "start")

    def __init__(self, run: RunQueue, start: int, args: Items) -> None:
        self.run = run
        self.start = start
        self.args = args


class RunQueue(Sink):
    """The scheduling side of one map run: its items not sent yet, cut into blocks.

    Its items wait in ``todo`` as bare argument tuples (no object per item) and
    leave it as :class:`Block` chunks; only an item that must run alone (its
    chunk failed, or it is retried) becomes an :class:`Item`. ``input`` is the
    input iterator still to read, None once the whole input is known (which
    lets :meth:`next_block` cut the rest evenly). The Pool's ``_Run`` adds the
    results side.
    """

    __slots__ = (
        "active",
        "borrowed",
        "chunks",
        "fn",
        "input",
        "plan",
        "plan_from",
        "plan_left",
        "redo",
        "star",
        "timeout",
        "todo",
        "todo_index",
        "todo_pos",
        "workers",
    )

    def __init__(
        self,
        sizer: ChunkSizer,
        workers: int,
        fn: Callable[..., Any],
        inputs: Iterator[Any] | None,
        timeout: float | None,
        star: bool,
    ) -> None:
        super().__init__(sizer)
        self.workers = workers
        self.fn = fn
        self.input = inputs
        self.timeout = timeout
        self.star = star
        self.todo: Items = []
        # todo is the caller's own list or range (map over one): read it, never change it.
        self.borrowed = False
        self.todo_pos = 0
        self.todo_index = 0
        self.redo: collections.deque[Block] = collections.deque()
        # The even cut of a known rest (see next_block): the chunk size, the sizer's
        # size it was made from, and how many items were left then.
        self.plan = 0
        self.plan_from = 0
        self.plan_left = 0
        # In the Pool's rotation of runs with items to send.
        self.active = False
        # The chunks handed to the backend (to cancel those not started, see _end_run).
        self.chunks: weakref.WeakSet[Task[Any]] = weakref.WeakSet()

    def settle_block(self, start: int, values: list[Any], errors: dict[int, Any] | None) -> None:
        """Results of the items ``start``, ``start + 1``... (the results side)."""
        raise NotImplementedError

    def queued(self) -> int:
        """How many items are not sent yet."""
        return len(self.todo) - self.todo_pos + sum(len(b.args) for b in self.redo)

    def has_work(self) -> bool:
        return self.todo_pos < len(self.todo) or bool(self.redo)

    def add(self, args: Items) -> None:
        """Queue more items (the list is the run's from now on, unless borrowed)."""
        if self.todo_pos == len(self.todo):
            self.todo_index += self.todo_pos
            self.todo, self.todo_pos = args, 0
        elif isinstance(self.todo, list) and not self.borrowed:
            self.todo.extend(args)
        else:  # the caller's list or range: ours from here on, a copy of its rest
            self.todo = [*self.todo[self.todo_pos :], *args]
            self.todo_index += self.todo_pos
            self.todo_pos = 0
            self.borrowed = False

    def resend(self, start: int, args: list[Any]) -> None:
        """Items a worker did not reach (it stopped early): they go out first."""
        self.redo.appendleft(Block(self, start, args))

    def clear(self) -> None:
        """Drop every item not sent yet."""
        self.todo, self.todo_pos = [], 0
        self.redo.clear()

    def _spread(self, left: int) -> bool:
        """Whether a known rest the sizer would send as one chunk goes to every worker.

        The sizer's floor keeps a chunk's round trip under a quarter of its time,
        but the overhead it measures grows with the chunk (results pickled, piped
        and unpickled), so a map of tiny items went to one worker whole while the
        others idled. Measured (x + 1, 2 process workers, best of 150): one chunk
        of 5,000 items 603 us, two 516 us; of 10,000, 996 us and 754 us; of
        2,000, even; of 1,000, one chunk faster (235 us against 261 us).
        """
        s = self.sizer
        if s.per_item is None or s.overhead is None or left < 2 * self.workers:
            return False
        return 4 * s.per_item * left >= s.overhead * self.workers

    def next_block(self) -> Block | None:
        """The next chunk to send, sized by the sizer; None when nothing is queued."""
        if self.redo:
            return self.redo.popleft()
        left = len(self.todo) - self.todo_pos
        if left <= 0:
            return None
        n = min(self.sizer.size(left), left)
        if self.input is None and self.sizer.fixed is None:
            if n == left and not self.plan and self._spread(left):
                n = -(-left // self.workers)  # the plan below keeps the rest even
            # The whole rest is known (map, or an input read to its end): cut it into
            # equal chunks, a multiple of the workers in number, so that no worker
            # gets a short extra chunk after the others went idle. The cut is kept
            # while the sizer does not grow, so every chunk of the rest is the same
            # size, the last ones too (once the rest fits in one sizer chunk, the
            # plan still caps it: else the tail went out as one double-size chunk).
            if n < left and (n > self.plan_from or self.plan_left < left):
                workers = self.workers
                k = -(-left // n)
                k = -(-k // workers) * workers
                self.plan_from, self.plan_left, self.plan = n, left, -(-left // k)
            if self.plan:
                n = min(n, self.plan)
        pos = self.todo_pos
        blk = Block(self, self.todo_index + pos, self.todo[pos : pos + n])
        pos += n
        # Drop what was sent (amortised O(1)), so sent items are not kept alive; a
        # borrowed list is the caller's, which keeps them alive anyway.
        if 2 * pos >= len(self.todo) and not self.borrowed and isinstance(self.todo, list):
            del self.todo[:pos]
            self.todo_index += pos
            pos = 0
        self.todo_pos = pos
        return blk


def take_chunk(
    queue: collections.deque[Item],
    runs: collections.deque[RunQueue],
    busy: bool,
    drop: Callable[[Item], None],
) -> list[Item] | Block | None:
    """The next chunk to send: single items (submitted, retried, isolated) go first,
    then the map runs in turn (round robin).

    ``busy``: every worker has a chunk already; then items are sent only in full
    chunks, so tasks submitted one by one still travel in large batches. ``drop``
    settles an item found dropped (cancelled, or its map ended) that will not run.
    """
    q = queue
    while q:
        first = q[0]
        if first.dropped():
            q.popleft()
            drop(first)
            continue
        if first.isolated:
            return [q.popleft()]
        if busy:
            size = first.sink.sizer.size(None)
            if len(q) < size:
                break
        else:
            size = first.sink.sizer.size(len(q))
        sink, timeout = first.sink, first.timeout
        chunk = [q.popleft()]
        # Runs once per submitted task: dropped() inlined.
        n, append, popleft = 1, chunk.append, q.popleft
        while n < size and q:
            it = q[0]
            if it.sink is not sink or it.isolated or it.timeout != timeout:
                break
            popleft()
            task = it.task
            if not (
                it.settled
                or sink.cancelled
                or (task is not None and task._state not in LIVE_STATES)
            ):
                append(it)
                n += 1
            else:
                drop(it)
        return chunk
    while runs:
        run = runs[0]
        blk = run.next_block()
        if blk is None:
            runs.popleft()
            run.active = False
            continue
        runs.rotate(-1)
        return blk
    return None


def chunk_timeout(sizer: ChunkSizer, t: float | None, n: int) -> float | None:
    """The timeout of a chunk of ``n`` items that may each run ``t`` seconds."""
    if t is None or n == 1:
        return t
    # A hung item should not wait n x T to be noticed: allow T plus a
    # generous multiple of the chunk's expected work.
    expected = sizer.expected_seconds(n) or 0.0
    return min(t * n, t + 4 * expected + 1.0)


# ---------------------------------------------------------------------------- inputs
def args_bytes(args: tuple[Any, ...]) -> int:
    """A cheap estimate of an item's size (flat: exact for bytes, str, arrays)."""
    try:
        return sum(sys.getsizeof(a) for a in args)
    except Exception:
        return 64


def positional_chunksize(
    iterables: tuple[Any, ...], chunksize: int | None
) -> tuple[tuple[Iterable[Any], ...], int | None]:
    """``map(fn, items, 10)``: multiprocessing's positional chunksize, an int (or None,
    its default) after the iterables (neither is iterable, so it cannot be meant as one)."""
    if len(iterables) >= 2:
        last = iterables[-1]
        if last is None:
            return iterables[:-1], chunksize
        if isinstance(last, int) and not isinstance(last, bool):
            if chunksize is not None:
                raise TypeError("chunksize given twice: after the iterables and as chunksize=")
            return iterables[:-1], last
    return iterables, chunksize


def map_items(iterables: tuple[Iterable[Any], ...]) -> tuple[Items, bool, bool]:
    """A map's items as a list: ``(items, star, borrowed)``; a list given alone is used
    as it is (borrowed: read, never changed), and so is a ``range``: its slices are
    ranges, which take no memory per item and pickle in a few bytes, so that
    ``map(f, range(10**7))`` neither builds nor sends ten million ints."""
    if not iterables:
        raise TypeError("map needs at least one iterable")
    star = len(iterables) != 1
    first = iterables[0]
    if not star and (type(first) is list or type(first) is range):
        assert isinstance(first, (list, range))
        return first, False, True
    return list(zip_inputs(iterables)), star, False


def star_items(iterable: Iterable[Iterable[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(a) for a in iterable]


def zip_inputs(iterables: tuple[Iterable[Any], ...]) -> Iterator[Any]:
    """The items of a map: the elements themselves for one iterable, else tuples."""
    if not iterables:
        raise TypeError("map needs at least one iterable")
    if len(iterables) == 1:
        return iter(iterables[0])
    return zip(*iterables, strict=False)


def input_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items a map has, if every input has a length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
