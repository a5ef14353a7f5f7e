"""Process channels when processes die at the worst moment.

Each test kills a real process with SIGKILL at a chosen point of the ring
protocol (holding a mutex, half-way through copying a big frame, while reading
one) or at random points of a busy stream, then checks that the others go on:
no corruption, no lost or duplicated item of a surviving producer, no hang,
and nothing left in /dev/shm.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

import polytask as pt
from helpers import Harness, wait_until

SRC = str(Path(__file__).resolve().parents[2] / "src")
HANG = 30.0  # a bound for "does not hang", never a speed check


def shm_names(pid: int) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "polytask" in n and f"-{pid}-" in n}


class Child:
    """A Python process attached to channel ``name``, running ``body`` (a script)."""

    def __init__(
        self, tmp_path: Path, name: str, body: str, *args: str, pure: bool | None = None
    ) -> None:
        self.ready = tmp_path / f"ready-{time.monotonic_ns()}"
        code = textwrap.dedent(
            """
            import os, sys, time, zlib
            from polytask._ipc import channel as C, ring as R
            from polytask._ipc.shm import _mutex_unlock
            ch = C._attach_channel(sys.argv[1])
            ready = sys.argv[2]
            def say(text):
                with open(ready, "a") as f:
                    f.write(text + "\\n")
            """
        ) + textwrap.dedent(body)
        env = dict(os.environ, PYTHONPATH=SRC)
        if pure is not None:  # the channel's Python fast paths (True) or its C ones
            env.pop("POLYTASK_PURE_PYTHON", None)
            if pure:
                env["POLYTASK_PURE_PYTHON"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, name, str(self.ready), *args], env=env
        )

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            if self.ready.exists() and text in self.ready.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited with {self.proc.returncode} before {text!r}")
            time.sleep(0.02)
        raise AssertionError(f"child never said {text!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG)


@pytest.mark.parametrize("lock", ["_lock_p", "_lock_c"], ids=["producer", "consumer"])
def test_a_process_killed_holding_a_mutex_hands_it_over(tmp_path, lock):
    """A writer (or reader) SIGKILLed holding the producer (or consumer) mutex: the
    robust mutex hands it over, on the C and the Python paths alike."""
    ch = pt.Channel(backend="process")
    ch.put("before the crash")
    child = Child(
        tmp_path,
        ch.name,
        f"""
        ch.{lock}(None)            # and never unlock it
        say("locked")
        time.sleep(600)
        """,
    )
    try:
        child.wait_for("locked")
        child.kill()
        assert ch.get(timeout=HANG) == "before the crash"
        ch.put("after the crash", timeout=HANG)
        assert ch.get(timeout=HANG) == "after the crash"
    finally:
        child.kill()
        ch.close()


def test_close_after_a_writer_died_holding_the_producer_mutex(tmp_path):
    """close() takes both mutexes; the producer one is handed over by a dead holder
    while close() holds the consumer one (it used to wait for itself for good)."""
    ch = pt.Channel(backend="process")
    ch.put("before the crash")
    child = Child(
        tmp_path,
        ch.name,
        """
        ch._lock_p(None)            # and never unlock it
        say("locked")
        time.sleep(600)
        """,
    )
    closer = threading.Thread(target=ch.close, daemon=True)
    try:
        child.wait_for("locked")
        child.kill()
        closer.start()
        closer.join(HANG)
        assert not closer.is_alive(), "close() hangs"
        assert ch.closed
        assert list(ch) == ["before the crash"]
    finally:
        child.kill()
        if not closer.is_alive():  # (a hung close() holds the consumer mutex)
            ch.close()


def test_writer_killed_half_way_through_a_big_frame(tmp_path):
    ch = pt.Channel(backend="process")
    child = Child(
        tmp_path,
        ch.name,
        """
        ch._lock_p(None)
        pos = ch._ring.reserve(100, [300_000], C.K_OOB, os.getpid())
        _mutex_unlock(ch._p_addr)
        ch._ring.payload_view(pos)[:10] = b"half-done!"
        say("reserved")
        time.sleep(600)
        """,
    )
    try:
        child.wait_for("reserved")
        ch.put("queued behind the unfinished frame")
        result: list = []
        reader = threading.Thread(target=lambda: result.append(ch.get(timeout=HANG)))
        reader.start()
        time.sleep(0.3)  # deliberate: the reader must stay blocked for a while
        assert reader.is_alive()  # it waits for the frame: its writer lives
        child.kill()
        reader.join(HANG)
        assert result == ["queued behind the unfinished frame"]
        assert len(ch) == 0
    finally:
        child.kill()
        ch.close()


def test_reader_killed_while_reading_a_big_frame(tmp_path):
    ch = pt.Channel(backend="process", capacity=1 << 18)
    item = os.urandom(100_000)  # a big frame: claimed, then copied outside the lock
    ch.put(item)
    child = Child(
        tmp_path,
        ch.name,
        """
        ch._lock_c(None)
        pos = ch._ring.take(os.getpid())
        _mutex_unlock(ch._c_addr)
        assert pos >= 0, pos
        say("claimed")
        time.sleep(600)
        """,
    )
    try:
        child.wait_for("claimed")
        child.kill()
        # The dead reader's frame holds the head back; writers must free it, not wait forever.
        for k in range(4):
            data = bytes([k]) * 100_000
            ch.put(data, timeout=HANG)
            assert ch.get(timeout=HANG) == data
    finally:
        child.kill()
        ch.close()


PRODUCER = """
tag = int(sys.argv[3]); count = int(sys.argv[4])
say("started")
for i in range(count):
    if i % 7 == 3:
        body = os.urandom(150_000)         # a big frame (copied outside the lock)
    else:
        body = os.urandom(40 + i % 200)    # a small one
    ch.put((tag, i, zlib.crc32(body), body), timeout=60)
