"""Debugging aids.

``pt.debug.lock_order_checking()`` (or ``POLYTASK_DEBUG_LOCKS=1`` in the
environment) makes every polytask lock report the order in which threads take
them, and raises :class:`polytask.PotentialDeadlock` when two orders conflict,
before any thread blocks. See ``docs/channels.md``.
"""

from __future__ import annotations

from ._core.debug import LockOrderChecking as LockOrderChecking
from ._core.debug import lock_order_checking as lock_order_checking

__all__ = ["LockOrderChecking", "lock_order_checking"]
