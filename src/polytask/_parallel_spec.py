"""The rules of ``polytask parallel``, without any I/O.

Everything here is a pure function or a frozen record, tested without
processes: the command template and its replacement strings (``{}``, ``{.}``,
``{/}``, ``{//}``, ``{/.}``, ``{#}``, ``{%}``, ``{1}``, ``{2.}``, ...), when a
command needs a shell and how each input is quoted for where it sits in it
(planned once per COMMAND by :mod:`polytask._shellquote`), the option values
(``-j``, ``--timeout``, ``--halt``), GNU parallel's joblog format and exit
status, the ``--results`` directory layout, and how ``--pipe`` cuts stdin
into blocks (:class:`PipeSplitter`, bytes in, blocks out) and ``--pipepart``
a file (:func:`split_positions`, given a function that reads at an offset). They follow GNU parallel
(version 20221122) wherever it defines the behaviour.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from ._shellquote import (
    HeredocCheck,
    Plan,
    QuotingError,
    UnsafeInput,
    compile_plan,
    dialect,
    is_posix_shell,
    plan_argv,
    plan_shell,
    quote_word,
)

__all__ = [
    "JOBLOG_HEADER",
    "NOARG",
    "RESULT_COLUMNS",
    "GroupMarker",
    "HaltPolicy",
    "JoblogEntry",
    "PipeSplitter",
    "QuotingError",
    "Repl",
    "Template",
    "UnsafeInput",
    "context_command",
    "csv_complete",
    "csv_fields",
    "csv_header",
    "csv_join",
    "exit_status",
    "exported_functions",
    "gnu_quote",
    "group_by_column",
    "has_replacement",
    "header_regex",
    "is_posix_shell",
    "joblog_line",
    "parse_count",
    "parse_duration",
    "parse_joblog",
    "parse_jobs",
    "parse_size",
    "parse_termseq",
    "perl_dirname",
    "perl_expression",
    "perl_split",
    "plain",
    "render_raw",
    "replace_value",
    "replacement_kinds",
    "result_record",
    "results_dir",
    "results_format",
    "resume_skip",
    "retry_commands",
    "split_positions",
    "unescape_record",
    "unquote_printf",
]

# --------------------------------------------------------------------------- template

#: A replacement string: ``{}``, ``{#}``, ``{%}``, or ``{N}`` / ``{}`` with one
#: of the modifiers ``.`` ``/`` ``//`` ``/.``.
_REPL_RE = re.compile(r"\{(?:(#)|(%)|(-?\d+)?(\.|//|/\.|/)?)\}")
#: GNU parallel's Perl replacement strings, ``{= perl =}`` and ``{=3 perl =}``.
_PERL_RE = re.compile(r"\{=.*?=\}", re.DOTALL)

# Characters that change the meaning of a command line in sh. A command whose
# literal text (replacement strings aside) has none of them is a plain list of
# words, and runs without any shell.
_SHELL_CHARS = frozenset("|&;<>()$`\\\"'*?[]#~!{}\n")

# Words that only a shell understands (keywords and builtins with no program of
# the same name, or whose program would not affect the shell's state).
_SHELL_WORDS = frozenset(
    [
        "!",
        ".",
        ":",
        "[[",
        "]]",
        "alias",
        "bg",
        "break",
        "builtin",
        "case",
        "cd",
        "command",
        "continue",
        "declare",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "fi",
        "for",
        "function",
        "getopts",
        "hash",
        "if",
        "in",
        "jobs",
        "let",
        "local",
        "read",
        "readonly",
        "return",
        "select",
        "set",
        "shift",
        "shopt",
        "source",
        "then",
        "time",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "until",
        "wait",
        "while",
    ]
)

_EXT_RE = re.compile(r"\.[^/.]*\Z")

#: An input read but not given (-n0, -N0), GNU parallel's own marker: a
#: replacement string that gives it writes nothing at all (not an empty word),
#: while the text around it stays (``x{}y`` is ``xy``). A modifier may make
#: text of it, as in GNU (``{//}`` is ``.``). As the value of an input it is
#: GNU's too: an input ``\0noarg`` is one (GNU lets a NUL at its start pass).
NOARG = "\0noarg"


def plain(values: Iterable[str]) -> list[str]:
    """``values`` with :data:`NOARG` as the empty string (for text no shell reads)."""
    return ["" if v == NOARG else v for v in values]


class _Record:
    """An immutable record with equality, hash and repr by fields.

    What a frozen dataclass gives, without importing dataclasses (and inspect)
    on the command line's start-up path.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # in constructor order

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[_Record], tuple[Any, ...]]:
        # Through the constructor: pickle and copy must not call __setattr__.
        return (type(self), self._values())

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class Repl(_Record):
    """One replacement string of a template.

    ``kind`` is ``"arg"``, ``"seq"`` ({#}), ``"slot"`` ({%}), or with --plus
    ``"total"`` ({##}), ``"seq0"`` ({0#}) or ``"slot0"`` ({0%}); for ``"arg"``,
    ``index`` is the 1-based input source (negative: from the last; None:
    every argument) and ``mod`` one of ``""``, ``"."``, ``"/"``, ``"//"``,
    ``"/."``, with --plus also ``"+/"`` ``"+."`` ``"+.."`` ``"+..."``
    ``".."`` ``"..."`` ``"/.."`` ``"/..."`` or the text of a bash-like one
    (``":-x"``, ``"%.gz"``, ``"/a/b"``, ...: see :func:`replace_value`).
    """

    _fields = ("kind", "index", "mod")
    __slots__ = _fields
    kind: str
    index: int | None
    mod: str

    def __init__(self, kind: str, index: int | None = None, mod: str = "") -> None:
        self._set(kind=kind, index=index, mod=mod)

    def spelling(self) -> str:
        """The replacement string as written in a COMMAND: ``{}``, ``{#}``, ``{2/.}``, ..."""
        if self.kind == "seq":
            return "{#}"
        if self.kind == "slot":
            return "{%}"
        if self.kind in _COUNTED:
            return _COUNTED[self.kind]
        return "{" + (str(self.index) if self.index else "") + self.mod + "}"

    def values(
        self, args: Sequence[str], seq: int, slot: int, counts: tuple[int, int] = (0, 0)
    ) -> list[str]:
        """The strings this replacement stands for, for one job (one or more).

        ``counts``: the number of jobs and of job slots, for {##} {0#} {0%}.
        """
        if self.kind == "seq":
            return [str(seq)]
        if self.kind == "slot":
            return [str(slot)]
        if self.kind in _COUNTED:
            return [_counted(self.kind, seq, slot, counts)]
        if self.index is None:
            return [replace_value(a, self.mod) for a in args] if args else [""]
        # {-1} is the last source, {-2} the one before it. One that does not
        # exist is nothing at all, as GNU parallel writes it (not an empty word).
        i = self.index - 1 if self.index > 0 else len(args) + self.index
        return [replace_value(args[i], self.mod)] if 0 <= i < len(args) else []


#: The --plus strings that count jobs or slots, and their spelling.
_COUNTED = {"total": "{##}", "seq0": "{0#}", "slot0": "{0%}"}


def _counted(kind: str, seq: int, slot: int, counts: tuple[int, int]) -> str:
    """{##}, {0#} or {0%}: as GNU's Perl computes them, float logarithm included.

    The width is ``1 + int(log(n) / log(10))`` with n the number of jobs ({0#})
    or of job slots ({0%}): for n = 1000 that is 3 (the quotient is
    2.9999999999999996), so job 1000 of 1000 is ``1000`` and job 1 is ``001``.
    """
    total, slots = counts
    if kind == "total":
        return str(total)
    n, value = (total, seq) if kind == "seq0" else (slots, slot)
    width = 1 + int(math.log(max(n, 1)) / math.log(10))
    return str(value).zfill(width)


def perl_dirname(path: str) -> str:
    """Perl's ``File::Basename::dirname`` (what GNU parallel's ``{//}`` uses).

    ``a`` -> ``.``, ``/a`` -> ``/``, ``a/b/`` -> ``a``, ``/`` -> ``/``.
    """

    def fileparse(s: str) -> tuple[str, str]:
        i = s.rfind("/")
        return (s[: i + 1], s[i + 1 :]) if i >= 0 else ("./", s)

    def strip_sep(d: str) -> str:
        return d.rstrip("/") or d[:1]

    dirpart, base = fileparse(path)
    dirpart = strip_sep(dirpart)
    if not base:
        dirpart, base = fileparse(dirpart)
        dirpart = strip_sep(dirpart)
    return dirpart


def replace_value(value: str, mod: str) -> str:
    """Apply a replacement modifier to one argument, as GNU parallel does."""
    if mod == "":
        return value
    if mod == ".":
        return _EXT_RE.sub("", value)
    if mod == "/":
        return value[value.rfind("/") + 1 :]
    if mod == "//":
        return perl_dirname(value)
    if mod == "/.":
        return _EXT_RE.sub("", value[value.rfind("/") + 1 :])
    if mod in _PLUS_FIXED:
        return _plus_fixed(value, mod)
    # A bash-like --plus string (raises ValueError for an unknown modifier).
    out: bytes = _dynamic(mod)(_fsencode(value))
    return out.decode("utf-8", "surrogateescape")


Part = str | Repl


def _split_parts(text: str, token: str = "{}", plus: bool = False) -> list[Part]:
    """The literal text and replacement strings of ``text``; ``token`` stands for ``{}`` (-I).

    ``plus``: GNU parallel's --plus strings too, read as GNU reads them (:func:`_split_plus`).
    """
    if token != "{}":
        out: list[Part] = []
        for i, segment in enumerate(text.split(token)):
            if i:
                out.append(Repl("arg"))
            # Here {} is only text; {.}, {1}, {#} ... keep their meaning.
            out.extend(p if p != Repl("arg") else "{}" for p in _split_parts(segment, plus=plus))
        return out
    if plus:
        return _split_plus(text)
    parts: list[Part] = []
    pos = 0
    for m in _REPL_RE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        if m.group(1):
            parts.append(Repl("seq"))
        elif m.group(2):
            parts.append(Repl("slot"))
        else:
            index = int(m.group(3)) if m.group(3) is not None else None
            if index == 0:
                # {0} is not a replacement string in GNU parallel: keep it as text.
                parts.append(m.group(0))
            else:
                parts.append(Repl("arg", index, m.group(4) or ""))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


# --------------------------------------------------------------------------- --plus

# GNU parallel's --plus strings that are a fixed Perl substitution each, as Python
# regular expressions with the same meaning: (pattern, replacement group or 0 for
# nothing, whether a failed first substitution clears the value: Perl's ``|| s:.*$::``).
# ``{/..}`` and ``{/...}`` first take ``s:.*/::``.
_PLUS_FIXED: dict[str, tuple[str, int, bool]] = {
    "+/": (r"/[^/]*$", 0, True),
    "+.": (r".*\.", 0, True),
    "+..": (r".*\.([^/.]*\.[^/.]*)$", 1, True),
    "+...": (r".*\.([^/.]*\.[^/.]*\.[^/.]*)$", 1, True),
    "..": (r"\.[^/.]*\.[^/.]*$", 0, False),
    "...": (r"\.[^/.]*\.[^/.]*\.[^/.]*$", 0, False),
    "/..": (r"\.[^/.]*\.[^/.]*$", 0, False),
    "/...": (r"\.[^/.]*\.[^/.]*\.[^/.]*$", 0, False),
}