say("done")
"""


def test_producers_killed_at_random_points_of_a_busy_stream(tmp_path):
    """Every item that arrives is whole, each producer's items arrive in order and once,
    a surviving producer's items all arrive, and the consumers are never stuck."""
    ch = pt.Channel(maxsize=32, backend="process", capacity=1 << 20)
    endless = 10**9
    victims = [Child(tmp_path, ch.name, PRODUCER, str(k), str(endless)) for k in range(3)]
    survivor = Child(tmp_path, ch.name, PRODUCER, "9", "400")
    received: list[tuple[int, int]] = []
    bad: list[str] = []

    def consume() -> None:
        while True:
            try:
                tag, i, crc, body = ch.get(timeout=HANG)
            except pt.ChannelClosed:
                return
            if zlib.crc32(body) != crc:
                bad.append(f"corrupt item {tag}:{i}")
            received.append((tag, i))

    consumers = [threading.Thread(target=consume) for _ in range(2)]
    for t in consumers:
        t.start()
    try:
        for v in victims:
            v.wait_for("started")
        rng = random.Random(5)
        for v in victims:
            time.sleep(rng.uniform(0.2, 0.6))  # deliberate: a random point of a busy stream
            v.kill()
        survivor.wait_for("done")
        survivor.proc.wait(HANG)
        ch.close()
        for t in consumers:
            t.join(HANG)
        assert not any(t.is_alive() for t in consumers), "a consumer is stuck"
    finally:
        for v in [*victims, survivor]:
            v.kill()
        ch.close()
    assert bad == []
    by_tag: dict[int, list[int]] = {}
    for tag, i in received:
        by_tag.setdefault(tag, []).append(i)
    assert sorted(by_tag[9]) == list(range(400))
    for tag, seq in by_tag.items():
        assert len(seq) == len(set(seq)), f"producer {tag}: an item arrived twice"
        if tag != 9:
            assert sorted(seq) == list(range(len(seq))), f"producer {tag}: an item was lost"
    assert all(len(by_tag.get(k, [])) > 0 for k in range(3))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_owner_killed_leaves_nothing_in_dev_shm(tmp_path, sig):
    ready = tmp_path / "ready"
    h = Harness(
        f"""
        import os, time, numpy as np, polytask as pt
        ch = pt.Channel(backend="process", capacity=1 << 16)
        ch.put(np.zeros(100_000))       # spilled into a segment of its own
        lock = pt.Lock(backend="process")
        lock.acquire()
        sa = pt.SharedArray(4096)
        fifo = pt.Fifo({str(tmp_path / "fifo")!r})
        open({str(ready)!r}, "w").write("ready")
        time.sleep(600)
        """,
        tmp_path,
    )
    try:
        h.wait_for_line(ready, "ready")
        assert len(shm_names(h.pid)) == 4  # ring, spill, lock, array
        h.signal(sig)
        assert h.leftovers() == []
        deadline = time.monotonic() + HANG
        while shm_names(h.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shm_names(h.pid) == set()
        assert not (tmp_path / "fifo").exists()
    finally:
        h.close()


def test_owner_killed_after_a_writer_exited_with_its_spills_unread(tmp_path):
    """A writer spills big items and exits normally (handing its unread spills to the
    channel); then the owner is SIGKILLed: the guardian removes the spills too."""
    ready = tmp_path / "ready"
    h = Harness(
        f"""
        import subprocess, sys, time, polytask as pt
        ch = pt.Channel(backend="process", capacity=1 << 16)
        writer = (
            "import sys, numpy as np; from polytask._ipc import channel as C; "
            "ch = C._attach_channel(sys.argv[1]); "
            "[ch.put(np.full(100_000, k)) for k in range(6)]"  # 4 pooled spills, 2 one-off
        )
        subprocess.run([sys.executable, "-c", writer, ch.name], check=True, timeout=60)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(600)
        """,
        tmp_path,
    )
    try:
        h.wait_for_line(ready, "ready")
        names = shm_names(h.pid)
        assert len(names) == 7  # the ring and six spills named after it
        h.signal(signal.SIGKILL)
        assert h.leftovers() == []
        deadline = time.monotonic() + HANG
        while shm_names(h.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shm_names(h.pid) == set()
    finally:
        h.close()


def test_writer_exiting_after_the_channel_is_gone_removes_its_spills(tmp_path):
    ch = pt.Channel(backend="process", capacity=1 << 16)
    name = ch.name
    child = Child(
        tmp_path,
        name,
        """
        import numpy as np
        say("attached")
        while not os.path.exists(ready + ".go"):
            time.sleep(0.01)
        closed = 0
        for k in range(6):
            try:
                ch.put(np.full(100_000, k))   # spilled, then refused: the owner released it
            except C.ChannelClosed as exc:
                closed += "dropped its last handle without close()" in str(exc)
        say(f"done {closed}")
        """,
    )
    try:
        child.wait_for("attached")
        del ch  # the owner releases the channel: nobody can attach to it any more
        assert not os.path.exists(f"/dev/shm/{name}")
        Path(str(child.ready) + ".go").write_text("go")
        child.wait_for("done 6")
        assert child.proc.wait(HANG) == 0
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(name)]
    finally:
        child.kill()


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _dead_writer(tmp_path: Path, name: str, how: str, reads_first: int = 0) -> tuple[int, int]:
    """A writer attached to channel ``name`` puts 6 big items (4 in its pooled spills,
    2 in one-off ones) and dies after its puts returned: SIGKILLed, or by os._exit in
    a forked child (as every multiprocessing fork child ends). Returns its pid and
    its guardian's, once both are gone: the guardian had its say about the spills."""
    if how == "sigkill":
        child = Child(
            tmp_path,
            name,
            """
            import numpy as np
            from polytask._os import proc as P
            for k in range(6):
                ch.put(np.full(100_000, k))
            say(f"put {P._guardian.pid}")
            time.sleep(600)
            """,
        )
        try:
            child.wait_for("put")
            guardian = int(child.ready.read_text().split()[-1])
        finally:
            child.kill()
        pid = child.proc.pid
    else:
        import numpy as np

        from polytask._ipc import channel as C
        from polytask._os import proc as P

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                ch = C._attach_channel(name)
                for k in range(6):
                    ch.put(np.full(100_000, k))
                os.write(w, b"%d" % P._guardian.pid)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            guardian = int(f.read())
        assert os.waitpid(pid, 0)[1] == 0
    wait_until(lambda: _gone(guardian), HANG, "the dead writer's guardian to finish")
    return pid, guardian


@pytest.mark.parametrize("how", ["sigkill", "fork-os-exit"])
def test_a_dead_writers_spilled_items_are_all_read(tmp_path, how):
    """Items whose put returned are the channel's: the writer's guardian leaves its
    spills that hold one (they used to be removed, and the items lost). Once read,
    the reader removes them, as nobody reuses them: nothing of the writer is left."""
    ch = pt.Channel(backend="process", capacity=1 << 16)
    try:
        pid, _ = _dead_writer(tmp_path, ch.name, how)
        assert len(shm_names(pid)) == 6  # its spills, all unread
        got = [int(ch.get(timeout=5)[0]) for _ in range(6)]
        assert got == list(range(6))
        assert shm_names(pid) == set()
    finally:
        ch.close()


def test_a_dead_writers_read_spills_are_removed_by_its_guardian(tmp_path):
    """The writer's pooled spills whose items were read (FREE) go with the writer,
    while the channel lives on."""
    ch = pt.Channel(backend="process", capacity=1 << 16)
    child = Child(
        tmp_path,
        ch.name,
        """
        import numpy as np
        for k in range(2):
            ch.put(np.full(100_000, k))
        say("put")
        time.sleep(600)
        """,
    )
    try:
        child.wait_for("put")
        assert [int(ch.get(timeout=HANG)[0]) for _ in range(2)] == [0, 1]
        assert len(shm_names(child.proc.pid)) == 2  # kept for its next items
        child.kill()
        wait_until(lambda: not shm_names(child.proc.pid), HANG, "the spills to go")
        ch.put("still open")
        assert ch.get(timeout=HANG) == "still open"
    finally:
        child.kill()
        ch.close()


OWNER = """
import gc, os, sys, time
import polytask as pt
out, how = sys.argv[1], sys.argv[2]
empty = pt.Channel(backend="process")             # a reader waits in get()
full = pt.Channel(maxsize=1, backend="process")   # a writer waits in put()
full.put("fills it")
with open(out + ".tmp", "w") as f:
    f.write(empty.name + " " + full.name)
os.rename(out + ".tmp", out)
while not os.path.exists(out + ".go"):
    time.sleep(0.01)
if how == "drop":
    del empty, full          # no close(): the last handles go
    gc.collect()
    open(out + ".dropped", "w").close()
    time.sleep(600)          # and the owner lives on
elif how == "exit":
    sys.exit(0)              # no close(): the interpreter exits
time.sleep(600)              # "kill": SIGKILLed by the test
"""

WAITER = """
import queue
from polytask import ChannelClosed
op = sys.argv[3]
say("attached")
t0 = time.monotonic()
try:
    if op == "get":
        ch.get(timeout=5)    # before the fix: queue.Empty after 5 s (or a hang, without it)
    else:
        ch.put("more", timeout=5)
    say("returned")
except ChannelClosed as exc:
    say(f"closed after {time.monotonic() - t0:.2f} s: {exc}")
except queue.Empty:
    say("empty")
except queue.Full:
    say("full")
"""


def asleep(name: str, word: int) -> bool:
    """Whether a process sleeps in get() (word 10, _WAIT_DATA) or put() (19, _WAIT_SPACE)."""
    from polytask._ipc import ring as R
    from polytask._ipc.shm import Segment

    seg = Segment.attach(name)
    try:
        words = seg.buf[: R.DATA_OFFSET].cast("Q")
        try:
            return words[word] & ~R.CLOSED_FLAG > 0
        finally:
            words.release()
    finally:
        seg.close()


@pytest.mark.parametrize("how", ["kill", "drop", "exit"])
def test_waiters_attached_by_name_learn_that_the_owner_is_gone(tmp_path, how):
    """A reader blocked in get() and a writer blocked in put(), attached by name in
    processes unrelated to the owner, get ChannelClosed (saying why) when the owner is
    SIGKILLed, drops the channel without close(), or exits without close()."""
    out = tmp_path / "names"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(out), how], env=dict(os.environ, PYTHONPATH=SRC)
    )
    waiters: list[Child] = []
    try:
        deadline = time.monotonic() + HANG
        while not out.exists() and time.monotonic() < deadline:
            assert owner.poll() is None
            time.sleep(0.02)
        empty, full = out.read_text().split()
        waiters = [
            Child(tmp_path, empty, WAITER, "get"),
            Child(tmp_path, full, WAITER, "put"),
        ]
        for w in waiters:
            w.wait_for("attached")
        for name, word in ((empty, 10), (full, 19)):
            while not asleep(name, word) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert asleep(name, word), "the waiter never went to sleep"
        Path(str(out) + ".go").write_text("go")
        if how == "kill":
            owner.send_signal(signal.SIGKILL)
        why = {
            "kill": f"(pid {owner.pid}) died",
            "drop": f"(pid {owner.pid}) dropped its last handle without close()",
            "exit": f"(pid {owner.pid})",
        }[how]
        for w in waiters:
            w.wait_for("closed after")
            assert why in w.ready.read_text()
            assert w.proc.wait(HANG) == 0
        if how == "drop":
            assert owner.poll() is None  # the owner lives: its death was not the signal
    finally:
        for w in waiters:
            w.kill()
        if owner.poll() is None:
            owner.kill()
        owner.wait(HANG)


