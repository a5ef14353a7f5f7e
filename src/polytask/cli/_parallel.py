"""``polytask parallel``: run one command over many inputs, GNU parallel style.

A compatible subset of GNU parallel: ``:::`` argument lists (several give
their cartesian product), ``::::`` argument files, stdin; the replacement
strings ``{} {.} {/} {//} {/.} {#} {%} {1} {2} ...``; ``-j``, ``-k``,
``--timeout``, ``--termseq``, ``--retries``, ``--joblog``, ``--resume[-failed]``
(keyed on each job's command line, see :class:`~polytask._parallel_spec.ResumeIndex`),
``--retry-failed``, ``--events`` (JSON lines, as ``polytask up``), ``--load``,
``--memfree``,
``--halt``, ``--bar``, ``--files``, ``--dry-run``, ``--tag``, ``--results``,
``--line-buffer``, several inputs per job (``-n``, ``-N``, ``-m``, ``-X``,
``--xargs``), ``--colsep``, ``--header :``, ``--link`` and ``:::+``, xargs'
``-I -d -E -r``, ``--tagstring``, ``-v``, ``-u``, ``--delay``, ``--shuf``,
``--nice``, ``--results`` as a CSV/TSV/JSON file or a path with replacement
strings; ``--pipe`` (stdin cut into GNU parallel's blocks of whole records,
one on each job's stdin) and ``--pipepart -a FILE`` (byte ranges of a file,
sent by the kernel); GNU parallel's exit status.

::

    input sources ──> jobs (seq, args) ──> Template ──> argv (no shell) or sh -c 'quoted'
         ▲ stdin is read as it arrives        │
         │                                    ▼
    ProcessLoop (one poll loop: pipes, pidfds, timers; at most -j jobs)
         │ job finished                       │ output (--line-buffer)
         ▼                                    ▼
    retries / halt / joblog / --results     _Sink: grouped per job, in order with -k,
                                            tagged with --tag ──> our stdout / stderr

With ``--pipe`` and ``--pipepart`` a job's input is its stdin, not arguments::

    stdin ─(read only while a slot is free)─> _PipeSource: PipeSplitter cuts GNU's blocks
        ──> job (input=block) ──> the loop writes it into the job's stdin pipe (POLLOUT)
    FILE ─(a few reads at each edge)─> _PartSource: split_positions
        ──> job (input=FileRange) ──> the loop sendfile()s the range into the job's stdin
    stdin ─> _Feeder (a thread) ─> --tee: every job's stdin pipe; --roundrobin: a block
        to a running job that took its last (jobs started once; stdin streamed, bounded)
    --fifo: the block ─> _fifo_writer (a thread per job) ─> the FIFO {}, once the job opens it

Startup matters (``--help`` in well under 150 ms): this module imports only
argparse and what the polytask package already loaded; rich only with ``--bar``
(``--progress``, ``--eta``).
"""

from __future__ import annotations

import argparse
import heapq
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

__all__ = ["main"]

PROG = "polytask parallel"
#: Seconds between SIGTERM and SIGKILL when a job is ended (timeout, halt, Ctrl-C).
GRACE = 0.5
#: The exit value of a job not run because an input cannot go where the COMMAND
#: puts it (a shell's status for a line it cannot run, e.g. a syntax error).
REFUSED = 2
#: GNU parallel's exit status for bad options and for being ended by a signal.
USAGE_ERROR = KILLED = 255
_JOB_VARIABLES = ("PARALLEL_PID", "PARALLEL_SEQ", "PARALLEL_JOBSLOT")
#: Seconds between two looks at the load or the free memory (--load, --memfree).
THROTTLE_POLL = 0.25
_MEMINFO = "/proc/meminfo"

_USAGE = "polytask parallel [OPTIONS] [COMMAND [ARG...]] [::: ARGS... | :::: FILES...]..."
_DESCRIPTION = """\
Run COMMAND once for each input: each argument after :::, each line of the
files after :::: (or -a), or each line of stdin when no input is given.
Several input sources give every combination (cartesian product).

Replacement strings in COMMAND: {} the input, {.} without extension,
{/} basename, {//} dirname, {/.} basename without extension, {#} job
number, {%} job slot, {1} {2} ... the input from source 1, 2 (also {1.}
{1/} ...). Without any, the input is appended to COMMAND. An input is
only ever data: it is quoted for where it sits in COMMAND (a plain word,
'...', "...", `...`, $(...), the script of sh -c or eval); a COMMAND
without shell syntax runs with no shell at all. With no COMMAND, each
input is itself a command.
"""
_EPILOG = """\
exit status: 0 if every job succeeded, else the number of failed jobs
(101 for more than 100); with --halt, as GNU parallel. 255: bad options,
or ended by a signal.
examples:
  polytask parallel -j 4 gzip ::: *.log
  polytask parallel -k --tag 'echo {1} {2}' ::: a b ::: 1 2
  find . -name '*.png' | polytask parallel --bar convert {} {.}.jpg
"""


class _UsageError(Exception):
    pass


