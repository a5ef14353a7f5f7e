"""Procfiles, env files and ``-c`` concurrency specs: parsing and validation.

Pure functions over text already read: no file or process I/O here, so every
rule is tested on strings. Every problem is collected (not only the first) with
its line number, and reported as one :class:`~polytask.ProcfileError`.

A Procfile has one ``name: command`` line per process type (honcho and foreman
syntax); blank lines and ``#`` comments are skipped. As in foreman and honcho,
a line that is not an entry (no colon, a name such as ``web.v2`` or ``my web``,
an empty command, an indented line) is skipped, with a warning naming its line
(``strict=True`` makes these errors); a duplicate name or a NUL character in a
command is always an error. :func:`expand` turns the
types into the instances to run (``web.1``, ``web.2``, ...), each with the
``PORT`` foreman gives it: ``base + 100 x type index + instance index``, the
type index counted in Procfile order so that a process keeps its port whatever
subset is started.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ._core.errors import BackendUnavailable, ProcfileError

__all__ = [
    "DEFAULT_BASE_PORT",
    "Instance",
    "Procfile",
    "ProcfileEntry",
    "base_port",
    "expand",
    "expand_vars",
    "parse_concurrency",
    "parse_env",
    "parse_procfile",
    "procfile_from_mapping",
    "scan_procfile",
]

#: The first PORT handed out, as foreman and honcho do.
DEFAULT_BASE_PORT = 5000
#: In ``-c``, foreman's name for every process type.
ALL = "all"
#: Copies of one type are capped so that their PORTs stay below the next type's.
MAX_COPIES = 100

_NAME = re.compile(r"[A-Za-z0-9_-]+")

Problem = tuple[str, int | None, str]
Command = str | tuple[str, ...]


@dataclass(frozen=True)
class ProcfileEntry:
    """One process type: its name, its command and the line that defined it."""

    name: str
    #: A shell command line (run with ``/bin/sh -c``), or an argv run directly.
    command: Command
    #: 1-based line in the Procfile (None for a type given as a Python mapping).
    line: int | None = None


@dataclass(frozen=True)
class Procfile:
    """The process types of a Procfile, in file order."""

    entries: tuple[ProcfileEntry, ...]
    #: Where the text came from, used in error messages.
    source: str = "Procfile"
    #: Lines skipped as foreman and honcho skip them: ``(source, line, why)``.
    skipped: tuple[Problem, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def __getitem__(self, name: str) -> ProcfileEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Instance:
    """One program to run: copy ``index`` (1-based) of process type ``kind``."""

    kind: str
    index: int
    command: Command
    port: int

    @property
    def name(self) -> str:
        """``kind.index``, as honcho and foreman name it (``web.1``)."""
        return f"{self.kind}.{self.index}"


def _name_problem(name: str) -> str | None:
    if not name:
        return "missing process name before ':'"
    if not _NAME.fullmatch(name):
        return f"invalid process name {name!r}: use only letters, digits, '_' and '-'"
    return None


def _nul_problem(name: str) -> str:
    # execve takes NUL-terminated strings: such a command could never start.
    return (
        f"the command of {name!r} contains a NUL character (\\x00), "
        "which no program can be given: remove it"
    )


_SKIPPED = "; foreman and honcho skip this line too (--strict makes it an error)"


def parse_procfile(text: str, *, source: str = "Procfile", strict: bool = False) -> Procfile:
    """Parse Procfile ``text``; raise :class:`ProcfileError` listing every problem.

    A line that foreman and honcho would skip (not ``name: command``, an
    invalid name, an empty command, leading whitespace) is skipped and listed
    in :attr:`Procfile.skipped`, or, with ``strict``, is a problem. Always
    problems: a command with a NUL character, a name defined twice (honcho
    refuses it too), and a file that defines nothing.
    """
    procfile, problems = scan_procfile(text, source=source, strict=strict)
    if problems:
        raise ProcfileError(problems)
    return procfile


def scan_procfile(
    text: str, *, source: str = "Procfile", strict: bool = False
) -> tuple[Procfile, list[Problem]]:
    """:func:`parse_procfile` without raising: the Procfile and every problem.

    Used by ``polytask check`` to show the skipped lines next to the errors.
    """
    problems: list[Problem] = []
    skipped: list[Problem] = []
    entries: list[ProcfileEntry] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        shown = line if len(line) <= 60 else line[:57] + "..."
        name, colon, command = line.partition(":")
        # foreman's and honcho's pattern is ^name:\s*command$ with nothing
        # before the name: an indented entry is skipped, never started.
        if raw[:1].isspace():
            why = f"indented line {shown!r}: an entry starts at the beginning of its line"
        elif not colon:
            why = f"expected 'name: command', got {shown!r}"
        else:
            # Only the command is stripped: "my web: x" has an invalid name.
            command = command.strip()
            why = _name_problem(name) or ""
            if not why and not command:
                why = f"empty command for process {name!r}"
        if why:
            (problems if strict else skipped).append(
                (source, number, why + ("" if strict else _SKIPPED))
            )
            continue
        if "\0" in command:
            problems.append((source, number, _nul_problem(name)))
            continue
        if name in first_line:
            problems.append(
                (
                    source,
                    number,
                    f"duplicate process name {name!r} (first defined on line {first_line[name]})",
                )
            )
            continue
        first_line[name] = number
        entries.append(ProcfileEntry(name, command, number))
    if not entries and not problems:
        hint = f"; {len(skipped)} line(s) skipped: run 'polytask check'" if skipped else ""
        problems.append(
            (
                source,
                None,
                f"no processes defined (expected lines like 'web: python app.py'){hint}",
            )
        )
    return Procfile(tuple(entries), source, tuple(skipped)), problems


def procfile_from_mapping(
    processes: Mapping[str, str | Sequence[str]], *, source: str = "processes"
) -> Procfile:
    """Build a :class:`Procfile` from ``{"web": "command line" or [argv...]}``, validated."""
    problems: list[Problem] = []
    entries: list[ProcfileEntry] = []
    for name, command in processes.items():
        bad = (
            _name_problem(name)
            if isinstance(name, str)
            else f"process name {name!r} is not a string"
        )
        if bad:
            problems.append((source, None, bad))
            continue
        cmd: Command
        if isinstance(command, str):
            cmd = command.strip()
            empty = not cmd
        elif isinstance(command, Sequence) and all(isinstance(c, str) for c in command):
            cmd = tuple(command)
            empty = not cmd or not cmd[0]
        else:
            problems.append(
                (
                    source,
                    None,
                    f"command of {name!r} must be a string or a list of strings, not {command!r}",
                )
            )
            continue
        if empty:
            problems.append((source, None, f"empty command for process {name!r}"))
            continue
        if any("\0" in c for c in ((cmd,) if isinstance(cmd, str) else cmd)):
            problems.append((source, None, _nul_problem(name)))
            continue
        entries.append(ProcfileEntry(name, cmd, None))
    if not entries and not problems:
        problems.append((source, None, "no processes given"))
    if problems:
        raise ProcfileError(problems)
    return Procfile(tuple(entries), source)


def parse_concurrency(specs: str | Iterable[str] | Mapping[str, int] | None) -> dict[str, int]:
    """Parse ``"web=2,worker=3"`` (or several such strings, or a mapping) into counts.

    A count is a whole number from 0 (do not start that type) to 100. As in
    foreman, ``all=N`` sets the count of every type not named
    (``all=2,worker=0``), in any order.
    """
    if specs is None:
        return {}
    problems: list[Problem] = []
    out: dict[str, int] = {}
    if isinstance(specs, Mapping):
        items: list[tuple[str, str | int]] = list(specs.items())
        shown = "concurrency"
    else:
        texts = [specs] if isinstance(specs, str) else list(specs)
        items = []
        for text in texts:
            for part in text.split(","):
                part = part.strip()
                name, eq, text_count = part.partition("=")
                if not eq or not name.strip() or not text_count.strip():
                    problems.append(
                        (
                            "-c",
                            None,
                            f"malformed concurrency {part!r}: expected NAME=COUNT[,NAME=COUNT...]",
                        )
                    )
                    continue
                items.append((name.strip(), text_count.strip()))
        shown = "-c"
    for name, count in items:
        if isinstance(count, bool) or not isinstance(count, (int, str)):
            problems.append(
                (shown, None, f"count for {name!r} must be a whole number, not {count!r}")
            )
            continue
        try:
            n = int(count)
        except ValueError:
            problems.append((shown, None, f"count {count!r} for {name!r} is not a whole number"))
            continue
        if not 0 <= n <= MAX_COPIES:
            problems.append(
                (shown, None, f"count {n} for {name!r} must be between 0 and {MAX_COPIES}")
            )
            continue
        if name in out:
            problems.append((shown, None, f"process {name!r} given twice"))
            continue
        out[name] = n
    if problems:
        raise ProcfileError(problems)
    return out


_PORT_TEXT = re.compile(r"\s*[0-9]+\s*")


def base_port(value: str | None) -> int:
    """The base PORT a ``PORT`` variable (the environment's or an env file's) sets.

    Unset or empty: :data:`DEFAULT_BASE_PORT`. Otherwise a whole number, spaces
    around it allowed, as honcho reads it; anything else is a problem (honcho
    refuses it too), not a silent 5000. The range is :func:`expand`'s to check.
    """
    if value is None or not value.strip():
        return DEFAULT_BASE_PORT
    if not _PORT_TEXT.fullmatch(value):
        raise ProcfileError(
            [("PORT", None, f"invalid value {value!r}: PORT must be a port number (e.g. 5000)")]
        )
    return int(value)


def expand(
    procfile: Procfile,
    concurrency: Mapping[str, int] | None = None,
    names: Sequence[str] | None = None,
    *,
    base_port: int = DEFAULT_BASE_PORT,
) -> list[Instance]:
    """The instances to run: each selected type times its count, with its PORT.

    ``names`` selects process types (all when empty or None); a type missing
    from ``concurrency`` runs ``concurrency["all"]`` copies, or one (foreman's
    ``all=N``: ``all`` always means every type). Unknown names are problems.
    """
    concurrency = dict(concurrency or {})
    default = concurrency.pop(ALL, 1)
    problems: list[Problem] = []
    known = ", ".join(procfile.names)
    for name in concurrency:
        if name not in procfile:
            problems.append(
                ("-c", None, f"unknown process {name!r} (the Procfile defines: {known})")
            )
    selected = list(dict.fromkeys(names or ()))
    for name in selected:
        if name not in procfile:
            problems.append(
                (procfile.source, None, f"unknown process {name!r} (the Procfile defines: {known})")
            )
    if not 1 <= base_port <= 65535:
        problems.append(("PORT", None, f"base port {base_port} is not between 1 and 65535"))
    if problems:
        raise ProcfileError(problems)
    out: list[Instance] = []
    for type_index, entry in enumerate(procfile.entries):
        if selected and entry.name not in selected:
            continue
        for i in range(concurrency.get(entry.name, default)):
            out.append(Instance(entry.name, i + 1, entry.command, base_port + 100 * type_index + i))
    if not out:
        problems.append(
            (procfile.source, None, "nothing to start: every selected process has count 0")
        )
    elif out[-1].port > 65535:
        problems.append(
            (
                "PORT",
                None,
                f"PORT {out[-1].port} of {out[-1].name} is above 65535: use a lower base port",
            )
        )
    if problems:
        raise ProcfileError(problems)
    return out


_VAR = re.compile(
    r"\\\$"  # \$: a literal $
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


def expand_vars(value: str, lookup: Mapping[str, str]) -> str:
    """Expand ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` from ``lookup``, as a shell.

    An unset name gives ``""`` (or the default); ``\\$`` gives a literal ``$``;
    a ``$`` not followed by a name is kept as it is.
    """

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group("braced") or m.group("plain")
        got = lookup.get(name, "")
        if m.group("default") is not None and not got:
            return m.group("default")
        return got

    return _VAR.sub(one, value)


def _single_quoted(raw: str) -> bool:
    """Whether the value of the binding ``raw`` (one env file line) is in single quotes."""
    _, eq, value = raw.partition("=")
    return bool(eq) and value.lstrip().startswith("'")


def parse_env(
    text: str, *, source: str = ".env", environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Parse the text of an env file; raise on unparsable lines.

    The syntax is python-dotenv's (quotes, ``export``, comments); a key without
    ``=`` is skipped. In a value unquoted or in double quotes, ``$NAME`` and
    ``${NAME}`` (and ``${NAME:-default}``) are expanded from the keys above it,
    then from ``environ`` (default ``os.environ``); ``\\$`` or single quotes
    keep a literal ``$``. A NUL character in a name or value is a problem of
    its line (no environment can hold one).
    """
    try:
        from dotenv.parser import parse_stream
    except ImportError as exc:  # pragma: no cover - python-dotenv is a dependency
        raise BackendUnavailable(
            "reading an env file needs python-dotenv: pip install python-dotenv"
        ) from exc
    problems: list[Problem] = []
    for b in parse_stream(io.StringIO(text)):
        raw = b.original.string
        # python-dotenv counts blank lines before a binding as its own: skip them.
        line = b.original.line + raw[: len(raw) - len(raw.lstrip())].count("\n")
        if b.error:
            problems.append((source, line, f"cannot parse {raw.strip()[:60]!r}"))
        elif b.key is not None and "\0" in b.key + (b.value or ""):
            # execve takes NUL-terminated strings: no environment can hold one,
            # and the start of every program would fail (found here, not there).
            where = "name" if "\0" in b.key else "value"
            problems.append(
                (
                    source,
                    line,
                    f"the {where} of {b.key!r} contains a NUL character (\\x00), "
                    "which no environment variable can hold: remove it",
                )
            )
    if problems:
        raise ProcfileError(problems)
    base = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for b in parse_stream(io.StringIO(text)):
        if b.key is None or b.value is None:
            continue
        value = b.value
        if not _single_quoted(b.original.string):
            value = expand_vars(value, _Chain(out, base))
        out[b.key] = value
    return out


class _Chain(Mapping[str, str]):
    """Two mappings looked up in order (what the file set so far, then the environment)."""

    def __init__(self, first: Mapping[str, str], second: Mapping[str, str]):
        self._maps = (first, second)

    def __getitem__(self, key: str) -> str:
        for m in self._maps:
            if key in m:
                return m[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter({**self._maps[1], **self._maps[0]})

    def __len__(self) -> int:
        return len({**self._maps[1], **self._maps[0]})
