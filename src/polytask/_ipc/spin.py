"""Spin before sleeping: the policy the channels and the process backend share.

Waking a sleeping process costs 5 to 30 us (more on a virtual machine whose
idle CPU must be woken too), longer than a small item or a tiny task takes to
come back. So a side that waits polls first, for a budget that adapts: back to
``SPIN_MAX`` when the sleep that followed a failed spin was short (a little
more spinning would have caught it: the peer runs), halved down to
``SPIN_MIN`` when it was long (the peer is idle or the machine busy, and
spinning only burns a core). With one usable core, never: the spinner would
only delay its own peer.

Whether to spin at all is measured, not guessed (:class:`SpinChoice`): on a
machine whose cores are taken by other processes, a spinner keeps its own
peer off the core it needs, and a round trip that takes 10 us with both ends
asleep took 200 us with both ends spinning. So the waits are timed in epochs,
each epoch spinning or not, and the cheaper way wins, the other being tried
again now and then (the machine's load changes).
"""

from __future__ import annotations

from .._os.proc import usable_cpus

__all__ = ["SPIN_MAX", "SPIN_MIN", "SpinChoice", "after_sleep"]

SPIN_MAX = 100e-6 if usable_cpus() > 1 else 0.0
SPIN_MIN = 2e-6 if SPIN_MAX else 0.0


def after_sleep(budget: float, slept: float) -> float:
    """The next spin budget, after a spin that failed and a sleep of ``slept`` seconds."""
    return SPIN_MAX if slept < SPIN_MAX else max(SPIN_MIN, budget / 2)


class SpinChoice:
    """Whether spinning pays here now, decided by timing the waits both ways.

    ``spin`` is the current way; :meth:`record` takes each wait's seconds. Every
    ``EPOCH`` waits, the epoch's median is kept as that way's cost and the
    cheaper way is chosen for the next epoch; spinning must win clearly (it
    burns a core while it waits). While blocking wins, every ``EXPLORE``-th
    epoch spins for ``EXPLORE_EPOCH`` waits, to notice when spinning pays again.
    While spinning wins, blocking is never tried: its waits are the slow ones,
    and trying it 32 waits in 512 was the whole 2-3x rise of the latency p99
    (the A/B against the pre-redesign tree found it). Its cost is taken again
    when spinning stops paying, which the spin epochs themselves measure, and
    again, in a short epoch, after a spinning epoch in which most spins ran out
    their budget (spinning caught nothing) or whose cost rose past twice what
    it was when blocking was last measured: a blocking cost from long ago (one
    noisy epoch) must not keep a spin that no longer pays. The first blocking
    epoch, which measures that way at all, is as short.
    """

    EPOCH = 32
    EXPLORE = 32
    EXPLORE_EPOCH = 4

    __slots__ = (
        "_block_cost",
        "_epochs",
        "_exploring",
        "_samples",
        "_spin_cost",
        "_spin_then",
        "_vain",
        "spin",
    )

    def __init__(self) -> None:
        self.spin = bool(SPIN_MAX)
        self._samples: list[float] = []
        self._spin_cost: float | None = None
        self._block_cost: float | None = None
        self._spin_then: float | None = None  # the spin cost when blocking was measured
        self._vain = 0  # this epoch's spins that ran out their budget
        self._epochs = 0
        self._exploring = False

    def record(self, seconds: float, vain: bool = False) -> None:
        """One wait of ``seconds``, made the current way; ``vain``: a spin that ran
        out its budget before the reply came (it then slept)."""
        samples = self._samples
        samples.append(seconds)
        self._vain += vain
        if len(samples) < (self.EXPLORE_EPOCH if self._exploring else self.EPOCH):
            return
        self._samples = []
        vain_spins, self._vain = self._vain, 0
        cost = sorted(samples)[len(samples) // 2]
        spun, explored = self.spin, self._exploring
        if spun:
            self._spin_cost = cost
        else:
            self._block_cost = cost
            self._spin_then = self._spin_cost
        self._epochs += 1
        if self._spin_cost is None or self._block_cost is None:
            self.spin = self._spin_cost is None and bool(SPIN_MAX)  # measure both first
            self._exploring = not self.spin
            return
        if (
            spun
            and not explored
            and (
                2 * vain_spins > len(samples)
                or (self._spin_then is not None and cost > 2 * self._spin_then)
            )
        ):
            # Spinning caught nothing in the typical wait, or costs far more than when
            # blocking was last measured: blocking's figure may be one noisy epoch
            # from long ago. It is measured again, briefly, before it decides. Kept
            # as it was, a stale high figure kept this spinning for the process's life.
            self.spin = False
            self._exploring = True
            return
        best = self._spin_cost < 0.9 * self._block_cost
        self._exploring = not best and self._epochs % self.EXPLORE == 0
        self.spin = best or self._exploring
