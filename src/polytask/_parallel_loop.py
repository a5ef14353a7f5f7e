"""One poll loop over many child processes, with no thread per process.

``run``, ``stream``, ``run_many`` and ``polytask parallel`` all drive their
programs through :class:`ProcessLoop`::

    spawn(argv) ──> posix_spawn or Popen (own process group) ──> child
         └─ guard(pgid) with the guardian                      │ stdout ─┐ memory file,
                                                               │ stderr ─┤ or pipe
                                                               │ stdin <─┤ (input=)
                                                               └ pidfd ──┤
    wait(timeout) <── poll() over every fd above, plus the timers: ◄──────┘
      - output: appended to the child, or handed to its on_output callback
      - pidfd readable: waitpid the leader, SIGKILL what is left of its group
        (nothing outlives its job), unguard, drain the pipes (bounded), finish
      - deadline: SIGTERM the group; grace later: SIGKILL, reap

Both pipes are read as data arrives, so a program that fills both never
blocks; waits are poll() with the next timer as its timeout, never a sleep.

With ``posix_spawn=True`` (``polytask parallel``) programs start through
``os.posix_spawn``: glibc's clone(CLONE_VM|CLONE_VFORK) copies no page
tables and runs no Python between fork and exec, which is most of what a
tiny job costs its parent. The price: descriptors this process inherited as
inheritable reach the programs (as with GNU parallel and xargs; every
descriptor Python opens is close-on-exec), where Popen would close them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._proc import DEFAULT_GRACE, guard, start_in_group, unguard

__all__ = ["Child", "ProcessLoop"]

STDOUT = 1
STDERR = 2
_PIDFD = 0
_STDIN = 3

#: After a program's leader exits, how long its pipes may still deliver data
#: (held open by a descendant that left the process group) before we close them.
DEFAULT_DRAIN = 1.0

_READ_SIZE = 65536
_WRITE_SIZE = 65536

#: Python ignores these; Popen's restore_signals gives programs the default back.
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)
#: Signals whose handlers may raise (Ctrl-C, our SIGTERM/SIGHUP handlers).
_HOLD = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))

OnOutput = Callable[["Child", int, bytes], None]


def which(name: str, path: str) -> str | None:
    """The absolute path of program ``name`` on ``path`` (None if not found or relative).

    What ``shutil.which`` does, without importing shutil (and its compression
    modules) on the command line's start-up path.
    """
    for d in path.split(os.pathsep):
        if not d or not os.path.isabs(d):
            continue  # relative entries depend on the child's cwd: leave them to exec
        full = os.path.join(d, name)
        if os.access(full, os.X_OK) and not os.path.isdir(full):
            return full
    return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Child:
    """One program in a :class:`ProcessLoop`: its state, output and result."""

    __slots__ = (
        "_stdin_data",
        "_stdin_fd",
        "_stdin_pos",
        "argv",
        "deadline",
        "done",
        "drain_until",
        "ended",
        "exited",
        "fds",
        "files",
        "kill_at",
        "killed",
        "nbytes",
        "on_output",
        "out",
        "pid",
        "pidfd",
        "proc",
        "returncode",
        "started",
        "started_wall",
        "timed_out",
        "token",
    )

    def __init__(
        self,
        pid: int,
        proc: subprocess.Popen[bytes] | None,
        argv: Sequence[str],
        token: Any,
        started: float,
        started_wall: float,
    ) -> None:
        self.pid = pid
        self.proc = proc  # kept (when Popen started it) so that it never reaps behind our back
        self.argv = argv
        self.token = token
        self.started = started
        self.started_wall = started_wall
        self.ended: float | None = None
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.drain_until: float | None = None
        self.exited = False
        self.done = False
        self.killed = False
        self.timed_out = False
        self.returncode: int | None = None
        self.pidfd = -1
        self.fds: list[int] = []  # open output pipes
        self.files: list[int] = []  # memory files holding stdout, stderr
        self.out: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        self.nbytes = [0, 0, 0]
        self.on_output: OnOutput | None = None
        self._stdin_fd = -1
        self._stdin_data = b""
        self._stdin_pos = 0

    @property
    def duration(self) -> float:
        """Seconds from start to the leader's exit (or until now)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def output(self, which: int) -> bytes:
        """Everything collected from stdout (1) or stderr (2)."""
        out = self.out[which]
        return out[0] if len(out) == 1 else b"".join(out)

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} argv={list(self.argv)!r} returncode={self.returncode}>"