MIXED_PRODUCER = """
from polytask._ipc import channel as C
tag = int(sys.argv[3]); count = int(sys.argv[4])
assert (C._lane is None) == bool(os.environ.get("POLYTASK_PURE_PYTHON")), C._lane
def item(i):
    # small frames of every length class, some past PACKED, now and then a big one
    body = os.urandom(150_000 if i % 97 == 50 else (i * 37) % 900)
    return (tag, i, zlib.crc32(body), body)
i = 0
while i < count:
    if i % 3:
        ch.put(item(i), timeout=60)
        i += 1
    else:  # put_many's paths too
        k = min(count - i, 1 + i % 9)
        ch.put_many([item(j) for j in range(i, i + k)], timeout=60)
        i += k
say("done")
"""

MIXED_CONSUMER = """
from polytask._ipc import channel as C
assert (C._lane is None) == bool(os.environ.get("POLYTASK_PURE_PYTHON")), C._lane
got = []
n = 0
while True:
    n += 1
    try:  # get_many's paths too
        batch = ch.get_many(1 + n % 7, timeout=60) if n % 2 else [ch.get(timeout=60)]
    except C.ChannelClosed:
        break
    for tag, i, crc, body in batch:
        assert zlib.crc32(body) == crc, (tag, i)
        got.append(f"{tag} {i}")
with open(sys.argv[3], "w") as f:
    f.write("\\n".join(got))
say("done")
"""


