"""Supervision, pure: when to start, stop, restart and give up on programs, and the run's exit status.

A sans-IO state machine in the style of h11 (and of ``_pool/schedule.py``):
no process, no clock, no thread, no I/O. The runtime (``_supervisor.py``)
feeds it what happened, with the time as an argument, and carries out the
actions it returns; ``tests/test_supervision.py`` drives it with scripted
event sequences, without processes::

    runtime                                   Supervision
    ───────                                   ───────────
    start_next(now)  ─── one program ──────>  START ─> Start(name)
    started(name, pid, now)                   (pid for the status view)
    exited(name, code, now) ───────────────>  EXIT ─> Exited(...), GiveUp(...),
                                              the foreman rule (restart never:
                                              the first exit stops all) ─> Stopping, Kill
    tick(now) ─── one due timer ───────────>  TIMER ─> Running / Start (backoff over) /
                                              Kill(name, "kill") (grace over)
    stop(reason, grace, now, status)  ─────>  STOP ─> Stopping, Kill(name, "term")
    kill(reason, now, status)  ────────────>  KILL ─> Killing, Kill(name, "kill")
    memory(name, rss, now)  ───────────────>  over max_memory: RESTART ─> OverMemory,
    alive(name, ok, now, error)  ──────────>  too many failed liveness checks: RESTART
                                              ─> NotAlive; either then Kill(name, "term"),
                                              and the exit goes through the restart policy
    stop_program / start_program /            one program on request (polytask ctl):
      restart_program(name, now)  ─────────>  STOP / START; a stopped one is held
                                              every program ended ─> Exit(code)

Two layers: :class:`ProcessMachine`, one per program, whose transitions are
the data table ``TRANSITIONS`` (restart policy, backoff, give-up after
``1 + start_retries`` failed starts); :class:`Supervision`, the whole run
(the exit-status rules of docs/up.md, "Exit status", and the stop rules).
"""

from __future__ import annotations

import enum
import numbers
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ._core.errors import describe_exit

__all__ = [
    "RESTART_MODES",
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "Condition",
    "Event",
    "Exit",
    "Exited",
    "GiveUp",
    "Kill",
    "Killing",
    "Liveness",
    "NotAlive",
    "NotReady",
    "OverMemory",
    "Probe",
    "ProcessMachine",
    "Ready",
    "RestartMode",
    "RestartPolicy",
    "Running",
    "Start",
    "State",
    "Step",
    "Stopping",
    "Supervision",
    "SupervisionAction",
    "Waiting",
    "exit_status",
]

RestartMode = Literal["on-failure", "always", "never"]
#: When a program that others depend on lets them start (docs/up.md).
Condition = Literal["started", "ready", "completed"]
RESTART_MODES: Final = ("on-failure", "always", "never")


# =========================================================================== one program


class State(enum.StrEnum):
    """Where one program is in its life (supervisor's names where they exist)."""

    STOPPED = "stopped"  # not started, or stopped on request
    STARTING = "starting"  # spawned, not yet up for start_seconds
    RUNNING = "running"  # up for at least start_seconds
    BACKOFF = "backoff"  # exited, waiting for its restart delay
    STOPPING = "stopping"  # SIGTERM sent, waiting for it to exit (SIGKILL at due)
    RESTARTING = "restarting"  # stopped for its health (memory, liveness), to start again
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
    ABANDON = "abandon"  # never started: what it depends on can no longer come
    RESTART = "restart"  # stop it (stop signal, ``grace``, SIGKILL), then restart by policy


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
        for name in ("start_seconds", "backoff", "backoff_max", "stable_seconds", "jitter"):
            value = getattr(self, name)
            # Any real number, as for every timeout (a Fraction, a numpy scalar);
            # stored as a float so the delay arithmetic has one type.
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:  # type: ignore[operator]
                what = "a fraction" if name == "jitter" else "a number of seconds"
                raise ValueError(f"{name} must be {what} >= 0, got {value!r}")
            try:
                seconds = float(value)
            except OverflowError:  # an int past a float's range: as long as inf
                seconds = float("inf")
            object.__setattr__(self, name, seconds)
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


