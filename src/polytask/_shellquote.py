"""Quote each input of ``polytask parallel`` for the shell context it lands in (no I/O).

GNU parallel wraps every input in ``'...'``, which the user's own quotes
undo: ``echo "file: {}"`` with the input ``$(id)`` becomes
``echo "file: '$(id)'"`` and the shell runs ``id``. Here the COMMAND is read
once, as the shell will read it, by the small lexer below; it finds the
context of every replacement string, and each input is then written so that
the program receives exactly its bytes and the shell never reads it as
syntax::

    where the replacement sits      how an input is written there
    ----------------------------    -------------------------------------------------
    a plain word                    'input' (a ' as '\\''); bare if only [A-Za-z0-9_@%+:./-]
    inside '...'                    the bytes, each ' as '\\'' (end the quote, \\', resume)
    inside "..."                    \\ " $ ` escaped with a backslash
    inside $'...' (bash)            \\ ' escaped with a backslash
    `...`                           quoted for the script inside, then \\ ` $ escaped
    $(...), <(...), (...)           quoted for the script inside (no extra layer)
    the script of sh -c, bash -c,   quoted for that script (lexed in turn), then the
      eval, trap                    result quoted for where the script word sits
    $((...)), ((...)), $[...],      only numbers; any other input is refused (bash
      let, [ / [[ / test -eq ...    evaluates names and subscripts in there)
    here-document body              \\ $ ` escaped (as is if the delimiter is quoted);
                                    refused if a line of it would end the document
    comment                         newlines dropped

The plan for a COMMAND is made once (:func:`plan_shell`, :func:`plan_argv`);
each job then only runs one small function per replacement
(:func:`compile_plan`). A COMMAND that cannot be quoted safely (``{}`` inside
``${...}``, inside a command substitution within the script of ``sh -c``, an
unterminated quote, ...) raises :class:`QuotingError`; an input that cannot go
where it is asked to (a non-number in arithmetic) raises :class:`UnsafeInput`.

What a program other than a POSIX shell does with its arguments is not a
shell matter: ``perl -e``, ``python -c``, ``awk`` programs, ``ssh host CMD``
and a shell reading its script from stdin get the input's exact bytes inside
their code. Pass inputs to those as arguments instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = [
    "Plan",
    "QuotingError",
    "UnsafeInput",
    "compile_plan",
    "dialect",
    "is_posix_shell",
    "plan_argv",
    "plan_shell",
    "quote_word",
]

#: One character of the COMMAND (str of length 1) or a replacement string (its
#: occurrence number, counted from 0 in the order they appear).
Tok = str | int

#: How one replacement is written: (numbers only?, layers innermost first).
#: The first layer quotes the values for where they sit; each next one wraps
#: that text for the context around it (see ``_BASES`` and ``_WRAPS``).
Plan = tuple[bool, tuple[str, ...]]

#: Where the heredoc checks live: the body as text and occurrence numbers, its
#: delimiter, and whether leading tabs are stripped (``<<-``).
HeredocCheck = tuple[tuple[str | int, ...], str, bool]


class QuotingError(ValueError):
    """The COMMAND puts a replacement string where no quoting can keep an input data."""


class UnsafeInput(ValueError):
    """One input cannot go where the COMMAND puts it (e.g. a non-number in arithmetic)."""


# --------------------------------------------------------------------------- writing values

_UNSAFE = re.compile(r"[^\w@%+:./-]", re.ASCII).search


# str.replace beats str.translate with a table on the short strings inputs are.
def _sq(s: str) -> str:
    return s.replace("'", "'\\''")


def _dq(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def _bs(s: str) -> str:
    """Here-document bodies and the first pass over `...` treat the same three specially."""
    return s.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def _ansi(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


_NUMBER = re.compile(
    r"[ \t]*[+-]?(?:0[xX][0-9a-fA-F]+|[0-9]+(?:#[0-9A-Za-z@_]+)?|[0-9]*\.[0-9]+)?[ \t]*\Z"
).match


def quote_word(value: str) -> str:
    """``value`` as one shell word: bare if it has only ``[A-Za-z0-9_@%+:./-]``, else ``'...'``.

    Unlike :func:`shlex.quote`, ``=`` and ``,`` are quoted too (no accidental
    assignment, no brace expansion), and a quote inside is written ``'\\''``,
    which has no ``"`` (that would be undefined inside ```...``` within ``"..."``).
    """
    if value and _UNSAFE(value) is None:
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def _always(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _words(values: Sequence[str]) -> str:
    return " ".join(map(quote_word, values))


#: The first layer of a plan: values -> text. A suffix names what comes just
#: before the replacement in the COMMAND: ``$`` an unescaped ``$`` (or a
#: ``$name`` that bare text would extend), ``\\`` an unescaped backslash, ``!``
#: a ``$name`` or ``~`` that a bare word would extend.
_BASES: dict[str, Callable[[Sequence[str]], str]] = {
    "word": _words,
    # After $name or ~: never bare ($x + abc would be $xabc).
    "word!": lambda vs: " ".join(map(_always, vs)),
    # After a lone $: '' first, so that $ + 'x' is not bash's $'x' (and $( or
    # ${ can never form): bash reads $'' as an empty string, dash as a $.
    "word$": lambda vs: "''" + _words(vs),
    # After a backslash: the backslash escapes our newline, and the pair
    # vanishes (a line continuation); the quoted value follows.
    "word\\": lambda vs: "\n" + _words(vs),
    "sq": lambda vs: _sq(" ".join(vs)),
    "dq": lambda vs: _dq(" ".join(vs)),
    # "$" + "" is a literal $ in every shell; the value cannot join the $.
    "dq$": lambda vs: '""' + _dq(" ".join(vs)),
    "dq\\": lambda vs: "\n" + _dq(" ".join(vs)),
    "ansi": lambda vs: _ansi(" ".join(vs)),
    # \ + \ is a backslash inside $'...': nothing of ours is escaped.
    "ansi\\": lambda vs: "\\" + _ansi(" ".join(vs)),
    "hd": lambda vs: _bs(" ".join(vs)),
    "hd\\": lambda vs: "\n" + _bs(" ".join(vs)),
    "raw": " ".join,
    "arith": " ".join,
    # A comment ends at a newline: the rest of the input would be a command.
    "comment": lambda vs: " ".join(vs).replace("\n", " "),
}

#: Later layers that wrap text rather than quote it: inside `...` the shell
#: first removes the backslash before \ ` $, then reads the script.
_WRAPS: dict[str, Callable[[str], str]] = {"bt": _bs}


def _check_numbers(values: Sequence[str]) -> None:
    for v in values:
        if _NUMBER(v) is None:
            raise UnsafeInput(
                f"the input {v!r} is not a number, and only a number can go into an "
                "arithmetic expression ($((...)), ((...)), let, or a -eq/-lt/... test)"
            )


def _rebase(base: Callable[[Sequence[str]], str]) -> Callable[[str], str]:
    """A first-layer writer used further out: it quotes the inner text as one value."""
    return lambda text: base((text,))


def compile_plan(plan: Plan) -> Callable[[Sequence[str]], str]:
    """The function that writes one replacement's values (``{}`` over several sources: several).

    Raises :class:`UnsafeInput` (when called) for a non-number where only
    numbers can go.
    """
    numeric, layers = plan
    first = _BASES[layers[0]]
    steps = [_WRAPS.get(layer) or _rebase(_BASES[layer]) for layer in layers[1:]]
    if not numeric and not steps:
        return first

    def emit(values: Sequence[str]) -> str:
        if numeric:
            _check_numbers(values)
        text = first(values)
        for step in steps:
            text = step(text)
        return text

    return emit


# --------------------------------------------------------------------------- dialects

# bash, zsh and the kshs read $'...', ((...)), $[...] and <(...); dash does not.
# "either": sh, whose program differs between systems: both readings must agree.
_DIALECTS = {
    "bash": "bash",
    "rbash": "bash",
    "zsh": "bash",
    "ksh": "bash",
    "ksh93": "bash",
    "mksh": "bash",
    "lksh": "bash",
    "oksh": "bash",
    "dash": "posix",
    "posh": "posix",
    "sh": "either",
    "ash": "either",
    "yash": "either",
}


def dialect(program: str) -> str:
    """``"bash"``, ``"posix"`` or ``"either"`` (unknown, or ``sh``): how ``program`` reads a script."""
    return _DIALECTS.get(program.rsplit("/", 1)[-1], "either")


def is_posix_shell(program: str) -> bool:
    """Whether ``program`` reads ``-c`` scripts as a POSIX shell (the quoting here is for those)."""
    return program.rsplit("/", 1)[-1] in _DIALECTS


def _shell_of(word: str | None) -> str | None:
    if word is None:
        return None
    return _DIALECTS.get(word.rsplit("/", 1)[-1])


def script_pending(words: Sequence[str | None]) -> str | None:
    """If the next word is the script of a shell's ``-c`` among ``words``, that shell's dialect.

    ``words`` are the words of one simple command so far (None: not known
    literally). ``timeout 5 bash -e -o pipefail -c`` is pending; ``sh -c x``,
    ``sh script.sh`` and ``grep sh`` are not.
    """
    for k, w in enumerate(words):
        found = _shell_of(w)
        if found is None:
            continue
        has_c = False
        j = k + 1
        while j < len(words):
            o = words[j]
            if o is None:
                break
            if o == "--":
                j += 1
                break
            if len(o) > 1 and o[0] in "-+":
                if o.startswith("--"):
                    j += 2 if o in ("--rcfile", "--init-file") else 1
                    continue
                letters = o[1:]
                if o[0] == "-" and "c" in letters:
                    has_c = True
                # -o NAME, +o NAME, -O NAME (bash's shopt): each takes the next word.
                j += 1 + letters.count("o") + letters.count("O")
                continue
            break
        if has_c and j == len(words):
            return found
    return None


# --------------------------------------------------------------------------- the lexer

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_SPECIAL_PARAMS = frozenset("@*#?-$!0123456789")
_METACHARS = frozenset(" \t\n;&|()<>")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^]]*\])?\+?=")
# Words after which the next word is still in command position.
_PREFIX_WORDS = frozenset(["if", "then", "else", "elif", "while", "until", "do", "!", "{", "time"])
_PREFIX_COMMANDS = frozenset(["builtin", "command", "exec"])
_ARITH_TESTS = frozenset(["-eq", "-ne", "-lt", "-le", "-gt", "-ge"])
_DECLARERS = frozenset(["declare", "typeset", "local", "readonly", "export"])
_ANSI_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}

_NESTED = (
    "the output of a command substitution (or of `...`, ${...}) inside the script of "
    "sh -c, eval or trap is read again as shell code: it cannot carry an input; pass "
    "the input as an argument instead: sh -c '... \"$1\" ...' sh {}"
)
_IN_BACKTICKS = (
    "a replacement string inside $(...) within `...` cannot be quoted safely: bash reads "
    "that $(...) before it undoes the backslashes of `...`; write $(...) for the outer one too"
)
_IN_PARAM = (
    "a replacement string inside ${...} cannot be quoted safely; assign the input to a "
    "variable first: v={}; ... ${v%.*}"
)


class _Command:
    """The simple command being read: its words so far, and what its next word is."""

    __slots__ = (
        "cmd_pos",
        "decl_int",
        "eval",
        "last_ids",
        "let",
        "name",
        "numeric_next",
        "redirect",
        "script",
        "test",
        "words",
    )

    def __init__(self) -> None:
        self.cmd_pos = True  # the next word would name the command
        self.redirect = False  # the next word is a redirection's target
        self.words: list[str | None] = []  # from the command name on
        self.name: str | None = None
        self.eval: list[Tok] | None = None  # eval's arguments, as the inner shell reads them
        self.script: str | None = None  # the next word is a shell's script (its dialect)
        self.numeric_next = False
        self.let = False
        self.test = False
        self.decl_int = False
        self.last_ids: list[int] = []


class _Frame:
    """One script being read (the whole COMMAND, or inside $(...), (...), `...`)."""

    __slots__ = ("cases", "cmd", "depth", "heredocs", "pattern_words")

    def __init__(self) -> None:
        self.cmd = _Command()
        self.depth = 0  # open ( of subshells and function definitions
        self.heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, strip tabs, quoted)
        self.cases: list[str] = []  # per open case: "subject" | "in" | "pattern" | "body"
        self.pattern_words = False


class _Lexer:
    """Reads one token list as a shell script and records where each replacement sits."""

    def __init__(
        self,
        toks: Sequence[Tok],
        *,
        bash: bool,
        numeric: bool = False,
        nested: bool = False,
        forbid: str | None = None,
        in_backticks: bool = False,
    ) -> None:
        self.t = toks
        self.n = len(toks)
        self.bash = bash
        self.numeric = 1 if numeric else 0  # > 0: inside arithmetic
        # Under a layer that rewrites the text (`...`, a nested script): the
        # output's lines are not the document's, so no heredoc checks.
        self.nested = nested
        self.forbid = forbid  # why a replacement here cannot be quoted
        self.in_backticks = in_backticks  # this text is the inside of `...`
        self.plans: dict[int, Plan] = {}
        self.numeric_ids: set[int] = set()
        self.heredocs: list[tuple[int, int, str, bool]] = []
        # The word being read: its literal text (None once it is not literal),
        # what an inner shell will read of it (for script words), its replacements.
        self.lit: list[str] | None = None
        self.cap: list[Tok] | None = None
        self.ids: list[int] = []

    # ------------------------------------------------------------ bookkeeping

    def add(self, idx: int, base: str) -> None:
        if self.forbid is not None:
            raise QuotingError(self.forbid)
        self.plans[idx] = (self.numeric > 0, (base,))
        self.lit = None
        self.ids.append(idx)
        if self.cap is not None:
            self.cap.append(idx)

    def put(self, c: str) -> None:
        if self.lit is not None:
            self.lit.append(c)
        if self.cap is not None:
            self.cap.append(c)

    def opaque(self) -> None:
        """An expansion whose text is not known here: a placeholder for an inner shell."""
        self.lit = None
        if self.cap is not None:
            self.cap.append("x")

    def tok(self, i: int) -> Tok | None:
        return self.t[i] if i < self.n else None

    def merge(self, sub: _Lexer, outer: tuple[str, ...] = ()) -> None:
        for idx, (num, layers) in sub.plans.items():
            self.plans[idx] = (num, layers + outer)
        self.numeric_ids |= sub.numeric_ids

    def nested_script(self, toks: Sequence[Tok], shell: str) -> None:
        """``toks`` is a script that another shell reads: plan it, then wrap each plan."""
        plans, numeric_ids = _lex_nested(toks, shell)
        for idx, (num, layers) in plans.items():
            onum, olayers = self.plans[idx]
            self.plans[idx] = (num or onum, layers + olayers)
        self.numeric_ids |= numeric_ids

    # ------------------------------------------------------------ scripts

    def script(self, i: int, closer: str | None) -> int:
        """Read commands from ``i`` up to an unmatched ``closer`` (``)``; None: the end)."""
        t, n = self.t, self.n
        f = _Frame()
        while i < n:
            c = t[i]
            if isinstance(c, int) or (c not in _METACHARS and c != "#"):
                i = self.word(i, f)
                continue
            if c in " \t":
                i += 1
            elif c == "\n":
                self.end_command(f)
                i += 1
                if f.heredocs:
                    i = self.heredoc_bodies(i, f.heredocs)
                    f.heredocs = []
            elif c == "#":
                i = self.comment(i)
            elif c == ";":
                self.end_command(f)
                nxt = self.tok(i + 1)
                if nxt in (";", "&"):  # ;; ;& ;;& end a case branch
                    i += 2
                    if nxt == ";" and self.tok(i) == "&":
                        i += 1
                    if f.cases and f.cases[-1] == "body":
                        f.cases[-1] = "pattern"
                        f.pattern_words = False
                else:
                    i += 1
            elif c == "&":
                nxt = self.tok(i + 1)
                if nxt == ">" and self.bash:  # &> and &>>: a redirection
                    i += 3 if self.tok(i + 2) == ">" else 2
                    f.cmd.redirect = True
                else:
                    self.end_command(f)
                    i += 2 if nxt == "&" else 1
            elif c == "|":
                if f.cases and f.cases[-1] == "pattern":
                    i += 1  # a|b) in a case: one pattern or another
                    continue
                self.end_command(f)
                i += 2 if self.tok(i + 1) in ("|", "&") else 1
            elif c == "(":
                if f.cases and f.cases[-1] == "pattern":
                    i += 1  # the optional ( before a case pattern
                elif self.bash and f.cmd.cmd_pos and self.tok(i + 1) == "(":
                    i = self.arith(i + 2, "))")  # (( ... )): an arithmetic command
                    f.cmd.cmd_pos = False
                else:
                    self.end_command(f)
                    f.depth += 1
                    i += 1
            elif c == ")":
                if f.cases and f.cases[-1] == "pattern":
                    self.end_command(f)
                    f.cases[-1] = "body"
                    i += 1
                elif f.depth:
                    self.end_command(f)
                    f.cmd.cmd_pos = False  # (...) >file: redirections may follow
                    f.depth -= 1
                    i += 1
                elif closer == ")":
                    self.end_command(f)
                    return i + 1
                else:
                    raise QuotingError("the COMMAND has a ')' that closes nothing")
            else:  # < or >
                i = self.redirection(i, f)
        if closer is not None:
            raise QuotingError("the COMMAND has a '$(' or '<(' that is never closed")
        if f.depth:
            raise QuotingError("the COMMAND has a '(' that is never closed")
        self.end_command(f)
        return i

    def redirection(self, i: int, f: _Frame) -> int:
        c, nxt = self.t[i], self.tok(i + 1)
        if nxt == "(" and self.bash:  # <(...) >(...): process substitution
            i = self.subshell(i + 2)
            self.end_word(f, None, [], None)
            return i
        if c == "<" and nxt == "<":
            if self.tok(i + 2) == "<":  # <<< word: a here-string, an ordinary word
                f.cmd.redirect = True
                return i + 3
            strip = self.tok(i + 2) == "-"
            return self.heredoc_operator(i + 2 + strip, f, strip)
        i += 1
        if self.tok(i) in (">", "&", "|") or (c == "<" and self.tok(i) == ">"):
            i += 1
        f.cmd.redirect = True
        return i

    def end_command(self, f: _Frame) -> None:
        cmd = f.cmd
        if cmd.eval is not None and any(isinstance(x, int) for x in cmd.eval):
            self.nested_script(cmd.eval, "bash" if self.bash else "posix")
        f.cmd = _Command()

    # ------------------------------------------------------------ words

    def word(self, i: int, f: _Frame) -> int:
        """Read one word in script context; returns the index after it."""
        t, n = self.t, self.n
        cmd = f.cmd
        capture = cmd.script is not None or cmd.eval is not None
        self.lit = []
        self.cap = [] if capture else None
        self.ids = []
        numeric = cmd.numeric_next or cmd.let or cmd.decl_int
        cmd.numeric_next = False
        if numeric:
            self.numeric += 1
        subscript = False  # inside name[...] of an assignment: arithmetic in bash
        start = i
        while i < n:
            c = t[i]
            if isinstance(c, int):
                lit = self.lit
                # ~ + bare would read as ~user: never bare there.
                after_tilde = (
                    lit is not None and lit[-1:] == ["~"] and lit[-2:-1] in ([], ["="], [":"])
                )
                self.add(c, "word!" if after_tilde else "word")
                i += 1
                continue
            if c in _METACHARS:
                break
            if c == "\\":
                nxt = self.tok(i + 1)
                if nxt is None:
                    self.put("\\")
                    i += 1
                elif isinstance(nxt, int):
                    self.add(nxt, "word\\")
                    i += 2
                else:
                    if nxt != "\n":  # \ + newline: a line continuation, nothing
                        self.put(nxt)
                    i += 2
            elif c == "'":
                i = self.sq(i + 1)
            elif c == '"':
                i = self.dq(i + 1)
            elif c == "$":
                i = self.dollar(i, "word")
            elif c == "`":
                i = self.backtick(i, in_dq=False)
            else:
                if (
                    c == "["
                    and not subscript
                    and cmd.cmd_pos
                    and self.lit is not None
                    and self.lit
                    and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", "".join(self.lit))
                ):
                    subscript = True
                    self.numeric += 1
                elif c == "]" and subscript:
                    subscript = False
                    self.numeric -= 1
                self.put(c)
                i += 1
        if subscript:
            self.numeric -= 1
        if numeric:
            self.numeric -= 1
        text = "".join(self.lit) if self.lit is not None else None
        ids, cap = self.ids, self.cap
        self.lit = self.cap = None
        self.ids = []
        if text is not None and text.isdigit() and self.tok(i) in ("<", ">") and i > start:
            return i  # 2>file: the number belongs to the redirection
        self.end_word(f, text, ids, cap)
        return i

    def end_word(self, f: _Frame, lit: str | None, ids: list[int], cap: list[Tok] | None) -> None:
        cmd = f.cmd
        if cmd.redirect:
            cmd.redirect = False
            return
        if f.cases:
            state = f.cases[-1]
            if state == "subject":
                f.cases[-1] = "in"
                return
            if state == "in":
                f.cases[-1] = "pattern"
                f.pattern_words = False
                return
            if state == "pattern":
                if lit == "esac" and not f.pattern_words:
                    f.cases.pop()
                    cmd.cmd_pos = False
                else:
                    f.pattern_words = True
                return
            if cmd.cmd_pos and lit == "esac":
                f.cases.pop()
                cmd.cmd_pos = False
                return
        if cmd.script is not None:
            shell, cmd.script = cmd.script, None
            if cap is not None and ids:
                self.nested_script(cap, shell)
            cmd.words.append(lit)
            cmd.last_ids = ids
            return
        if cmd.eval is not None:
            if cap is not None:
                cmd.eval.extend(cap)
            cmd.eval.append(" ")
            return
        if cmd.cmd_pos:
            if lit is not None and _ASSIGNMENT.match(lit):
                return  # NAME=value before the command
            if lit in _PREFIX_WORDS or lit in _PREFIX_COMMANDS:
                return
            cmd.cmd_pos = False
            if lit == "case":
                f.cases.append("subject")
                return
            cmd.name = lit
            if lit == "eval":
                cmd.eval = []
                return
            cmd.let = lit == "let"
            cmd.test = lit in ("[", "[[", "test")
        elif cmd.test and lit in _ARITH_TESTS:
            # ksh's test and bash's [[ evaluate both operands as arithmetic.
            self.numeric_ids.update(cmd.last_ids)
            cmd.numeric_next = True
        elif cmd.name in _DECLARERS and lit is not None and lit[:1] == "-" and "i" in lit:
            cmd.decl_int = True
        cmd.words.append(lit)
        cmd.last_ids = ids
        if cmd.name == "trap" and all(w == "--" for w in cmd.words[1:]):
            cmd.script = "bash" if self.bash else "posix"
        else:
            cmd.script = script_pending(cmd.words)

    def sq(self, i: int) -> int:
        t, n = self.t, self.n
        while i < n:
            c = t[i]
            if isinstance(c, int):
                self.add(c, "sq")
            elif c == "'":
                return i + 1
            else:
                self.put(c)
            i += 1
        raise QuotingError("the COMMAND has a ' that is never closed")

    def dq(self, i: int) -> int:
        t, n = self.t, self.n
        while i < n:
            c = t[i]
            if isinstance(c, int):
                self.add(c, "dq")
                i += 1
            elif c == '"':
                return i + 1
            elif c == "\\":
                nxt = self.tok(i + 1)
                if isinstance(nxt, int):
                    self.add(nxt, "dq\\")
                    i += 2
                elif nxt == "\n":
                    i += 2
                elif isinstance(nxt, str) and nxt in '$`"\\':
                    self.put(nxt)
                    i += 2
                else:
                    self.put("\\")
                    i += 1
            elif c == "$":
                i = self.dollar(i, "dq")
            elif c == "`":
                i = self.backtick(i, in_dq=True)
            else:
                self.put(c)
                i += 1
        raise QuotingError('the COMMAND has a " that is never closed')

    def ansi(self, i: int) -> int:
        """Inside bash's ``$'...'`` (``i`` after the quote)."""
        t, n = self.t, self.n
        while i < n:
            c = t[i]
            if isinstance(c, int):
                self.add(c, "ansi")
                i += 1
            elif c == "'":
                return i + 1
            elif c == "\\":
                nxt = self.tok(i + 1)
                if isinstance(nxt, int):
                    self.add(nxt, "ansi\\")
                    i += 2
                    continue
                if nxt is not None and nxt in _ANSI_SIMPLE:
                    self.put(_ANSI_SIMPLE[nxt])
                    i += 2
                    continue
                # \x41, \101, \u00e9, \cA...: a character that cannot end the string.
                if self.cap is not None:
                    raise QuotingError(
                        "cannot read this $'...' escape in the script of sh -c, eval or trap"
                    )
                self.lit = None
                i += 2
            else:
                self.put(c)
                i += 1
        raise QuotingError("the COMMAND has a $' that is never closed")

    def dollar(self, i: int, ctx: str) -> int:
        """At a ``$`` in context ``ctx`` (word, dq, hd, arith); returns the index after the expansion."""
        nxt = self.tok(i + 1)
        if isinstance(nxt, int):
            base = {"word": "word$", "dq": "dq$"}.get(ctx)
            if base is None:
                raise QuotingError(
                    "a replacement string right after '$' in a here-document or in "
                    "arithmetic cannot be quoted; put something between them"
                )
            self.add(nxt, base)
            return i + 2
        if nxt == "(":
            if self.tok(i + 2) == "(":
                return self.arith(i + 3, "))", expansion=True)
            return self.subshell(i + 2)
        if nxt == "{":
            return self.param(i + 2, ctx)
        if nxt == "[" and self.bash:
            return self.arith(i + 2, "]", expansion=True)
        if nxt == "'" and ctx == "word" and self.bash:
            return self.ansi(i + 2)
        if nxt == '"' and ctx == "word" and self.bash:
            return i + 1  # bash's $"...": a "..." string
        if isinstance(nxt, str) and (nxt in _NAME_START or nxt in _SPECIAL_PARAMS):
            j = i + 2
            if nxt in _NAME_START:
                while j < self.n and isinstance(self.t[j], str) and self.t[j] in _NAME_CHARS:
                    j += 1
            self.opaque()
            after = self.tok(j)
            if isinstance(after, int):
                # $x + bare abc would read as $xabc, $1 + 0 as zsh's $10.
                base = {"word": "word!", "dq": "dq$"}.get(ctx)
                if base is None:
                    raise QuotingError(
                        "a replacement string right after a $name in a here-document or in "
                        "arithmetic would join the name; write ${name}{} instead"
                    )
                self.add(after, base)
                return j + 1
            return j
        self.put("$")  # a $ that starts nothing
        return i + 1

    def subshell(self, i: int) -> int:
        """``$(...)`` or ``<(...)`` (``i`` after the parenthesis): a script of its own."""
        saved = self.lit, self.cap, self.ids, self.forbid
        if self.cap is not None:
            self.forbid = _NESTED
        elif self.in_backticks and self.forbid is None:
            self.forbid = _IN_BACKTICKS
        self.lit = self.cap = None
        self.ids = []
        i = self.script(i, ")")
        self.lit, self.cap, self.ids, self.forbid = saved
        self.opaque()
        return i

    def param(self, i: int, ctx: str) -> int:
        """``${...}`` (``i`` after the brace): read to its end; no replacement may be inside."""
        t, n = self.t, self.n
        saved = self.lit, self.cap, self.ids, self.forbid
        self.forbid = _IN_PARAM
        self.lit = self.cap = None
        self.ids = []
        depth = 1
        while i < n:
            c = t[i]
            if isinstance(c, int):
                self.add(c, "word")  # raises
            elif c == "\\":
                i += 2
                continue
            elif c == "'" and ctx == "word":
                i = self.sq(i + 1)
                continue
            elif c == '"':
                i = self.dq(i + 1)
                continue
            elif c == "$":
                i = self.dollar(i, "word" if ctx == "word" else "dq")
                continue
            elif c == "`":
                i = self.backtick(i, in_dq=ctx != "word")
                continue
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if not depth:
                    self.lit, self.cap, self.ids, self.forbid = saved
                    self.opaque()
                    return i + 1
            i += 1
        raise QuotingError("the COMMAND has a '${' that is never closed")

    def arith(self, i: int, closer: str, *, expansion: bool = False) -> int:
        """``$((...))``, ``((...))`` or ``$[...]`` (``i`` after the opening): numbers only."""
        t, n = self.t, self.n
        saved = self.lit, self.cap, self.ids
        self.lit = self.cap = None
        self.ids = []
        self.numeric += 1
        depth = 0
        opener, close = ("(", ")") if closer == "))" else ("[", "]")
        while True:
            if i >= n:
                raise QuotingError(
                    f"the COMMAND has an arithmetic expression never closed by {closer}"
                )
            c = t[i]
            if isinstance(c, int):
                self.add(c, "arith")
            elif c == opener:
                depth += 1
            elif c == close:
                if depth:
                    depth -= 1
                elif closer == "]":
                    i += 1
                    break
                elif self.tok(i + 1) == ")":
                    i += 2
                    break
                else:
                    raise QuotingError(
                        "cannot read the COMMAND's $((...)): a ')' closes it early "
                        "(for a subshell inside $(...), write $( (...) ))"
                    )
            elif c == "\\":
                if isinstance(self.tok(i + 1), int):
                    raise QuotingError("a replacement string right after '\\' in arithmetic")
                i += 2
                continue
            elif c == "$":
                i = self.dollar(i, "arith")
                continue
            elif c == "`":
                i = self.backtick(i, in_dq=False)
                continue
            elif c == '"':
                i = self.dq(i + 1)
                continue
            elif c == "'":
                i = self.sq(i + 1)
                continue
            i += 1
        self.numeric -= 1
        self.lit, self.cap, self.ids = saved
        if expansion:
            self.opaque()
        return i

    def backtick(self, i: int, *, in_dq: bool, in_heredoc: bool = False) -> int:
        """```...```: undo its backslashes, then read the inside as a script of its own."""
        t, n = self.t, self.n
        body: list[Tok] = []
        j = i + 1
        while True:
            if j >= n:
                raise QuotingError("the COMMAND has a ` that is never closed")
            c = t[j]
            if c == "`":
                break
            if c == "\\" and j + 1 < n:
                nxt = t[j + 1]
                if isinstance(nxt, str) and (nxt in "$`\\" or (in_dq and nxt == '"')):
                    body.append(nxt)
                    j += 2
                    continue
            body.append(c)
            j += 1
        forbid = self.forbid
        if forbid is None and self.cap is not None:
            forbid = _NESTED
        if forbid is None and in_heredoc and '"' in body:
            # dash and bash disagree on \" inside `...` in a here-document.
            forbid = "a replacement string inside `...` in a here-document: use $(...) instead"
        sub = _Lexer(
            body,
            bash=self.bash,
            numeric=self.numeric > 0,
            nested=True,
            forbid=forbid,
            in_backticks=True,
        )
        sub.script(0, None)
        self.merge(sub, ("bt",))
        self.opaque()
        return j + 1

    def comment(self, i: int) -> int:
        t, n = self.t, self.n
        while i < n and t[i] != "\n":
            c = t[i]
            if isinstance(c, int):
                # A comment is never run: no need to refuse anything here.
                self.plans[c] = (False, ("comment",))
            i += 1
        return i

    # ------------------------------------------------------------ here-documents

    def heredoc_operator(self, i: int, f: _Frame, strip: bool) -> int:
        """Read the delimiter after ``<<`` or ``<<-``; the body comes after the line ends."""
        t, n = self.t, self.n
        while i < n and t[i] in (" ", "\t"):
            i += 1
        delim: list[str] = []
        quoted = False
        while i < n:
            c = t[i]
            if isinstance(c, int):
                raise QuotingError("a replacement string in a here-document's delimiter")
            if c in _METACHARS:
                break
            if c in ("'", '"'):
                quoted = True
                end = c
                i += 1
                while i < n and t[i] != end:
                    x = t[i]
                    if isinstance(x, int):
                        raise QuotingError("a replacement string in a here-document's delimiter")
                    if end == '"' and x == "\\" and self.tok(i + 1) in ("$", "`", '"', "\\"):
                        i += 1
                        x = t[i]
                    delim.append(x)  # type: ignore[arg-type]
                    i += 1
                i += 1
                continue
            if c == "\\":
                quoted = True
                i += 1
                if i < n:
                    x = t[i]
                    if isinstance(x, int):
                        raise QuotingError("a replacement string in a here-document's delimiter")
                    delim.append(x)
                i += 1
                continue
            delim.append(c)
            i += 1
        if not delim and not quoted:
            raise QuotingError("the COMMAND has a '<<' without a delimiter")
        f.heredocs.append(("".join(delim), strip, quoted))
        return i

    def heredoc_bodies(self, i: int, pending: list[tuple[str, bool, bool]]) -> int:
        """Read the bodies of the here-documents opened on the line that just ended."""
        t, n = self.t, self.n
        for delim, strip, quoted in pending:
            start = end = i
            while i < n:
                j = i
                literal = True
                while j < n and t[j] != "\n":
                    literal = literal and isinstance(t[j], str)
                    j += 1
                if literal:
                    line = "".join(t[i:j])  # type: ignore[arg-type]
                    if (line.lstrip("\t") if strip else line) == delim:
                        end = i
                        i = min(j + 1, n)
                        break
                i = min(j + 1, n)
                end = i
            ids = [x for x in t[start:end] if isinstance(x, int)]
            if not ids:
                continue
            if self.nested:
                raise QuotingError(
                    "a replacement string in a here-document inside `...` or inside the "
                    "script of sh -c, eval or trap cannot be checked; use a here-document "
                    "at the top of the COMMAND"
                )
            if quoted:
                for idx in ids:
                    self.add(idx, "raw")
            else:
                sub = _Lexer(
                    t[start:end],
                    bash=self.bash,
                    numeric=self.numeric > 0,
                    nested=True,
                    forbid=self.forbid,
                )
                sub.heredoc_text(0)
                self.merge(sub)
            self.heredocs.append((start, end, delim, strip))
        return i

    def heredoc_text(self, i: int) -> None:
        """The body of a here-document with an unquoted delimiter: like "..." without the quotes."""
        t, n = self.t, self.n
        while i < n:
            c = t[i]
            if isinstance(c, int):
                self.add(c, "hd")
                i += 1
            elif c == "\\":
                nxt = self.tok(i + 1)
                if isinstance(nxt, int):
                    self.add(nxt, "hd\\")
                    i += 2
                else:
                    i += 2 if nxt in ("$", "`", "\\", "\n") else 1
            elif c == "$":
                i = self.dollar(i, "hd")
            elif c == "`":
                i = self.backtick(i, in_dq=False, in_heredoc=True)
            else:
                i += 1


