"""One contract for the synchronisation primitives, run on every backend.

Each test runs its "other side" as an *actor*: a thread for the thread
backend, and for the process backend a fresh Python process (not a fork) that
unpickles the function and its arguments (the primitives among them) from
stdin, exactly as a warm worker of the process backend receives them.
Later backends (dask, ray) add themselves to ``BACKENDS``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

import polytask as pt
from helpers import open_fds, wait_until
from polytask._core.primitives import BrokenBarrierError, make_primitive
from polytask._os import proc as _proc

BACKENDS = ["thread", "process"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
HANG = 30.0  # seconds: only a bound for "does not hang", never a speed check

# Functions of this module travel to the actor processes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_ACTOR_SOURCE = r"""
import sys, traceback, cloudpickle
fn, args = cloudpickle.loads(sys.stdin.buffer.read())
sys.stdin.close()
try:
    out = ("ok", fn(*args))
except BaseException as exc:
    out = ("err", (type(exc).__name__, str(exc), traceback.format_exc()))
sys.stdout.buffer.write(cloudpickle.dumps(out))
"""


class ActorError(Exception):
    def __init__(self, type_name: str, text: str, tb: str = ""):
        super().__init__(f"{type_name}: {text}\n{tb}")
        self.type_name = type_name


class Actor:
    """fn(*args) on the other side: a thread, or a new process fed by pickle on stdin."""

    def __init__(self, backend: str, fn, *args):
        self.backend = backend
        self._out = None
        if backend == "thread":
            self._thread = threading.Thread(target=self._run_thread, args=(fn, args), daemon=True)
            self._thread.start()
        else:
            env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
            self.proc = _proc.start_in_group(
                [sys.executable, "-c", _ACTOR_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            self.proc.stdin.write(cloudpickle.dumps((fn, args)))
            self.proc.stdin.close()
            self.proc.stdin = None  # so that communicate() only reads

    def _run_thread(self, fn, args):
        try:
            self._out = ("ok", fn(*args))
        except BaseException as exc:
            self._out = ("err", (type(exc).__name__, str(exc), ""))

    def result(self, timeout: float = HANG):
        if self.backend == "thread":
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "actor thread did not finish"
            out = self._out
        else:
            try:
                data, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _proc.terminate(self.proc)
                raise AssertionError("actor process did not finish") from None
            _proc.unguard(self.proc.pid)
            assert data, f"actor process died: {pt._errors.describe_exit(self.proc.returncode)}"
            out = pickle.loads(data)
        kind, value = out
        if kind == "err":
            raise ActorError(*value)
        return value

    def sigkill(self):
        """SIGKILL the actor process (no clean-up of any kind in it) and reap it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(HANG)
        self.proc.stdout.close()
        _proc.unguard(self.proc.pid)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


# --------------------------------------------------------------------------- actor functions


def after_signalling(ready, fn, *args):
    """Set ``ready`` (the test waits for it: the actor runs), then run ``fn``."""
    ready.set()
    return fn(*args)


def hold_lock(lock, started, release_event, hold_timeout=HANG):
    with lock:
        started.set()
        assert release_event.wait(hold_timeout)
    return "released"


def try_acquire(lock, timeout):
    t0 = time.monotonic()
    ok = lock.acquire(timeout=timeout)
    if ok:
        lock.release()
    return ok, time.monotonic() - t0


def count_in_file(lock, path, n):
    for _ in range(n):
        with lock:
            value = int(Path(path).read_text())
            time.sleep(0)  # invite a switch inside the critical section
            Path(path).write_text(str(value + 1))
    return n


def release_other(lock):
    lock.release()
    return True


def event_wait(event, timeout):
    return event.wait(timeout)


def event_set_later(event, delay):
    time.sleep(delay)
    event.set()


def cond_wait(cond, ready, timeout):
    with cond:
        ready.set()
        return cond.wait(timeout)


def cond_wait_for(cond, flag, ready, timeout):
    with cond:
        ready.set()
        return cond.wait_for(flag.is_set, timeout)


def sem_acquire(sem, timeout):
    return sem.acquire(timeout=timeout)


def barrier_wait(barrier, timeout):
    return barrier.wait(timeout)


def barrier_wait_expect_broken(barrier, timeout):
    try:
        barrier.wait(timeout)
    except BrokenBarrierError:
        return "broken"
    return "passed"


