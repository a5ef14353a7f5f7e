"""Process hygiene: the layer that keeps the "no zombie, no orphan" promise.

Every process polytask starts (pool workers, commands, supervised programs)
goes through this module:

- it runs in a process group of its own, so that one ``killpg`` reaches it and
  every descendant that did not leave the group;
- its group is registered with the *guardian*, one small helper process per
  polytask parent. The guardian holds the read end of a pipe whose write end
  only the parent has. When the parent dies for any reason (return, SIGTERM,
  SIGKILL), the kernel closes that end, the guardian reads EOF and ends every
  registered group: SIGTERM, a grace period, SIGKILL. This covers what
  PR_SET_PDEATHSIG cannot: programs we exec (no Python of ours runs in them)
  and the grandchildren of workers;
- the kill policy (SIGTERM, grace, SIGKILL, reap) is one function,
  :func:`terminate`, with the grace as a parameter;
- waits use a pidfd (no PID-reuse race, no sleep loop).

::

    parent ──pipe (+pgid / -pgid lines)──> guardian (own session, ignores SIGINT)
      │                                        │ on EOF: killpg(TERM) .. grace .. killpg(KILL)
      ├── worker (pgid A, PDEATHSIG=KILL) ── grandchildren (pgid A)
      └── command (pgid B) ── grandchildren (pgid B)

The guardian also unlinks registered paths (shared-memory segments, FIFOs)
when the parent dies, so a SIGKILLed owner leaves nothing in /dev/shm; and it
ends every process whose environment carries a registered marker
(:func:`guard_env`): for engines such as Ray whose helper processes start
later, in process groups that are not ours, and outlive the process that
started them.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "DEFAULT_GRACE",
    "at_shutdown",
    "guard",
    "guard_env",
    "guard_path",
    "guard_pid",
    "guard_prefix",
    "set_child_subreaper",
    "set_pdeathsig",
    "start_in_group",
    "terminate",
    "unguard",
    "unguard_env",
    "unguard_path",
    "unguard_pid",
    "unguard_prefix",
    "usable_cpus",
    "wait_pid",
]

#: Seconds between SIGTERM and SIGKILL when polytask ends a process tree.
DEFAULT_GRACE = 0.5

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_pdeathsig(sig: int = signal.SIGKILL, *, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits.

    If the parent already died before this call, no signal would ever come, so
    with ``expected_parent`` given we check ``getppid()`` afterwards and exit.
    """
    if not sys.platform.startswith("linux"):
        return
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def set_child_subreaper() -> None:
    """Make orphaned descendants reparent to this process (which must reap them)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# --------------------------------------------------------------------------- waiting


def wait_pid(pid: int, timeout: float | None) -> bool:
    """Wait until process ``pid`` (our child) has exited, without reaping it.

    Returns True if it exited within ``timeout`` seconds. Uses a pidfd so there
    is no polling loop and no race with PID reuse.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            try:
                return bool(p.poll(ms))
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        os.close(fd)


def _reap(proc: subprocess.Popen[Any], timeout: float | None) -> int | None:
    if proc.returncode is not None:
        return proc.returncode
    if wait_pid(proc.pid, timeout):
        return proc.wait()
    return proc.poll()


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate(
    proc: subprocess.Popen[Any],
    grace: float = DEFAULT_GRACE,
    *,
    group: bool = True,
) -> int:
    """End ``proc`` and (with ``group``) its whole process group, and reap it.

    The one kill policy of polytask: SIGTERM, up to ``grace`` seconds for a
    clean exit, then SIGKILL; the leader is reaped before this returns and the
    group is sent SIGKILL once more so that descendants that ignored SIGTERM do
    not outlive it. Returns the exit status (negative for a signal).
    """
    pgid = proc.pid
    if proc.returncode is None:
        if group:
            _killpg(pgid, signal.SIGTERM)
        else:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # pragma: no cover - already reaped elsewhere
                pass
        code = _reap(proc, grace) if grace > 0 else proc.poll()
        if code is None:
            if group:
                _killpg(pgid, signal.SIGKILL)
            else:
                proc.kill()
            code = _reap(proc, None)
        assert code is not None
    if group:
        # Descendants that stayed in the group may still run after the leader exited.
        _killpg(pgid, signal.SIGKILL)
    unguard(pgid)
    return proc.returncode if proc.returncode is not None else -signal.SIGKILL


