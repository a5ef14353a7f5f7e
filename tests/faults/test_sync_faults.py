"""The process primitives under interrupts: a KeyboardInterrupt that lands right
after a primitive's internal mutex was taken must not keep it (every other
process's acquire, set or release waited on it for good)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import polytask as pt
from helpers import flood_sigint

SRC = str(Path(__file__).resolve().parents[2] / "src")
HANG = 30.0  # a bound for "does not hang", never a speed check

CAUGHT_INTERRUPTS = """
import pickle, signal, sys, time
lock, sem, ev, cond = pickle.loads(bytes.fromhex(sys.argv[1]))
armed = False
def interrupt(*_):
    if armed:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
print("go", flush=True)
end = time.monotonic() + 0.8
while time.monotonic() < end:
    for step in (
        lambda: lock.acquire(timeout=1) and lock.release(),
        lambda: sem.acquire(timeout=1) and sem.release(),
        lambda: (ev.set(), ev.wait(0), ev.clear()),
        lambda: cond.acquire(timeout=1) and (cond.notify(), cond.wait(0), cond.release()),
    ):
        try:
            armed = True
            step()
            armed = False
        except BaseException:
            armed = False
            # What the interrupted step left held at its level (like a threading.Lock
            # acquired just before a Ctrl-C) is the caller's; let it go here, so that
            # only the internal mutexes are in question.
            for held in (lock, cond):
                try:
                    held.release()
                except BaseException:
                    pass
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("idle", flush=True)
time.sleep(600)
"""


def test_interrupts_caught_around_process_primitives_keep_no_internal_mutex():
    prims = (
        pt.Lock(backend="process"),
        pt.Semaphore(100, backend="process"),
        pt.Event(backend="process"),
        pt.Condition(backend="process"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", CAUGHT_INTERRUPTS, pickle.dumps(prims).hex()],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdout=subprocess.PIPE,
        text=True,
    )
    # A kept mutex hangs the child itself (its clean-up waits on it): not the suite.
    watchdog = threading.Timer(20.0, proc.kill)
    watchdog.start()
    try:
        assert flood_sigint(proc).strip() == "idle"
        for prim in prims:
            mutex = prim._sh.mutex  # the internal one: free unless the idle process kept it
            try:
                mutex.acquire(time.monotonic() + 1.0)
            except TimeoutError:
                pytest.fail(f"the idle process kept {type(prim).__name__}'s internal mutex")
            mutex.release()
        assert prims[2].wait(0) in (True, False)  # and each still works
        assert prims[1].acquire(timeout=HANG)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.communicate(timeout=HANG)


def test_a_forked_child_unlocks_what_it_locked():
    # The C let-go keeps the thread's id (gettid is a system call); a fork's child
    # has a new one. Kept stale, the child's unlock found "not mine" and kept the
    # primitive's internal mutex.
    lock = pt.Lock(backend="process")
    lock.acquire()
    lock.release()  # the parent's id is kept now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = False
        try:
            ok = lock.acquire(timeout=2)
            lock.release()
            ok = ok and lock.acquire(timeout=2)
            lock.release()
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.acquire(timeout=HANG)
    lock.release()
