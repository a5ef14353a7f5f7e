"""The Pool's pure scheduling (polytask._pool.schedule): no Pool, no processes."""

from __future__ import annotations

import collections
from typing import Any

from polytask._pool.chunking import ChunkSizer
from polytask._pool.schedule import (
    Block,
    Item,
    RunQueue,
    Sink,
    chunk_timeout,
    input_length,
    map_items,
    positional_chunksize,
    take_chunk,
)


class Bin(Sink):
    def __init__(self, sizer: ChunkSizer) -> None:
        super().__init__(sizer)
        self.got: list[Any] = []

    def settle(self, done: list[tuple[Item, bool, Any]]) -> None:
        self.got.extend(done)


def tiny_item_sizer(workers: int) -> ChunkSizer:
    """A sizer that measured tiny items: its chunks are capped by max_size."""
    sizer = ChunkSizer(workers)
    sizer.observe(1_000, 1e-4, 1e-3)
    sizer.observe(sizer.max_size, 1e-3, 1e-2)
    return sizer


def run_of(items: list[Any], workers: int = 2, sizer: ChunkSizer | None = None) -> RunQueue:
    run = RunQueue(sizer or tiny_item_sizer(workers), workers, abs, None, None, False)
    run.add(items)
    return run


def test_a_known_rest_is_cut_into_equal_blocks_a_multiple_of_the_workers():
    for workers in (2, 3):
        run = run_of(list(range(50_000)), workers)
        blocks = list(iter(run.next_block, None))
        assert [x for b in blocks for x in b.args] == list(range(50_000))
        assert [b.start for b in blocks] == [
            sum(len(b.args) for b in blocks[:i]) for i in range(len(blocks))
        ]
        sizes = [len(b.args) for b in blocks]
        assert len(sizes) % workers == 0
        # One size (a ceiling division: the last may be a few items shorter).
        assert len(set(sizes[:-1])) == 1 and sizes[0] - len(sizes) < sizes[-1] <= sizes[0]
        assert run.queued() == 0 and not run.has_work()


def test_the_tail_of_a_known_rest_is_not_one_double_size_block():
    # Found in review: once the rest fitted in one sizer chunk the plan was not
    # applied, so 32,769 items on 2 workers went out as 8193, 8193, 16383.
    for workers in (2, 3):
        max_size = tiny_item_sizer(workers).max_size
        for total in (max_size + 1, 2 * max_size + 1, 3 * max_size - 1, 5 * max_size + 7):
            run = run_of(list(range(total)), workers)
            sizes = [len(b.args) for b in iter(run.next_block, None)]
            assert sum(sizes) == total
            assert max(sizes) == sizes[0], (workers, total, sizes)
            assert len(sizes) % workers == 0, (workers, total, sizes)


def measured_sizer(workers: int, per_item: float, overhead: float) -> ChunkSizer:
    sizer = ChunkSizer(workers)
    sizer.observe(1_000, per_item * 1_000, per_item * 1_000 + overhead)
    return sizer


def test_a_known_rest_of_one_chunk_goes_to_every_worker_when_its_work_pays():
    # The sizer sends 10,000 tiny items (50 ns each, 400 us of measured overhead)
    # as one chunk: it went to one worker while the other idled (1.0 ms against
    # 0.75 ms cut in two, measured). Cut in as many equal blocks as workers.
    for workers in (2, 3):
        sizer = measured_sizer(workers, 50e-9, 400e-6)
        assert sizer.size(10_000) >= 10_000  # what the sizer alone would do
        run = run_of(list(range(10_000)), workers, sizer)
        sizes = [len(b.args) for b in iter(run.next_block, None)]
        assert sum(sizes) == 10_000
        assert len(sizes) == workers and max(sizes) - min(sizes) < workers, sizes


def test_a_known_rest_too_small_to_pay_for_a_second_round_trip_stays_one_chunk():
    # 1,000 items of 50 ns: 25 us of work each half against 400 us of overhead.
    run = run_of(list(range(1_000)), 2, measured_sizer(2, 50e-9, 400e-6))
    assert [len(b.args) for b in iter(run.next_block, None)] == [1_000]
    # Nor without measurements.
    run = run_of(list(range(10_000)), 2, ChunkSizer(2))
    assert len(run.next_block().args) == 1  # (a sizer that measured nothing starts at 1)


def test_an_input_still_being_read_is_not_cut_evenly():
    run = run_of(list(range(50_000)))
    run.input = iter(())  # more may come: the rest is not known
    sizes = [len(b.args) for b in iter(run.next_block, None)]
    assert sizes[0] == run.sizer.max_size
    assert sum(sizes) == 50_000


def test_items_a_worker_did_not_reach_go_out_first():
    run = run_of(list(range(10)), sizer=ChunkSizer(2, fixed=4))
    first = run.next_block()
    assert first is not None and first.args == [0, 1, 2, 3]
    run.resend(2, first.args[2:])
    assert run.queued() == 8
    again = run.next_block()
    assert again is not None and (again.start, again.args) == (2, [2, 3])
    rest = [(b.start, b.args) for b in iter(run.next_block, None)]
    assert rest == [(4, [4, 5, 6, 7]), (8, [8, 9])]


def test_a_borrowed_list_is_read_never_changed():
    mine = list(range(100))
    run = RunQueue(ChunkSizer(2, fixed=10), 2, abs, None, None, False)
    run.borrowed = True
    run.add(mine)
    assert sum(len(b.args) for b in iter(run.next_block, None)) == 100
    assert mine == list(range(100))