class _Fatal(Exception):
    """An error after the options were read (e.g. an unreadable file): exit 255."""


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        # What argparse asks shutil for, without importing shutil (and through
        # it bz2 and lzma): every add_argument makes a formatter.
        try:
            width = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                width = 80
        super().__init__(prog, width=max(width, 1) - 2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        usage=_USAGE,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    a = p.add_argument
    a(
        "-j",
        "--jobs",
        "-P",
        "--max-procs",
        dest="jobs",
        metavar="N",
        default="100%",
        help="run N jobs at once: N%% of the CPU cores, +N/-N cores, 0 = no limit (default 100%%)",
    )
    a("-k", "--keep-order", action="store_true", help="print output in input order")
    a(
        "--timeout",
        metavar="SECONDS",
        help="end a job after SECONDS (also 2m, 1h30m) or N%% of the median runtime; 0: no limit",
    )
    a("--retries", metavar="N", type=int, default=0, help="run a failing job up to N times")
    a(
        "--joblog",
        metavar="FILE",
        help="log each job to FILE (GNU parallel's columns; +FILE appends)",
    )
    a("--resume", action="store_true", help="skip the jobs already in --joblog")
    a("--resume-failed", action="store_true", help="skip the jobs that succeeded in --joblog")
    a(
        "--retry-failed",
        action="store_true",
        help="run again the jobs that failed in --joblog, their commands taken from it "
        "(COMMAND and inputs ignored)",
    )
    a(
        "--halt",
        "--halt-on-error",
        metavar="WHEN,WHAT=N",
        help="stop early: now,fail=1 | soon,fail=N | now,success=N%% | ... (default never)",
    )
    a(
        "--termseq",
        "--term-seq",
        metavar="SEQ",
        help="how a job is ended (--timeout, --halt now, Ctrl-C): signals and waits in ms, "
        "e.g. TERM,200,TERM,100,TERM,50,KILL,25 (default TERM,500,KILL); SIGKILL after the last",
    )
    a(
        "--backend",
        choices=("dask", "ray"),
        help="run the jobs on the workers of a Dask or Ray cluster (--address; without it a "
        "cluster on this machine, for the run); -j jobs at once",
    )
    a("--address", metavar="ADDR", help="--backend's scheduler (tcp://host:8786) or Ray head")
    a("--bar", action="store_true", help="show a progress bar on stderr")
    a(
        "--progress",
        "--eta",
        dest="progress",
        action="store_true",
        help="as --bar: jobs done, %%, rate, time elapsed and the estimated time left",
    )
    a(
        "--files",
        action="store_true",
        help="save each job's output in a file in $TMPDIR (with --results: its stdout file) "
        "and print the file's name instead; the files are left for you to delete",
    )
    a(
        "--dry-run",
        "--dryrun",
        action="store_true",
        help="print the commands instead of running them",
    )
    a("--tag", action="store_true", help="prefix each output line with the job's input")
    a(
        "--results",
        "--res",
        metavar="DIR",
        help="save output in DIR/1/<input>/{stdout,stderr,seq} (a long <input> is "
        "shortened); with replacement strings: in that file (+.err, .seq) or, ending "
        "in /, that directory; FILE.csv, .tsv, .json: one line per job in FILE",
    )
    a(
        "--line-buffer",
        "--lb",
        action="store_true",
        help="print whole lines as soon as they come (lines of jobs may interleave)",
    )
    a("-q", "--quote", action="store_true", help="keep each COMMAND word one word (no shell)")
    a(
        "-a",
        "--arg-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read inputs from FILE, one a line, like :::: FILE",
    )
    a("-0", "--null", action="store_true", help="inputs in files and stdin end with NUL")
    a(
        "-n",
        "--max-args",
        metavar="N",
        help="give each job up to N inputs ({} is all of them, {1} {2} ... each); 0: none",
    )
    a(
        "-N",
        "--max-replace-args",
        metavar="N",
        help="like -n, and a word with {} is repeated for each input (as -X)",
    )
    a(
        "-m",
        action="store_true",
        help="as many inputs per job as fit on a command line, spread over the jobs",
    )
    a(
        "-X",
        action="store_true",
        help="like -m, and a word with {} is repeated for each input: x{}y -> xay xby",
    )
    a("--xargs", action="store_true", help="like -m, without spreading over the jobs")
    a(
        "--shellquote",
        "--shell-quote",
        "--shell_quote",
        action="count",
        default=0,
        help="without COMMAND: each job prints its command line quoted for the shell "
        "(as GNU parallel; given twice, quoted twice) instead of running it",
    )
    a("--rpl", action="append", default=[], metavar="'TAG PERL'", help=argparse.SUPPRESS)
    a(
        "--plus",
        action="store_true",
        help="GNU's further replacement strings: {+/} {+.} {..} {/..} {##} {0#} {0%%} "
        "{:-x} {:2} {%%.gz} {/a/b} {^a} ... (see docs/commands.md)",
    )
    a(
        "--colsep",
        metavar="REGEX",
        help="split each input into columns {1} {2} ... at REGEX (blanks around each trimmed)",
    )
    a(
        "--trim",
        choices=["n", "l", "r", "lr", "rl"],
        metavar="n|l|r|lr|rl",
        help="trim white space around each input (each column with --colsep): none, left, "
        "right or both (default: n, or rl with --colsep)",
    )
    a(
        "--header",
        metavar=":",
        help="the first input of each source names its columns: {name} (--colsep default tab)",
    )
    a(
        "--link",
        "--xapply",
        action="store_true",
        help="take the input sources side by side, not every combination (also :::+ ::::+)",
    )
    a(
        "--tagstring",
        metavar="STR",
        help="prefix each output line with STR (replacement strings expanded; \\t, \\n, "
        "octal \\NNN as in -d) and a tab",
    )
    a("-v", action="store_true", help="print each job's command line before its output")
    a(
        "-t",
        "--verbose",
        dest="trace",
        action="store_true",
        help="print each job's command line on stderr as it starts",
    )
    a(
        "-u",
        "--ungroup",
        action="store_true",
        help="let the jobs write straight to our stdout and stderr (output may mix)",
    )
    a(
        "--delay",
        metavar="SECONDS",
        help="start a job at least SECONDS (also 2m, 1h) after the one before",
    )
    a("--shuf", action="store_true", help="run the jobs in random order")
    a("--nice", metavar="N", type=int, help="run the jobs with niceness N (nice -n N)")
    # Events and throttles.
    a(
        "--events",
        metavar="FILE",
        help="append one JSON line per job start, exit, retry, timeout and kill to FILE "
        "('-' for stderr), as polytask up --events",
    )
    a(
        "--load",
        metavar="MAX",
        help="start a job only while fewer than MAX processes run or wait for the disk "
        "(N, N%% of the CPU cores, +N, -N; GNU parallel's instant load)",
    )
    a(
        "--memfree",
        metavar="SIZE",
        help="start a job only while SIZE bytes of memory are available (1G, 500M); under "
        "half of it, kill the youngest job and queue it again (with --retries)",
    )
    a("-I", metavar="STR", help="STR stands for the input instead of {} (as xargs -I)")
    a(
        "-d",
        "--delimiter",
        metavar="DELIM",
        help="inputs in files and stdin end with DELIM (\\n, \\t, \\r, \\0 and other octal "
        "\\NNN, \\xHH understood)",
    )
    a(
        "-E",
        dest="eof",
        metavar="EOF",
        help="an input EOF ends its source (file, stdin, :::): the rest is not read",
    )
    a(
        "-r",
        "--no-run-if-empty",
        action="store_true",
        help="skip the inputs that are empty or only blanks",
    )
    a("--arg-sep", metavar="SEP", help="use SEP instead of :::")
    a("--arg-file-sep", metavar="SEP", help="use SEP instead of ::::")
    a(
        "--pipe",
        "--spreadstdin",
        action="store_true",
        help="split stdin into blocks of whole records, one block on each job's stdin",
    )
    a(
        "--pipepart",
        "--pipe-part",
        action="store_true",
        help="like --pipe for the file of -a FILE, each job reading its own part",
    )
    a(
        "--block",
        "--block-size",
        "--blocksize",
        metavar="SIZE",
        help="--pipe: about SIZE bytes a job (default 1M; k=1000, K=M/1024=1024); "
        "--pipepart: -N = N parts per job slot (default -10)",
    )
    a("--recend", metavar="STR", help="--pipe: records end with STR (default \\n)")
    a("--recstart", metavar="STR", help="--pipe: records start with STR")
    a(
        "--regexp",
        "--regex",
        action="store_true",
        help="--pipe: --recstart and --recend are regular expressions (Python's)",
    )
    a(
        "-L",
        metavar="N",
        help="--pipe: a record is N lines; otherwise at most N input lines a job, given "
        "as -N gives them, a line ending in a blank going on on the next (xargs -L). "
        "-l [N] and --max-lines [N]: the same, given as -n gives them (N 1 if not given or 0)",
    )
    a("--max-lines", "--maxlines", dest="max_lines", help=argparse.SUPPRESS)
    a(
        "--cat",
        action="store_true",
        help="--pipe: save each block in a temporary file, {} its name (stdin empty)",
    )
    a(
        "--fifo",
        action="store_true",
        help="--pipe: {} names a FIFO the job reads its block from (stdin empty)",
    )
    a(
        "--roundrobin",
        "--round-robin",
        "--round",
        action="store_true",
        help="--pipe: start -j jobs once and give each block to whichever job reads first",
    )
    a(
        "--tee",
        action="store_true",
        help="--pipe: every job gets all of stdin, one job per input of :::",
    )
    a(
        "--group-by",
        "--groupby",
        metavar="COL",
        help="--pipe: lines with the same value in column COL (a number, or a name "
        "from the first line) stay in one record (columns split at --colsep, default tab)",
    )
    a(
        "--csv",
        action="store_true",
        help="read inputs as CSV: quoted fields may hold the separator, quotes and "
        "newlines; fields are {1} {2} ... (--colsep: the separator, default ,)",
    )
    a("--will-cite", "--citation", action="store_true", help=argparse.SUPPRESS)
    # GNU parallel's other spellings of the options above: accepted, not listed.
    hide = argparse.SUPPRESS
    for names, dest in _GNU_FLAG_ALIASES:
        a(*names, dest=dest, action="store_true", help=hide)
    a("--jl", dest="joblog", help=hide)
    a("--result", dest="results", help=hide)
    a("--tag-string", dest="tagstring", help=hide)
    a("--haltonerror", dest="halt", help=hide)
    a("--maxprocs", dest="jobs", help=hide)
    a("--argfile", dest="arg_file", action="append", help=hide)
    a("--maxargs", dest="max_args", help=hide)
    a("--maxreplaceargs", dest="max_replace_args", help=hide)
    a("-C", "--col-sep", dest="colsep", help=hide)
    a("--argsep", dest="arg_sep", help=hide)
    a("--argfilesep", dest="arg_file_sep", help=hide)
    a("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


#: GNU parallel's other names of the flags that polytask has (its Getopt spec).
_GNU_FLAG_ALIASES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--keeporder",), "keep_order"),
    (("--resumefailed",), "resume_failed"),
    (("--retryfailed",), "retry_failed"),
    (("--line-buffered", "--linebuffer", "--linebuffered"), "line_buffer"),
    (("--dr",), "dry_run"),
    (("--norunifempty",), "no_run_if_empty"),
    (("--output-as-files", "--outputasfiles"), "files"),
    (("--willcite", "--nn", "--nonotice", "--no-notice"), "will_cite"),
)


# --------------------------------------------------------------------------- input


_NOT_READY: Any = object()


class _ListSource:
    """Every combination of fully known input sources (GNU order: the first varies slowest).

    ``linked[i]`` (``:::+``, ``::::+``, ``--link``): source i goes with the one
    before it value by value rather than in every combination. As in GNU
    parallel, ``:::+`` stops at the shortest of them; with ``wrap``
    (``--link``) the shorter ones start over until the longest ends.
    """

    fd = -1

    def __init__(
        self,
        sources: Sequence[Sequence[str]],
        linked: Sequence[bool] | None = None,
        *,
        wrap: bool = False,
    ) -> None:
        import itertools
        import math

        blocks: list[list[Sequence[str]]] = []
        for i, src in enumerate(sources):
            if i and linked is not None and linked[i]:
                blocks[-1].append(src)
            else:
                blocks.append([src])
        rows: list[Sequence[tuple[str, ...]]] = []
        for block in blocks:
            if len(block) == 1:
                rows.append([(v,) for v in block[0]])
                continue
            lengths = [len(s) for s in block]
            n = 0 if 0 in lengths else max(lengths) if wrap else min(lengths)
            rows.append([tuple(s[i % len(s)] for s in block) for i in range(n)])
        self.total: int | None = math.prod(len(r) for r in rows)
        self._it: Iterator[tuple[str, ...]] = (
            tuple(v for row in combo for v in row) for combo in itertools.product(*rows)
        )

    def take(self) -> Any:
        return next(self._it, None)

    def fill(self) -> None:  # pragma: no cover - never NOT_READY
        pass


class _StreamSource:
    """Lines of one file descriptor (stdin), taken as they arrive."""

    total: int | None = None

    def __init__(self, fd: int, sep: bytes, lines: _Lines | None = None) -> None:
        self.fd = fd
        self._sep = sep
        self._buf = b""
        self._lines: deque[str] = deque()
        self._rules = lines or _Lines()
        self.eof = False

    def take(self) -> Any:
        if self._lines:
            return (self._lines.popleft(),)
        return None if self.eof else _NOT_READY

    def head(self) -> str | None:
        """The first line (waits for it), taken out of the inputs: --header's."""
        while not self._lines and not self.eof:
            self.fill()
        return self._lines.popleft() if self._lines else None

    def fill(self) -> None:
        """Read what is there (blocks only if nothing is)."""
        if self.eof:
            return
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            if self._buf:
                self._lines.extend(self._rules.accept([self._buf]))
                self._buf = b""
            self._lines.extend(self._rules.end())
            return
        parts = (self._buf + data).split(self._sep)
        self._buf = parts.pop()
        self._lines.extend(self._rules.accept(parts))
        if self._rules.ended:  # -E: the rest is not read
            self.eof = True
            self._buf = b""


#: The longest command line a job of several inputs (-m, -X, --xargs) is given,
#: in bytes: the script of ``sh -c`` is one argument, and Linux takes none
#: longer than 128 KiB (MAX_ARG_STRLEN); the rest is room for quoting.
MAX_LINE = 131072 - 4096


class _Grouped:
    """Several inputs per job (-n, -N, -m, -X, --xargs), as GNU parallel groups them.

    Takes records (one value per input source) from ``source`` and gives each
    job the values of up to ``max_args`` records, flattened; without
    ``max_args``, as many as fit in :data:`MAX_LINE`. With ``spread`` (-m,
    -X) the records left when the input ends are spread evenly over the
    ``jobs`` job slots (GNU parallel: ceil(left / jobs) each, from then on).
    With ``noarg`` (-n0, -N0) each value read is given as :data:`NOARG`.
    """

    def __init__(
        self,
        source: Any,
        *,
        max_args: int | None,
        spread: int | None,
        cost: int,
        noarg: bool = False,
    ) -> None:
        self.source = source
        self.fd = source.fd
        self.total: int | None = None
        if max_args is not None and source.total is not None and not spread:
            self.total = -(-source.total // max(max_args, 1))  # -n0: one input a job
        self.max_args = max_args
        self.spread = spread
        self.noarg = noarg
        self.cost = cost  # times each value is written into the command line
        self._buf: deque[tuple[str, ...]] = deque()
        self._len = 0
        self._eof = False

    def _size(self, record: tuple[str, ...]) -> int:
        # Each value quoted ('...', a ' inside as '\'') and a blank after it.
        return sum(len(v.encode(errors="surrogateescape")) + 3 * v.count("'") + 3 for v in record)

    def _full(self) -> bool:
        if self.max_args is not None:
            return len(self._buf) >= max(self.max_args, 1)
        return self._len * self.cost >= MAX_LINE

    def take(self) -> Any:
        # While the spreading is still to come, a full job looks one record
        # ahead: GNU parallel spreads as soon as the input ends right after a
        # full job (-n 3 -m over 3 inputs and 2 job slots: 2 + 1).
        ahead = self.max_args if self.spread is not None and self.max_args is not None else -1
        while not self._eof and (not self._full() or len(self._buf) <= ahead):
            record = self.source.take()
            if record is _NOT_READY:
                return _NOT_READY
            if record is None:
                self._eof = True
                break
            self._buf.append(record)
            self._len += self._size(record)
        if not self._buf:
            return None
        if self._eof and self.spread and len(self._buf) > 1:
            self.max_args = -(-len(self._buf) // self.spread)
            self.spread = None
        n = len(self._buf)
        if self.max_args is not None:
            n = min(n, max(self.max_args, 1))
        elif self._len * self.cost > MAX_LINE:
            # Over the limit: the last record waits for the next job (one always goes).
            size, n = 0, 0
            for record in self._buf:
                size += self._size(record)
                if n and size * self.cost > MAX_LINE:
                    break
                n += 1
        group = [self._buf.popleft() for _ in range(n)]
        self._len -= sum(self._size(r) for r in group)
        if self.noarg:
            from .._parallel_spec import NOARG

            return tuple(NOARG for record in group for _ in record)
        return tuple(v for record in group for v in record)

    def fill(self) -> None:
        self.source.fill()


#: What Perl's ``\s`` matches (GNU parallel's "blank" for -L's joined lines).
_PERL_SPACE = (" ", "\t", "\n", "\r", "\f", "\v")


class _Lines:
    """What becomes of the lines of a file or stdin: -E ends them, -r drops blank
    ones, and with -L (not --pipe) a line ending in a blank goes on on the next.

    ``header`` (--header): the first line is kept as it is read, none of these
    applying to it, as GNU parallel reads the header line before the inputs.
    """

    def __init__(
        self,
        eof: str | None = None,
        skip_blank: bool = False,
        join: bool = False,
        *,
        header: bool = False,
    ) -> None:
        self.eof = eof
        self.skip_blank = skip_blank
        self.join = join
        self._held: str | None = None  # -L: a line ending in a blank, waiting for the next
        self._header = header  # the first line is still to come, and is --header's
        self.ended = False

    def accept(self, parts: Iterable[bytes | str]) -> list[str]:
        out: list[str] = []
        for p in parts:
            if self.ended:
                break
            line = os.fsdecode(p)
            if self._header:
                self._header = False
                out.append(line)
                continue
            if not self.join:
                self._keep(line, out)
                continue
            # xargs -L's rule, as GNU parallel keeps it: the lines are joined as
            # they are (the blank stays) until one does not end in a blank (Perl's
            # \s). -E and -r look at each line as read, before it is joined.
            if self.eof is not None and line == self.eof:
                self.ended = True
                out += self.end()
                break
            if self.skip_blank and not line.strip():
                continue
            if self._held is not None:
                line, self._held = self._held + line, None
            if line.endswith(_PERL_SPACE):
                self._held = line
                continue
            out.append(line)
        return out

    def end(self) -> list[str]:
        """The line still held at the end of the input (-L: it ended in a blank)."""
        held, self._held = self._held, None
        return [] if held is None else [held]

    def every(self, parts: Iterable[bytes | str]) -> list[str]:
        """The lines of a whole input (``accept`` then ``end``)."""
        return self.accept(parts) + self.end()

    def _keep(self, line: str, out: list[str]) -> None:
        if self.eof is not None and line == self.eof:
            self.ended = True
        elif not (self.skip_blank and not line.strip()):
            out.append(line)


def _delimiter(text: str) -> bytes:
    """-d's value: one or more bytes, its escapes read as GNU parallel reads them.

    That is ``\\t \\n \\r \\NNN \\N`` (octal: ``\\0`` is NUL); and ``\\xHH``, which GNU
    parallel leaves as it is.
    """
    import re

    from .._parallel_spec import unquote_printf

    out = b""
    for i, piece in enumerate(re.split(r"\\x([0-9a-fA-F]{2})", unquote_printf(text))):
        out += os.fsencode(piece) if i % 2 == 0 else bytes([int(piece, 16)])
    if not out:
        raise _UsageError("-d needs a delimiter (e.g. -d , or -d '\\t')")
    return out


def _split_args(args: Iterable[str], sep: bytes) -> list[str] | list[bytes]:
    """The arguments after ::: as GNU parallel reads them: it writes each, then the
    delimiter, to a file and reads that back as any input file, so an argument
    holding the delimiter (a newline unless -0 or -d) is more than one input, and
    one that ends with it is followed by an empty input (``$'a\\n'``: ``a`` and ``''``)."""
    if not sep.isascii():  # a byte of it may be inside a character: split the bytes
        return [part for arg in args for part in os.fsencode(arg).split(sep)]
    # An ASCII delimiter splits the text as it would the bytes (no character of
    # UTF-8, nor a byte kept by surrogateescape, holds an ASCII byte), and costs
    # no encoding of each argument.
    text = sep.decode()
    out: list[str] = []
    for arg in args:
        if text in arg:
            out += arg.split(text)
        else:
            out.append(arg)
    return out


def _read_lines(path: str, sep: bytes, rules: _Lines | None = None) -> list[str]:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise _Fatal(f"cannot read input file {path!r}: {exc.strerror}") from None
    parts = data.split(sep)
    if parts and parts[-1] == b"":
        parts.pop()
    return (rules or _Lines()).every(parts)


class _Columns:
    """Each input split into columns (--colsep), which count as inputs of their own.

    ``trim``: removes white space around each column (Perl's ``\\s``, so a CR
    too; see :func:`_trimmer`), as GNU parallel does when --colsep is given,
    not when only --header or --csv split the input (unless --trim says so).
    """

    def __init__(self, source: Any, colsep: str, *, trim: Callable[[str], str] | None) -> None:
        import re

        from .._parallel_spec import perl_split

        self.source = source
        self.fd = source.fd
        self.total = source.total
        self._trim = trim
        self._rx = re.compile(colsep)
        self._perl_split = perl_split

    def _fields(self, value: str) -> list[str]:
        return self._perl_split(self._rx, value)

    def columns(self, value: str) -> list[str]:
        fields = self._fields(value)
        return list(map(self._trim, fields)) if self._trim else fields

    def names(self, header: str) -> list[str]:
        """--header's column names: GNU parallel drops a CR at the end, trims nothing."""
        return self._fields(header.removesuffix("\r"))

    def take(self) -> Any:
        record = self.source.take()
        if record is None or record is _NOT_READY:
            return record
        return tuple(c for v in record for c in self.columns(v))

    def fill(self) -> None:
        self.source.fill()


#: Perl's \s (GNU parallel's --trim), ASCII: what --colsep trims around a column.
_BLANKS = " \t\n\r\f\v"


def _trimmer(mode: str) -> Callable[[str], str] | None:
    """--trim's function for ``mode`` (n, l, r, lr or rl); None for n."""
    if mode == "n":
        return None
    if mode == "l":
        return lambda s: s.lstrip(_BLANKS)
    if mode == "r":
        return lambda s: s.rstrip(_BLANKS)
    return lambda s: s.strip(_BLANKS)


class _Trimmed:
    """--trim without --colsep: each input value trimmed."""

    def __init__(self, source: Any, trim: Callable[[str], str]) -> None:
        self.source = source
        self.fd = source.fd
        self.total = source.total
        self._trim = trim

    def take(self) -> Any:
        record = self.source.take()
        if record is None or record is _NOT_READY:
            return record
        return tuple(map(self._trim, record))

    def fill(self) -> None:
        self.source.fill()


class _CsvColumns(_Columns):
    """--csv: each input is a CSV record whose fields are its columns."""

    def __init__(self, source: Any, sep: str, *, trim: Callable[[str], str] | None) -> None:
        from .._parallel_spec import csv_fields

        self.source = source
        self.fd = source.fd
        self.total = source.total
        self._trim = trim
        self._sep = sep
        self._csv_fields = csv_fields

    def _fields(self, value: str) -> list[str]:
        return self._csv_fields(value, self._sep)

    def names(self, header: str) -> list[str]:
        return self._fields(header)


class _CsvLines:
    """--csv on stdin: lines joined into whole CSV records (a quoted field may hold newlines)."""

    total: int | None = None

    def __init__(self, stream: _StreamSource) -> None:
        from .._parallel_spec import csv_complete

        self.stream = stream
        self.fd = stream.fd
        self._complete = csv_complete
        self._pending: str | None = None

    def take(self) -> Any:
        while True:
            item = self.stream.take()
            if item is _NOT_READY:
                return item
            if item is None:
                rest, self._pending = self._pending, None
                return None if rest is None else (rest,)
            line: str = item[0]
            record = line if self._pending is None else self._pending + "\n" + line
            if self._complete(record):
                self._pending = None
                return (record,)
            self._pending = record

    def head(self) -> str | None:
        """The first record (waits for it), taken out of the inputs: --header's."""
        while (item := self.take()) is _NOT_READY:
            self.stream.fill()
        return None if item is None else str(item[0])

    def fill(self) -> None:
        self.stream.fill()


class _Shuffled:
    """Every job's inputs, read first, in random order (--shuf)."""

    fd = -1

    def __init__(self, source: Any) -> None:
        import random

        items = []
        while True:
            item = source.take()
            if item is None:
                break
            if item is _NOT_READY:
                source.fill()
                continue
            items.append(item)
        random.shuffle(items)
        self.total: int | None = len(items)
        self._it = iter(items)

    def take(self) -> Any:
        return next(self._it, None)

    def fill(self) -> None:  # pragma: no cover - never NOT_READY
        pass


class _PipeSource:
    """--pipe: blocks of whole records from a descriptor (stdin), cut as GNU parallel cuts them.

    Reads only when the runner wants a job's input, so at most about two
    blocks wait here (the :class:`~polytask._parallel_spec.PipeSplitter`'s
    buffer), plus one block per running job until the loop has written it.
    """

    total: int | None = None

    def __init__(self, fd: int, splitter: Any, *, owned: bool = False, group: Any = None) -> None:
        import stat

        self.fd = fd
        self._split = splitter
        self._owned = owned  # -a FILE: ours to close
        self._group = group  # --group-by: a GroupMarker the input goes through first
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            try:  # 1 MiB reads rather than 64 KiB ones (best effort)
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass

    def take(self, *, headed: bool = True) -> Any:
        """The next block (with the header, unless not ``headed``), None at the end,
        or _NOT_READY."""
        split = self._split
        if split.ready:
            block: memoryview | bytes = split.ready.popleft()
            if self._group is not None:  # GNU's --group-by separators are not data
                block = bytes(block).replace(self._group.marker, b"")
            if headed and split.header:
                return split.header + block  # (a copy)
            return block
        return None if split.eof else _NOT_READY

    def fill(self) -> None:
        """Read once (blocks only when nothing is there) and cut what can be cut."""
        split = self._split
        if split.eof:
            return
        try:
            data = os.read(self.fd, min(split.wanted(), 1 << 20))
        except OSError as exc:
            raise _Fatal(f"cannot read the input: {exc.strerror}") from None
        group = self._group
        if group is not None:
            try:
                marked = group.feed(data)
            except ValueError as exc:
                raise _Fatal(str(exc)) from None
            if group.header is not None and not split.header:
                split.header = group.header
            if marked:
                split.feed(marked)
            if not data:
                split.feed(b"")
        else:
            split.feed(data)
        if split.warnings:
            for w in split.warnings:
                _warn(f"Warning: {w}")
            split.warnings.clear()

    def close(self) -> None:
        if self._owned:
            os.close(self.fd)
            self._owned = False


class _PartSource:
    """--pipepart: parts of regular files by byte ranges, each ending on a record boundary.

    Only the bytes near each part's edge are read here (and the header);
    each job's stdin is fed from its range by the loop with ``sendfile``,
    file to pipe inside the kernel.
    """

    fd = -1

    def __init__(
        self,
        paths: Sequence[str],
        *,
        block: int | None,
        jobs: int,
        header: Any,
        recstart: bytes,
        recend: bytes,
        regexp: bool,
    ) -> None:
        import itertools
        import stat

        from .._os.childloop import FileRange
        from .._parallel_spec import split_positions

        self._fds: list[int] = []
        files: list[tuple[int, int]] = []
        try:
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise _Fatal(f"cannot read input file {path!r}: {exc.strerror}") from None
                self._fds.append(fd)
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    size = st.st_size
                elif stat.S_ISBLK(st.st_mode):
                    size = os.lseek(fd, 0, os.SEEK_END)
                else:
                    raise _Fatal(
                        f"--pipepart only works on seekable files, not streams or pipes: "
                        f"{path!r} is not one (use --pipe < {path})"
                    )
                files.append((fd, size))
            if block is None:
                block = -10  # as GNU parallel: 10 parts per job slot
            if block < 0:
                total = sum(size for _, size in files)
                block = 1 + int(total / jobs / -block)
            items: list[Any] = []
            for fd, size in files:
                head = b""
                if header is not None:
                    got = b""
                    while True:
                        data = os.pread(fd, max(block, 65536), len(got))
                        got += data
                        m = header.match(got)
                        if m is not None or not data:
                            head = m.group(0) if m is not None else b""
                            break
                pos = split_positions(
                    lambda off, n, fd=fd: os.pread(fd, n, off),  # type: ignore[misc]
                    size,
                    block,
                    len(head),
                    recstart=recstart,
                    recend=recend,
                    regexp=regexp,
                )
                items += [FileRange(fd, a, b - a, head) for a, b in itertools.pairwise(pos)]
        except BaseException:
            self.close()
            raise
        self.total: int | None = len(items)
        self._it = iter(items)

    def take(self) -> Any:
        return next(self._it, None)

    def fill(self) -> None:  # pragma: no cover - never NOT_READY
        pass

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class _Count:
    """--roundrobin: ``n`` jobs without arguments (their input comes from the :class:`_Feeder`)."""

    fd = -1

    def __init__(self, n: int) -> None:
        self.total: int | None = n
        self._left = n

    def take(self) -> Any:
        if not self._left:
            return None
        self._left -= 1
        return ()

    def fill(self) -> None:  # pragma: no cover - never NOT_READY
        pass


class _Outlet:
    """One running job's stdin pipe, as the :class:`_Feeder` writes it."""

    __slots__ = ("data", "fd", "headed", "job")

    def __init__(self, fd: int, job: _Job) -> None:
        self.fd = fd
        self.job = job
        self.headed = False  # --roundrobin --header: given to it already
        self.data: memoryview | None = None  # what is still to be written to it


class _Feeder:
    """--tee and --roundrobin: stdin streamed into the stdin pipes of running jobs.

    A thread of its own (the process loop writes only inputs known when a
    job starts), on non-blocking pipes, waiting in ``select`` with a wake-up
    pipe, so :meth:`close` ends it whatever it waits for::

        stdin ──> --tee: each chunk to every job; the next chunk once all took it
              └─> --roundrobin: PipeSplitter's blocks, each to one job that took its last

    Memory stays bounded: one chunk (--tee) or one block per job (--roundrobin)
    plus the splitter's buffer. A job that stops reading holds back the
    others (as in GNU parallel); one that exits is dropped (EPIPE).
    """

    CHUNK = 1 << 17

    def __init__(
        self, fd: int, *, tee: bool, expected: int, pipe_source: Any = None, owned: bool = False
    ) -> None:
        import threading

        self.fd = fd
        self._owned = owned  # --tee -a FILE: ours to close
        self.tee = tee
        self.pipe_source = pipe_source  # --roundrobin: where blocks come from
        self.expected = expected  # the jobs to wait for before the first --tee chunk
        self.error: str | None = None
        self._lock = threading.Lock()
        self._new: list[_Outlet] = []
        self._outlets: list[_Outlet] = []
        self._attached = 0
        self._closing = False
        self._done = False  # the thread ended: new jobs get an empty input
        self._all_here = expected <= 0
        self._eof = False
        self._next = 0  # --roundrobin: where the search for an idle job starts
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._main, name="parallel-feeder", daemon=True)
        self._thread.start()

    def attach(self, job: _Job) -> int:
        """A new pipe for ``job``'s stdin: its read end, for the caller to give and close."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)
        with self._lock:
            self._attached += 1
            if self._done:  # nothing more to give: its input ends at once
                os.close(w)
                return r
            self._new.append(_Outlet(w, job))
        self._wake()
        return r

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Stop (at once if jobs still wait for input) and close every pipe left."""
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join()
        for o in self._new + self._outlets:
            os.close(o.fd)
        self._new, self._outlets = [], []
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.pipe_source is not None:
            self.pipe_source.close()
        if self._owned:
            os.close(self.fd)
            self._owned = False

    # ---------------------------------------------------------------- the thread

    def _main(self) -> None:
        try:
            self._loop()
        except _Fatal as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"cannot feed the jobs: {exc}"
        except Exception as exc:  # pragma: no cover - a bug: reported, never a hang
            self.error = f"internal error while feeding the jobs: {exc!r}"
        finally:
            with self._lock:  # the jobs see the end of their input
                self._done = True
                for o in self._outlets + self._new:
                    os.close(o.fd)
                self._outlets, self._new = [], []

    def _adopt(self) -> bool:
        """Take in the new outlets; False when closing."""
        with self._lock:
            if self._closing:
                return False
            self._outlets += self._new
            self._new = []
            self._all_here = self._attached >= self.expected
        return True

    def _drop(self, o: _Outlet) -> None:
        self._outlets.remove(o)
        os.close(o.fd)

    def _read(self) -> bytes | None:
        """The next piece of input (b"" at its end); None if woken up first."""
        import select

        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        poll.register(self._wake_r, select.POLLIN)
        if self._wake_r in {fd for fd, _ in poll.poll()}:
            self._drain_wake()
            return None
        src = self.pipe_source
        if src is not None:
            src.fill()
            return b""
        try:
            return os.read(self.fd, self.CHUNK)
        except OSError as exc:
            raise _Fatal(f"cannot read the input: {exc.strerror}") from None

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        import select

        while self._adopt():
            if not self._outlets and self._all_here:
                return  # every job is gone (or none came): nobody is left to read
            busy = [o for o in self._outlets if o.data is not None]
            if not busy and self._eof:
                return
            # Only once every job is there: --tee's all get the first byte, and
            # --roundrobin's first blocks are spread over all of them.
            if (
                not self._eof
                and self._all_here
                and (not busy if self.tee else len(busy) < len(self._outlets))
            ):
                self._give()
                continue
            poll = select.poll()  # not select(): -j may pass FD_SETSIZE
            poll.register(self._wake_r, select.POLLIN)
            for o in busy:
                poll.register(o.fd, select.POLLOUT)
            ready = {fd for fd, _ in poll.poll()}
            if self._wake_r in ready:
                self._drain_wake()
            for o in busy:
                if o.fd in ready:
                    self._write(o)

    def _give(self) -> None:
        """Read the next chunk or block and hand it to the jobs that get it."""
        if self.tee:
            data = self._read()
            if data is None:
                return
            if not data:
                self._eof = True
                return
            view = memoryview(data)
            for o in self._outlets:
                o.data = view
            return
        src = self.pipe_source
        block = src.take(headed=False)
        if block is _NOT_READY:
            self._read()
            return
        if block is None:
            self._eof = True
            return
        idle = [o for o in self._outlets if o.data is None]
        o = idle[self._next % len(idle)]
        self._next += 1
        if not o.headed:  # as GNU parallel: the header once, before a job's first block
            o.headed = True
            header = src._split.header
            block = header + block if header else block
        o.data = memoryview(block)
        o.job.send += len(block)

    def _write(self, o: _Outlet) -> None:
        data = o.data
        assert data is not None
        try:
            n = os.write(o.fd, data)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the job ended or closed its stdin
            self._drop(o)
            return
        if self.tee:
            o.job.send += n
        o.data = data[n:] if n < len(data) else None


#: A group of inputs on the command line: ":::" or "::::", its words, linked (:::+).
Group = tuple[str, list[str], bool]


def _split_sources(tokens: Sequence[str], arg_sep: str, file_sep: str) -> list[Group]:
    groups: list[Group] = []
    for tok in tokens:
        if tok in (arg_sep, arg_sep + "+"):
            groups.append((":::", [], tok.endswith("+")))
        elif tok in (file_sep, file_sep + "+"):
            groups.append(("::::", [], tok.endswith("+")))
        else:
            groups[-1][1].append(tok)
    return groups


# --------------------------------------------------------------------------- output


class _OutputClosed(Exception):
    pass


def _send_range(fd: int, block: Any) -> None:
    """Write a --pipepart block (a FileRange: its header, then the file's bytes by
    sendfile, never through this process's memory) to ``fd``."""
    _write(fd, block.head)
    done = 0
    while done < block.length:
        n = os.sendfile(fd, block.fd, block.offset + done, block.length - done)
        if n == 0:
            break
        done += n


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        except BrokenPipeError:
            raise _OutputClosed from None
        view = view[n:]


class _JobOut:
    __slots__ = ("done", "pending", "tag")

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.done = False
        self.pending: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])