def append_line(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def rlock_twice(rlock):
    with rlock:
        with rlock:
            return True


def rlock_release_unowned(rlock):
    try:
        rlock.release()
    except RuntimeError as exc:
        return str(exc)
    return "released"


# --------------------------------------------------------------------------- Lock


def test_lock_basics(backend):
    lock = pt.Lock(backend=backend)
    assert isinstance(lock, pt.Lock)
    assert lock.acquire() is True
    assert lock.locked()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.05) is False
    lock.release()
    assert not lock.locked()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_lock_bad_arguments(backend):
    lock = pt.Lock(backend=backend)
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(blocking=False, timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(timeout=-1)


def test_lock_excludes_the_other_side(backend):
    lock = pt.Lock(backend=backend)
    started, release = pt.Event(backend=backend), pt.Event(backend=backend)
    holder = Actor(backend, hold_lock, lock, started, release)
    assert started.wait(HANG)
    assert lock.acquire(timeout=0.2) is False
    ready = pt.Event(backend=backend)
    waiter = Actor(backend, after_signalling, ready, try_acquire, lock, HANG)
    assert ready.wait(HANG), "the waiting actor never started"
    time.sleep(0.2)  # kept: into acquire() by now, which cannot be observed from here
    release.set()
    assert holder.result() == "released"
    ok, _ = waiter.result()
    assert ok is True


def test_lock_mutual_exclusion_counter(backend, tmp_path):
    lock = pt.Lock(backend=backend)
    path = tmp_path / "counter"
    path.write_text("0")
    actors = [Actor(backend, count_in_file, lock, str(path), 40) for _ in range(3)]
    assert [a.result() for a in actors] == [40, 40, 40]
    assert path.read_text() == "120"


def test_lock_released_by_the_other_side(backend):
    # As with threading.Lock, any thread (or process) may release it.
    lock = pt.Lock(backend=backend)
    lock.acquire()
    assert Actor(backend, release_other, lock).result() is True
    assert not lock.locked()


# --------------------------------------------------------------------------- RLock


def test_rlock_reentrant_and_exclusive(backend):
    rlock = pt.RLock(backend=backend)
    assert isinstance(rlock, pt.RLock)
    assert rlock.acquire() and rlock.acquire()
    assert Actor(backend, try_acquire, rlock, 0.2).result()[0] is False
    assert (
        Actor(backend, rlock_release_unowned, rlock).result() == "cannot release un-acquired lock"
    )
    rlock.release()
    assert Actor(backend, try_acquire, rlock, 0.2).result()[0] is False
    rlock.release()
    assert Actor(backend, rlock_twice, rlock).result() is True
    with pytest.raises(RuntimeError):
        rlock.release()


# --------------------------------------------------------------------------- Event


def test_event(backend):
    event = pt.Event(backend=backend)
    assert isinstance(event, pt.Event)
    assert not event.is_set()
    assert event.wait(0.05) is False
    ready = pt.Event(backend=backend)
    waiter = Actor(backend, after_signalling, ready, event_wait, event, HANG)
    assert ready.wait(HANG), "the waiting actor never started"
    time.sleep(0.1)  # kept: into wait() by now, which cannot be observed from here
    event.set()
    assert waiter.result() is True
    assert event.is_set() and event.wait(0) is True
    event.clear()
    assert not event.is_set()
    setter = Actor(backend, event_set_later, event, 0.1)
    assert event.wait(HANG) is True
    setter.result()


# --------------------------------------------------------------------------- Condition


def test_condition_wait_notify(backend):
    cond = pt.Condition(backend=backend)
    assert isinstance(cond, pt.Condition)
    ready = pt.Event(backend=backend)
    waiter = Actor(backend, cond_wait, cond, ready, HANG)
    assert ready.wait(HANG)
    with cond:  # the waiter released the lock, so it is inside wait() now
        cond.notify()
    assert waiter.result() is True


def test_condition_notify_one_wakes_one(backend):
    cond = pt.Condition(pt.Lock(backend=backend))
    readies = [pt.Event(backend=backend) for _ in range(2)]
    waiters = [Actor(backend, cond_wait, cond, r, 3.0) for r in readies]
    for r in readies:
        assert r.wait(HANG)
    with cond:
        cond.notify(1)
    assert sorted(w.result() for w in waiters) == [False, True]


def test_condition_notify_all_and_wait_for(backend):
    cond = pt.Condition(backend=backend)
    flag = pt.Event(backend=backend)
    readies = [pt.Event(backend=backend) for _ in range(2)]
    waiters = [Actor(backend, cond_wait_for, cond, flag, r, HANG) for r in readies]
    for r in readies:
        assert r.wait(HANG)
    with cond:
        flag.set()
        cond.notify_all()
    assert [w.result() for w in waiters] == [True, True]


def test_condition_timeout_and_misuse(backend):
    cond = pt.Condition(backend=backend)
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: False, 0.05) is False
    with pytest.raises(RuntimeError):
        cond.wait(0.01)
    with pytest.raises(RuntimeError):
        cond.notify()


