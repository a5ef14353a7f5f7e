"""The one home of ``timeout=``: every blocking call in polytask validates it here.

The rules, the same everywhere (a test runs each public blocking call through them):

- ``None`` means no limit; so does ``float("inf")`` (and anything at least
  ``threading.TIMEOUT_MAX``): never an OverflowError from a wait.
- ``0`` means "do not wait": the call does what it can at once, or times out.
- Any real number is seconds: an int, a float, a ``Fraction``, a numpy scalar
  (``numbers.Real``).
- A negative number or NaN is a ``ValueError`` (``acquire(timeout=-1)`` too:
  ``threading``'s spelling of "forever" is ``None`` or ``inf`` here); anything but a real number
  (``bool`` included, a string, a ``timedelta``, a ``Decimal``) is a ``TypeError``.
- A finite timeout longer than ``poll()`` can wait (a C int of milliseconds:
  24.8 days) still works: each wait in ``poll()`` is cut to :func:`poll_ms`, and
  the caller re-checks its deadline and polls again.
"""

from __future__ import annotations

import numbers
import threading
import time
from typing import overload

__all__ = [
    "FOREVER",
    "POLL_MAX_MS",
    "acquire_timeout",
    "check_timeout",
    "deadline",
    "poll_ms",
    "remaining",
]

# At least this long is no limit (threading's waits overflow beyond it).
FOREVER = _MAX = threading.TIMEOUT_MAX

# poll() and epoll take a C int of milliseconds: more is an OverflowError.
POLL_MAX_MS = 2**31 - 1


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """Validate a ``timeout=`` argument: the number of seconds as a float, or None for no limit."""
    if timeout is None:
        return None
    # numbers.Real, not (int, float): a Fraction or numpy.float32 is seconds too. Decimal
    # is not a Real (the numeric tower keeps it apart), nor is bool meant as seconds.
    # float and int first: channel puts and gets check every timeout they are given.
    kind = type(timeout)
    if (
        kind is not float
        and kind is not int
        and (kind is bool or not isinstance(timeout, numbers.Real))
    ):
        hint = ""
        if not isinstance(timeout, bool) and hasattr(type(timeout), "__float__"):
            hint = " (float() converts it)"
        raise TypeError(
            f"{what} must be a real number of seconds or None, "
            f"not {type(timeout).__name__} {timeout!r}{hint}"
        )
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


@overload
def poll_ms(ms: int) -> int: ...
@overload
def poll_ms(ms: None) -> None: ...
def poll_ms(ms: int | None) -> int | None:
    """A ``poll()`` timeout in milliseconds cut to what poll can take (None: no limit).

    A longer wait returns early with no events: callers loop on their deadline."""
    return None if ms is None else min(ms, POLL_MAX_MS)


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