# --------------------------------------------------------------------------- entry points


def _lex_once(toks: Sequence[Tok], bash: bool, nested: bool) -> _Lexer:
    lexer = _Lexer(toks, bash=bash, nested=nested)
    lexer.script(0, None)
    for idx in lexer.numeric_ids:
        num, layers = lexer.plans[idx]
        if not num:
            lexer.plans[idx] = (True, layers)
    return lexer


def _merge_plan(a: Plan, b: Plan) -> Plan | None:
    """One plan safe under both readings, if the two readings only differ by arithmetic."""
    if a == b:
        return a
    la, lb = a[1], b[1]
    if len(la) != len(lb):
        return None
    out = []
    for x, y in zip(la, lb, strict=True):
        if x == y:
            out.append(x)
        elif x == "arith" and y.startswith("word"):
            out.append(y)  # numbers only, written as a word: both shells read the same
        elif y == "arith" and x.startswith("word"):
            out.append(x)
        else:
            return None
    return (True, tuple(out))


def _lex(toks: Sequence[Tok], shell: str, nested: bool) -> _Lexer:
    if shell != "either":
        return _lex_once(toks, shell == "bash", nested)
    # sh is dash here, bash there: plan for both readings, and they must agree.
    readings: list[_Lexer] = []
    for name, bash in (("bash", True), ("dash", False)):
        try:
            readings.append(_lex_once(toks, bash, nested))
        except QuotingError as exc:
            if name == "dash" and not readings:
                raise  # both fail: the first error says why
            raise QuotingError(
                f"{exc} (as {name} reads it): this script means different things to dash "
                "and to bash; name the shell (bash -c, dash -c, or PARALLEL_SHELL=/bin/bash)"
            ) from None
    a, b = readings
    for idx, plan in a.plans.items():
        merged = _merge_plan(plan, b.plans.get(idx, (False, ())))
        if merged is None:
            raise QuotingError(
                "this script puts a replacement string where dash and bash read it "
                "differently ($'...', ((...)), $[...], <(...)): name the shell (bash -c, "
                "dash -c, or PARALLEL_SHELL=/bin/bash)"
            )
        a.plans[idx] = merged
    if a.heredocs != b.heredocs:
        raise QuotingError("dash and bash read this script's here-documents differently")
    return a


