"""A Ctrl-C at any line of a program's start leaves no program the loop does not know.

The interrupt is a real SIGINT to this process, sent by a trace function when
the start reaches a chosen line: every line a plain start runs, from the
program's start to its adoption, on each of the loop's three ways to start a
program (memory files, pipes, starter threads). Whatever the line, once
KeyboardInterrupt is out:
every program that was started is one of ``loop.children()``, and closing the
loop ends it with the loop's own ending (here a ``termseq`` whose first signal
the program logs), never with a bare SIGKILL or by the guardian.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest
from tests.helpers import wait_until

from polytask._os.childloop import ProcessLoop, _Spawner, _Start

# Logs its start and each signal it gets; runs until ended.
_JOB = textwrap.dedent(
    """\
    trap 'echo USR1 >> "$1"; exit 0' USR1
    echo start >> "$1"
    while :; do sleep 0.01; done
    """
)
_TERMSEQ = ((int(signal.SIGUSR1), 5.0), (int(signal.SIGKILL), 0.0))


def _window(fn: Callable[..., Any], first: str | None) -> tuple[Any, int]:
    """``fn``'s code and the first line of the window (the line containing ``first``)."""
    src, start = inspect.getsourcelines(fn)
    if first is None:
        return fn.__code__, 0
    return fn.__code__, start + next(i for i, text in enumerate(src) if first in text)


# Where a start runs, by path: (function, first line of the window in it).
_WINDOWS: dict[str, list[tuple[Callable[..., Any], str | None]]] = {
    "files": [
        (ProcessLoop._spawn_to_files, "held = self._hold()"),
        (ProcessLoop._spawn_to_files_held, None),
    ],
    "pipes": [
        (ProcessLoop.spawn, "held = self._hold()"),
        (ProcessLoop._prepare, None),
        (_Start.run, None),
        (ProcessLoop._adopt, None),
    ],
    "starters": [
        (ProcessLoop.spawn_soon, "held = self._hold()"),
        (ProcessLoop._prepare, None),
        (ProcessLoop._started, "held = self._hold()"),
        (ProcessLoop._adopt, None),
    ],
}


class _Trace:
    """Records the lines run in the windows, or sends SIGINT at one of them."""

    def __init__(self, path: str, target: tuple[Any, int] | None = None) -> None:
        self.windows = dict(_window(fn, first) for fn, first in _WINDOWS[path])
        self.target = target
        self.hit: list[tuple[Any, int]] = []
        self.fired = False

    def local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno >= self.windows[frame.f_code]:
            where = (frame.f_code, frame.f_lineno)
            if self.target is None:
                if where not in self.hit:
                    self.hit.append(where)
            elif where == self.target and not self.fired:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)
        return self.local

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        return self.local if frame.f_code in self.windows else None


def _start(loop: ProcessLoop, path: str, argv: list[str]) -> None:
    if path == "files":
        loop.spawn(argv)
    elif path == "pipes":
        loop.spawn(argv, on_output=lambda child, kind, data: None)
    else:
        loop._inline_after = 1 << 30  # every start goes to a starter thread
        loop.spawn_soon(argv)
        while loop.running and not loop.children():
            loop.wait(0.05)
    # A signal's handler runs at the interpreter's next check: let it come here.
    for _ in range(1000):
        pass