def test_condition_takes_the_lock_backend():
    assert pt.Condition(pt.Lock(backend="process")).backend == "process"
    assert pt.Condition(pt.Lock()).backend == "thread"
    with pytest.raises(TypeError):
        pt.Condition(pt.Lock(backend="thread"), backend="process")
    with pytest.raises(TypeError):
        pt.Condition(pt.Lock(backend="process"), backend="thread")


# --------------------------------------------------------------------------- Semaphore


def test_semaphore(backend):
    sem = pt.Semaphore(2, backend=backend)
    assert isinstance(sem, pt.Semaphore)
    assert sem.acquire() and sem.acquire()
    assert sem.acquire(blocking=False) is False
    assert sem.acquire(timeout=0.05) is False
    ready = pt.Event(backend=backend)
    waiter = Actor(backend, after_signalling, ready, sem_acquire, sem, HANG)
    assert ready.wait(HANG), "the waiting actor never started"
    time.sleep(0.1)  # kept: into acquire() by now, which cannot be observed from here
    sem.release()
    assert waiter.result() is True
    sem.release(2)
    with sem:
        assert sem.acquire(timeout=0)
    with pytest.raises(ValueError):
        sem.release(0)
    with pytest.raises(ValueError):
        pt.Semaphore(-1, backend=backend)


@pytest.mark.parametrize(
    "bad", [2**64, 2**63, -1, 1.5, True, "3", None, float("inf"), float("nan")]
)
def test_absurd_counts_say_what_is_wrong(backend, bad):
    """A process primitive keeps its counts in 64-bit words: Semaphore(2**64) said
    "memoryview: invalid value for format 'Q'"; the same ValueError at the call
    on every backend now, saying the range."""
    with pytest.raises(ValueError, match=r"initial value must be an int from 0 to 2\*\*63-1"):
        pt.Semaphore(bad, backend=backend)
    with pytest.raises(ValueError, match=r"parties must be an int from 1 to 2\*\*63-1"):
        pt.Barrier(bad, backend=backend)
    with pytest.raises(ValueError, match=r"n must be an int from 1 to 2\*\*63-1"):
        pt.Semaphore(0, backend=backend).release(bad)


def test_a_semaphore_count_stays_within_its_word(backend):
    """A release that would take the count past 2**63-1 says so (the process one
    wrapped its 64-bit word or said "memoryview: invalid value"), and a release of
    many is one notify: the thread one notified once per unit and release(2**40) hung."""
    sem = pt.Semaphore(2**63 - 1, backend=backend)
    with pytest.raises(ValueError, match=r"cannot go above 2\*\*63-1"):
        sem.release()
    assert sem.acquire(timeout=0)
    sem.release()  # back to the top: fine
    big = pt.Semaphore(0, backend=backend)
    released = threading.Thread(target=big.release, args=(2**40,), daemon=True)
    released.start()
    released.join(HANG)
    assert not released.is_alive(), "release(2**40) hung"
    assert big.acquire(timeout=0) and big.acquire(timeout=0)


def test_bounded_semaphore(backend):
    sem = pt.BoundedSemaphore(1, backend=backend)
    assert isinstance(sem, pt.BoundedSemaphore) and isinstance(sem, pt.Semaphore)
    with pytest.raises(ValueError, match="too many"):
        sem.release()
    assert sem.acquire()
    sem.release()
    # an unbounded one may go above its start
    free = pt.Semaphore(0, backend=backend)
    free.release(3)
    assert all(free.acquire(timeout=0) for _ in range(3))