def test_the_c_and_python_fast_paths_share_one_ring(tmp_path):
    """Writers and readers of both kinds (_lane.c and channel.py's Python paths) on one
    small bounded ring, so that it wraps, fills and has sleepers: every item arrives
    whole, once, and in its producer's order, whichever kind wrote or read it."""
    ch = pt.Channel(maxsize=16, backend="process", capacity=1 << 14)
    count = 1500
    producers = [
        Child(tmp_path, ch.name, MIXED_PRODUCER, str(k), str(count), pure=bool(k % 2))
        for k in range(4)
    ]
    outs = [tmp_path / f"got-{k}" for k in range(2)]
    consumers = [
        Child(tmp_path, ch.name, MIXED_CONSUMER, str(out), pure=bool(k))
        for k, out in enumerate(outs)
    ]
    received: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + HANG * 4
        done = 0
        while done < len(producers):
            assert time.monotonic() < deadline, "the producers do not finish"
            try:
                tag, i, crc, body = ch.get(timeout=0.5)
            except pt.ChannelEmpty:
                done = sum(p.proc.poll() is not None for p in producers)
                continue
            assert zlib.crc32(body) == crc, (tag, i)
            received.append((tag, i))
        assert all(p.proc.wait(HANG) == 0 for p in producers)
        ch.close()
        for c in consumers:
            assert c.proc.wait(HANG) == 0
    finally:
        for c in [*producers, *consumers]:
            c.kill()
        ch.close()
    mine: dict[int, int] = {}
    for tag, i in received:  # this reader saw each producer's items in order
        assert mine.get(tag, -1) < i, (tag, i)
        mine[tag] = i
    for out in outs:
        for line in filter(None, out.read_text().split("\n")):
            tag, i = map(int, line.split())
            received.append((tag, i))
    by_tag: dict[int, list[int]] = {}
    for tag, i in received:
        by_tag.setdefault(tag, []).append(i)
    assert sorted(by_tag) == [0, 1, 2, 3]
    for seq in by_tag.values():
        assert sorted(seq) == list(range(count))  # each once
    for out in outs:  # each reader saw each producer's items in order
        seen: dict[int, int] = {}
        for line in filter(None, out.read_text().split("\n")):
            tag, i = map(int, line.split())
            assert seen.get(tag, -1) < i, (tag, i)
            seen[tag] = i