def _run(tmp_path: Path, path: str, trace: _Trace, spawned: list[int]) -> bool:
    """Start the job under ``trace``; True if KeyboardInterrupt came out."""
    spawned.clear()
    script = tmp_path / "job.sh"
    script.write_text(_JOB)
    log = tmp_path / "log"
    log.unlink(missing_ok=True)
    argv = ["bash", str(script), str(log)]
    loop = ProcessLoop(termseq=_TERMSEQ, posix_spawn=True)
    interrupted = False
    where = ""  # where the KeyboardInterrupt came out, for the failure message
    try:
        sys.settrace(trace)
        try:
            _start(loop, path, argv)
        except KeyboardInterrupt:
            interrupted = True
            where = traceback.format_exc(limit=-3)
        finally:
            sys.settrace(None)
        # Every program started is alive and the loop's (adopted, or a starter's,
        # adopted at close): not ended at once, nor left out of the loop.
        wait_until(lambda: len(spawned) >= loop.running, what="the starter threads' starts")
        started = _running(script)
        assert len(spawned) == len(started) <= loop.running, _why(
            trace, spawned, started, loop, where
        )
        if started:
            wait_until(lambda: log.exists() and "start" in log.read_text(), what="job started")
    finally:
        loop.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if log.exists():
        # Ended by the loop's ending (its first signal), not by a bare SIGKILL.
        assert log.read_text().split() == ["start", "USR1"], trace.target
    return interrupted


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids posix_spawn gave, recorded as the real spawns happen."""
    pids: list[int] = []
    real = _Spawner.spawn

    def spawn(self: _Spawner, *args: Any) -> None:
        try:
            real(self, *args)
        finally:
            if args[3].value > 0:
                pids.append(args[3].value)

    monkeypatch.setattr(_Spawner, "spawn", spawn)
    return pids


@pytest.mark.parametrize("path", sorted(_WINDOWS))
def test_ctrl_c_at_every_line_of_a_start(tmp_path: Path, path: str, spawned: list[int]) -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    plain = _Trace(path)
    assert not _run(tmp_path, path, plain, spawned)
    assert len(plain.hit) > 5, plain.hit  # the windows were run (and traced)
    for where in plain.hit:
        trace = _Trace(path, where)
        assert _run(tmp_path, path, trace, spawned), where  # the Ctrl-C always comes out
        assert trace.fired


def _why(
    trace: _Trace, spawned: list[int], started: list[psutil.Process], loop: ProcessLoop, where: str
) -> str:
    """What a failed check saw: each pid started, as the kernel and the loop know it."""
    seen = []
    for pid in spawned:
        try:
            p = psutil.Process(pid)
            state = f"{p.status()} ppid={p.ppid()} {_cmdline(p)}"
        except psutil.Error as exc:
            state = f"gone ({type(exc).__name__})"
        seen.append(f"pid {pid}: {state}")
    kids = [(c.pid, c.returncode) for c in loop.children()]
    return f"target {trace.target}; {'; '.join(seen)}; started {started}; loop {kids}; {where}"


def _running(script: Path) -> list[psutil.Process]:
    """Our children that run ``script``.

    posix_spawn returns once the child's execve has let go of our memory, before
    the kernel has set up the new image's arguments: /proc/PID/cmdline reads
    empty for a moment then (in 79 % of 3,000 spawns read at once here, 98 %
    with both cores busy). A live child with an empty cmdline is looked at
    again, up to 10 s; a zombie's is empty for good.
    """
    deadline = time.monotonic() + 10.0
    while True:
        kids = psutil.Process().children()
        lines = {p.pid: _cmdline(p) for p in kids}
        execing = [p for p in kids if not lines[p.pid] and _alive(p)]
        if not execing or time.monotonic() > deadline:
            return [p for p in kids if str(script) in " ".join(lines[p.pid])]
        time.sleep(0.001)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


class _TermSeen(Exception):
    pass


def _raise_term(signum: int, frame: object) -> None:
    raise _TermSeen


def test_a_handler_installed_later_is_held_too_and_the_first_signal_decides() -> None:
    loop = ProcessLoop(posix_spawn=True)
    old = signal.getsignal(signal.SIGTERM)
    try:
        loop.spawn(["true"])  # the handlers of now are wrapped
        signal.signal(signal.SIGTERM, _raise_term)  # the program's own, installed after
        assert loop._hold()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: loop._held is not None, what="SIGTERM held")
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # its handler runs at the interpreter's next check
            pass
        with pytest.raises(_TermSeen):  # SIGTERM came first: its handler, not Ctrl-C's
            loop._release()
    finally:
        loop.close()
        signal.signal(signal.SIGTERM, old)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_between_starts_the_programs_own_handlers_are_in_place() -> None:
    # Two loops at once, starts interleaved, closed oldest first (zip() over two
    # pt.stream()s): Ctrl-C stayed wrapped by loops long closed (KeyError, or a
    # RecursionError of wrappers wrapping each other), and a dropped loop was
    # kept alive by the signal module.
    import gc
    import weakref

    a, b = ProcessLoop(posix_spawn=True), ProcessLoop(posix_spawn=True)
    try:
        a.spawn(["true"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        b.spawn(["true"])
        a.spawn(["true"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        a.close()
        b.close()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    # A stream dropped without close() is collected, and its program ended.
    import polytask as pt

    stream = pt.stream(["sleep", "30"])
    (child,) = wait_until(
        lambda: [p for p in psutil.Process().children() if "sleep" in _cmdline(p)],
        what="the stream's program",
    )
    dropped = weakref.ref(stream)
    del stream
    gc.collect()
    assert dropped() is None
    # _alive, not status() after is_running(): it may be reaped between the two.
    wait_until(lambda: not _alive(child), what="the dropped stream's program to end")