def _lex_nested(toks: Sequence[Tok], shell: str) -> tuple[dict[int, Plan], set[int]]:
    lexer = _lex(toks, shell, nested=True)
    return lexer.plans, lexer.numeric_ids


def plan_shell(
    toks: Sequence[Tok], shell: str = "either"
) -> tuple[dict[int, Plan], list[HeredocCheck]]:
    """Plan every replacement in ``toks``, a command line that a shell of dialect ``shell`` runs.

    Returns the plans by occurrence number and the here-document checks: the
    body (text and occurrence numbers), its delimiter and whether tabs are
    stripped; a rendered body with a line equal to the delimiter would end
    the document early. Raises :class:`QuotingError`.
    """
    lexer = _lex(toks, shell, nested=False)
    checks: list[HeredocCheck] = []
    for start, end, delim, strip in lexer.heredocs:
        segments: list[str | int] = []
        for x in toks[start:end]:
            if isinstance(x, str) and segments and isinstance(segments[-1], str):
                segments[-1] += x
            else:
                segments.append(x)
        checks.append((tuple(segments), delim, strip))
    missing = [x for x in toks if isinstance(x, int) and x not in lexer.plans]
    if missing:  # pragma: no cover - every path above records its replacements
        raise QuotingError(f"internal: no plan for replacement {missing[0]}")
    return lexer.plans, checks


def plan_argv(words: Sequence[Sequence[Tok]]) -> dict[int, Plan]:
    """Plan the replacements of a command run with no shell of ours (argv words).

    A word is passed as it is (``raw``), except the script of a shell's
    ``-c`` (``sh -c 'echo {}'``, ``bash -c {}``), which is planned for that shell.
    """
    plans: dict[int, Plan] = {}
    seen: list[str | None] = []
    for word in words:
        ids = [x for x in word if isinstance(x, int)]
        shell = script_pending(seen)
        if shell is not None and ids:
            inner, numeric_ids = _lex_nested(word, shell)
            for idx in ids:
                num, layers = inner[idx]
                plans[idx] = (num or idx in numeric_ids, (*layers, "raw"))
        else:
            for idx in ids:
                plans[idx] = (False, ("raw",))
        seen.append(None if ids else "".join(word))  # type: ignore[arg-type]
    return plans