class ProcessLoop:
    """Start programs and wait for their output and exits, all in one poll loop.

    Not thread-safe: one thread drives a loop. ``close()`` (or leaving the
    ``with`` block) ends every program still running, whatever the reason.
    With ``posix_spawn`` programs without a ``cwd`` start through
    ``os.posix_spawn`` (cheaper; inherited inheritable descriptors pass on);
    the environment is then read once, at the first start without ``env``.
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        drain: float = DEFAULT_DRAIN,
        posix_spawn: bool = False,
    ) -> None:
        self.grace = grace
        self.drain = drain
        self.posix_spawn = posix_spawn
        self._poll = select.poll()
        self._fds: dict[int, tuple[Child, int]] = {}
        self._watched: set[int] = set()
        self._children: set[Child] = set()
        self._finished: list[Child] = []
        self._timers: list[tuple[float, int, Child]] = []
        self._counter = itertools.count()
        self._devnull = -1
        self._which: dict[tuple[str, str], str | None] = {}
        self._environ: dict[str, str] | None = None

    # ------------------------------------------------------------------ starting

    @property
    def running(self) -> int:
        """How many programs have not finished yet."""
        return len(self._children)

    def children(self) -> list[Child]:
        return list(self._children)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        token: Any = None,
        timeout: float | None = None,
        capture: bool = True,
        input: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        on_output: OnOutput | None = None,
    ) -> Child:
        """Start ``argv`` in its own guarded process group; raises OSError if it cannot start."""
        ours: list[int] = []  # descriptors we keep
        theirs: list[int] = []  # the child's ends, closed once it started
        out_w = err_w = None
        files = capture and on_output is None
        try:
            if files:
                # Output that nobody reads live goes to memory files: no pipe to
                # drain, no poll event, never full, and two fds fewer.
                out_w = os.memfd_create("polytask-out", os.MFD_CLOEXEC)
                ours.append(out_w)
                err_w = os.memfd_create("polytask-err", os.MFD_CLOEXEC)
                ours.append(err_w)
            elif capture:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                ours += [out_r, err_r]
                theirs += [out_w, err_w]
            if input is not None:
                stdin, in_w = os.pipe2(os.O_CLOEXEC)
                ours.append(in_w)
                theirs.append(stdin)
            else:
                if self._devnull < 0:
                    self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                stdin = self._devnull
        except BaseException:
            for fd in ours + theirs:
                os.close(fd)
            raise
        fast = self.posix_spawn and cwd is None
        # Until the child is known to the loop (and so ended on the way out),
        # no signal handler may raise; the program still gets the mask we had.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HOLD) if fast else None
        try:
            try:
                if mask is not None:
                    child = self._posix_spawn(argv, token, env, stdin, out_w, err_w, mask)
                else:
                    started, started_wall = time.monotonic(), time.time()
                    proc: subprocess.Popen[bytes] = start_in_group(
                        argv,
                        executable=self._resolve(argv[0], cwd, env),
                        stdin=stdin,
                        stdout=out_w,
                        stderr=err_w,
                        cwd=cwd,
                        env=env,
                    )
                    child = Child(proc.pid, proc, argv, token, started, started_wall)
            except BaseException:
                for fd in ours:
                    os.close(fd)
                raise
            finally:
                for fd in theirs:
                    os.close(fd)
            return self._adopt(child, ours, files, capture, input, timeout, on_output)
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _posix_spawn(
        self,
        argv: Sequence[str],
        token: Any,
        env: dict[str, str] | None,
        stdin: int,
        out_w: int | None,
        err_w: int | None,
        mask: Iterable[int],
    ) -> Child:
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0)]
        if out_w is not None and err_w is not None:
            actions += [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        name = argv[0]
        environ: Mapping[str, str]
        if env is None:
            if self._environ is None:
                self._environ = dict(os.environ)
            environ = self._environ
        else:
            environ = env
        args = argv if isinstance(argv, list) else list(argv)
        path = self._resolve(name, None, env)
        started, started_wall = time.monotonic(), time.time()
        if path is not None or "/" in name:
            pid = os.posix_spawn(
                path or name,
                args,
                environ,
                file_actions=actions,
                setpgroup=0,
                setsigdef=_SIGDEF,
                setsigmask=mask,
            )
        elif env is None and name:
            # Not on PATH's absolute entries: posix_spawnp searches the rest.
            pid = os.posix_spawnp(
                name,
                args,
                environ,
                file_actions=actions,
                setpgroup=0,
                setsigdef=_SIGDEF,
                setsigmask=mask,
            )
        else:
            raise FileNotFoundError(2, "No such file or directory", name)
        try:
            guard(pid)
        except BaseException:
            _killpg(pid, signal.SIGKILL)
            self._waitpid(pid)
            raise
        return Child(pid, None, argv, token, started, started_wall)

    def _adopt(
        self,
        child: Child,
        ours: list[int],
        files: bool,
        capture: bool,
        input: bytes | None,
        timeout: float | None,
        on_output: OnOutput | None,
    ) -> Child:
        self._children.add(child)
        try:
            child.on_output = on_output
            child.pidfd = os.pidfd_open(child.pid)
            self._register(child.pidfd, child, _PIDFD, select.POLLIN)
            if files:
                child.files = ours[:2]
            elif capture:
                child.fds = ours[:2]
                self._register(ours[0], child, STDOUT, select.POLLIN)
                self._register(ours[1], child, STDERR, select.POLLIN)
            if input is not None:
                child._stdin_fd = ours[-1]
                child._stdin_data = input
                os.set_blocking(child._stdin_fd, False)
                self._register(child._stdin_fd, child, _STDIN, select.POLLOUT)
            if timeout is not None:
                self.set_deadline(child, child.started + timeout)
        except BaseException:
            # Not adopted after all: release what was registered, end it here.
            for fd in [child.pidfd, *ours]:
                if fd >= 0:
                    if self._fds.pop(fd, None) is not None:
                        self._poll.unregister(fd)
                    os.close(fd)
            child.pidfd, child.fds, child.files, child._stdin_fd = -1, [], [], -1
            child.exited = child.done = True  # its timers, if any, are void
            self._children.discard(child)
            _killpg(child.pid, signal.SIGKILL)
            self._reaped_quietly(child)
            raise
        return child

    def _resolve(
        self, name: str, cwd: str | os.PathLike[str] | None, env: dict[str, str] | None
    ) -> str | None:
        # Exec would try every PATH entry in the child, each a failed execve,
        # with the parent suspended (vfork) meanwhile: look the program up once.
        if "/" in name or cwd is not None or not name:
            return None
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        key = (name, path)
        try:
            return self._which[key]
        except KeyError:
            found = self._which[key] = which(name, path)
            return found

    def set_deadline(self, child: Child, when: float | None) -> None:
        """(Re)set the monotonic time at which ``child`` is ended as timed out."""
        child.deadline = when
        if when is not None and not child.exited:
            self._arm(child, when)

    def watch(self, fd: int) -> None:
        """Also report when ``fd`` (not a child's) becomes readable."""
        if fd not in self._watched:
            self._watched.add(fd)
            self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._watched.discard(fd)
            self._poll.unregister(fd)

    # ------------------------------------------------------------------ ending

    def terminate(self, child: Child) -> None:
        """Start ending ``child``'s tree: SIGTERM now, SIGKILL after the grace (non-blocking)."""
        if child.exited or child.kill_at is not None:
            return
        child.killed = True
        _killpg(child.pid, signal.SIGTERM)
        child.kill_at = time.monotonic() + self.grace
        self._arm(child, child.kill_at)

    def kill_all(self) -> None:
        """End every program still running (SIGTERM, grace, SIGKILL) and wait until all finished."""
        for child in list(self._children):
            self.terminate(child)
        while self._children:
            self.wait(None)
        self._finished.clear()

    def close(self) -> None:
        """End everything still running and release the loop's descriptors."""
        try:
            self.kill_all()
        finally:
            # A second Ctrl-C during the grace lands here: no more grace.
            for child in list(self._children):
                self._reap_now(child)
                self._close_pipes(child)
                self._finish(child)
            for fd in list(self._watched):
                self.unwatch(fd)
            self._finished.clear()
            if self._devnull >= 0:
                os.close(self._devnull)
                self._devnull = -1

    def __enter__(self) -> ProcessLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ waiting

    def wait(
        self, timeout: float | None = None, *, any_event: bool = False
    ) -> tuple[list[Child], list[int]]:
        """Wait for something to happen; returns (finished children, readable watched fds).

        Returns when a child finished or a watched fd is readable, with
        ``any_event`` also after any output, and after at most ``timeout``
        seconds (None: no limit).
        """
        end = None if timeout is None else time.monotonic() + timeout
        ready: list[int] = []
        fds = self._fds
        while True:
            if self._timers:
                self._fire_timers(time.monotonic())
            if self._finished:
                ms: int | None = 0
            else:
                nxt = self._timers[0][0] if self._timers else None
                if end is not None:
                    nxt = end if nxt is None else min(nxt, end)
                if nxt is None:
                    ms = None
                    if not self._children and not self._watched:
                        break  # nothing could ever happen
                else:
                    ms = max(0, math.ceil((nxt - time.monotonic()) * 1000))
            events = self._poll.poll(ms)
            for fd, ev in events:
                entry = fds.get(fd)
                if entry is None:
                    if fd in self._watched:
                        ready.append(fd)
                    continue
                child, kind = entry
                if kind == _PIDFD:
                    self._on_exit(child)
                elif kind == _STDIN:
                    self._write_stdin(child, ev)
                else:
                    self._read(child, fd, kind, ev)
            if self._timers:
                self._fire_timers(time.monotonic())
            if self._finished or ready or (any_event and events):
                break
            if end is not None and time.monotonic() >= end:
                break
        finished, self._finished = self._finished, []
        return finished, ready

    # ------------------------------------------------------------------ internals

    def _register(self, fd: int, child: Child, kind: int, events: int) -> None:
        self._fds[fd] = (child, kind)
        self._poll.register(fd, events)

    def _drop(self, fd: int) -> None:
        del self._fds[fd]
        self._poll.unregister(fd)
        os.close(fd)

    def _arm(self, child: Child, when: float) -> None:
        heapq.heappush(self._timers, (when, next(self._counter), child))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, child = heapq.heappop(timers)
            if child.done:
                continue
            if not child.exited:
                if child.kill_at is not None:
                    if now >= child.kill_at:
                        self._reap_now(child)
                elif child.deadline is not None and now >= child.deadline:
                    child.timed_out = True
                    self.terminate(child)
            elif child.drain_until is not None and now >= child.drain_until:
                self._close_pipes(child)
                self._maybe_finish(child)

    def _read(self, child: Child, fd: int, kind: int, ev: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except OSError:
            data = b""
        while data:
            child.nbytes[kind] += len(data)
            if child.on_output is not None:
                child.on_output(child, kind, data)
            else:
                child.out[kind].append(data)
            if not ev & select.POLLHUP:
                return
            # Every writer is gone: what is left in the pipe is bounded, read it all.
            data = os.read(fd, _READ_SIZE)
        child.fds.remove(fd)
        self._drop(fd)
        self._maybe_finish(child)

    def _write_stdin(self, child: Child, ev: int) -> None:
        fd = child._stdin_fd
        if not ev & select.POLLERR:
            chunk = child._stdin_data[child._stdin_pos : child._stdin_pos + _WRITE_SIZE]
            try:
                child._stdin_pos += os.write(fd, chunk)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the program does not read its input
                pass
            else:
                if child._stdin_pos < len(child._stdin_data):
                    return
        self._close_stdin(child)

    def _close_stdin(self, child: Child) -> None:
        if child._stdin_fd >= 0:
            self._drop(child._stdin_fd)
            child._stdin_fd = -1
            child._stdin_data = b""

    def _on_exit(self, child: Child) -> None:
        # The pidfd said the leader exited: this waitpid does not block.
        self._reaped(child, self._waitpid(child.pid))

    def _reap_now(self, child: Child) -> None:
        """The end of the kill policy (its grace is over, or there is none): SIGKILL, reap."""
        if not child.exited:
            _killpg(child.pid, signal.SIGKILL)
            self._reaped(child, self._waitpid(child.pid))

    def _reaped_quietly(self, child: Child) -> None:
        code = self._waitpid(child.pid)
        if child.proc is not None:
            child.proc.returncode = code
        unguard(child.pid)

    @staticmethod
    def _waitpid(pid: int) -> int:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): as Popen, 0
            return 0

    def _reaped(self, child: Child, returncode: int) -> None:
        child.returncode = returncode
        if child.proc is not None:
            child.proc.returncode = returncode
        # The leader is reaped: end what is left of its group (nothing outlives
        # its job), then release the group from the guardian (not before: the
        # group's number could be reused).
        _killpg(child.pid, signal.SIGKILL)
        unguard(child.pid)
        self._after_reap(child)

    def _after_reap(self, child: Child) -> None:
        child.exited = True
        child.ended = time.monotonic()
        if child.pidfd >= 0:
            self._drop(child.pidfd)
            child.pidfd = -1
        self._close_stdin(child)
        if child.files:
            self._read_files(child)
        if child.fds:
            child.drain_until = child.ended + self.drain
            self._arm(child, child.drain_until)
        self._maybe_finish(child)

    def _read_files(self, child: Child) -> None:
        for kind, fd in zip((STDOUT, STDERR), child.files, strict=True):
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                data = os.pread(fd, size, 0)
                child.nbytes[kind] += len(data)
                child.out[kind].append(data)
            os.close(fd)
        child.files = []

    def _close_pipes(self, child: Child) -> None:
        for fd in child.fds:
            self._drop(fd)
        child.fds = []

    def _maybe_finish(self, child: Child) -> None:
        if child.exited and not child.fds and not child.done:
            self._finish(child)

    def _finish(self, child: Child) -> None:
        if child.done:
            return
        child.done = True
        self._children.discard(child)
        self._finished.append(child)
