"""The one kill policy's signals: SIGTERM now, SIGKILL when the grace is over.

Standard library only, so that the guardian (run with ``python -S``, importing
nothing of polytask's state) ends what its owner left with the same steps as
:mod:`polytask._os.proc`, which builds the blocking and reaping forms on it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

__all__ = ["DEFAULT_GRACE", "Ending", "TermSeq", "signal_group", "signal_one"]

#: Seconds between SIGTERM and SIGKILL when polytask ends a process tree.
DEFAULT_GRACE = 0.5


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if nothing of it is left (or not ours)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_one(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


#: A termination sequence: (signal, seconds to wait for an exit after it) pairs.
TermSeq = Sequence[tuple[int, float]]


class Ending:
    """The kill policy without blocking, for code that waits in its own loop.

    Made: SIGTERM to the group ``pgid`` (or, without ``group``, the one process)
    now, and :attr:`kill_at`, the monotonic time at which the grace is over.
    The owner's loop wakes at ``kill_at`` and calls :meth:`step`, which sends
    SIGKILL once the grace is over; :meth:`kill` cuts the grace short. Either
    way the owner reaps the leader itself (its pidfd, its waitpid) and then
    calls :func:`release_group`. :func:`terminate` is the blocking form.

    ``steps`` replaces the first part, SIGTERM and ``grace``, by a sequence of
    signals each followed by a wait (GNU parallel's ``--termseq``): the first
    is sent now, each next one when the wait before it is over (:attr:`kill_at`
    is then the time of the next signal). SIGKILL still ends the policy once
    the last wait is over, so that nothing outlives it, whatever the sequence.
    """

    __slots__ = ("_steps", "group", "kill_at", "killed", "pgid")

    def __init__(
        self,
        pgid: int,
        grace: float = DEFAULT_GRACE,
        *,
        group: bool = True,
        now: float | None = None,
        steps: TermSeq | None = None,
    ) -> None:
        self.pgid = pgid
        self.group = group
        self.killed = False
        self._steps = list(steps) if steps else [(signal.SIGTERM, grace)]
        self._steps.reverse()  # popped from the end
        self.kill_at = time.monotonic() if now is None else now
        self._next(self.kill_at)

    def _next(self, now: float) -> None:
        """Send the next signal of the sequence (SIGKILL after the last) and set its wait."""
        if not self._steps:
            self.kill()
            return
        sig, wait = self._steps.pop()
        if sig == signal.SIGKILL:
            self.kill()
        else:
            (signal_group if self.group else signal_one)(self.pgid, sig)
        self.kill_at = now + wait

    def step(self, now: float) -> bool:
        """Send the next signal if its time has come at ``now``; True once SIGKILL was sent."""
        while not self.killed and now >= self.kill_at:  # a wait of 0: the next one too
            self._next(now)
        return self.killed

    def kill(self) -> None:
        """End the grace now: SIGKILL (once)."""
        if not self.killed:
            self.killed = True
            (signal_group if self.group else signal_one)(self.pgid, signal.SIGKILL)
