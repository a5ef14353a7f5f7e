"""One progress bar for the Pool, ``run_many`` and ``polytask parallel``.

rich draws it on stderr; it is imported only when a bar is shown, so the
command line and ``import polytask`` stay fast. Redraws are throttled to
``INTERVAL`` from the caller's thread, so a map of millions of tiny tasks pays
one clock read per batch of results, not a redraw per item.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["INTERVAL", "Progress", "want_progress"]

INTERVAL = 0.1


def want_progress(progress: bool | str | None) -> bool:
    """``True``: a bar when stderr is a terminal; ``"force"``: always; ``False``: never."""
    if progress == "force":
        return True
    if progress is True:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):  # stderr closed or replaced
            return False
    if progress is False or progress is None:
        return False
    raise ValueError(f"progress must be True, False or 'force', got {progress!r}")


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s")

    return RateColumn()


class Progress:
    """A bar with count, percentage, rate, elapsed time and ETA, on stderr."""

    def __init__(self, description: str, total: int | None, *, ticker: bool = True) -> None:
        """``ticker=False``: no refresh thread; the caller calls :meth:`update` at
        least every ``INTERVAL``, results or not (a map's waiting loop does). That
        saves starting a thread, which costs a millisecond or more while the pool's
        own threads hold the GIL: a few per cent of a short map."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _rate_column(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
            auto_refresh=ticker,
        )
        self._draw = not ticker
        # The task is added before the display starts, and the start draws
        # nothing: the bar is drawn within its first tenth of a second (by rich's
        # refresh thread, or by the caller's update), and close() draws the final
        # count. A map shorter than that pays one drawing (about a millisecond),
        # not one each for start, add_task, the first update and stop.
        self._id = self._bar.add_task(description, total=total)
        self._bar.live.start(refresh=False)
        self._done = 0
        self._last = time.monotonic()

    def update(self, completed: int, *, force: bool = False) -> None:
        """Show ``completed`` items done (redrawn at most every ``INTERVAL``)."""
        self._done = completed
        now = time.monotonic()
        if force or now - self._last >= INTERVAL:
            self._last = now
            self._bar.update(self._id, completed=completed, refresh=self._draw)

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.update(self._done + n)

    def close(self, completed: int | None = None) -> None:
        """Draw the final count and stop the bar."""
        self._bar.update(self._id, completed=self._done if completed is None else completed)
        self._bar.stop()
