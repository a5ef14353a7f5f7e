"""Work a finalizer hands to a thread of its own.

The garbage collector runs a finalizer wherever it is due: inside a section of
the thread it interrupts, under any lock held there (a pool's, a pipeline's).
A finalizer whose clean-up takes such locks hands it to a new thread, which
waits for them as any other thread would, instead of waiting in the thread
that holds them.

Not at interpreter exit: once the interpreter finalizes (its last collections
free what was left in cycles), no new thread ever runs, and ``Thread.start()``
waits for it for ever (Python 3.11) or raises (3.12 and later). The exit hooks
have done that clean-up by then (pools terminated, workers reaped).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

__all__ = ["start_thread"]


def start_thread(
    target: Callable[[], object],
    name: str,
    *,
    _finalizing: Callable[[], bool] = sys.is_finalizing,
    _thread: type[threading.Thread] = threading.Thread,
) -> bool:
    """Run ``target`` in a new daemon thread; False (and nothing started) if the
    interpreter is exiting and no thread can start."""
    # Bound at import: late in the exit, module globals may be None already.
    if _finalizing():
        return False
    try:
        _thread(target=target, name=name, daemon=True).start()
    except RuntimeError:  # Python 3.12+: "can't create new thread at interpreter shutdown"
        return False
    return True
