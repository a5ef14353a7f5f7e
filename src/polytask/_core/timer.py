"""One timer thread per process for every deadline polytask keeps.

Task timeouts, group deadlines and the SIGKILL that follows a SIGTERM's grace
all go through :func:`call_later`, so a thousand tasks with timeouts cost one
thread and a heap, not a thousand ``threading.Timer`` threads.
"""

from __future__ import annotations

import heapq
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["TimerHandle", "call_later"]

# Longer than any real deadline, and well inside what Condition.wait accepts.
_FAR = 86400.0 * 365


class TimerHandle:
    """A scheduled call; ``cancel()`` makes it a no-op (it stays in the heap until due)."""

    __slots__ = ("_cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], object]):
        self.when = when
        self.fn = fn
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        # The callback often holds a task and its result: let them go now, not at
        # the deadline (which may be hours away).
        self.fn = _noop


def _noop() -> None:
    return None


class _TimerThread:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + min(max(0.0, delay), _FAR), fn)
        with self._cond:
            if len(self._heap) > 1024 and self._cancelled_share() > 0.5:
                # Mostly cancelled handles (tasks that finished in time): compact.
                self._heap = [e for e in self._heap if not e[2]._cancelled]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="polytask-timer", daemon=True)
                try:
                    thread.start()
                except RuntimeError:
                    # Python 3.12+ starts no thread once the interpreter shuts down
                    # (gh-104690): a deadline set by an atexit hook (the SIGKILL after
                    # a SIGTERM's grace) cannot be kept; the guardian, which ends what
                    # an exited owner left, keeps it instead.
                    return handle
                self._thread = thread
            elif self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _cancelled_share(self) -> float:
        # Sampled, so that compaction stays cheap to decide.
        sample = self._heap[:: max(1, len(self._heap) // 64)]
        return sum(e[2]._cancelled for e in sample) / len(sample)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, handle = self._heap[0]
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(min(delay, _FAR))
            if handle._cancelled:
                continue
            try:
                handle.fn()
            except BaseException as exc:  # a timer callback must never kill the timer
                print(f"polytask: error in timer callback {handle.fn!r}: {exc!r}", file=sys.stderr)

    def _after_fork(self) -> None:
        self.__init__()  # type: ignore[misc]


_timer = _TimerThread()
os.register_at_fork(after_in_child=_timer._after_fork)


def call_later(delay: float, fn: Callable[[], object]) -> TimerHandle:
    """Call ``fn()`` on the timer thread after ``delay`` seconds; it must not block."""
    return _timer.call_later(delay, fn)