def _plus_fixed(value: str, mod: str) -> str:
    pattern, group, clear = _PLUS_FIXED[mod]
    if mod.startswith("/"):
        value = re.sub(r".*/", "", value, count=1)  # Perl's s:.*/::
    new, n = re.subn(pattern, lambda m: m.group(group) if group else "", value, count=1)
    if n == 0 and clear:
        new = re.sub(r".*$", "", value, count=1)  # Perl's s:.*$:: ("." stops at a newline)
    return new


#: GNU parallel's --plus table (20221122, ``%Global::plus`` and ``%Global::replace``):
#: each ``--rpl`` key as GNU writes it and what it becomes here. GNU replaces the
#: longest keys first, each everywhere in the COMMAND, then its positional form
#: (``{2...}``); so does :func:`_split_plus`. ``None``: refused (no exact equivalent).
_PLUS_TABLE: tuple[tuple[str, str | None], ...] = (
    ("{}", "arg:"),
    ("{#}", "seq"),
    ("{%}", "slot"),
    ("{/}", "arg:/"),
    ("{//}", "arg://"),
    ("{/.}", "arg:/."),
    ("{.}", "arg:."),
    ("{+/}", "arg:+/"),
    ("{+.}", "arg:+."),
    ("{+..}", "arg:+.."),
    ("{+...}", "arg:+..."),
    ("{..}", "arg:.."),
    ("{...}", "arg:..."),
    ("{/..}", "arg:/.."),
    ("{/...}", "arg:/..."),
    ("{choose_k}", None),
    ("{uniq}", None),
    ("{##}", "total"),
    ("{0%}", "slot0"),
    ("{0#}", "seq0"),
    ("{:-([^}]+?)}", "arg::-"),
    ("{:(\\d+?)}", "arg::"),
    ("{:(\\d+?):(\\d+?)}", "arg::"),
    ("{#([^#}][^}]*?)}", "arg:#"),
    ("{##([^#}][^}]*?)}", "arg:##"),
    ("{%([^}]+?)}", "arg:%"),
    ("{%%([^}]+?)}", "arg:%%"),
    ("{/([^#%}/]+?)/([^}]*?)}", "arg:/"),
    ("{/#([^}]+?)/([^}]*?)}", "arg:/#"),
    ("{/%([^}]+?)/([^}]*?)}", "arg:/%"),
    ("{//([^}]+?)/([^}]*?)}", "arg://"),
    ("{^([^}]+?)}", "arg:^"),
    ("{^^([^}]+?)}", "arg:^^"),
    ("{,([^}]+?)}", "arg:,"),
    ("{,,([^}]+?)}", "arg:,,"),
    ("{slot}", None),
    ("{host}", None),
    ("{sshlogin}", None),
    ("{hgrp}", None),
    ("{agrp}", None),
)

_REFUSED_PLUS = {
    "{choose_k}": "it skips jobs (and GNU counts each skipped job as failed); "
    "filter the inputs before they reach polytask parallel",
    "{uniq}": "it skips jobs (and GNU counts each skipped job as failed); "
    "filter the inputs before they reach polytask parallel",
    "{slot}": "GNU writes it as the shell text ${PARALLEL_JOBSLOT}, whose meaning depends "
    'on the quotes around it; use {%} or "$PARALLEL_JOBSLOT"',
    "{host}": "polytask parallel runs no jobs on remote hosts",
    "{sshlogin}": "polytask parallel runs no jobs on remote hosts",
    "{hgrp}": "polytask parallel runs no jobs on remote hosts",
    "{agrp}": "polytask parallel runs no jobs on remote hosts",
}

# Perl's \s (since 5.18) and \d in the keys, for bytes: ASCII only.
_PERL_SPACE = "[ \\t\\n\\r\\f\\v]*"


def _key_patterns(key: str) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    """A --rpl key as GNU matches it, and its positional form (``{N`` then the rest)."""
    # GNU splits a key into prefix, (groups), postfix at the first ( and the last ).
    m = re.fullmatch(r"([^(]*)(\(.*\))?([^)]*)", key, re.DOTALL)
    assert m is not None
    prefix, groups, postfix = m.group(1), (m.group(2) or ""), m.group(3)
    groups = groups.replace("\\d", "[0-9]")
    plain = re.compile(re.escape(prefix) + groups + re.escape(postfix), re.DOTALL)
    positional = re.compile(
        r"\{(-?[0-9]+)" + _PERL_SPACE + re.escape(prefix[1:]) + groups + re.escape(postfix),
        re.DOTALL,
    )
    return plain, positional


_PLUS_KEYS: list[tuple[str, str | None, re.Pattern[str], re.Pattern[str] | None]] = []


def _plus_keys() -> list[tuple[str, str | None, re.Pattern[str], re.Pattern[str] | None]]:
    """The --plus table compiled, longest key first (as GNU replaces them)."""
    if not _PLUS_KEYS:
        for key, what in sorted(_PLUS_TABLE, key=lambda kv: -len(kv[0])):
            plain, positional = _key_patterns(key)
            # {#} {%} {##} {0#} {0%} (GNU's "1 $_=..." strings) have no positional form
            # that means anything: {1#} reads as position 11 there.
            if what is None or not what.startswith("arg:"):
                positional = None
            _PLUS_KEYS.append((key, what, plain, positional))
    return _PLUS_KEYS


def _split_plus(text: str) -> list[Part]:
    """``text`` split as GNU parallel --plus reads it: longest --rpl keys first."""
    parts: list[Part] = [text]
    for key, what, plain, positional in _plus_keys():
        for pattern, numbered in ((plain, False), (positional, True)):
            if pattern is None:
                continue
            out: list[Part] = []
            for part in parts:
                if isinstance(part, Repl):
                    out.append(part)
                    continue
                pos = 0
                for m in pattern.finditer(part):
                    index = int(m.group(1)) if numbered else None
                    if index == 0:
                        continue  # {0} ... is not a replacement string: text
                    if m.start() > pos:
                        out.append(part[pos : m.start()])
                    out.append(_plus_repl(key, what, m, numbered))
                    pos = m.end()
                if pos < len(part):
                    out.append(part[pos:])
            parts = _merge_text(out)
    return parts


