"""``polytask.toml``: dependencies, readiness probes and stop settings per process type.

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
"""

from __future__ import annotations

import re
import signal
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._core.errors import ProcfileError

__all__ = [
    "CONDITIONS",
    "PROBE_KINDS",
    "Condition",
    "Probe",
    "ProcessConfig",
    "UpConfig",
    "dependency_depth",
    "dependency_order",
    "missing_dependencies",
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

_KEYS: Final = ("depends_on", "ready", "ready_timeout", "stop_signal", "stop_timeout")

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
class ProcessConfig:
    """The settings of one process type (every copy shares them)."""

    depends_on: Mapping[str, Condition] = field(default_factory=dict)
    ready: Probe | None = None
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stop_signal: signal.Signals | None = None
    stop_timeout: float | None = None


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


def _probe(name: str, value: object, problem: Any) -> Probe | None:
    if not isinstance(value, Mapping):
        problem(f"[{name}] ready must be a table with one of {', '.join(PROBE_KINDS)}")
        return None
    kinds = [k for k in value if k in PROBE_KINDS]
    unknown = [k for k in value if k not in PROBE_KINDS]
    if unknown:
        problem(f"[{name}] ready: unknown key {unknown[0]!r} (use one of {', '.join(PROBE_KINDS)})")
        return None
    if len(kinds) != 1:
        problem(
            f"[{name}] ready must have exactly one of {', '.join(PROBE_KINDS)}, got {len(kinds)}"
        )
        return None
    kind: ProbeKind = kinds[0]
    raw = value[kind]
    if kind == "tcp":
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 1 <= raw <= 65535:
                problem(f"[{name}] ready.tcp: {raw} is not a port number (1-65535)")
                return None
            return Probe("tcp", f"127.0.0.1:{raw}")
        if isinstance(raw, str) and raw in ("$PORT", "${PORT}"):
            return Probe("tcp", f"127.0.0.1:{raw}")
        if isinstance(raw, str):
            host, colon, port = raw.rpartition(":")
            if colon and host and (port.isdigit() or port in ("$PORT", "${PORT}")):
                return Probe("tcp", raw)
        problem(f"[{name}] ready.tcp must be a port (8000) or 'host:port', got {raw!r}")
        return None
    if not isinstance(raw, str) or not raw.strip():
        problem(f"[{name}] ready.{kind} must be a non-empty string, got {raw!r}")
        return None
    if kind == "http" and not re.match(r"https?://", raw):
        problem(f"[{name}] ready.http must be an http:// or https:// URL, got {raw!r}")
        return None
    if kind == "log":
        try:
            re.compile(raw)
        except re.error as exc:
            problem(f"[{name}] ready.log is not a valid regular expression: {exc}")
            return None
    return Probe(kind, raw)


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
    unknown key or process name, a bad type or value, a dependency on itself,
    on a program without a probe with condition "ready", and cycles.
    """
    problems: list[Problem] = []
    processes: dict[str, ProcessConfig] = {}

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
        processes[name] = ProcessConfig(deps, probe, ready_timeout, stop_signal, stop_timeout)

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
