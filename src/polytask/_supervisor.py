"""Supervisor: run several programs, and several copies of one, and keep them running.

Two layers, as h11 splits a protocol from its I/O:

- ``_supervision.py``, pure (no clock, no process): :class:`Supervision` decides
  when to start, signal, restart and give up on each program, and the run's
  exit status; it is tested without processes (``tests/test_supervision.py``).
- :class:`Supervisor`, the runtime (this module): one loop thread that owns
  every program, feeds the machine what happened and carries out its actions.

::

    caller thread                        loop thread (one per Supervisor)
    ─────────────                        ────────────────────────────────
    start() ──────────────────────────>  start_next ── Start ──> _proc.start_in_group
    stop() / kill (signal handler) ─┐       (own process group, guarded: a SIGKILLed parent
                                    │        still takes every program down with it)
    start/stop/restart_program() ───┤  (a 2nd queue: Supervision.*_program)
            SimpleQueue + wakeup pipe └─>  one selector over
    status() <── lock ── machines          · the wakeup pipe
    wait()   <── Event ── loop ends        · stdout + stderr pipe of every program ─ lines ─> _Output
                                           · a pidfd per program ─> Supervision.exited()
                                         timers: Supervision.due ─> tick() (start check,
                                                 backoff, stop grace)
                                         actions: Kill "term" ─> _proc.signal_group(SIGTERM)
                                                  Kill "kill" ─> _proc.terminate(proc, 0)
                                         after every exit: _proc.terminate(proc, 0) sweeps what is
                                         left of the program's group and unguards it
                                         health (polytask.toml): a liveness _Prober per program,
                                         an RSS sample of the watched trees every 0.5 s
                                         ─> Supervision.alive() / memory() ─> restart;
                                         _Output also appends each program's lines to
                                         its log file (_LogFile, size rotation)
    wait_ready(), *_program() <── a Condition over the lock, notified by _do
    polytask ctl logs <── LogRing <── every line _Output writes (tee)

One thread reads every pipe, so a line is written out whole, and a program's
stdout and stderr (two pipes) never mix within a line.

The loop is its own selector, not ``_os/childloop.ProcessLoop``: when a
program's leader exits while it is being stopped (a shell wrapper that died
of SIGTERM), the rest of its group keeps the grace it was promised, polled
here, where the child loop SIGKILLs the group as soon as its leader is reaped;
and each stop has its own grace where the child loop has one per loop.
"""

from __future__ import annotations

import http.client
import io
import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final
from urllib.parse import urlsplit

from ._control import LogLine, LogRing, format_duration, resolve_names
from ._core.errors import PolytaskError, ProcfileError, TaskTimeout, describe_exit
from ._core.timeouts import POLL_MAX_MS, check_timeout, deadline, remaining
from ._os import proc as _proc
from ._procfile import (
    Instance,
    Procfile,
    base_port,
    expand,
    parse_concurrency,
    parse_env,
    parse_procfile,
    procfile_from_mapping,
)
from ._supervision import (
    RESTART_MODES,
    TERMINAL,
    TRANSITIONS,
    Action,
    Event,
    Exit,
    Exited,
    GiveUp,
    Kill,
    Killing,
    Liveness,
    NotAlive,
    NotReady,
    OverMemory,
    Probe,
    ProcessMachine,
    Ready,
    RestartMode,
    RestartPolicy,
    Running,
    Start,
    State,
    Step,
    Stopping,
    Supervision,
    SupervisionAction,
    Waiting,
    exit_status,
)
from ._upconfig import (
    CONFIG_FILE,
    UpConfig,
    dependency_depth,
    format_size,
    missing_dependencies,
    scan_upconfig,
    scan_upconfig_text,
)
from ._upconfig import Probe as ProbeSpec

__all__ = [
    # The pure machine's names, re-exported: callers and tests import them from here.
    "RESTART_MODES",
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "Event",
    "ProcessMachine",
    "ProcessStatus",
    "RestartMode",
    "RestartPolicy",
    "State",
    "Step",
    "Supervisor",
    "exit_status",
    "format_summary",
    "load_env_files",
    "read_procfile",
    "read_upconfig",
]

# =========================================================================== status records


@dataclass(frozen=True)
class ProcessStatus:
    """A snapshot of one supervised program, from :meth:`Supervisor.status`."""

    #: ``kind.index``, e.g. ``web.1``.
    name: str
    #: The process type (the Procfile name), e.g. ``web``.
    kind: str
    #: One of stopped, starting, running, backoff, stopping, restarting, exited, failed.
    state: str
    #: The PID of the running program (None when it is not running).
    pid: int | None
    #: The PORT it was given.
    port: int
    #: How many times it was restarted.
    restarts: int
    #: Its last exit status (negative: the signal that killed it); None if it never exited.
    exitcode: int | None
    #: Seconds its current run has lasted, or its last run lasted.
    uptime: float
    #: The command it runs.
    command: str | tuple[str, ...]
    #: Whether its readiness probe succeeded since its last start (None: it has no probe).
    ready: bool | None = None
    #: Seconds from its last start until its probe succeeded (None: it was not ready in
    #: that run, or it has no probe); kept after the run ends, for the summary.
    ready_in: float | None = None

    @property
    def alive(self) -> bool:
        return self.pid is not None


def _ready_cell(s: ProcessStatus) -> str:
    if s.ready is None:
        return "-"
    return "no" if s.ready_in is None else f"after {format_duration(s.ready_in)}"


