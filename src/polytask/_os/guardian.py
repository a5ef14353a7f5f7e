"""The guardian: a small process that ends what its owner started once the owner dies.

One guardian runs beside each polytask process that starts other processes
(see :mod:`polytask._os.proc`). It reads registrations, one line each, from a
pipe whose write end only the owner holds, and does nothing else until that
pipe reports end-of-file, which the kernel makes happen however the owner
ends (return, exception, SIGTERM, SIGKILL, the OOM killer). Then it:

1. unlinks the registered paths and every file under a registered prefix
   (shared-memory segments, FIFOs), so a SIGKILLed owner leaves nothing in
   /dev/shm; a registered *spill* (a channel's segment holding one big item)
   only if it holds no unread item (see :func:`release_spill`);
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
    sPATH  tPATH         unlink / forget a channel's spill, kept while it holds an item
    eMARKER fMARKER      end processes whose environment holds MARKER
    kPID START lPID START  end one process (START: field 22 of /proc/PID/stat)

A line that is none of these (a number that is not a pid, a path with a NUL:
the owner writes none, but anyone with the owner's uid can write into the
pipe through ``/proc/PID/fd/0``) is skipped, with a line on stderr: one bad
line must not end the guardian, which would then clean up nothing. Only the
sets at end-of-file count, not the order of the lines that built them (see
:meth:`Registry.net`).

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

__all__ = ["PID_MAX", "Registry", "clean_up", "main", "parse", "say", "set_comm"]

#: What ``ps`` shows as the guardian's name (argv[0]; the kernel's comm is cut to 15 bytes).
PROCESS_NAME = "polytask-guardian"

#: No pid or process group number is larger (PID_MAX_LIMIT on 64-bit Linux).
PID_MAX = 1 << 22


def _number(arg: bytes) -> int | None:
    """A pid or group number, or None: digits only (no sign, no ``_``), 2 to PID_MAX.
    Never 0 or 1: ``killpg(0)`` is the caller's own group and 1 init's."""
    if not arg.isdigit() or len(arg) > 8:
        return None
    n = int(arg)
    return n if 1 < n <= PID_MAX else None


#: A registration: a group number, a path or prefix, a marker, a "PID START" entry.
Item = int | str | bytes


#: Each line's first byte: the set it changes, and whether it adds to it.
_OPS = {
    b"+": ("groups", True),
    b"-": ("groups", False),
    b"p": ("paths", True),
    b"q": ("paths", False),
    b"P": ("prefixes", True),
    b"Q": ("prefixes", False),
    b"s": ("spills", True),
    b"t": ("spills", False),
    b"e": ("markers", True),
    b"f": ("markers", False),
    b"k": ("procs", True),
    b"l": ("procs", False),
}


def parse(line: bytes) -> tuple[str, Item, bool] | None:
    """One line (no newline) as (the set's name, the item, add?); None if it is not
    one the owner writes. An empty line or argument is ("", b"", False): nothing to do."""
    op, arg = line[:1], line[1:]
    if not arg:
        return ("", b"", False)
    kind = _OPS.get(op)
    if kind is None:
        return None
    name, add = kind
    if name == "groups":
        n = _number(arg)
        return None if n is None else (name, n, add)
    if name == "markers":
        return (name, arg, add)
    if name == "procs":
        pid, _, start = arg.partition(b" ")
        return (name, arg, add) if _number(pid) is not None and start.isdigit() else None
    if b"\0" in arg:  # a path: none holds a NUL (unlink() would raise ValueError)
        return None
    return (name, os.fsdecode(arg), add)


class Registry:
    """What the guardian was asked to watch: the protocol's state, without I/O.

    The owner keeps one too, of what it wrote into the pipe (see
    ``polytask._os.proc``): to send a replacement guardian all of it, to shrink
    what waits for a guardian that does not read, and to clean up itself when
    its guardian cannot.
    """

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.paths: set[str] = set()
        self.prefixes: set[str] = set()
        self.spills: set[str] = set()
        self.markers: set[bytes] = set()
        self.procs: set[bytes] = set()
        #: The start of a line whose end has not come yet.
        self.partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Apply every complete line in ``data`` (a partial last line waits for the rest).

        Returns the lines it could not read and skipped (a group number that is not
        one, a path with a NUL): a line the owner never writes, but one bad line
        must not end the guardian, which would then clean up nothing.
        """
        if not self.partial and len(data) <= 10 and data[-1:] == b"\n" and data[:1] in b"+-":
            # One group line, as the owner writes twice per program it starts: no split.
            n = _number(data[1:-1])  # digits only: no other newline in it
            if n is not None:
                if data[0] == 43:  # "+"
                    self.groups.add(n)
                else:
                    self.groups.discard(n)
                return []
        if self.partial:
            data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        bad = []
        for line in lines:
            parsed = parse(line)
            if parsed is None:
                bad.append(line)
            elif parsed[0]:
                name, item, add = parsed
                target: set[Item] = getattr(self, name)
                if add:
                    target.add(item)
                else:
                    target.discard(item)
        return bad

    def holds(self, name: str, item: Item) -> bool:
        return item in getattr(self, name)

    def lines(self) -> bytes:
        """Every registration, one line each: what a new guardian is sent to hold all this."""
        out = [b"+%d\n" % g for g in self.groups]
        out += [b"p" + os.fsencode(p) + b"\n" for p in self.paths]
        out += [b"P" + os.fsencode(p) + b"\n" for p in self.prefixes]
        out += [b"s" + os.fsencode(p) + b"\n" for p in self.spills]
        out += [b"e" + m + b"\n" for m in self.markers]
        out += [b"k" + k + b"\n" for k in self.procs]
        return b"".join(out)

    def net(self, data: bytes, first: bytes = b"") -> bytes:
        """Lines that do, after this registry, what ``data`` (whole lines) does: the
        last line of each registration it changes, none for one it leaves as it is.

        Only the sets at end-of-file count, never the order that built them, so a
        history of registrations and releases shrinks to what it adds up to.
        ``first`` is a line applied before ``data`` and left out of the result.
        """
        head = parse(first) if first else None
        last: dict[tuple[str, Item], tuple[bool, bytes]] = {}
        for line in data.split(b"\n")[:-1]:
            parsed = parse(line)
            if parsed is not None and parsed[0]:
                last[parsed[:2]] = (parsed[2], line)
        out = []
        for (name, item), (add, line) in last.items():
            if head is not None and head[:2] == (name, item):
                before = head[2]
            else:
                before = self.holds(name, item)
            if before != add:
                out.append(line + b"\n")
        return b"".join(out)

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


#: A spill's layout (kept equal to polytask._ipc.channel's): byte 0 its state
#: (FREE 0, FULL 1), byte 1 set here: its writer is gone; byte 2 set by the
#: writer once the item is written in full (cleared when a pooled spill is reused).
SPILL_HEADER = 64
SPILL_FULL = 1
SPILL_WRITTEN = 2


def _channel_lives(path: str) -> bool:
    """Whether the channel of the spill at ``path`` (``<ring>-<pid>-<n>``) still exists."""
    name = os.path.basename(path)
    ring = name.rsplit("-", 2)[0]
    return ring != name and os.path.exists(os.path.join(os.path.dirname(path), ring))


def release_spill(path: str) -> None:
    """The writer of the spill at ``path`` is gone: unlink it unless it holds an item.

    A FULL spill whose item was written in full may have its frame in the ring
    already (put returned): while its channel exists, it is left to its reader,
    and byte 1 says its writer is gone, so that the reader removes it once it
    copied the item out (nobody reuses it). Each side writes its byte before it
    reads the other's; without a fence between them both may miss the other's
    write, and the spill then stays until the channel is released. A spill
    whose item was not written in full (the writer died copying it: its put
    never returned), or whose channel is gone, is removed.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size >= SPILL_HEADER:  # smaller: still being made, empty
            os.pwrite(fd, b"\1", 1)
            head = os.pread(fd, SPILL_WRITTEN + 1, 0)
            if head[0] == SPILL_FULL and head[SPILL_WRITTEN] and _channel_lives(path):
                return
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass


def clean_up(registry: Registry, grace: float) -> None:
    """End and remove everything registered: the owner is gone."""
    for path in registry.files():
        try:
            os.unlink(path)
        except OSError:
            pass
    for path in registry.spills:  # after the prefixes: those go, read or not
        release_spill(path)
    # The one kill policy (ending.py), on every group and process at once; never on
    # our own group (the owner cleans up itself when its guardian cannot).
    now = time.monotonic()
    mine = os.getpgrp()
    groups = {g: Ending(g, grace, now=now) for g in registry.groups if g != mine}
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
        for line in registry.feed(data):
            say(f"skipped a line it cannot read: {line[:80]!r}")


def say(text: str) -> None:
    """A line on stderr (the owner's), saying who speaks."""
    try:
        print(f"{PROCESS_NAME}: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: nobody to tell
        pass


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