def _g_never(m: ProcessMachine, code: int | None) -> bool:
    return m.policy.restart == "never"


def _g_early(m: ProcessMachine, code: int | None) -> bool:
    return m.restart_early


def _g_early_exhausted(m: ProcessMachine, code: int | None) -> bool:
    return m.restart_early and _g_exhausted(m, code)


_GUARDS: Final[dict[str, Callable[[ProcessMachine, int | None], bool]]] = {
    "always": _g_always,
    "clean_done": _g_clean_done,
    "failed_done": _g_failed_done,
    "retries_exhausted": _g_exhausted,
    "never": _g_never,
    "restart_early": _g_early,
    "restart_early_exhausted": _g_early_exhausted,
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
    # Asked to start while backing off (start_program): the restart comes now.
    (_S.BACKOFF, _E.START): (("always", _S.STARTING, ("spawn",)),),
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
    (_S.STOPPED, _E.ABANDON): (("always", _S.FAILED, ("fail_dependency",)),),
    # A restart for the program's health: the exit it causes is a failure (even an
    # exit 0 on SIGTERM), so the restart policy, the backoff and the failed-start
    # count apply as to a crash; under "never" it ends the program (and the run).
    (_S.STARTING, _E.RESTART): (("always", _S.RESTARTING, ("restart", "terminate")),),
    (_S.RUNNING, _E.RESTART): (("always", _S.RESTARTING, ("restart", "terminate")),),
    (_S.RESTARTING, _E.RESTART): (("always", _S.RESTARTING, ()),),
    (_S.RESTARTING, _E.TIMER): (("always", _S.RESTARTING, ("kill",)),),
    (_S.RESTARTING, _E.EXIT): (
        ("never", _S.FAILED, ("exit", "fail_policy")),
        ("restart_early_exhausted", _S.FAILED, ("exit", "failed_start", "fail_retries")),
        ("restart_early", _S.BACKOFF, ("exit", "failed_start", "backoff")),
        ("always", _S.BACKOFF, ("exit", "backoff")),
    ),
    # Stopping the run keeps the restart's grace (as a second stop does).
    (_S.RESTARTING, _E.STOP): (("always", _S.STOPPING, ()),),
    (_S.RESTARTING, _E.KILL): _STOP_NOW[0],
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
        #: The running process (reported by the runtime), None when there is none.
        self.pid: int | None = None
        #: The current restart (RESTARTING) began before start_seconds: a failed start.
        self.restart_early = False

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
        why: str | None = None,
    ) -> Step:
        """Apply ``event`` at time ``now``; ``code`` for EXIT, ``grace`` for STOP and
        RESTART, ``why`` for ABANDON."""
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
            elif effect == "fail_dependency":
                reason = why or "a dependency failed"
            elif effect == "terminate":
                self.due = now + grace
                actions.append(Action.TERMINATE)
            elif effect == "kill":
                self.due = None
                actions.append(Action.KILL)
            elif effect == "clear_timer":
                self.due = None
            elif effect == "restart":
                self.restart_early = self.state is State.STARTING
            else:  # pragma: no cover - the table names only the effects above
                raise AssertionError(effect)
        self.state = new
        return Step(event, old, new, tuple(actions), retry_in, reason)


def exit_status(code: int) -> int:
    """The shell's exit status for a program's status: a signal N gives 128 + N."""
    return code if code >= 0 else 128 - code


# =========================================================================== the whole run

KillPolicy = Literal["term", "kill"]


@dataclass(frozen=True)
class Start:
    """Start program ``name`` (then report :meth:`Supervision.started`, or its failure
    as :meth:`Supervision.exited`)."""

    name: str


