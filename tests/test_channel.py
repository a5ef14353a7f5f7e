"""Channels (thread and process), the ring protocol, SharedArray and /dev/shm hygiene.

Process tests use real worker processes (pt.TaskGroup / pt.spawn with
backend="process", started with "spawn"), so every channel crosses by pickle
and re-attaches by name.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import polytask as pt
from helpers import run_python, thread_is_in, wait_until
from polytask._ipc import ring as R
from polytask._ipc.channel import DEFAULT_CAPACITY
from polytask._ipc.shm import _attach_shared_array

BACKENDS = ["thread", "process"]
HANG = 30.0  # a bound for "does not hang", never a speed check


def _expect_clean_exit(pid: int, hung: str) -> None:
    """Wait (at most HANG) for the forked child ``pid`` to exit 0; kill it and fail
    with ``hung`` if it does not exit in time."""
    deadline = time.monotonic() + HANG
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError(hung)
    assert os.waitstatus_to_exitcode(done[1]) == 0


SRC = str(Path(__file__).resolve().parents[1] / "src")


def shm_names(pid: int | None = None) -> set[str]:
    names = {n for n in os.listdir("/dev/shm") if "polytask" in n}
    if pid is not None:
        names = {n for n in names if f"-{pid}-" in n}
    return names


# --------------------------------------------------------------------------- task bodies


def produce(ch, tag: int, n: int) -> int:
    for i in range(n):
        ch.put((tag, i))
    return n


def consume(ch) -> list:
    return list(ch)


def consume_one(ch, timeout: float):
    try:
        return ("item", ch.get(timeout=timeout))
    except pt.ChannelClosed:
        return ("closed", None)


def echo(inbox, outbox) -> int:
    n = 0
    for item in inbox:
        outbox.put(item)
        n += 1
    return n


def fill_shared(sa, value: float) -> float:
    sa.array[:] = value
    return float(sa.array.sum())


def array_address(sa) -> int:
    return int(sa.array.__array_interface__["data"][0])


def put_array_in(ch, n: int) -> None:
    sa = pt.SharedArray.from_array(np.arange(n, dtype=np.int64))
    ch.put(sa)
    # Keep our handle until the reader has mapped it: it needs the name.
    ch.put("sent")
    time.sleep(0.5)


def through_threads(ch, producers, consumers: int) -> list[list]:
    """Run producer callables and ``consumers`` iterating threads; close when produced.

    Returns what each consumer received.
    """
    got: list[list] = [[] for _ in range(consumers)]
    cs = [threading.Thread(target=lambda k=k: got[k].extend(ch)) for k in range(consumers)]
    ps = [threading.Thread(target=fn) for fn in producers]
    for t in cs + ps:
        t.start()
    for t in ps:
        t.join(HANG)
    ch.close()
    for t in cs:
        t.join(HANG)
    return got


# --------------------------------------------------------------------------- common semantics


@pytest.mark.parametrize("backend", BACKENDS)
def test_put_get_len_close_iterate(backend):
    ch = pt.Channel(backend=backend)
    assert ch.backend == backend and len(ch) == 0 and not ch.closed
    ch.put(1)
    ch.put_nowait({"a": [1, 2]})
    ch.put(b"raw")
    assert len(ch) == 3
    assert ch.get(timeout=5) == 1
    assert ch.get_nowait() == {"a": [1, 2]}
    ch.put((3, "x"))
    ch.close()
    assert ch.closed
    with pytest.raises(pt.ChannelClosed):
        ch.put(4)
    assert list(ch) == [b"raw", (3, "x")]
    with pytest.raises(pt.ChannelClosed):
        ch.get(timeout=1)
    with pytest.raises(pt.ChannelClosed):
        ch.get_nowait()
    assert "closed" in repr(ch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeouts_raise_full_and_empty(backend):
    with pt.Channel(maxsize=2, backend=backend) as ch:
        with pytest.raises(queue.Empty):
            ch.get_nowait()
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            ch.get(timeout=0.2)
        assert time.monotonic() - t0 >= 0.15
        ch.put(1)
        ch.put(2)
        with pytest.raises(queue.Full):
            ch.put_nowait(3)
        with pytest.raises(queue.Full):
            ch.put(3, timeout=0.2)
        assert len(ch) == 2
        assert ch.get(timeout=1) == 1
        ch.put(3, timeout=1)
        assert [ch.get(timeout=1), ch.get(timeout=1)] == [2, 3]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "4096", True])
def test_a_bad_capacity_is_refused_at_the_call(capacity):
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        pt.Channel(backend="process", capacity=capacity)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_timeouts_are_polytask_errors_that_say_what_happened(backend):
    """One hierarchy: a channel's timeout is a pt.PolytaskError (and still the
    queue module's error, for code written for queue.Queue), with a message."""
    with pt.Channel(maxsize=1, backend=backend) as ch:
        with pytest.raises(pt.ChannelEmpty, match="empty") as empty:
            ch.get(timeout=0.05)
        ch.put(1)
        with pytest.raises(pt.ChannelFull, match="full") as full:
            ch.put(2, timeout=0.05)
    for caught, stdlib in ((empty.value, queue.Empty), (full.value, queue.Full)):
        assert isinstance(caught, pt.PolytaskError) and isinstance(caught, stdlib)
        assert pickle.loads(pickle.dumps(caught)).args == caught.args
    assert ch.closed


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments(backend):
    with pytest.raises(ValueError, match="maxsize"):
        pt.Channel(-1, backend=backend)
    with pytest.raises(ValueError, match="maxsize"):
        pt.Channel("3", backend=backend)  # type: ignore[arg-type]
    ch = pt.Channel(backend=backend)
    with pytest.raises(ValueError, match="timeout"):
        ch.get(timeout=-1)
    with pytest.raises(ValueError, match="max_items"):
        ch.get_many(0)
    ch.close()


