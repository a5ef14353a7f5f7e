"""``polytask.toml``: dependencies, probes, limits, logs and stop settings per process type.

Pure: the TOML text (or the parsed table) in, a validated :class:`UpConfig`
or every problem out, as ``(source, line, message)`` for one
:class:`~polytask.ProcfileError`. No file is read here (``_supervisor.py`` and
the CLI find and read the files), so every rule is tested on strings.

The table is ``polytask.toml`` beside the Procfile, or ``[tool.polytask.up]``
in ``pyproject.toml``; one sub-table per Procfile process type::

    [web]
    ready = {http = "http://127.0.0.1:$PORT/"}
    ready_timeout = 20
    depends_on = {migrate = "completed"}

    [worker]
    depends_on = {web = "ready"}
    stop_signal = "SIGINT"
    stop_timeout = 10
    max_memory = "200M"
    liveness = {cmd = "test -f alive", period = 5, timeout = 2, failures = 3}
    log_file = "logs/worker.log"
    log_max_size = "10M"
    log_backups = 3
"""

from __future__ import annotations

import os
import re
import signal
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._core.errors import ProcfileError

__all__ = [
    "CONDITIONS",
    "LIVENESS_KINDS",
    "PROBE_KINDS",
    "Condition",
    "Liveness",
    "Probe",
    "ProcessConfig",
    "UpConfig",
    "dependency_depth",
    "dependency_order",
    "format_size",
    "missing_dependencies",
    "parse_size",
    "parse_upconfig",
    "scan_upconfig",
    "scan_upconfig_text",
]

Condition = Literal["started", "ready", "completed"]
CONDITIONS: Final = ("started", "ready", "completed")
ProbeKind = Literal["cmd", "tcp", "http", "log"]
PROBE_KINDS: Final = ("cmd", "tcp", "http", "log")
DEFAULT_READY_TIMEOUT: Final = 30.0
#: The file name looked for beside the Procfile, and pyproject.toml's table.
CONFIG_FILE: Final = "polytask.toml"
PYPROJECT_TABLE: Final = ("tool", "polytask", "up")

#: A liveness check is a readiness probe run forever: a log line cannot say "still alive".
LIVENESS_KINDS: Final = ("cmd", "tcp", "http")
DEFAULT_LIVENESS_PERIOD: Final = 10.0
DEFAULT_LIVENESS_TIMEOUT: Final = 2.0
DEFAULT_LIVENESS_FAILURES: Final = 3
DEFAULT_LOG_BACKUPS: Final = 3

_KEYS: Final = (
    "depends_on",
    "ready",
    "ready_timeout",
    "stop_signal",
    "stop_timeout",
    "max_memory",
    "liveness",
    "log_file",
    "log_max_size",
    "log_backups",
)
_LIVENESS_KEYS: Final = ("period", "timeout", "failures")

Problem = tuple[str, int | None, str]


@dataclass(frozen=True)
class Probe:
    """How to tell that a program is ready; ``$PORT`` in ``target`` is its PORT.

    ``cmd``: a shell command exiting 0; ``tcp``: ``host:port`` accepting a
    connection; ``http``: a GET answering 2xx; ``log``: a regex matching one of
    its output lines.
    """

    kind: ProbeKind
    target: str

    def resolve(self, port: int) -> str:
        """The target with ``$PORT`` / ``${PORT}`` replaced by ``port``."""
        return self.target.replace("${PORT}", str(port)).replace("$PORT", str(port))

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


@dataclass(frozen=True)
class Liveness:
    """A check run every ``period`` seconds once the program is ready (each attempt
    bounded by ``timeout``); ``failures`` failed attempts in a row restart it."""

    probe: Probe
    period: float = DEFAULT_LIVENESS_PERIOD
    timeout: float = DEFAULT_LIVENESS_TIMEOUT
    failures: int = DEFAULT_LIVENESS_FAILURES


@dataclass(frozen=True)
class ProcessConfig:
    """The settings of one process type (every copy shares them)."""

    depends_on: Mapping[str, Condition] = field(default_factory=dict)
    ready: Probe | None = None
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stop_signal: signal.Signals | None = None
    stop_timeout: float | None = None
    #: Bytes of RSS (the program's whole process tree) above which it is restarted.
    max_memory: int | None = None
    liveness: Liveness | None = None
    #: Where its output lines are also written (relative: to where the programs run).
    log_file: str | None = None
    #: Bytes after which the log file is rotated (None: it grows without limit).
    log_max_size: int | None = None
    #: Rotated files kept (``web.log.1`` newest ... ``web.log.N``); 0: emptied when full.
    log_backups: int = DEFAULT_LOG_BACKUPS