def _merge_text(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        elif p != "":
            out.append(p)
    return out


def _plus_repl(key: str, what: str | None, m: re.Match[str], numbered: bool) -> Repl:
    if what is None:
        raise QuotingError(f"--plus: {key} is not supported: {_REFUSED_PLUS[key]}")
    if not what.startswith("arg:"):
        return Repl(what)
    index = int(m.group(1)) if numbered else None
    if "(" not in key:
        return Repl("arg", index, what[4:])
    # The text inside the braces, without the position: {2:-x} -> ":-x".
    inner = m.group(0)[(m.end(1) - m.start()) if numbered else 1 : -1]
    mod = inner.lstrip(" \t\n\r\f\v")
    _dynamic(mod)  # refused now, not at the first job
    return Repl("arg", index, mod)


# --------------------------------------------------------------------------- --plus: Perl regexps


def _ungreedy(regexp: bytes) -> bytes:
    """GNU parallel's make_regexp_ungreedy: a ``?`` after each ``*``, ``+`` and ``}``."""
    out = bytearray()
    in_class = escape = found = False
    for c in regexp:
        if found:
            if c != ord("?"):
                out += b"?"
            found = False
        out.append(c)
        if escape:
            escape = False
            continue
        if c == ord("\\"):
            escape = True
            continue
        if c == ord("["):
            in_class = True
            continue
        if in_class:
            if c == ord("]"):
                in_class = False
            continue
        if c in b"*}+":
            found = True
    if found:
        out += b"?"
    return bytes(out)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _class_escape(p: bytes, i: int, what: str) -> tuple[bytes, int | None, int]:
    """The escape at ``p[i]`` (a backslash) inside ``[...]``: (Python text, its byte or None, next i)."""
    if i + 1 >= len(p):
        raise _Refused(what, "it ends with a lone backslash")
    d = p[i + 1]
    if d in b"dDwWsS":
        return p[i : i + 2], None, i + 2
    if d in b"tnrf":
        byte = {ord("t"): 9, ord("n"): 10, ord("r"): 13, ord("f"): 12}[d]
        return b"\\x%02x" % byte, byte, i + 2
    if d == ord("x"):
        if len(p) < i + 4 or p[i + 2] not in _HEX or p[i + 3] not in _HEX:
            raise _Refused(what, "\\x must be followed by two hex digits here")
        byte = int(p[i + 2 : i + 4], 16)
        return b"\\x%02x" % byte, byte, i + 4
    if d < 128 and chr(d).isalnum():
        raise _Refused(what, f"the escape \\{chr(d)} is not supported")
    return b"\\x%02x" % d, d, i + 2


class _Refused(QuotingError):
    """A --plus regexp whose Perl meaning Python's ``re`` cannot give exactly."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(
            f"--plus: {what}: {why} (polytask runs no Perl; it takes the part of Perl's "
            "regular expressions whose meaning it can match exactly: literals, . [...] "
            "\\d \\w \\s \\b, * + ? and their lazy forms, | ( ) (?: ) and lookarounds)"
        )


def _char_class(p: bytes, i: int, what: str) -> tuple[bytes, int]:
    """``[...]`` at ``p[i]``: Python's spelling of it and the index after it."""
    j = i + 1
    out = bytearray(b"[")
    if j < len(p) and p[j] == ord("^"):
        out += b"^"
        j += 1
    if j < len(p) and p[j] == ord("]"):
        raise _Refused(what, "a ] first in [...] is not supported (write \\])")
    close = p.find(b"]", j + 1)
    if j < len(p) and p[j] in b":=." and close > j + 1 and p[close - 1] == p[j]:
        raise _Refused(what, "[: :], [= =] and [. .] (POSIX classes) are not supported")
    items: list[tuple[bytes, int | None]] = []
    while True:
        if j >= len(p):
            raise _Refused(what, "a [ is not closed")
        c = p[j]
        if c == ord("]"):
            j += 1
            break
        if c == ord("\\"):
            text, byte, j = _class_escape(p, j, what)
            items.append((text, byte))
            continue
        if c == ord("[") and j + 1 < len(p) and p[j + 1] in b":=.":
            raise _Refused(what, "POSIX classes like [:alpha:] are not supported")
        if c == ord("-") and items and j + 1 < len(p) and p[j + 1] != ord("]"):
            lo = items[-1][1]
            j += 1
            if p[j] == ord("\\"):
                text, hi, j = _class_escape(p, j, what)
            else:
                hi, j = p[j], j + 1
            if lo is None or hi is None:
                raise _Refused(what, "a range in [...] must be between two characters")
            if lo > hi:
                raise _Refused(what, "a range in [...] goes backwards")
            items.append((b"-" + b"\\x%02x" % hi, None))  # (no range may start at it)
            continue
        items.append((b"\\x%02x" % c, c))
        j += 1
    out += b"".join(t for t, _ in items) + b"]"
    return bytes(out), j


#: The groups both engines read alike; any other ``(?`` is refused.
_OPENERS = (b"(?:", b"(?=", b"(?!", b"(?<=", b"(?<!", b"(")


def _perl_regex(regexp: bytes, what: str) -> bytes:
    """A Perl regular expression as a Python one that matches exactly the same, or _Refused.

    Only the part both engines read alike on bytes (Perl without /u, Python's
    bytes patterns: ASCII classes and case): literals, ``.``, ``[...]``,
    ``\\d \\w \\s \\D \\W \\S \\b \\B \\A \\z \\Z \\t \\n \\r \\f \\xHH``, escaped
    punctuation, ``^ $``, ``* + ?`` and their lazy forms, ``|``, groups,
    ``(?:...)`` and lookarounds.
    """
    out: list[bytes] = []
    i, n = 0, len(regexp)
    stack: list[str] = []
    prev = "start"  # what a quantifier would apply to: "atom" or "group" may take one
    while i < n:
        c = regexp[i]
        if c == ord("\\"):
            if i + 1 >= n:
                raise _Refused(what, "it ends with a lone backslash")
            d = regexp[i + 1]
            if d in b"bBA":
                out.append(regexp[i : i + 2])
                prev, i = "anchor", i + 2
            elif d == ord("z"):
                out.append(b"\\Z")
                prev, i = "anchor", i + 2
            elif d == ord("Z"):
                out.append(b"(?=\\n?\\Z)")
                prev, i = "anchor", i + 2
            else:
                text, _, i = _class_escape(regexp, i, what)
                out.append(text)
                prev = "atom"
        elif c == ord("["):
            text, i = _char_class(regexp, i, what)
            out.append(text)
            prev = "atom"
        elif c in b"*+?":
            if prev not in ("atom", "group"):
                raise _Refused(what, f"{chr(c)!r} follows nothing it can repeat")
            out.append(regexp[i : i + 1])
            i += 1
            if i < n and regexp[i] == ord("?"):
                out.append(b"?")
                i += 1
            if i < n and regexp[i] in b"*+?":
                raise _Refused(what, "possessive or repeated quantifiers are not supported")
            prev = "quantifier"
        elif c == ord("("):
            opener = next((o for o in _OPENERS if regexp.startswith(o, i)), b"")
            if not opener or (opener == b"(" and regexp.startswith(b"(?", i)):
                raise _Refused(
                    what, "of the (?...) forms only (?:...) and lookarounds are supported"
                )
            # A lookaround takes no quantifier (Python refuses one; Perl takes it).
            kind = "group" if opener in (b"(", b"(?:") else "look"
            out.append(opener)
            stack.append(kind)
            i += len(opener)
            prev = "start"
        elif c == ord(")"):
            if not stack:
                raise _Refused(what, "a ) has no (")
            out.append(b")")
            prev = stack.pop()
            i += 1
        elif c == ord("|"):
            out.append(b"|")
            prev, i = "start", i + 1
        elif c in b"^$":
            out.append(regexp[i : i + 1])
            prev, i = "anchor", i + 1
        elif c == ord("{"):
            raise _Refused(what, "an unescaped { is not supported (write \\{)")
        elif c == ord("."):
            out.append(b".")
            prev, i = "atom", i + 1
        else:
            out.append(b"\\x%02x" % c if c < 128 and not chr(c).isalnum() else bytes([c]))
            prev, i = "atom", i + 1
    if stack:
        raise _Refused(what, "a ( is not closed")
    return b"".join(out)


def _compile(pattern: bytes, what: str) -> re.Pattern[bytes]:
    try:
        return re.compile(pattern)
    except re.error as exc:  # e.g. a lookbehind of variable width, which Perl takes
        raise _Refused(what, f"Python's re cannot take it ({exc})") from None


def _group(n: int) -> Callable[[re.Match[bytes]], bytes]:
    return lambda m: m.group(n) or b""


@functools.lru_cache(maxsize=256)
def _dynamic(mod: str) -> Callable[[bytes], bytes]:
    """The function of one of GNU's bash-like --plus strings (its text inside the braces).

    Each is what GNU's Perl does, on the argument's bytes (Perl sees bytes):
    ``{:-s}`` s if the value is empty or ``0`` (Perl's false), ``{:n}`` the
    bytes from n on, ``{:n:m}`` m bytes from n, ``{#re}`` ``{##re}``
    ``{%re}`` ``{%%re}`` a prefix / suffix removed (``#`` and ``%``: made
    lazy with GNU's own make_regexp_ungreedy), ``{/re/s}`` ``{//re/s}``
    ``{/#re/s}`` ``{/%re/s}`` replaced by the literal s, ``{^re}`` ``{^^re}``
    ``{,re}`` ``{,,re}`` ASCII upper / lower case.
    """
    what = "{" + mod + "}"
    enc = _fsencode
    for key, kind, plain, _ in _plus_keys():
        m = plain.fullmatch(what) if kind and "(" in key else None
        if m is not None and kind is not None:
            op, groups = kind[4:], m.groups()
            break
    else:
        raise ValueError(f"unknown replacement modifier {mod!r}")
    if op == ":-":
        default = enc(groups[0])
        return lambda v: v if v not in (b"", b"0") else default
    if op == ":":
        start = int(groups[0])
        if len(groups) == 1:
            return lambda v: v[start:]
        end = start + int(groups[1])
        return lambda v: v[start:end]
    source = enc(groups[0])
    if op in ("/", "/#", "/%", "//"):
        to = enc(groups[1])
        pattern = _perl_regex(source, what)
        if op == "/#":
            rx = _compile(b"^" + pattern, what)
        elif op == "/%":
            rx = _compile(pattern + b"$", what)
        else:
            rx = _compile(pattern, what)
        count = 1 if op == "/" else 0
        return lambda v: rx.sub(lambda _m: to, v, count=count)
    if op in ("#", "%"):
        pattern = _perl_regex(_ungreedy(source), what)
    else:
        pattern = _perl_regex(source, what)
    if op == "#":
        rx = _compile(b"^" + pattern + b"(.*)", what)
        return lambda v: rx.sub(_group(1), v, count=1)
    if op == "##":
        rx = _compile(b"^" + pattern, what)
        return lambda v: rx.sub(b"", v, count=1)
    if op == "%":
        rx = _compile(b"(.*)" + pattern + b"$", what)
        return lambda v: rx.sub(_group(1), v, count=1)
    if op == "%%":
        rx = _compile(pattern + b"$", what)
        return lambda v: rx.sub(b"", v, count=1)
    anchored = b"^(" if op in ("^", ",") else b"("
    rx = _compile(anchored + pattern + b")", what)
    case = bytes.upper if op.startswith("^") else bytes.lower
    return lambda v: rx.sub(lambda m: case(m.group(1)), v, count=1 if len(op) == 1 else 0)


def _words(parts: Sequence[Part]) -> list[list[Part]]:
    """Split template parts into shell words at unquoted whitespace (no quotes here)."""
    words: list[list[Part]] = []
    current: list[Part] | None = None
    for part in parts:
        if isinstance(part, Repl):
            if current is None:
                current = []
                words.append(current)
            current.append(part)
            continue
        pieces = re.split(r"[ \t]+", part)
        for i, piece in enumerate(pieces):
            if i > 0:
                current = None  # whitespace ended the word
            if piece:
                if current is None:
                    current = []
                    words.append(current)
                current.append(piece)
    return words


class Template(_Record):
    """A parsed COMMAND: renders one job's shell text and, if possible, its argv.

    ``needs_shell`` is False when the command is a plain list of words; the job
    then runs as ``argv`` with no shell at all, and an argument can never be
    read as shell syntax. When a shell is needed, each replacement is quoted
    for the shell context it sits in (unquoted, ``'...'``, ``"..."``, ```...```,
    ``$(...)``, the script of ``sh -c``, ...): see :mod:`polytask._shellquote`.
    The quoting is planned once here (``plans`` for the shell text,
    ``argv_plans`` for argv, one per replacement in order); a job only runs
    the planned functions. A COMMAND without replacement strings gets ``{}``
    appended as a word of its own, as GNU parallel appends the arguments.
    """

    _fields = (
        "parts",
        "words",
        "has_repl",
        "needs_shell",
        "quoted",
        "plans",
        "argv_plans",
        "heredocs",
        "functions",
        "counts",
    )
    __slots__ = (*_fields, "_pieces", "_argv_emit", "_prefix")
    parts: tuple[Part, ...]
    words: tuple[tuple[Part, ...], ...]
    has_repl: bool
    needs_shell: bool
    quoted: bool
    plans: tuple[Plan, ...]
    argv_plans: tuple[Plan, ...]
    heredocs: tuple[HeredocCheck, ...]
    functions: frozenset[str]
    counts: tuple[int, int]  # jobs and job slots, for --plus' {##} {0#} {0%}
    _pieces: tuple[tuple[Part, Callable[[Sequence[str]], str] | None], ...]
    _argv_emit: tuple[Callable[[Sequence[str]], str] | None, ...]
    _prefix: list[str] | None  # argv before the inputs, when they are only appended

    def __init__(
        self,
        parts: tuple[Part, ...],
        words: tuple[tuple[Part, ...], ...],
        has_repl: bool,
        needs_shell: bool,
        quoted: bool = False,
        plans: tuple[Plan, ...] = (),
        argv_plans: tuple[Plan, ...] = (),
        heredocs: tuple[HeredocCheck, ...] = (),
        functions: frozenset[str] = frozenset(),
        counts: tuple[int, int] = (0, 0),
    ) -> None:
        self._set(
            functions=functions,
            counts=counts,
            parts=parts,
            words=words,
            has_repl=has_repl,
            needs_shell=needs_shell,
            quoted=quoted,
            plans=plans,
            argv_plans=argv_plans,
            heredocs=heredocs,
            # Each part of the shell text with the writer of its values (None: literal).
            _pieces=_pieces(parts, plans),
            # None: the value as it is (several values: several words).
            _argv_emit=tuple(None if p == _RAW else compile_plan(p) for p in argv_plans),
            _prefix=(
                ["".join(p for p in w if isinstance(p, str)) for w in words[:-1]]
                if not has_repl and argv_plans[-1:] == (_RAW,)
                else None
            ),
        )

    @classmethod
    def parse(
        cls,
        command: Sequence[str],
        *,
        quote: bool = False,
        shell: str = "sh",
        functions: frozenset[str] = frozenset(),
        append: bool = True,
        token: str = "{}",
        plus: bool = False,
        counts: tuple[int, int] = (0, 0),
    ) -> Template:
        """Parse the COMMAND words of the command line, for jobs run by ``shell``.

        ``functions`` are names the shell knows as commands (bash functions
        exported with ``export -f``): a COMMAND that starts with one needs it.
        ``append=False`` (``-N0``): no input is appended when there is no
        replacement string. ``token`` (``-I STR``) is written for ``{}``.
        ``plus`` (--plus): GNU's further replacement strings; ``counts`` the
        number of jobs and of job slots they may need (see :meth:`with_counts`).

        Like GNU parallel, the words are joined with spaces into one shell
        command line (so ``'a | b'`` and ``a '|' b`` mean the same); with
        ``quote`` (``-q``) each word stays one word and nothing is shell syntax.
        Raises :class:`QuotingError` (a ValueError) for a COMMAND that puts a
        replacement string where no quoting keeps an input data.
        """
        if quote:
            words = tuple(tuple(_split_parts(w, token, plus)) or ("",) for w in command)
            has = any(isinstance(p, Repl) for w in words for p in w)
            if append and not has and words:
                words += ((Repl("arg"),),)
            flat: list[Part] = []
            for i, w in enumerate(words):
                if i:
                    flat.append(" ")
                flat.extend(w)
            argv_plans = plan_argv([_tokens(w, start)[0] for w, start in _numbered(words)])
            return cls(
                tuple(flat),
                words,
                has,
                needs_shell=False,
                quoted=True,
                argv_plans=tuple(argv_plans[k] for k in range(len(argv_plans))),
                counts=counts,
            )
        text = " ".join(command)
        parts = tuple(_split_parts(text, token, plus))
        has = any(isinstance(p, Repl) for p in parts)
        if append and not has and _words(parts):  # (blanks only: no COMMAND, as none at all)
            parts += (" ", Repl("arg"))
        words_l = _words(parts)
        literal = "".join(p for p in parts if isinstance(p, str))
        needs = bool(_SHELL_CHARS.intersection(literal))
        if not needs and words_l:
            first = words_l[0]
            first_text = "".join(p for p in first if isinstance(p, str))
            if "=" in first_text or (
                len(first) == 1 and (first_text in _SHELL_WORDS or first_text in functions)
            ):
                needs = True
        toks, count = _tokens(parts)
        shell_plans, checks = plan_shell(toks, dialect(shell))
        word_plans: dict[int, Plan] = {}
        if not needs:
            word_plans = plan_argv([_tokens(w, start)[0] for w, start in _numbered(words_l)])
        return cls(
            parts,
            tuple(tuple(w) for w in words_l),
            has,
            needs_shell=needs,
            plans=tuple(shell_plans[k] for k in range(count)),
            argv_plans=tuple(word_plans[k] for k in range(len(word_plans))),
            heredocs=tuple(checks),
            functions=functions,
            counts=counts,
        )

    def with_counts(self, counts: tuple[int, int]) -> Template:
        """This template with the number of jobs and of job slots known ({##} {0#} {0%})."""
        values = dict(zip(self._fields, self._values(), strict=True), counts=counts)
        return type(self)(**values)

    def kinds(self) -> set[str]:
        """The kinds of replacement strings used (``"arg"``, ``"seq"``, ``"total"``, ...)."""
        return {p.kind for p in self.parts if isinstance(p, Repl)}

    @property
    def empty(self) -> bool:
        """True when no COMMAND was given: each job's arguments are the command."""
        return not self.words

    def source(self) -> str:
        """The COMMAND as given, replacement strings unexpanded (what a refused job logs)."""
        appended = not self.has_repl and self.parts[-1:] == (Repl("arg"),)
        parts = self.parts[:-2] if appended else self.parts
        return "".join(p.spelling() if isinstance(p, Repl) else p for p in parts)

    def shell_text(self, args: Sequence[str], seq: int, slot: int) -> str:
        """The job's command line for a POSIX shell, each input quoted for where it sits.

        Raises :class:`UnsafeInput` if an input cannot go where the COMMAND puts it.
        """
        if self.empty:
            return " ".join(plain(args))
        if self.quoted:
            argv = self.argv(args, seq, slot)
            assert argv is not None
            return " ".join(quote_word(w) for w in argv)
        if self.heredocs:
            emitted = [
                _emit(fn, part.values(args, seq, slot, self.counts))
                for part, fn in self._pieces
                if fn is not None and isinstance(part, Repl)
            ]
            _check_heredocs(self.heredocs, emitted)
            it = iter(emitted)
            return "".join(part if fn is None else next(it) for part, fn in self._pieces)  # type: ignore[misc]
        pieces = []
        for part, fn in self._pieces:
            values = None if fn is None else part.values(args, seq, slot, self.counts)  # type: ignore[union-attr]
            pieces.append(part if fn is None else _emit(fn, values))  # type: ignore[arg-type]
        return "".join(pieces)  # type: ignore[arg-type]

    def argv(self, args: Sequence[str], seq: int, slot: int) -> list[str] | None:
        """The job's argv when it can run without a shell, else None.

        Raises :class:`UnsafeInput` if an input cannot go where the COMMAND puts it.
        """
        if self.empty:
            line = " ".join(plain(args))
            if needs_shell(line) or not line.split() or line.split()[0] in self.functions:
                return None
            return line.split()
        if self.needs_shell:
            return None
        if self._prefix is not None:  # the common `gzip -9 ::: files`: no replacement string
            if NOARG not in args:  # -n0's marker is rare: no filter per job without it
                return [*self._prefix, *args]
            return [*self._prefix, *(a for a in args if a != NOARG)]
        out: list[str] = []
        emit = self._argv_emit
        k = 0
        for word in self.words:
            # A replacement with several values (``{}`` over several input
            # sources) splits its word, as the quoted shell text would:
            # pre'a' 'b'post. Each piece is kept if anything but NOARG went
            # into it, as GNU's shell text has nothing but a blank for one
            # (-n0 -m: x{}y over two is x y; {} alone is no word).
            current = [""]
            kept = [False]
            for part in word:
                if isinstance(part, Repl):
                    values = part.values(args, seq, slot, self.counts)
                    fn = emit[k]
                    k += 1
                    if not values:
                        continue  # a word of only inputs that do not exist is no word
                    if NOARG in values:
                        real = [v for v in values if v != NOARG]
                        if not real:
                            current.extend([""] * (len(values) - 1))
                            kept.extend([False] * (len(values) - 1))
                            continue
                        values = real
                    if fn is None:
                        current[-1] += values[0]
                        current.extend(values[1:])
                        kept[-1] = True
                        kept.extend([True] * (len(values) - 1))
                    else:
                        current[-1] += fn(values)
                        kept[-1] = True
                else:
                    current[-1] += part
                    kept[-1] = True
            out.extend(w for w, keep in zip(current, kept, strict=True) if keep)
        return out

    def max_index(self) -> int:
        """The highest ``{N}`` used (0 if none)."""
        return max((p.index or 0 for p in self.parts if isinstance(p, Repl)), default=0)


_GNU_PLAIN_RE = re.compile(r"[-_.+a-zA-Z0-9/]*")


def gnu_quote(text: str) -> str:
    """``text`` quoted for a POSIX shell as GNU parallel's ``Q`` quotes it (--shellquote).

    Left as it is when it holds only ``-_.+/``, ASCII letters and digits; else
    in ``'...'``, a ``'`` inside written ``'"'"'``, and the ``''`` this leaves
    at either end removed. The empty string is ``''``.
    """
    if text == "":
        return "''"
    if _GNU_PLAIN_RE.fullmatch(text):
        return text
    quoted = "'" + text.replace("'", "'\"'\"'") + "'"
    quoted = quoted.removeprefix("''")
    return quoted[:-2] if quoted.endswith("''") else quoted


def _emit(fn: Callable[[Sequence[str]], str], values: Sequence[str]) -> str:
    """Shell text of a replacement's values; a NOARG one writes nothing but the
    blank that separates it from the next value, as GNU parallel writes it."""
    if NOARG not in values:
        return fn(values)
    real = [v for v in values if v != NOARG]
    return fn(real) if real else " " * (len(values) - 1)


def _repeat_word(word: Sequence[Part], count: int) -> list[list[Part]]:
    """``word`` once per input, its ``{}``-like strings pointing at input 1, 2, ... (-X)."""
    if not any(isinstance(p, Repl) and p.kind == "arg" and p.index is None for p in word):
        return [list(word)]
    return [
        [
            Repl("arg", i, p.mod)
            if isinstance(p, Repl) and p.kind == "arg" and p.index is None
            else p
            for p in word
        ]
        for i in range(1, count + 1)
    ]


def _spell(parts: Iterable[Part], token: str = "{}") -> str:
    return "".join(
        (token if p == Repl("arg") else p.spelling()) if isinstance(p, Repl) else p for p in parts
    )


def context_command(
    command: Sequence[str],
    count: int,
    *,
    quote: bool = False,
    append: bool = True,
    token: str = "{}",
    plus: bool = False,
) -> list[str]:
    """The COMMAND words for a job of ``count`` inputs with context replace (``-X``, ``-N``).

    As GNU parallel: a word (split at blanks) that holds ``{}``, ``{.}``, ...
    is repeated once per input, each copy with that input (``x{}y`` over
    ``a b``: ``xay xby``); ``{1}``, ``{#}`` and the other words stay as they
    are. With no replacement string (and ``append``) the inputs are appended.
    The result is a COMMAND like any other: parsed, and quoted where each
    copy sits, by :meth:`Template.parse`.
    """
    if quote:
        out: list[str] = []
        words = [_split_parts(w, token, plus) for w in command]
        if append and not any(isinstance(p, Repl) for w in words for p in w):
            words.append([Repl("arg")])
        for w in words:
            out.extend(_spell(copy, token) for copy in _repeat_word(w, count))
        return out
    parts: list[Part] = _split_parts(" ".join(command), token, plus)
    if append and command and not any(isinstance(p, Repl) for p in parts):
        parts += [" ", Repl("arg")]
    # Words and the blanks between them, the blanks kept as they are.
    pieces: list[list[Part] | str] = []
    for part in parts:
        if isinstance(part, Repl):
            if not pieces or isinstance(pieces[-1], str):
                pieces.append([])
            pieces[-1].append(part)  # type: ignore[union-attr]
            continue
        for chunk in re.split(r"([ \t]+)", part):
            if not chunk:
                continue
            if chunk.strip(" \t") == "":
                pieces.append(chunk)
            elif pieces and isinstance(pieces[-1], list):
                pieces[-1].append(chunk)
            else:
                pieces.append([chunk])
    text = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
        else:
            text.append(" ".join(_spell(copy, token) for copy in _repeat_word(piece, count)))
    return ["".join(text)]


def perl_expression(text: str) -> str | None:
    """The first ``{= perl =}`` replacement string in ``text``, if any (they cannot be run)."""
    m = _PERL_RE.search(text)
    return m.group(0) if m else None


_RAW: Plan = (False, ("raw",))


def _pieces(
    parts: Sequence[Part], plans: Sequence[Plan]
) -> tuple[tuple[Part, Callable[[Sequence[str]], str] | None], ...]:
    if not plans:  # -q (no shell text of its own), or no replacement string at all (-N0, --pipe)
        return tuple((p, None) for p in parts if isinstance(p, str))
    writers = iter([compile_plan(p) for p in plans])
    return tuple((p, next(writers) if isinstance(p, Repl) else None) for p in parts)


def _tokens(parts: Sequence[Part], start: int = 0) -> tuple[list[str | int], int]:
    """Characters and replacement numbers (from ``start``) for the quoting lexer; and the count."""
    toks: list[str | int] = []
    k = start
    for part in parts:
        if isinstance(part, Repl):
            toks.append(k)
            k += 1
        else:
            toks.extend(part)
    return toks, k - start


def _numbered(words: Sequence[Sequence[Part]]) -> list[tuple[Sequence[Part], int]]:
    """Each word with the number of its first replacement (they count across words)."""
    out = []
    k = 0
    for w in words:
        out.append((w, k))
        k += sum(isinstance(p, Repl) for p in w)
    return out


def _check_heredocs(checks: Sequence[HeredocCheck], emitted: Sequence[str]) -> None:
    for segments, delim, strip in checks:
        body = "".join(s if isinstance(s, str) else emitted[s] for s in segments)
        for line in body.split("\n"):
            if (line.lstrip("\t") if strip else line) == delim:
                raise UnsafeInput(
                    f"an input would put the line {delim!r} into a here-document and end it early"
                )


def exported_functions(environ: dict[str, str] | Any) -> frozenset[str]:
    """Names of the bash functions in an environment (``export -f``: ``BASH_FUNC_name%%``)."""
    return frozenset(
        k[10:-2] for k in environ if k.startswith("BASH_FUNC_") and k.endswith("%%") and len(k) > 12
    )


def needs_shell(line: str) -> bool:
    """Whether a command line (no replacement strings) needs a shell to run."""
    if _SHELL_CHARS.intersection(line):
        return True
    words = line.split()
    return bool(words) and ("=" in words[0] or words[0] in _SHELL_WORDS)


# --------------------------------------------------------------------------- option values


def parse_jobs(spec: str, ncpu: int) -> int | None:
    """``-j`` value: ``N``, ``N%`` of the CPU cores, ``+N``/``-N`` cores; ``0`` = no limit (None).

    Raises ValueError with a message that says what is accepted.
    """
    s = spec.strip()
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if pct <= 0 or not math.isfinite(pct):
                raise ValueError
            # Rounded up, as GNU parallel: 75% of 2 cores is 2 job slots.
            return max(1, math.ceil(ncpu * pct / 100))
        if s[:1] in ("+", "-"):
            return max(1, ncpu + int(s))
        n = int(s)
        if n < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"-j {spec!r}: not a number of jobs (use N, N% of the CPU cores, +N, -N, or 0 for no limit)"
        ) from None
    return None if n == 0 else n