HOSTILE_COUNTS = [2**64, 2**63, -1, 1.5, True, "3", None, float("inf"), float("nan")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", HOSTILE_COUNTS)
def test_absurd_maxsize_and_max_items_say_what_is_wrong(backend, bad):
    """pt.Channel(2**64, backend="process") said "memoryview: invalid value for format
    'Q'" (the ring keeps maxsize in a 64-bit word), and the thread channel took it:
    the same ValueError at the call on every backend, saying the range."""
    with pytest.raises(ValueError, match=r"maxsize must be an int from 0 to 2\*\*63-1"):
        pt.Channel(bad, backend=backend)
    with pt.Channel(2**63 - 1, backend=backend) as ch:
        ch.put(1)
        # get_many's count too: 2**64 said OverflowError (C ssize_t), 1.5 was taken.
        with pytest.raises(ValueError, match=r"max_items must be an int from 1 to 2\*\*63-1"):
            ch.get_many(bad, timeout=0)
        assert ch.get_many(2**63 - 1, timeout=0) == [1]


def test_unknown_backend():
    with pytest.raises(
        ValueError, match="unknown backend .carrier-pigeon.; choose one of: thread, process"
    ):
        pt.Channel(backend="carrier-pigeon")


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_wakes_blocked_getter_and_putter(backend):
    ch = pt.Channel(maxsize=1, backend=backend)
    out: list = []
    getter = threading.Thread(target=lambda: out.append(consume_one(ch, HANG)))
    getter.start()
    wait_until(lambda: blocked_in(ch, "get"), HANG, "the getter to block")
    ch.close()
    getter.join(HANG)
    assert not getter.is_alive() and out == [("closed", None)]

    ch2 = pt.Channel(maxsize=1, backend=backend)
    ch2.put("full")
    errors: list = []

    def put_blocked() -> None:
        try:
            ch2.put("more", timeout=HANG)
        except BaseException as exc:
            errors.append(exc)

    putter = threading.Thread(target=put_blocked)
    putter.start()
    wait_until(lambda: blocked_in(ch2, "put"), HANG, "the putter to block")
    ch2.close()
    putter.join(HANG)
    assert not putter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], pt.ChannelClosed)
    assert list(ch2) == ["full"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_threads_each_item_exactly_once(backend):
    ch = pt.Channel(maxsize=16, backend=backend)
    n, producers, consumers = 500, 3, 3
    got = through_threads(ch, [lambda k=k: produce(ch, k, n) for k in range(producers)], consumers)
    items = sorted(x for g in got for x in g)
    assert items == sorted((k, i) for k in range(producers) for i in range(n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_put_many_get_many_keep_order(backend):
    with pt.Channel(backend=backend) as ch:
        ch.put_many(range(100))
        out = []
        while len(out) < 100:
            out += ch.get_many(30, timeout=5)
        assert out == list(range(100))


def test_thread_channel_refuses_to_cross_processes():
    with pytest.raises(pt.SerializationError, match="backend='process'"):
        pickle.dumps(pt.Channel(backend="thread"))


# --------------------------------------------------------------------------- across processes


@pytest.mark.parametrize(("maxsize", "capacity"), [(64, None), (0, R.MIN_CAPACITY)])
def test_processes_several_producers_and_consumers_exactly_once(maxsize, capacity):
    # (a 4 KiB ring wraps every few dozen items: pads, early wraps, full rings)
    ch = pt.Channel(maxsize=maxsize, backend="process", capacity=capacity)
    n = 1500
    with pt.TaskGroup(backend="process") as g:
        producers = [g.spawn(produce, ch, k, n) for k in range(3)]
        consumers = [g.spawn(consume, ch) for _ in range(3)]
        for p in producers:
            assert p.result(timeout=HANG) == n
        ch.close()
    items = [tuple(x) for c in consumers for x in c.result()]
    assert len(items) == 3 * n
    assert sorted(items) == sorted((k, i) for k in range(3) for i in range(n))


def test_closing_while_process_consumers_block():
    ch = pt.Channel(backend="process")
    with pt.TaskGroup(backend="process") as g:
        waiting = [g.spawn(consume_one, ch, HANG) for _ in range(2)]
        wait_until(lambda: blocked_in(ch, "get", 2), HANG, "both consumers to block in get()")
        ch.close()
    assert [w.result() for w in waiting] == [("closed", None)] * 2


def test_channel_round_trip_through_a_process_task():
    inbox = pt.Channel(maxsize=8, backend="process")
    outbox = pt.Channel(backend="process")
    t = pt.spawn(echo, inbox, outbox, backend="process")
    sent = [
        ("small", 1),
        b"x" * (1 << 20),
        bytearray(b"y" * 200_000),
        np.arange(300_000, dtype=np.float64),
        {"nested": [b"z" * 100_000, 2]},
    ]
    for item in sent:
        inbox.put(item, timeout=HANG)
    inbox.close()
    assert t.result(timeout=HANG) == len(sent)
    got = [outbox.get(timeout=HANG) for _ in sent]
    assert got[0] == ("small", 1)
    assert got[1] == sent[1] and type(got[1]) is bytes
    assert got[2] == sent[2] and type(got[2]) is bytearray
    np.testing.assert_array_equal(got[3], sent[3])
    assert got[4] == sent[4]
    outbox.close()


def test_large_items_and_spill_segments():
    ch = pt.Channel(backend="process", capacity=1 << 20)
    before = shm_names(os.getpid())
    big = np.random.default_rng(1).integers(0, 255, size=8 << 20, dtype=np.uint8)
    ch.put(big)  # bigger than half the ring: travels in a spill segment
    spills = shm_names(os.getpid()) - before
    assert len(spills) == 1 and all(n.startswith(ch.name + "-") for n in spills)
    out = ch.get(timeout=HANG)
    np.testing.assert_array_equal(out, big)
    for k in range(3):  # once read, the writer reuses the same spill
        ch.put(big + k)
        np.testing.assert_array_equal(ch.get(timeout=HANG), big + k)
        assert shm_names(os.getpid()) - before == spills
    # Unread, the pooled spills are busy: past the pool's size, one-off spills,
    # which their reader removes.
    for k in range(6):
        ch.put(big[: (1 << 20) + k])
    assert len(shm_names(os.getpid()) - before) == 6
    for k in range(6):
        np.testing.assert_array_equal(ch.get(timeout=HANG), big[: (1 << 20) + k])
    assert len(shm_names(os.getpid()) - before) == 4
    mv = memoryview(np.arange(10, dtype=np.int32))
    ch.put(mv)
    assert bytes(ch.get(timeout=5)) == mv.tobytes()
    ch.put(big[:1000].reshape(10, 100)[:, ::2])  # not contiguous
    np.testing.assert_array_equal(ch.get(timeout=5), big[:1000].reshape(10, 100)[:, ::2])
    # An unread spill is removed with the channel.
    ch.put(big)
    ch.close()
    del ch
    assert shm_names(os.getpid()) <= before


def test_unpicklable_item_is_refused_at_put():
    with pt.Channel(backend="process") as ch:
        with pytest.raises(pt.SerializationError, match="cannot be pickled"):
            ch.put(threading.Lock())
        ch.put(lambda x: x + 1)  # cloudpickle takes what pickle cannot
        assert ch.get(timeout=5)(1) == 2


def test_segment_is_owner_only_and_removed_on_close():
    ch = pt.Channel(backend="process")
    name = ch.name
    path = Path("/dev/shm") / name
    assert "polytask" in name and path.stat().st_mode & 0o777 == 0o600
    ch.close()
    assert not path.exists()
    ch2 = pt.Channel(backend="process")
    ch2.put(1)
    ch2.close()  # items left: the name stays for readers...
    assert (Path("/dev/shm") / ch2.name).exists()
    assert list(ch2) == [1]  # ...until one finds it drained
    assert not (Path("/dev/shm") / ch2.name).exists()


def test_closed_channel_sent_later_reads_as_closed():
    ch = pt.Channel(backend="process")
    data = pickle.dumps(ch)
    ch.close()
    del ch
    again = pickle.loads(data)
    assert again.closed and len(again) == 0
    with pytest.raises(pt.ChannelClosed):
        again.get(timeout=1)
    with pytest.raises(pt.ChannelClosed):
        again.put(1)


def test_a_channel_collected_while_the_segment_registry_is_locked(tmp_path):
    """A channel in a reference cycle is released by the cycle collector, which may
    run inside any allocation: also one made under the lock of the registry of
    owned segments (a new spill's _adopt), which the release takes again."""
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import gc, polytask as pt
            from polytask._ipc import shm
            gc.disable()
            ch = pt.Channel(backend="process")
            ch.me = ch  # a cycle: released by the collector
            del ch
            with shm._owned_lock:  # as _adopt holds it while it allocates
                gc.collect()
            print("released", flush=True)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "released"


def test_a_channel_the_collector_releases_inside_another_ones_release_leaves_it_whole(tmp_path):
    """A channel's release looks through the reader's cache of spills for its own,
    under a lock reentrant for the finalizers the collector runs in there: another
    channel's release, run so, took its entries out from under that loop, which
    raised. The first release stopped there, and its spills stayed in /dev/shm."""
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import gc, glob, sys
            import polytask as pt

            gc.disable()  # only the hook collects
            a = pt.Channel(backend="process")
            b = pt.Channel(backend="process")
            for ch in (a, b):
                ch.put(b"x" * 9_000_000)  # spilled: read here, its mapping is cached
                ch.get()
            del ch
            spills = f"/dev/shm/{a.name}-*"
            b.me = b  # a cycle: only the collector releases it

            def collect_there(frame, event, arg):
                if event == "call" and frame.f_code.co_name == "_channel_of":
                    gc.collect()

            del b
            sys.setprofile(collect_there)
            del a
            sys.setprofile(None)
            print(len(glob.glob(spills)))
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    assert "Exception ignored" not in out.stderr, out.stderr
    assert out.stdout.split() == ["0"]  # a's release removed its spills


def test_nothing_left_in_dev_shm_after_a_process_exits(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, numpy as np, polytask as pt
            ch = pt.Channel(backend="process", capacity=1 << 16)
            ch.put(np.zeros(100_000))          # a spill segment, never read
            ch.put(1)
            lock = pt.Lock(backend="process")
            sa = pt.SharedArray(1000)
            print(os.getpid(), flush=True)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert shm_names(pid) == set()


def test_classes_defined_in_main_cross_a_process_channel_both_ways(tmp_path):
    """A class from the user's script travels by value (as task arguments do), through
    every put path (put, put_many, a big item), into a process task and back."""
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import dataclasses
            import polytask as pt

            @dataclasses.dataclass
            class Point:
                x: int
                y: int

            def double(inbox, outbox):
                for p in inbox:
                    outbox.put(Point(p.x * 2, len(p.y) if isinstance(p.y, bytes) else p.y * 2))
                outbox.close()

            if __name__ == "__main__":
                inbox = pt.Channel(backend="process")
                outbox = pt.Channel(backend="process")
                task = pt.spawn(double, inbox, outbox, backend="process")
                inbox.put(Point(1, 2))
                inbox.put_many([Point(2, 3), Point(3, 4)])
                inbox.put(Point(4, b"x" * 300_000))  # big: spilled, buffers out of band
                inbox.close()
                task.result(timeout=60)  # raises what failed in the task
                got = list(outbox)
                print([(type(p).__name__, p.x, p.y) for p in got])
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(
        [("Point", 2, 4), ("Point", 4, 6), ("Point", 6, 8), ("Point", 8, 300_000)]
    )


# --------------------------------------------------------------------------- SharedArray


def test_shared_array_is_shared_not_copied():
    sa = pt.SharedArray((1000,), dtype="float64")
    assert sa.array.sum() == 0 and len(sa) == 1000
    assert pt.spawn(fill_shared, sa, 2.0, backend="process").result(timeout=HANG) == 2000.0
    assert float(np.asarray(sa).sum()) == 2000.0  # the task wrote into our memory
    small = len(pickle.dumps(pt.SharedArray(10)))
    large = len(pickle.dumps(pt.SharedArray(10_000_000)))
    assert abs(large - small) < 16  # the size does not travel: O(1)
    sa.close()


def test_shared_array_through_a_channel():
    ch = pt.Channel(backend="process")
    t = pt.spawn(put_array_in, ch, 1 << 20, backend="process")
    got = ch.get(timeout=HANG)
    assert ch.get(timeout=HANG) == "sent"
    assert isinstance(got, pt.SharedArray) and got.shape == (1 << 20,)
    assert int(got.array[-1]) == (1 << 20) - 1
    t.result(timeout=HANG)
    view = got.array
    got.close()
    assert int(view[5]) == 5  # views stay valid after the handle is dropped
    ch.close()


def hold_and_drop(sa) -> float:
    total = float(sa.array.sum())
    sa.close()  # this process's handle goes; the creator's keeps the memory
    return total


def test_shared_array_memory_goes_when_every_handle_is_dropped():
    sa = pt.SharedArray.from_array(np.ones(1000))
    path = Path("/dev/shm", sa.name)
    assert path.exists()
    # A receiver in another process maps it and drops its handle: nothing is released.
    assert pt.spawn(hold_and_drop, sa, backend="process").result(timeout=HANG) == 1000.0
    assert path.exists() and float(sa.array.sum()) == 1000.0
    # A receiver here (as a channel's consumer gets one) maps the same memory...
    other = pickle.loads(pickle.dumps(sa))
    other.array[0] = 5.0
    assert sa.array[0] == 5.0
    # ...the creator drops its handle: the name goes, the receiver's memory stays...
    sa.close()
    assert not path.exists()
    assert float(other.array.sum()) == 1004.0
    # ...until the receiver drops it too; a late receiver is told it is gone.
    name = other.name
    other.close()
    with pytest.raises(FileNotFoundError, match="gone"):
        _attach_shared_array(name, (1000,), "<f8")


def test_a_shared_array_handle_the_collector_drops_while_its_mutex_is_held_is_counted(tmp_path):
    """A handle's drop takes the array's mutex to count it. The collector drops one
    in a cycle wherever it runs: inside another handle's pickling too, in the same
    thread, with that mutex held. The drop waited for it (5 s, stalling whatever that
    thread was doing), then gave up, uncounted: the count stayed one too high."""
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import gc, pickle, sys
            import polytask as pt
            from polytask._ipc import shm

            gc.disable()  # only the hook collects
            sa = pt.SharedArray(10)
            other = pickle.loads(pickle.dumps(sa))  # a second handle in this process
            other.me = other  # a cycle: only the collector drops it
            del other

            def collect_there(frame, event, arg):
                # RobustMutex.release: called with the array's mutex held.
                if event == "call" and frame.f_code.co_name == "release":
                    gc.collect()

            sys.setprofile(collect_there)
            data = pickle.dumps(sa)
            sys.setprofile(None)
            print(sa._words[shm._SA_REFS])  # handles: sa, and the pickled copy
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2"]  # the dropped handle was counted


def test_shared_array_from_array_and_errors():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    with pt.SharedArray.from_array(a) as sa:
        np.testing.assert_array_equal(sa.array, a)
        sa[0, 0] = 99
        assert sa[0, 0] == 99
        assert Path("/dev/shm", sa.name).stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(sa)
    with pytest.raises(TypeError, match="object"):
        pt.SharedArray(3, dtype=object)
    with pytest.raises(ValueError, match="shape must be an int or a tuple of ints"):
        pt.SharedArray((-1, 2))


@pytest.mark.parametrize(
    "shape",
    [2**64, 2**63, -1, 1.5, True, "3", None, float("inf"), float("nan"), (2, "3"), (2, 1.5)],
)
def test_shared_array_bad_shapes_say_so_at_the_call(shape):
    """int() took 1.5 and "3" as sizes, and 2**64 failed as an OverflowError from deep inside."""
    with pytest.raises(
        ValueError, match=r"shape must be an int or a tuple of ints, each from 0 to 2\*\*63-1"
    ):
        pt.SharedArray(shape, dtype="uint8")
    with pt.SharedArray((2, np.int64(3)), dtype="uint8") as sa:  # numpy's ints are ints
        assert sa.shape == (2, 3)


# --------------------------------------------------------------------------- the ring, without I/O


def new_ring(cap: int = R.MIN_CAPACITY, maxsize: int = 0) -> R.Ring:
    return R.Ring.initialise(bytearray(R.Ring.buffer_size(cap)), cap, maxsize, owner=1)


def test_ring_small_frames_fifo_and_wraparound():
    ring = new_ring()
    for rnd in range(50):  # many laps around a 4 KiB ring
        payloads = [bytes([rnd, k]) * (10 + 37 * k) for k in range(5)]
        for p in payloads:
            assert ring.put_small(p, 0, pid=7) >= 0
        assert ring.items() == 5
        for p in payloads:
            kind, data, _ = ring.take(7)
            assert (kind, data) == (0, p)
        assert ring.take(7) == R.EMPTY and ring.used() == 0


def test_ring_sleepers_cost_one_wake_up_per_sleep():
    ring = new_ring()
    seq = ring.reader_sleeps()
    assert ring.put_small(b"a", 0, pid=7) == 1  # a reader sleeps: wake it
    assert ring.put_small(b"b", 0, pid=7) == 0  # its registration is used up
    ring.reader_woke(seq)  # the sequence moved: nothing to withdraw
    assert ring.put_small(b"c", 0, pid=7) == 0
    seq = ring.reader_sleeps()
    ring.reader_sleeps()
    ring.reader_woke(seq)  # one of two timed out: the other still counts
    assert ring.put_small(b"d", 0, pid=7) == 1
    ring.reader_woke(seq)  # late: the sequence moved, the count is not touched
    assert ring.put_small(b"e", 0, pid=7) == 0
    seq = ring.writer_sleeps()
    assert ring.take(7)[2] == 1  # a writer sleeps: wake it
    assert ring.take(7)[2] == 0
    ring.writer_woke(seq)
    seq = ring.writer_sleeps()
    ring.writer_woke(seq)  # timed out: withdrawn
    assert ring.take(7)[2] == 0


def test_ring_full_maxsize_and_closed():
    ring = new_ring(maxsize=2)
    assert ring.put_small(b"a", 0, 1) == 0
    assert ring.put_small(b"b", 0, 1) == 0
    assert ring.put_small(b"c", 0, 1) == R.FULL
    ring2 = new_ring()
    while ring2.put_small(b"x" * 500, 0, 1) >= 0:
        pass
    assert ring2.used() <= ring2.capacity
    ring2.close()
    assert ring2.put_small(b"y", 0, 1) == R.CLOSED
    assert ring2.reserve(10, [100], 1, 1) == R.CLOSED


def test_ring_big_frame_reserve_commit_and_dead_writer():
    ring = new_ring(cap=1 << 16)
    pos = ring.reserve(5, [1000, 3], kind=1, pid=42)
    assert pos >= 0
    assert ring.take(9) == R.BLOCKED  # a reader never sees a half-written frame
    assert ring.writer_at_read() == (pos, 42)
    ring.put_small(b"after", 0, 43)
    ring.payload_view(pos)[:] = b"hello"
    v1, v2 = ring.buffer_views(pos)
    v1[:] = b"a" * 1000
    v2[:] = b"xyz"
    ring.commit(pos)
    got = ring.take(9)
    assert got == pos and ring.header(pos)[1] == 1
    assert bytes(ring.payload_view(pos)) == b"hello"
    assert [bytes(v) for v in ring.buffer_views(pos)] == [b"a" * 1000, b"xyz"]
    ring.release(pos)
    assert ring.take(9)[1] == b"after"
    # A writer that dies mid-copy: readers skip its frame once they see it died.
    dead = ring.reserve(5, [10], 1, pid=77)
    ring.put_small(b"next", 0, 78)
    assert ring.take(9) == R.BLOCKED
    assert ring.abandon_writer(dead, 77)
    assert ring.take(9)[1] == b"next"


def test_ring_recount_frees_a_dead_readers_frame():
    ring = new_ring(cap=1 << 16)
    pos = ring.reserve(1, [2000], 1, pid=5)
    ring.commit(pos)
    assert ring.take(66) == pos  # claimed by reader 66, which then "dies"
    assert ring.reader_at_head() == (pos, 66)
    used = ring.used()
    ring.recount(alive=lambda pid: pid != 66)
    assert ring.used() < used and ring.reader_at_head() is None


def test_ring_wraps_early_while_readers_keep_up():
    cap = 1 << 20
    ring = new_ring(cap=cap)
    assert ring.wrap_at == cap >> 3
    payload = b"p" * 60
    for k in range(20_000):  # over a megabyte of frames, read as they come
        assert ring.put_small(payload + k.to_bytes(4, "little"), 0, pid=7) >= 0
        kind, data, _ = ring.take(7)
        assert data == payload + k.to_bytes(4, "little")
        # the writer never goes much past the early-wrap point: the ring's first pages only
        assert ring.words[R.TAIL] & (cap - 1) <= ring.wrap_at + 128
    # A reader far behind: no early wrap (the writer would run into the pad), every
    # item still arrives once and in order, and the ring fills up to its capacity.
    sent = 0
    while ring.put_small(sent.to_bytes(4, "little") * 16, 0, pid=7) >= 0:
        sent += 1
    assert sent * 96 > cap // 2
    for k in range(sent):
        assert ring.take(7)[1] == k.to_bytes(4, "little") * 16
    assert ring.take(7) == R.EMPTY and ring.items() == 0


def test_early_wrap_keeps_the_whole_capacity():
    """After a drain past the early-wrap point, the next burst still has the whole
    ring (the producer skips the pad it wrote itself): no reader needs to come by."""
    cap = 1 << 20
    with pt.Channel(backend="process", capacity=cap) as ch:
        item = b"i" * 90  # a 128-byte frame
        for _ in range(3):
            for _ in range(3000):  # past the early-wrap point (cap / 8)
                ch.put_nowait(item)
            for _ in range(3000):
                assert ch.get_nowait() == item
            for _ in range(int(0.9 * cap) // 128):  # 90% of the ring, nobody reading
                ch.put_nowait(item)
            while len(ch):
                assert ch.get_nowait() == item


def test_ring_push_and_pop_match_put_small_and_take():
    ring = new_ring(cap=1 << 16)
    hdr = R.READY | (0 << 8) | (7 << 32)
    for n in (0, 1, R.PACKED - 1, R.PACKED, 1000):  # one struct call, or the slices
        assert ring.push(b"x" * n, hdr) >= 0
        assert ring.pop(7) == b"x" * n
    small = new_ring()
    for k in range(100):  # a pad at each lap: pop hands over what take() says
        assert small.push(b"y" * 700, hdr) >= 0
        r = small.pop(7)
        assert (r if type(r) is bytes else r[:2]) in (b"y" * 700, (0, b"y" * 700))
    assert ring.put_small(b"k", 2, pid=7) >= 0
    assert ring.pop(7) == (2, b"k", 0)  # another kind: as take() says
    seq = ring.writer_sleeps()
    ring.push(b"w", hdr)
    assert ring.pop(7) == (0, b"w", 1)  # a writer to wake: as take() says
    ring.writer_woke(seq)
    assert ring.pop(7) == R.EMPTY


def test_ring_layout_constants_are_where_the_ring_writes():
    """The named offsets the channel's inlined fast paths use (ring.TAIL, HEAD...)
    are the words and bytes that Ring's own methods write."""
    ring = new_ring()
    w = ring.words
    assert ring.put_small(b"abc", 5, pid=7) >= 0
    size = (3 + R.FRAME_ROUND) & -R.ALIGN
    assert size == R.Ring.frame_size(3) == 32
    assert (w[R.TAIL], w[R.NRES], w[R.HEAD], w[R.READ], w[R.NCLAIM]) == (size, 1, 0, 0, 0)
    i = R.DATA_OFFSET >> 3  # the first frame's header words
    assert w[i] & R.LOW32 == R.READY | (5 << 8) and w[i] >> 32 == 7
    assert w[i + 1] & R.LOW32 == size and w[i + 1] >> 32 == 3
    assert ring.raw[R.DATA_OFFSET + R.HEADER : R.DATA_OFFSET + R.HEADER + 3] == b"abc"
    assert ring.take(8) == (5, b"abc", 0)
    assert (w[R.READ], w[R.HEAD], w[R.NCLAIM]) == (size, size, 1)
    seq = ring.writer_sleeps()
    assert w[R.WAIT_SPACE] == 1
    ring.writer_woke(seq)
    assert w[R.WAIT_SPACE] == 0
    seq = ring.reader_sleeps()
    assert w[R.WAIT_DATA] == 1
    ring.reader_woke(seq)
    ring.close()
    assert w[R.WAIT_DATA] & R.CLOSED_FLAG


def test_channel_fast_paths_and_the_ring_api_agree():
    """What put's inlined path writes, Ring.take reads; what Ring.push writes, get's
    inlined path reads (both by the ring's named offsets)."""
    ch = pt.Channel(backend="process", capacity=R.MIN_CAPACITY)
    ring = ch._ring  # type: ignore[attr-defined]
    try:
        for k in range(300):  # several laps of a 4 KiB ring
            item = ("x" * (k % 97), k)
            ch.put(item)
            kind, data, _ = ring.take(os.getpid())
            assert (kind, pickle.loads(data)) == (0, item)
            hdr = R.READY | (0 << 8) | (os.getpid() << 32)
            assert ring.push(pickle.dumps(item, 5), hdr) >= 0
            assert ch.get(timeout=HANG) == item
            assert ring.take(os.getpid()) == R.EMPTY
    finally:
        ch.close()


@pytest.mark.parametrize("maxsize", [0, 3])
def test_process_channel_small_ring_mixed_sizes_exactly_once_in_order(maxsize):
    """The fast paths of put and get (inlined) and the general ones (Ring.push and
    Ring.pop) take turns on a 4 KiB ring that wraps every few items."""
    ch = pt.Channel(maxsize=maxsize, backend="process", capacity=R.MIN_CAPACITY)
    sizes = [0, 3, 40, R.PACKED - 40, R.PACKED + 10, 1500]
    n, producers, consumers = 400, 2, 2

    def produce_mixed(tag: int) -> None:
        for i in range(n):
            pad = "z" * sizes[(i + tag) % len(sizes)]
            ch.put((tag, i, pad) if i % 7 else bytes([tag]) + i.to_bytes(2, "little"))

    got = through_threads(ch, [lambda k=k: produce_mixed(k) for k in range(producers)], consumers)
    seen = []
    for g in got:
        last = {}
        for x in g:
            tag, i = (x[0], int.from_bytes(x[1:], "little")) if type(x) is bytes else x[:2]
            assert i > last.get(tag, -1)  # each producer's order, for each consumer
            last[tag] = i
            seen.append((tag, i))
    assert sorted(seen) == [(k, i) for k in range(producers) for i in range(n)]


def test_ring_rejects_bad_buffers():
    with pytest.raises(ValueError, match="bad magic"):
        R.Ring(bytearray(R.Ring.buffer_size(R.MIN_CAPACITY)))
    with pytest.raises(ValueError, match="power of two"):
        R.Ring.initialise(bytearray(R.Ring.buffer_size(6000)), 6000, 0, 1)
    assert R.Ring.round_capacity(5000) == 8192
    assert DEFAULT_CAPACITY == R.Ring.round_capacity(DEFAULT_CAPACITY)


def test_forked_child_dropping_an_inherited_channel_leaves_it_alone():
    """A forked child's copy of the owner's handle owns nothing: dropping it removes no
    name of the parent's, even when a garbage collection runs the handle's finalizer
    while the child holds the spill pool's lock."""
    from polytask._ipc import channel as C
    from polytask._os import proc as _proc

    ch = pt.Channel(backend="process", capacity=1 << 16)
    old = pt.Channel(backend="process", capacity=1 << 16)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with C._spills_lock:
                del old
                gc.collect()
            ch.put(np.zeros(100_000))  # a spill
            _proc.run_shutdown_hooks()  # what a normal exit does
            code = 0
        finally:
            os._exit(code)
    _expect_clean_exit(pid, "the child deadlocked")
    assert os.path.exists(f"/dev/shm/{old.name}") and os.path.exists(f"/dev/shm/{ch.name}")
    np.testing.assert_array_equal(ch.get(timeout=HANG), np.zeros(100_000))
    old.close()
    ch.close()


def test_put_fast_paths_write_the_frames_ring_push_writes_with_the_writers_pid():
    """put() and put_many() write a small pickle's frame header from a per-process
    cache (w0: READY, kind 0, pid; w1: size | length); the bytes are Ring.push's, and
    a forked child's frames name the child, not the parent whose cache it inherited."""

    def frames(ch, count):
        w, ring = ch._ring.words, ch._ring
        pos, out = w[R.READ], []
        for _ in range(count):
            state, kind, nbufs, pid, size, length = ring.header(pos)
            payload = bytes(ring.payload_view(pos))
            out.append((state, kind, nbufs, pid, size, length, payload))
            pos += size
        return out

    items = [(12345, "hello", 1.5), 7, "x" * 300, list(range(40))]
    ch = pt.Channel(backend="process", capacity=1 << 16)
    for item in items:  # fills this process's cache of frame headers
        ch.put(item)
    ch.put_many(items)
    ref = R.Ring.initialise(bytearray(R.Ring.buffer_size(1 << 16)), 1 << 16, 0, 1)
    for item in items * 2:
        ref.push(pickle.dumps(item, 5), R.READY | (os.getpid() << 32))
    want = frames(ch, 8)
    assert want == [
        (R.READY, 0, 0, os.getpid(), size, length, payload)
        for (_, _, _, _, size, length, payload) in want
    ]
    assert bytes(ch._ring.view[R.DATA_OFFSET : R.DATA_OFFSET + 1024]) == bytes(
        ref.view[R.DATA_OFFSET : R.DATA_OFFSET + 1024]
    )
    for _ in range(8):
        ch.get(timeout=HANG)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            ch.put(items[0])
            ch.put_many(items[:1])
            code = 0
        finally:
            os._exit(code)
    _expect_clean_exit(pid, "the child could not put")
    assert [f[3] for f in frames(ch, 2)] == [pid, pid]
    assert [ch.get(timeout=HANG) for _ in range(2)] == [items[0]] * 2
    ch.close()


@pytest.mark.parametrize("module", ["channel", "sync"])
def test_a_child_forked_while_the_attach_cache_is_locked_can_attach(module):
    """A fork while another thread held the attach cache's lock (it unpickled a
    channel or a lock) left the child's copy locked: its first attach hung."""
    import importlib

    mod = importlib.import_module(f"polytask._ipc.{module}")
    obj = pt.Channel(backend="process") if module == "channel" else pt.Lock(backend="process")
    data = pickle.dumps(obj)
    with mod._attached._lock:  # as another thread's attach would hold it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = 0 if pickle.loads(data) is not None else 1
            finally:
                os._exit(code)
    _expect_clean_exit(pid, "the child deadlocked on the attach cache's lock")
    if module == "channel":
        obj.close()


# --------------------------------------------------------------------------- small rings


def test_ring_an_empty_ring_takes_every_frame_up_to_half_of_it():
    """Wherever the positions stand, an empty ring stores a frame of up to half its
    size, and refuses a bigger one for good (TOO_BIG, never FULL: a writer told FULL
    would wait for room that never comes)."""
    hdr = R.READY | (7 << 32)
    for cap in (R.MIN_CAPACITY, 1 << 13, 1 << 16):
        half = cap // 2
        lens = {0, 1, 100, half - 16, half - 17, half - 15, half - 48, half + 1, half + 64}
        lens |= {(1 << 16) - 16, (1 << 16) - 100, 40_000, cap - 16}
        for off in range(0, cap, R.ALIGN):
            for lap in (0, 3):
                for n in sorted(x for x in lens if x >= 0):
                    ring = new_ring(cap)
                    w = ring.words
                    w[8] = w[16] = w[17] = lap * cap + off  # tail, head, read: empty
                    size = R.Ring.frame_size(n)
                    rc = ring.push(b"q" * n, hdr)
                    if size <= half:
                        assert rc >= 0, (cap, off, n, rc)
                        assert ring.fits(size)
                        r = ring.pop(7)
                        assert (r if type(r) is bytes else r[1]) == b"q" * n
                        assert ring.used() == 0
                    else:
                        assert rc == R.TOO_BIG, (cap, off, n, rc)
                        assert not ring.fits(size) and ring.used() == 0


def produce_sized(ch, tag: int, sizes: list[int], rounds: int) -> int:
    n = 0
    for r in range(rounds):
        for k, size in enumerate(sizes):
            ch.put((tag, n, bytes([(r + k) % 256]) * size), timeout=HANG)
            n += 1
    return n


@pytest.mark.parametrize("cap", [R.MIN_CAPACITY, 1 << 14, 1 << 16])
def test_small_rings_items_around_half_the_ring_and_64k_from_several_processes(cap):
    """Items just under, at and over half the ring and around 64 KiB (where the ring's
    inline frames end) all get through a small ring, from three producer processes
    at once, each exactly once; none is refused as "full" when the ring is empty."""
    half = cap // 2
    sizes = [10, half - 120, half - 40, half, half + 40, 40_000, 65_400, 65_536, 70_000, 30]
    rounds = 6
    ch = pt.Channel(backend="process", capacity=cap)
    with pt.TaskGroup(backend="process") as g:
        producers = [g.spawn(produce_sized, ch, k, sizes, rounds) for k in range(3)]
        got = [ch.get(timeout=HANG) for _ in range(3 * rounds * len(sizes))]
        for p in producers:
            assert p.result(timeout=HANG) == rounds * len(sizes)
    assert len(ch) == 0
    ch.close()
    seen = sorted((tag, n) for tag, n, _ in got)
    assert seen == [(k, n) for k in range(3) for n in range(rounds * len(sizes))]
    for tag, n, body in got:
        r, k = divmod(n, len(sizes))
        assert body == bytes([(r + k) % 256]) * sizes[k], (tag, n)


def test_put_many_and_put_of_items_over_half_a_small_ring():
    """put, put_many and put_nowait into an empty 4 KiB ring, of items too big for its
    inline frames (over 2 KiB): they travel in spills, in order, at once."""
    with pt.Channel(backend="process", capacity=R.MIN_CAPACITY) as ch:
        items = [b"a" * 3000, ("t", "b" * 2100), bytearray(b"c" * 2047), 7, "d" * 60_000]
        for item in items:
            ch.put_nowait(item)
            assert ch.get_nowait() == item
        ch.put_many(items, timeout=HANG)
        got = []
        while len(got) < len(items):
            got += ch.get_many(10, timeout=HANG)
        assert got == items


# --------------------------------------------------------------------------- cancellation points


def blocked_in(ch, op: str, at_least: int = 1) -> bool:
    """Whether ``at_least`` threads or processes sleep in ``ch.get()`` (op "get") or
    ``ch.put()`` (the sleepers' counts of the ring, or the condition's waiters)."""
    if ch.backend == "thread":
        cond = ch._not_empty if op == "get" else ch._not_full
        return len(cond._waiters) >= at_least
    word = ch._w[10] & ~R.CLOSED_FLAG if op == "get" else ch._w[19]  # _WAIT_DATA, _WAIT_SPACE
    return word >= at_least


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["get", "put", "get_many", "put_many"])
def test_blocked_put_and_get_in_a_thread_task_end_when_it_is_cancelled(backend, op):
    """A thread task cannot be killed: its blocking put()/get() (no timeout) must see
    the cancellation flag and raise Cancelled, or the task would never end."""
    ch = pt.Channel(maxsize=1, backend=backend)
    if op.startswith("put"):
        ch.put("fills it")
    outcome: list = []
    finished = threading.Event()

    def body() -> None:
        try:
            if op == "get":
                ch.get()
            elif op == "get_many":
                ch.get_many(5)
            elif op == "put":
                ch.put("more")
            else:
                ch.put_many(["more", "and more"])
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(type(exc))
            raise
        finally:
            finished.set()

    task = pt.spawn(body)
    try:
        deadline = time.monotonic() + HANG
        while not blocked_in(ch, op[:3]) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert blocked_in(ch, op[:3])
        task.cancel()
        assert finished.wait(HANG), "the cancelled task stayed blocked"
        assert outcome == [pt.Cancelled]
        with pytest.raises(pt.Cancelled):
            task.result(timeout=HANG)
    finally:
        ch.close()  # frees a task that stayed blocked (the code before the fix)
        finished.wait(HANG)
    if op.startswith("put"):
        assert list(ch) == ["fills it"]  # nothing half-put


def test_a_cancelled_waiter_passes_its_wake_up_on():
    """A thread task and a plain thread wait in get() of a thread channel, the task
    first; the task is cancelled just as an item arrives. put() wakes one waiter (the
    task): leaving with Cancelled, it must wake the next, or the thread waits for good."""
    ch = pt.Channel(backend="thread")
    got: list = []
    task = pt.spawn(lambda: ch.get())
    deadline = time.monotonic() + HANG
    while len(ch._not_empty._waiters) < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    plain = threading.Thread(target=lambda: got.append(consume_one(ch, None)))
    plain.start()
    while len(ch._not_empty._waiters) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        task.cancel()
        ch.put("item")
        plain.join(5.0)
        assert got == [("item", "item")]
    finally:
        ch.close()
        plain.join(HANG)
        task.join(HANG)
    with pytest.raises(pt.Cancelled):
        task.result(timeout=HANG)


def produce_many(ch, tag: int, rounds: int, batch: int) -> int:
    """put_many of mixed items: pickles of every size up to the packed limit and
    past it, raw bytes (a kind of their own), and big items that go to spills."""
    n = 0
    for r in range(rounds):
        items = []
        for k in range(batch):
            size = (r * 37 + k * 11) % 300
            if k % 17 == 16:
                body: object = bytes([k % 256]) * 70_000  # a spill, amid small frames
            elif k % 5 == 4:
                body = bytes([k % 256]) * size  # raw bytes
            else:
                body = "x" * size
            items.append((tag, n, body))
            n += 1
        ch.put_many(items, timeout=HANG)
    return n


@pytest.mark.parametrize("maxsize", [0, 7])
@pytest.mark.parametrize("cap", [R.MIN_CAPACITY, 1 << 14, 1 << 16])
def test_put_many_from_several_processes_into_small_rings(cap, maxsize):
    """put_many's batched fast path: three producer processes put batches of mixed
    items into a small ring (it wraps, fills and waits many times; with maxsize it
    stops at the count too); the reader takes them by get and get_many in turn.
    Each item arrives exactly once and in its producer's order."""
    rounds, batch = 30, 40
    ch = pt.Channel(backend="process", capacity=cap, maxsize=maxsize)
    got = []
    with pt.TaskGroup(backend="process") as g:
        producers = [g.spawn(produce_many, ch, k, rounds, batch) for k in range(3)]
        if maxsize:  # the producers fill it to the count, and no further
            wait_until(lambda: len(ch) == maxsize, HANG, "the channel full to maxsize")
        while len(got) < 3 * rounds * batch:
            assert not maxsize or len(ch) <= maxsize
            if len(got) % 2:
                got.append(ch.get(timeout=HANG))
            else:
                got += ch.get_many(13, timeout=HANG)
        for p in producers:
            assert p.result(timeout=HANG) == rounds * batch
    assert len(ch) == 0
    ch.close()
    for tag in range(3):
        mine = [(n, body) for t, n, body in got if t == tag]
        assert [n for n, _ in mine] == list(range(rounds * batch))
        for n, body in mine:
            r, k = divmod(n, batch)
            if k % 17 == 16:
                assert body == bytes([k % 256]) * 70_000
            elif k % 5 == 4:
                assert body == bytes([k % 256]) * ((r * 37 + k * 11) % 300)
            else:
                assert body == "x" * ((r * 37 + k * 11) % 300)


@pytest.mark.parametrize("cap", [R.MIN_CAPACITY, DEFAULT_CAPACITY])
def test_put_many_counts_every_item_it_puts(cap):
    """Each frame put_many writes is counted (len, and maxsize's bound), whichever
    path it took: the batched fast path, Ring.push, or a spill."""
    with pt.Channel(backend="process", capacity=cap, maxsize=60) as ch:
        items = [*range(40), b"raw", "s" * 100, b"z" * 70_000, *range(40, 57)]
        ch.put_many(items, timeout=HANG)
        assert len(ch) == len(items) == 60
        with pytest.raises(queue.Full):
            ch.put_nowait("one too many")
        got = []
        while len(got) < len(items):
            got += ch.get_many(100, timeout=HANG)
        assert got == items and len(ch) == 0


def test_put_many_without_waiting_into_an_empty_ring_that_wraps_early():
    """put_many's first frame wraps early (the ring is empty, its tail past cap/8), and
    the pad it leaves takes the room its second frame needs until it is skipped:
    with timeout=0 that was ChannelFull (the first item put) on an empty ring."""
    with pt.Channel(backend="process", capacity=4096) as ch:
        item = "a" * 485  # a 544-byte frame
        ch.put(item)
        assert ch.get() == item  # the tail at 544, past the early-wrap point (512)
        ch.put_many([item, item], timeout=0)
        assert len(ch) == 2
        assert ch.get_many(2, timeout=0) == [item, item]


def test_get_nowait_from_threads_sharing_a_handle_while_items_wait():
    """get(timeout=0) while another thread of the process holds the consumer mutex (in
    get_many, or any get on the Python paths): the lock wait spun holding the GIL, so
    the holder could not finish, and gave up at the deadline with thousands of items
    in the ring (ChannelEmpty; TimeoutError before). It now waits once, GIL released."""
    with pt.Channel(backend="process", capacity=1 << 20) as ch:
        ch.put_many(range(20_000))
        spurious: list[BaseException] = []

        def take(batch: bool) -> None:
            while True:
                try:
                    ch.get_many(5, timeout=0) if batch else ch.get(timeout=0)
                except (pt.ChannelEmpty, TimeoutError) as exc:
                    if len(ch) == 0:
                        return
                    spurious.append(exc)

        threads = [threading.Thread(target=take, args=(k == 0,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert spurious == []


def test_put_many_wakes_a_reader_asleep_in_get():
    """A reader asleep on the ring is woken by put_many (it reads WAIT_DATA once per
    lock, then publishes the batch), and gets every item, in order."""
    with pt.Channel(backend="process") as ch:
        ch.put_many(["warm", "up"], timeout=HANG)  # the writer's fast path is open now
        assert ch.get_many(2, timeout=HANG) == ["warm", "up"]
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.extend(ch.get(timeout=HANG) for _ in range(3)))
        reader.start()
        wait_until(lambda: blocked_in(ch, "get"), HANG, "the reader asleep in get()")
        ch.put_many(["a", "b", "c"], timeout=HANG)
        # Woken by the writer, whose wake-up uses the registration up at once (a
        # reader that was not woken would still be registered until its own time-out).
        assert not blocked_in(ch, "get")
        reader.join(HANG)
        assert not reader.is_alive()
        assert got == ["a", "b", "c"]


def _refuse_on_load() -> None:
    raise RuntimeError("this item cannot be rebuilt here")


class LoadsBadly:
    def __reduce__(self):
        return (_refuse_on_load, ())


@pytest.mark.parametrize("mixed", [False, True], ids=["pickles", "mixed-kinds"])
def test_get_many_of_an_item_that_cannot_be_unpickled_loses_nothing(mixed):
    """get_many unpickles a batch in one call. An item that fails there ends the batch:
    the items before it are returned, it raises SerializationError at the next call,
    and the items after it follow in order; none is lost, the channel goes on."""
    after = [b"raw", 4] if mixed else [4, 5]  # bytes: a batch of several frame kinds
    with pt.Channel(backend="process") as ch:
        ch.put_many([1, 2, LoadsBadly(), *after], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [1, 2]
        assert len(ch) == 3  # held by this handle, still counted
        with pytest.raises(pt.SerializationError, match="cannot be rebuilt"):
            ch.get_many(10, timeout=HANG)
        ch.put_many([6, 7], timeout=HANG)
        # The held ones first, alone; then the ring again.
        assert ch.get_many(10, timeout=HANG) == after
        assert ch.get_many(10, timeout=HANG) == [6, 7]
        assert len(ch) == 0


def _rebuild_well(data: bytes) -> LoadsWell:
    return LoadsWell(data)


class LoadsWell:
    """Pickles to exactly as many bytes as a LoadsBadlyBig of the same data."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return (_rebuild_well, (self.data,))


def _rebuild_badly(data: bytes) -> None:
    raise RuntimeError("this item cannot be rebuilt here")


class LoadsBadlyBig:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return (_rebuild_badly, (self.data,))


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled-spill", "one-off-spill"])
def test_get_many_of_a_spilled_item_that_cannot_be_unpickled(pooled):
    """A big item travels in a spill, which its reader frees (pooled) or removes
    (one-off) as it reads it. One that fails in a batch raises at the next get all
    the same: it is not read again (the spill reused by the next item, or gone)."""
    body = b"x" * 100_000  # over half the ring: a spill
    with pt.Channel(backend="process", capacity=1 << 16) as ch:
        # Past the writer's pool of spills (4, unread): a one-off spill.
        first = [] if pooled else [LoadsWell(body) for _ in range(4)]
        ch.put_many([1, *first, LoadsBadlyBig(body), 3], timeout=HANG)
        got = ch.get_many(10, timeout=HANG)
        assert got[0] == 1 and len(got) == 1 + len(first)
        ch.put(LoadsWell(b"y" * len(body)), timeout=HANG)  # may reuse the freed spill
        with pytest.raises(pt.SerializationError, match="cannot be rebuilt"):
            ch.get(timeout=HANG)
        assert ch.get(timeout=HANG) == 3
        last = ch.get(timeout=HANG)
        assert type(last) is LoadsWell and last.data[:1] == b"y"
        with pytest.raises(queue.Empty):
            ch.get(timeout=0.05)


def test_a_handle_holding_items_is_released_when_dropped():
    """Items held after a failed batch keep no cycle: the owner's handle, dropped,
    closes the channel at once (not whenever the cycle collector runs)."""
    ch = pt.Channel(backend="process")
    name = ch.name
    ch.put_many([1, LoadsBadly(), 3], timeout=HANG)
    assert ch.get_many(10, timeout=HANG) == [1]
    assert len(ch) == 2  # held
    other = pickle.loads(pickle.dumps(ch))
    assert other is ch  # one handle per process
    del other
    gc.disable()  # a collection now would hide a cycle
    try:
        gone = weakref.ref(ch)
        del ch
        assert gone() is None
        assert name not in shm_names()
    finally:
        gc.enable()


def test_get_after_a_failed_batch_takes_the_held_items_first():
    with pt.Channel(backend="process") as ch:
        ch.put_many([1, LoadsBadly(), 3, 4], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [1]
        ch.put(5, timeout=HANG)
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=HANG)
        assert [ch.get(timeout=HANG) for _ in range(3)] == [3, 4, 5]
        assert ch._c_ref is ch._c_ring_ref  # the usual get() again
        with pytest.raises(queue.Empty):
            ch.get(timeout=0.05)


def test_a_get_bound_before_items_were_held_takes_them_first():
    """A consumer loop binds get once (iter(), ``get = ch.get``): items held after
    that by a failed batch still come first, then the ring's."""
    with pt.Channel(backend="process") as ch:
        it = iter(ch)
        get = ch.get
        ch.put(0, timeout=HANG)
        assert next(it) == 0
        ch.put_many([1, LoadsBadly(), 3, 4], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [1]
        ch.put(5, timeout=HANG)
        with pytest.raises(pt.SerializationError):
            get(timeout=HANG)
        assert next(it) == 3
        assert get(timeout=HANG) == 4
        assert next(it) == 5
        assert len(ch) == 0


_gate_entered = threading.Event()
_gate_release = threading.Event()


def _rebuild_gate(tag: str) -> tuple[str, str]:
    # Stops only in the thread named "gated", until the test releases it.
    if threading.current_thread().name == "gated":
        _gate_entered.set()
        assert _gate_release.wait(HANG)
    return ("gate", tag)


class Gate:
    """An item whose unpickling, in the thread named "gated", waits for the test."""

    def __reduce__(self):
        return (_rebuild_gate, ("g",))


def _start_gated_batch(ch: pt.Channel, got: dict[str, object]) -> threading.Thread:
    """A thread whose get_many takes the held items, stopped in a Gate's decode
    (until _gate_release is set): its result goes to ``got["batch"]``."""
    batch = threading.Thread(
        target=lambda: got.update(batch=ch.get_many(10, timeout=HANG)), name="gated"
    )
    batch.start()
    wait_until(_gate_entered.is_set, HANG, "the batch decoding the gated item")
    return batch


def test_threads_sharing_a_handle_take_held_items_once_and_in_order():
    """One handle per process, so its threads share it. A batch of held items is
    taken whole: a get in another thread meanwhile waits for it, and takes what
    follows the batch. Before, it took an item from under the batch's feet: the
    batch returned one item twice and lost the next."""
    _gate_entered.clear()
    _gate_release.clear()
    with pt.Channel(backend="process") as ch:
        ch.put_many([0, LoadsBadly(), 1, Gate(), 3, 4], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [0]
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=HANG)
        ch.put(5, timeout=HANG)  # after the held ones, in the ring
        got: dict[str, object] = {}
        batch = _start_gated_batch(ch, got)
        try:
            single = threading.Thread(target=lambda: got.update(single=ch.get(timeout=HANG)))
            single.start()
            # Let it go as far as it can: done (before), or waiting for the batch.
            wait_until(
                lambda: not single.is_alive() or thread_is_in(single.ident, "_take_held"),
                HANG,
                "the other get to finish or to wait for the batch",
            )
        finally:
            _gate_release.set()
        batch.join(HANG)
        single.join(HANG)
        assert got == {"batch": [1, ("gate", "g"), 3, 4], "single": 5}
        assert len(ch) == 0


def test_a_get_waiting_for_another_threads_held_batch_keeps_its_timeout():
    """A get() waits while another thread of the process decodes a batch of held
    items; its timeout still holds there (it waited on the batch for good): it
    raises ChannelEmpty. Nothing is lost: the batch and the ring's item come after."""
    _gate_entered.clear()
    _gate_release.clear()
    with pt.Channel(backend="process") as ch:
        ch.put_many([0, LoadsBadly(), Gate(), 3], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [0]
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=HANG)
        got: dict[str, object] = {}
        batch = _start_gated_batch(ch, got)
        try:
            with pytest.raises(pt.ChannelEmpty, match="decoding"):
                ch.get(timeout=0.05)
            assert batch.is_alive()  # it raised while the batch still decoded
        finally:
            _gate_release.set()
        batch.join(HANG)
        assert got == {"batch": [("gate", "g"), 3]}
        ch.put(4, timeout=HANG)
        assert ch.get(timeout=HANG) == 4
        assert len(ch) == 0


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_a_get_of_held_items_takes_an_endless_timeout(timeout):
    """get(timeout=inf) (no limit, as everywhere) while get_many holds items back:
    it takes the next one. The wait for another thread's batch was given the raw
    number, and threading's acquire() raised OverflowError for it."""
    with pt.Channel(backend="process") as ch:
        ch.put_many([0, LoadsBadly(), 1], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [0]
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=timeout)
        assert ch.get(timeout=timeout) == 1
        assert len(ch) == 0


def test_a_get_asleep_on_the_ring_takes_items_held_meanwhile():
    """A thread asleep in get() on an empty ring, and another whose get_many holds
    items: the sleeper takes them (before, it slept on until its timeout while
    they waited). Usually the batch is taken before the sleeper wakes; whoever
    takes what, each item comes once and the one that fails raises once."""
    SE = pt.SerializationError
    with pt.Channel(backend="process") as ch:
        slept: list = []

        def sleeper() -> None:
            try:
                slept.append(ch.get(timeout=HANG))
            except Exception as exc:
                slept.append(type(exc))

        t = threading.Thread(target=sleeper)
        t.start()
        try:
            wait_until(lambda: blocked_in(ch, "get"), HANG, "the thread asleep in get()")
            ch.put_many([1, LoadsBadly(), 3], timeout=HANG)
            try:
                got = ch.get_many(10, timeout=HANG)
            except SE:
                got = [SE]
        finally:
            t.join(HANG)
        assert slept and slept[0] is not queue.Empty
        got += slept
        while len(ch):  # what is left, held or in the ring
            try:
                got.append(ch.get(timeout=HANG))
            except SE:
                got.append(SE)
        assert sorted(got, key=str) == sorted([1, 3, SE], key=str)


def _take_in_forked_child(ch, fd: int) -> None:
    """What a forked child gets from its copy of ``ch``, written to ``fd``."""
    try:
        seen: object = ("took", len(ch), ch.get_many(10, timeout=HANG), len(ch))
    except Exception as exc:
        seen = ("raised", type(exc).__name__)
    os.write(fd, pickle.dumps(seen))


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing-fork"])
def test_a_forked_child_does_not_get_the_items_its_parent_holds(how):
    """Held items were taken off the ring by the parent, whose handle hands them out:
    a child forked meanwhile (os.fork, or the "fork" start method) gets the ring's
    items from its copy of the handle, not them a second time."""
    import multiprocessing

    with pt.Channel(backend="process") as ch:
        ch.put_many([1, LoadsBadly(), 3, 4], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [1]
        ch.put(5, timeout=HANG)  # in the ring: for the child
        r, w = os.pipe()
        try:
            if how == "os.fork":
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    code = 1
                    try:
                        _take_in_forked_child(ch, w)
                        code = 0
                    finally:
                        os._exit(code)
                os.waitpid(pid, 0)
            else:
                proc = multiprocessing.get_context("fork").Process(
                    target=_take_in_forked_child, args=(ch, w)
                )
                proc.start()
                proc.join(HANG)
                assert proc.exitcode == 0
            os.close(w)
            w = -1
            with os.fdopen(r, "rb") as f:
                r = -1
                seen = pickle.loads(f.read())
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
        assert seen == ("took", 1, [5], 0)
        assert len(ch) == 3  # still held here
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [3, 4]
        with pytest.raises(queue.Empty):
            ch.get(timeout=0.05)


def test_a_child_forked_while_a_thread_takes_held_items_can_get():
    """A thread of the parent in the middle of a batch of held items at the fork (it
    holds the handle's lock): the child's copy of the handle has a lock of its own,
    so holding and taking items of its own does not wait for a thread it does not have."""
    import warnings

    _gate_entered.clear()
    _gate_release.clear()
    with pt.Channel(backend="process") as ch:
        ch.put_many([0, LoadsBadly(), 1, Gate(), 3], timeout=HANG)
        assert ch.get_many(10, timeout=HANG) == [0]
        with pytest.raises(pt.SerializationError):
            ch.get(timeout=HANG)
        ch.put(5, timeout=HANG)
        got: list = []
        batch = threading.Thread(
            target=lambda: got.extend(ch.get_many(10, timeout=HANG)), name="gated"
        )
        batch.start()
        try:
            wait_until(_gate_entered.is_set, HANG, "the batch decoding the gated item")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    assert ch.get_many(10, timeout=HANG) == [5]
                    ch.put_many([6, LoadsBadly(), 7], timeout=HANG)  # the child's own
                    assert ch.get_many(10, timeout=HANG) == [6]  # holds: takes the lock
                    with pytest.raises(pt.SerializationError):
                        ch.get(timeout=HANG)
                    assert ch.get(timeout=HANG) == 7
                    code = 0
                finally:
                    os._exit(code)
            _expect_clean_exit(pid, "the child waited for the parent's thread")
        finally:
            _gate_release.set()
            batch.join(HANG)
        assert got == [1, ("gate", "g"), 3]
        assert len(ch) == 0  # 5 went to the child


def test_the_c_fast_paths_are_built_and_used_unless_turned_off():
    """`make test` builds _lane.c (it installs a C compiler if it can): a missing
    extension would silently halve the channel's speed, so it fails here. With
    POLYTASK_PURE_PYTHON=1 (one of `make versions`' runs) the Python paths are used."""
    from polytask._ipc import channel as C

    ch = pt.Channel(backend="process")
    try:
        if os.environ.get("POLYTASK_PURE_PYTHON"):
            assert C._lane is None and ch._lane is None
        else:
            assert C._lane is not None, (
                "polytask._ipc._lane (setup.py) was not built: install a C compiler "
                "(apt-get install gcc) and reinstall polytask"
            )
            assert ch._lane is not None
        for item in [(1, "a"), b"raw", "x" * 600, None]:  # both paths, and the rest
            ch.put(item, timeout=10)
            assert ch.get(timeout=10) == item
    finally:
        ch.close()


def test_a_lane_made_without_its_ring_raises_instead_of_crashing():
    """Lane.__new__ alone leaves it pointing nowhere: its paths raise ValueError
    (they dereferenced NULL: SIGSEGV)."""
    pytest.importorskip("polytask._ipc._lane")
    code = textwrap.dedent(
        """
        from polytask._ipc import _lane
        lane = _lane.Lane.__new__(_lane.Lane)
        calls = [lane.take, lambda: lane.put(b"x", 2), lambda: lane.write([(0, b"x")], 0, 2),
                 lambda: lane.take_many(3)]
        for call in calls:
            try:
                call()
            except ValueError as exc:
                print("ValueError:", exc)
        """
    )
    proc = run_python(code, timeout=HANG)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.count("ValueError: Lane: not initialised") == 4, proc.stdout


def test_a_stale_lane_build_fails_at_import_not_in_every_handler():
    """let_go takes (base, owed) now: a _lane built before (an in-place build not
    redone) raised TypeError in every exception handler of put and get, hiding the
    exception; its API number says so at import, with the fix."""
    pytest.importorskip("polytask._ipc._lane")
    code = textwrap.dedent(
        """
        import os, sys, types
        os.environ["POLYTASK_PURE_PYTHON"] = sys.argv[1]
        from polytask._ipc import _lane
        stale = types.ModuleType("polytask._ipc._lane")
        stale.Lane, stale.LAYOUT = _lane.Lane, _lane.LAYOUT  # no API: the first build
        stale.let_go = lambda base: 0
        sys.modules["polytask._ipc._lane"] = stale
        import polytask._ipc
        polytask._ipc._lane = stale
        try:
            import polytask._ipc.channel
        except ImportError as exc:
            print(exc)
        """
    )
    for pure in ("", "1"):
        proc = run_python(code, pure, timeout=HANG)
        assert "older build (API 1, not 3): reinstall polytask" in proc.stdout, proc