def format_summary(statuses: Sequence[ProcessStatus]) -> str:
    """A plain-text table: each program, its state, restarts, last exit and uptime,
    and, when a program has a readiness probe, whether its last run became ready
    (READY: ``after 1.2s``, ``no``, or ``-`` for a program without a probe)."""
    head: tuple[str, ...] = ("PROCESS", "STATE", "RESTARTS", "LAST EXIT", "UPTIME")
    probed = any(s.ready is not None for s in statuses)
    if probed:
        head += ("READY",)
    rows = [head] + [
        (
            s.name,
            s.state,
            str(s.restarts),
            "-" if s.exitcode is None else describe_exit(s.exitcode),
            format_duration(s.uptime),
        )
        + ((_ready_cell(s),) if probed else ())
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# =========================================================================== file input


def read_procfile(path: str | os.PathLike[str], *, strict: bool = False) -> Procfile:
    """Read and parse a Procfile (OSError if it cannot be read, ProcfileError if invalid).

    ``strict``: lines foreman and honcho skip are errors instead of warnings.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8", errors="replace")
    return parse_procfile(text, source=str(path), strict=strict)


def scan_upconfig_files(
    procfile: str | os.PathLike[str], names: Sequence[str]
) -> tuple[UpConfig, list[tuple[str, int | None, str]]]:
    """Find and validate the config beside ``procfile``: ``polytask.toml``, else the
    ``[tool.polytask.up]`` table of ``pyproject.toml``; an empty config when neither
    has one. Returns the config and every problem (an unreadable file is one)."""
    folder = Path(procfile).parent
    for file_name, pyproject in ((CONFIG_FILE, False), ("pyproject.toml", True)):
        path = folder / file_name
        if not path.is_file():
            continue
        shown = str(path) if str(folder) not in ("", ".") else file_name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if pyproject:  # not ours to judge: only its polytask table is
                continue
            return UpConfig({}, shown), [(shown, None, f"cannot read it: {exc}")]
        if pyproject and "polytask" not in text:
            continue  # a pyproject.toml without our table, even a broken one, changes nothing
        config, problems = scan_upconfig_text(text, names, source=shown, pyproject=pyproject)
        if config or problems or not pyproject:
            return config, problems
    return UpConfig({}), []


def read_upconfig(procfile: str | os.PathLike[str], names: Sequence[str]) -> UpConfig:
    """:func:`scan_upconfig_files`, raising ProcfileError listing every problem."""
    config, problems = scan_upconfig_files(procfile, names)
    if problems:
        raise ProcfileError(problems)
    return config


def load_env_files(
    paths: Iterable[str | os.PathLike[str]], *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Read env files in order (later ones win); OSError if one cannot be read.

    ``$NAME`` in a value is expanded from the keys above it, then the earlier
    files, then ``environ`` (default ``os.environ``).
    """
    base = dict(os.environ if environ is None else environ)
    env: dict[str, str] = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        env.update(parse_env(text, source=str(path), environ={**base, **env}))
    return env


# =========================================================================== output

_PALETTE: Final = ("36", "33", "32", "35", "34", "91", "96", "93", "92", "95", "94")
_RESET: Final = b"\x1b[0m"
_SYSTEM: Final = "polytask"
_MAX_LINE: Final = 256 * 1024
#: What ends a line: what str.splitlines splits on, as honcho prints each line it
#: decodes through it, in UTF-8 ("\r\n" is one end). Bytes: U+0085 is only ever
#: "\xc2\x85" (a lead byte never continues another character), so matching the
#: encoded ends splits as decoding would, and the bytes pass through untouched.
_EOL: Final = re.compile(rb"\r\n|[\n\r\x0b\x0c\x1c-\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")
#: The ends other than "\n": without one, a plain split is right. Looked for one by
#: one (a memchr each): a regex alternation scans 64 KiB five times slower.
_OTHER_EOLS: Final = (
    b"\r",
    b"\x0b",
    b"\x0c",
    b"\x1c",
    b"\x1d",
    b"\x1e",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
)


def _other_eol(data: bytes) -> bool:
    """Whether ``data`` holds a line end other than "\\n"."""
    return any(end in data for end in _OTHER_EOLS)


def _partial_eol(buf: bytearray) -> int:
    """How many bytes at the end of ``buf`` may be the start of a line end: a "\r"
    (of "\r\n"), the first bytes of a UTF-8 one."""
    if buf.endswith(b"\xe2\x80"):
        return 2
    return 1 if buf.endswith((b"\r", b"\xc2", b"\xe2")) else 0


#: What _partial_eol holds back at a cut, alone in the buffer: the cut piece's
#: line may still be ending.
_EOL_STARTS: Final = (b"\r", b"\xc2", b"\xe2", b"\xe2\x80")


def _split_lines(data: bytes, *, final: bool) -> tuple[list[bytes], bytes]:
    """The lines ``data`` ends, and what follows its last end. Not ``final``: a
    "\r" at the very end may be the first half of a "\r\n" and is left in the rest;
    ``final`` (the stream's end): the rest, if any, is a last line."""
    lines = []
    start = 0
    for m in _EOL.finditer(data):
        if not final and m.end() == len(data) and m.group() == b"\r":
            break
        lines.append(data[start : m.start()])
        start = m.end()
    rest = data[start:]
    if final and rest:
        lines.append(rest)
        rest = b""
    return lines, rest


#: How often a stopping program's group is checked after its leader exited.
_LINGER_POLL: Final = 0.05


class _Output:
    """Writes prefixed lines (``HH:MM:SS name.N | line``) in batches.

    Only the loop thread writes, so each line goes out whole. Programs' bytes are
    passed through untouched (no decoding) when the target has a binary layer.
    Colours are plain ANSI escapes on the prefix: rich's Console would parse and
    re-wrap every line, which costs time and can alter the programs' output.
    """

    def __init__(
        self, target: IO[str] | IO[bytes] | None, names: Sequence[str], colour: bool | None
    ):
        target = sys.stdout if target is None else target
        self._text: IO[str] | None = None
        self._bin: IO[bytes] | None = None
        if isinstance(target, (io.RawIOBase, io.BufferedIOBase)):
            self._bin = target  # type: ignore[assignment]
        elif getattr(target, "buffer", None) is not None:
            self._text, self._bin = target, target.buffer  # type: ignore[assignment,union-attr]
        else:
            self._text = target  # type: ignore[assignment]
        if colour is None:
            try:
                colour = bool(target.isatty()) and not os.environ.get("NO_COLOR")
            except (AttributeError, ValueError, OSError):
                colour = False
        width = max([len(_SYSTEM), *(len(n) for n in names)])
        self._prefix: dict[str, bytes] = {}
        #: The programs whose lines also go to a log file (copies share one), and
        #: their prefixes there: as printed, without colour.
        self.logs: dict[str, _LogFile] = {}
        self._plain: dict[str, bytes] = {}
        for i, name in enumerate([*names, _SYSTEM]):
            label = self._plain[name] = name.ljust(width).encode() + b" | "
            if colour:
                code = "1" if name == _SYSTEM else _PALETTE[i % len(_PALETTE)]
                label = b"\x1b[" + code.encode() + b"m" + label[:-2] + _RESET + b"| "
            self._prefix[name] = label
        self._pending: list[bytes] = []
        self._stamp_second = -1
        self._stamp = b""
        self.broken = False
        #: Also given every batch of lines (the Supervisor's log ring for ``polytask
        #: ctl logs``).
        self.tee: Callable[[str, list[bytes]], None] | None = None

    def _time(self) -> bytes:
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%H:%M:%S ", time.localtime(now)).encode()
        return self._stamp

    def line(self, name: str, data: bytes) -> None:
        self.lines(name, [data])

    def lines(self, name: str, lines: list[bytes]) -> None:
        """Write ``lines`` (without their ends) of ``name``, read at the same time."""
        if not lines:
            return
        stamp = self._time()
        # One join for the batch: a million short lines spent most of their time
        # in the per-line work around them (the prefix, the log ring).
        head = stamp + self._prefix[name]
        self._pending.append(head + (b"\n" + head).join(lines) + b"\n")
        log = self.logs.get(name)
        if log is not None:
            head = stamp + self._plain[name]
            for data in lines:  # one by one: a rotation never splits a line
                log.write(head + data + b"\n")
        if self.tee is not None:
            self.tee(name, lines)

    def note(self, text: str) -> None:
        self.line(_SYSTEM, text.encode("utf-8", "replace"))

    def flush(self) -> None:
        if self.logs:
            for log in set(self.logs.values()):
                log.flush()
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        if self.broken:
            return
        try:
            if self._bin is not None:
                if self._text is not None:
                    self._text.flush()  # keep order with what was printed as text
                self._bin.write(data)
                self._bin.flush()
            else:
                assert self._text is not None
                self._text.write(data.decode("utf-8", "replace"))
                self._text.flush()
        except (OSError, ValueError):
            # Nobody reads our output any more (closed pipe or file): keep supervising.
            self.broken = True

    def close_logs(self) -> None:
        for log in set(self.logs.values()):
            log.close()


class _LogFile:
    """A program type's log file, rotated by size with RotatingFileHandler's rule and
    names: before a line that would take the file past ``max_size``, ``web.log.1`` ...
    become ``.2`` ... (the last one, ``backups``, is dropped) and ``web.log`` becomes
    ``web.log.1``; a new ``web.log`` starts. Unlike RotatingFileHandler: a line is never
    split and never rolls over an empty file (a longer line gets a file of its own),
    and ``backups=0`` empties the file instead of letting it grow.

    Our own small class rather than the handler itself: the loop thread writes lines
    in batches (one buffered file, the size counted here), where the handler takes a
    lock, builds a record and stats and seeks the file for every line. Only the loop
    thread writes; ``open`` runs in :meth:`Supervisor.start`. A write that fails (a
    full disk) is reported once and the file is dropped: the run goes on.
    """

    def __init__(
        self, path: str, max_size: int | None, backups: int, report: Callable[[str], None]
    ) -> None:
        self.path, self.max_size, self.backups = path, max_size, backups
        self._report = report
        self._file: IO[bytes] | None = None
        self._size = 0

    def check(self) -> None:
        """Make sure the file can be opened (folders created): OSError if not."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "ab"):
            pass

    def open(self) -> None:
        self.check()
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._size = self._file.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            if self.max_size is not None and self._size and self._size + len(data) > self.max_size:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
        except OSError as exc:
            self.close()
            self._report(f"log file {self.path}: {exc}; its lines are no longer written there")

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                older = f"{self.path}.{i}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "ab" if self.backups else "wb")  # noqa: SIM115
        self._size = 0

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.close()
                self._report(f"log file {self.path}: {exc}; its lines are no longer written there")

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:  # pragma: no cover - the buffered tail is lost; nothing to do
                pass


# =========================================================================== the runtime


@dataclass(eq=False)
class _Stream:
    program: _Program
    label: str  # "out" | "err"
    file: IO[bytes]
    fd: int
    #: The start of a line whose end has not been read yet.
    buf: bytearray = field(default_factory=bytearray)
    closed: bool = False
    #: A line too long was cut, and nothing but (maybe) the start of a line end
    #: was read since: an end read next is the cut piece's, not an empty line's.
    cut: bool = False


@dataclass(eq=False)
class _Program:
    instance: Instance
    machine: ProcessMachine
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    streams: list[_Stream] = field(default_factory=list)
    prober: _Prober | None = None
    #: The liveness check, once the program is ready (polytask.toml ``liveness``).
    liveness: _Prober | None = None

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def instance_pgid(self) -> int:
        assert self.popen is not None
        return self.popen.pid


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """Each process's pid and ``/proc/PID/stat`` fields after the name (state, ppid,
    pgrp, ..., rss at index 21); OSError when there is no procfs."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 21:
                yield int(entry.name), fields


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member changed uid: still there
        return True
    # Orphaned members that died stay zombies until init reaps them, which can
    # take a while: only a live member counts.
    try:
        for _, fields in _proc_stats():
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    except OSError:  # pragma: no cover - no procfs: trust kill(0)
        return True
    return False