#: GNU parallel's smallest --load: 0 (or less) means this.
MIN_LOAD = 0.01


def parse_load(spec: str, ncpu: int) -> float:
    """``--load`` value, as GNU parallel reads it: ``N`` (``2.5`` too), ``N%`` of the CPU
    cores, ``+N`` / ``-N`` cores; anything under 0.01 (``0``, ``-8`` on 4 cores) is 0.01.

    Raises ValueError saying what is accepted (GNU parallel also takes the name
    of a file holding the value; polytask does not).
    """
    s = spec.strip()
    try:
        if s.endswith("%"):
            if not s[:-1].isdigit():
                raise ValueError
            load = ncpu * int(s[:-1]) / 100
        elif s[:1] in ("+", "-"):
            if not s[1:].isdigit():
                raise ValueError
            load = float(ncpu + int(s))
        else:
            load = float(s)
            if not math.isfinite(load) or load < 0 or not s.replace(".", "", 1).isdigit():
                raise ValueError
    except ValueError:
        raise ValueError(
            f"--load {spec!r}: not a load (use N, N.N, N% of the CPU cores, +N or -N cores; "
            "a job starts only while fewer processes than that are running or waiting "
            "for the disk)"
        ) from None
    return max(load, MIN_LOAD)


def instant_load(proc_stat: str) -> int:
    """GNU parallel's load: processes running or waiting for the disk right now.

    GNU parallel counts the lines of ``ps axH`` in state R or D (less one for
    ps itself); the kernel keeps the same counts in ``/proc/stat``
    (``procs_running``, ``procs_blocked``): less one for the reader, which is
    running while it reads.
    """
    running = blocked = 0
    for line in proc_stat.splitlines():
        if line.startswith("procs_running "):
            running = int(line.split()[1])
        elif line.startswith("procs_blocked "):
            blocked = int(line.split()[1])
    return max(0, running + blocked - 1)