EXIT_WHILE_IN_USE = """
import sys, threading, time
import polytask as pt
ch = pt.Channel(backend="process")
def loop():
    while True:
        try:
            ch.put((1, "two"))
            ch.get()
        except pt.ChannelClosed:
            pass
for _ in range(2):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.2)
"""


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_exit_while_daemon_threads_use_a_channel(pure):
    """The channel's finalizer runs at exit while daemon threads are in put and get:
    it unmapped the ring under them, and the interpreter died of SIGSEGV."""
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("POLYTASK_PURE_PYTHON", None)
    if pure:
        env["POLYTASK_PURE_PYTHON"] = "1"
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_IN_USE], env=env, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


def test_a_get_timing_out_in_a_repair_does_not_keep_the_consumer_mutex(tmp_path):
    """A reader died holding the consumer mutex; the next get() takes it over and must
    repair the ring under both mutexes, while a live writer holds the producer one
    past that get()'s timeout. The get raised TimeoutError holding the consumer mutex
    for good: every later get, here and in other processes, and close() hung."""
    ch = pt.Channel(backend="process", capacity=4096)
    ch.put("a")
    ch.put("b")
    dead = Child(tmp_path, ch.name, 'ch._lock_c(None)\nsay("locked")\ntime.sleep(600)\n')
    busy = Child(
        tmp_path,
        ch.name,
        """
        ch._lock_p(None)
        say("locked")
        time.sleep(0.5)  # past the parent's get(timeout=0.05), then let go
        _mutex_unlock(ch._p_addr)
        say("unlocked")
        time.sleep(600)
        """,
    )
    try:
        dead.wait_for("locked")
        dead.kill()
        busy.wait_for("locked")
        got = []
        try:
            got.append(ch.get(timeout=0.05))
        except pt.ChannelEmpty:
            pass
        busy.wait_for("unlocked")
        while len(got) < 2:
            got.append(ch.get(timeout=5))  # TimeoutError: the mutex was still ours
        assert got == ["a", "b"]
        ch.put("c", timeout=5)
        assert ch.get(timeout=5) == "c"
    finally:
        dead.kill()
        busy.kill()
        closer = threading.Thread(target=ch.close, daemon=True)  # it hung, the mutex kept
        closer.start()
        closer.join(5)