# --------------------------------------------------------------------------- Barrier


def test_barrier(backend, tmp_path):
    marks = tmp_path / "action"
    barrier = pt.Barrier(3, action=_action_for(marks), backend=backend)
    assert isinstance(barrier, pt.Barrier)
    assert barrier.parties == 3
    actors = [Actor(backend, barrier_wait, barrier, HANG) for _ in range(2)]
    mine = barrier.wait(HANG)
    assert sorted([mine] + [a.result() for a in actors]) == [0, 1, 2]
    assert len(marks.read_text().splitlines()) == 1  # the action ran once
    assert barrier.n_waiting == 0 and not barrier.broken


def _action_for(path):
    def action():
        append_line(str(path))

    return action


def test_barrier_timeout_breaks_it(backend):
    barrier = pt.Barrier(2, backend=backend)
    with pytest.raises(BrokenBarrierError):
        barrier.wait(0.1)
    assert barrier.broken
    with pytest.raises(BrokenBarrierError):
        barrier.wait(HANG)  # broken: no waiting at all
    barrier.reset()
    assert not barrier.broken
    other = Actor(backend, barrier_wait, barrier, HANG)
    assert barrier.wait(HANG) in (0, 1)
    other.result()


def test_barrier_abort_and_reset_release_waiters(backend):
    barrier = pt.Barrier(3, backend=backend)
    waiter = Actor(backend, barrier_wait_expect_broken, barrier, HANG)
    wait_until(lambda: barrier.n_waiting == 1)
    barrier.abort()
    assert waiter.result() == "broken"
    barrier.reset()
    waiter = Actor(backend, barrier_wait_expect_broken, barrier, HANG)
    wait_until(lambda: barrier.n_waiting == 1)
    barrier.reset()
    assert waiter.result() == "broken"
    assert not barrier.broken


# --------------------------------------------------------------------------- construction, pickling


def test_make_primitive(backend):
    for kind, args in [
        ("Lock", ()),
        ("RLock", ()),
        ("Event", ()),
        ("Condition", ()),
        ("Semaphore", (2,)),
        ("BoundedSemaphore", (2,)),
        ("Barrier", (2,)),
    ]:
        obj = make_primitive(kind, backend, *args)
        assert isinstance(obj, getattr(pt, kind))
        assert obj.backend == backend


def test_unknown_backend_and_kind():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        pt.Lock(backend="nope")
    with pytest.raises(ValueError, match="unknown primitive"):
        make_primitive("Mutex", "thread")


def test_thread_primitives_refuse_to_be_pickled():
    for obj in (pt.Lock(), pt.RLock(), pt.Event(), pt.Condition(), pt.Semaphore(), pt.Barrier(2)):
        with pytest.raises(pt.SerializationError, match="backend='process'"):
            pickle.dumps(obj)


def test_process_primitives_reattach_by_name():
    lock = pt.Lock(backend="process", name="shared")
    again = pickle.loads(pickle.dumps(lock))
    assert again is lock  # one object per process
    assert lock.shm_name.startswith("polytask-sync-")
    assert os.stat(f"/dev/shm/{lock.shm_name}").st_mode & 0o777 == 0o600


def test_process_lock_of_a_dead_holder_is_released():
    lock = pt.Lock(backend="process")
    started, release = pt.Event(backend="process"), pt.Event(backend="process")
    holder = Actor("process", hold_lock, lock, started, release)
    assert started.wait(HANG)
    holder.sigkill()
    assert lock.acquire(timeout=HANG)  # not stuck forever behind the dead holder
    lock.release()


def test_process_primitive_segments_are_removed():
    lock = pt.Lock(backend="process")
    path = Path("/dev/shm") / lock.shm_name
    assert path.exists()
    del lock
    assert not path.exists()


# --------------------------------------------------------------------------- FileLock


def test_filelock_basics(tmp_path):
    path = tmp_path / "lock"
    a = pt.FileLock(path)
    b = pt.FileLock(path, timeout=0.1)
    assert a.acquire()
    assert a.locked() and b.locked()
    assert b.acquire(timeout=0.1) is False
    with pytest.raises(TimeoutError, match="another process holds it"):
        with b:
            pass
    a.release()
    with b:
        assert a.acquire(blocking=False) is False
    assert not a.locked()
    with pytest.raises(RuntimeError):
        a.release()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert pickle.loads(pickle.dumps(a)).path == str(path)


