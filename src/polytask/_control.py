"""The control protocol of ``polytask up``, pure: messages, framing, names, the log ring.

No socket, no thread, no clock (h11's split): ``_upcontrol.py`` moves the
bytes, :class:`polytask.Supervisor` acts on the requests; this module says
what a well-formed message is, turns bytes into messages and back, resolves
a program name, and keeps the recent output of each program.

The wire: newline-delimited JSON, one object per line, UTF-8::

    client                                       polytask up (one thread per connection)
    ──────                                       ───────────────────────────────────────
    {"v": 1, "op": "status"}            ──────>
                                        <──────  {"ok": true, "programs": [{...}, ...]}
    {"v": 1, "op": "restart", "name": "web.1"} >
                                        <──────  {"ok": true, "programs": [{...}]}
    {"v": 1, "op": "logs", "name": "web",
     "lines": 100, "follow": true}      ──────>
                                        <──────  {"log": "web.1", "time": ..., "line": "..."}  (0 or more)
                                        <──────  {"tick": true}  (while following, after silence)
                                        <──────  {"ok": true, "end": "polytask up ended"}
    anything wrong                      <──────  {"ok": false, "error": "...", "kind": "input"}

Each request gets exactly one reply (``ok`` true or false) that ends it; only
``logs`` sends ``log`` lines (and, following, ``tick`` lines) before it. A
line longer than its limit is an error, never an unbounded buffer.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "OPS",
    "PROTOCOL",
    "SOCKET_NAME",
    "ControlProtocolError",
    "LineBuffer",
    "LogLine",
    "LogRing",
    "Request",
    "encode",
    "format_duration",
    "format_status",
    "log_message",
    "parse_reply",
    "parse_request",
    "reply",
    "resolve_names",
    "socket_name",
    "unknown_name",
]

#: The protocol's version, sent in every request; a server refuses another one.
PROTOCOL: Final = 1
#: The socket's name in the Procfile's folder (one ``up`` per folder).
SOCKET_NAME: Final = ".polytask.sock"


def socket_name(procfile: str) -> str:
    """The control socket's name for a Procfile: :data:`SOCKET_NAME` for ``Procfile``,
    ``.polytask.<its name>.sock`` for another (``Procfile.dev``). One ``up`` per
    Procfile in a folder: ``up -f Procfile.dev`` beside ``up`` runs, as with honcho
    and foreman, while a second ``up`` of the same Procfile is refused."""
    base = procfile.rsplit("/", 1)[-1]
    if base == "Procfile":
        return SOCKET_NAME
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in base)
    return f".polytask.{safe[:64]}.sock"


#: The longest request line a server reads, and the longest reply line a client reads.
MAX_REQUEST: Final = 64 * 1024
MAX_REPLY: Final = 16 * 1024 * 1024
#: Requests, and whether each names a program (``logs`` may leave it out: every program).
OPS: Final[Mapping[str, bool]] = {
    "status": False,
    "start": True,
    "stop": True,
    "restart": True,
    "logs": False,
    "wait-ready": True,
}


class ControlProtocolError(ValueError):
    """A message broke the protocol: not JSON, not an object, a bad field, too long.

    Raised by :func:`parse_request`, :func:`parse_reply` and :class:`LineBuffer`;
    the server answers it with an ``ok: false`` reply, the client reports it.
    """


@dataclass(frozen=True)
class Request:
    """One request: ``op`` (a key of :data:`OPS`) and its arguments."""

    op: str
    #: A process type (all its copies) or a copy (``web.2``); None: every program.
    name: str | None = None
    #: ``logs``: how many recent lines (None: all that are kept); ``follow``: then
    #: the new ones until ``up`` ends.
    lines: int | None = None
    follow: bool = False
    #: ``wait-ready`` (seconds, None for no limit on the server's side).
    timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": PROTOCOL, "op": self.op}
        if self.name is not None:
            out["name"] = self.name
        if self.lines is not None:
            out["lines"] = self.lines
        if self.follow:
            out["follow"] = True
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line (JSON never holds a raw newline)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _object(line: bytes, limit: int) -> dict[str, Any]:
    if len(line) > limit:
        raise ControlProtocolError(f"message longer than {limit} bytes")
    try:
        # Decoded here: json.loads(bytes) would also take UTF-16 and UTF-32.
        value = json.loads(line.decode("utf-8"))
    except RecursionError:
        raise ControlProtocolError("not a JSON line: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlProtocolError(f"not a JSON line: {exc}") from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise ControlProtocolError("not a JSON line: a number with too many digits") from None
    if not isinstance(value, dict):
        raise ControlProtocolError(f"a message is a JSON object, not {type(value).__name__}")
    return value


def parse_request(line: bytes) -> Request:
    """A request line (without its newline) as a :class:`Request`, validated."""
    msg = _object(line, MAX_REQUEST)
    if msg.get("v") != PROTOCOL or isinstance(msg.get("v"), bool):  # true == 1 in Python
        raise ControlProtocolError(
            f"protocol version {msg.get('v')!r} is not {PROTOCOL}: "
            "polytask ctl and polytask up come from different polytask versions"
        )
    op = msg.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ControlProtocolError(f"unknown request {op!r}; known: {', '.join(OPS)}")
    name = msg.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ControlProtocolError(f"name must be a program name, not {name!r}")
    if OPS[op] and name is None:
        raise ControlProtocolError(f"{op} needs a program name")
    lines = msg.get("lines")
    if lines is not None and (isinstance(lines, bool) or not isinstance(lines, int) or lines < 0):
        raise ControlProtocolError(f"lines must be a whole number >= 0, not {lines!r}")
    follow = msg.get("follow", False)
    if not isinstance(follow, bool):
        raise ControlProtocolError(f"follow must be true or false, not {follow!r}")
    timeout = msg.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout >= 0
        or math.isinf(timeout)
    ):
        raise ControlProtocolError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    return Request(op, name, lines, follow, None if timeout is None else float(timeout))


def reply(ok: bool = True, **fields: Any) -> dict[str, Any]:
    """The reply that ends a request."""
    return {"ok": ok, **fields}


def parse_reply(line: bytes) -> dict[str, Any]:
    """A line from the server: a reply (``ok``), a ``log`` line or a ``tick``."""
    msg = _object(line, MAX_REPLY)
    if "ok" in msg:
        if not isinstance(msg["ok"], bool):
            raise ControlProtocolError(f"ok must be true or false, not {msg['ok']!r}")
        if not msg["ok"] and not isinstance(msg.get("error"), str):
            raise ControlProtocolError("a failed reply must say why (error)")
        programs = msg.get("programs")
        if programs is not None and not (
            isinstance(programs, list) and all(isinstance(p, dict) for p in programs)
        ):
            raise ControlProtocolError("programs must be a list of objects")
        return msg
    if "log" in msg:
        if not (
            isinstance(msg["log"], str)
            and isinstance(msg.get("line"), str)
            and isinstance(msg.get("time"), (int, float))
        ):
            raise ControlProtocolError("a log message has log, time and line")
        return msg
    if msg.get("tick") is True:
        return msg
    raise ControlProtocolError(f"unknown message {sorted(msg)}")


class LineBuffer:
    """Bytes in, complete lines out; a line longer than ``limit`` is an error.

    ``feed`` returns the lines the bytes completed (without their newline);
    ``eof`` says whether an unfinished line was cut off.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while (end := self._buf.find(b"\n", start)) >= 0:
            if end - start > self.limit:
                raise ControlProtocolError(f"message longer than {self.limit} bytes")
            lines.append(bytes(self._buf[start:end]))
            start = end + 1
        del self._buf[:start]
        if len(self._buf) > self.limit:
            raise ControlProtocolError(f"message longer than {self.limit} bytes")
        return lines

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished line are waiting (at EOF: a cut message)."""
        return bool(self._buf)


# =========================================================================== names


def unknown_name(name: str, programs: Sequence[tuple[str, str]]) -> str:
    """The error for an unknown program name, listing the known ones."""
    kinds: dict[str, list[str]] = {}
    for copy, kind in programs:
        kinds.setdefault(kind, []).append(copy)
    known = "; ".join(f"{kind} ({', '.join(copies)})" for kind, copies in kinds.items())
    return f"no program {name!r} in this run; known: {known or 'none'}"


def resolve_names(name: str, programs: Sequence[tuple[str, str]]) -> list[str]:
    """The copies ``name`` means: a copy (``web.2``) itself, a type (``web``) every copy.

    ``programs``: ``(copy, type)`` pairs in order. ValueError listing the known
    names for anything else.
    """
    if any(copy == name for copy, _ in programs):
        return [name]
    copies = [copy for copy, kind in programs if kind == name]
    if not copies:
        raise ValueError(unknown_name(name, programs))
    return copies


# =========================================================================== the log ring


class LogLine(NamedTuple):
    """One line a program printed: its place in the run, when, who, what (raw bytes)."""

    seq: int
    time: float
    name: str
    data: bytes


def log_message(line: LogLine) -> dict[str, Any]:
    """A log line as a message; bytes that are not UTF-8 survive (surrogateescape)."""
    return {
        "log": line.name,
        "time": line.time,
        "line": line.data.decode("utf-8", "surrogateescape"),
    }


class LogRing:
    """The recent lines of each program, bounded per program by count and by bytes.

    ``seq`` numbers every line of the run, so that a follower asks for what came
    after the last line it saw (:meth:`after`) and the lines of several programs
    come back in the order they were read. A line longer than ``max_line`` is kept
    cut to that length.
    """

    def __init__(
        self, *, max_lines: int = 1000, max_bytes: int = 1 << 20, max_line: int = 16 * 1024
    ) -> None:
        self.max_lines, self.max_bytes, self.max_line = max_lines, max_bytes, max_line
        self.seq = 0
        self._rings: dict[str, deque[LogLine]] = {}
        self._bytes: dict[str, int] = {}

    def add(self, name: str, data: bytes, when: float) -> LogLine:
        self.seq += 1
        line = LogLine(self.seq, when, name, data[: self.max_line])
        ring = self._rings.setdefault(name, deque())
        ring.append(line)
        size = self._bytes.get(name, 0) + len(line.data)
        while ring and (len(ring) > self.max_lines or size > self.max_bytes):
            size -= len(ring.popleft().data)
        self._bytes[name] = size
        return line

    def add_many(self, name: str, lines: Sequence[bytes], when: float) -> None:
        """:meth:`add` each of ``lines`` (one read's worth); the ring ends as it would
        after adding them one by one, but lines the count bound would drop at once
        are only numbered."""
        skip = max(0, len(lines) - self.max_lines)
        seq = self.seq + skip
        ring = self._rings.setdefault(name, deque())
        size = self._bytes.get(name, 0)
        cut = self.max_line
        for data in lines[skip:] if skip else lines:
            seq += 1
            line = LogLine(seq, when, name, data[:cut])
            ring.append(line)
            size += len(line.data)
        self.seq = seq
        # Dropping the oldest once at the end leaves the same lines as after each
        # add: a line that had to go then has to go now.
        while ring and (len(ring) > self.max_lines or size > self.max_bytes):
            size -= len(ring.popleft().data)
        self._bytes[name] = size

    def _rings_of(self, names: Collection[str] | None) -> list[deque[LogLine]]:
        return [r for n, r in self._rings.items() if names is None or n in names]

    def tail(self, names: Collection[str] | None, lines: int | None) -> list[LogLine]:
        """The last ``lines`` lines of ``names`` (None: every program), oldest first."""
        if lines == 0:
            return []
        # Each ring is in seq order (a LogLine compares by seq first): merge them.
        merged = list(heapq.merge(*self._rings_of(names)))
        return merged if lines is None else merged[-lines:]

    def after(self, seq: int, names: Collection[str] | None) -> list[LogLine]:
        """The lines of ``names`` numbered after ``seq``, oldest first. A follower calls
        this for every batch: only the new end of each ring is looked at."""
        tails: list[list[LogLine]] = []
        for ring in self._rings_of(names):
            tail: list[LogLine] = []
            for line in reversed(ring):
                if line.seq <= seq:
                    break
                tail.append(line)
            if tail:
                tail.reverse()
                tails.append(tail)
        return tails[0] if len(tails) == 1 else list(heapq.merge(*tails))


# =========================================================================== status


def format_duration(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h07m``: an uptime as the status tables show it."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_status(programs: Sequence[Mapping[str, Any]]) -> str:
    """The ``ctl status`` table from the ``programs`` of a status reply.

    READY is ``yes``/``no`` for a program with a readiness probe, ``-`` without one.
    """
    head = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY")
    rows = [head]
    for p in programs:
        ready = p.get("ready")
        rows.append(
            (
                str(p.get("name", "?")),
                str(p.get("state", "?")),
                "-" if p.get("pid") is None else str(p["pid"]),
                format_duration(
                    float(uptime) if isinstance(uptime := p.get("uptime"), (int, float)) else 0.0
                ),
                str(p.get("restarts", 0)),
                "-" if ready is None else "yes" if ready else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