@pytest.mark.parametrize("held", ["consumer", "producer"])
def test_timeouts_spent_waiting_for_a_held_mutex_are_channel_errors(tmp_path, held):
    """put() and get() whose timeout passes while a live process holds a mutex of the
    channel raise ChannelFull and ChannelEmpty (queue.Full and queue.Empty), as any
    other timeout of theirs: they raised the builtin TimeoutError."""
    ch = pt.Channel(1, backend="process", capacity=4096)
    ch.put("in")  # full: a put waits for room, which takes the consumer mutex
    if held == "producer":  # empty: a get waits for an item, which takes the producer one
        assert ch.get() == "in"
    lock = "_lock_c" if held == "consumer" else "_lock_p"
    child = Child(tmp_path, ch.name, f'ch.{lock}(None)\nsay("locked")\ntime.sleep(600)\n')
    try:
        child.wait_for("locked")
        for timeout in (0, 0.01):
            with pytest.raises(pt.ChannelEmpty):
                ch.get(timeout=timeout)
            with pytest.raises(pt.ChannelFull):
                ch.put("out", timeout=timeout)
            with pytest.raises(pt.ChannelFull):
                ch.put_many(["out"], timeout=timeout)
            with pytest.raises(pt.ChannelEmpty):
                ch.get_many(3, timeout=timeout)
        child.kill()
        if held == "producer":
            ch.put("in", timeout=HANG)
        assert ch.get(timeout=HANG) == "in"
    finally:
        child.kill()
        ch.close()


INTERRUPTED_BIG_PUTS = """
import os, signal, sys
from polytask._ipc import channel as C
ch = C._attach_channel(sys.argv[1])
armed = False
def interrupt(*_):
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
big = os.urandom(3_000_000)  # a big frame: reserved, copied outside the lock, committed
interrupted = 0
for _ in range(10):
    try:
        armed = True
        signal.setitimer(signal.ITIMER_REAL, 0.0002)  # most likely during the copy
        ch.put(big, timeout=10)
        armed = False
    except KeyboardInterrupt:
        interrupted += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("idle", interrupted, flush=True)
sys.stdin.read()
"""