_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
#: How long a supervisor's end waits for probe threads still in a GET or a connect.
_PROBE_JOIN: Final = 2.0
#: How often the process trees of programs with a ``max_memory`` are measured.
_MEMORY_PERIOD: Final = 0.5


def _tree_rss(leaders: Iterable[int]) -> dict[int, int]:
    """The RSS in bytes of each leader's tree: the members of its process group (the
    leader is its group's leader) and its descendants elsewhere (a child that called
    setsid), summed; shared pages count in each process, as in ``ps``.

    One pass over /proc for every leader at once, where psutil's
    ``children(recursive=True)`` reads all of /proc for each leader and misses a
    descendant whose parent died (the group scan keeps those that stayed in the
    group); a leader that is gone is left out.
    """
    wanted = set(leaders)
    rss: dict[int, int] = {}
    kids: dict[int, list[int]] = {}
    tree: dict[int, set[int]] = {leader: set() for leader in wanted}
    try:
        for pid, fields in _proc_stats():
            rss[pid] = int(fields[21]) * _PAGE
            kids.setdefault(int(fields[1]), []).append(pid)
            if (pgrp := int(fields[2])) in tree:
                tree[pgrp].add(pid)
    except OSError:  # pragma: no cover - no procfs: nothing to measure
        return {}
    for leader, members in tree.items():
        todo = [leader]
        while todo:
            for child in kids.get(todo.pop(), ()):
                if child not in members:
                    members.add(child)
                    todo.append(child)
    return {
        leader: sum(rss.get(pid, 0) for pid in members)
        for leader, members in tree.items()
        if leader in rss
    }


#: Seconds between two readiness attempts, and the most one attempt may take.
_PROBE_INTERVAL: Final = 0.25
_PROBE_ATTEMPT: Final = 2.0
#: How often an attempt in flight (a probe command, a TCP connect) is polled.
_PROBE_POLL: Final = 0.05


class _Prober:
    """One program's readiness probe (or liveness check), run by the loop without
    ever blocking it.

    Each attempt is bounded by ``_PROBE_ATTEMPT`` seconds and retried every
    ``_PROBE_INTERVAL`` (a liveness check: its ``timeout`` and ``period``): ``cmd``
    runs the command in a process group of its own (guarded; killed when the
    attempt times out) and polls it; ``tcp`` (one
    connect, host name lookup included) and ``http`` (one GET) run with a
    timeout in a short-lived thread that wakes the loop, since a lookup can
    block for the resolver's timeout; ``log`` is told each output line (``_read``).
    The overall deadline is the machine's (:class:`NotReady`).
    """

    def __init__(
        self,
        spec: ProbeSpec,
        port: int,
        env: Mapping[str, str],
        cwd: str | None,
        wake: Callable[[], None],
        *,
        interval: float = _PROBE_INTERVAL,
        attempt: float = _PROBE_ATTEMPT,
        first: float = 0.0,
    ) -> None:
        self.spec = spec
        self.target = spec.resolve(port)
        self._env, self._cwd, self._wake = env, cwd, wake
        #: Seconds between the end of an attempt and the next; the most one may take.
        self._interval, self._attempt = interval, attempt
        self.ok = False
        self.error = ""  # why the last attempt failed, for the not-ready message
        self._next = first
        self._end: float | None = None  # the attempt in flight must end by then
        self._popen: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        #: Where the GET in flight puts its answer (a new list per attempt, so that
        #: a late answer can never count for a later attempt).
        self._box: list[tuple[bool, str]] = []
        #: GET threads given up on at their attempt's end (they end by their timeout).
        self._stale: list[threading.Thread] = []
        #: The HTTP connections of GETs in flight, which an abort shuts down: a server
        #: that accepted and never answers must not hold a stop for the attempt's timeout.
        self._conns: set[http.client.HTTPConnection] = set()
        self._regex = re.compile(self.target) if spec.kind == "log" else None

    def due(self, now: float) -> float | None:
        if self.ok or self._regex is not None:
            return None
        if self._end is None:
            return self._next
        if self._thread is not None:
            return self._end
        return min(self._end, now + _PROBE_POLL)

    def line(self, data: bytes) -> None:
        if self._regex is not None and self._regex.search(data.decode("utf-8", "replace")):
            self.ok = True

    def poll(self, now: float) -> bool:
        """Advance the probe; True once the program is ready."""
        if self.ok or self._regex is not None:
            return self.ok
        if self.step(now):
            self.ok = True
        return self.ok

    def step(self, now: float) -> bool | None:
        """Advance the attempts: an attempt's outcome when one ended now (``error``
        says why it failed), else None. A liveness check calls only this: its
        attempts go on, ``period`` apart, whatever their outcome."""
        if self._end is None:
            if now >= self._next:
                self._begin(now)
            return None
        done = self._check()
        if done is None and now >= self._end:
            done, self.error = False, f"the attempt took longer than {self._attempt:g}s"
        if done is not None:
            self._abort()
            self._end, self._next = None, now + self._interval
        return done

    def _begin(self, now: float) -> None:
        self._end = now + self._attempt
        kind = self.spec.kind
        if kind == "cmd":
            try:
                self._popen = _proc.start_in_group(
                    ["/bin/sh", "-c", self.target],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=dict(self._env),
                    cwd=self._cwd,
                    close_fds=True,
                )
            except OSError as exc:
                self._box.append((False, f"cannot run the probe: {exc}"))
        else:
            # A connect, and above all a host name's lookup, can block for the
            # resolver's timeout (seconds): never on the loop's thread.
            self._box = []
            self._thread = threading.Thread(
                target=self._tcp_connect if kind == "tcp" else self._http_get,
                args=(self._box,),
                name="polytask-probe",
                daemon=True,
            )
            self._thread.start()

    def _tcp_connect(self, box: list[tuple[bool, str]]) -> None:
        host, _, port = self.target.rpartition(":")
        try:
            conn = socket.create_connection((host.strip("[]"), int(port)), self._attempt)
            conn.close()
            result = (True, "")
        except (OSError, ValueError) as exc:
            result = (False, str(exc) or type(exc).__name__)
        box.append(result)
        self._wake()

    def _http_get(self, box: list[tuple[bool, str]]) -> None:
        url = urlsplit(self.target)
        conn_type = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_type(url.hostname or "127.0.0.1", url.port, timeout=self._attempt)
        self._conns.add(conn)
        try:
            conn.request("GET", (url.path or "/") + (f"?{url.query}" if url.query else ""))
            status = conn.getresponse().status
            result = (200 <= status < 300, f"HTTP status {status}")
        except (OSError, http.client.HTTPException) as exc:
            result = (False, str(exc) or type(exc).__name__)
        finally:
            self._conns.discard(conn)
            conn.close()
        box.append(result)
        self._wake()

    def _check(self) -> bool | None:
        """The attempt's outcome, or None while it runs."""
        if self._box:
            ok, self.error = self._box.pop()
            return ok
        if self._popen is not None:
            code = self._popen.poll()
            if code is None:
                return None
            self.error = f"the probe command {describe_exit(code)}"
            return code == 0
        return None

    def _abort(self) -> None:
        """End the attempt in flight; a GET thread still running goes to ``_stale``."""
        if self._popen is not None:
            _proc.terminate(self._popen, 0)
            self._popen = None
        thread, self._thread = self._thread, None
        self._box = []
        for conn in list(self._conns):
            sock = conn.sock
            if sock is not None:  # connected: its GET ends now (one still connecting, later)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # closed meanwhile by its thread
                    pass
        if thread is not None and thread.is_alive():
            self._stale.append(thread)
        self._stale = [t for t in self._stale if t.is_alive()]

    def close(self) -> list[threading.Thread]:
        """End the attempt in flight (kill its command, close its socket); returns the
        GET threads still running, for the caller to join when it can wait (each GET
        has a timeout, so it ends by itself)."""
        self._end = None
        self._abort()
        return self._stale


@dataclass(eq=False)
class _ProgramRequest:
    """start / stop / restart of some programs, for the loop thread (start_program...)."""

    op: str
    names: tuple[str, ...]
    done: bool = False
    error: str | None = None