@dataclass(frozen=True)
class UpConfig:
    """The settings of every process type named in the file (others: defaults)."""

    processes: Mapping[str, ProcessConfig] = field(default_factory=dict)
    source: str = CONFIG_FILE

    def get(self, name: str) -> ProcessConfig:
        return self.processes.get(name) or ProcessConfig()

    def __bool__(self) -> bool:
        return bool(self.processes)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value < float("inf"):
        return None
    return float(value)


#: Size units, binary as in docker (``200m``) and supervisor (``50MB``): 1K = 1024 bytes.
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_HELP: Final = "a size such as '200M', '1.5G', '512K' or a whole number of bytes"


def parse_size(value: object) -> int | None:
    """Bytes from a size: a whole number of bytes, or a string ``NUMBER[UNIT]`` with
    UNIT one of B, K, M, G, T (binary: 1K = 1024; ``KB``, ``KiB``, any case, are the
    same), e.g. ``"200M"``, ``"1.5G"``. None if it is not a size or not > 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        return None
    size = int(float(match[1]) * _UNITS[match[2].lower()])
    return size if size > 0 else None


def format_size(size: int) -> str:
    """``size`` bytes for people: ``"312 MiB"``, ``"1.5 GiB"``, ``"900 B"``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{size} B"


def _probe(
    name: str,
    value: object,
    problem: Any,
    *,
    key: str = "ready",
    kinds_allowed: Sequence[str] = PROBE_KINDS,
    extra: Sequence[str] = (),
) -> Probe | None:
    """One probe table (``ready``, or ``liveness`` with its ``extra`` keys)."""
    allowed = ", ".join(kinds_allowed)
    if not isinstance(value, Mapping):
        problem(f"[{name}] {key} must be a table with one of {allowed}")
        return None
    if key == "liveness" and "log" in value:
        problem(
            f"[{name}] liveness cannot be a log probe (a line printed once says nothing "
            f"about later): use one of {allowed}"
        )
        return None
    kinds = [k for k in value if k in kinds_allowed]
    unknown = [k for k in value if k not in kinds_allowed and k not in extra]
    if unknown:
        also = f"; and {', '.join(extra)}" if extra else ""
        problem(f"[{name}] {key}: unknown key {unknown[0]!r} (use one of {allowed}{also})")
        return None
    if len(kinds) != 1:
        problem(f"[{name}] {key} must have exactly one of {allowed}, got {len(kinds)}")
        return None
    kind: ProbeKind = kinds[0]
    raw = value[kind]
    if kind == "tcp":
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 1 <= raw <= 65535:
                problem(f"[{name}] {key}.tcp: {raw} is not a port number (1-65535)")
                return None
            return Probe("tcp", f"127.0.0.1:{raw}")
        if isinstance(raw, str) and raw in ("$PORT", "${PORT}"):
            return Probe("tcp", f"127.0.0.1:{raw}")
        if isinstance(raw, str):
            host, colon, port = raw.rpartition(":")
            if colon and host and (port.isdigit() or port in ("$PORT", "${PORT}")):
                return Probe("tcp", raw)
        problem(f"[{name}] {key}.tcp must be a port (8000) or 'host:port', got {raw!r}")
        return None
    if not isinstance(raw, str) or not raw.strip():
        problem(f"[{name}] {key}.{kind} must be a non-empty string, got {raw!r}")
        return None
    if kind == "http" and not re.match(r"https?://", raw):
        problem(f"[{name}] {key}.http must be an http:// or https:// URL, got {raw!r}")
        return None
    if kind == "log":
        try:
            re.compile(raw)
        except re.error as exc:
            problem(f"[{name}] {key}.log is not a valid regular expression: {exc}")
            return None
    return Probe(kind, raw)


def _liveness(name: str, value: object, problem: Any) -> Liveness | None:
    probe = _probe(
        name, value, problem, key="liveness", kinds_allowed=LIVENESS_KINDS, extra=_LIVENESS_KEYS
    )
    if probe is None:
        return None
    assert isinstance(value, Mapping)
    ok = True
    period, timeout = DEFAULT_LIVENESS_PERIOD, DEFAULT_LIVENESS_TIMEOUT
    for key in ("period", "timeout"):
        if key in value:
            seconds = _seconds(value[key])
            if seconds is None or seconds == 0:
                problem(
                    f"[{name}] liveness.{key} must be a number of seconds > 0, got {value[key]!r}"
                )
                ok = False
            elif key == "period":
                period = seconds
            else:
                timeout = seconds
    failures = DEFAULT_LIVENESS_FAILURES
    if "failures" in value:
        raw = value["failures"]
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            problem(
                f"[{name}] liveness.failures must be a whole number >= 1 (failed checks "
                f"in a row before a restart), got {raw!r}"
            )
            ok = False
        else:
            failures = raw
    return Liveness(probe, period, timeout, failures) if ok else None


