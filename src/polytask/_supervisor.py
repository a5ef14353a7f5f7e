"""Supervisor: run several programs, and several copies of one, and keep them running.

Two layers, as h11 splits a protocol from its I/O:

- :class:`ProcessMachine`, one per program: a pure state machine (no clock, no
  process, no randomness of its own) whose transitions are the data table
  ``TRANSITIONS``. It decides when to spawn, when to signal, how long to back off
  and when to give up; it is tested without processes.
- :class:`Supervisor`, the runtime: one loop thread that owns every program and
  carries out what the machines ask for.

::

    caller thread                        loop thread (one per Supervisor)
    ─────────────                        ────────────────────────────────
    start() ──────────────────────────>  START each machine ── SPAWN ──> _proc.start_in_group
    stop() / kill (signal handler) ─┐       (own process group, guarded: a SIGKILLed parent
                                    │        still takes every program down with it)
            SimpleQueue + wakeup pipe └─>  one selector over
    status() <── lock ── machines          · the wakeup pipe
    wait()   <── Event ── loop ends        · stdout + stderr pipe of every program ─ lines ─> _Output
                                           · a pidfd per program ─ EXIT ─> machine.handle()
                                         timers: machine.due (start check, backoff, stop grace)
                                         actions: TERMINATE ─> _proc.signal_group(SIGTERM)
                                                  KILL ─> _proc.terminate(proc, 0)  (SIGKILL, reap)
                                         after every exit: _proc.terminate(proc, 0) sweeps what is
                                         left of the program's group and unguards it

One thread reads every pipe, so a line is written out whole, and a program's
stdout and stderr (two pipes) never mix within a line.
"""

from __future__ import annotations

import enum
import io
import os
import queue
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

from ._core.errors import PolytaskError, ProcfileError, describe_exit
from ._core.timeouts import check_timeout
from ._os import proc as _proc
from ._procfile import (
    DEFAULT_BASE_PORT,
    Instance,
    Procfile,
    expand,
    parse_concurrency,
    parse_env,
    parse_procfile,
    procfile_from_mapping,
)

__all__ = [
    "TRANSITIONS",
    "Action",
    "Event",
    "ProcessMachine",
    "ProcessStatus",
    "RestartPolicy",
    "State",
    "Step",
    "Supervisor",
    "exit_status",
    "format_summary",
    "load_env_files",
    "read_procfile",
]

RestartMode = Literal["on-failure", "always", "never"]
RESTART_MODES: Final = ("on-failure", "always", "never")


# =========================================================================== the pure machine


class State(enum.StrEnum):
    """Where one program is in its life (supervisor's names where they exist)."""

    STOPPED = "stopped"  # not started, or stopped on request
    STARTING = "starting"  # spawned, not yet up for start_seconds
    RUNNING = "running"  # up for at least start_seconds
    BACKOFF = "backoff"  # exited, waiting for its restart delay
    STOPPING = "stopping"  # SIGTERM sent, waiting for it to exit (SIGKILL at due)
    EXITED = "exited"  # ended and not to be restarted (policy says so)
    FAILED = "failed"  # given up on: kept dying at start, or failed under "never"


TERMINAL: Final = frozenset({State.STOPPED, State.EXITED, State.FAILED})


class Event(enum.Enum):
    """What can happen to a program."""

    START = "start"  # the supervisor wants it running
    TIMER = "timer"  # its ``due`` time came
    EXIT = "exit"  # its process ended (with ``code``)
    STOP = "stop"  # stop gracefully (SIGTERM, ``grace`` seconds, SIGKILL)
    KILL = "kill"  # stop now (SIGKILL)