def test_filelock_threads_exclude_each_other(tmp_path):
    lock = pt.FileLock(tmp_path / "lock")
    counter = tmp_path / "n"
    counter.write_text("0")
    threads = [Actor("thread", count_in_file, lock, str(counter), 30) for _ in range(3)]
    for t in threads:
        t.result()
    assert counter.read_text() == "90"


def test_filelock_released_when_holder_is_killed(tmp_path):
    path = tmp_path / "lock"
    flag = tmp_path / "held"
    script = (
        f"import sys, time; sys.path.insert(0, {SRC!r}); import polytask as pt\n"
        f"lock = pt.FileLock({str(path)!r}); lock.acquire()\n"
        f"open({str(flag)!r}, 'w').write('yes')\n"
        "time.sleep(60)\n"
    )
    proc = _proc.start_in_group([sys.executable, "-c", script])
    try:
        wait_until(flag.exists)
        mine = pt.FileLock(path)
        assert mine.acquire(timeout=0.1) is False
        os.kill(proc.pid, signal.SIGKILL)
        assert mine.acquire(timeout=HANG)
        mine.release()
    finally:
        _proc.terminate(proc, grace=0)


def test_a_filelock_dropped_while_held_closes_and_releases(tmp_path):
    # As the kernel does when its holder dies: a FileLock object that is garbage
    # collected while held releases the lock and closes its descriptor. Before: both
    # leaked for the process's life, and every other process waited forever.
    import gc

    path = tmp_path / "lock"

    def fds_on_the_lock_file() -> list[int]:
        # Not a count of all fds: the suite's engine threads open and close theirs.
        return [fd for fd, target in open_fds().items() if target == str(path)]

    held = pt.FileLock(path)
    assert held.acquire(timeout=0)
    assert len(fds_on_the_lock_file()) == 1
    del held
    gc.collect()
    assert fds_on_the_lock_file() == []
    other = pt.FileLock(path)
    assert other.acquire(timeout=0)
    other.release()


def test_filelock_bad_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pt.FileLock(tmp_path / "missing" / "lock").acquire()


# --------------------------------------------------------------------------- timeouts


def test_an_infinite_timeout_means_no_limit(backend, tmp_path):
    # float("inf") is "no limit" on every wait, as None is (not an OverflowError).
    inf = float("inf")
    lock = pt.Lock(backend=backend)
    assert lock.acquire(timeout=inf)
    later = threading.Timer(0.1, lock.release)
    later.start()
    assert lock.acquire(timeout=inf)  # waits for the release
    lock.release()
    later.join()
    rlock = pt.RLock(backend=backend)
    assert rlock.acquire(timeout=inf)
    rlock.release()
    event = pt.Event(backend=backend)
    later = threading.Timer(0.1, event.set)
    later.start()
    assert event.wait(timeout=inf)
    later.join()
    sem = pt.Semaphore(0, backend=backend)
    later = threading.Timer(0.1, sem.release)
    later.start()
    assert sem.acquire(timeout=inf)
    later.join()
    cond = pt.Condition(backend=backend)
    with cond:
        assert cond.wait_for(lambda: True, timeout=inf)
    assert pt.Barrier(1, backend=backend).wait(timeout=inf) == 0
    assert pt.Barrier(1, timeout=inf, backend=backend).wait() == 0
    path = tmp_path / "lock"
    with pt.FileLock(path, timeout=inf) as held:
        assert held.locked()
    assert pt.FileLock(path).acquire(timeout=inf)


