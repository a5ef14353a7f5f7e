"""The adaptive chunk-size controller, alone (pure arithmetic, no processes)."""

from __future__ import annotations

import pytest

from polytask._pool.chunking import ChunkSizer


def test_starts_at_one_and_fixed_size_wins():
    assert ChunkSizer(4).size(10_000) == 1
    s = ChunkSizer(4, fixed=7)
    s.observe(7, 0.0001, 0.01)
    assert s.size(3) == 7


def test_tiny_tasks_grow_to_large_chunks_within_growth_limit():
    s = ChunkSizer(2, growth=16)
    s.observe(1, 1e-6, 1e-4)  # 1 us of work, 100 us round trip
    assert s.size(1_000_000) == 16  # capped by growth over the largest chunk seen
    for _ in range(5):
        s.observe(s.size(1_000_000), s.size(1_000_000) * 1e-6, 1e-4 + s.size(1_000_000) * 1e-6)
    assert 1500 <= s.size(1_000_000) <= 2500  # 100 us at 5 % -> 2 ms of 1 us items
    s.observe(2000, 2000 * 1e-7, 1e-4 + 2000 * 1e-7)  # items got 10x cheaper
    assert s.size(1_000_000) <= s.max_size
    # overhead 100 us at 5 % -> 2 ms chunks -> 2000 items of 1 us, unless max_size is lower
    s2 = ChunkSizer(2, max_size=10**9, growth=10**9)
    s2.observe(1000, 1e-3, 1.1e-3)
    assert 1500 <= s2.size(10**9) <= 2500


def test_slow_tasks_are_never_batched():
    s = ChunkSizer(2)
    s.observe(1, 0.5, 0.5002)
    assert s.size(40) == 1
    s.observe(1, 0.05, 0.0502)
    assert s.size(40) == 1


def test_slow_dispatch_batches_more():
    fast, slow = ChunkSizer(2, growth=1e9), ChunkSizer(2, growth=1e9)
    fast.observe(10, 0.001, 0.0011)  # 0.1 ms round trip
    slow.observe(10, 0.001, 0.011)  # 10 ms round trip (a cluster)
    assert slow.size(10**6) > 5 * fast.size(10**6)
    assert slow.target_seconds() <= slow.max_seconds


def test_chunks_shrink_as_the_input_drains():
    s = ChunkSizer(2, growth=1e9)
    s.observe(100, 0.01, 0.0102)  # 0.1 ms per item, 0.2 ms overhead -> 4 ms target, 40 items
    assert s.size(10_000) == 40
    assert s.size(40) == 10  # a quarter each for 2 workers x 2
    assert s.size(4) == 8  # never below the overhead floor (4 x 0.2 ms / 0.1 ms)
    s_slow = ChunkSizer(2, growth=1e9)
    s_slow.observe(10, 0.1, 0.1002)  # 10 ms items: floor is < 1 item
    assert s_slow.size(3) == 1


def test_estimates_follow_changes_smoothly():
    s = ChunkSizer(1)
    s.observe(10, 0.01, 0.011)
    first = s.per_item
    s.observe(10, 1.0, 1.001)
    assert first is not None and s.per_item is not None
    assert first < s.per_item < 0.1
    assert s.expected_seconds(10) == pytest.approx(10 * s.per_item)


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        ChunkSizer(0)
    with pytest.raises(ValueError, match="chunksize"):
        ChunkSizer(2, fixed=0)
    s = ChunkSizer(2)
    s.observe(0, 1.0, 1.0)  # ignored
    assert s.per_item is None
