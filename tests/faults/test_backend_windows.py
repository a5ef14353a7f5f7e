"""Narrow windows in the process backend, each held open on purpose: the parent is
paused at the one point (a done callback, a patched helper waiting on an Event)
while real workers run, die or are killed. Each test fails without its fix."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import polytask as pt
from helpers import open_fds, wait_until
from polytask._os.proc import ensure_guardian
from polytask.backends.process import backend as be_mod
from polytask.backends.process.backend import START_METHODS, ProcessBackend

HANG = 60


def my_pid() -> int:
    return os.getpid()


def wait_for(path: str) -> int:
    """Run until ``path`` exists: the test decides when this task ends."""
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def touch(path: str) -> int:
    Path(path).touch()
    return os.getpid()


def test_a_task_handed_to_a_worker_when_shutdown_cancels_is_cancelled_not_run(
    tmp_path: Path,
) -> None:
    # _complete takes the next task off the queue, then runs the finished task's
    # callbacks, then sends it: in between the task is neither pending nor running.
    # shutdown(cancel=True) there missed it, and it ran after the cancel.
    be = ProcessBackend(max_workers=1)
    release, ran = tmp_path / "release", tmp_path / "ran"
    try:
        be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
        first = be.submit(wait_for, (str(release),), {}, name="first", timeout=None)
        nxt = be.submit(touch, (str(ran),), {}, name="next", timeout=None)
        in_window, go = threading.Event(), threading.Event()

        def hold(_: object) -> None:
            # Runs after nxt left the queue and before it is sent (see SEND_AHEAD).
            in_window.set()
            go.wait(HANG)

        first.add_done_callback(hold)
        release.touch()
        assert in_window.wait(HANG)
        be.shutdown(cancel=True, wait=False)
        go.set()
        assert first.result(HANG) > 0
        with pytest.raises(pt.Cancelled):
            nxt.result(HANG)
        assert not ran.exists(), "the task ran after shutdown(cancel=True)"
    finally:
        go.set()
        if not be._closed:
            be.shutdown(wait=True)
        wait_until(lambda: not be._workers, HANG, "the worker to exit")


def test_a_hand_over_that_outlasts_shutdown_still_resolves_its_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same window, with shutdown() (no cancel) and a hand-over longer than
    # shutdown waits (here no wait at all; really, a callback slower than 5 s):
    # shutdown killed the worker after its 5 s, the send then failed and put the
    # task back in a queue no worker would serve again. Its future never resolved.
    monkeypatch.setattr(be_mod, "_HANDOVER_WAIT", 0.0, raising=False)
    be = ProcessBackend(max_workers=1)
    release, ran = tmp_path / "release", tmp_path / "ran"
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    pidfd = os.pidfd_open(w.pid)
    first = be.submit(wait_for, (str(release),), {}, name="first", timeout=None)
    nxt = be.submit(touch, (str(ran),), {}, name="next", timeout=None)
    in_window = threading.Event()

    def hold(_: object) -> None:
        in_window.set()
        select.select([pidfd], [], [], HANG)  # until shutdown has killed the worker

    first.add_done_callback(hold)
    shutter = threading.Thread(target=be.shutdown, name="shutter")
    try:
        release.touch()
        assert in_window.wait(HANG)
        shutter.start()
        shutter.join(HANG)
        assert not shutter.is_alive()
        assert nxt.done(), "the task handed over during shutdown was left unresolved"
        with pytest.raises(pt.Cancelled):
            nxt.result(0)
        assert not ran.exists()
    finally:
        _kill(pidfd)
        os.close(pidfd)
        shutter.join(HANG)
        wait_until(lambda: not be._workers, HANG, "the worker to exit")


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:  # exited and reaped already
        pass


def test_a_worker_dying_while_shutdown_retires_it_has_its_fds_closed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # shutdown retired its idle workers outside the lock while the collector closed
    # the fds of one that had just died: both closed the same fd number, the second
    # time after another thread had reused it (here: a file of ours, closed under us).
    be = ProcessBackend(max_workers=1)
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    wfd = w.wfd
    pidfd = os.pidfd_open(w.pid)  # our own handle: kills the worker, never a reused pid
    real_close = be_mod._close_pipe
    closes: list[int] = []
    mine: dict[int, int] = {}  # fd -> inode of /dev/null files opened in the window
    entered, collector_closed = threading.Event(), threading.Event()
    shutter = threading.Thread(target=be.shutdown, name="shutter")

    def close_pipe(fd: int) -> None:
        me = threading.current_thread()
        if fd == wfd and me is shutter:
            entered.set()
            if w.wfd == fd:  # still the worker's: another thread may close it too
                collector_closed.wait(HANG)
        real_close(fd)
        if fd >= 0:
            closes.append(fd)
        if fd == wfd and me is not shutter:
            # The numbers just freed go to the next files anyone opens.
            for _ in range(3):
                f = os.open(os.devnull, os.O_RDONLY)
                mine[f] = os.fstat(f).st_ino
            collector_closed.set()

    monkeypatch.setattr(be_mod, "_close_pipe", close_pipe)
    try:
        shutter.start()
        assert entered.wait(HANG)
        _kill(pidfd)
        shutter.join(HANG)
        assert not shutter.is_alive()
    finally:
        collector_closed.set()
        monkeypatch.undo()
        os.close(pidfd)
        lost = []
        for f, ino in mine.items():
            try:
                same = os.fstat(f).st_ino == ino
            except OSError:
                same = False
            if same:
                os.close(f)
            else:
                lost.append(f)
    assert closes.count(wfd) == 1, f"fd {wfd} was closed {closes.count(wfd)} times"
    assert not lost, f"a file of ours was closed under us: fds {lost}"


def _pipe_inodes(pid: int) -> set[str]:
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # a child that ended since it was listed (an engine's, say)
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_worker_whose_config_cannot_be_written_is_ended_and_leaves_nothing(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker started, then the config frame could not be written to it (here:
    # it died first, a real EPIPE). Its pipes, its pidfd and the process itself
    # were left behind; the task must get the error, and nothing may stay.
    real_write = be_mod._write_all
    victim: dict[str, object] = {}

    def write_all(fd: int, data: bytes) -> None:
        if not victim:
            # The first write is the config frame of the first worker: end that
            # worker (the child holding this pipe's other end) before it goes out.
            ino = f"pipe:[{os.fstat(fd).st_ino}]"
            child = next(p for p in psutil.Process().children() if ino in _pipe_inodes(p.pid))
            # Ours now and not before: our ends of the worker's two pipes.
            victim["pipes"] = _pipe_inodes(os.getpid()) - before
            victim["pidfd"] = pfd = os.pidfd_open(child.pid)
            _kill(pfd)
            select.select([pfd], [], [], HANG)
        real_write(fd, data)

    be = ProcessBackend(max_workers=1, start_method=start_method)
    ensure_guardian()  # its pipe is not the worker's
    before = _pipe_inodes(os.getpid())
    monkeypatch.setattr(be_mod, "_write_all", write_all)
    try:
        task = be.submit(my_pid, (), {}, name="t", timeout=None)
        with pytest.raises(pt.PolytaskError, match="could not start a worker process"):
            task.result(HANG)
        monkeypatch.undo()
        assert len(victim["pipes"]) == 2  # type: ignore[arg-type]
        pfd = victim["pidfd"]
        assert isinstance(pfd, int)
        try:
            # Reaped: no zombie waits for anyone.
            with pytest.raises(ChildProcessError):
                os.waitid(os.P_PIDFD, pfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        finally:
            os.close(pfd)
        left = _pipe_inodes(os.getpid()) & victim["pipes"]  # type: ignore[operator]
        assert not left, f"the dead worker's pipes are still open here: {left}"
        # And the pool goes on with a worker that does start.
        assert be.submit(my_pid, (), {}, name="t2", timeout=None).result(HANG) > 0
    finally:
        monkeypatch.undo()
        be.shutdown(wait=True)


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
def test_a_task_cancelled_while_its_frame_goes_out_is_not_requeued(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task is bound to its worker, its frame not written yet; cancel() (or
    # shutdown(cancel=True)) kills the worker, so the write fails with EPIPE. The
    # task went back to the queue, and a fresh worker ran it after the cancel.
    be = ProcessBackend(max_workers=1)
    ran = tmp_path / "ran"
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    pidfd = os.pidfd_open(w.pid)
    real_write = be_mod._write_all
    entered, go = threading.Event(), threading.Event()
    got: list[pt.Task[int]] = []

    def write_all(fd: int, data: bytes) -> None:
        if threading.current_thread() is submitter:
            entered.set()
            go.wait(HANG)
        real_write(fd, data)

    def submit() -> None:
        got.append(be.submit(touch, (str(ran),), {}, name="t", timeout=None))

    submitter = threading.Thread(target=submit, name="submitter")
    monkeypatch.setattr(be_mod, "_write_all", write_all)
    try:
        submitter.start()
        assert entered.wait(HANG)
        task = w.task
        assert task is not None
        # Held, the collector leaves the dead worker be: the failed write comes
        # before its death is handled (which would settle the task first).
        with w.rlock:
            if how == "cancel":
                assert task.cancel()
            else:
                be.shutdown(cancel=True, wait=False)
            select.select([pidfd], [], [], HANG)  # the worker is dead: the write fails
            go.set()
            submitter.join(HANG)
        assert got == [task]
        with pytest.raises(pt.Cancelled):
            task.result(HANG)
        # Not queued again: no worker was started to run it (cancel() would then
        # kill that one too, if it came in time).
        wait_until(lambda: w.dead, HANG, "the worker's death to be handled")
        stats = be.statistics()
        assert stats["started"] + stats["starting"] == 1, stats
        if how == "cancel":  # the backend goes on: the next task runs
            assert be.submit(my_pid, (), {}, name="t2", timeout=None).result(HANG) > 0
        assert not ran.exists(), "the task ran after it was cancelled"
    finally:
        go.set()
        monkeypatch.undo()
        os.close(pidfd)
        if not be._closed:
            be.shutdown(wait=True)
        wait_until(lambda: not be._workers, HANG, "the workers to exit")


def test_a_frame_still_going_out_when_shutdown_ends_is_not_written_to_a_reused_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _assign holds the worker's request fd while its frame goes out (`sending`: the
    # collector leaves such a worker's fds open). shutdown's last sweep did not: it
    # closed them, the numbers went to the next files opened, and the frame was
    # then written into one of those.
    be = ProcessBackend(max_workers=1)
    ran = tmp_path / "ran"
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    real_write = be_mod._write_all
    entered, go = threading.Event(), threading.Event()
    got: list[pt.Task[int]] = []

    def write_all(fd: int, data: bytes) -> None:
        if threading.current_thread() is submitter:
            entered.set()
            go.wait(HANG)
        real_write(fd, data)

    def submit() -> None:
        got.append(be.submit(touch, (str(ran),), {}, name="t", timeout=None))

    submitter = threading.Thread(target=submit, name="submitter")
    monkeypatch.setattr(be_mod, "_write_all", write_all)
    files: list[Path] = []
    mine: list[int] = []
    try:
        submitter.start()
        assert entered.wait(HANG)
        task = w.task
        assert task is not None
        be.shutdown(cancel=True)  # kills the worker; its death settles the task
        with pytest.raises(pt.Cancelled):
            task.result(0)
        # Whatever numbers the sweep freed go to the next files opened.
        for i in range(8):
            files.append(tmp_path / f"mine{i}")
            mine.append(os.open(files[-1], os.O_RDWR | os.O_CREAT))
        go.set()
        submitter.join(HANG)
        assert got == [task]
    finally:
        go.set()
        monkeypatch.undo()
        for f in mine:
            os.close(f)
    written = [p.name for p in files if p.stat().st_size]
    assert not written, f"the task's frame was written into a file of ours: {written}"
    # The worker's fds were still closed, by the last to let go of them.
    assert w.wfd == w.rfd == w.pidfd == -1
    assert not ran.exists()


def test_a_worker_dying_in_a_hand_over_leaves_its_task_to_run_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # submit() took an idle worker; before it bound the task, the worker died (killed
    # here; really a crash, the OOM killer) and its death was handled. shutdown()
    # looked for hand-overs among the live workers only, saw none, and stopped: the
    # task, which nothing cancelled, was then cancelled (or, a moment earlier, queued
    # again for a worker that would never start, and never resolved).
    be = ProcessBackend(max_workers=1)
    ran = tmp_path / "ran"
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    pidfd = os.pidfd_open(w.pid)
    real_assign = be._assign
    entered, go, slept = threading.Event(), threading.Event(), threading.Event()
    real_sleep = be_mod.time.sleep
    got: list[pt.Task[int]] = []

    def assign(worker: object, task: pt.Task[int], ahead: bool = False) -> bool:
        if threading.current_thread() is submitter:
            entered.set()
            go.wait(HANG)
        return real_assign(worker, task, ahead)  # type: ignore[arg-type]

    def sleep(seconds: float) -> None:
        # _finish_shutdown sleeps only while it waits for no task: for a hand-over.
        if threading.current_thread() is shutter:
            slept.set()
        real_sleep(seconds)

    def submit() -> None:
        got.append(be.submit(touch, (str(ran),), {}, name="t", timeout=None))

    submitter = threading.Thread(target=submit, name="submitter")
    shutter = threading.Thread(target=be.shutdown, name="shutter")
    monkeypatch.setattr(be, "_assign", assign)
    fake_time = types.SimpleNamespace(monotonic=be_mod.time.monotonic, sleep=sleep)
    monkeypatch.setattr(be_mod, "time", fake_time)
    try:
        submitter.start()
        assert entered.wait(HANG)
        _kill(pidfd)
        wait_until(lambda: w.dead, HANG, "the worker's death to be handled")
        shutter.start()
        wait_until(lambda: slept.is_set() or not shutter.is_alive(), HANG, "shutdown")
        go.set()
        submitter.join(HANG)
        (task,) = got
        # Nothing cancelled it: it runs, on a fresh worker, before shutdown ends.
        assert task.result(HANG) != w.pid
        shutter.join(HANG)
        assert not shutter.is_alive()
        assert ran.exists()
    finally:
        go.set()
        monkeypatch.undo()
        os.close(pidfd)
        submitter.join(HANG)
        if shutter.is_alive():
            shutter.join(HANG)
        wait_until(lambda: not be._workers, HANG, "the workers to exit")


@pytest.mark.parametrize("reader", ["collector", "caller"])
def test_shutdown_from_a_done_callback_returns_and_the_queued_task_still_runs(
    reader: str, tmp_path: Path
) -> None:
    # A done callback runs in the thread that reads its worker's results, holding
    # that worker's read lock (and, the collector, every result nobody reads).
    # shutdown() called there waited to take that very lock: it never returned.
    be = ProcessBackend(max_workers=1)
    release, ran = tmp_path / "release", tmp_path / "ran"
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    first = be.submit(wait_for, (str(release),), {}, name="first", timeout=None)
    nxt = be.submit(touch, (str(ran),), {}, name="next", timeout=None)
    shut = threading.Event()

    def stop(_: object) -> None:
        be.shutdown()
        shut.set()

    first.add_done_callback(stop)
    release.touch()
    try:
        if reader == "caller":
            assert first.result(HANG) > 0
        assert shut.wait(HANG), "shutdown called from a done callback never returned"
        # Queued before the shutdown, and not cancelled: it runs.
        assert nxt.result(HANG) > 0
        assert ran.exists()
    finally:
        release.touch()
        wait_until(lambda: be._stopping and not be._workers, HANG, "the workers to exit")


def test_no_signal_by_pid_once_the_worker_is_being_reaped(monkeypatch) -> None:
    # _on_death reaped a worker (its pid free for reuse) before it marked it dead,
    # and a kill arriving in between (a task's timeout, cancel) signalled that pid:
    # with a reused pid, an unrelated process. Nothing signals it once reaping began.
    from polytask._os import ending as ending_mod

    be = ProcessBackend(max_workers=1)
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    (w,) = be._workers.values()
    reaped, go = threading.Event(), threading.Event()
    real_release = be_mod._proc.release_group

    def release_later(pgid: int) -> None:
        if pgid == w.pid:  # called right after the reap, before w is marked dead
            reaped.set()
            go.wait(HANG)
        real_release(pgid)

    sent: list[tuple[int, int]] = []
    real_group, real_one = ending_mod.signal_group, ending_mod.signal_one

    def record_group(pgid: int, sig: int) -> bool:
        sent.append((pgid, sig))
        return real_group(pgid, sig)

    def record_one(pid: int, sig: int) -> bool:
        sent.append((pid, sig))
        return real_one(pid, sig)

    monkeypatch.setattr(be_mod._proc, "release_group", release_later)
    monkeypatch.setattr(ending_mod, "signal_group", record_group)
    monkeypatch.setattr(ending_mod, "signal_one", record_one)
    try:
        os.kill(w.pid, signal.SIGKILL)
        assert reaped.wait(HANG), "the worker's death was never handled"
        assert not psutil.pid_exists(w.pid) or psutil.Process(w.pid).ppid() != os.getpid()
        be._kill(w, RuntimeError("a kill that comes too late"))
        assert [s for s in sent if s[0] == w.pid] == [], "a reaped worker's pid was signalled"
    finally:
        go.set()
        monkeypatch.undo()
        be.shutdown()


def test_a_worker_that_cannot_be_set_up_leaves_no_fd(monkeypatch) -> None:
    # _Worker opened the worker's pidfd, then failed (here: its frame decoder):
    # _abandon closed the pipes and reaped the process, but nothing closed the pidfd.
    be = ProcessBackend(max_workers=1)
    real = be_mod._wire.FrameDecoder
    failed: list[int] = []

    def decoder(*args: object) -> object:
        if not failed:
            failed.append(1)
            raise MemoryError("no room for a frame decoder")
        return real(*args)

    before = _pidfds()
    monkeypatch.setattr(be_mod._wire, "FrameDecoder", decoder)
    try:
        task = be.submit(my_pid, (), {}, name="t", timeout=None)
        with pytest.raises(pt.PolytaskError, match="frame decoder"):
            task.result(HANG)
    finally:
        monkeypatch.undo()
        be.shutdown()
    # New pidfds that stay, not a count: another backend of the suite (a pool's
    # finalizer) may close one of its own meanwhile, or open one for a moment.
    wait_until(lambda: not _pidfds() - before, 10, "the pidfd of a worker that could not be set up")


def _pidfds() -> set[int]:
    """The pidfds this process has open (listdir's own fd is not one)."""
    return {fd for fd, target in open_fds().items() if target == "anon_inode:[pidfd]"}


def test_a_hand_over_when_the_backend_breaks_fails_its_task(tmp_path: Path) -> None:
    # _break (a service thread failed) fails every task it sees and kills the
    # workers; a task between the queue and its worker is in neither list. It was
    # then bound to the killed worker (or requeued after EPIPE) and never resolved.
    be = ProcessBackend(max_workers=1)
    release, ran = tmp_path / "release", tmp_path / "ran"
    try:
        be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
        first = be.submit(wait_for, (str(release),), {}, name="first", timeout=None)
        nxt = be.submit(touch, (str(ran),), {}, name="next", timeout=None)

        def break_now(_: object) -> None:
            # In the window: nxt left the queue, is not sent yet (see SEND_AHEAD).
            be._break(RuntimeError("a service thread failed"), "lost a service thread")

        first.add_done_callback(break_now)
        release.touch()
        assert first.result(HANG) > 0
        with pytest.raises(pt.PolytaskError, match="lost a service thread"):
            nxt.result(HANG)
        assert not ran.exists()
    finally:
        release.touch()
        be.shutdown(wait=False)
        wait_until(lambda: not _children_alive(be), HANG, "the workers to exit")


def _children_alive(be: ProcessBackend) -> bool:
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # reaped, maybe since it was listed
            return False

    return any(alive(pid) for pid in list(be._workers))


def test_a_wake_racing_shutdown_writes_into_no_other_file() -> None:
    # _wake read the wake pipe's write fd, then wrote to it. A waker between the two
    # (paused here by its profiler, just before the write; in life, a thread switch
    # or a preemption) while shutdown closed the pipe wrote its byte into whatever
    # file got the number next: here a pipe of ours; in life a socket, a /proc file.
    be = ProcessBackend(max_workers=1)
    be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
    old_w = be._wake_w
    at_write, go = threading.Event(), threading.Event()

    def pause(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "c_call" and arg is os.write and not at_write.is_set():
            at_write.set()
            go.wait(HANG)

    def wake() -> None:
        sys.setprofile(pause)
        try:
            be._wake()
        finally:
            sys.setprofile(None)

    waker = threading.Thread(target=wake, name="late-waker")
    mine: list[int] = []
    try:
        waker.start()
        assert at_write.wait(HANG)
        be.shutdown()  # must not wait for the waker, nor leave its number to others
        r, w = os.pipe()
        mine += [r, w]
        # Our pipe also takes the lowest free number from old_w up: old_w itself, if
        # shutdown closed it.
        mine.append(fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, old_w))
        go.set()
        waker.join(HANG)
        assert not waker.is_alive()
        assert not select.select([r], [], [], 0)[0], "a late wake wrote into a pipe of ours"
        # The pipe was still closed, by the last waker to let go of it; a wake from
        # now on does nothing.
        assert be._wake_r == be._wake_w == -1
        be._wake()
        assert not select.select([r], [], [], 0)[0]
    finally:
        go.set()
        waker.join(HANG)
        for fd in mine:
            os.close(fd)


# A real process that SIGKILL does not end in time: the init of a pid namespace
# exits only once every process in it is reaped, and here one of them is a child of
# the script's (not of that init), reaped only when the script says so. (As a
# process in an uninterruptible sleep, it is killed, and exits much later.)
_UNREAPABLE = r"""
import ctypes, os, signal, sys, time
from polytask._os import proc as _proc
from polytask.backends.process import backend as be

be._REAP_WAIT = 0.2  # the bound (before it, the wait had none)
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWPID = 0x20000000
own = os.open("/proc/self/ns/pid", os.O_RDONLY)
if libc.unshare(CLONE_NEWPID):
    print("SKIP: no new pid namespace:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(0)

def sleep_forever():
    _proc.set_pdeathsig(signal.SIGKILL)  # this script gone (a test timeout): so is this
    while True:
        time.sleep(1)

init = os.fork()  # the first child: the namespace's init
if init == 0:
    os.setpgid(0, 0)
    sleep_forever()
other = os.fork()  # in that namespace, and a child of this script's
if other == 0:
    sleep_forever()
# Back in our own namespace for what we start from now on: else no thread starts.
assert libc.setns(own, CLONE_NEWPID) == 0, os.strerror(ctypes.get_errno())
_proc.remember_job(init, "job")

def state():  # None: running; 0: exited, not reaped; -1: reaped
    try:
        got = os.waitid(os.P_PID, init, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return -1
    return None if got is None else 0

be._abandon(be._ForkedProc(init), -1, -1, None)
print("returned", state(), flush=True)  # None: killed, and still not out
assert _proc.wait_pid(other, 30.0)  # killed with its namespace's init
os.waitpid(other, os.WNOHANG)
deadline = time.monotonic() + 30.0
while state() != -1 and time.monotonic() < deadline:
    time.sleep(0.01)
print("reaped", state(), init in _proc._pid_jobs, flush=True)
"""


def test_a_worker_that_does_not_exit_after_sigkill_is_reaped_later() -> None:
    # _abandon waited for the SIGKILLed worker with no bound: on the launcher
    # thread, which starts every backend's workers, one process stuck in the
    # kernel stopped them all for good.
    src = str(Path(be_mod.__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=src)
    out: subprocess.CompletedProcess[str] | None = None
    try:
        out = subprocess.run(
            [sys.executable, "-c", _UNREAPABLE],
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG,
        )
    except subprocess.TimeoutExpired:
        pass
    assert out is not None, "_abandon did not return while its process could not exit"
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stderr
    # It returned with the process killed and not exited; the process was reaped
    # once it exited, its job forgotten; and its pid was reported.
    assert out.stdout.splitlines() == ["returned None", "reaped -1 False"], out
    assert "did not exit within" in out.stderr


def freeze_and_stop(cgroup: str) -> None:
    """Freeze this thread, the worker's main one (cgroup v1 freezer); once it is
    frozen, close the worker's pipes from another thread. Its backend sees them
    close, and the process cannot exit, not even on SIGKILL, until it is thawed."""
    import stat
    import time

    def close_pipes() -> None:
        state = Path(cgroup, "freezer.state")
        while state.read_text().strip() != "FROZEN":
            time.sleep(0.01)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.close(fd)
            except OSError:
                pass

    threading.Thread(target=close_pipes).start()  # not in the cgroup: it runs on
    with open(f"{cgroup}/tasks", "w") as f:  # this thread only (v1: threads move alone)
        f.write(str(threading.get_native_id()))
    with open(f"{cgroup}/freezer.state", "w") as f:
        f.write("FROZEN")  # frozen on its way back from the write, the GIL released
    while True:
        time.sleep(1)


@contextlib.contextmanager
def _freezer_cgroup() -> Iterator[tuple[Path, Callable[[], None]]]:
    """A new cgroup of the v1 freezer, where SIGKILL does not end a frozen process
    (it sleeps in the kernel, state D, until thawed), and a function that thaws it;
    else the test is skipped (the v2 freezer lets fatal signals through)."""
    cgroup = Path("/sys/fs/cgroup/freezer") / f"polytask-test-{os.getpid()}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"no cgroup v1 freezer to use: {exc}")
    if not (cgroup / "freezer.state").exists():
        cgroup.rmdir()
        pytest.skip("no cgroup v1 freezer to use")
    # Thaws the cgroup when its stdin closes: when the test is done, or if this
    # process dies first (a frozen process would outlive every kill).
    thawer = subprocess.Popen(
        ["sh", "-c", 'cat >/dev/null; echo THAWED > "$1"', "sh", str(cgroup / "freezer.state")],
        stdin=subprocess.PIPE,
    )

    def thaw() -> None:
        if thawer.returncode is None:
            thawer.communicate(timeout=HANG)

    try:
        yield cgroup, thaw
    finally:
        thaw()
        wait_until(lambda: _remove_cgroup(cgroup), HANG, "a frozen worker to leave its cgroup")


def _remove_cgroup(cgroup: Path) -> bool:
    try:
        cgroup.rmdir()
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY: a process is still in it
        return False
    return True


def _count_releases(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The groups released (_proc.release_group) from now on, in order."""
    released: list[int] = []
    real_release = be_mod._proc.release_group

    def release(pgid: int) -> None:
        released.append(pgid)
        real_release(pgid)

    monkeypatch.setattr(be_mod._proc, "release_group", release)
    return released


def test_a_worker_that_does_not_exit_after_its_pipe_closed_frees_its_place(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # _on_death (a worker's response pipe closed: EOF) gave it 5 s to exit, then
    # SIGKILLed its group and waited with no bound: one worker stuck in the kernel
    # held the collector thread for good (every result nobody reads, every death),
    # and its task never got its error. Here the worker's main thread is frozen, then
    # its pipes close: SIGKILLed, it stays (state D) until the test thaws it.
    monkeypatch.setattr(be_mod, "_EXIT_WAIT", 0.2)
    monkeypatch.setattr(be_mod, "_REAP_WAIT", 0.2)
    released = _count_releases(monkeypatch)
    with _freezer_cgroup() as (cgroup, thaw):
        be = ProcessBackend(max_workers=1)
        try:
            pid = be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
            (w,) = be._workers.values()
            done = threading.Event()
            task = be.submit(freeze_and_stop, (str(cgroup),), {}, name="stuck", timeout=None)
            # Read by the collector (a caller reading it itself would hold the wait).
            task.add_done_callback(lambda _: done.set())
            assert done.wait(HANG), "the task of a worker that did not exit never failed"
            with pytest.raises(pt.WorkerCrashed, match="exit status is not known yet") as info:
                task.result(0)
            assert info.value.exitcode is None
            # SIGKILLed, and still there: frozen in the kernel, not reaped, not released.
            assert be_mod._proc.pid_state(pid) == b"D"
            assert w.dead and w.proc.returncode is None and pid not in released
            # Its place is free: with max_workers=1, a new worker runs the next task.
            assert be.submit(my_pid, (), {}, name="next", timeout=None).result(HANG) != pid
            # As shutdown does for a worker it listed alive, before its death was
            # handled: nothing more happens (no second reaper, no second release).
            with w.rlock:
                be._on_death(w)
            assert capfd.readouterr().err.count("did not exit within") == 1
            thaw()
            # Thawed, it dies of its SIGKILL; its reaper reaps it, then releases it.
            wait_until(lambda: pid not in be_mod._proc._pid_jobs, HANG, "the worker's reap")
            assert w.proc.returncode == -signal.SIGKILL
            assert released.count(pid) == 1
        finally:
            thaw()
            be.shutdown()


def test_shutdown_returns_while_a_worker_does_not_exit_after_sigkill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _finish_shutdown SIGKILLed a worker that had not exited in time; then
    # _on_death waited for it with no bound: one worker stuck in the kernel, and
    # shutdown (Pool.close, the executor's exit) never returned.
    monkeypatch.setattr(be_mod, "_STOP_WAIT", 0.2)
    monkeypatch.setattr(be_mod, "_REAP_WAIT", 0.2)
    released = _count_releases(monkeypatch)
    with _freezer_cgroup() as (cgroup, thaw):
        be = ProcessBackend(max_workers=1)
        try:
            pid = be.submit(my_pid, (), {}, name="warm", timeout=None).result(HANG)
            (w,) = be._workers.values()
            (cgroup / "cgroup.procs").write_text(str(pid))
            (cgroup / "freezer.state").write_text("FROZEN")
            wait_until(
                lambda: (cgroup / "freezer.state").read_text().strip() == "FROZEN",
                HANG,
                "the idle worker to freeze",
            )
            stopper = threading.Thread(target=be.shutdown, name="test-shutdown", daemon=True)
            stopper.start()
            stopper.join(HANG)
            assert not stopper.is_alive(), "shutdown did not return: a worker could not exit"
            assert w.dead and w.proc.returncode is None and not be._workers
            assert pid not in released
            thaw()
            wait_until(lambda: pid not in be_mod._proc._pid_jobs, HANG, "the worker's reap")
            assert w.proc.returncode == -signal.SIGKILL
            assert released.count(pid) == 1
        finally:
            thaw()
            be.shutdown()