def start_in_group(
    argv: Sequence[str],
    *,
    guarded: bool = True,
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` in a new process group and (by default) register it with the guardian."""
    popen_kwargs.setdefault("process_group", 0)
    proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), **popen_kwargs)
    if guarded:
        guard(proc.pid)
    return proc


# --------------------------------------------------------------------------- guardian

_GUARDIAN_SOURCE = r"""
import os, select, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTSTP):
    signal.signal(s, signal.SIG_IGN)
grace = float(sys.argv[1])
hangup = select.poll()
hangup.register(0, 0)  # no events asked: only POLLHUP, when the parent's end closes
groups = set()
paths = set()
prefixes = set()
markers = set()
procs = set()
buf = b""
while True:
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    if not data:
        break
    # Let lines pile up: one wake-up per batch, not one per started process
    # (on a busy 2-core machine each wake-up took CPU from the jobs themselves).
    # Not past the parent's end, though: its exit (clean or not) waits for us.
    hangup.poll(10)
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
        elif line[:1] == b"p":
            paths.add(line[1:].decode())
        elif line[:1] == b"q":
            paths.discard(line[1:].decode())
        elif line[:1] == b"P":
            prefixes.add(line[1:].decode())
        elif line[:1] == b"Q":
            prefixes.discard(line[1:].decode())
        elif line[:1] == b"e":
            markers.add(line[1:])
        elif line[:1] == b"f":
            markers.discard(line[1:])
        elif line[:1] == b"k":
            procs.add(line[1:])
        elif line[:1] == b"l":
            procs.discard(line[1:])
for prefix in prefixes:
    folder, start = os.path.split(prefix)
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    paths.update(os.path.join(folder, n) for n in names if n.startswith(start))
for path in paths:
    try:
        os.unlink(path)
    except OSError:
        pass
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
def marked():
    # Processes whose environment holds a registered marker line (KEY=VALUE).
    found = set()
    if not markers:
        return found
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if markers.intersection(env):
            found.add(int(name))
    return found
def started(pid):
    # Field 22 of /proc/<pid>/stat: the start time, so a reused pid is never hit.
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
def listed():
    found = set()
    for entry in procs:
        pid, _, start = entry.partition(b" ")
        if int(pid) != os.getpid() and started(int(pid)) == start:
            found.add(int(pid))
    return found
def kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
for g in list(groups):
    try:
        os.killpg(g, signal.SIGTERM)
    except OSError:
        groups.discard(g)
pids = marked() | listed()
for pid in pids:
    kill(pid, signal.SIGTERM)
deadline = time.monotonic() + grace
while (groups or pids) and time.monotonic() < deadline:
    time.sleep(0.01)
    groups = {g for g in groups if alive(g)}
    pids = pids & (marked() | listed())
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
for pid in marked() | listed():
    kill(pid, signal.SIGKILL)
"""


class _Guardian:
    """The parent's end of the guardian: a pipe, and the set of groups it watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._pid_owner = 0

    def _start(self) -> int:
        # Called with self._lock held.
        if self._fd is not None and self._pid_owner == os.getpid():
            return self._fd
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _GUARDIAN_SOURCE, str(DEFAULT_GRACE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # terminal signals must not reach it
            close_fds=True,
        )
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        self._pid_owner = os.getpid()
        return self._fd

    def send(self, line: bytes) -> None:
        with self._lock:
            fd = self._start()
            try:
                os.write(fd, line)
            except BrokenPipeError:  # the guardian was killed from outside: start another
                self._fd = None
                os.write(self._start(), line)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            proc, self._proc, self._fd = self._proc, None, None
        if proc is None or self._pid_owner != os.getpid():
            return
        assert proc.stdin is not None
        proc.stdin.close()
        _reap(proc, timeout)
        if proc.returncode is None:  # pragma: no cover - the guardian never blocks
            proc.kill()
            proc.wait()

    def forget_after_fork(self) -> None:
        # A forked child must not keep the parent's write end open: the guardian
        # would then never see EOF when the parent dies.
        if self._proc is not None and self._proc.stdin is not None:
            try:
                os.close(self._proc.stdin.fileno())
            except OSError:
                pass
        self._proc, self._fd, self._lock = None, None, threading.Lock()


_guardian = _Guardian()


def guard(pgid: int) -> None:
    """End process group ``pgid`` if this process dies before :func:`unguard`."""
    _guardian.send(b"+%d\n" % pgid)


def unguard(pgid: int) -> None:
    """Stop watching ``pgid`` (its leader was reaped)."""
    if _guardian._fd is not None:
        _guardian.send(b"-%d\n" % pgid)


def guard_path(path: str) -> None:
    """Unlink ``path`` (a /dev/shm segment, a FIFO) if this process dies before :func:`unguard_path`."""
    if "\n" in path:
        raise ValueError(f"path {path!r} contains a newline")
    _guardian.send(b"p" + os.fsencode(path) + b"\n")


def unguard_path(path: str) -> None:
    """Stop watching ``path`` (it was removed, or handed to another owner)."""
    if _guardian._fd is not None:
        _guardian.send(b"q" + os.fsencode(path) + b"\n")


def guard_prefix(prefix: str) -> None:
    """Unlink every file whose path starts with ``prefix`` if this process dies first.

    For families of files made on the fly (a channel's spill segments
    ``/dev/shm/polytask-ch-1234-*``): one registration covers names not yet made.
    """
    if "\n" in prefix:
        raise ValueError(f"prefix {prefix!r} contains a newline")
    _guardian.send(b"P" + os.fsencode(prefix) + b"\n")


def unguard_prefix(prefix: str) -> None:
    """Stop watching ``prefix``."""
    if _guardian._fd is not None:
        _guardian.send(b"Q" + os.fsencode(prefix) + b"\n")


def guard_env(marker: str) -> None:
    """End every process whose environment holds ``marker`` (``"KEY=VALUE"``) if this
    process dies before :func:`unguard_env`.

    Set the variable in the environment of what you start (and so of what that
    starts in turn, later, in any process group); the guardian finds them all
    through ``/proc/<pid>/environ`` when the owner dies.
    """
    if "\n" in marker or "\0" in marker or "=" not in marker:
        raise ValueError(f"marker {marker!r} must be KEY=VALUE on one line")
    _guardian.send(b"e" + os.fsencode(marker) + b"\n")


def unguard_env(marker: str) -> None:
    """Stop watching ``marker`` (what carried it was shut down)."""
    if _guardian._fd is not None:
        _guardian.send(b"f" + os.fsencode(marker) + b"\n")


def _proc_start(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def guard_pid(pid: int) -> bytes | None:
    """End process ``pid`` (not a group: one process that another program started)
    if this process dies first. Returns the token for :func:`unguard_pid`, or None
    if the process is already gone. Its start time is recorded too, so that a
    reused pid is never killed.
    """
    start = _proc_start(pid)
    if start is None:
        return None
    token = b"%d %s" % (pid, start)
    _guardian.send(b"k" + token + b"\n")
    return token


def unguard_pid(token: bytes) -> None:
    """Stop watching the process :func:`guard_pid` registered."""
    if _guardian._fd is not None:
        _guardian.send(b"l" + token + b"\n")


# --------------------------------------------------------------------------- shutdown

_shutdown_hooks: list[Callable[[], None]] = []
_shutdown_lock = threading.Lock()


def at_shutdown(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` at interpreter exit, before the guardian is closed (last added runs first)."""
    with _shutdown_lock:
        _shutdown_hooks.append(fn)
    return fn


def _run_shutdown_hooks() -> None:
    while True:
        with _shutdown_lock:
            if not _shutdown_hooks:
                break
            fn = _shutdown_hooks.pop()
        try:
            fn()
        except Exception as exc:  # pragma: no cover - shutdown must go on
            print(f"polytask: error during shutdown: {exc!r}", file=sys.stderr)
    _guardian.close()


def _after_fork_in_child() -> None:
    _guardian.forget_after_fork()
    _shutdown_hooks.clear()


atexit.register(_run_shutdown_hooks)
os.register_at_fork(after_in_child=_after_fork_in_child)
