"""Spin before sleeping: the policy the channels and the process backend share.

Waking a sleeping process costs 5 to 30 us (more on a virtual machine whose
idle CPU must be woken too), longer than a small item or a tiny task takes to
come back. So a side that waits polls first, for a budget that adapts: back to
``SPIN_MAX`` when the sleep that followed a failed spin was short (a little
more spinning would have caught it: the peer runs), halved down to
``SPIN_MIN`` when it was long (the peer is idle or the machine busy, and
spinning only burns a core). With one usable core, never: the spinner would
only delay its own peer.
"""

from __future__ import annotations

from .._os.proc import usable_cpus

__all__ = ["SPIN_MAX", "SPIN_MIN", "after_sleep"]

SPIN_MAX = 100e-6 if usable_cpus() > 1 else 0.0
SPIN_MIN = 2e-6 if SPIN_MAX else 0.0


def after_sleep(budget: float, slept: float) -> float:
    """The next spin budget, after a spin that failed and a sleep of ``slept`` seconds."""
    return SPIN_MAX if slept < SPIN_MAX else max(SPIN_MIN, budget / 2)