def meminfo(text: str) -> tuple[int, int]:
    """(MemAvailable, MemTotal) in bytes from ``/proc/meminfo``'s text.

    MemAvailable is the kernel's estimate of what can be allocated without
    swapping (free memory plus the caches it can drop); on a kernel before
    3.14, which lacks it, GNU parallel's sum MemFree + Buffers + Cached +
    SwapCached stands in.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            fields[name] = int(words[0]) * (1024 if words[1:2] == ["kB"] else 1)
    total = fields.get("MemTotal", 0)
    if "MemAvailable" in fields:
        return fields["MemAvailable"], total
    return sum(fields.get(n, 0) for n in ("MemFree", "Buffers", "Cached", "SwapCached")), total


def memfree_victim(available: int, limit: int, running: Iterable[int]) -> int | None:
    """``--memfree``: the job to kill now, or None.

    As GNU parallel: when less than half of ``limit`` bytes are available,
    the youngest running job (the highest job number of ``running``) is killed
    and queued again; one at a time, the memory read again after each.
    """
    if available * 2 >= limit:
        return None
    return max(running, default=None)


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw]?)")


def parse_duration(
    spec: str, *, option: str = "--timeout", percent: bool = True
) -> tuple[float, bool]:
    """A ``--timeout`` value: seconds (``30``, ``1.5``, ``1h30m``, ``2d``) or ``N%``.

    Returns ``(value, is_percent)``: seconds, or the percentage of the median
    runtime of the successful jobs so far (GNU parallel's dynamic timeout). Zero,
    in any spelling, is 0.0: ``--timeout 0`` is no limit and ``--delay 0`` no
    delay, as in GNU parallel. ``percent=False`` (``--delay``, which GNU parallel
    documents as a duration only) refuses ``N%``: it was taken for N seconds.
    """
    s = spec.strip()
    durations = "seconds like 30 or 1.5, or units like 2m or 1h30m"
    if s.endswith("%") and not percent:
        raise ValueError(
            f"{option} {spec!r}: a percent is not a duration here (N% is --timeout's, "
            f"a share of the median job runtime); give {durations}"
        )
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if pct < 0 or s.startswith("-") or not math.isfinite(pct):
                raise ValueError
            return pct, True
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(s):
            if m.start() != pos:
                raise ValueError
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError
    except ValueError:
        also = ", or N% of the median job runtime" if percent else ""
        raise ValueError(f"{option} {spec!r}: not a duration (use {durations}{also})") from None
    return total, False


class HaltPolicy(_Record):
    """``--halt when,what=N|N%``: when to stop, and which exit status to give."""

    _fields = ("when", "what", "count", "pct")
    __slots__ = _fields
    when: str  # "never" | "soon" | "now"
    what: str  # "fail" | "success" | "done"
    count: int | None
    pct: float | None

    def __init__(
        self,
        when: str = "never",
        what: str = "fail",
        count: int | None = None,
        pct: float | None = None,
    ) -> None:
        self._set(when=when, what=what, count=count, pct=pct)

    @classmethod
    def parse(cls, spec: str) -> HaltPolicy:
        """Parse ``now,fail=1``, ``soon,fail=3``, ``now,success=50%``, ``never``, 0/1/2."""
        s = spec.strip()
        legacy = {"0": cls(), "1": cls("soon", "fail", 1), "2": cls("now", "fail", 1)}
        if s in legacy:
            return legacy[s]
        if s == "never":
            return cls()
        m = re.fullmatch(r"(now|soon),(fail|success|done)=(\d+(?:\.\d+)?)(%?)", s)
        if m is None:
            raise ValueError(
                f"--halt {spec!r}: expected WHEN,WHAT=N or WHEN,WHAT=N% with WHEN now or "
                "soon and WHAT fail, success or done (e.g. now,fail=1 or soon,fail=3)"
            )
        when, what, num, pct = m.groups()
        if pct:
            p = float(num)
            if not 0 < p <= 100:
                raise ValueError(f"--halt {spec!r}: the percentage must be in (0, 100]")
            return cls(when, what, None, p / 100)
        if "." in num or int(num) < 1:
            raise ValueError(f"--halt {spec!r}: the count must be a whole number >= 1")
        return cls(when, what, int(num), None)

    @property
    def active(self) -> bool:
        return self.when != "never"

    def triggered(self, *, failed: int, succeeded: int, total: int | None) -> bool:
        """Whether the halt condition is met after a job finished."""
        if not self.active:
            return False
        n = {"fail": failed, "success": succeeded, "done": failed + succeeded}[self.what]
        return self.reached(n, total)

    def reached(self, n: int, total: int | None) -> bool:
        """Whether ``n`` jobs of the kind counted (failed, succeeded, done) meet the limit."""
        if not self.active:
            return False
        if self.count is not None:
            return n >= self.count
        assert self.pct is not None
        if not total:
            return False
        return n >= total * self.pct

    def exit_status(
        self, *, failed: int, started: int, total: int | None, exitval: int, signal: int
    ) -> int:
        """GNU parallel's exit status once the halt triggered on a job (exitval, signal)."""
        if self.what == "success":
            return 0
        if self.pct is not None:
            return math.ceil(failed / (total or started or 1) * 100)
        if self.count == 1:
            # GNU parallel gives the failing job's own status (signal + 128).
            status = exitval or (signal + 128 if signal else 0)
            return status & 0xFF
        return min(failed, 101)


def exit_status(failed: int) -> int:
    """GNU parallel's exit status with no halt: the number of failed jobs, 101 for more than 100."""
    return min(failed, 101)


# --------------------------------------------------------------------------- joblog

#: The first line of a joblog (GNU parallel's columns, tab-separated).
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
_JOBLOG_COLUMNS = JOBLOG_HEADER.rstrip("\n").split("\t")


class JoblogEntry(_Record):
    """One line of a joblog."""

    _fields = (
        "seq",
        "host",
        "starttime",
        "runtime",
        "send",
        "receive",
        "exitval",
        "signal",
        "command",
    )
    __slots__ = _fields
    seq: int
    host: str
    starttime: float
    runtime: float
    send: int
    receive: int
    exitval: int
    signal: int
    command: str

    def __init__(
        self,
        seq: int,
        host: str,
        starttime: float,
        runtime: float,
        send: int,
        receive: int,
        exitval: int,
        signal: int,
        command: str,
    ) -> None:
        self._set(
            seq=seq,
            host=host,
            starttime=starttime,
            runtime=runtime,
            send=send,
            receive=receive,
            exitval=exitval,
            signal=signal,
            command=command,
        )

    @property
    def failed(self) -> bool:
        return self.exitval != 0 or self.signal != 0


def joblog_line(
    seq: int,
    starttime: float,
    runtime: float,
    send: int,
    receive: int,
    exitval: int,
    signal: int,
    command: str,
    host: str = ":",
) -> str:
    """One joblog line, formatted as GNU parallel does (``%.3f`` and ``%10.3f``)."""
    # A newline would break the one-line-per-job format: GNU parallel writes \\0.
    command = command.replace("\n", "\0")
    return (
        f"{seq}\t{host}\t{starttime:.3f}\t{runtime:10.3f}\t{send}\t{receive}"
        f"\t{exitval}\t{signal}\t{command}\n"
    )


def parse_joblog(text: str) -> list[JoblogEntry]:
    """Parse a joblog; raises ValueError naming the first malformed line."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line.split("\t") == _JOBLOG_COLUMNS:
            continue
        cols = line.split("\t", 8)
        try:
            if len(cols) != 9:
                raise ValueError
            entries.append(
                JoblogEntry(
                    int(cols[0]),
                    cols[1],
                    float(cols[2]),
                    float(cols[3]),
                    int(cols[4]),
                    int(cols[5]),
                    int(cols[6]),
                    int(cols[7]),
                    cols[8],
                )
            )
        except ValueError:
            raise ValueError(
                f"joblog line {lineno} is not in GNU parallel's format: {line!r}"
            ) from None
    return entries


def resume_skip(entries: Iterable[JoblogEntry], *, failed_too: bool) -> set[int]:
    """Job numbers to skip on ``--resume`` (every logged job) or ``--resume-failed``.

    With ``failed_too`` a job is skipped only if its last logged run succeeded.
    """
    last: dict[int, JoblogEntry] = {}
    for e in entries:
        last[e.seq] = e
    if not failed_too:
        return set(last)
    return {seq for seq, e in last.items() if not e.failed}


def joblog_command(command: str) -> str:
    """A command line as its joblog line's Command column holds it (newlines as NUL)."""
    return command.replace("\n", "\0")


class ResumeIndex:
    """Which jobs ``--resume`` / ``--resume-failed`` skip, keyed on each job's command line.

    GNU parallel matches a job with the joblog by its number alone, so after
    inputs were reordered or added it skips the wrong jobs. Here a job is
    identified by its final command line (the joblog's Command column, as
    :func:`joblog_command` writes it), and a job number only tells apart
    identical command lines:

    1. a logged (number, command) pair equal to the job's own is that job
       (with the same inputs in the same order, exactly GNU's choice);
    2. else a logged pair of the same command whose number went by already
       (the command moved later), the lowest first;
    3. else one whose number is still to come, but only when the log has
       another command at this job's number (the inputs changed here): with
       no line at this number the log may simply not have reached it, and
       the later pair is then most likely that later job's own;
    4. else the job is not in the log: it runs.

    Each logged pair stands for one job (its last line counts, as GNU's last
    line of a number), so a command given k times is k jobs and at most as
    many are skipped as the log holds. One exception, so that a job run again
    at a new number is not counted twice: a line whose pair is new, at a
    number the log already holds for another command (the inputs changed), of
    a command with a pair whose last line failed, is taken for that job run
    again (``--resume-failed`` after a reorder), not for one more job.
    ``--resume`` skips a job matched with any pair; ``--resume-failed`` one
    matched with a pair whose last line succeeded. ``by_seq``: GNU's rule (the
    number alone), for jobs whose command line does not tell them apart
    (``--pipe`` blocks) or depends on the moment they start (``{%}``).
    """

    def __init__(
        self, entries: Iterable[JoblogEntry], *, failed_too: bool, by_seq: bool = False
    ) -> None:
        self.failed_too = failed_too
        self.by_seq = by_seq
        jobs: dict[str, dict[int, JoblogEntry]] = {}  # command -> its pairs' last lines
        commands_at: dict[int, set[str]] = {}  # seq -> the commands logged with it
        for e in entries:
            command = "" if by_seq else e.command
            mine = jobs.setdefault(command, {})
            at = commands_at.setdefault(e.seq, set())
            if e.seq not in mine and at - {command}:
                failed = [seq for seq, old in mine.items() if old.failed]
                if failed:
                    del mine[min(failed)]  # that job, run again at a new number
            mine[e.seq] = e
            at.add(command)
        self._last = {(seq, c): e for c, mine in jobs.items() for seq, e in mine.items()}
        self._seqs = set(commands_at)
        # command -> the numbers of its pairs not yet matched with a job, and the
        # same sorted with a cursor at the lowest maybe-unmatched one: a command
        # given 100,000 times (-n0) costs O(1) a job, not a scan.
        self._free: dict[str, set[int]] = {}
        self._order: dict[str, tuple[list[int], list[int]]] = {}
        if not by_seq:
            for c, mine in jobs.items():
                self._free[c] = set(mine)
                self._order[c] = (sorted(mine), [0])

    def _lowest(self, command: str, free: set[int]) -> int | None:
        order, cursor = self._order[command]
        i = cursor[0]
        while i < len(order) and order[i] not in free:
            i += 1
        cursor[0] = i
        return order[i] if i < len(order) else None

    def _claim(self, seq: int, command: str) -> JoblogEntry | None:
        if self.by_seq:
            return self._last.pop((seq, ""), None)
        free = self._free.get(command)
        if not free:
            return None
        if seq in free:
            pick = seq
        else:
            lowest = self._lowest(command, free)
            if lowest is None or not (lowest < seq or seq in self._seqs):
                return None
            pick = lowest
        free.discard(pick)
        return self._last[(pick, command)]

    def skip(self, seq: int, command: str) -> bool:
        """True if job ``seq`` with the final command line ``command`` is not to run again.

        Call once per job, in job order: a pair matched with one job is not
        matched again.
        """
        entry = self._claim(seq, "" if self.by_seq else joblog_command(command))
        if entry is None:
            return False
        return not (self.failed_too and entry.failed)


#: GNU parallel's --termseq when none is given.
DEFAULT_TERMSEQ = "TERM,200,TERM,100,TERM,50,KILL,25"


def parse_termseq(text: str) -> tuple[tuple[int, float], ...]:
    """``--termseq SIG,MS,SIG,MS,...``: (signal number, seconds) pairs, as GNU parallel reads it.

    A signal is a name (``TERM``, ``SIGTERM``) or a number; a wait is in
    milliseconds; the last signal may go without its wait (0). Raises
    ValueError saying what is wrong.
    """
    import signal as _signal

    words = [w.strip() for w in text.split(",")]
    if not text.strip() or "" in words:
        raise ValueError(
            f"--termseq {text!r}: expected SIGNAL,MS,SIGNAL,MS,... e.g. {DEFAULT_TERMSEQ}"
        )
    steps: list[tuple[int, float]] = []
    for i in range(0, len(words), 2):
        name = words[i]
        if name.isdigit():
            try:
                sig = int(_signal.Signals(int(name)))
            except ValueError:
                raise ValueError(f"--termseq {text!r}: {name} is not a signal number") from None
        else:
            upper = name.upper()
            upper = upper if upper.startswith("SIG") else "SIG" + upper
            try:
                sig = int(_signal.Signals[upper])
            except KeyError:
                raise ValueError(
                    f"--termseq {text!r}: {name!r} is not a signal name (TERM, INT, HUP, KILL, ...)"
                ) from None
        wait = words[i + 1] if i + 1 < len(words) else "0"
        try:
            ms = float(wait)
        except ValueError:
            ms = -1.0
        if not ms >= 0 or ms == float("inf"):
            raise ValueError(f"--termseq {text!r}: {wait!r} is not a wait in milliseconds")
        steps.append((sig, ms / 1000))
    return tuple(steps)


def retry_commands(entries: Iterable[JoblogEntry]) -> tuple[list[str], set[int]]:
    """``--retry-failed``: the command of each job number 1..max, and the numbers to skip.

    GNU parallel's rule: a job number with a successful line anywhere in the
    log is skipped; otherwise its last line's command runs again (the NULs
    that stand for newlines in the log become newlines again). A number with
    no line at all gets an empty command, as GNU parallel's.
    """
    commands: dict[int, str] = {}
    skip: set[int] = set()
    for e in entries:
        commands[e.seq] = e.command.replace("\0", "\n")
        if not e.failed:
            skip.add(e.seq)
    top = max(commands, default=0)
    return [commands.get(seq, "") for seq in range(1, top + 1)], skip


# --------------------------------------------------------------------------- results


#: The longest file name, in bytes, on the file systems Linux uses (NAME_MAX).
NAME_MAX = 255
#: Hex digits of the hash that ends a shortened name (64 bits).
_HASH_HEX = 16


def _escape_dirname(value: str) -> str:
    s = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0").replace("/", "\\_")
    # GNU parallel would write "" / "." / ".." as they are, which lands in the
    # wrong directory; a lone backslash cannot come from the escaping above.
    if s in ("", ".", ".."):
        s = "\\" + s
    return s


def _fit_name(name: str, name_max: int) -> str:
    """``name`` if it fits in ``name_max`` bytes, else a prefix of it + ``\\#`` + a hash of all of it.

    GNU parallel cuts a long name at the limit, so that two inputs that
    start alike share one directory and one's results overwrite the
    other's. The hash keeps them apart, and ``\\#`` cannot come out of
    :func:`_escape_dirname` (every backslash it writes starts a pair: ``\\\\``,
    ``\\t``, ``\\0``, ``\\_``), so a shortened name never equals a whole one.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= name_max:
        return name
    import hashlib  # only for long names: not on the start-up path

    digest = hashlib.sha256(raw).hexdigest()[:_HASH_HEX]
    cut = max(0, name_max - 2 - _HASH_HEX)
    while 0 < cut < len(raw) and 0x80 <= raw[cut] < 0xC0:
        cut -= 1  # not inside a UTF-8 character
    prefix = raw[:cut].decode("utf-8", "surrogateescape")
    # Cut between escape pairs, never inside one: an odd run of backslashes at
    # the end means the last one began a pair.
    trailing = len(prefix) - len(prefix.rstrip("\\"))
    if trailing % 2:
        prefix = prefix[:-1]
    return prefix + "\\#" + digest


def results_dir(
    root: str, args: Sequence[str], name_max: int = NAME_MAX, names: Sequence[str] = ()
) -> str:
    """``--results`` directory of one job: ``root/1/<arg1>/2/<arg2>``, as GNU parallel.

    Each ``<arg>`` is escaped (``\\`` ``\\t`` ``\\0``, ``/`` as ``\\_``); one longer than
    ``name_max`` bytes is shortened to a prefix, ``\\#`` and a hash of the whole
    name, so that no input's results are lost to ENAMETOOLONG or shared with another's.
    """
    parts = [root.rstrip("/") or "/"]
    for i, a in enumerate(args, 1):
        # With --header :, each source is named by its header, not numbered.
        label = _fit_name(_escape_dirname(names[i - 1]), name_max) if i <= len(names) else str(i)
        parts += [label, _fit_name(_escape_dirname(a), name_max)]
    return "/".join(parts)


# --------------------------------------------------------------------------- raw text


def render_raw(
    text: str,
    args: Sequence[str],
    seq: int,
    slot: int,
    token: str = "{}",
    *,
    plus: bool = False,
    counts: tuple[int, int] = (0, 0),
) -> str:
    """``text`` with its replacement strings as the plain values, unquoted.

    For what no shell reads: ``--tagstring`` and the paths of ``--results``.
    """
    return "".join(
        " ".join(plain(p.values(args, seq, slot, counts))) if isinstance(p, Repl) else p
        for p in _parts_of(text, token, plus)
    )


@functools.lru_cache(maxsize=32)
def _parts_of(text: str, token: str, plus: bool) -> tuple[Part, ...]:
    # render_raw runs for every job (--tagstring): parse each text once.
    return tuple(_split_parts(text, token, plus))


def has_replacement(text: str, token: str = "{}", *, plus: bool = False) -> bool:
    """Whether ``text`` holds a replacement string."""
    return any(isinstance(p, Repl) for p in _split_parts(text, token, plus))


def replacement_kinds(texts: Iterable[str], token: str = "{}", *, plus: bool = False) -> set[str]:
    """The kinds of replacement strings in ``texts`` (see :class:`Repl`).

    Raises :class:`QuotingError` for a --plus string that is refused.
    """
    return {
        p.kind for text in texts for p in _split_parts(text, token, plus) if isinstance(p, Repl)
    }


# --------------------------------------------------------------------------- --results FILE.csv

#: The columns of ``--results FILE.csv|.tsv|.json`` before the inputs, as GNU parallel.
RESULT_COLUMNS = ("Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal")
_CSV_SPECIAL = re.compile(r"[\s\0]")


def results_format(path: str) -> str | None:
    """``"csv"``, ``"tsv"`` or ``"json"`` for a --results FILE of that kind, else None (a directory)."""
    for kind in ("csv", "tsv", "json"):
        if path.lower().endswith("." + kind):
            return kind
    return None


def _csv_field(value: str, sep: str) -> str:
    # GNU parallel's combine_ref: quoted when it holds a quote, a blank, the separator or NUL.
    quoted = '"' in value or sep in value or _CSV_SPECIAL.search(value) is not None
    value = value.replace('"', '""')
    return f'"{value}"' if quoted else value


def csv_header(names: Sequence[str], sep: str) -> str:
    """The first line of a --results CSV/TSV file: the columns, the inputs named ``names``."""
    cols = (*RESULT_COLUMNS, "Command", *names, "Stdout", "Stderr")
    return sep.join(_csv_field(c, sep) for c in cols) + "\n"


def result_record(
    kind: str,
    *,
    seq: int,
    starttime: float,
    runtime: float,
    receive: int,
    exitval: int,
    signal: int,
    command: str,
    args: Sequence[str],
    stdout: str,
    stderr: str,
    host: str = ":",
) -> str:
    """One job's line of a --results CSV, TSV or JSON file, exactly as GNU parallel writes it."""
    head = [str(seq), host, f"{starttime:.3f}", f"{runtime:.3f}", "0", str(receive)]
    head += [str(exitval), str(signal)]
    if kind == "json":
        values = ",".join(f'"{_json(a)}"' for a in args)
        return (
            f'{{ "Seq": {seq}, "Host": "{_json(host)}", "Starttime": {head[2]}, '
            f'"JobRuntime": {head[3]}, "Send": 0, "Receive": {receive}, '
            f'"Exitval": {exitval}, "Signal": {signal}, "Command": "{_json(command)}", '
            f'"V": [ {values} ], "Stdout": "{_json(stdout)}", "Stderr": "{_json(stderr)}" }}\n'
        )
    sep = "," if kind == "csv" else "\t"
    fields = [*head, command, *args, stdout, stderr]
    return sep.join(_csv_field(f, sep) for f in fields) + "\n"


def _json(value: str) -> str:
    value = value.replace("\\", "\\\\").replace('"', '\\"')
    return re.sub(r"[\x00-\x1f]", lambda m: f"\\u{ord(m.group()):04x}", value)


# --------------------------------------------------------------------------- --pipe

#: GNU parallel's largest --block for --pipe (2 GiB - 1; Perl had trouble above).
MAX_BLOCK = 2**31 - 1
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpKMGTP]i?|[KMGTP]I)?")
_SIZE_UNITS = {"k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}


def parse_size(spec: str, *, option: str = "--block") -> int:
    """A size as GNU parallel reads it: ``1M`` = 2**20, ``1k`` = 1000, ``1Ki`` = ``1ki`` = 1024.

    Upper-case units and those ending in ``i`` are binary, lower-case ones
    decimal (GNU's multiply_binary_prefix). A leading ``-`` is kept
    (``--pipepart --block -N``: N parts per job slot). Raises ValueError.
    """
    s = spec.strip()
    sign = -1 if s.startswith("-") else 1
    m = _SIZE_RE.fullmatch(s.lstrip("-+"))
    if m is None:
        raise ValueError(
            f"{option} {spec!r}: not a size (use bytes, or a number with k, M, G: "
            "1M = 1048576, 1k = 1000, 1Ki = 1024)"
        )
    size = float(m.group(1)) * _unit_factor(m.group(2) or "")
    if math.isinf(size):
        raise ValueError(f"{option} {spec!r}: too big (at most {sys.maxsize} bytes)")
    return sign * int(min(size, sys.maxsize))


def _unit_factor(unit: str) -> int:
    """What a unit of :func:`parse_size` multiplies by (``''``: 1)."""
    if not unit:
        return 1
    if unit[-1] in "iI" or unit[0].isupper():
        return int(1024 ** ("KMGTP".index(unit[0].upper()) + 1))
    return _SIZE_UNITS[unit]


_COUNT_RE = re.compile(r"([-+]?)" + _SIZE_RE.pattern)


def parse_count(spec: str, *, option: str) -> float:
    """-n, -N or -L's count as GNU parallel reads it: a number, with --block's units.

    ``1k`` = 1000, ``1K`` = ``1Ki`` = 1024 (GNU's multiply_binary_prefix, as
    for sizes). The number as written: the caller says what a fraction or a
    negative count means. Raises ValueError.
    """
    m = _COUNT_RE.fullmatch(spec.strip())
    if m is None:
        raise ValueError(
            f"{option} {spec!r}: not a number (a count, or a count with k, K, M, ...: "
            "1k = 1000, 1K = 1024)"
        )
    return (-1 if m.group(1) == "-" else 1) * float(m.group(2)) * _unit_factor(m.group(3) or "")


def perl_split(rx: re.Pattern[str], text: str) -> list[str]:
    """``split /rx/, text, -1`` as Perl splits (GNU parallel's --colsep).

    Python's ``re.split`` also cuts at an empty match at the start and right
    after a match; Perl does not (``--colsep '|'`` cuts ``a|b`` into ``a``
    ``|`` ``b``, with no empty column first).
    """
    fields: list[str] = []
    start = end = 0
    for m in rx.finditer(text):
        b, e = m.span()
        if b == e and b in (0, end):  # empty, at the start or just after a match
            continue
        fields.append(text[start:b])
        fields.extend(g or "" for g in m.groups())
        start = end = e
    fields.append(text[start:])
    return fields


def unquote_printf(text: str) -> str:
    """``-d`` and ``--tagstring`` as GNU parallel reads them (its ``unquote_printf``).

    In GNU's order: ``\\t`` ``\\n`` ``\\r``, then ``\\NNN`` and ``\\N`` as Perl
    reads them in a string (octal: ``\\033`` is ESC, ``\\0`` NUL; the octal digits
    stop at an 8 or 9, and ``\\8`` is an 8). Anything else stays as it is.
    """

    def octal(m: re.Match[str]) -> str:
        digits = m.group(1)
        n = len(digits) - len(digits.lstrip("01234567"))
        return (chr(int(digits[:n], 8)) if n else "") + digits[n:]

    text = text.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")
    # Two passes, as GNU: a backslash that \NNN wrote (\134) may start a \N
    # (\1341 is chr(1)).
    text = re.sub(r"\\([0-9][0-9][0-9])", octal, text)
    return re.sub(r"\\([0-9])", octal, text)


def unescape_record(text: str) -> bytes:
    """--recstart/--recend as GNU parallel reads them without --regexp: ``\\n \\t \\r \\0 \\' \\" \\\\``."""
    escapes = {"0": "\0", "r": "\r", "n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
    out = re.sub(r"\\([0rnt'\"\\])", lambda m: escapes[m.group(1)], text)
    return _fsencode(out)


def _fsencode(text: str) -> bytes:
    """``os.fsencode`` without importing os here (the spec does no I/O)."""
    return text.encode("utf-8", "surrogateescape")


def header_regex(spec: str) -> re.Pattern[bytes]:
    """--header under --pipe: a regex matched at the start of the input, or N lines (``:`` = 1)."""
    if spec == ":":
        spec = "1"
    pattern = "(?:.*\n)" * int(spec) if spec.isdigit() else spec
    try:
        return re.compile(_fsencode(pattern))
    except re.error as exc:
        raise ValueError(f"--header {spec!r}: not a regular expression: {exc}") from None


class PipeSplitter:
    """GNU parallel's ``--pipe``: stdin cut into blocks of whole records, as it cuts them.

    No I/O: the caller reads at most :meth:`wanted` bytes, hands them to
    :meth:`feed` (``b""`` at the end of the input) and takes the finished
    blocks from :attr:`ready`. Like GNU parallel (20221122, ``spreadstdin``),
    the input is read a round at a time, up to the next multiple of the
    block size; after each round the buffer is cut at the last record
    boundary (``recend`` followed by ``recstart``), or after every ``-N``
    records, or at the last whole ``-L`` lines; what follows waits for the
    next round. A round that cut nothing (a record longer than the block)
    grows the block by 30 % and says so in :attr:`warnings`. So the same
    input gives the same blocks as GNU parallel, and at most about two
    blocks are ever held here.

    ``recstart``/``recend`` are bytes, or with ``regexp`` Python regular
    expressions (GNU: Perl's), matched with MULTILINE as GNU does.
    """

    def __init__(
        self,
        *,
        block: int = 1 << 20,
        recstart: bytes = b"",
        recend: bytes = b"\n",
        regexp: bool = False,
        records: int | None = None,
        lines: int | None = None,
        header: re.Pattern[bytes] | None = None,
        skip_blank: bool = False,
    ) -> None:
        if block < 1:
            raise ValueError(f"--block {block}: must be at least 1 byte")
        self.block = min(block, MAX_BLOCK)
        self.recstart = recstart
        self.recend = recend
        self.regexp = regexp
        self.records = records or None
        self.lines = lines or None
        self.skip_blank = skip_blank
        self._header_re = header
        self.header = b""
        self.eof = False
        #: Finished blocks: read-only views of the buffer they were cut from (no
        #: copy); the buffer is replaced, never changed, once a block was cut.
        self.ready: deque[memoryview] = deque()
        self.warnings: list[str] = []
        self._buf = bytearray()
        self._target = 0  # the buffer length that ends this round
        self._garbage_done = False
        if regexp:
            rs = b"(?:" + (recstart or b"") + b")"
            re_ = b"(?:" + (recend if recend or recstart else b"(?s:.)") + b")"
            self._last = re.compile(b"(?s)(.*" + re_ + b")" + rs, re.M)
            self._garbage = re.compile(
                b"((?:(?:(?!" + re_ + rs + b")(?s:.))*?" + re_ + b"))(?=" + rs + b")", re.M
            )
            n = (self.records or 1) * (self.lines or 1)
            # N records from here: (recstart, anything but recend+recstart, recend){N}.
            record = b"".join([rs, b"(?:(?!", re_, rs, b")(?s:.))*?", re_])
            self._nrec = re.compile(b"((?:%s){%d})(?=%s)" % (record, n, rs), re.M)
        self._sep = recend + recstart
        self._new_round()

    def _new_round(self) -> None:
        if self._header_re is not None:
            # GNU reads a block at a time until the header matches.
            self._target = len(self._buf) + self.block
        else:
            self._target = len(self._buf) + self.block - len(self._buf) % self.block

    def wanted(self) -> int:
        """How many bytes to read next (at most)."""
        return max(1, self._target - len(self._buf))

    def feed(self, data: bytes) -> None:
        """Bytes read from the input; ``b""`` is its end."""
        if self.eof:
            return
        if data:
            self._buf += data
            if len(self._buf) < self._target:
                return
        else:
            self.eof = True
        if self._header_re is not None:
            m = self._header_re.match(self._buf)
            if m is None and not self.eof:
                self._new_round()
                return
            if m is not None:
                self.header = bytes(m.group(0))
                del self._buf[: m.end()]
            self._header_re = None
            if not self.eof:
                self._new_round()
                return
        self._round()
        if self.eof:
            if self._buf:
                self.ready.append(memoryview(self._buf).toreadonly())
            self._buf = bytearray()
        else:
            self._new_round()

    def _round(self) -> None:
        if self.skip_blank:
            self._buf = bytearray(re.sub(rb"(?m)^\s*\n", b"", self._buf))
            if not self._buf:
                return  # as GNU parallel: only blank lines, read on (the block does not grow)
        buf = self._buf
        view = memoryview(buf).toreadonly()
        start = 0  # what is cut is taken from here: one compaction per round
        if self.lines and not self.records:
            n = buf.count(b"\n") % self.lines
            i = len(buf)
            for _ in range(n + 1):
                i = buf.rfind(b"\n", 0, i)
                if i < 0:
                    break
            start = i + 1 if i >= 0 else 0
            if start:
                self.ready.append(view[:start])
        elif self.regexp and self.records:
            if not self._garbage_done:
                self._garbage_done = True
                if not re.match(b"(?:" + self.recstart + b")", buf, re.M):
                    m = self._garbage.match(buf)
                    if m is not None and m.end(1) > 0:
                        self.ready.append(view[: m.end(1)])
                        start = m.end(1)
            while (m := self._nrec.match(buf, start)) is not None and m.end(1) > start:
                self.ready.append(view[start : m.end(1)])
                start = m.end(1)
        elif self.regexp:
            if not self.eof:
                m = self._last.match(buf)
                if m is not None and m.end(1) > 0:
                    start = m.end(1)
                    self.ready.append(view[:start])
        elif self.records:
            n = self.records * (self.lines or 1)
            sep, skip = self._sep, len(self.recend)
            while start < len(buf):
                i = start
                for _ in range(n):
                    # GNU's nindex: each search starts one past the last (the first at 1).
                    i = buf.find(sep, i + 1)
                    if i < 0:
                        break
                if i < 0:
                    break
                cut = i + skip
                self.ready.append(view[start:cut])
                start = cut
        elif not self.eof:
            i = buf.rfind(self._sep)
            if i >= 0 and i + len(self.recend) > 0:
                start = i + len(self.recend)
                self.ready.append(view[:start])
        if start:
            # A new buffer for what is left: the blocks keep the old one (no copy of them).
            self._buf = bytearray(view[start:])
            return
        view.release()
        if not self.eof and self.block < MAX_BLOCK:
            old = self.block
            self.block = min(math.ceil(self.block * 1.3 + 1), MAX_BLOCK)
            self.warnings.append(
                f"A record was longer than {old}. Increasing to --blocksize {self.block}."
            )


def split_positions(
    read_at: Callable[[int, int], bytes],
    size: int,
    block: int,
    skip: int,
    *,
    recstart: bytes = b"",
    recend: bytes = b"\n",
    regexp: bool = False,
) -> list[int]:
    """GNU parallel's ``--pipepart`` split points of a file of ``size`` bytes.

    From ``skip`` (the header's length), every ``block`` bytes the next
    record boundary at or after that point, found by reading forward from it
    in 128 KiB pieces (``read_at(offset, n)``); the file's size ends the
    list. Consecutive points bound one job's part. Only the bytes near each
    edge are read, never the whole file.
    """
    piece = 131072
    pos_list = [skip]
    sep = recend + recstart
    pattern = None
    if regexp:
        rs = b"(?:" + recstart + b")"
        re_ = b"(?:" + (recend if recend or recstart else b"(?s:.)") + b")"
        # GNU: m:^(.*$recend)$recstart:s, greedy: the last boundary in what was read.
        pattern = re.compile(b"(?s)(.*" + re_ + b")" + rs)
    pos = block + skip
    while pos < size:
        if not sep and pattern is None:
            pos_list.append(pos)
        else:
            buf = b""
            while True:
                data = read_at(pos + len(buf), piece)
                if not data:
                    break
                buf += data
                if pattern is not None:
                    m = pattern.match(buf)
                    if m is not None:
                        pos += m.end(1)
                        pos_list.append(pos)
                        break
                else:
                    i = buf.find(sep)
                    if i >= 0:
                        pos += i + len(recend)
                        pos_list.append(pos)
                        break
        pos += block
    if pos_list[-1] != size:
        pos_list.append(size)
    return pos_list


def group_by_column(spec: str) -> int | str:
    """``--group-by``'s value: a column number (1-based) or a column name.

    GNU parallel also takes a Perl expression (alone or after the column);
    polytask runs no Perl, so that is a ValueError saying so.
    """
    text = spec.strip()
    if re.fullmatch(r"[0-9]+", text):
        col = int(text)
        if col < 1:
            raise ValueError(f"--group-by {spec!r}: columns are numbered from 1")
        return col
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return text
    raise ValueError(
        f"--group-by {spec!r}: only a column number or a column name is supported; a Perl "
        "expression is not (polytask runs no Perl): compute the key beforehand, e.g. with awk"
    )


class GroupMarker:
    """GNU parallel's ``--group-by`` for ``--pipe``: a marker before each line whose key
    (its column ``column``, split at ``colsep``) differs from the line before's.

    Bytes in, bytes out (:meth:`feed`, ``b""`` at the end). The caller cuts the
    result with :class:`PipeSplitter` using ``marker`` as ``recstart`` and no
    ``recend``, then removes the markers from each block: exactly what GNU
    parallel 20221122 does (a Perl filter inserting a random separator), so
    lines of one key stay in one record. As there (Perl's ``-a -F``), a line
    is split with its newline, so the last column's key includes it. With
    ``header`` (or a column given by name) the first line is the header, held
    back in :attr:`header`, and a column name is looked up in it.
    """

    def __init__(self, column: int | str, colsep: str, marker: bytes, *, header: bool) -> None:
        self.marker = marker
        self._split = re.compile(_fsencode(colsep)).split
        self._colsep = colsep
        self._column = column
        self._index = column - 1 if isinstance(column, int) else -1
        self._want_header = header or isinstance(column, str)
        self.header: bytes | None = None
        self._last: bytes | None = None
        self._partial = b""

    def _mark(self, lines: list[bytes]) -> bytes:
        out: list[bytes] = []
        index, split, last = self._index, self._split, self._last
        for line in lines:
            fields = split(line)
            key = fields[index] if index < len(fields) else b""
            if key != last:
                out.append(self.marker)
                last = key
            out.append(line)
        self._last = last
        return b"".join(out)

    def _take_header(self, line: bytes) -> None:
        self.header = line
        self._want_header = False
        if isinstance(self._column, str):
            names = [n.decode("utf-8", "surrogateescape") for n in self._split(line.rstrip(b"\n"))]
            if self._column not in names:
                raise ValueError(
                    f"--group-by {self._column!r}: no such column in the header "
                    f"(split at --colsep {self._colsep!r}): {', '.join(map(repr, names))}"
                )
            self._index = names.index(self._column)

    def feed(self, data: bytes) -> bytes:
        """The marked form of the whole lines so far; ``b""`` ends the input (the last,
        unterminated line is given then)."""
        if not data:
            rest, self._partial = self._partial, b""
            if not rest:
                return b""
            if self._want_header:
                self._take_header(rest)
                return b""
            return self._mark([rest])
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if not lines:
            return b""
        if self._want_header:
            self._take_header(lines.pop(0) + b"\n")
        return self._mark([line + b"\n" for line in lines])


def csv_complete(record: str) -> bool:
    """Whether ``record`` (lines joined so far) is a whole CSV record: its quotes pair up.

    A field's newline is inside quotes, so a record with an odd number of
    ``"`` goes on at the next line (a quote inside a quoted field is doubled).
    """
    return record.count('"') % 2 == 0


def csv_join(lines: Iterable[str]) -> list[str]:
    """Lines joined into whole CSV records (a quoted field may hold newlines)."""
    records: list[str] = []
    pending: str | None = None
    for line in lines:
        pending = line if pending is None else pending + "\n" + line
        if csv_complete(pending):
            records.append(pending)
            pending = None
    if pending is not None:
        records.append(pending)  # an unterminated quote: what is there, as Text::CSV gives up
    return records


def csv_fields(record: str, sep: str) -> list[str]:
    """The fields of one CSV record (``--csv``): quotes, doubled quotes, ``sep`` and
    newlines inside quoted fields, as Python's csv module reads them; nothing trimmed."""
    import csv
    import io

    row = next(csv.reader(io.StringIO(record, newline=""), delimiter=sep, strict=False), None)
    return row if row else [""]