@dataclass(frozen=True)
class Kill:
    """End program ``name``: ``"term"`` sends SIGTERM to its group (the machine
    asks for ``"kill"`` when the grace is over); ``"kill"`` SIGKILLs and reaps it now."""

    name: str
    policy: KillPolicy


@dataclass(frozen=True)
class Running:
    """Program ``name`` has been up for ``start_seconds``: its start counts."""

    name: str


@dataclass(frozen=True)
class Exited:
    """A run of program ``name`` ended; ``state`` says what comes next.

    ``retry_in`` (seconds) and ``attempt`` (the coming start's number) when it
    is backing off; ``reason`` when it was given up on.
    """

    name: str
    pid: int | None
    code: int
    uptime: float
    state: State
    retry_in: float | None
    attempt: int
    reason: str | None


@dataclass(frozen=True)
class GiveUp:
    """Program ``name`` is marked failed (its last status ``code``) and not restarted."""

    name: str
    code: int
    reason: str


@dataclass(frozen=True)
class Stopping:
    """The run began stopping: every program gets SIGTERM, then SIGKILL after ``grace``.

    ``alive``: how many programs have a process.
    """

    reason: str
    grace: float
    alive: int


@dataclass(frozen=True)
class Killing:
    """The run is killing every program now (no grace)."""

    reason: str


@dataclass(frozen=True)
class Exit:
    """Every program ended: the run is over, with status ``code``."""

    code: int
    reason: str


@dataclass(frozen=True)
class Waiting:
    """Program ``name`` is not started yet: it waits for ``pending`` ("web.1 (ready)", ...)."""

    name: str
    pending: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """Start checking whether program ``name`` is ready (report :meth:`Supervision.ready`);
    it must be within ``timeout`` seconds. Stop checking once it exits or is ready."""

    name: str
    timeout: float


@dataclass(frozen=True)
class Ready:
    """Program ``name`` is ready (its probe succeeded)."""

    name: str


@dataclass(frozen=True)
class NotReady:
    """Program ``name`` was not ready within ``timeout`` seconds: the run fails."""

    name: str
    timeout: float


@dataclass(frozen=True)
class Liveness:
    """Start checking that program ``name`` stays alive (report each check's outcome
    to :meth:`Supervision.alive`); stop once it exits or is being restarted."""

    name: str


@dataclass(frozen=True)
class OverMemory:
    """Program ``name`` uses ``rss`` bytes, over its ``limit``: it is being stopped
    (a :class:`Kill` follows), and then restarted if ``restart`` (the policy allows it)."""

    name: str
    rss: int
    limit: int
    restart: bool


@dataclass(frozen=True)
class NotAlive:
    """Program ``name`` failed ``failures`` liveness checks in a row (``last``: why the
    last one failed): stopped and restarted as for :class:`OverMemory`."""

    name: str
    failures: int
    last: str
    restart: bool


SupervisionAction = (
    Start
    | Kill
    | Running
    | Exited
    | GiveUp
    | Stopping
    | Killing
    | Exit
    | Waiting
    | Probe
    | Ready
    | NotReady
    | Liveness
    | OverMemory
    | NotAlive
)

#: The exit status of a run that failed because a program was not ready in time.
NOT_READY_STATUS: Final = 1