def test_clear_drops_every_item_not_sent():
    run = run_of(list(range(10)), sizer=ChunkSizer(2, fixed=4))
    blk = run.next_block()
    assert blk is not None
    run.resend(0, blk.args)
    run.clear()
    assert run.queued() == 0 and run.next_block() is None


def items(sink: Sink, n: int, timeout: float | None = None, start: int = 0) -> list[Item]:
    return [Item(sink, start + i, abs, (i,), {}, timeout) for i in range(n)]


def test_take_chunk_sends_isolated_items_alone_and_groups_by_sink_and_timeout():
    a, b = Bin(ChunkSizer(2, fixed=100)), Bin(ChunkSizer(2, fixed=100))
    lone = items(a, 1)[0]
    lone.isolated = True
    q = collections.deque([lone, *items(a, 3), *items(b, 2), *items(b, 2, timeout=1.0)])
    dropped: list[Item] = []
    chunks = []
    while (c := take_chunk(q, collections.deque(), False, dropped.append)) is not None:
        assert isinstance(c, list)
        chunks.append(c)
    assert [len(c) for c in chunks] == [1, 3, 2, 2]
    assert chunks[0] == [lone]
    assert {it.sink for it in chunks[2]} == {b} and chunks[3][0].timeout == 1.0
    assert not dropped


def test_take_chunk_drops_settled_and_cancelled_items():
    live, gone = Bin(ChunkSizer(2, fixed=10)), Bin(ChunkSizer(2, fixed=10))
    gone.cancelled = True
    first, settled = items(live, 2)
    settled.settled = True
    q = collections.deque([*items(gone, 2), first, settled])
    dropped: list[Item] = []
    chunk = take_chunk(q, collections.deque(), False, dropped.append)
    assert chunk == [first]
    assert len(dropped) == 3 and not q


def test_take_chunk_waits_for_a_full_chunk_while_every_worker_is_busy():
    sink = Bin(ChunkSizer(2, fixed=4))
    q = collections.deque(items(sink, 3))
    assert take_chunk(q, collections.deque(), True, lambda it: None) is None
    assert len(q) == 3
    q.extend(items(sink, 1, start=3))
    chunk = take_chunk(q, collections.deque(), True, lambda it: None)
    assert isinstance(chunk, list) and len(chunk) == 4


def test_take_chunk_serves_single_items_first_then_runs_in_turn():
    r1 = run_of(list(range(8)), sizer=ChunkSizer(2, fixed=2))
    r2 = run_of(list(range(8)), sizer=ChunkSizer(2, fixed=2))
    runs: collections.deque[RunQueue] = collections.deque([r1, r2])
    r1.active = r2.active = True
    q = collections.deque(items(Bin(ChunkSizer(2, fixed=5)), 1))
    got = [take_chunk(q, runs, False, lambda it: None) for _ in range(5)]
    assert isinstance(got[0], list)
    assert [b.run for b in got[1:] if isinstance(b, Block)] == [r1, r2, r1, r2]
    while take_chunk(q, runs, False, lambda it: None) is not None:
        pass
    assert not runs and not r1.active and not r2.active


def test_a_chunk_timeout_allows_one_item_plus_the_expected_work():
    sizer = ChunkSizer(2)
    assert chunk_timeout(sizer, None, 10) is None
    assert chunk_timeout(sizer, 5.0, 1) == 5.0
    sizer.observe(10, 0.01, 0.011)  # 1 ms an item
    t = chunk_timeout(sizer, 5.0, 100)
    assert t is not None and 5.0 < t < 5.0 + 4 * 0.2 + 1.0 + 1e-9


def test_inputs_are_shaped_as_multiprocessing_does():
    assert positional_chunksize(([1, 2], 10), None) == (([1, 2],), 10)
    assert positional_chunksize(([1, 2], [3, 4]), None) == (([1, 2], [3, 4]), None)
    mine = [1, 2]
    assert map_items((mine,)) == (mine, False, True)
    assert map_items(([1, 2], "ab")) == ([(1, "a"), (2, "b")], True, False)
    assert input_length(([1, 2, 3], "ab")) == 2
    assert input_length((iter([]),)) is None


def test_a_range_is_kept_a_range_and_cut_into_ranges():
    # map(f, range(10**7)) neither builds ten million ints nor pickles them: its
    # chunks are ranges, a few bytes each, whatever their length.
    r = range(3, 1_000_003, 2)
    items, star, borrowed = map_items((r,))
    assert items is r and not star and borrowed
    run = RunQueue(ChunkSizer(2, fixed=4_096), 2, abs, None, None, False)
    run.borrowed = borrowed
    run.add(items)
    blocks = list(iter(run.next_block, None))
    assert all(type(b.args) is range for b in blocks)
    assert [x for b in blocks for x in b.args] == list(r)
    assert [b.start for b in blocks] == list(range(0, len(r), 4_096))
    # A range is never extended in place: more items make a list of the rest.
    run = RunQueue(ChunkSizer(2, fixed=3), 2, abs, None, None, False)
    run.borrowed = True
    run.add(range(5))
    first = run.next_block()
    assert first is not None and first.args == range(0, 3)
    run.add([7, 8])
    rest = [(b.start, list(b.args)) for b in iter(run.next_block, None)]
    assert rest == [(3, [3, 4, 7]), (6, [8])]