def test_a_big_put_interrupted_while_copying_does_not_block_the_readers():
    """An exception raised in a big put between reserving its frame and committing it
    (a KeyboardInterrupt the program catches, here from SIGALRM) left the frame
    unfinished under a live pid: every reader waited behind it while that process
    lived. The frame is withdrawn now: readers skip it."""
    ch = pt.Channel(backend="process")
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_BIG_PUTS, ch.name],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    done = threading.Event()

    def drain() -> None:  # two 3 MB frames fill the 8 MiB ring
        while not done.is_set():
            try:
                ch.get(timeout=0.05)
            except pt.ChannelEmpty:
                pass

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "idle" and int(line[1]) > 0, line
    finally:
        done.set()
        drainer.join()
    try:
        ch.put("after")
        got = ch.get(timeout=5)
        while got != "after":
            got = ch.get(timeout=5)  # ChannelEmpty: behind an unfinished frame
        assert len(ch) == 0
    finally:
        proc.kill()
        proc.communicate(timeout=HANG)  # and closes the pipes
        ch.close()


CAUGHT_INTERRUPTS = """
import signal, sys, time
from polytask._ipc import channel as C
ch = C._attach_channel(sys.argv[1])
armed = False
def interrupt(*_):
    if armed:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
print("go", flush=True)
end = time.monotonic() + 0.6
n = 0
while time.monotonic() < end:
    try:
        armed = True
        ch.put_many([n, n + 1, n + 2], timeout=1)
        ch.get_many(3, timeout=1)
        armed = False
    except BaseException:
        armed = False
    n += 1
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("idle", flush=True)
time.sleep(600)
"""


def test_interrupts_caught_around_put_many_and_get_many_keep_no_mutex():
    """A KeyboardInterrupt between taking a mutex and the try that releases it kept
    the mutex while the process lived: every other process's put or get waited."""
    ch = pt.Channel(backend="process", capacity=4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", CAUGHT_INTERRUPTS, ch.name],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        flooding = threading.Event()

        def flood() -> None:
            while not flooding.is_set() and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                time.sleep(0.0003)

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            assert proc.stdout.readline().strip() == "idle"
        finally:
            flooding.set()
            flooder.join()
        # The interrupted loop may have left items (a put_many without its get_many):
        # drain them, which needs the consumer mutex.
        while len(ch):
            ch.get(timeout=0.5)  # ChannelEmpty: the idle process keeps the consumer mutex
        ch.put("probe", timeout=0.5)  # ChannelFull: it keeps the producer mutex
        assert ch.get(timeout=0.5) == "probe"
    finally:
        proc.kill()
        proc.communicate(timeout=HANG)  # and closes the pipes
        ch.close()


CAUGHT_INTERRUPTS_IN_CLOSE = """
import signal, sys, time
from polytask._ipc import channel as C
ch = C._attach_channel(sys.argv[1])
armed = False
def interrupt(*_):
    if armed:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
print("go", flush=True)
end = time.monotonic() + 0.6
while time.monotonic() < end:
    try:
        armed = True
        ch.close()  # again and again: each takes both mutexes
        armed = False
    except BaseException:
        armed = False
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("idle", flush=True)
time.sleep(600)
"""


def _flood_sigint(proc: subprocess.Popen[str]) -> None:
    """SIGINT ``proc`` every 0.3 ms from "go" until it says "idle"."""
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "go"
    flooding = threading.Event()

    def flood() -> None:
        while not flooding.is_set() and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.0003)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        assert proc.stdout.readline().strip() == "idle"
    finally:
        flooding.set()
        flooder.join()