class Supervision:
    """Every program of one run, and the rules that tie them together.

    The runtime calls the methods below when something happens and carries
    out the returned actions in order. The inputs that can start programs
    (:meth:`start_next`, :meth:`tick`) decide for one program per call, so
    that the outcome of one (a start that failed may stop the run) is known
    before the next is decided: call them again until they return nothing.

    Args:
        names: the programs, in Procfile order.
        policy: the restart policy they share.
        grace: seconds between SIGTERM and SIGKILL when the run stops itself.
        exit_on_failure: a program given up on stops the others.
        rand: floats in [0, 1) for the backoff jitter.
        depends_on: per program, the programs it waits for and the condition
            each must meet before it starts ("started", "ready", "completed"
            = exited 0). Must have no cycle (``_upconfig`` checks it).
        ready_timeouts: the programs that have a readiness probe, and the
            seconds each has, from its start, to be reported :meth:`ready`.
        graces: per-program seconds between the stop signal and SIGKILL
            (default: the stop's grace).
        max_memory: per program, the bytes of RSS above which :meth:`memory`
            restarts it.
        liveness: the programs that have a liveness check, and how many failed
            checks in a row (:meth:`alive`) restart each. Checks begin once the
            program is ready (at its start when it has no readiness probe).
    """

    def __init__(
        self,
        names: Iterable[str],
        policy: RestartPolicy,
        *,
        grace: float,
        exit_on_failure: bool = True,
        rand: Callable[[], float] = random.random,
        depends_on: Mapping[str, Mapping[str, Condition]] | None = None,
        ready_timeouts: Mapping[str, float] | None = None,
        graces: Mapping[str, float] | None = None,
        max_memory: Mapping[str, int] | None = None,
        liveness: Mapping[str, int] | None = None,
    ) -> None:
        self.policy = policy
        self.grace = grace
        self.exit_on_failure = exit_on_failure
        #: One machine per program, in order (the status view reads them).
        self.machines: dict[str, ProcessMachine] = {
            name: ProcessMachine(policy, rand=rand) for name in names
        }
        #: The run is stopping (stop or kill asked, or a rule stopped it).
        self.stopping = False
        #: The run is killing (no grace left).
        self.killing = False
        #: The exit status decided by the first decisive event, and why.
        self.status: int | None = None
        self.reason = ""
        self._unstarted = list(self.machines)
        self._over = False
        self.depends_on: dict[str, dict[str, Condition]] = {
            name: dict(deps) for name, deps in (depends_on or {}).items() if deps
        }
        self.ready_timeouts = dict(ready_timeouts or {})
        self.graces = dict(graces or {})
        self.max_memory = dict(max_memory or {})
        self.liveness = dict(liveness or {})
        for table in (
            self.depends_on,
            self.ready_timeouts,
            self.graces,
            self.max_memory,
            self.liveness,
        ):
            for name in table:
                if name not in self.machines:
                    raise ValueError(f"unknown program {name!r}")
        for deps in self.depends_on.values():
            for dep in deps:
                if dep not in self.machines:
                    raise ValueError(f"unknown dependency {dep!r}")
        self._check_acyclic()
        #: Programs that others wait on with "completed": their exit 0 does not
        #: end a run under restart "never" (a migration next to a server).
        self._one_shots = {
            dep
            for deps in self.depends_on.values()
            for dep, cond in deps.items()
            if cond == "completed"
        }
        self._ever_started: set[str] = set()
        self._completed: set[str] = set()
        #: Ready since its current start; ever ready (what dependents need).
        self.ready_now: set[str] = set()
        self._been_ready: set[str] = set()
        #: Readiness deadlines of the programs being probed.
        self._ready_due: dict[str, float] = {}
        self._announced: set[str] = set()
        self._stop_grace = grace
        self._stop_sent: set[str] = set()
        #: Seconds from its last start until it was ready, per program ready in that run.
        self.ready_in: dict[str, float] = {}
        #: Failed liveness checks in a row, per program being checked.
        self._dead_checks: dict[str, int] = {}
        #: Programs stopped on request (:meth:`stop_program`): not restarted nor
        #: started by start_next until :meth:`start_program`; they keep the run going.
        self.held: set[str] = set()
        #: Programs being stopped by :meth:`restart_program`: started again on exit.
        self.restarting: set[str] = set()

    def _check_acyclic(self) -> None:
        """A cycle would never start, and never stop in order: refuse it."""
        done: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                cycle = " -> ".join((*path[path.index(name) :], name))
                raise ValueError(f"dependency cycle: {cycle}")
            if name in done:
                return
            for dep in self.depends_on.get(name, {}):
                visit(dep, (*path, name))
            done.add(name)

        for name in self.machines:
            visit(name, ())

    # ------------------------------------------------------------------ what the runtime reads

    @property
    def names(self) -> Sequence[str]:
        return list(self.machines)

    @property
    def done(self) -> bool:
        """Every program ended (exited, failed or stopped), and none waits to start."""
        if (self._unstarted or self.held or self.restarting) and not self.stopping:
            return False
        return all(m.state in TERMINAL for m in self.machines.values())

    @property
    def due(self) -> float | None:
        """When :meth:`tick` is next needed (monotonic seconds), or None."""
        dues = [m.due for m in self.machines.values() if m.due is not None]
        if not self.stopping:
            dues += self._ready_due.values()
        return min(dues) if dues else None

    @property
    def returncode(self) -> int:
        """The run's exit status so far: the decided one, else 0."""
        return self.status or 0

    # ------------------------------------------------------------------ inputs

    def start_next(self, now: float) -> list[SupervisionAction]:
        """Start the next program not started yet whose dependencies are met ([] once
        none can start now); a program found waiting is announced once (:class:`Waiting`).

        Call it again after :meth:`started`, :meth:`ready` and :meth:`exited`: they
        may let a waiting program start.
        """
        out: list[SupervisionAction] = []
        for name in list(self._unstarted):
            # A program that could not start may have stopped the run already
            # (restart policy "never"): the rest are then not started.
            if self.stopping:
                self._unstarted.remove(name)
                continue
            if name in self.held:
                continue
            pending = self.pending(name)
            if not pending:
                self._unstarted.remove(name)
                return out + self._step(name, Event.START, now)
            if name not in self._announced:
                self._announced.add(name)
                out.append(Waiting(name, tuple(f"{d} ({c})" for d, c in pending)))
        return out

    def pending(self, name: str) -> list[tuple[str, Condition]]:
        """The dependencies of ``name`` that do not meet their condition yet."""
        return [
            (dep, cond)
            for dep, cond in self.depends_on.get(name, {}).items()
            if not self._met(dep, cond)
        ]

    def started(self, name: str, pid: int, now: float) -> None:
        """Program ``name``'s process started as ``pid`` (the status view shows it)."""
        self.machines[name].pid = pid
        self._ever_started.add(name)

    def ready(self, name: str, now: float) -> list[SupervisionAction]:
        """Program ``name``'s readiness probe succeeded ([] if it is not being probed:
        a late answer about a run that already ended)."""
        if self._ready_due.pop(name, None) is None:
            return []
        self.ready_now.add(name)
        self._been_ready.add(name)
        self.ready_in[name] = self.machines[name].uptime(now)
        return [Ready(name), *self._watch(name)]

    def exited(
        self, name: str, code: int, now: float, *, pid: int | None = None
    ) -> list[SupervisionAction]:
        """A run of ``name`` ended with status ``code`` (negative: that signal; 127:
        it could not start); ``pid`` is reported with it."""
        self.machines[name].pid = None
        self._ready_due.pop(name, None)
        self.ready_now.discard(name)
        self._dead_checks.pop(name, None)
        if code == 0:
            self._completed.add(name)
        out = self._step(name, Event.EXIT, now, code=code, pid=pid)
        if name in self.restarting and not self.stopping:
            self.restarting.discard(name)
            out += self._step(name, Event.START, now)
        out += self._abandon_hopeless(now)
        if self.stopping and not self.killing:
            out += self._advance_stop(now)
        return out

    def tick(self, now: float) -> list[SupervisionAction]:
        """The first program whose timer is due at ``now`` ([] when none is)."""
        if not self.stopping:
            for name, due in self._ready_due.items():
                if due <= now:
                    return self._not_ready(name, now)
        for name, m in self.machines.items():
            if m.due is not None and m.due <= now:
                return self._step(name, Event.TIMER, now)
        return []

    def stop(
        self, reason: str, grace: float, now: float, *, status: int | None = None
    ) -> list[SupervisionAction]:
        """Stop every program: SIGTERM, SIGKILL after ``grace``. ``status`` (a signal's
        128 + N) becomes the run's exit status unless an earlier event decided it."""
        if status is not None:
            self._decide(status, reason)
        return self._begin_stop(grace, reason, now)

    def kill(
        self, reason: str, now: float, *, status: int | None = None
    ) -> list[SupervisionAction]:
        """Kill every program now (a second Ctrl-C); ``status`` as for :meth:`stop`."""
        if status is not None:
            self._decide(status, reason)
        self.stopping = True
        if self.killing:
            return []
        self.killing = True
        out: list[SupervisionAction] = [Killing(reason)]
        for name in self.machines:
            out += self._step(name, Event.KILL, now)
        return out

    def stop_program(self, name: str, now: float) -> list[SupervisionAction]:
        """Stop one program on request (its stop signal, SIGKILL after its grace); it
        stays stopped (no restart, whatever the policy) until :meth:`start_program`.

        Its exit decides nothing, under ``never`` too: a program stopped on request
        did not end by itself, and the run goes on (a held program keeps it going).
        [] once the run is stopping (every program is being stopped anyway).
        """
        if self.stopping:
            return []
        self.held.add(name)
        self.restarting.discard(name)
        self._ready_due.pop(name, None)
        return self._step(name, Event.STOP, now, grace=self.graces.get(name, self.grace))

    def start_program(self, name: str, now: float) -> list[SupervisionAction]:
        """Start one program on request: a stopped, exited or failed one starts now
        (its failed-start count reset), one backing off restarts now, one being
        stopped starts again once it ended, one waiting for its dependencies starts
        when they are met; a running one is left alone. [] once the run is stopping.
        """
        if self.stopping:
            return []
        self.held.discard(name)
        state = self.machines[name].state
        if name in self._unstarted or state in (State.STARTING, State.RUNNING):
            return []
        if state in (State.STOPPING, State.RESTARTING):
            # Being stopped (on request, or for its health): started once it ended.
            self.restarting.add(name)
            return []
        return self._step(name, Event.START, now)

    def restart_program(self, name: str, now: float) -> list[SupervisionAction]:
        """Stop one program (as :meth:`stop_program`) and start it again once it ended;
        one that is not running starts now (as :meth:`start_program`)."""
        if self.stopping:
            return []
        state = self.machines[name].state
        if state in (State.STARTING, State.RUNNING) and name not in self._unstarted:
            self.held.discard(name)
            self.restarting.add(name)
            self._ready_due.pop(name, None)
            return self._step(name, Event.STOP, now, grace=self.graces.get(name, self.grace))
        return self.start_program(name, now)

    def fail(self, reason: str) -> None:
        """The runtime itself failed: the run exits 1 unless an earlier event decided."""
        self._decide(1, reason)

    def memory(self, name: str, rss: int, now: float) -> list[SupervisionAction]:
        """Program ``name``'s process tree uses ``rss`` bytes: over its ``max_memory``
        it is restarted (:class:`OverMemory`, then :class:`Kill`); else nothing."""
        limit = self.max_memory.get(name)
        if limit is None or rss <= limit or not self._restartable(name):
            return []
        out: list[SupervisionAction] = [
            OverMemory(name, rss, limit, self.policy.restart != "never")
        ]
        return out + self.restart(name, now)

    def alive(self, name: str, ok: bool, now: float, error: str = "") -> list[SupervisionAction]:
        """One liveness check of ``name`` ended (``error``: why it failed); the
        ``liveness`` count of failures in a row restarts it (:class:`NotAlive`).
        [] for a check of a run that is no longer watched (a late answer)."""
        if name not in self._dead_checks or not self._restartable(name):
            return []
        if ok:
            self._dead_checks[name] = 0
            return []
        failures = self._dead_checks[name] = self._dead_checks[name] + 1
        if failures < self.liveness[name]:
            return []
        out: list[SupervisionAction] = [
            NotAlive(name, failures, error, self.policy.restart != "never")
        ]
        return out + self.restart(name, now)

    def restart(self, name: str, now: float) -> list[SupervisionAction]:
        """Stop program ``name`` (its stop signal, its grace, then SIGKILL) so that it
        starts again as the restart policy says: its exit counts as a failure.
        [] unless it is starting or running and the run is not stopping."""
        if not self._restartable(name):
            return []
        self._ready_due.pop(name, None)
        self.ready_now.discard(name)
        self._dead_checks.pop(name, None)
        grace = self.graces.get(name, self.grace)
        return self._step(name, Event.RESTART, now, grace=grace)

    def _restartable(self, name: str) -> bool:
        state = self.machines[name].state
        return not self.stopping and state in (State.STARTING, State.RUNNING)

    def _watch(self, name: str) -> list[SupervisionAction]:
        """Begin the liveness checks of ``name`` (if it has them)."""
        if name not in self.liveness or self.stopping:
            return []
        self._dead_checks[name] = 0
        return [Liveness(name)]

    # ------------------------------------------------------------------ rules

    def _decide(self, status: int, reason: str) -> None:
        if self.status is None:
            self.status, self.reason = status, reason

    def _begin_stop(self, grace: float, reason: str, now: float) -> list[SupervisionAction]:
        if self.stopping:
            return []
        self.stopping = True
        alive = sum(1 for m in self.machines.values() if m.pid is not None)
        self._stop_grace = grace
        self._ready_due.clear()
        out: list[SupervisionAction] = [Stopping(reason, grace, alive)]
        return out + self._advance_stop(now)

    def _advance_stop(self, now: float) -> list[SupervisionAction]:
        """Stop every program that no running program depends on: dependents first,
        then what they depend on once they ended (each with its own grace)."""
        out: list[SupervisionAction] = []
        progressed = True
        while progressed:
            progressed = False
            for name in self.machines:
                if name in self._stop_sent or any(
                    name in deps and self.machines[d].state not in TERMINAL
                    for d, deps in self.depends_on.items()
                ):
                    continue
                self._stop_sent.add(name)
                progressed = True
                grace = self.graces.get(name, self._stop_grace)
                out += self._step(name, Event.STOP, now, grace=grace)
        return out

    def _met(self, dep: str, cond: Condition) -> bool:
        if cond == "started":
            return dep in self._ever_started
        if cond == "ready":
            return dep in self._been_ready
        return dep in self._completed

    def _hopeless(self, dep: str, cond: Condition) -> bool:
        """``dep`` can no longer meet ``cond``: it ended for good without meeting it."""
        if dep in self._unstarted or dep in self.held or dep in self.restarting:
            return False  # it may still come (a held program may be started again)
        if self._met(dep, cond):
            return False
        return self.machines[dep].state in TERMINAL

    def _abandon_hopeless(self, now: float) -> list[SupervisionAction]:
        """Give up on each waiting program whose dependency can no longer come (in a
        chain: what waited on it is given up on too), so that nothing waits forever."""
        out: list[SupervisionAction] = []
        progressed = True
        while progressed and not self.stopping:
            progressed = False
            for name in list(self._unstarted):
                lost = [
                    (d, c) for d, c in self.depends_on.get(name, {}).items() if self._hopeless(d, c)
                ]
                if not lost:
                    continue
                dep, cond = lost[0]
                dm = self.machines[dep]
                code = dm.exitcode if dm.exitcode not in (None, 0) else 1
                assert code is not None
                why = f"not started: {dep} {self._never(dep, cond)}"
                self._unstarted.remove(name)
                self.held.discard(name)
                step = self.machines[name].handle(Event.ABANDON, now, why=why)
                out.append(GiveUp(name, code, step.reason or why))
                out += self._ended(name, State.FAILED, code, now)
                progressed = True
        if not self._over and self.done:
            self._over = True
            out.append(Exit(self.returncode, self.reason))
        return out

    def _never(self, dep: str, cond: Condition) -> str:
        m = self.machines[dep]
        ended = "was never started" if m.exitcode is None else describe_exit(m.exitcode)
        want = {"started": "start", "ready": "become ready", "completed": "exit with code 0"}
        return f"{ended} and will not {want[cond]} (it is {m.state.value})"

    def _not_ready(self, name: str, now: float) -> list[SupervisionAction]:
        """``name`` missed its readiness deadline: the run fails and stops."""
        timeout = self.ready_timeouts[name]
        del self._ready_due[name]
        waiting = [w for w in self._unstarted if name in self.depends_on.get(w, {})]
        reason = f"{name} not ready within {timeout:g}s"
        if waiting:
            reason += f" ({', '.join(waiting)} waited for it)"
        self._decide(NOT_READY_STATUS, reason)
        return [NotReady(name, timeout), *self._begin_stop(self.grace, reason, now)]

    def _step(
        self,
        name: str,
        event: Event,
        now: float,
        *,
        code: int | None = None,
        grace: float = 0.0,
        pid: int | None = None,
    ) -> list[SupervisionAction]:
        m = self.machines[name]
        uptime = m.uptime(now)
        step = m.handle(event, now, code=code, grace=grace)
        out: list[SupervisionAction] = []
        if event is Event.EXIT:
            assert code is not None
            out.append(
                Exited(name, pid, code, uptime, step.new, step.retry_in, m.spawns + 1, step.reason)
            )
        elif step.new is State.RUNNING and step.old is not State.RUNNING:
            out.append(Running(name))
        for action in step.actions:
            if action is Action.SPAWN:
                out.append(Start(name))
                self.ready_in.pop(name, None)
                if name in self.ready_timeouts:
                    self._ready_due[name] = now + self.ready_timeouts[name]
                    out.append(Probe(name, self.ready_timeouts[name]))
                else:  # no readiness to wait for: watch it from its start
                    out += self._watch(name)
            else:
                out.append(Kill(name, "term" if action is Action.TERMINATE else "kill"))
        if step.new is State.FAILED and step.old is not State.FAILED:
            assert code is not None
            out.append(GiveUp(name, code, step.reason or ""))
        if step.new in (State.EXITED, State.FAILED) and step.old not in TERMINAL:
            assert code is not None
            out += self._ended(name, step.new, code, now)
        if not self._over and self.done:
            self._over = True
            out.append(Exit(self.returncode, self.reason))
        return out

    def _ended(self, name: str, state: State, code: int, now: float) -> list[SupervisionAction]:
        """A program ended for good: the exit rules of docs/up.md, "Exit status"."""
        # A one-shot others wait on ("completed") that did its job does not end
        # a run under "never": it is meant to end.
        never = self.policy.restart == "never" and not (
            state is State.EXITED and code == 0 and name in self._one_shots
        )
        if state is State.FAILED or never:
            # A program given up on never gives status 0, even if its last run did.
            status = exit_status(code) if code != 0 or state is State.EXITED else 1
            self._decide(status, f"{name} {describe_exit(code)}")
        if self.stopping:
            return []
        if never:
            # foreman's and honcho's rule: the first program to end ends the run.
            return self._begin_stop(self.grace, f"{name} ended, restart policy never", now)
        if state is State.FAILED and self.exit_on_failure:
            return self._begin_stop(self.grace, f"{name} failed, exit on failure", now)
        return []