#: How often a caller waiting on the loop looks again even without a wake-up.
_WAIT_SLICE: Final = 0.25

_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_installed = False


def _forget_supervisors_after_fork() -> None:
    # The parent's supervisors are the parent's; the fork emptied the shutdown
    # hooks (see proc): one this child starts registers the hook again.
    global _hook_installed, _hook_lock
    _live.clear()
    _hook_lock = threading.Lock()
    _hook_installed = False


os.register_at_fork(after_in_child=_forget_supervisors_after_fork)


def _stop_live_supervisors() -> None:
    for sup in list(_live):
        try:
            sup.stop()
        except Exception as exc:  # pragma: no cover - shutdown must go on
            print(f"polytask: error stopping a Supervisor at exit: {exc!r}", file=sys.stderr)


class Supervisor:
    """Run the programs of a Procfile (or a mapping) together and keep them running.

    Each program runs in a process group of its own, registered with polytask's
    guardian, so that nothing it started outlives the supervisor, even if the
    supervisor's process is SIGKILLed. Every line the programs print is written
    to ``output`` as ``HH:MM:SS name.N | line``.

    Args:
        procfile: a Procfile path, or a mapping ``{"web": "shell command"}``
            (a list value is an argv, run without a shell).
        concurrency: copies per type: ``{"web": 2}`` or ``"web=2,worker=3"``.
        names: the process types to run (default: all).
        env: variables added to the programs' environment (over ``env_file``).
        env_file: env file(s) read with python-dotenv (over ``os.environ``).
        port: base PORT (default: PORT from the environment, else 5000); copy
            ``i`` (0-based) of type number ``t`` gets ``port + 100 * t + i``.
        restart, start_seconds, start_retries, backoff, backoff_max, jitter,
            stable_seconds: see :class:`RestartPolicy`.
        timeout: seconds between SIGTERM and SIGKILL when stopping.
        exit_on_failure: when a program is marked failed, stop the others.
        config: dependencies, readiness probes, stop settings, ``max_memory``,
            liveness checks and log files per process type (see docs/up.md,
            "Dependencies and readiness" and "Health and log files"): an ``UpConfig``, or
            the mapping a ``polytask.toml`` holds. Default: the ``polytask.toml``
            (else the ``[tool.polytask.up]`` table of ``pyproject.toml``) beside a
            Procfile given as a path; none for a mapping.
        cwd: directory the programs run in.
        strict: a Procfile line that foreman and honcho skip (no colon, a name
            such as ``web.v2``, an empty command, an indented entry) is an
            error; by default it is skipped with a warning in ``output``.
        output: where the prefixed lines go (default ``sys.stdout``).
        colour: colour the prefixes (default: only when ``output`` is a terminal).
        on_event: called on the loop thread with a dict for each spawn, exit,
            retry, failure, signal, stop, readiness and health restart (what
            ``polytask up --events`` logs).

    Raises:
        ProcfileError: the Procfile, env file, concurrency, names or config are
            invalid, or a ``log_file`` cannot be opened.
        OSError: the Procfile or an env file cannot be read.

    Example::

        with pt.Supervisor({"web": "python -m http.server $PORT"}) as sup:
            ...
            print(sup.status())
    """

    def __init__(
        self,
        procfile: str | os.PathLike[str] | Mapping[str, str | Sequence[str]] | Procfile,
        *,
        concurrency: Mapping[str, int] | str | Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        port: int | None = None,
        config: UpConfig | Mapping[str, Any] | None = None,
        restart: RestartMode = "on-failure",
        timeout: float = 5.0,
        start_seconds: float = 1.0,
        start_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        jitter: float = 0.25,
        stable_seconds: float = 10.0,
        exit_on_failure: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        strict: bool = False,
        output: IO[str] | IO[bytes] | None = None,
        colour: bool | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if isinstance(procfile, Procfile):
            self.procfile = procfile
        elif isinstance(procfile, Mapping):
            self.procfile = procfile_from_mapping(procfile)
        else:
            self.procfile = read_procfile(procfile, strict=strict)
        if check_timeout(timeout) is None:
            raise ValueError(f"timeout must be a number of seconds (a grace), got {timeout!r}")
        self.policy = RestartPolicy(
            restart=restart,
            start_seconds=start_seconds,
            start_retries=start_retries,
            backoff=backoff,
            backoff_max=backoff_max,
            jitter=jitter,
            stable_seconds=stable_seconds,
        )
        self.timeout = float(timeout)
        self.exit_on_failure = exit_on_failure
        files: list[str | os.PathLike[str]]
        if env_file is None:
            files = []
        elif isinstance(env_file, (str, os.PathLike)):
            files = [env_file]
        else:
            files = list(env_file)
        self.env: dict[str, str] = dict(os.environ)
        self.env.update(load_env_files(files))
        self.env.update(env or {})
        if port is None:
            port = base_port(self.env.get("PORT"))
        if isinstance(port, bool) or not isinstance(port, int):
            raise ProcfileError([("PORT", None, f"base port must be a whole number, not {port!r}")])
        counts = parse_concurrency(concurrency)
        self.instances = expand(self.procfile, counts, names, base_port=port)
        self.config = self._config(config, procfile)
        self.cwd = None if cwd is None else os.fspath(cwd)
        self._on_event = on_event
        self._output = _Output(output, [i.name for i in self.instances], colour)
        copies: dict[str, list[str]] = {}
        for i in self.instances:
            copies.setdefault(i.kind, []).append(i.name)
        settings = {i.name: self.config.get(i.kind) for i in self.instances}
        self._sup = Supervision(
            [i.name for i in self.instances],
            self.policy,
            grace=self.timeout,
            exit_on_failure=exit_on_failure,
            # A dependency on a type is one on each of its copies.
            depends_on={
                name: {c: cond for dep, cond in pc.depends_on.items() for c in copies[dep]}
                for name, pc in settings.items()
            },
            ready_timeouts={n: pc.ready_timeout for n, pc in settings.items() if pc.ready},
            graces={
                n: pc.stop_timeout for n, pc in settings.items() if pc.stop_timeout is not None
            },
            max_memory={n: pc.max_memory for n, pc in settings.items() if pc.max_memory},
            liveness={n: pc.liveness.failures for n, pc in settings.items() if pc.liveness},
        )
        self._attach_logs()
        self._programs = [_Program(i, self._sup.machines[i.name]) for i in self.instances]
        self._by_name = {p.name: p for p in self._programs}
        self._lock = threading.RLock()
        self._commands: queue.SimpleQueue[tuple[str, float, str, int | None]] = queue.SimpleQueue()
        self._program_requests: queue.SimpleQueue[_ProgramRequest] = queue.SimpleQueue()
        #: Notified by the loop after it acted (callers of start_program, wait_ready... wait on it).
        self._changed = threading.Condition(self._lock)
        #: The recent lines of every program (``polytask ctl logs``), under its own lock.
        self._log = LogRing()
        self._log_cond = threading.Condition()
        self._output.tee = self._keep_lines
        self._wake_r, self._wake_w = -1, -1
        self._selector: selectors.DefaultSelector | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._returncode: int | None = None
        self._event_error_reported = False
        #: The orphans ``_reap_adopted`` handed to the guardian: pid -> its token.
        self._adopted: dict[int, bytes] = {}
        #: Probe threads still in their GET or connect when their probe was closed: the
        #: loop does not wait for them; the cleanup waits a little (_PROBE_JOIN).
        self._probe_threads: list[threading.Thread] = []
        #: When the trees of programs with a max_memory are next measured.
        self._next_sample = 0.0

    def _attach_logs(self) -> None:
        """One :class:`_LogFile` per process type with a ``log_file`` (a relative path is
        from where the programs run), checked now: a file that cannot be opened is a
        ProcfileError here, not a surprise once programs run."""
        base = self.cwd if self.cwd is not None else os.getcwd()
        by_kind: dict[str, _LogFile] = {}
        owners: dict[str, str] = {}  # the real path -> the type writing it
        problems: list[tuple[str, int | None, str]] = []
        failed: set[str] = set()
        for inst in self.instances:
            kind, pc = inst.kind, self.config.get(inst.kind)
            if pc.log_file is None or kind in failed:
                continue
            if kind not in by_kind:
                path = os.path.join(base, os.path.expanduser(pc.log_file))
                # Two spellings of one file (x.log, ./logs/../x.log, a symlink) would
                # each rotate it under the other: one writer per file.
                real = os.path.realpath(path)
                if owners.setdefault(real, kind) != kind:
                    problems.append(
                        (
                            self.config.source,
                            None,
                            f"[{kind}] log_file {pc.log_file!r} is the file of "
                            f"[{owners[real]}] too ({real}): give each process type its own",
                        )
                    )
                    failed.add(kind)
                    continue
                log = _LogFile(path, pc.log_max_size, pc.log_backups, self._output.note)
                try:
                    log.check()
                except OSError as exc:
                    problems.append(
                        (self.config.source, None, f"[{kind}] log_file {pc.log_file!r}: {exc}")
                    )
                    failed.add(kind)
                    continue
                by_kind[kind] = log
            self._output.logs[inst.name] = by_kind[kind]
        if problems:
            raise ProcfileError(problems)

    def _config(self, given: UpConfig | Mapping[str, Any] | None, procfile: object) -> UpConfig:
        """The validated per-process settings; a dependency outside this run is an error."""
        names = self.procfile.names
        if isinstance(given, UpConfig):
            config = given
        elif given is not None:
            config, problems = scan_upconfig(given, names, source="config")
            if problems:
                raise ProcfileError(problems)
        elif isinstance(procfile, (str, os.PathLike)):
            config = read_upconfig(procfile, names)
        else:
            config = UpConfig({})
        problems = missing_dependencies(config, [i.kind for i in self.instances])
        if problems:
            raise ProcfileError(problems)
        return config

    # ------------------------------------------------------------------ public API

    def start(self) -> Supervisor:
        """Start every program (returns once each was spawned); returns self."""
        if self._thread is not None:
            raise RuntimeError("this Supervisor was already started; create a new one")
        global _hook_installed
        with _hook_lock:
            if not _hook_installed:
                _proc.at_shutdown(_stop_live_supervisors)
                _hook_installed = True
        opened: list[_LogFile] = []
        try:
            for log in set(self._output.logs.values()):
                log.open()
                opened.append(log)
        except OSError:
            for log in opened:
                log.close()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="polytask-supervisor", daemon=True)
        _live.add(self)
        self._thread.start()
        self._started.wait(60.0)
        return self

    def stop(self, timeout: float | None = None) -> list[ProcessStatus]:
        """Stop every program and wait until all are reaped; returns their final status.

        Each process group gets SIGTERM, then SIGKILL after ``timeout`` seconds
        (default: the Supervisor's ``timeout``). Raises PolytaskError if the
        supervisor's loop itself failed.
        """
        given = check_timeout(timeout)
        grace = self.timeout if given is None else given
        if self._thread is None:
            return self.status()
        self._request("stop", grace, "stop() called")
        if threading.current_thread() is not self._thread:
            # The loop SIGKILLs at the end of each grace: the slack covers reaping.
            # Dependents stop before what they depend on: one grace per level.
            graces = [grace, *(g for g in self._sup.graces.values())]
            bound = max(graces) * dependency_depth(self.config, self.procfile.names) + 30.0
            self._thread.join(bound)
            if self._thread.is_alive():  # pragma: no cover - the loop never blocks that long
                raise PolytaskError(f"the supervisor did not stop within {bound:g}s")
        self._raise_loop_error()
        return self.status()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every program has ended (exited, failed or stopped); True if so."""
        timeout = check_timeout(timeout)  # inf was an OverflowError, -1 and nan never waited
        if self._thread is None:
            raise RuntimeError("the Supervisor was not started")
        done = self._finished.wait(timeout)
        if done:
            self._raise_loop_error()
        return done

    def status(self) -> list[ProcessStatus]:
        """A snapshot of every program, in Procfile order."""
        now = time.monotonic()
        with self._lock:
            return [
                ProcessStatus(
                    name=p.name,
                    kind=p.instance.kind,
                    state=p.machine.state.value,
                    pid=p.popen.pid if p.popen is not None else None,
                    port=p.instance.port,
                    restarts=p.machine.restarts,
                    exitcode=p.machine.exitcode,
                    uptime=p.machine.uptime(now),
                    command=p.instance.command,
                    ready=(p.name in self._sup.ready_now)
                    if self.config.get(p.instance.kind).ready
                    else None,
                    ready_in=self._sup.ready_in.get(p.name),
                )
                for p in self._programs
            ]

    # ------------------------------------------------------------------ one program at a time

    def start_program(self, name: str, *, timeout: float | None = 30.0) -> list[ProcessStatus]:
        """Start a program stopped by :meth:`stop_program`, or one that exited or failed.

        ``name`` is a copy (``"web.2"``) or a process type (``"web"``: every copy).
        A program that exited or failed starts afresh (its failed-start count
        reset); one backing off restarts now; one being stopped starts again
        once it ended; one waiting for its dependencies starts when they are met;
        a running one is left alone. Returns once each was started (or waits for
        its dependencies), with their status.

        Raises:
            ValueError: ``name`` is no program of this run (the message lists them).
            PolytaskError: the supervisor is stopping or has ended.
            TaskTimeout: the loop did not carry it out within ``timeout`` seconds.
        """
        return self._program_request("start", name, timeout)

    def stop_program(self, name: str, *, timeout: float | None = None) -> list[ProcessStatus]:
        """Stop a program (its stop signal, SIGKILL after its grace) and keep it stopped.

        The program is not restarted, whatever the restart policy, until
        :meth:`start_program`; its exit decides nothing (under ``restart="never"``
        too, where a program that ends by itself ends the run), and the run goes
        on while it is held, even with nothing else running. Returns once each
        copy named has ended, with their status; ``name`` as for :meth:`start_program`.

        Raises:
            ValueError, PolytaskError, TaskTimeout: as :meth:`start_program`.
        """
        return self._program_request("stop", name, timeout)

    def restart_program(self, name: str, *, timeout: float | None = None) -> list[ProcessStatus]:
        """Stop a program (as :meth:`stop_program`) and start it again; one not running
        just starts. The copies of a type are restarted together. Returns once each
        was started again, with their status.

        Example::

            sup.restart_program("web.1")   # web.2 keeps serving meanwhile
            assert sup.wait_ready("web.1", timeout=30)

        Raises:
            ValueError, PolytaskError, TaskTimeout: as :meth:`start_program`.
        """
        return self._program_request("restart", name, timeout)

    def wait_ready(self, name: str, timeout: float | None = None) -> bool:
        """Wait until a program (every copy of a type) is ready; False on timeout.

        Ready: its readiness probe (polytask.toml's ``ready``) succeeded since its
        last start; without a probe, it has been up for ``start_seconds`` (its
        state is running).

        Raises:
            ValueError: ``name`` is no program of this run.
            PolytaskError: it cannot become ready: it exited or failed and will
                not be restarted, it was stopped on request, or the run is stopping.
        """
        names = self._resolve(name)
        when = deadline(timeout)
        if self._thread is None:
            raise RuntimeError("the Supervisor was not started")

        def verdict() -> str | None:
            """ "" when every copy is ready; why one never will be; None: wait."""
            for n in names:
                prog = self._by_name[n]
                m = prog.machine
                if self.config.get(prog.instance.kind).ready is not None:
                    if n in self._sup.ready_now:
                        continue
                elif m.state is State.RUNNING:
                    continue
                if self._sup.stopping or self._finished.is_set():
                    return f"{n} is not ready ({m.state.value}) and the run is stopping"
                if n in self._sup.held:
                    return f"{n} was stopped on request; start it first"
                if m.state in (State.EXITED, State.FAILED):
                    return (
                        f"{n} {describe_exit(m.exitcode)} and is {m.state.value}: it will not "
                        "become ready unless started again"
                    )
                return None
            return ""

        why = self._wait_loop(verdict, when)
        if why is None:
            return False
        if why:
            raise PolytaskError(why)
        return True

    def _resolve(self, name: str) -> list[str]:
        if not isinstance(name, str):
            raise TypeError(f"name must be a program name (str), not {type(name).__name__}")
        return resolve_names(name, [(i.name, i.kind) for i in self.instances])

    def _wait_loop(self, verdict: Callable[[], str | None], when: float | None) -> str | None:
        """Wait under the loop's lock until ``verdict()`` is not None (returned), or None
        once ``when`` (a deadline) passed. Never on the loop thread: it would wait on itself."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot wait for the supervisor from its own loop thread")
        with self._changed:
            while (result := verdict()) is None:
                left = remaining(when)
                if left == 0:
                    return None
                if self._finished.is_set():
                    return verdict()
                self._changed.wait(_WAIT_SLICE if left is None else min(left, _WAIT_SLICE))
            return result

    def _program_request(self, op: str, name: str, timeout: float | None) -> list[ProcessStatus]:
        names = self._resolve(name)
        timeout = check_timeout(timeout)  # a float for the message (a Fraction has no :g on 3.11)
        when = deadline(timeout)
        if self._thread is None:
            raise RuntimeError("the Supervisor was not started")
        if threading.current_thread() is self._thread:  # an on_event callback, say
            raise RuntimeError(f"cannot {op} {name} from the supervisor's own loop thread")
        if self._finished.is_set():
            raise PolytaskError(f"cannot {op} {name}: the supervisor has ended")
        req = _ProgramRequest(op, tuple(names))
        self._program_requests.put(req)
        self._wake()

        def verdict() -> str | None:
            if req.done and req.error:
                return req.error
            if not req.done:
                return "the supervisor has ended" if self._finished.is_set() else None
            # start and restart: a copy being stopped first starts once it ended;
            # stop: done when every copy ended.
            if op == "stop":
                pending = [n for n in names if self._sup.machines[n].state not in TERMINAL]
            else:
                pending = [n for n in names if n in self._sup.restarting]
            if not pending:
                return ""
            if self._sup.stopping or self._finished.is_set():
                done = {"stop": "stopped"}.get(op, f"{op}ed")
                return f"the run is stopping: {', '.join(pending)} not {done}"
            return None

        why = self._wait_loop(verdict, when)
        if why is None:
            raise TaskTimeout(f"{op} {name}: not done within {timeout:g}s", timeout=timeout)
        if why:
            raise PolytaskError(f"cannot {op} {name}: {why}")
        return [st for st in self.status() if st.name in names]

    def _read_log(
        self, names: Sequence[str] | None, *, after: int | None, lines: int | None, wait: float
    ) -> tuple[list[LogLine], int, bool]:
        """For ``polytask ctl logs``: the last ``lines`` lines of ``names`` (None: all,
        polytask's own lines included) when ``after`` is None, else the lines after
        that number, waiting up to ``wait`` seconds for one. Returns the lines, the
        number to pass as ``after`` next, and whether the run has ended."""
        with self._log_cond:
            if after is None:
                return self._log.tail(names, lines), self._log.seq, self._finished.is_set()
            if self._log.seq <= after and not self._finished.is_set():
                self._log_cond.wait(wait)
            return self._log.after(after, names), self._log.seq, self._finished.is_set()

    @property
    def returncode(self) -> int | None:
        """None while running; then the status decided by the first decisive event.

        The first of these decides: a program given up on (its own exit status,
        128 + N for signal N, 1 if it exited 0); under restart "never", the first
        program to end (its status, 0 included); a :meth:`request_stop` with a
        ``status``. 0 when none happened (every program ended cleanly, or
        :meth:`stop` was called); 1 if the supervisor's loop itself failed.
        """
        return self._returncode

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "finished" if self._finished.is_set() else "running" if self._thread else "new"
        return f"<Supervisor {state} {', '.join(i.name for i in self.instances)}>"

    # ------------------------------------------------------------------ requests (any thread)

    def _request(self, what: str, grace: float, reason: str, status: int | None = None) -> None:
        # Safe from a signal handler: SimpleQueue.put is reentrant, os.write is atomic.
        self._commands.put((what, grace, reason, status))
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def request_stop(
        self, reason: str = "stop requested", *, kill: bool = False, status: int | None = None
    ) -> None:
        """Ask the loop to stop (``kill``: SIGKILL now) without waiting; signal-handler safe.

        ``status`` becomes :attr:`returncode` unless an earlier event decided it
        (``polytask up`` passes 128 + the signal number, as a shell reports it).
        """
        self._request("kill" if kill else "stop", self.timeout, reason, status)

    def _raise_loop_error(self) -> None:
        if self._error is not None:
            raise PolytaskError(f"the supervisor loop failed: {self._error!r}") from self._error

    def _reap_adopted(self) -> None:
        """Reap our zombie children that are none of this supervisor's processes,
        and hand the living ones to the guardian.

        For the ``polytask up`` command, the subreaper of the programs: their
        orphans (a daemon's double fork) become its children, and those that exit
        must be reaped by it, or they pile up. Those still running are ended with
        the run; registered with the guardian (pid and start time), they are ended
        too if up is SIGKILLed, when they would go to init (a daemon that left the
        group and cleared its environment has nothing else the guardian could find
        it by). Under the lock, which the loop holds while it starts and reaps
        programs and probes: a program that exited before the loop took note of it
        is never taken for an orphan.
        """
        with self._lock:
            ours: set[int] = set()
            for prog in self._programs:
                if prog.popen is not None:
                    ours.add(prog.popen.pid)
                for probe in (prog.prober, prog.liveness):
                    if probe is not None and probe._popen is not None:
                        ours.add(probe._popen.pid)
            strays = _proc.stray_children(ours)
            zombies = []
            # The living first: an orphan reaped in this pass (as a test sees it)
            # means every child adopted before it is registered.
            for pid in strays:
                if _proc.pid_state(pid) == b"Z":
                    zombies.append(pid)
                elif pid not in self._adopted:
                    token = _proc.guard_pid(pid)
                    if token is not None:
                        self._adopted[pid] = token
            for pid in zombies:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            # Forget those gone (reaped here): a clock that double-forks a job a
            # minute must not grow the guardian's list for ever.
            for pid in self._adopted.keys() - set(strays).difference(zombies):
                _proc.unguard_pid(self._adopted.pop(pid))

    # ------------------------------------------------------------------ the loop thread

    def _run(self) -> None:
        assert self._selector is not None
        try:
            with self._lock:
                for source, line, why in self.procfile.skipped:
                    self._output.note(f"warning: {source}:{line}: {why}")
                now = time.monotonic()
                # One at a time: a program that could not start may stop the run
                # (restart policy "never"), and then the rest are not started.
                while actions := self._sup.start_next(now):
                    self._do(actions, now)
            self._output.flush()
            self._started.set()
            while True:
                with self._lock:
                    self._take_commands()
                    now = time.monotonic()
                    while actions := self._sup.tick(now):
                        self._do(actions, now)
                    self._poll_probes(now)
                    self._poll_health(now)
                    # A start, an exit or a readiness may let a waiting program start.
                    while actions := self._sup.start_next(now):
                        self._do(actions, now)
                    for prog in self._lingering():
                        if not _group_alive(prog.instance_pgid):
                            self._finish(prog, now)
                    if self._sup.done:
                        break
                    due = self._sup.due
                    dues = [] if due is None else [due]
                    if self._lingering():
                        dues.append(now + _LINGER_POLL)
                    for prog in self._programs:
                        if prog.prober is not None and (d := prog.prober.due(now)) is not None:
                            dues.append(d)
                    dues += self._health_dues(now)
                    # At most what epoll takes (a grace of 1e7 s was an OverflowError).
                    wait = min(max(0.0, min(dues) - now), POLL_MAX_MS / 1000) if dues else None
                self._output.flush()
                ready = self._selector.select(wait)
                with self._lock:
                    now = time.monotonic()
                    for key, _ in ready:
                        data = key.data
                        if data is None:
                            self._drain_wakeup()
                        elif isinstance(data, _Stream):
                            self._read(data)
                        elif isinstance(data, _Program) and data.pidfd == key.fd:
                            self._reaped(data, now)
                self._output.flush()
        except BaseException as exc:
            self._error = exc
            self._output.note(f"internal error, stopping everything: {exc!r}")
        finally:
            self._cleanup()

    def _take_commands(self) -> None:
        self._take_program_requests()
        while True:
            try:
                what, grace, reason, status = self._commands.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if what == "kill":
                self._do(self._sup.kill(reason, now, status=status), now)
            else:
                self._do(self._sup.stop(reason, grace, now, status=status), now)

    def _take_program_requests(self) -> None:
        """Carry out start_program / stop_program / restart_program (the loop thread)."""
        handlers = {
            "start": self._sup.start_program,
            "stop": self._sup.stop_program,
            "restart": self._sup.restart_program,
        }
        while True:
            try:
                req = self._program_requests.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if self._sup.stopping:
                req.error = "the supervisor is stopping"
            else:
                self._output.note(f"{req.op} {', '.join(req.names)} (requested)")
                self._event("request", op=req.op, processes=list(req.names))
                for name in req.names:
                    self._do(handlers[req.op](name, now), now)
            req.done = True
            self._changed.notify_all()

    def _keep_lines(self, name: str, lines: list[bytes]) -> None:
        with self._log_cond:
            self._log.add_many(name, lines, time.time())
            self._log_cond.notify_all()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _do(self, actions: list[SupervisionAction], now: float) -> None:
        """Carry out the machine's actions, in order (some feed it back at once)."""
        if actions:
            self._changed.notify_all()  # the loop holds the lock: a state may have changed
        for action in actions:
            if isinstance(action, Start):
                self._spawn(self._by_name[action.name], now)
            elif isinstance(action, Kill):
                prog = self._by_name[action.name]
                if action.policy == "term":
                    stop_signal = self.config.get(prog.instance.kind).stop_signal
                    self._signal(prog, stop_signal or signal.SIGTERM)
                else:
                    self._hard_kill(prog)
            elif isinstance(action, Exited):
                self._report_exit(action)
            elif isinstance(action, Running):
                self._event("running", self._by_name[action.name])
            elif isinstance(action, GiveUp):
                prog = self._by_name[action.name]
                if prog.machine.spawns == 0:  # never ran: no exit line said why
                    self._output.note(f"{prog.name} failed: {action.reason}")
                self._event("failed", prog, reason=action.reason)
            elif isinstance(action, Waiting):
                prog = self._by_name[action.name]
                self._output.note(f"{prog.name} waits for {', '.join(action.pending)}")
                self._event("waiting", prog, pending=list(action.pending))
            elif isinstance(action, Probe):
                self._begin_probe(self._by_name[action.name], now)
            elif isinstance(action, Ready):
                prog = self._by_name[action.name]
                self._close_probe(prog)
                self._output.note(f"{prog.name} is ready")
                self._event("ready", prog)
            elif isinstance(action, NotReady):
                prog = self._by_name[action.name]
                spec = self.config.get(prog.instance.kind).ready
                assert spec is not None
                last = prog.prober.error if prog.prober is not None else ""
                self._close_probe(prog)
                self._output.note(
                    f"{prog.name} not ready within {action.timeout:g}s "
                    f"(ready: {spec.kind} {spec.resolve(prog.instance.port)}"
                    + (f"; last attempt: {last}" if last else "")
                    + f"); stopping, exit status {self._sup.returncode}"
                )
                self._event("not_ready", prog, timeout=action.timeout, last=last)
            elif isinstance(action, Stopping):
                for prog in self._programs:
                    self._close_probe(prog)
                if action.alive:
                    self._output.note(
                        f"stopping ({action.reason}): SIGTERM to {action.alive} program"
                        f"{'s' if action.alive > 1 else ''}, SIGKILL after {action.grace:g}s"
                        + (
                            " (dependents first; polytask.toml may set other signals and timeouts)"
                            if self._sup.depends_on or self._sup.graces
                            else ""
                        )
                    )
                self._event("stop", reason=action.reason, grace=action.grace)
            elif isinstance(action, Killing):
                self._output.note(f"killing every program now ({action.reason})")
                self._event("kill", reason=action.reason)
            elif isinstance(action, (Liveness, OverMemory, NotAlive)):
                self._health_action(action, now)
            else:
                # Exit: every program ended; the loop sees it (Supervision.done).
                assert isinstance(action, Exit)

    def _report_exit(self, ex: Exited) -> None:
        prog = self._by_name[ex.name]
        who = prog.name if ex.pid is None else f"{prog.name} (pid {ex.pid})"
        text = f"{who} {describe_exit(ex.code)} after {format_duration(ex.uptime)}"
        if ex.state is State.BACKOFF:
            text += f"; restarting in {ex.retry_in:.2f}s"
        elif ex.state is State.FAILED:
            text += f"; failed: {ex.reason}"
        elif ex.state is State.EXITED:
            text += f"; not restarted (restart policy: {self.policy.restart})"
        elif ex.state is State.STOPPED and ex.name in self._sup.held:
            text += "; stopped on request (started again only on request)"
        self._output.note(text)
        self._event(
            "exit",
            prog,
            pid=ex.pid,
            code=ex.code,
            description=describe_exit(ex.code),
            uptime=round(ex.uptime, 3),
            state=ex.state.value,
        )
        if ex.state is State.BACKOFF:
            self._event("retry", prog, delay=round(ex.retry_in or 0.0, 3), attempt=ex.attempt)

    def _env_of(self, prog: _Program) -> dict[str, str]:
        env = dict(self.env)
        env["PORT"] = str(prog.instance.port)
        # foreman's PS and honcho's HONCHO_PROCESS_NAME, so that either tool's
        # Procfile finds the name it expects.
        env["PS"] = env["HONCHO_PROCESS_NAME"] = prog.name
        # Python programs would block-buffer a pipe and show their lines late.
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _begin_probe(self, prog: _Program, now: float) -> None:
        spec = self.config.get(prog.instance.kind).ready
        if prog.popen is None or spec is None:  # it could not start: nothing to probe
            return
        self._close_probe(prog)
        prog.prober = _Prober(spec, prog.instance.port, self._env_of(prog), self.cwd, self._wake)
        self._poll_probes(now)

    def _poll_probes(self, now: float) -> None:
        for prog in self._programs:
            if prog.prober is not None and prog.prober.poll(now):
                self._do(self._sup.ready(prog.name, now), now)

    def _close_probe(self, prog: _Program) -> None:
        """End its readiness probe and its liveness check (each run has its own)."""
        for prober in (prog.prober, prog.liveness):
            if prober is not None:
                self._probe_threads = [t for t in self._probe_threads if t.is_alive()]
                self._probe_threads += prober.close()
        prog.prober = prog.liveness = None

    # ------------------------------------------------------------------ health (polytask.toml)

    def _health_action(self, action: Liveness | OverMemory | NotAlive, now: float) -> None:
        prog = self._by_name[action.name]
        if isinstance(action, Liveness):
            spec = self.config.get(prog.instance.kind).liveness
            if prog.popen is None or spec is None:  # it could not start: nothing to check
                return
            self._close_probe(prog)
            prog.liveness = _Prober(
                spec.probe,
                prog.instance.port,
                self._env_of(prog),
                self.cwd,
                self._wake,
                interval=spec.period,
                attempt=spec.timeout,
                first=now + spec.period,
            )
            return
        # Its stop (a Kill "term") follows: no more checks of this run.
        self._close_probe(prog)
        then = "restarting" if action.restart else "stopping it (restart policy: never)"
        pid = prog.popen.pid if prog.popen is not None else None
        if isinstance(action, OverMemory):
            used, limit = format_size(action.rss), format_size(action.limit)
            if used == limit:  # 200.3 MiB > 200 MiB must not read "200 MiB > 200 MiB"
                used = f"{action.rss} bytes"
            self._output.note(f"{prog.name} uses {used} > max_memory {limit}: {then}")
            self._event("max_memory", prog, pid=pid, rss=action.rss, limit=action.limit)
        else:
            spec = self.config.get(prog.instance.kind).liveness
            assert spec is not None
            check = f"{spec.probe.kind} {spec.probe.resolve(prog.instance.port)}"
            self._output.note(
                f"{prog.name} failed {action.failures} liveness checks in a row "
                f"(liveness: {check}; last: {action.last or 'failed'}): {then}"
            )
            self._event("not_alive", prog, pid=pid, failures=action.failures, last=action.last)

    def _poll_health(self, now: float) -> None:
        """Advance the liveness checks; measure the watched trees when it is time."""
        for prog in self._programs:
            check = prog.liveness
            if check is not None and (ok := check.step(now)) is not None:
                self._do(self._sup.alive(prog.name, ok, now, "" if ok else check.error), now)
        if not self._sup.max_memory or now < self._next_sample:
            return
        self._next_sample = now + _MEMORY_PERIOD
        watched = {
            p.popen.pid: p
            for p in self._programs
            if p.name in self._sup.max_memory
            and p.popen is not None
            and p.popen.returncode is None
            and p.machine.state in (State.STARTING, State.RUNNING)
        }
        if watched:
            for pid, rss in _tree_rss(watched).items():
                self._do(self._sup.memory(watched[pid].name, rss, now), now)

    def _health_dues(self, now: float) -> list[float]:
        dues = [
            d
            for p in self._programs
            if p.liveness is not None and (d := p.liveness.due(now)) is not None
        ]
        if any(p.popen is not None and p.name in self._sup.max_memory for p in self._programs):
            dues.append(self._next_sample)
        return dues

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _spawn(self, prog: _Program, now: float) -> None:
        inst = prog.instance
        env = self._env_of(prog)
        argv = (
            ["/bin/sh", "-c", inst.command] if isinstance(inst.command, str) else list(inst.command)
        )
        try:
            # A session of its own (its group's leader, as start_in_group's group),
            # as honcho does: no controlling terminal. In ours, a program that reads
            # /dev/tty (a password prompt) would be stopped by SIGTTIN for good,
            # silently; here opening it fails at once, and the program says so.
            popen = _proc.start_in_group(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                close_fds=True,
                start_new_session=True,
                process_group=None,
            )
        except OSError as exc:
            self._output.note(f"{prog.name} could not start: {exc}")
            self._event("spawn_error", prog, error=str(exc))
            self._do(self._sup.exited(prog.name, 127, now), now)
            return
        prog.popen = popen
        self._sup.started(prog.name, popen.pid, now)
        assert self._selector is not None and popen.stdout is not None and popen.stderr is not None
        prog.pidfd = os.pidfd_open(popen.pid)
        self._selector.register(prog.pidfd, selectors.EVENT_READ, prog)
        for label, file in (("out", popen.stdout), ("err", popen.stderr)):
            fd = file.fileno()
            os.set_blocking(fd, False)
            stream = _Stream(prog, label, file, fd)
            prog.streams.append(stream)
            self._selector.register(fd, selectors.EVENT_READ, stream)
        m = prog.machine
        what = "started" if m.restarts == 0 else f"restarted (restart {m.restarts})"
        self._output.note(f"{prog.name} {what}, pid {popen.pid}, PORT {inst.port}")
        self._event("spawn", prog, pid=popen.pid, port=inst.port, restarts=m.restarts)

    def _signal(self, prog: _Program, sig: signal.Signals) -> None:
        if prog.popen is None or prog.popen.returncode is not None:
            return
        if not _proc.signal_group(prog.popen.pid, sig):
            return
        self._event("signal", prog, pid=prog.popen.pid, signal=sig.name)

    def _hard_kill(self, prog: _Program) -> None:
        popen = prog.popen
        if popen is None:
            return
        forced = popen.returncode is None or _group_alive(popen.pid)
        if forced:
            late = "" if self._sup.killing else " did not stop in time:"
            self._output.note(f"{prog.name} (pid {popen.pid}){late} SIGKILL")
            self._event("signal", prog, pid=popen.pid, signal="SIGKILL")
        _proc.terminate(popen, 0)
        # When a shell wrapper died of SIGTERM but the program under it had to be
        # SIGKILLed, the SIGKILL is the truth worth reporting.
        self._finish(prog, time.monotonic(), code=-signal.SIGKILL if forced else None)

    def _reaped(self, prog: _Program, now: float) -> None:
        """The program's leader exited: reap it; finish it unless its group gets a grace."""
        popen = prog.popen
        assert popen is not None
        popen.wait()  # the pidfd said it exited: this does not block
        self._close_pidfd(prog)
        if prog.machine.state in (State.STOPPING, State.RESTARTING) and _group_alive(popen.pid):
            # A shell wrapper died of SIGTERM before the program it runs: the rest
            # of the group keeps the grace it was promised (the loop polls it).
            return
        self._finish(prog, now)

    def _finish(self, prog: _Program, now: float, code: int | None = None) -> None:
        """Sweep what is left of the group, read the last output, record the exit."""
        popen = prog.popen
        assert popen is not None
        # Ends what stayed in the group (background jobs) and unguards it.
        status = _proc.terminate(popen, 0)
        code = status if code is None else code
        self._close_pidfd(prog)
        self._close_probe(prog)
        for stream in list(prog.streams):
            self._read(stream, drain=True)
        prog.popen = None
        self._do(self._sup.exited(prog.name, code, now, pid=popen.pid), now)

    def _close_pidfd(self, prog: _Program) -> None:
        if prog.pidfd is not None:
            assert self._selector is not None
            self._selector.unregister(prog.pidfd)
            os.close(prog.pidfd)
            prog.pidfd = None

    def _lingering(self) -> list[_Program]:
        return [p for p in self._programs if p.popen is not None and p.popen.returncode is not None]

    def _read(self, stream: _Stream, *, drain: bool = False) -> None:
        while not stream.closed:
            try:
                chunk = os.read(stream.fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # pragma: no cover - a pipe does not fail otherwise
                chunk = b""
            if not chunk:
                self._close_stream(stream)
                return
            buf = stream.buf
            # What is held has no line end but maybe the start of one in its last
            # two bytes (a "\r" before "\n", a UTF-8 end's first bytes): only the
            # chunk and that seam are looked at, so a long line read in small
            # pieces is not scanned again with each piece.
            other = _other_eol(chunk) or bool(buf and _other_eol(bytes(buf[-2:]) + chunk[:2]))
            if not other and b"\n" not in chunk:
                buf += chunk  # the line goes on
                lines: list[bytes] = []
            else:
                if buf:
                    buf += chunk
                    data = bytes(buf)
                    buf.clear()
                else:
                    data = chunk
                if other:
                    lines, rest = _split_lines(data, final=False)
                else:  # only "\n" ends lines here (nearly always): one C call
                    lines = data.split(b"\n")
                    rest = lines.pop()
                buf += rest
            if stream.cut:
                if lines:
                    if not lines[0]:  # the cut piece's end: its line is out already
                        del lines[0]
                    stream.cut = False
                elif bytes(buf) not in _EOL_STARTS:  # the line went on
                    stream.cut = False
            if len(buf) > _MAX_LINE:  # a line with no end in sight: cut it
                # What may be the start of a line end ("\r" of "\r\n", the first
                # bytes of U+0085, U+2028/9) stays, to end what follows as one.
                cut = len(buf) - _partial_eol(buf)
                lines.append(bytes(buf[:cut]))
                del buf[:cut]
                stream.cut = True
            self._lines(stream.program, lines)
            if not drain:
                return

    def _lines(self, prog: _Program, lines: list[bytes]) -> None:
        self._output.lines(prog.name, lines)
        if prog.prober is not None:
            for line in lines:
                prog.prober.line(line)

    def _close_stream(self, stream: _Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        if stream.buf:  # the last line had no end
            lines = _split_lines(bytes(stream.buf), final=True)[0]
            if stream.cut and not lines[0]:  # a last "\r" ended the cut piece
                del lines[0]
            self._lines(stream.program, lines)
            stream.buf.clear()
        assert self._selector is not None
        try:
            self._selector.unregister(stream.fd)
        except (KeyError, ValueError):
            pass
        stream.file.close()
        stream.program.streams.remove(stream)

    def _event(self, kind: str, prog: _Program | None = None, **fields: Any) -> None:
        if self._on_event is None:
            return
        record: dict[str, Any] = {"time": round(time.time(), 6), "event": kind}
        if prog is not None:
            record["process"] = prog.name
        record.update(fields)
        try:
            self._on_event(record)
        except Exception as exc:
            if not self._event_error_reported:
                self._event_error_reported = True
                self._output.note(f"on_event callback failed: {exc!r} (further errors not shown)")

    def _cleanup(self) -> None:
        # Normally every program was reaped already; after an internal error this
        # is what keeps the promise that nothing outlives the supervisor.
        with self._lock:
            for prog in self._programs:
                try:
                    self._close_probe(prog)
                except Exception:  # pragma: no cover - best effort
                    pass
            for prog in self._programs:
                if prog.popen is not None:
                    try:
                        _proc.terminate(prog.popen, 0)
                    except Exception:  # pragma: no cover - best effort
                        pass
                    prog.popen = None
                if prog.pidfd is not None:
                    os.close(prog.pidfd)
                    prog.pidfd = None
                for stream in list(prog.streams):
                    try:
                        self._read(stream, drain=True)
                    except Exception:  # pragma: no cover - best effort
                        pass
                    if stream in prog.streams:
                        self._close_stream(stream)
            probe_threads, self._probe_threads = self._probe_threads, []
            if self._error is not None:
                self._sup.fail(f"internal error: {self._error!r}")
            self._returncode = self._sup.returncode
            if self._selector is not None:
                self._selector.close()
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        # Probe threads still in a GET or a connect (their connections were shut down):
        # waited for briefly, without the lock (status() must not wait on them); one
        # still connecting to a host that never answers ends at its own timeout.
        until = time.monotonic() + _PROBE_JOIN
        for thread in probe_threads:
            thread.join(max(0.0, until - time.monotonic()))
        if self._returncode:
            self._output.note(f"exit status {self._returncode} ({self._sup.reason})")
        self._event("done", returncode=self._returncode)
        self._output.flush()
        self._output.close_logs()
        _live.discard(self)
        self._started.set()
        self._finished.set()
        with self._changed:
            while True:  # nobody will take them now: their callers must not wait
                try:
                    req = self._program_requests.get_nowait()
                except queue.Empty:
                    break
                req.error, req.done = "the supervisor has ended", True
            self._changed.notify_all()
        with self._log_cond:
            self._log_cond.notify_all()