class _Sink:
    """Where job output goes: whole jobs at a time (or whole lines), in order with -k."""

    def __init__(self, *, keep_order: bool, line_buffer: bool) -> None:
        self.keep_order = keep_order
        self.line_buffer = line_buffer
        self._jobs: dict[int, _JobOut] = {}
        self._head = 1
        self.dropped = False
        self.record_fd = -1
        #: The header line of --results FILE.csv/.tsv: written before the first line
        #: that goes out (with -k that is job 1's, whichever job ended first).
        self.record_header = b""

    def _job(self, seq: int, tag: bytes) -> _JobOut:
        job = self._jobs.get(seq)
        if job is None:
            job = self._jobs[seq] = _JobOut(tag)
        return job

    def _emit(self, seq: int, final: bool) -> None:
        job = self._jobs[seq]
        if final and job.pending[0]:  # its line of --results FILE.csv
            if self.record_header:
                _write(self.record_fd, self.record_header)
                self.record_header = b""
            _write(self.record_fd, b"".join(job.pending[0]))
            job.pending[0].clear()
        for kind in (1, 2):
            pending = job.pending[kind]
            if not pending:
                continue
            data = b"".join(pending)
            pending.clear()
            if not final:
                cut = data.rfind(b"\n") + 1
                if cut < len(data):
                    pending.append(data[cut:])
                    data = data[:cut]
                if not data:
                    continue
            if job.tag:
                lines = data.split(b"\n")
                last = lines.pop()
                data = b"".join(job.tag + line + b"\n" for line in lines)
                if last:
                    data += job.tag + last
            _write(kind, data)

    def chunk(self, seq: int, tag: bytes, kind: int, data: bytes) -> None:
        """Output of a running job (--line-buffer)."""
        if self.dropped:
            return
        job = self._job(seq, tag)
        job.pending[kind].append(data)
        if b"\n" in data and (not self.keep_order or seq == self._head):
            self._emit(seq, final=False)

    def complete(self, seq: int, tag: bytes, out: bytes, err: bytes, record: bytes = b"") -> None:
        """A job ended; ``out``/``err`` is what was not yet handed to :meth:`chunk`.

        ``record`` goes to :attr:`record_fd` (``--results FILE.csv``), in order with the rest.
        """
        if self.dropped:
            return
        job = self._job(seq, tag)
        if record:
            job.pending[0].append(record)
        if out:
            job.pending[1].append(out)
        if err:
            job.pending[2].append(err)
        job.done = True
        if not self.keep_order:
            self._emit(seq, final=True)
            del self._jobs[seq]
        else:
            self._advance()

    def skip(self, seq: int) -> None:
        """A job number that prints nothing (resumed, ended by --halt)."""
        if self.dropped:
            return
        self._job(seq, b"").done = True
        if self.keep_order:
            self._advance()
        else:
            del self._jobs[seq]

    def _advance(self) -> None:
        while True:
            job = self._jobs.get(self._head)
            if job is None:
                return
            if not job.done:
                if self.line_buffer:
                    self._emit(self._head, final=False)
                return
            self._emit(self._head, final=True)
            del self._jobs[self._head]
            self._head += 1

    def discard(self) -> None:
        """Print nothing more: what is kept back is dropped, later output ignored (--halt now)."""
        self._jobs.clear()
        self.dropped = True

    def finish(self) -> None:
        """Print whatever is left, in job order (jobs never run leave gaps)."""
        for seq in sorted(self._jobs):
            self._emit(seq, final=True)
        self._jobs.clear()