def _log_settings(
    name: str, body: Mapping[str, Any], problem: Any
) -> tuple[str | None, int | None, int]:
    """``log_file``, ``log_max_size`` and ``log_backups``, checked together."""
    log_file: str | None = None
    if "log_file" in body:
        raw = body["log_file"]
        if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
            problem(f"[{name}] log_file must be a file path such as 'logs/{name}.log', got {raw!r}")
        elif raw.endswith(("/", os.sep)):
            problem(f"[{name}] log_file must name a file, not a folder, got {raw!r}")
        else:
            log_file = raw
    log_max_size: int | None = None
    if "log_max_size" in body:
        log_max_size = parse_size(body["log_max_size"])
        if log_max_size is None:
            problem(
                f"[{name}] log_max_size must be {_SIZE_HELP} (> 0), got {body['log_max_size']!r}"
            )
    log_backups = DEFAULT_LOG_BACKUPS
    if "log_backups" in body:
        raw = body["log_backups"]
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            problem(f"[{name}] log_backups must be a whole number >= 0, got {raw!r}")
        else:
            log_backups = raw
    for key in ("log_max_size", "log_backups"):
        if key in body and "log_file" not in body:
            problem(f"[{name}] {key} needs log_file (the file to rotate)")
    return log_file, log_max_size, log_backups


def _signal(name: str, value: object, problem: Any) -> signal.Signals | None:
    if isinstance(value, str):
        text = value.upper()
        text = text if text.startswith("SIG") else "SIG" + text
        try:
            return signal.Signals[text]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            pass
    problem(f"[{name}] stop_signal: {value!r} is not a signal (e.g. 'SIGINT' or 'TERM')")
    return None


def scan_upconfig(
    table: Mapping[str, Any], names: Sequence[str], *, source: str = CONFIG_FILE
) -> tuple[UpConfig, list[Problem]]:
    """Validate the per-process table against the Procfile's ``names``.

    Returns the config (only the valid parts) and every problem found: an
    unknown key or process name, a bad type or value (a size, a count, a
    probe), a dependency on itself, on a program without a probe with
    condition "ready", two types sharing a log file, and cycles.
    """
    problems: list[Problem] = []
    processes: dict[str, ProcessConfig] = {}
    log_owners: dict[str, str] = {}  # normalised log_file -> the type that has it

    for name, body in table.items():

        def problem(message: str) -> None:
            problems.append((source, None, message))

        if name not in names:
            known = ", ".join(names) or "none"
            problem(f"[{name}]: no process type {name!r} in the Procfile (it has: {known})")
            continue
        if not isinstance(body, Mapping):
            problem(f"{name} must be a table ([{name}]), got {type(body).__name__}")
            continue
        for key in body:
            if key not in _KEYS:
                problem(f"[{name}] unknown key {key!r} (known: {', '.join(_KEYS)})")
        deps: dict[str, Condition] = {}
        raw_deps = body.get("depends_on", {})
        # A list of names means each is "started".
        if isinstance(raw_deps, list) and all(isinstance(d, str) for d in raw_deps):
            raw_deps = dict.fromkeys(raw_deps, "started")
        if not isinstance(raw_deps, Mapping):
            problem(
                f'[{name}] depends_on must be a table such as {{db = "ready"}}, got {raw_deps!r}'
            )
            raw_deps = {}
        for dep, cond in raw_deps.items():
            if dep not in names:
                problem(f"[{name}] depends_on: no process type {dep!r} in the Procfile")
            elif dep == name:
                problem(f"[{name}] depends_on: a process cannot depend on itself")
            elif cond not in CONDITIONS:
                problem(
                    f"[{name}] depends_on.{dep}: condition must be one of "
                    f"{', '.join(CONDITIONS)}, got {cond!r}"
                )
            else:
                deps[dep] = cond
        probe = _probe(name, body["ready"], problem) if "ready" in body else None
        ready_timeout = DEFAULT_READY_TIMEOUT
        if "ready_timeout" in body:
            value = _seconds(body["ready_timeout"])
            if value is None or value == 0:
                problem(
                    f"[{name}] ready_timeout must be a number of seconds > 0, "
                    f"got {body['ready_timeout']!r}"
                )
            else:
                ready_timeout = value
        stop_signal = _signal(name, body["stop_signal"], problem) if "stop_signal" in body else None
        stop_timeout: float | None = None
        if "stop_timeout" in body:
            stop_timeout = _seconds(body["stop_timeout"])
            if stop_timeout is None:
                problem(
                    f"[{name}] stop_timeout must be a number of seconds >= 0, "
                    f"got {body['stop_timeout']!r}"
                )
        max_memory: int | None = None
        if "max_memory" in body:
            max_memory = parse_size(body["max_memory"])
            if max_memory is None:
                problem(
                    f"[{name}] max_memory must be {_SIZE_HELP} (> 0), got {body['max_memory']!r}"
                )
        liveness = _liveness(name, body["liveness"], problem) if "liveness" in body else None
        log_file, log_max_size, log_backups = _log_settings(name, body, problem)
        if log_file is not None:
            key = os.path.normpath(log_file)
            if key in log_owners:
                problem(
                    f"[{name}] log_file {log_file!r} is also [{log_owners[key]}]'s: give each "
                    "process type its own file (the copies of one type share theirs)"
                )
            log_owners.setdefault(key, name)
        processes[name] = ProcessConfig(
            deps,
            probe,
            ready_timeout,
            stop_signal,
            stop_timeout,
            max_memory,
            liveness,
            log_file,
            log_max_size,
            log_backups,
        )

    config = UpConfig(processes, source)
    for name, pc in processes.items():
        for dep, cond in pc.depends_on.items():
            if cond == "ready" and config.get(dep).ready is None:
                problems.append(
                    (
                        source,
                        None,
                        f'[{name}] depends_on.{dep} = "ready", but {dep} has no ready probe: '
                        f'add one under [{dep}] (ready = {{tcp = "$PORT"}}, ...) or use '
                        '"started"',
                    )
                )
    cycle = _find_cycle(config, names)
    if cycle:
        problems.append(
            (source, None, f"dependency cycle: {' -> '.join(cycle)}; no order can start them")
        )
    return config, problems


