"""The one home of ``timeout=``: every blocking call in polytask validates it here.

The rules, the same everywhere (a test runs each public blocking call through them):

- ``None`` means no limit; so does ``float("inf")`` (and anything at least
  ``threading.TIMEOUT_MAX``): never an OverflowError from a wait.
- ``0`` means "do not wait": the call does what it can at once, or times out.
- A negative number or NaN is a ``ValueError`` (``acquire(timeout=-1)`` too:
  ``threading``'s spelling of "forever" is ``None`` or ``inf`` here); anything but a real number
  (``bool`` included, a string, a ``timedelta``) is a ``TypeError``.
"""

from __future__ import annotations

import threading
import time

__all__ = ["acquire_timeout", "check_timeout", "deadline", "remaining"]

_MAX = threading.TIMEOUT_MAX


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """Validate a ``timeout=`` argument: the number of seconds as a float, or None for no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0 or timeout != timeout:
        raise ValueError(f"{what} must be >= 0 seconds (or None for no limit), got {timeout!r}")
    if timeout >= _MAX:
        return None  # float("inf") and the like: no limit
    return float(timeout)


def deadline(timeout: float | None, what: str = "timeout") -> float | None:
    """The ``time.monotonic()`` at which ``timeout`` ends (None: never), validated."""
    timeout = check_timeout(timeout, what)
    return None if timeout is None else time.monotonic() + timeout


def remaining(when: float | None) -> float | None:
    """Seconds left until the :func:`deadline` ``when`` (at least 0; None: no limit)."""
    return None if when is None else max(0.0, when - time.monotonic())


def acquire_timeout(blocking: bool, timeout: float | None) -> float | None:
    """Validate ``acquire(blocking, timeout)`` as ``threading.Lock`` does: 0.0 when not
    blocking (a timeout then is a ValueError), else :func:`check_timeout`.

    ``threading``'s ``timeout=-1`` ("forever") is a ValueError here like every
    negative timeout: one rule everywhere; ``None`` or ``inf`` say "no limit"."""
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    return check_timeout(timeout)
