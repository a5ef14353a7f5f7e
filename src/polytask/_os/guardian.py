"""The guardian: a small process that ends what its owner started once the owner dies.

One guardian runs beside each polytask process that starts other processes
(see :mod:`polytask._os.proc`). It reads registrations, one line each, from a
pipe whose write end only the owner holds, and does nothing else until that
pipe reports end-of-file, which the kernel makes happen however the owner
ends (return, exception, SIGTERM, SIGKILL, the OOM killer). Then it:

1. unlinks the registered paths and every file under a registered prefix
   (shared-memory segments, FIFOs), so a SIGKILLed owner leaves nothing in
   /dev/shm;
2. sends SIGTERM to every registered process group, every registered process
   (pid plus start time, so a reused pid is never hit) and every process
   whose environment holds a registered marker (``KEY=VALUE`` exactly, or a
   ``KEY=`` prefix: every job of one owner), whatever group or session it
   moved to;
3. after the grace period, SIGKILL to what is left, then exits.

The protocol (:class:`Registry`) is kept apart from the I/O so that it can
be tested without processes. Lines::

    +PGID  -PGID         watch / forget a process group
    pPATH  qPATH         unlink / forget a path
    PPREFIX QPREFIX      unlink every file whose path starts with PREFIX
    eMARKER fMARKER      end processes whose environment holds MARKER
    kPID START lPID START  end one process (START: field 22 of /proc/PID/stat)

Run as ``python -S -m polytask._os.guardian GRACE`` with argv[0] set to
``polytask-guardian`` so that ``ps`` shows what it is. Of polytask it imports
only :mod:`polytask._os.ending` (the kill policy's signals, standard library
only), so that it starts fast and cannot be broken by the owner's state.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from .ending import Ending

__all__ = ["Registry", "clean_up", "main", "set_comm"]

#: What ``ps`` shows as the guardian's name (argv[0]; the kernel's comm is cut to 15 bytes).
PROCESS_NAME = "polytask-guardian"


class Registry:
    """What the guardian was asked to watch: the protocol's state, without I/O."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.paths: set[str] = set()
        self.prefixes: set[str] = set()
        self.markers: set[bytes] = set()
        self.procs: set[bytes] = set()
        self._buf = b""

    def feed(self, data: bytes) -> None:
        """Apply every complete line in ``data`` (a partial last line waits for the rest)."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._apply(line)

    def _apply(self, line: bytes) -> None:
        op, arg = line[:1], line[1:]
        if not arg:
            return
        if op == b"+":
            self.groups.add(int(arg))
        elif op == b"-":
            self.groups.discard(int(arg))
        elif op == b"p":
            self.paths.add(os.fsdecode(arg))
        elif op == b"q":
            self.paths.discard(os.fsdecode(arg))
        elif op == b"P":
            self.prefixes.add(os.fsdecode(arg))
        elif op == b"Q":
            self.prefixes.discard(os.fsdecode(arg))
        elif op == b"e":
            self.markers.add(arg)
        elif op == b"f":
            self.markers.discard(arg)
        elif op == b"k":
            self.procs.add(arg)
        elif op == b"l":
            self.procs.discard(arg)

    def matches(self, environ: bytes) -> bool:
        """Whether a process with this ``/proc/PID/environ`` content is to be ended."""
        if not self.markers:
            return False
        for entry in environ.split(b"\0"):
            for marker in self.markers:
                # A marker ending in "=" names a variable: any value matches.
                if entry == marker or (marker[-1:] == b"=" and entry.startswith(marker)):
                    return True
        return False

    def files(self) -> set[str]:
        """Every path to unlink: the registered ones and those under the prefixes."""
        found = set(self.paths)
        for prefix in self.prefixes:
            folder, start = os.path.split(prefix)
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            found.update(os.path.join(folder, n) for n in names if n.startswith(start))
        return found


def start_time(pid: int) -> bytes | None:
    """Field 22 of ``/proc/PID/stat`` (the start time in clock ticks), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def marked(registry: Registry) -> set[int]:
    """Every live process (not this one) whose environment matches a registered marker."""
    found: set[int] = set()
    if not registry.markers:
        return found
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if registry.matches(env):
            found.add(int(name))
    return found


def listed(registry: Registry) -> set[int]:
    """The registered single processes that still run (same pid *and* start time)."""
    found: set[int] = set()
    for entry in registry.procs:
        pid, _, start = entry.partition(b" ")
        if int(pid) != os.getpid() and start_time(int(pid)) == start:
            found.add(int(pid))
    return found


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def clean_up(registry: Registry, grace: float) -> None:
    """End and remove everything registered: the owner is gone."""
    for path in registry.files():
        try:
            os.unlink(path)
        except OSError:
            pass
    # The one kill policy (ending.py), on every group and process at once.
    now = time.monotonic()
    groups = {g: Ending(g, grace, now=now) for g in registry.groups}
    pids = {p: Ending(p, grace, group=False, now=now) for p in marked(registry) | listed(registry)}
    left = {g for g in groups if _alive(g)} | set(pids)
    while left and time.monotonic() < now + grace:
        time.sleep(0.01)
        still = marked(registry) | listed(registry)
        left = {g for g in groups if _alive(g)} | (set(pids) & still)
    # SIGKILL only to what is still there, looked up afresh (a number may have been
    # reused since; listed() checks start times, marked() the environment), and
    # to what a marked process started while we waited.
    for g, ending in groups.items():
        if _alive(g):
            ending.kill()
    for pid in marked(registry) | listed(registry):
        ending = pids.get(pid) or Ending(pid, 0, group=False)
        ending.kill()


def serve(fd: int, registry: Registry) -> None:
    """Read registrations from ``fd`` until end-of-file."""
    hangup = select.poll()
    hangup.register(fd, 0)  # no events asked: only POLLHUP, when the owner's end closes
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if not data:
            return
        # Let lines pile up: one wake-up per batch, not one per started process
        # (on a busy 2-core machine each wake-up took CPU from the jobs themselves);
        # never past the owner's end, though: its exit may wait for us.
        hangup.poll(10)
        registry.feed(data)


def set_comm(name: str) -> None:
    """Set the name that ``top`` and ``ps -e`` show (``ps aux`` shows argv[0]).

    Writing /proc/self/comm is PR_SET_NAME without ctypes; the kernel keeps 15 bytes.
    """
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:  # pragma: no cover - not Linux
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``GRACE`` seconds between SIGTERM and SIGKILL; registrations on stdin."""
    args = sys.argv[1:] if argv is None else argv
    grace = float(args[0]) if args else 0.5
    # Terminal signals must not end us before the owner is gone (we run in our own
    # session too, so a terminal's Ctrl-C never reaches us).
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    set_comm(PROCESS_NAME)
    registry = Registry()
    serve(0, registry)
    clean_up(registry, grace)


if __name__ == "__main__":
    main()
