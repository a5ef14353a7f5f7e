"""A process channel's big put interrupted between taking the commit's lock and
the ``try`` that releases it (where a signal handler's KeyboardInterrupt can land)."""

from __future__ import annotations

from helpers import run_python

_BIG_PUT_INTERRUPTED_AT_COMMIT = """
import os
import polytask as pt
from polytask._ipc import channel as C

take = C.ProcessChannel._lock_p
armed = True

def lock_p(self, deadline, *args, **kwargs):
    # The commit's lock (no deadline: the reserve's had one), then the interrupt,
    # before the try that would release it: the window a signal handler can hit.
    global armed
    take(self, deadline, *args, **kwargs)
    if deadline is None and armed:
        armed = False
        raise KeyboardInterrupt

C.ProcessChannel._lock_p = lock_p
ch = pt.Channel(backend="process")
try:
    ch.put(os.urandom(3_000_000), timeout=30)
except KeyboardInterrupt:
    pass
C.ProcessChannel._lock_p = take
ch.put(b"next", timeout=5)
print(ch.get(timeout=5))
ch.close()
"""


def test_a_big_put_interrupted_holding_the_commit_lock_lets_it_go_before_withdrawing():
    # The handler of a big put withdrew its frame under the producer mutex, which
    # the interrupt had left held by this very thread: it waited for itself for
    # good (the outer handler that lets go of it runs after).
    out = run_python(_BIG_PUT_INTERRUPTED_AT_COMMIT, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["b'next'"]