def test_interrupts_caught_around_close_keep_no_mutex():
    """close() takes both ring mutexes (_close_ring): a KeyboardInterrupt between
    taking one and the try that releases it kept it while the process lived, and
    every other process's put or get waited (as put and get did before _let_go)."""
    ch = pt.Channel(backend="process", capacity=4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", CAUGHT_INTERRUPTS_IN_CLOSE, ch.name],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _flood_sigint(proc)
        # Closed by the child: each call says so once it has the mutex it needs
        # (ChannelFull / ChannelEmpty: the idle process keeps that mutex).
        with pytest.raises(pt.ChannelClosed):
            ch.put("probe", timeout=0.5)
        with pytest.raises(pt.ChannelClosed):
            ch.get(timeout=0.5)
    finally:
        proc.kill()
        proc.communicate(timeout=HANG)  # and closes the pipes
        ch.close()


CAUGHT_INTERRUPTS_IN_REPAIRS = """
import signal, sys, threading, time
import polytask as pt
from polytask._ipc import channel as C, ring as R
from polytask._ipc.shm import _mutex_trylock
ch = C._attach_channel(sys.argv[1])
w = ch._w
addr = ch._p_addr if sys.argv[2] == "producer" else ch._c_addr
def die_holding_it():
    # A holder that dies between two of its stores (a robust mutex is "owner dead"
    # when its thread ends holding it): the counters are wrong until a repair.
    if _mutex_trylock(addr) == 0:
        w[R.NRES] += 5
armed = False
def interrupt(*_):
    global armed
    if armed:  # one per round: the round's check below sees what it did
        armed = False
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
print("go", flush=True)
end = time.monotonic() + 0.6
n = interrupted = kept = lost = 0
while time.monotonic() < end and not kept:
    t = threading.Thread(target=die_holding_it)
    t.start()
    t.join()
    try:
        armed = True
        ch.put(n, timeout=1)  # the first to lock the dead holder's mutex repairs
        ch.get(timeout=1)
    except KeyboardInterrupt:
        interrupted += 1
    armed = False
    try:
        # Both mutexes, uninterrupted: a repair not yet begun is done now (the
        # mutex still says its holder died); then drain what the round left.
        ch.put("x", timeout=1)
        while True:
            ch.get(timeout=0)
    except pt.ChannelEmpty as exc:
        kept += "held the channel's lock" in str(exc)
    except pt.ChannelFull:
        kept += 1
    lost += len(ch) != 0  # a repair lost: NRES counts 5 frames too many
    n += 1
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("idle", interrupted, kept, lost, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("held", ["producer", "consumer"])
def test_interrupts_caught_during_repairs_keep_no_mutex_and_lose_no_repair(held):
    """The repair after a holder died (EOWNERDEAD) has its own windows: an interrupt
    before the mutex was marked consistent kept it for good (_let_go did not take
    it for this thread's), and one after it, before the recount ended, lost the
    repair (the mutex was consistent again: no later holder was told), and the
    counters stayed wrong. Now _let_go frees the first, and the repair owed is
    noted (_owed) before the mutex is marked consistent and done on the way out."""
    ch = pt.Channel(backend="process", capacity=4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", CAUGHT_INTERRUPTS_IN_REPAIRS, ch.name, held],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        flooding = threading.Event()

        def flood() -> None:
            while not flooding.is_set() and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                time.sleep(0.0003)

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            line = proc.stdout.readline().split()
        finally:
            flooding.set()
            flooder.join()
        assert line[0] == "idle" and int(line[1]) > 0, line
        assert line[2:] == ["0", "0"], f"rounds with a mutex kept, a repair lost: {line[2:]}"
        ch.put("probe", timeout=0.5)
        assert ch.get(timeout=0.5) == "probe"
    finally:
        proc.kill()
        proc.communicate(timeout=HANG)  # and closes the pipes
        ch.close()


SPILLS_AT_EXIT = """
import sys, threading, time
from polytask._ipc import channel as C
ch = C._attach_channel(sys.argv[1])
big = b"x" * 9000  # over half the ring: each put makes or reuses a spill
def writer():
    while True:
        ch.put(big)
def reader():
    while True:
        ch.get()
for _ in range(4):
    threading.Thread(target=writer, daemon=True).start()
threading.Thread(target=reader, daemon=True).start()
time.sleep(0.02)  # then exit, the daemon threads stopped wherever they are
"""


def test_daemon_threads_making_spills_at_exit_leave_no_empty_spill():
    """A daemon thread making a spill when the interpreter exits is stopped wherever
    it takes the GIL back: right after the open that created the file (or the
    chmod), before its guardian knew of it, the file stayed, empty, until the
    channel's owner let go (2 to 8 of these 12 exits). It is guarded before it
    exists now, so the guardian removes it."""
    ch = pt.Channel(backend="process", capacity=16384)
    env = dict(os.environ, PYTHONPATH=SRC)
    children = []
    for _ in range(3):
        batch = [
            subprocess.Popen([sys.executable, "-c", SPILLS_AT_EXIT, ch.name], env=env)
            for _ in range(4)
        ]
        for p in batch:
            assert p.wait(HANG) == 0
        children += [p.pid for p in batch]

    def empty_spills() -> list[str]:
        out = []
        for pid in children:
            for n in shm_names(pid):
                try:
                    if n.startswith(ch.name + "-") and os.stat(f"/dev/shm/{n}").st_size == 0:
                        out.append(n)
                except FileNotFoundError:
                    pass  # removed meanwhile
        return out

    # Each child's guardian removes its half-made spills once the child is gone.
    wait_until(lambda: not empty_spills(), 10, "the exited writers' guardians to clean up")
    ch.close()