def _find_cycle(config: UpConfig, names: Sequence[str]) -> list[str]:
    """One dependency cycle as a path (first name repeated at the end), or []."""
    colour: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str]:
        colour[name] = 1
        path.append(name)
        for dep in config.get(name).depends_on:
            if colour.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in colour and (found := visit(dep)):
                return found
        path.pop()
        colour[name] = 2
        return []

    for name in names:
        if name not in colour and (found := visit(name)):
            return found
    return []


def dependency_order(config: UpConfig, names: Sequence[str]) -> list[str]:
    """``names`` in an order where each comes after what it depends on (Procfile
    order otherwise); the config must have no cycle."""
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for dep in config.get(name).depends_on:
            visit(dep)
        done.append(name)

    for name in names:
        visit(name)
    return done


def dependency_depth(config: UpConfig, names: Sequence[str]) -> int:
    """The length of the longest dependency chain (1 without dependencies): how many
    stop waves a run may take. The config must have no cycle."""
    depth: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((visit(d) for d in config.get(name).depends_on), default=0)
        return depth[name]

    return max((visit(n) for n in names), default=1)


def missing_dependencies(config: UpConfig, kinds: Sequence[str]) -> list[Problem]:
    """A problem for each dependency of a type in ``kinds`` (what will run) that is
    not in ``kinds`` itself: a subset or ``-c name=0`` left it out."""
    running = set(kinds)
    return [
        (
            config.source,
            None,
            f"{kind} depends on {dep}, which is not in this run (not named, or 0 "
            f"copies): run {dep} too, or leave {kind} out",
        )
        for kind in sorted(running)
        for dep in config.get(kind).depends_on
        if dep not in running
    ]


def scan_upconfig_text(
    text: str, names: Sequence[str], *, source: str = CONFIG_FILE, pyproject: bool = False
) -> tuple[UpConfig, list[Problem]]:
    """Parse TOML ``text`` (a ``polytask.toml``, or with ``pyproject`` its
    ``[tool.polytask.up]`` table) and validate it with :func:`scan_upconfig`."""
    try:
        data: Mapping[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return UpConfig({}, source), [(source, None, f"invalid TOML: {exc}")]
    if pyproject:
        for key in PYPROJECT_TABLE:
            data = data.get(key, {})
            if not isinstance(data, Mapping):
                where = ".".join(PYPROJECT_TABLE)
                return UpConfig({}, source), [(source, None, f"[{where}] must be a table")]
        source = f"{source} [{'.'.join(PYPROJECT_TABLE)}]"
    return scan_upconfig(data, names, source=source)


def parse_upconfig(
    text: str, names: Sequence[str], *, source: str = CONFIG_FILE, pyproject: bool = False
) -> UpConfig:
    """:func:`scan_upconfig_text`, raising :class:`ProcfileError` listing every problem."""
    config, problems = scan_upconfig_text(text, names, source=source, pyproject=pyproject)
    if problems:
        raise ProcfileError(problems)
    return config