class Action(enum.Enum):
    """What the machine asks the runtime to do."""

    SPAWN = "spawn"  # start the program
    TERMINATE = "terminate"  # SIGTERM its process group
    KILL = "kill"  # SIGKILL its process group and reap it


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast a program is restarted.

    Args:
        restart: ``"on-failure"`` (restart after a non-zero exit or a signal),
            ``"always"`` (restart after any exit) or ``"never"``.
        start_seconds: a run must last this long to count as a successful start
            (supervisor's ``startsecs``).
        start_retries: failed starts in a row tolerated before the program is
            marked failed (supervisor's ``startretries``): it is started at most
            ``1 + start_retries`` times in a row.
        backoff: first restart delay in seconds; it doubles with each restart
            in a row, up to ``backoff_max``.
        jitter: fraction (0-1) of each delay drawn at random, so that programs
            that died together do not restart in lockstep.
        stable_seconds: a run that lasts this long resets the delay to ``backoff``.
    """

    restart: RestartMode = "on-failure"
    start_seconds: float = 1.0
    start_retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25
    stable_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.restart not in RESTART_MODES:
            raise ValueError(
                f"restart must be one of {', '.join(RESTART_MODES)}, got {self.restart!r}"
            )
        for name in ("start_seconds", "backoff", "backoff_max", "stable_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.backoff_max < self.backoff:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff ({self.backoff})"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if isinstance(self.start_retries, bool) or not isinstance(self.start_retries, int):
            raise ValueError(f"start_retries must be a whole number, got {self.start_retries!r}")
        if self.start_retries < 0:
            raise ValueError(f"start_retries must be >= 0, got {self.start_retries}")

    def wants_restart(self, code: int) -> bool:
        """Whether an exit with status ``code`` calls for a restart."""
        if self.restart == "always":
            return True
        if self.restart == "never":
            return False
        return code != 0

    def delay(self, level: int, u: float) -> float:
        """The delay before restart number ``level`` (0-based) in a row; ``u`` in [0, 1)."""
        base = min(self.backoff_max, self.backoff * 2.0 ** min(level, 62))
        return base * (1.0 - self.jitter * u)


@dataclass(frozen=True)
class Step:
    """The outcome of one :meth:`ProcessMachine.handle` call."""

    event: Event
    old: State
    new: State
    actions: tuple[Action, ...]
    #: Seconds until the restart, when the step entered BACKOFF.
    retry_in: float | None = None
    #: Why the program was given up on, when the step entered FAILED.
    reason: str | None = None


# Guards, tried in the order of a row's alternatives; the first that holds wins.
def _g_always(m: ProcessMachine, code: int | None) -> bool:
    return True


def _g_clean_done(m: ProcessMachine, code: int | None) -> bool:
    return code == 0 and not m.policy.wants_restart(code)


def _g_failed_done(m: ProcessMachine, code: int | None) -> bool:
    return code is not None and not m.policy.wants_restart(code)


def _g_exhausted(m: ProcessMachine, code: int | None) -> bool:
    return m.failed_starts + 1 > m.policy.start_retries


_GUARDS: Final[dict[str, Callable[[ProcessMachine, int | None], bool]]] = {
    "always": _g_always,
    "clean_done": _g_clean_done,
    "failed_done": _g_failed_done,
    "retries_exhausted": _g_exhausted,
}

_S = State
_E = Event
_SPAWN = ("reset_if_new", "spawn")
_STOP_NOW = ((("always", _S.STOPPING, ("kill",)),),)

#: The transition table: (state, event) -> alternatives (guard, next state, effects).
#: A pair absent from the table is a bug in the caller and raises ValueError.
TRANSITIONS: Final[dict[tuple[State, Event], tuple[tuple[str, State, tuple[str, ...]], ...]]] = {
    # state        event          guard                next state   effects
    (_S.STOPPED, _E.START): (("always", _S.STARTING, _SPAWN),),
    (_S.EXITED, _E.START): (("always", _S.STARTING, _SPAWN),),
    (_S.FAILED, _E.START): (("always", _S.STARTING, _SPAWN),),
    (_S.STARTING, _E.TIMER): (("always", _S.RUNNING, ("running",)),),
    (_S.STARTING, _E.EXIT): (
        ("clean_done", _S.EXITED, ("exit",)),
        ("failed_done", _S.FAILED, ("exit", "fail_policy")),
        ("retries_exhausted", _S.FAILED, ("exit", "failed_start", "fail_retries")),
        ("always", _S.BACKOFF, ("exit", "failed_start", "backoff")),
    ),
    (_S.RUNNING, _E.EXIT): (
        ("clean_done", _S.EXITED, ("exit",)),
        ("failed_done", _S.FAILED, ("exit", "fail_policy")),
        ("always", _S.BACKOFF, ("exit", "backoff")),
    ),
    (_S.BACKOFF, _E.TIMER): (("always", _S.STARTING, ("spawn",)),),
    (_S.STARTING, _E.STOP): (("always", _S.STOPPING, ("terminate",)),),
    (_S.RUNNING, _E.STOP): (("always", _S.STOPPING, ("terminate",)),),
    (_S.BACKOFF, _E.STOP): (("always", _S.STOPPED, ("clear_timer",)),),
    # A second stop keeps the first grace period; KILL is the way to hurry.
    (_S.STOPPING, _E.STOP): (("always", _S.STOPPING, ()),),
    (_S.STOPPING, _E.TIMER): (("always", _S.STOPPING, ("kill",)),),
    (_S.STOPPING, _E.EXIT): (("always", _S.STOPPED, ("exit",)),),
    (_S.STARTING, _E.KILL): _STOP_NOW[0],
    (_S.RUNNING, _E.KILL): _STOP_NOW[0],
    (_S.STOPPING, _E.KILL): _STOP_NOW[0],
    (_S.BACKOFF, _E.KILL): (("always", _S.STOPPED, ("clear_timer",)),),
    (_S.STOPPED, _E.STOP): (("always", _S.STOPPED, ()),),
    (_S.STOPPED, _E.KILL): (("always", _S.STOPPED, ()),),
    (_S.EXITED, _E.STOP): (("always", _S.EXITED, ()),),
    (_S.EXITED, _E.KILL): (("always", _S.EXITED, ()),),
    (_S.FAILED, _E.STOP): (("always", _S.FAILED, ()),),
    (_S.FAILED, _E.KILL): (("always", _S.FAILED, ()),),
}


class ProcessMachine:
    """The life of one supervised program, as a pure state machine.

    Feed it events with the current (monotonic) time; it returns a :class:`Step`
    whose actions the runtime must carry out, and sets :attr:`due`, the time at
    which it wants a ``TIMER`` event. ``rand`` returns floats in [0, 1) for the
    backoff jitter (inject a constant in tests).
    """

    def __init__(self, policy: RestartPolicy, *, rand: Callable[[], float] = random.random):
        self.policy = policy
        self._rand = rand
        self.state = State.STOPPED
        #: When the machine wants a TIMER event (monotonic seconds), or None.
        self.due: float | None = None
        #: How many times the program was spawned, and restarted (spawns - 1).
        self.spawns = 0
        self.restarts = 0
        #: Failed starts in a row (exits before start_seconds).
        self.failed_starts = 0
        #: Restarts in a row since the last stable run: the backoff exponent.
        self.level = 0
        #: The last exit status (negative: killed by that signal), None before any.
        self.exitcode: int | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def uptime(self, now: float) -> float:
        """Seconds the current run has lasted (or the last one, once it ended)."""
        if self.started_at is None:
            return 0.0
        end = now if self.ended_at is None else self.ended_at
        return max(0.0, end - self.started_at)

    def handle(
        self,
        event: Event,
        now: float,
        *,
        code: int | None = None,
        grace: float = 0.0,
    ) -> Step:
        """Apply ``event`` at time ``now``; ``code`` for EXIT, ``grace`` for STOP."""
        alternatives = TRANSITIONS.get((self.state, event))
        if alternatives is None:
            raise ValueError(f"no transition from {self.state.value!r} on {event.value!r}")
        if event is Event.EXIT and code is None:
            raise ValueError("an EXIT event needs the exit code")
        chosen = next((alt for alt in alternatives if _GUARDS[alt[0]](self, code)), None)
        if chosen is None:  # pragma: no cover - every row ends with an "always" alternative
            raise AssertionError(f"no guard matched for {self.state} on {event}")
        _, new, effects = chosen
        old = self.state
        actions: list[Action] = []
        retry_in: float | None = None
        reason: str | None = None
        for effect in effects:
            if effect == "reset_if_new":
                self.failed_starts = 0
                self.level = 0
            elif effect == "spawn":
                if self.spawns:
                    self.restarts += 1
                self.spawns += 1
                self.started_at, self.ended_at = now, None
                self.due = now + self.policy.start_seconds
                actions.append(Action.SPAWN)
            elif effect == "running":
                self.failed_starts = 0
                self.due = None
            elif effect == "exit":
                self.exitcode = code
                self.ended_at = now
                self.due = None
            elif effect == "failed_start":
                self.failed_starts += 1
            elif effect == "backoff":
                if self.uptime(now) >= self.policy.stable_seconds:
                    self.level = 0
                retry_in = self.policy.delay(self.level, self._rand())
                self.level += 1
                self.due = now + retry_in
            elif effect == "fail_policy":
                reason = f"not restarted (restart policy: {self.policy.restart})"
            elif effect == "fail_retries":
                reason = (
                    f"exited within {self.policy.start_seconds:g}s of starting "
                    f"{self.failed_starts} times in a row; giving up"
                )
            elif effect == "terminate":
                self.due = now + grace
                actions.append(Action.TERMINATE)
            elif effect == "kill":
                self.due = None
                actions.append(Action.KILL)
            elif effect == "clear_timer":
                self.due = None
            else:  # pragma: no cover - the table names only the effects above
                raise AssertionError(effect)
        self.state = new
        return Step(event, old, new, tuple(actions), retry_in, reason)


# =========================================================================== status records


@dataclass(frozen=True)
class ProcessStatus:
    """A snapshot of one supervised program, from :meth:`Supervisor.status`."""

    #: ``kind.index``, e.g. ``web.1``.
    name: str
    #: The process type (the Procfile name), e.g. ``web``.
    kind: str
    #: One of stopped, starting, running, backoff, stopping, exited, failed.
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

    @property
    def alive(self) -> bool:
        return self.pid is not None


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def exit_status(code: int) -> int:
    """The shell's exit status for a program's status: a signal N gives 128 + N."""
    return code if code >= 0 else 128 - code


def format_summary(statuses: Sequence[ProcessStatus]) -> str:
    """A plain-text table: each program, its state, restarts, last exit and uptime."""
    head = ("PROCESS", "STATE", "RESTARTS", "LAST EXIT", "UPTIME")
    rows = [head] + [
        (
            s.name,
            s.state,
            str(s.restarts),
            "-" if s.exitcode is None else describe_exit(s.exitcode),
            _format_duration(s.uptime),
        )
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
        for i, name in enumerate([*names, _SYSTEM]):
            label = name.ljust(width).encode() + b" | "
            if colour:
                code = "1" if name == _SYSTEM else _PALETTE[i % len(_PALETTE)]
                label = b"\x1b[" + code.encode() + b"m" + label[:-2] + _RESET + b"| "
            self._prefix[name] = label
        self._pending: list[bytes] = []
        self._stamp_second = -1
        self._stamp = b""
        self.broken = False

    def _time(self) -> bytes:
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%H:%M:%S ", time.localtime(now)).encode()
        return self._stamp

    def line(self, name: str, data: bytes) -> None:
        self._pending.append(self._time() + self._prefix[name] + data + b"\n")

    def note(self, text: str) -> None:
        self.line(_SYSTEM, text.encode("utf-8", "replace"))

    def flush(self) -> None:
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


# =========================================================================== the runtime


@dataclass(eq=False)
class _Stream:
    program: _Program
    label: str  # "out" | "err"
    file: IO[bytes]
    fd: int
    buf: bytearray = field(default_factory=bytearray)
    closed: bool = False


@dataclass(eq=False)
class _Program:
    instance: Instance
    machine: ProcessMachine
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    streams: list[_Stream] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def instance_pgid(self) -> int:
        assert self.popen is not None
        return self.popen.pid


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
        entries = os.scandir("/proc")
    except OSError:  # pragma: no cover - no procfs: trust kill(0)
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_installed = False


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
        cwd: directory the programs run in.
        strict: a Procfile line that foreman and honcho skip (no colon, a name
            such as ``web.v2``, an empty command, an indented entry) is an
            error; by default it is skipped with a warning in ``output``.
        output: where the prefixed lines go (default ``sys.stdout``).
        colour: colour the prefixes (default: only when ``output`` is a terminal).
        on_event: called on the loop thread with a dict for each spawn, exit,
            retry, failure, signal and stop (what ``polytask up --events`` logs).

    Raises:
        ProcfileError: the Procfile, env file, concurrency or names are invalid.
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
            env_port = self.env.get("PORT", "")
            port = int(env_port) if env_port.isdigit() else DEFAULT_BASE_PORT
        if isinstance(port, bool) or not isinstance(port, int):
            raise ProcfileError([("PORT", None, f"base port must be a whole number, not {port!r}")])
        counts = parse_concurrency(concurrency)
        self.instances = expand(self.procfile, counts, names, base_port=port)
        self.cwd = None if cwd is None else os.fspath(cwd)
        self._on_event = on_event
        self._output = _Output(output, [i.name for i in self.instances], colour)
        self._programs = [_Program(i, ProcessMachine(self.policy)) for i in self.instances]
        self._lock = threading.RLock()
        self._commands: queue.SimpleQueue[tuple[str, float, str, int | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = -1, -1
        self._selector: selectors.DefaultSelector | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._stopping = False
        self._killing = False
        self._error: BaseException | None = None
        self._returncode: int | None = None
        #: The exit status decided by the first decisive event (see ``returncode``).
        self._exit_status: int | None = None
        self._exit_reason = ""
        self._event_error_reported = False

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
            # The loop SIGKILLs at the end of the grace: the slack covers reaping.
            self._thread.join(grace + 30.0)
            if self._thread.is_alive():  # pragma: no cover - the loop never blocks that long
                raise PolytaskError(f"the supervisor did not stop within {grace + 30.0:g}s")
        self._raise_loop_error()
        return self.status()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every program has ended (exited, failed or stopped); True if so."""
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
                )
                for p in self._programs
            ]

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

    # ------------------------------------------------------------------ the loop thread

    def _run(self) -> None:
        assert self._selector is not None
        try:
            with self._lock:
                for source, line, why in self.procfile.skipped:
                    self._output.note(f"warning: {source}:{line}: {why}")
                now = time.monotonic()
                for prog in self._programs:
                    # A program that could not start may have stopped the run already
                    # (restart policy "never"): the rest are then not started.
                    if not self._stopping:
                        self._step(prog, Event.START, now)
            self._output.flush()
            self._started.set()
            while True:
                with self._lock:
                    self._take_commands()
                    now = time.monotonic()
                    for prog in self._programs:
                        due = prog.machine.due
                        if due is not None and due <= now:
                            self._step(prog, Event.TIMER, now)
                    for prog in self._lingering():
                        if not _group_alive(prog.instance_pgid):
                            self._finish(prog, now)
                    if all(p.machine.state in TERMINAL for p in self._programs):
                        break
                    dues = [p.machine.due for p in self._programs if p.machine.due is not None]
                    if self._lingering():
                        dues.append(now + _LINGER_POLL)
                    wait = max(0.0, min(dues) - now) if dues else None
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
        while True:
            try:
                what, grace, reason, status = self._commands.get_nowait()
            except queue.Empty:
                return
            if status is not None:
                self._decide(status, reason)
            if what == "kill":
                self._kill_all(reason)
            else:
                self._begin_stop(grace, reason)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _begin_stop(self, grace: float, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        alive = [p for p in self._programs if p.popen is not None]
        if alive:
            self._output.note(
                f"stopping ({reason}): SIGTERM to {len(alive)} program"
                f"{'s' if len(alive) > 1 else ''}, SIGKILL after {grace:g}s"
            )
        self._event("stop", reason=reason, grace=grace)
        now = time.monotonic()
        for prog in self._programs:
            self._step(prog, Event.STOP, now, grace=grace)

    def _kill_all(self, reason: str) -> None:
        self._stopping = True
        if self._killing:
            return
        self._killing = True
        self._output.note(f"killing every program now ({reason})")
        self._event("kill", reason=reason)
        now = time.monotonic()
        for prog in self._programs:
            self._step(prog, Event.KILL, now)

    def _step(
        self,
        prog: _Program,
        event: Event,
        now: float,
        *,
        code: int | None = None,
        grace: float = 0.0,
        pid: int | None = None,
    ) -> None:
        uptime = prog.machine.uptime(now)
        step = prog.machine.handle(event, now, code=code, grace=grace)
        if event is Event.EXIT:
            assert code is not None
            self._report_exit(prog, step, code, uptime, pid)
        elif step.new is State.RUNNING and step.old is not State.RUNNING:
            self._event("running", prog)
        for action in step.actions:
            if action is Action.SPAWN:
                self._spawn(prog, now)
            elif action is Action.TERMINATE:
                self._signal(prog, signal.SIGTERM)
            elif action is Action.KILL:
                self._hard_kill(prog)
        if step.new is State.FAILED and step.old is not State.FAILED:
            self._event("failed", prog, reason=step.reason or "")
        if step.new in (State.EXITED, State.FAILED) and step.old not in TERMINAL:
            assert code is not None
            self._ended(prog, step.new, code)

    def _ended(self, prog: _Program, state: State, code: int) -> None:
        """A program ended for good: apply the exit rules (docs/up.md, "Exit status")."""
        never = self.policy.restart == "never"
        if state is State.FAILED or never:
            # A program given up on never gives status 0, even if its last run did.
            status = exit_status(code) if code != 0 or state is State.EXITED else 1
            self._decide(status, f"{prog.name} {describe_exit(code)}")
        if self._stopping:
            return
        if never:
            # foreman's and honcho's rule: the first program to end ends the run.
            self._begin_stop(self.timeout, f"{prog.name} ended, restart policy never")
        elif state is State.FAILED and self.exit_on_failure:
            self._begin_stop(self.timeout, f"{prog.name} failed, exit on failure")

    def _decide(self, status: int, reason: str) -> None:
        """Record the run's exit status, unless an earlier event decided it."""
        if self._exit_status is None:
            self._exit_status, self._exit_reason = status, reason

    def _report_exit(
        self, prog: _Program, step: Step, code: int, uptime: float, pid: int | None
    ) -> None:
        who = prog.name if pid is None else f"{prog.name} (pid {pid})"
        text = f"{who} {describe_exit(code)} after {_format_duration(uptime)}"
        if step.new is State.BACKOFF:
            text += f"; restarting in {step.retry_in:.2f}s"
        elif step.new is State.FAILED:
            text += f"; failed: {step.reason}"
        elif step.new is State.EXITED:
            text += f"; not restarted (restart policy: {self.policy.restart})"
        self._output.note(text)
        self._event(
            "exit",
            prog,
            pid=pid,
            code=code,
            description=describe_exit(code),
            uptime=round(uptime, 3),
            state=step.new.value,
        )
        if step.new is State.BACKOFF:
            self._event(
                "retry",
                prog,
                delay=round(step.retry_in or 0.0, 3),
                attempt=prog.machine.spawns + 1,
            )

    def _spawn(self, prog: _Program, now: float) -> None:
        inst = prog.instance
        env = dict(self.env)
        env["PORT"] = str(inst.port)
        # foreman's PS and honcho's HONCHO_PROCESS_NAME, so that either tool's
        # Procfile finds the name it expects.
        env["PS"] = env["HONCHO_PROCESS_NAME"] = prog.name
        # Python programs would block-buffer a pipe and show their lines late.
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = (
            ["/bin/sh", "-c", inst.command] if isinstance(inst.command, str) else list(inst.command)
        )
        try:
            popen = _proc.start_in_group(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                close_fds=True,
            )
        except OSError as exc:
            self._output.note(f"{prog.name} could not start: {exc}")
            self._event("spawn_error", prog, error=str(exc))
            self._step(prog, Event.EXIT, now, code=127)
            return
        prog.popen = popen
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
            late = "" if self._killing else " did not stop in time:"
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
        if prog.machine.state is State.STOPPING and _group_alive(popen.pid):
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
        for stream in list(prog.streams):
            self._read(stream, drain=True)
        prog.popen = None
        self._step(prog, Event.EXIT, now, code=code, pid=popen.pid)

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
            buf += chunk
            start = 0
            name = stream.program.name
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                line = bytes(buf[start:end])
                if line.endswith(b"\r"):
                    line = line[:-1]
                self._output.line(name, line)
                start = end + 1
            del buf[:start]
            if len(buf) > _MAX_LINE:  # a line with no end in sight: cut it
                self._output.line(name, bytes(buf))
                buf.clear()
            if not drain:
                return

    def _close_stream(self, stream: _Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        if stream.buf:  # the last line had no newline
            self._output.line(stream.program.name, bytes(stream.buf))
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
            if self._error is not None:
                self._decide(1, f"internal error: {self._error!r}")
            self._returncode = self._exit_status or 0
            if self._selector is not None:
                self._selector.close()
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        if self._returncode:
            self._output.note(f"exit status {self._returncode} ({self._exit_reason})")
        self._event("done", returncode=self._returncode)
        self._output.flush()
        _live.discard(self)
        self._started.set()
        self._finished.set()