@pytest.mark.parametrize(
    ("bad", "error"),
    [(float("nan"), ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)],
    ids=["nan", "negative", "str", "bool"],
)
def test_bad_timeouts_fail_at_the_call(backend, tmp_path, bad, error):
    calls = {
        "Lock.acquire": lambda: pt.Lock(backend=backend).acquire(timeout=bad),
        "RLock.acquire": lambda: pt.RLock(backend=backend).acquire(timeout=bad),
        "Event.wait": lambda: pt.Event(backend=backend).wait(bad),
        "Semaphore.acquire": lambda: pt.Semaphore(0, backend=backend).acquire(timeout=bad),
        "Barrier.wait": lambda: pt.Barrier(2, backend=backend).wait(bad),
        "Barrier()": lambda: pt.Barrier(2, timeout=bad, backend=backend),
        "FileLock()": lambda: pt.FileLock(tmp_path / "lock", timeout=bad),
        "FileLock.acquire": lambda: pt.FileLock(tmp_path / "lock").acquire(timeout=bad),
    }
    for what, call in calls.items():
        with pytest.raises(error, match="timeout"):
            call()
            pytest.fail(f"{what} accepted timeout={bad!r}")
    cond = pt.Condition(backend=backend)
    with cond:
        for call in (lambda: cond.wait(bad), lambda: cond.wait_for(lambda: False, bad)):
            with pytest.raises(error, match="timeout"):
                call()


# --------------------------------------------------------------------------- lock-order checking


def take_in_order(first, second):
    with first:
        with second:
            return True


def test_lock_order_inversion_is_caught(backend):
    with pt.debug.lock_order_checking():
        a = pt.Lock(backend=backend, name="alpha")
        b = pt.RLock(backend=backend, name="beta")
        t = threading.Thread(target=take_in_order, args=(a, b))
        t.start()
        t.join()
        with pytest.raises(pt.PotentialDeadlock) as info:
            take_in_order(b, a)
        assert not a.locked()  # raised before blocking, nothing left held
    msg = str(info.value)
    assert "'alpha'" in msg and "'beta'" in msg
    assert msg.count("test_sync.py:") >= 3  # where each order was first seen, and now


def test_lock_order_transitive_cycle():
    with pt.debug.lock_order_checking():
        a, b, c = (pt.Lock(name=n) for n in "abc")
        take_in_order(a, b)
        take_in_order(b, c)
        with pytest.raises(pt.PotentialDeadlock, match="opposite order"):
            take_in_order(c, a)


def test_lock_order_consistent_order_is_fine(tmp_path):
    with pt.debug.lock_order_checking():
        a, b = pt.Lock(name="a"), pt.FileLock(tmp_path / "f")
        for _ in range(3):
            take_in_order(a, b)
        cond = pt.Condition(pt.Lock(name="c"))
        with cond:
            cond.wait(0.01)  # releasing and re-taking inside wait is no inversion
            with a:
                pass


def test_lock_order_checking_off_by_default():
    a, b = pt.Lock(), pt.Lock()
    take_in_order(a, b)
    take_in_order(b, a)  # an inversion, but nobody is checking


def test_lock_order_checking_from_the_environment(tmp_path):
    script = (
        f"import sys; sys.path.insert(0, {SRC!r}); import polytask as pt\n"
        "a, b = pt.Lock(name='a'), pt.Lock(name='b')\n"
        "with a:\n    with b: pass\n"
        "try:\n    with b:\n        with a: pass\n"
        "except pt.PotentialDeadlock as e: print('caught', e)\n"
    )
    env = dict(os.environ, POLYTASK_DEBUG_LOCKS="1")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.stdout.startswith("caught lock order inversion"), out.stdout + out.stderr


EXIT_WHILE_IN_USE = {
    "Lock": "o = pt.Lock(backend='process')\ndef loop():\n    while True:\n        with o: pass\n",
    "Event": (
        "o = pt.Event(backend='process')\n"
        "def loop():\n    while True:\n        o.set(); o.clear(); o.wait(0.001)\n"
    ),
    "Semaphore": (
        "o = pt.Semaphore(2, backend='process')\n"
        "def loop():\n    while True:\n        o.acquire(); o.release()\n"
    ),
    "Condition": (
        "o = pt.Condition(backend='process')\n"
        "def loop():\n    while True:\n        with o:\n            o.notify_all(); o.wait(0.0005)\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(EXIT_WHILE_IN_USE))
def test_exit_while_daemon_threads_use_a_process_primitive(kind):
    """A primitive's finalizer runs at exit while daemon threads are inside it: it
    unmapped the segment under them, and the interpreter died of SIGSEGV."""
    code = (
        "import threading, time\nimport polytask as pt\n"
        + EXIT_WHILE_IN_USE[kind]
        + "for _ in range(2):\n    threading.Thread(target=loop, daemon=True).start()\n"
        + "time.sleep(0.2)\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
