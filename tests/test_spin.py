"""SpinChoice: whether to spin is measured both ways, and the cheaper way wins."""

from __future__ import annotations

import pytest

from polytask._ipc.spin import SPIN_MAX, SpinChoice

pytestmark = pytest.mark.skipif(not SPIN_MAX, reason="one usable core: never spins")

#: The waits of the first two epochs, which measure both ways.
WARMUP = SpinChoice.EPOCH + SpinChoice.EXPLORE_EPOCH
#: Waits in one cycle of epochs (EXPLORE - 1 epochs the best way, one exploring).
CYCLE = (SpinChoice.EXPLORE - 1) * SpinChoice.EPOCH + SpinChoice.EXPLORE_EPOCH


def feed(choice: SpinChoice, spin_cost: float, block_cost: float, waits: int) -> list[bool]:
    """Make ``waits`` waits, each costing what its way costs; the way of each."""
    ways = []
    for _ in range(waits):
        ways.append(choice.spin)
        choice.record(spin_cost if choice.spin else block_cost)
    return ways


def test_spinning_is_dropped_when_it_makes_waits_slower():
    # A busy machine: the spinner keeps its peer off the core (200 us vs 10 us).
    ways = feed(SpinChoice(), 200e-6, 10e-6, WARMUP + 4 * CYCLE)
    assert ways[0] and not ways[SpinChoice.EPOCH]  # both ways measured first
    assert ways[: SpinChoice.EPOCH].count(True) == SpinChoice.EPOCH
    later = ways[WARMUP:]
    # Only the exploring epochs spin.
    assert 0 < sum(later) <= 4 * SpinChoice.EXPLORE_EPOCH


def test_no_blocking_wait_while_spinning_pays():
    # Spinning pays (a quiet machine): blocking waits are the slow ones; tried
    # 32 in 512 to keep their cost current, they were the p99 of every latency.
    # The first measure of blocking is short (a benchmark's warm-up hides it).
    ways = feed(SpinChoice(), 10e-6, 60e-6, WARMUP + 10 * CYCLE)
    assert ways[WARMUP:].count(False) == 0
    assert ways[:WARMUP].count(False) == SpinChoice.EXPLORE_EPOCH


def test_spinning_is_kept_when_it_pays_and_retried_when_the_load_changes():
    choice = SpinChoice()
    ways = feed(choice, 10e-6, 60e-6, WARMUP + 2 * CYCLE)
    assert ways[WARMUP:].count(False) <= 2 * SpinChoice.EXPLORE_EPOCH
    # The machine gets busy: spinning now costs more, and it is given up.
    ways = feed(choice, 300e-6, 60e-6, 3 * CYCLE)
    # (at most the exploring epochs still spin)
    assert sum(ways[-2 * CYCLE :]) <= 2 * SpinChoice.EXPLORE_EPOCH


def test_a_tie_does_not_spin():
    ways = feed(SpinChoice(), 50e-6, 50e-6, WARMUP + 2 * CYCLE)
    assert sum(ways[WARMUP:]) <= 2 * SpinChoice.EXPLORE_EPOCH


def test_a_stale_blocking_cost_does_not_keep_a_spin_that_runs_out_its_budget():
    # Blocking was measured once, in a short noisy epoch (800 us); then the
    # machine got busy and each spin runs out its whole budget (150 us, the
    # peer off the core) while blocking now costs 20 us. Spinning, which wins
    # against the stale figure and never re-measures blocking, was kept for
    # good: slower than a blocking read, on a busy machine, for the process's life.
    choice = SpinChoice()
    feed(choice, 5e-6, 800e-6, WARMUP)
    assert choice.spin
    ways = feed(choice, 150e-6, 20e-6, 3 * CYCLE)
    assert sum(ways[-2 * CYCLE :]) <= 2 * SpinChoice.EXPLORE_EPOCH


def test_spinning_that_pays_is_not_interrupted_when_waits_include_a_slow_write():
    # The cost recorded is the wait plus the request's write (the process backend
    # adds it). A spin that catches its reply, on a slow write, can cost more than
    # SPIN_MAX in all: that is no sign that spinning caught nothing. (Taken for
    # one, it tried blocking 200 waits in 1,800 while spinning clearly paid.)
    ways = feed(SpinChoice(), 110e-6, 170e-6, WARMUP + 2 * CYCLE)
    assert ways[WARMUP:].count(False) == 0


def test_a_stale_blocking_cost_does_not_keep_a_spin_that_no_longer_pays():
    # Blocking measured once, noisy (800 us); later spinning costs 80 us (it catches
    # its reply, late) and blocking 20 us. Below SPIN_MAX, and no spin runs out:
    # only the rise of spinning's cost since blocking was measured shows it.
    choice = SpinChoice()
    feed(choice, 5e-6, 800e-6, WARMUP)
    ways = feed(choice, 80e-6, 20e-6, 3 * CYCLE)
    assert sum(ways[-2 * CYCLE :]) <= 2 * SpinChoice.EXPLORE_EPOCH


def test_spins_that_run_out_their_budget_have_blocking_measured_again():
    # Spinning cost 50 us when blocking was measured (800 us, stale); now every
    # spin runs out its budget and the reply comes after a sleep, 90 us in all:
    # not twice the old cost, but spinning caught nothing.
    choice = SpinChoice()
    feed(choice, 50e-6, 800e-6, WARMUP)
    ways = []
    for _ in range(3 * CYCLE):
        ways.append(choice.spin)
        choice.record(90e-6 if choice.spin else 20e-6, vain=choice.spin)
    assert sum(ways[-2 * CYCLE :]) <= 2 * SpinChoice.EXPLORE_EPOCH
