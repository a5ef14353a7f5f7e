"""SpinChoice: whether to spin is measured both ways, and the cheaper way wins."""

from __future__ import annotations

import pytest

from polytask._ipc.spin import SPIN_MAX, SpinChoice

pytestmark = pytest.mark.skipif(not SPIN_MAX, reason="one usable core: never spins")


def feed(choice: SpinChoice, spin_cost: float, block_cost: float, epochs: int) -> list[bool]:
    ways = []
    for _ in range(epochs):
        ways.append(choice.spin)
        cost = spin_cost if choice.spin else block_cost
        for _ in range(SpinChoice.EPOCH):
            choice.record(cost)
    return ways


def test_spinning_is_dropped_when_it_makes_waits_slower():
    # A busy machine: the spinner keeps its peer off the core (200 us vs 10 us).
    ways = feed(SpinChoice(), 200e-6, 10e-6, 4 * SpinChoice.EXPLORE)
    assert ways[:2] == [True, False]  # both ways measured first
    later = ways[2:]
    # Only the exploring epochs spin: never more than one in EXPLORE.
    assert sum(later) <= len(later) // SpinChoice.EXPLORE + 1


def test_spinning_is_kept_when_it_pays_and_retried_when_the_load_changes():
    choice = SpinChoice()
    ways = feed(choice, 10e-6, 60e-6, 2 * SpinChoice.EXPLORE)
    assert sum(ways[2:]) >= len(ways[2:]) - 2  # spins but for the exploring epochs
    # The machine gets busy: spinning now costs more, and it is given up.
    ways = feed(choice, 300e-6, 60e-6, 3 * SpinChoice.EXPLORE)
    assert not any(ways[-SpinChoice.EXPLORE + 1 :])


def test_a_tie_does_not_spin():
    ways = feed(SpinChoice(), 50e-6, 50e-6, 2 * SpinChoice.EXPLORE)
    assert sum(ways[2:]) <= 2