# --------------------------------------------------------------------------- jobs


class _Job:
    __slots__ = (
        "args",
        "evicted",
        "halted",
        "input",
        "program",
        "send",
        "seq",
        "slot",
        "tries",
    )

    def __init__(self, seq: int, args: tuple[str, ...]) -> None:
        self.input: Any = None  # --pipe: the block for its stdin (bytes or a FileRange)
        self.send = 0  # bytes given on stdin (the joblog's Send)
        self.program = ""
        self.seq = seq
        self.args = args
        self.slot = 0
        self.tries = 0
        self.halted = False
        self.evicted = False  # killed by --memfree: queued again (if it has tries left)


class _Median:
    """Running median (two heaps) of successful runtimes, for --timeout N%."""

    def __init__(self) -> None:
        self._lo: list[float] = []  # max-heap (negated)
        self._hi: list[float] = []

    def add(self, x: float) -> None:
        if self._lo and x > -self._lo[0]:
            heapq.heappush(self._hi, x)
        else:
            heapq.heappush(self._lo, -x)
        if len(self._lo) > len(self._hi) + 1:
            heapq.heappush(self._hi, -heapq.heappop(self._lo))
        elif len(self._hi) > len(self._lo):
            heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def value(self) -> float:
        return -self._lo[0]


class _Runner:
    def __init__(
        self, opts: argparse.Namespace, source: Any, template: Any, jobs: int | None, shell: str
    ):
        from .. import _parallel_spec as spec

        self.spec = spec
        self.opts = opts
        self.source = source
        self.template = template
        # -X, -N: a COMMAND per number of inputs, its {} words repeated (context replace).
        self.context = bool(opts.X or opts.max_replace_args is not None)
        self.templates: dict[int, Any] = {}
        self.jobs = jobs
        self.tries = max(1, opts.retries)
        self.shell = shell
        self.timeout: float | None = None
        self.timeout_pct: float | None = None
        if opts.timeout is not None:
            value, pct = spec.parse_duration(opts.timeout)
            if value == 0:
                pass  # no limit, as GNU parallel's --timeout 0 (and timeout(1)'s 0)
            elif pct:
                self.timeout_pct = value / 100
            else:
                self.timeout = value
        self.median = _Median()
        # Without --termseq: polytask's own policy (TERM, GRACE, KILL), not GNU's default.
        self.termseq = spec.parse_termseq(opts.termseq) if opts.termseq is not None else None
        self.halt: spec.HaltPolicy = (
            spec.HaltPolicy.parse(opts.halt) if opts.halt else spec.HaltPolicy()
        )
        self.halt_status: int | None = None
        self.halted_now = False  # --halt now triggered: nothing more is printed or logged
        self.stop = False
        self.failed = self.succeeded = self.started = 0
        self.seq = 0
        self.skip: set[int] = set()
        self.retry: deque[_Job] = deque()
        self.free_slots: list[int] = []
        self.next_slot = 1
        self.sink = _Sink(keep_order=opts.keep_order, line_buffer=opts.line_buffer)
        # --line-buffer: output printed as it comes, unless it goes to files.
        self.streaming = bool(opts.line_buffer and not opts.results and not opts.files)
        self.joblog: Any = None
        self.bar: Any = None
        self.loop: Any = None
        self.limit = 1
        self.exhausted = False
        self.name_max: int | None = None  # of --results' file system, found at the first save
        self.token = opts.I or "{}"
        results = opts.results
        self.results_kind = spec.results_format(results) if results else None
        self.results_named = bool(
            results
            and not self.results_kind
            and spec.has_replacement(results, self.token, plus=opts.plus)
        )
        self.results_file: Any = None  # --results FILE.csv: its file, or stdout for -.csv
        self.results_header = False
        self.names: list[str] = []  # --header's column names (the CSV's columns)
        self.delay = (
            spec.parse_duration(opts.delay, option="--delay", percent=False)[0]
            if opts.delay
            else 0.0
        )
        self.next_start = 0.0  # monotonic time before which --delay starts nothing
        self.delayed = False
        self.pipe = bool(opts.pipe or opts.pipepart)
        if self.pipe:
            self.context = False  # -N counts records, not arguments
        self.cat_files: set[str] = set()  # --cat: the temporary files of jobs not ended yet
        self.resume: Any = None  # --resume(-failed): the joblog's ResumeIndex
        self.events: Any = None  # --events: the EventLog
        # --load MAX, --memfree SIZE (bytes): checked before each start (_setup parsed them).
        self.load_max: float | None = getattr(opts, "load_max", None)
        self.memfree: int | None = getattr(opts, "memfree_bytes", None)
        self.throttled = False  # a start waits for --load / --memfree: poll again soon
        self.feeder: _Feeder | None = None  # --tee, --roundrobin: stdin into running jobs
        # --fifo: path -> (its block, set when its job ended); their directory, writers.
        self.fifos: dict[str, tuple[Any, Any]] = {}
        self.fifo_dir: str | None = None
        self.fifo_threads: list[Any] = []

    # -------------------------------------------------------------- setup

    def open_joblog(self) -> None:
        opts, spec = self.opts, self.spec
        path: str | None = opts.joblog
        resume = opts.resume or opts.resume_failed
        if path is None:
            if resume or opts.retry_failed:
                raise _UsageError("--resume, --resume-failed and --retry-failed need --joblog FILE")
            return
        append = path.startswith("+")
        if append:
            path = path[1:]
        if resume or opts.retry_failed:
            entries, nonempty = _read_joblog(path) or ([], False)
            if resume:
                # By command line, unless it does not tell jobs apart (--pipe's blocks)
                # or holds the slot, known only as the job starts: then GNU's Seq.
                by_seq = self.pipe or any(
                    isinstance(p, spec.Repl) and p.kind in ("slot", "slot0")
                    for p in self.template.parts
                )
                self.resume = spec.ResumeIndex(
                    entries, failed_too=opts.resume_failed, by_seq=by_seq
                )
            # GNU parallel appends to a joblog with a line in it; a new or
            # empty one gets its header.
            append = append or nonempty
        try:
            f = open(path, "a" if append else "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - open for the whole run
        except OSError as exc:
            raise _Fatal(f"cannot write joblog {path!r}: {exc.strerror}") from None
        if not append:  # GNU parallel writes no header when it appends, even to a new file
            f.write(spec.JOBLOG_HEADER)
            f.flush()
        self.joblog = f

    def open_events(self) -> None:
        """--events FILE ('-': stderr), appended to as by polytask up."""
        path: str | None = self.opts.events
        if path is None:
            return
        from ._events import EventLog

        try:
            self.events = EventLog.open(path, on_error=_warn)
        except OSError as exc:
            raise _Fatal(f"cannot write events file {path!r}: {exc.strerror}") from None

    def close_events(self) -> None:
        if self.events is not None:
            self.events.close()

    def close_files(self) -> None:
        """The joblog, results and events files (--dry-run never runs the loop that closes them)."""
        for f in (self.joblog, self.results_file):
            if f is not None:
                f.close()
        self.close_events()

    # -------------------------------------------------------------- running

    def next_job(self) -> Any:
        while True:
            args = self.source.take()
            if args is None or args is _NOT_READY:
                return args
            self.seq += 1
            if self.pipe:  # a block for the job's stdin; no arguments
                job = _Job(self.seq, ())
                job.input = args
                job.send = len(args)
            else:
                job = _Job(self.seq, args)
            if self.seq in self.skip or (
                self.resume is not None
                and self.resume.skip(self.seq, "" if self.resume.by_seq else self.text(job))
            ):
                self.sink.skip(self.seq)
                if self.bar is not None:
                    self.bar.advance()
                continue
            return job

    def tmpl(self, job: _Job) -> Any:
        """The job's Template: the COMMAND's, or with -X/-N the one for its number of inputs."""
        if not self.context:
            return self.template
        n = len(job.args)
        t = self.templates.get(n)
        if t is None:
            t = self.templates[n] = _context_template(self.opts, n, self.shell)
        return t

    def text(self, job: _Job) -> str:
        """The job's command line as it runs (for logs and messages); never raises."""
        t = self.tmpl(job)
        try:
            text: str = t.shell_text(job.args, job.seq, job.slot)
        except self.spec.UnsafeInput:
            text = t.source()  # a refused job ran nothing: log the COMMAND
        return text

    def trace(self, job: _Job) -> str:
        """The line -t prints for the job: its command line; with --shellquote, as GNU
        parallel's, the command GNU runs for it, which prints the same (a Perl one
        given the line quoted once more than it prints it)."""
        text = self.text(job)
        if not self.opts.shellquote:
            return text
        for _ in range(self.opts.shellquote + 1):
            text = self.spec.gnu_quote(text)
        return """perl -e '$,=" "; print "@ARGV\\n";' -- """ + text

    def dry_run(self) -> int:
        refused = 0
        while True:
            job = self.next_job()
            if job is None:
                return self.spec.exit_status(refused)
            if job is _NOT_READY:
                self.source.fill()
                continue
            job.slot = 1
            try:
                text = self.tmpl(job).shell_text(job.args, job.seq, job.slot)
            except self.spec.UnsafeInput as exc:
                refused += 1
                _warn(f"job {job.seq} would not run: {exc}")
                continue
            if self.opts.trace:  # as GNU parallel: -t says it too
                _write(2, os.fsencode(self.trace(job)) + b"\n")
            _write(1, self.tag(job) + os.fsencode(text) + b"\n")

    def run(self) -> int:
        # GNU parallel's variables: PARALLEL_PID for every job (the loop's
        # environment is read at its first start), PARALLEL_SEQ and
        # PARALLEL_JOBSLOT per job (a nested run's own are not passed on).
        saved = {k: os.environ.get(k) for k in _JOB_VARIABLES}
        for k in _JOB_VARIABLES:
            os.environ.pop(k, None)
        os.environ["PARALLEL_PID"] = str(os.getpid())
        try:
            status = self._run()
            self.event("done", returncode=status)
            return status
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _run(self) -> int:
        from .._os.childloop import ProcessLoop

        loop: Any
        if self.opts.backend is not None:  # the jobs run on a cluster's workers
            from ._parallel_cluster import ClusterLoop, ClusterUnavailable

            try:
                loop = ClusterLoop(
                    self.opts.backend,
                    self.opts.address,
                    jobs=self.jobs or 1,
                    grace=GRACE,
                    termseq=self.termseq,
                )
            except ClusterUnavailable as unavailable:
                raise _Fatal(str(unavailable)) from None
        else:
            loop = ProcessLoop(grace=GRACE, posix_spawn=True, termseq=self.termseq)
        self.loop = loop
        limit = self.limit = self.jobs if self.jobs is not None else 1 << 30
        # What a finished job does (a retry, a halt, a new median) cannot
        # change what starts next: start the next jobs first, then do the
        # finished jobs' bookkeeping while those run.
        eager = not self.halt.active and self.tries == 1 and self.timeout_pct is None
        watching = False
        try:
            while True:
                self.delayed = self.throttled = False
                need_input = self.fill()
                wait_for: float | None = None
                if self.delayed:  # --delay: the next start is due at next_start
                    wait_for = max(0.0, self.next_start - time.monotonic())
                if self.throttled or (self.memfree is not None and loop.running):
                    # --load / --memfree: the machine's state is polled, no event tells it
                    wait_for = min(THROTTLE_POLL, THROTTLE_POLL if wait_for is None else wait_for)
                if loop.running == 0:
                    if (self.exhausted and not self.retry) or self.stop:
                        break
                    if wait_for is not None:
                        time.sleep(wait_for)
                    else:
                        self.source.fill()  # needs input and nothing runs: blocking is fine
                    continue
                if need_input and not watching:
                    loop.watch(self.source.fd)
                    watching = True
                elif watching and not need_input:
                    loop.unwatch(self.source.fd)
                    watching = False
                finished, ready = loop.wait(wait_for)
                if ready:
                    self.source.fill()
                for job, exc in loop.failed_starts():
                    self.start_failed(job, job.program, exc)
                if self.memfree is not None:
                    self.check_memory()
                if eager and finished:
                    for child in finished:
                        self.release(child.token)
                    if loop.running < limit:
                        self.fill()
                    for child in finished:
                        self.finished(child, released=True)
                else:
                    for child in finished:
                        self.finished(child)
            self.sink.finish()
        finally:
            loop.close()
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            for path in self.cat_files:  # jobs ended early (Ctrl-C, --halt now)
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if self.feeder is not None:
                self.feeder.close()
            if self.fifo_dir is not None:
                self.drop_fifos()
            if self.joblog is not None:
                self.joblog.close()
            if self.results_file is not None:
                self.results_file.close()
        if self.feeder is not None and self.feeder.error is not None:
            raise _Fatal(self.feeder.error)
        if self.halt_status is not None:
            return self.halt_status
        if self.halt.active and self.halt.pct is not None:
            return self.halt.exit_status(
                failed=self.failed, started=self.started, total=None, exitval=0, signal=0
            )
        return self.spec.exit_status(self.failed)

    def fill(self) -> bool:
        """Start jobs while there is room; True if the next one waits for input."""
        loop, limit = self.loop, self.limit
        while not self.stop and loop.running < limit:
            if self.delay and time.monotonic() < self.next_start:
                self.delayed = True  # the loop wakes at next_start
                return False
            if self.retry:
                job = self.retry.popleft()
            elif self.exhausted:
                return False
            else:
                job = self.next_job()
                if job is None:
                    self.exhausted = True
                    return False
                if job is _NOT_READY:
                    return True
            if (self.load_max is not None or self.memfree is not None) and self.hold():
                # Held back, first in line; the loop looks again in THROTTLE_POLL. (Taken
                # from the input first: with no job left, nothing waits for the machine.)
                self.retry.appendleft(job)
                self.throttled = True
                return False
            self.start(job)
        return False

    def hold(self) -> bool:
        """--load / --memfree: True if no job may start now (GNU parallel's rules)."""
        spec = self.spec
        if self.load_max is not None:
            load = spec.instant_load(_read_proc("/proc/stat"))
            if load >= self.load_max:
                return True
        if self.memfree is not None:
            available, _ = spec.meminfo(_read_proc(_MEMINFO))
            if available < self.memfree:
                return True
        return False

    def check_memory(self) -> None:
        """--memfree: under half of SIZE available, end the youngest job (queued again).

        One at a time: the next is chosen only once the last has exited and its
        memory is back, as GNU parallel reads the memory again after each kill.
        """
        assert self.memfree is not None
        children = self.loop.children()
        if any(c.token.evicted for c in children):  # until it is over, its memory included
            return
        running = {c.token.seq: c for c in children if not c.exited and not c.token.halted}
        available, _ = self.spec.meminfo(_read_proc(_MEMINFO))
        victim = self.spec.memfree_victim(available, self.memfree, running)
        if victim is None:
            return
        child = running[victim]
        job: _Job = child.token
        job.evicted = True
        _warn(
            f"only {available} bytes of memory available (under half of --memfree "
            f"{self.memfree}): ending the youngest job, {job.seq}"
            + (", to run it again" if job.tries < self.tries else " (no --retries left: it fails)")
        )
        self.event("kill", job, pid=child.pid, reason="memfree", available=available)
        self.loop.terminate(child)

    def save_block(self, job: _Job) -> None:
        """--cat: the job's block in a temporary file, whose name is its one argument."""
        import tempfile

        from .._os.childloop import FileRange

        fd, path = tempfile.mkstemp(prefix="par")
        self.cat_files.add(path)
        try:
            block = job.input
            if isinstance(block, FileRange):
                _send_range(fd, block)
            else:
                _write(fd, block)
        except OSError as exc:
            raise _Fatal(f"cannot write the block of job {job.seq} to {path!r}: {exc}") from None
        finally:
            os.close(fd)
        job.args = (path,)
        job.input = None

    def drop_block(self, job: _Job) -> None:
        """--cat: remove the job's temporary file once the job is over."""
        if job.args and job.args[0] in self.cat_files:
            self.cat_files.discard(job.args[0])
            try:
                os.unlink(job.args[0])
            except OSError:
                pass

    def make_fifo(self, job: _Job) -> None:
        """--fifo: a FIFO for the job's block in our private directory, its one argument."""
        import tempfile

        from .._os.proc import guard_path

        if self.fifo_dir is None:
            self.fifo_dir = tempfile.mkdtemp(prefix="par")  # 0700: only we can reach in
        path = os.path.join(self.fifo_dir, f"{job.seq}.fifo")
        try:
            os.mkfifo(path, 0o600)
        except OSError as exc:
            raise _Fatal(f"cannot make the FIFO of job {job.seq} ({path!r}): {exc}") from None
        guard_path(path)  # unlinked by the guardian if we are killed
        self.fifos[path] = (job.input, None)
        job.args = (path,)
        job.input = None

    def feed_fifo(self, job: _Job) -> None:
        """Start writing the job's block into its FIFO once the job opens it (a thread)."""
        import threading

        path = job.args[0]
        block, _ = self.fifos[path]
        ended = threading.Event()
        self.fifos[path] = (block, ended)
        t = threading.Thread(
            target=_fifo_writer, args=(path, block, ended), name="parallel-fifo", daemon=True
        )
        t.start()
        self.fifo_threads = [x for x in self.fifo_threads if x.is_alive()] + [t]

    def drop_fifo(self, job: _Job, *, retry: bool = False) -> None:
        """--fifo: the job ended: its writer stops, its FIFO goes (kept for a retry)."""
        from .._os.proc import unguard_path

        if not job.args or job.args[0] not in self.fifos:
            return
        path = job.args[0]
        ended = self.fifos[path][1]
        if ended is not None:
            ended.set()
        if retry:
            return
        del self.fifos[path]
        try:
            os.unlink(path)
        except OSError:
            pass
        unguard_path(path)

    def drop_fifos(self) -> None:
        """Every FIFO left (Ctrl-C, --halt now), and their directory."""
        from .._os.proc import unguard_path

        for path, (_, ended) in list(self.fifos.items()):
            if ended is not None:
                ended.set()
            try:
                os.unlink(path)
            except OSError:
                pass
            unguard_path(path)
        self.fifos.clear()
        for t in self.fifo_threads:  # their readers are gone: they end at once
            t.join(GRACE)
        if self.fifo_dir is not None:
            try:
                os.rmdir(self.fifo_dir)
            except OSError:
                pass
            self.fifo_dir = None

    def start_fed(self, job: _Job, argv: list[str], timeout: float | None, env: Any) -> None:
        """--tee, --roundrobin: the job's stdin is a pipe the feeder writes as input comes."""
        assert self.feeder is not None
        r = self.feeder.attach(job)
        try:
            self.loop.spawn(
                argv,
                token=job,
                timeout=timeout,
                capture=not self.opts.ungroup,
                on_output=self.on_output if self.streaming else None,
                stdin=r,
                extra_env=env,
            )
        except (OSError, ValueError) as error:
            self.start_failed(job, job.program, error)
        finally:
            os.close(r)  # the job's now (a job that failed to start: EPIPE for the feeder)

    def start(self, job: _Job) -> None:
        if self.opts.cat and job.input is not None:
            self.save_block(job)
        elif self.opts.fifo and job.input is not None:
            self.make_fifo(job)
        job.slot = heapq.heappop(self.free_slots) if self.free_slots else self._new_slot()
        job.tries += 1
        self.started += job.tries == 1
        try:
            t = self.tmpl(job)
            argv = t.argv(job.args, job.seq, job.slot)
            if self.opts.shellquote:
                # GNU parallel's job then prints its command line, quoted once
                # for each --shellquote (GNU's Q), instead of running it.
                text = t.shell_text(job.args, job.seq, job.slot)
                for _ in range(self.opts.shellquote):
                    text = self.spec.gnu_quote(text)
                argv = ["printf", "%s\n", text]
            elif argv is None:
                argv = [self.shell, "-c", t.shell_text(job.args, job.seq, job.slot)]
        except self.spec.UnsafeInput as unsafe:
            # Not run at all: a shell would only have failed on it, or run the input.
            msg = f"{PROG}: job {job.seq} not run: {unsafe}\n".encode(errors="surrogateescape")
            self.event("refused", job, code=REFUSED, error=str(unsafe))
            self.release(job)
            self.ended(job, REFUSED, 0, b"", msg, time.time(), 0.0)
            return
        job.program = argv[0]
        opts = self.opts
        if opts.nice is not None:
            argv = ["nice", "-n", str(opts.nice), *argv]
        if self.delay:
            self.next_start = time.monotonic() + self.delay
        if opts.trace:
            _write(2, os.fsencode(self.trace(job)) + b"\n")
        if opts.v and opts.ungroup:
            _write(1, os.fsencode(self.text(job)) + b"\n")
        on_output = self.on_output if self.streaming else None
        if opts.v and on_output is not None:
            self.sink.chunk(job.seq, self.tag(job), 1, os.fsencode(self.text(job)) + b"\n")
        timeout = self.timeout
        if self.timeout_pct is not None and self.succeeded:
            timeout = self.timeout_pct * self.median.value()
        env = (b"PARALLEL_SEQ=%d" % job.seq, b"PARALLEL_JOBSLOT=%d" % job.slot)
        if self.feeder is not None:
            self.start_fed(job, argv, timeout, env)
            return
        if opts.fifo:
            self.feed_fifo(job)
        if job.input is not None and not opts.cat:
            block = job.input
            if self.tries == 1:
                job.input = None  # no retry: the loop holds the only reference, until written
            try:
                child = self.loop.spawn(
                    argv,
                    token=job,
                    timeout=timeout,
                    capture=not opts.ungroup,
                    on_output=on_output,
                    input=block,
                    extra_env=env,
                )
            except (OSError, ValueError) as error:
                self.start_failed(job, job.program, error)
            else:
                self.spawned(child)
            return
        if opts.ungroup:  # straight to our stdout and stderr: nothing captured
            try:
                child = self.loop.spawn(
                    argv, token=job, timeout=timeout, capture=False, extra_env=env
                )
            except (OSError, ValueError) as error:
                self.start_failed(job, job.program, error)
            else:
                self.spawned(child)
            return
        # --events: started here, so that the start event has the pid.
        if (self.jobs is None or self.jobs > 1) and self.events is None:
            # Started here, or by starter threads while the machine is busy.
            self.loop.spawn_soon(
                argv, token=job, timeout=timeout, on_output=on_output, extra_env=env
            )
            for failed, exc in self.loop.failed_starts():  # those started here, at once
                self.start_failed(failed, failed.program, exc)
            return
        try:
            child = self.loop.spawn(
                argv, token=job, timeout=timeout, on_output=on_output, extra_env=env
            )
        except (OSError, ValueError) as exc:
            self.start_failed(job, argv[0], exc)
        else:
            self.spawned(child)

    def spawned(self, child: Any) -> None:
        """A job's program started (--events: its start event)."""
        if self.events is not None:
            job: _Job = child.token
            self.event(
                "spawn",
                job,
                pid=child.pid,
                slot=job.slot,
                attempt=job.tries,
                command=self.text(job),
                at=child.started_wall,
            )

    def event(self, kind: str, job: _Job | None = None, **fields: Any) -> None:
        """--events: one line, ``{"time", "event", "process": "job.N", "job": N, ...}``."""
        if self.events is None:
            return
        if job is None:
            self.events.emit(kind, **fields)
        else:
            self.events.emit(kind, f"job.{job.seq}", job=job.seq, **fields)

    def start_failed(self, job: _Job, program: str, exc: Exception) -> None:
        # What a shell would say and exit with: 127 not found, 126 cannot run.
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        why = "command not found" if code == 127 else (getattr(exc, "strerror", None) or str(exc))
        msg = f"{PROG}: {program}: {why}\n".encode(errors="surrogateescape")
        self.event("spawn_error", job, code=code, error=f"{program}: {why}")
        self.release(job)
        self.ended(job, code, 0, b"", msg, time.time(), 0.0)

    def _new_slot(self) -> int:
        slot = self.next_slot
        self.next_slot += 1
        return slot

    def release(self, job: _Job) -> None:
        heapq.heappush(self.free_slots, job.slot)

    def tag(self, job: _Job) -> bytes:
        if self.opts.tagstring is not None:
            text = self.spec.render_raw(
                self.opts.tagstring,
                job.args,
                job.seq,
                job.slot,
                self.token,
                plus=self.opts.plus,
                counts=self.opts.counts,
            )
            return os.fsencode(text) + b"\t"
        if not self.opts.tag:
            return b""
        return os.fsencode(" ".join(self.spec.plain(job.args))) + b"\t"

    def on_output(self, child: Any, kind: int, data: bytes) -> None:
        job: _Job = child.token
        if not job.halted:
            self.sink.chunk(job.seq, self.tag(job), kind, data)

    def finished(self, child: Any, *, released: bool = False) -> None:
        job: _Job = child.token
        if not released:
            self.release(job)
        rc: int = child.returncode
        if job.halted or self.halted_now:
            self.exit_event(child, "killed")
            self.drop_block(job)
            if self.fifos:
                self.drop_fifo(job)
            self.sink.skip(job.seq)
            return
        if child.timed_out:
            exitval, sig = -1, (-rc if rc < 0 else int(signal.SIGTERM))
            _warn(
                f"Warning: This job was killed because it timed out:\n{PROG}: Warning: {self.text(job)}"
            )
        elif job.evicted:  # --memfree: GNU parallel's Exitval -1 of a killed job
            job.evicted = False
            exitval, sig = -1, (-rc if rc < 0 else int(signal.SIGTERM))
        elif rc < 0:
            exitval, sig = 0, -rc
        else:
            exitval, sig = rc, 0
        failed = bool(exitval or sig)
        if failed and job.tries < self.tries:
            if self.fifos:
                self.drop_fifo(job, retry=True)
            self.exit_event(child, "retry")
            self.event("retry", job, attempt=job.tries + 1, attempts=self.tries)
            self.retry.append(job)
            return
        self.exit_event(child, "failed" if failed else "succeeded")
        self.ended(
            job,
            exitval,
            sig,
            child.output(1),
            child.output(2),
            child.started_wall,
            child.duration,
            child.nbytes[1],
        )

    def exit_event(self, child: Any, state: str) -> None:
        """--events: a timeout (when it was ended) and the exit of ``child``'s job."""
        if self.events is None:
            return
        job: _Job = child.token
        # The limit: a local deadline, or the one a cluster's worker kept (--backend).
        limit = getattr(child, "timeout", None)
        if child.deadline is not None:
            limit = child.deadline - child.started
        if child.timed_out and limit is not None:
            self.event(
                "timeout",
                job,
                pid=child.pid,
                timeout=round(limit, 3),
                at=child.started_wall + limit,
            )
        rc: int = child.returncode
        self.event(
            "exit",
            job,
            pid=child.pid,
            code=rc,
            description=self.describe(rc),
            duration=round(child.duration, 6),
            state=state,
            attempt=job.tries,
        )

    @staticmethod
    def describe(rc: int) -> str:
        from .._core.errors import describe_exit

        return describe_exit(rc)

    def ended(
        self,
        job: _Job,
        exitval: int,
        sig: int,
        out: bytes,
        err: bytes,
        start_wall: float,
        runtime: float,
        receive: int | None = None,
    ) -> None:
        opts, spec = self.opts, self.spec
        if self.cat_files:
            self.drop_block(job)
        if self.fifos:
            self.drop_fifo(job)
        if self.joblog is not None:
            line = spec.joblog_line(
                job.seq,
                start_wall,
                runtime,
                job.send,
                len(out) if receive is None else receive,
                exitval,
                sig,
                self.text(job),
            )
            self.joblog.write(line)
            self.joblog.flush()
        failed = bool(exitval or sig)
        if opts.v and not opts.ungroup and not self.streaming:
            out = os.fsencode(self.text(job)) + b"\n" + out
        if self.results_kind is not None:
            record = self.result_record(job, exitval, sig, out, err, start_wall, runtime, receive)
            self.sink.complete(job.seq, b"", b"", b"", record)
        elif opts.results and (saved := self.save_results(job, out, err)) is not None:
            if opts.files:  # the name of its stdout file instead of nothing
                self.sink.complete(job.seq, self.tag(job), os.fsencode(saved) + b"\n", b"")
            else:
                self.sink.skip(job.seq)
        elif opts.files and (saved := self.save_file(job, out)) is not None:
            # GNU parallel loses the job's stderr here; polytask prints it.
            self.sink.complete(job.seq, self.tag(job), os.fsencode(saved) + b"\n", err)
        else:
            # Without --results, or when they could not be saved: the output
            # goes to our stdout and stderr rather than nowhere.
            self.sink.complete(job.seq, self.tag(job), out, err)
            if (opts.results or opts.files) and not failed:
                failed = True
                exitval = 1  # for --halt's status: the job's purpose failed
        if failed:
            self.failed += 1
        else:
            self.succeeded += 1
            if self.timeout_pct is not None:
                self.median.add(runtime)
                new = self.timeout_pct * self.median.value()
                for child in self.loop.children():
                    if not child.exited and child.kill_at is None:
                        self.loop.set_deadline(child, child.started + new)
        if self.bar is not None:
            self.bar.advance()
        self.check_halt(job, exitval, sig, failed)

    def check_halt(self, job: _Job, exitval: int, sig: int, failed: bool) -> None:
        """GNU parallel's should_we_halt, after every job that ended (its lines and status)."""
        halt = self.halt
        if not halt.active:
            return
        count: int | None = None
        if failed and halt.what == "fail":
            _warn(f"This job failed:\n{self.text(job)}")
            count = self.failed
        elif not failed and halt.what == "success":
            _warn(f"This job succeeded:\n{self.text(job)}")
            count = self.succeeded
        if halt.what == "done":
            _warn(f"This job finished:\n{self.text(job)}")
            count = self.failed + self.succeeded
        total = self.source.total
        if count is None or not halt.reached(count, total):
            return
        if self.halt_status is None or halt.what == "success":
            self.halt_status = halt.exit_status(
                failed=self.failed, started=self.started, total=total, exitval=exitval, signal=sig
            )
        self.stop = True
        running = [c for c in self.loop.children() if not c.exited]
        if halt.when == "now":
            # As GNU parallel: nothing more is printed, not even output kept back by -k.
            self.halted_now = True
            self.sink.discard()
            for child in running:
                child.token.halted = True
                self.event("kill", child.token, pid=child.pid, reason="halt")
                self.loop.terminate(child)
        elif running:
            _warn(f"Starting no more jobs. Waiting for {len(running)} jobs to finish.")

    def result_record(
        self,
        job: _Job,
        exitval: int,
        sig: int,
        out: bytes,
        err: bytes,
        start_wall: float,
        runtime: float,
        receive: int | None,
    ) -> bytes:
        """The job's line of --results FILE.csv/.tsv/.json (the header line first, once)."""
        spec = self.spec

        def text(b: bytes) -> str:
            return b.decode("utf-8", "surrogateescape")

        line = spec.result_record(
            self.results_kind,
            seq=job.seq,
            starttime=start_wall,
            runtime=runtime,
            receive=len(out) if receive is None else receive,
            exitval=exitval,
            signal=sig,
            command=self.text(job),
            args=job.args,
            stdout=text(out),
            stderr=text(err),
        )
        if not self.results_header and self.results_kind != "json":
            self.results_header = True
            names = self.names or [f"V{i}" for i in range(1, len(job.args) + 1)]
            sep = "," if self.results_kind == "csv" else "\t"
            header = spec.csv_header(names, sep)
            self.sink.record_header = header.encode("utf-8", "surrogateescape")
        data: bytes = line.encode("utf-8", "surrogateescape")
        return data

    def open_results(self) -> None:
        """Open --results FILE.csv/.tsv/.json (``-.csv``: our stdout, and no other output)."""
        path = self.opts.results
        if self.results_kind is None:
            return
        if path[: path.rfind(".")] == "-":
            self.sink.record_fd = 1
            return
        try:
            self.results_file = open(path, "wb")  # noqa: SIM115 - open for the whole run
        except OSError as exc:
            raise _Fatal(f"cannot write results file {path!r}: {exc.strerror}") from None
        self.sink.record_fd = self.results_file.fileno()

    def save_file(self, job: _Job, out: bytes) -> str | None:
        """--files: the job's output in a new file in $TMPDIR, its name; None (and a message)
        if it could not be written. Left there for the user, as GNU parallel leaves it."""
        import tempfile

        try:
            fd, path = tempfile.mkstemp(prefix="par", suffix=".par")
        except OSError as exc:
            _warn(
                f"cannot save the output of job {job.seq} in {tempfile.gettempdir()!r}: "
                f"{exc.strerror}; its output follows here instead, and it counts as failed"
            )
            return None
        try:
            _write(fd, out)
        except OSError as exc:
            _warn(
                f"cannot save the output of job {job.seq} in {path!r}: {exc.strerror}; "
                "its output follows here instead, and it counts as failed"
            )
            os.unlink(path)
            return None
        finally:
            os.close(fd)
        return path

    def save_results(self, job: _Job, out: bytes, err: bytes) -> str | None:
        """Write the job's output under --results: the name of its stdout file, or None
        (and a message) if it could not be."""
        if self.results_named:
            # GNU parallel: FILE, FILE.err, FILE.seq; or DIR/stdout ... for one ending in /.
            path = self.spec.render_raw(
                self.opts.results,
                job.args,
                job.seq,
                job.slot,
                self.token,
                plus=self.opts.plus,
                counts=self.opts.counts,
            )
            if path.endswith("/"):
                d, files = path, ("seq", "stdout", "stderr")
            else:
                d, base = os.path.split(path)
                files = (base + ".seq", base, base + ".err")
        else:
            if self.name_max is None:
                self.name_max = _name_max(self.opts.results)
            d = self.spec.results_dir(self.opts.results, job.args, self.name_max, self.names)
            files = ("seq", "stdout", "stderr")
        try:
            if d:
                os.makedirs(d, exist_ok=True)
            for name, data in zip(files, (str(job.seq).encode(), out, err), strict=True):
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
        except OSError as exc:
            _warn(
                f"cannot save the results of job {job.seq} in {d!r}: {exc.strerror}; "
                "its output follows here instead, and it counts as failed"
            )
            return None
        return os.path.join(d, files[1])


def _fifo_writer(path: str, block: Any, ended: Any) -> None:
    """--fifo: write ``block`` into the FIFO ``path`` once its job opens it for reading.

    The write end is opened non-blocking: ENXIO while nobody reads, tried
    again (1 ms, doubling to 50 ms) until the job opens it, or gives up once
    ``ended`` is set (the job ended without reading: never a hang).
    """
    import errno

    from .._os.childloop import FileRange

    delay = 0.001
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or ended.wait(delay):
                return
            delay = min(delay * 2, 0.05)
    try:
        os.set_blocking(fd, True)  # the job reads at its pace; EPIPE if it stops for good
        if isinstance(block, FileRange):
            _send_range(fd, block)
        else:
            view = memoryview(block)
            while view and not ended.is_set():
                view = view[os.write(fd, view) :]
    except OSError:  # EPIPE: the job closed it before the end
        pass
    finally:
        os.close(fd)


def _warn(msg: str) -> None:
    try:
        _write(2, f"{PROG}: {msg}\n".encode(errors="surrogateescape"))
    except _OutputClosed:
        pass


def _read_proc(path: str) -> str:
    """A /proc file's text (--load, --memfree): the kernel's numbers, read fresh each time."""
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _shell() -> str:
    """The shell for commands that need one: $PARALLEL_SHELL, a POSIX $SHELL, else /bin/sh."""
    explicit = os.environ.get("PARALLEL_SHELL")
    if explicit:
        return explicit
    sh = os.environ.get("SHELL", "")
    if os.path.basename(sh) in ("bash", "dash", "ksh", "mksh", "zsh", "sh", "ash") and os.access(
        sh, os.X_OK
    ):
        return sh
    return "/bin/sh"


def _functions(shell: str) -> frozenset[str]:
    """The exported bash functions, when the shell is bash (GNU parallel runs them through it)."""
    from .. import _parallel_spec as spec

    if os.path.basename(shell) != "bash":
        return frozenset()
    return spec.exported_functions(os.environ)


def _context_template(opts: argparse.Namespace, count: int, shell: str) -> Any:
    """The Template of a job of ``count`` inputs under -X / -N (its {} words repeated)."""
    from .. import _parallel_spec as spec

    token = opts.I or "{}"
    words = spec.context_command(
        opts.command,
        count,
        quote=opts.quote,
        append=True,  # also -N0: GNU appends {}, whose NOARG values write nothing
        token=token,
        plus=opts.plus,
    )
    return spec.Template.parse(
        words,
        quote=opts.quote,
        shell=shell,
        functions=_functions(shell),
        append=True,  # also -N0: GNU appends {}, whose NOARG values write nothing
        token=token,
        plus=opts.plus,
        counts=opts.counts,
    )


def _name_max(root: str) -> int:
    """The longest file name (bytes) under ``root``, or its nearest existing parent."""
    from .._parallel_spec import NAME_MAX

    path = os.path.abspath(root)
    while True:
        try:
            return min(NAME_MAX, os.pathconf(path, "PC_NAME_MAX"))
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return NAME_MAX
            path = parent
        except (OSError, ValueError):
            return NAME_MAX


def _fd_limit(wanted: int) -> int:
    """Jobs that fit in the descriptor limit (4 each), raising the soft limit if needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted * 4 + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, (soft - 64) // 4))


# --------------------------------------------------------------------------- main


_VALUE_OPTIONS = frozenset(
    [
        "--trim",
        "--group-by",
        "--groupby",
        "--termseq",
        "--term-seq",
        "--backend",
        "--address",
        "--timeout",
        "--retries",
        "--joblog",
        "--halt",
        "--halt-on-error",
        "--results",
        "--res",
        "-a",
        "--arg-file",
        "--rpl",
        "-n",
        "--max-args",
        "-N",
        "--max-replace-args",
        "--colsep",
        "--header",
        "--arg-sep",
        "--arg-file-sep",
        "-I",
        "--tagstring",
        "--delay",
        "--nice",
        "--events",
        "--load",
        "--memfree",
        "-d",
        "--delimiter",
        "-E",
        "--block",
        "--block-size",
        "--blocksize",
        "--recend",
        "--recstart",
        "-L",
        "--jl",
        "--result",
        "--tag-string",
        "--haltonerror",
        "--argfile",
        "--maxargs",
        "--maxreplaceargs",
        "-C",
        "--col-sep",
        "--argsep",
        "--argfilesep",
    ]
)


_MAX_LINES = ("-l", "--max-lines", "--maxlines")

#: A number as GNU parallel's option parser (Perl's Getopt::Long) reads the
#: optional value of -l: ``2``, ``2.5``, ``.5``, ``-1``, not ``2.`` nor ``1k``.
_GETOPT_FLOAT = r"[-+]?(?=[0-9.])[0-9_]*(?:\.[0-9_]+)?(?:[eE][-+]?[0-9_]+)?"


def _is_float(word: str) -> bool:
    import re  # argparse has it loaded already

    return re.fullmatch(_GETOPT_FLOAT, word) is not None


def _attached_l(word: str) -> bool:
    """-l with its count in the same word (``-l2``, ``-l2.5``)."""
    return word.startswith("-l") and _is_float(word[2:])


def _unbundle_l(word: str, parser: argparse.ArgumentParser) -> list[str] | None:
    """A bundle of short options with -l in it as separate words, or None if -l is
    not one of them: ``-kl2`` is ``-k -l2``, ``-lk`` is ``-l1 -k``.

    As GNU parallel's option parser (Getopt::Long, bundling) reads it: -l takes
    the number that starts the rest of the bundle, if any, and the rest goes on
    as more options; a bare -l at the end may take the next word (see below).
    """
    import re

    k = word.find("l", 1)
    if k < 0:
        return None
    for c in word[1:k]:
        action = parser._option_string_actions.get("-" + c)
        if action is None or action.nargs != 0:
            return None  # not a flag: the rest of the word is its value
    parts = [word[:k]] if k > 1 else []
    rest = word[k + 1 :]
    if not rest:
        return [*parts, "-l"]
    m = re.match(_GETOPT_FLOAT, rest)
    value = m.group() if m else ""
    parts.append("-l" + (value or "1"))
    if rest[len(value) :]:
        parts.append("-" + rest[len(value) :])
    return parts


def _negative_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    # With -0 defined, argparse reads "-1" as an option, not a value: glue the
    # value of -j/--jobs to its option so that GNU parallel's "-j -1" works.
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        a = words[i]
        if (
            a[:1] == "-"
            and a[1:2] not in ("-", "")
            and "l" in a
            and not _attached_l(a)
            and (parts := _unbundle_l(a, parser)) is not None
        ):
            words[i : i + 1] = parts
            a = words[i]
        i += 1
        if a in _MAX_LINES or a.startswith(("--max-lines=", "--maxlines=")) or _attached_l(a):
            # GNU's -l and --max-lines take an optional count (xargs's -l[N]): the
            # next word is it only if it is a number; 0 and none are 1 (see _setup).
            value = a.partition("=")[2] if a.startswith("--") else a[2:]
            if not value and i < len(words) and _is_float(words[i]):
                value = words[i]
                i += 1
            value = value or "1"
            if value == "-0":  # GNU: -l -0 is -l and -0 (-0 taken for -l's value)
                out += ["--max-lines=1", "-0"]
                continue
            if not _is_float(value):
                raise _UsageError(f"{a}: the lines a job is a number, not {value!r}")
            out.append(f"--max-lines={value}")
        elif a in ("-j", "-P", "--jobs", "--max-procs", "--maxprocs") or a in _VALUE_OPTIONS:
            if i == len(words):
                out.append(a)
                continue
            value = words[i]
            i += 1
            if value.startswith("-"):  # argparse would take it for an option
                out.append(f"{a}={value}" if a.startswith("--") else a + value)
            else:
                out += [a, value]
        elif a == "--" or not a.startswith("-"):
            out += words[i - 1 :]  # the COMMAND starts here: its words are its own
            break
        else:
            out.append(a)
    return out


def _separators(argv: Sequence[str]) -> tuple[str, str, int]:
    """--arg-sep, --arg-file-sep, and where the inputs start (at the first separator)."""
    arg_sep, file_sep = ":::", "::::"
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in (arg_sep, file_sep, arg_sep + "+", file_sep + "+"):
            break
        for name in ("--arg-sep", "--arg-file-sep", "--argsep", "--argfilesep"):
            if a == name or a.startswith(name + "="):
                if "=" in a:
                    value: str | None = a[len(name) + 1 :]
                else:
                    i += 1
                    value = argv[i] if i < len(argv) else None
                if not value:
                    raise _UsageError(f"{name} needs a non-empty separator")
                if name in ("--arg-sep", "--argsep"):
                    arg_sep = value
                else:
                    file_sep = value
        i += 1
    return arg_sep, file_sep, i


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[Group]]:
    arg_sep, file_sep, cut = _separators(argv)
    parser = _parser()
    opts = parser.parse_args(_negative_values(argv[:cut], parser))
    if opts.command[:1] == ["--"]:
        # GNU parallel's end of the options: the COMMAND follows (no program is named --).
        del opts.command[0]
    groups = _split_sources(argv[cut:], arg_sep, file_sep)
    if opts.retries < 0:
        raise _UsageError(f"--retries {opts.retries}: must be 0 or more")
    return opts, groups


def main(argv: list[str]) -> int:
    """Run ``polytask parallel`` with ``argv`` (the words after ``parallel``); returns the exit status."""
    argv = list(argv)
    from_env = os.environ.get("PARALLEL", "").strip()
    if from_env:
        import shlex  # only then: not on the start-up path

        try:
            argv = shlex.split(from_env) + argv  # GNU parallel reads $PARALLEL's options first
        except ValueError as exc:
            print(f"{PROG}: error: $PARALLEL: {exc}", file=sys.stderr)
            return USAGE_ERROR
    try:
        opts, groups = _parse(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see '{PROG} --help')", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    from .._os.childloop import HoldableHandler

    old_handlers = {}
    try:
        # Handlers the process loop defers to itself while it takes a started job
        # into its care, rather than swapping them out and back at every start.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            old_handlers[signum] = signal.signal(signum, HoldableHandler(_raise_interrupted))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
            old_handlers[signal.SIGINT] = signal.signal(
                signal.SIGINT, HoldableHandler(signal.default_int_handler)
            )
    except ValueError:  # pragma: no cover - not the main thread
        pass
    runner: _Runner | None = None
    try:
        runner = _setup(opts, groups)
        if opts.dry_run:
            return runner.dry_run()
        if opts.bar or opts.progress:
            from .._progress import Progress

            runner.bar = Progress("jobs", runner.source.total)
        return runner.run()
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see '{PROG} --help')", file=sys.stderr)
        return USAGE_ERROR
    except _Fatal as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 255
    except _OutputClosed:
        return 141  # as a shell reports a pipeline member killed by SIGPIPE
    except (KeyboardInterrupt, _Interrupted):
        return KILLED  # as GNU parallel, once every job's tree was ended
    finally:
        if runner is not None and runner.bar is not None:
            runner.bar.close()
        if runner is not None:
            runner.close_files()
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


def _inputs(
    opts: argparse.Namespace,
    groups: list[Group],
    halt: Any,
    read_all: bool = False,
    split: bool = True,
) -> tuple[Any, dict[str, int]]:
    """The job inputs, and the column names of --header (name -> {N}).

    ``read_all``: stdin is read to its end before the first job (its total is needed).
    ``split``: the arguments of ::: are split at the delimiter (not the commands
    that --retry-failed took from the joblog, which are whole).
    """
    # -d wins over -0, as GNU parallel reads them (-0 -d , splits at the commas).
    sep = (
        _delimiter(opts.delimiter) if opts.delimiter is not None else b"\0" if opts.null else b"\n"
    )

    def rules() -> _Lines:  # one per file: -E ends that file
        return _Lines(
            opts.eof, opts.no_run_if_empty, join=bool(opts.L), header=opts.header is not None
        )

    colsep: str | None = opts.colsep
    if opts.csv:
        colsep = "," if colsep is None else colsep
        if colsep == "\\t":  # --colsep '\t' as typed in a shell: a tab
            colsep = "\t"
        if len(colsep) != 1:
            raise _UsageError(
                f"--colsep {colsep!r}: with --csv, the separator is one character (e.g. , ; or tab)"
            )
    if opts.header is not None:
        if opts.header not in (":", ".*\n"):
            raise _UsageError(
                f"--header {opts.header!r}: only --header : is supported (the first "
                "line of each input, or the first argument after :::, names its columns)"
            )
        if colsep is None:
            colsep = "\t"  # as GNU parallel
    if colsep is not None:
        import re

        try:
            re.compile(colsep)
        except re.error as exc:
            raise _UsageError(f"--colsep {colsep!r}: not a regular expression: {exc}") from None
    headers: list[str] = []
    if not groups and not opts.arg_file:
        try:
            tty = os.isatty(0)
            os.fstat(0)
        except OSError:
            raise _UsageError("no input: give ::: ARGS or :::: FILES (stdin is closed)") from None
        if tty and not "".join(opts.command).strip():
            raise _UsageError("give a COMMAND, or inputs (::: ARGS, :::: FILES or stdin) to run")
        if tty:
            _warn("reading inputs from the terminal, one a line (end with Ctrl-D)")
        stream: Any = _StreamSource(0, sep, rules())
        if opts.csv:  # records that may span lines
            stream = _CsvLines(stream)
        source: Any = stream
        if opts.header is not None:
            first = stream.head()
            headers.append("" if first is None else first)
        if opts.bar or opts.progress or halt.pct is not None or read_all:
            lines: list[str] = []
            while not (stream.stream if opts.csv else stream).eof:
                stream.fill()
            while (item := stream.take()) is not None:
                lines.append(item[0])
            source = _ListSource([lines])
    else:
        sources: list[list[str]] = []
        stdin_at: list[int] = []  # the sources that are stdin (-a -, :::: -)

        def read(f: str) -> list[str]:
            if f == "-":
                stdin_at.append(len(sources))
                if len(stdin_at) > 1:
                    return []  # read once: see _share_stdin
            return _read_lines(f, sep, rules())

        for f in opts.arg_file:
            sources.append(read(f))
        linked = [False] * len(sources)
        for kind, items, link in groups:
            if kind == ":::":
                sources.append(rules().every(_split_args(items, sep) if split else items))
                linked.append(link)
            else:
                if not items:
                    raise _UsageError(":::: must be followed by at least one file")
                for f in items:
                    sources.append(read(f))
                    linked.append(link)
        if opts.csv and split:  # records may span lines (also across the arguments of a :::)
            from .._parallel_spec import csv_join

            sources = [csv_join(s) for s in sources]
        if len(stdin_at) > 1:
            _share_stdin(sources, stdin_at, link=opts.link, header=opts.header is not None)
        if opts.link:
            linked = [True] * len(sources)
        if opts.header is not None:
            headers = [src.pop(0) if src else "" for src in sources]
        source = _ListSource(sources, linked, wrap=opts.link)
    names: dict[str, int] = {}
    # GNU parallel trims the columns when --colsep is given (even with --csv), unless
    # --trim says otherwise; without it, only --trim trims.
    trim = _trimmer(opts.trim or ("rl" if opts.colsep is not None else "n"))
    if colsep is None and trim is not None:
        source = _Trimmed(source, trim)
    if colsep is not None:
        columns = _CsvColumns if opts.csv else _Columns
        source = columns(source, colsep, trim=trim)
        for header in headers:
            for name in source.names(header):
                names.setdefault(name, len(names) + 1)
    return source, names


def _share_stdin(
    sources: list[list[str]], at: list[int], *, link: bool, header: bool = False
) -> None:
    """Deal stdin's inputs (all in ``sources[at[0]]``) to the sources that name it, as GNU
    parallel's reads from the one file handle they share give them out.

    With --link each job reads one input of every source in turn, so they go
    round. Else the first job reads one for each, then the last source not at
    its end is read to it: the last stdin source takes the rest (``:::: - -``
    over 1 2 3 is ``1 2``, ``1 3``). A source whose read of the first job found
    stdin at its end has an empty input, as GNU's (``:::: - -`` over 1 is
    ``1 ''``). With --header, each first reads its header line, one each.
    """
    lines = sources[at[0]]
    for i in at:
        sources[i] = []
    if link:
        for k, line in enumerate(lines):
            sources[at[k % len(at)]].append(line)
        return
    if header:
        for i, line in zip(at, lines, strict=False):
            sources[i].append(line)
        lines = lines[len(at) :]
    if not lines:
        return
    for k, i in enumerate(at):
        sources[i].append(lines[k] if k < len(lines) else "")
    sources[at[-1]].extend(lines[len(at) :])


def _read_joblog(path: str) -> tuple[list[Any], bool] | None:
    """The entries of the joblog at ``path``, and whether it holds any line; None if no such file."""
    from .. import _parallel_spec as spec

    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Fatal(f"cannot read joblog {path!r}: {exc.strerror}") from None
    try:
        return spec.parse_joblog(text), bool(text)
    except ValueError as exc:
        raise _Fatal(f"cannot read joblog {path!r}: {exc}") from None


def _retry_failed(opts: argparse.Namespace, groups: list[Group]) -> tuple[list[Group], set[int]]:
    """--retry-failed: the joblog's commands as the inputs (no COMMAND), and the jobs to skip.

    As GNU parallel: job N runs the command of the joblog's last line for N,
    unless some line says N succeeded. Without the joblog file, the command
    line runs as given; with a joblog of no job, the commands come from stdin.
    """
    from .. import _parallel_spec as spec

    if opts.joblog is None:
        raise _UsageError("--resume, --resume-failed and --retry-failed need --joblog FILE")
    log = _read_joblog(opts.joblog.removeprefix("+"))
    if log is None:
        return groups, set()
    opts.command, opts.arg_file = [], []
    if not log[0]:
        return [], set()
    commands, skip = spec.retry_commands(log[0])
    return [(":::", commands, False)], skip


def _named(command: Sequence[str], names: dict[str, int]) -> list[str]:
    """COMMAND with each ``{name}`` of --header (also ``{name.}`` ...) as ``{N}``."""
    import re

    if not names:
        return list(command)
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True) if n)
    if not alternatives:
        return list(command)
    pattern = re.compile(r"\{(" + alternatives + r")(\.|//|/\.|/)?\}")
    return [
        pattern.sub(lambda m: "{" + str(names[m.group(1)]) + (m.group(2) or "") + "}", word)
        for word in command
    ]


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _counted(opts: argparse.Namespace, unlimited: bool) -> set[str]:
    """--plus strings that need every input read first: {##} {0#}, and {0%} with -j 0.

    (GNU's {0%} pads to the number of job slots, which under -j 0 is the number of jobs.)
    Raises _UsageError for a refused --plus string in COMMAND, --tagstring or --results.
    """
    from .. import _parallel_spec as spec

    if not opts.plus:
        return set()
    kinds: set[str] = set()
    for where, texts in (
        ("COMMAND", opts.command),
        ("--tagstring", [opts.tagstring or ""]),
        ("--results", [opts.results or ""]),
    ):
        try:
            kinds |= spec.replacement_kinds(texts, opts.I or "{}", plus=True)
        except spec.QuotingError as exc:
            raise _UsageError(f"{where}: {exc}") from None
    wanted = {"total", "seq0"} | ({"slot0"} if unlimited else set())
    return kinds & wanted


def _counts(opts: argparse.Namespace) -> None:
    """-n, -N, -L and -l's values as whole numbers, read as GNU parallel reads them:
    with --block's units (1k = 1000, 1K = 1024), a fraction the next whole number."""
    import math

    from .. import _parallel_spec as spec

    names = (("max_args", "-n"), ("max_replace_args", "-N"), ("L", "-L"), ("max_lines", "-l"))
    for dest, name in names:
        text = getattr(opts, dest)
        if text is None:
            continue
        try:
            value = spec.parse_count(text, option=name)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        if not abs(value) < sys.maxsize:
            # More than any input has (GNU: all of them in one job); inf has no int().
            value = math.copysign(sys.maxsize, value)
        if value < 0 and not (opts.pipe or opts.pipepart):
            # GNU parallel: a job takes one input (a joined line), and has N or more: 1.
            value = 1
        if value != int(value):
            if opts.pipe or opts.pipepart:
                # GNU's --pipe cuts at 2 for -L 2.5, and fails or gives empty records
                # below 1: no count to follow there.
                mode = "--pipepart" if opts.pipepart else "--pipe"
                raise _UsageError(f"{name} {text}: with {mode}, the count is a whole number")
            # GNU parallel adds inputs to a job until it has N or more: 2.5 is 3.
            value = math.ceil(value) if value > 0 else math.floor(value)
        if dest == "max_lines" and value == 0:
            value = 1  # -l 0, as -l without a count, is 1
        setattr(opts, dest, int(value))


def _setup(opts: argparse.Namespace, groups: list[Group]) -> _Runner:
    from .. import _parallel_spec as spec
    from .._os.proc import usable_cpus

    if opts.rpl:
        raise _UsageError(
            f"--rpl {opts.rpl[0]!r}: replacement strings defined in Perl are not supported "
            "(polytask runs no Perl); use the shell in COMMAND instead"
        )
    perl = spec.perl_expression(" ".join(opts.command))
    if perl is not None:
        raise _UsageError(
            f"COMMAND: {perl} is a Perl expression, and polytask runs no Perl: use the shell "
            "instead, e.g. 'v={}; echo \"${v%.*}\"' for {= s:\\.[^.]*$:: =}"
        )
    for where, text in (("--tagstring", opts.tagstring), ("--results", opts.results)):
        # GNU parallel evaluates them there too: kept as text, they would name
        # the wrong tag or directory without a word.
        perl = spec.perl_expression(text or "")
        if perl is not None:
            raise _UsageError(
                f"{where}: {perl} is a Perl expression, and polytask runs no Perl "
                "(only the replacement strings {}, {.}, {#}, ... work there)"
            )
    if opts.tagstring is not None:
        # As GNU parallel: --tagstring '\033[31m{}' writes an escape sequence.
        opts.tagstring = spec.unquote_printf(opts.tagstring)
    if opts.backend is not None or opts.address is not None:
        from ._parallel_cluster import check_options

        if (wrong := check_options(opts)) is not None:
            raise _UsageError(wrong)
    ncpu = usable_cpus()
    opts.counts = (0, 0)  # --plus: the number of jobs and of job slots, once known
    try:
        jobs = spec.parse_jobs(opts.jobs, ncpu)
        unlimited = jobs is None
        if opts.timeout is not None:
            spec.parse_duration(opts.timeout)
        if opts.delay is not None:  # here: --pipe's jobs are delayed too
            spec.parse_duration(opts.delay, option="--delay", percent=False)
        halt = spec.HaltPolicy.parse(opts.halt) if opts.halt else spec.HaltPolicy()
        if opts.termseq is not None:
            spec.parse_termseq(opts.termseq)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    jobs = _fd_limit(jobs if jobs is not None else 4096)
    opts.load_max, opts.memfree_bytes = _throttles(opts, ncpu)
    if opts.files and (opts.ungroup or (opts.results and spec.results_format(opts.results))):
        raise _UsageError(
            "--files goes neither with -u (the output is not kept) nor with --results "
            "FILE.csv/.tsv/.json (the output goes into FILE)"
        )
    shell = _shell()
    if opts.shellquote:
        # GNU quotes the command line as it composes it; polytask quotes the
        # inputs in a COMMAND its own way (the same meaning, other text), so
        # only the inputs as the command lines give GNU's output.
        if "".join(opts.command).strip() or opts.pipe or opts.pipepart:
            raise _UsageError(
                "--shellquote goes without a COMMAND only (and without --pipe): each "
                "input is the command line it prints, quoted"
            )
        if opts.quote or opts.backend is not None:
            raise _UsageError("--shellquote goes neither with -q nor with --backend")
        if not spec.is_posix_shell(shell):
            raise _UsageError(
                f"--shellquote: {shell} is not a POSIX shell (sh, dash, bash, zsh, ksh, ...), "
                "and it quotes for those"
            )
    counted = _counted(opts, unlimited)
    _counts(opts)
    dash_L = opts.L is not None  # -L itself, not -l's
    if opts.max_lines is not None:
        # -l N / --max-lines N: with --pipe, -L N; otherwise -n N with -L's joined
        # lines (no word repeated per input, unlike -L's -N). It wins over -L.
        opts.L = opts.max_lines
    if opts.pipe or opts.pipepart:
        if counted & {"total", "seq0"}:
            raise _UsageError(
                "{##} and {0#} do not go with --pipe or --pipepart (the number of jobs "
                "is not known before they run), as in GNU parallel"
            )
        opts.counts = (0, jobs)
        return _setup_pipe(opts, groups, jobs, shell)
    # Without --pipe, xargs -L: at most L input lines a job (a line ending in a
    # blank goes on on the next; see _Lines). -L 0: one line a job, no argument
    # (below 0: 1, see _counts). -n/-N, when given, set the count. -L gives the
    # inputs as -N does (a word holding {} repeated per input), also with -n or
    # -l, but not with -m or --xargs; -l alone as -n does. As GNU parallel 20221122.
    if opts.L is not None and not opts.max_args and opts.max_replace_args is None:
        opts.max_args = opts.L  # -n 0 too: GNU's Perl reads it as "not given" there
    if dash_L and not (opts.m or opts.xargs) and opts.max_replace_args is None:
        opts.max_replace_args, opts.max_args = opts.max_args, None
    if counted and (opts.m or opts.X or opts.xargs):
        raise _UsageError(
            "{##} and {0#} (and {0%} with -j 0) do not go with -m, -X or --xargs "
            "(the number of jobs is not known before they run), as in GNU parallel"
        )
    if opts.block is not None or opts.regexp or opts.cat:
        name = "--block" if opts.block is not None else "--regexp" if opts.regexp else "--cat"
        raise _UsageError(f"{name} goes with --pipe or --pipepart only")
    if opts.recstart is not None or opts.recend is not None:
        raise _UsageError("--recstart and --recend go with --pipe or --pipepart only")
    for given, name in (
        (opts.fifo, "--fifo"),
        (opts.roundrobin, "--roundrobin"),
        (opts.tee, "--tee"),
        (opts.group_by is not None, "--group-by"),
    ):
        if given:
            raise _UsageError(f"{name} goes with --pipe only (it is about how stdin is given)")
    retry_skip: set[int] = set()
    given = groups
    if opts.retry_failed:
        groups, retry_skip = _retry_failed(opts, groups)
    source, names = _inputs(opts, groups, halt, read_all=bool(counted), split=groups is given)
    if names:
        opts.command = _named(opts.command, names)
        if opts.tagstring is not None:
            opts.tagstring = _named([opts.tagstring], names)[0]
        if opts.results is not None:
            opts.results = _named([opts.results], names)[0]
    try:
        # GNU parallel runs bash's exported functions (export -f) through $SHELL.
        template = spec.Template.parse(
            opts.command,
            quote=opts.quote,
            shell=shell,
            functions=_functions(shell),
            append=True,  # also -n0: GNU appends {}, whose NOARG values write nothing
            token=opts.I or "{}",
            plus=opts.plus,
        )
        if opts.X or opts.max_replace_args is not None:
            _context_template(opts, 2, shell)  # its errors now, not at the first job
    except spec.QuotingError as exc:
        raise _UsageError(f"COMMAND: {exc}") from None
    if template.needs_shell and not spec.is_posix_shell(shell):
        # fish reads \' inside '...', csh expands ! there: the quoting would not hold.
        raise _UsageError(
            f"PARALLEL_SHELL={shell}: not a POSIX shell (sh, dash, bash, zsh, ksh, ...), "
            "and inputs are quoted for those"
        )
    max_args = opts.max_replace_args if opts.max_replace_args is not None else opts.max_args
    if max_args is not None and max_args < 0:
        raise _UsageError(f"-n/-N {max_args}: must be 0 or more")
    multi = opts.m or opts.X or opts.xargs
    if max_args is not None or multi:
        cost = sum(isinstance(p, spec.Repl) for p in template.parts) or 1
        spread = None if opts.xargs or not (opts.m or opts.X) else jobs
        # -n0 / -N0 read the inputs and give none; with -m, -X or --xargs
        # GNU parallel takes 0 for no limit, so a job reads as many as fit.
        source = _Grouped(
            source,
            max_args=None if multi and max_args == 0 else max_args,
            spread=spread,
            cost=cost,
            noarg=max_args == 0,
        )
    if opts.shuf:
        source = _Shuffled(source)
    if counted:  # GNU reads every input before the first job for these
        total = source.total or 0
        opts.counts = (total, min(jobs, max(total, 1)) if unlimited else jobs)
    else:
        opts.counts = (0, jobs)
    template = template.with_counts(opts.counts)
    runner = _Runner(opts, source, template, jobs, shell)
    runner.names = list(names)
    runner.open_events()
    try:
        runner.open_joblog()
        runner.skip |= retry_skip
        runner.open_results()
    except BaseException:
        runner.close_events()
        raise
    return runner


def _throttles(opts: argparse.Namespace, ncpu: int) -> tuple[float | None, int | None]:
    """--load's MAX and --memfree's bytes (None when not given); _UsageError if bad.

    A --memfree over the machine's memory could never be met: GNU parallel then
    waits forever; polytask refuses it.
    """
    from .. import _parallel_spec as spec

    load = memfree = None
    try:
        if opts.load is not None:
            load = spec.parse_load(opts.load, ncpu)
        if opts.memfree is not None:
            memfree = spec.parse_size(opts.memfree, option="--memfree")
            if memfree < 0:
                raise ValueError(f"--memfree {opts.memfree!r}: must not be negative")
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if memfree is not None:
        try:
            available, total = spec.meminfo(_read_proc(_MEMINFO))
        except OSError as exc:
            raise _Fatal(f"--memfree: cannot read {_MEMINFO}: {exc.strerror}") from None
        if memfree > total:
            raise _UsageError(
                f"--memfree {opts.memfree}: {memfree} bytes is more than this machine's "
                f"memory ({total} bytes), so no job could ever start; give at most "
                f"{total // 2**20}M (now available: {available // 2**20}M)"
            )
    return load, memfree


def _setup_pipe(opts: argparse.Namespace, groups: list[Group], jobs: int, shell: str) -> _Runner:
    """The runner of --pipe / --pipepart: blocks of stdin (or parts of a file) as each job's stdin."""
    from .. import _parallel_spec as spec

    mode = "--pipepart" if opts.pipepart else "--pipe"
    _pipe_combinations(opts, mode)
    for given, name in (
        (opts.m, "-m"),
        (opts.X, "-X"),
        (opts.xargs, "--xargs"),
        (opts.colsep is not None and opts.group_by is None, "--colsep"),
        (opts.csv, "--csv"),
        (opts.link and not opts.tee, "--link"),
        (opts.shuf, "--shuf"),
        (opts.eof is not None, "-E"),
        (opts.delimiter is not None or opts.null, "-d/-0"),
    ):
        if given:
            raise _UsageError(
                f"{name} does not go with {mode} (its input is records, not arguments)"
            )
    if opts.tee:
        return _setup_tee(opts, groups, jobs, shell)
    if any(kind == ":::" for kind, _, _ in groups):
        raise _UsageError(
            f"::: does not go with {mode}: its input is "
            + ("-a FILE" if opts.pipepart else "stdin (or one -a FILE)")
        )
    if opts.max_args is not None and opts.max_replace_args is not None:
        raise _UsageError(f"give -n or -N with {mode}, not both (records per job)")
    records = opts.max_replace_args if opts.max_replace_args is not None else opts.max_args
    if records is not None and records < 1:
        raise _UsageError(f"-N {records}: with {mode}, the records per job: 1 or more")
    if opts.L is not None and opts.L < 1:
        raise _UsageError(f"-L {opts.L}: the lines of a record: 1 or more")
    try:
        block = spec.parse_size(opts.block) if opts.block is not None else None
        header = spec.header_regex(opts.header) if opts.header is not None else None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if block is not None and opts.pipe and not opts.pipepart and block < 1:
        raise _UsageError(f"--block {opts.block}: with --pipe, at least 1 byte")
    if block == 0:
        raise _UsageError(f"--block {opts.block}: must not be 0")
    recstart_s: str = opts.recstart or ""
    recend_s: str = (
        opts.recend if opts.recend is not None else "" if opts.recstart is not None else "\n"
    )
    if opts.regexp:
        import re

        for name, value in (("--recstart", recstart_s), ("--recend", recend_s)):
            try:
                re.compile(value)
            except re.error as exc:
                raise _UsageError(f"{name} {value!r}: not a regular expression: {exc}") from None
        recstart, recend = os.fsencode(recstart_s), os.fsencode(recend_s)
    else:
        recstart, recend = spec.unescape_record(recstart_s), spec.unescape_record(recend_s)
    try:
        template = spec.Template.parse(
            opts.command,
            quote=opts.quote,
            shell=shell,
            functions=_functions(shell),
            # the input is the job's stdin (--cat, --fifo: a file named by {})
            append=opts.cat or opts.fifo,
            # -I STR: STR is that name, and {} plain text (GNU's nested parallel
            # example: --pipe -I,, parallel touch pict{}.jpg).
            token=opts.I or "{}",
            plus=opts.plus,
            counts=opts.counts,
        )
    except spec.QuotingError as exc:
        raise _UsageError(f"COMMAND: {exc}") from None
    if not "".join(opts.command).strip():
        raise _UsageError(f"{mode} needs a COMMAND to give the blocks to")
    if template.needs_shell and not spec.is_posix_shell(shell):
        raise _UsageError(
            f"PARALLEL_SHELL={shell}: not a POSIX shell (sh, dash, bash, zsh, ksh, ...), "
            "and inputs are quoted for those"
        )
    paths = list(opts.arg_file) + [f for kind, items, _ in groups if kind == "::::" for f in items]
    source: Any
    if opts.pipepart:
        if not paths:
            raise _UsageError("--pipepart needs the file to split: -a FILE")
        source = _PartSource(
            paths,
            block=block,
            jobs=jobs,
            header=header,
            recstart=recstart,
            recend=recend,
            regexp=opts.regexp,
        )
    else:
        group = None
        if opts.group_by is not None:
            group = _group_marker(opts)
            # GNU parallel's own cut: a record starts at each marker, no record end.
            recstart, recend, header = group.marker, b"", None
        splitter = spec.PipeSplitter(
            block=block or 1 << 20,
            recstart=recstart,
            recend=recend,
            regexp=opts.regexp,
            records=records,
            lines=opts.L,
            header=header,
            skip_blank=opts.no_run_if_empty,
        )
        fd, owned = _pipe_input(paths)
        source = _PipeSource(fd, splitter, owned=owned, group=group)
    if opts.roundrobin:
        return _setup_roundrobin(opts, source, template, jobs, shell)
    runner = _Runner(opts, source, template, jobs, shell)
    try:
        runner.open_events()
        runner.open_joblog()
        runner.open_results()
    except BaseException:
        runner.close_events()
        source.close()
        raise
    return runner


def _pipe_combinations(opts: argparse.Namespace, mode: str) -> None:
    """The --pipe options that exclude each other (--tee, --roundrobin, --fifo, --cat...)."""
    given = [
        name
        for on, name in (
            (opts.tee, "--tee"),
            (opts.roundrobin, "--roundrobin"),
            (opts.fifo, "--fifo"),
            (opts.cat, "--cat"),
        )
        if on
    ]
    if len(given) > 1:
        raise _UsageError(
            f"{given[0]} does not go with {given[1]}: "
            "choose how the jobs get their input (one of --tee, --roundrobin, --fifo, --cat)"
        )
    if opts.pipepart:
        for on, name in (
            (opts.tee, "--tee"),
            (opts.roundrobin, "--roundrobin"),
            (opts.group_by is not None, "--group-by"),
        ):
            if on:
                raise _UsageError(f"{name} goes with --pipe, not --pipepart (it reads stdin)")


def _pipe_input(paths: list[str]) -> tuple[int, bool]:
    """--pipe's input: stdin, or one -a FILE (then ours to close)."""
    if len(paths) > 1:
        raise _UsageError("--pipe reads one input: stdin or one -a FILE")
    if paths and paths[0] != "-":
        try:
            return os.open(paths[0], os.O_RDONLY | os.O_CLOEXEC), True
        except OSError as exc:
            raise _Fatal(f"cannot read input file {paths[0]!r}: {exc.strerror}") from None
    try:
        os.fstat(0)
    except OSError:
        raise _UsageError("no input: --pipe reads stdin, and it is closed") from None
    return 0, False


def _group_marker(opts: argparse.Namespace) -> Any:
    """--group-by's GroupMarker (GNU parallel's random record separator, 20 characters)."""
    import secrets
    import string

    from .. import _parallel_spec as spec

    if opts.regexp or opts.recstart is not None or opts.recend is not None or opts.L:
        raise _UsageError(
            "--group-by makes the records itself: no --recstart, --recend, --regexp or -L"
        )
    if opts.header is not None and opts.header not in (":", "1"):
        raise _UsageError(
            f"--header {opts.header!r} with --group-by: only the first line can be the "
            "header (--header : or --header 1)"
        )
    colsep = opts.colsep if opts.colsep is not None else "\t"
    import re

    try:
        re.compile(colsep)
        column = spec.group_by_column(opts.group_by)
    except re.error as exc:
        raise _UsageError(f"--colsep {colsep!r}: not a regular expression: {exc}") from None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    alphabet = string.ascii_letters + string.digits
    marker = "".join(secrets.choice(alphabet) for _ in range(20)).encode()
    return spec.GroupMarker(column, colsep, marker, header=opts.header is not None)


def _setup_roundrobin(
    opts: argparse.Namespace, source: _PipeSource, template: Any, jobs: int, shell: str
) -> _Runner:
    """--roundrobin: -j jobs (fewer if fewer blocks), started once, fed block by block."""
    try:
        split = source._split
        # The first blocks tell how many jobs to start: one each, up to -j.
        while len(split.ready) < jobs and not split.eof:
            source.fill()
        count = min(jobs, len(split.ready))
        runner = _Runner(opts, _Count(count), template, jobs, shell)
        runner.pipe = runner.context = False  # no arguments: the feeder gives the input
        runner.open_joblog()
        runner.open_results()
        if opts.dry_run:  # nothing is fed
            source.close()
        else:
            runner.feeder = _Feeder(source.fd, tee=False, expected=count, pipe_source=source)
    except BaseException:
        source.close()
        raise
    return runner


def _setup_tee(opts: argparse.Namespace, groups: list[Group], jobs: int, shell: str) -> _Runner:
    """--tee: one job per input of :::, every one of them given all of stdin."""
    from .. import _parallel_spec as spec

    if not any(kind == ":::" for kind, _, _ in groups):
        raise _UsageError(
            "--tee needs ::: ARGS: one job per argument, each given all of stdin "
            "(e.g. --pipe --tee 'grep {} | wc -l' ::: a b)"
        )
    paths = list(opts.arg_file) + [f for kind, items, _ in groups if kind == "::::" for f in items]
    groups = [g for g in groups if g[0] == ":::"]
    saved = opts.arg_file
    opts.arg_file = []
    try:
        source, names = _inputs(opts, groups, spec.HaltPolicy())
    finally:
        opts.arg_file = saved
    if names:
        opts.command = _named(opts.command, names)
    count = source.total
    if opts.jobs == "100%" and count is not None:  # -j not given: GNU's --tee default is -j 0
        jobs = max(jobs, _fd_limit(count))
    if count is not None and count > jobs:
        raise _UsageError(
            f"--tee runs its {count} jobs at once (each reads all of stdin): "
            f"-j {jobs} is too few; give -j {count} or -j 0"
        )
    try:
        template = spec.Template.parse(
            opts.command,
            quote=opts.quote,
            shell=shell,
            functions=_functions(shell),
            append=False,  # as GNU parallel: the input is stdin, an argument only where {} is
            token=opts.I or "{}",
        )
    except spec.QuotingError as exc:
        raise _UsageError(f"COMMAND: {exc}") from None
    if template.needs_shell and not spec.is_posix_shell(shell):
        raise _UsageError(
            f"PARALLEL_SHELL={shell}: not a POSIX shell (sh, dash, bash, zsh, ksh, ...), "
            "and inputs are quoted for those"
        )
    fd, owned = _pipe_input(paths)
    try:
        runner = _Runner(opts, source, template, jobs, shell)
        runner.pipe = runner.context = False  # arguments from :::, stdin from the feeder
        runner.names = list(names)
        runner.open_joblog()
        runner.open_results()
        if opts.dry_run:  # nothing is fed
            if owned:
                os.close(fd)
        else:
            runner.feeder = _Feeder(fd, tee=True, expected=count or 0, owned=owned)
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return runner
