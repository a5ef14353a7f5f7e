"""Programs: ``run``, ``stream`` and ``run_many``.

What ``os.system``, ``os.popen`` and ``subprocess`` do, made so that nothing
leaks, nothing deadlocks and nothing can be injected:

- every program runs in a process group of its own, registered with the
  guardian (``_proc.start_in_group``): a timeout, a Ctrl-C, an exception or the
  parent dying ends the whole tree (SIGTERM, a grace, SIGKILL), and when the
  program itself exits, whatever it left running in its group goes too;
- stdout and stderr are read together in one poll loop
  (:class:`~polytask._os.childloop.ProcessLoop`), so a program that fills
  both pipes never blocks, and ``stdin=``/``input=`` data is written as the
  program reads it;
- a list of arguments runs with no shell at all; ``shell=True`` is explicit,
  and a string with shell syntax but no ``shell=True`` is an error, not a
  silent misreading (see :func:`_command_argv`);
- Python programs get ``PYTHONUNBUFFERED=1`` (unless the caller's environment
  sets it), so that their lines arrive as they are printed;
- inside a thread task, every wait is a cancellation point.

::

    run(args) ──> ProcessLoop.spawn ──> program (own group) ──┬─ stdout ─┐
    stream(args)      │                                       └─ stderr ─┤
    run_many(cmds) ───┘ (up to `workers` at once)   poll loop <──────────┘
                                                      │ exit / timeout / Ctrl-C
                                                      └─> CommandResult, or the tree ended
"""

from __future__ import annotations

import enum
import errno
import io
import os
import shlex
import signal
import stat
import subprocess
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, AnyStr, Final, Generic, Literal, NamedTuple, overload

from ._core.errors import Cancelled, CommandFailed, CommandTimeout, ProgramNotFound
from ._core.task import current_task
from ._core.timeouts import check_timeout
from ._os.childloop import STDERR, STDOUT, Child, ProcessLoop, which
from ._os.proc import usable_cpus
from ._parallel_spec import _SHELL_CHARS, needs_shell
from ._progress import Progress, want_progress

__all__ = [
    "DEVNULL",
    "INHERIT",
    "CommandResult",
    "OutputLine",
    "Stream",
    "run",
    "run_many",
    "stream",
]


class StdinSource(enum.Enum):
    """Where a program's stdin comes from when it is not data, a file or a descriptor."""

    DEVNULL = "devnull"
    INHERIT = "inherit"

    def __repr__(self) -> str:
        return f"pt.{self.name}"


#: ``stdin=pt.DEVNULL``: the program reads end-of-file at once (the default).
#: ``subprocess.DEVNULL`` means the same.
DEVNULL: Final = StdinSource.DEVNULL
#: ``stdin=pt.INHERIT``: the program reads this process's stdin; on a terminal
#: it is handed the terminal while it runs, as a shell does (interactive programs).
INHERIT: Final = StdinSource.INHERIT

Args = str | Sequence[str | os.PathLike[str]]
Input = str | bytes | None
Stdin = StdinSource | str | bytes | bytearray | memoryview | int | os.PathLike[str] | IO[Any] | None
PathArg = str | os.PathLike[str] | None

#: The shell that ``shell=True`` runs (``sh -c COMMAND``).
SHELL = "/bin/sh"

#: Inside a task, how often (seconds) a wait looks whether the task was cancelled.
_CANCEL_POLL = 0.05


@dataclass(frozen=True, slots=True)
class CommandResult(Generic[AnyStr]):
    """How a program ended, and what it wrote.

    ``returncode`` is negative for a signal (``-9``: SIGKILL). ``stdout`` and
    ``stderr`` are ``str`` (``text=True``, decoded as UTF-8 with replacement
    characters for invalid bytes) or ``bytes``; empty when not captured.
    ``timed_out`` is set when the program ran past its timeout and was ended
    (``run_many`` reports that here; ``run`` raises ``CommandTimeout``).
    """

    args: Any
    returncode: int
    stdout: AnyStr
    stderr: AnyStr
    duration: float
    pid: int
    timed_out: bool = False
    #: The timeout the program ran under (seconds), None for no limit.
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        """True if the program exited with status 0 within its timeout."""
        return self.returncode == 0 and not self.timed_out

    def check(self) -> CommandResult[AnyStr]:
        """Return self if :attr:`ok`, else raise ``CommandTimeout`` or ``CommandFailed``."""
        if self.timed_out:
            raise _timeout_error(self.args, self.timeout, self.stdout, self.stderr)
        if self.returncode != 0:
            raise CommandFailed(self.args, self.returncode, self.stdout, self.stderr)
        return self


class OutputLine(NamedTuple, Generic[AnyStr]):
    """One line a streamed program wrote, without its newline."""

    source: Literal["stdout", "stderr"]
    text: AnyStr


# --------------------------------------------------------------------------- helpers


def _short(args: Any) -> str:
    text = shlex.join(str(a) for a in args) if isinstance(args, (list, tuple)) else str(args)
    return repr(text if len(text) <= 120 else text[:117] + "...")


def _command_argv(args: Args, shell: bool) -> list[str]:
    """The argv to execute for ``args``; raises TypeError/ValueError for bad input."""
    if shell:
        if not isinstance(args, str):
            raise TypeError(
                "shell=True takes the command line as one string, got "
                f"{type(args).__name__}; pass a list with shell=False to run it without a shell"
            )
        return [SHELL, "-c", args]
    if isinstance(args, (bytes, bytearray)):
        raise TypeError("args must be a string or a list of strings, not bytes")
    if isinstance(args, str):
        # A string is a shorthand for words separated by spaces. Anything a
        # shell would read otherwise (a pipe, a redirection, a glob, a
        # variable, quotes...) would reach the program as a plain argument: a
        # wrong result and no error. Running it through a shell unasked would
        # let a value pasted into the string run as a command, so say which.
        # The decision is `polytask parallel`'s (one rule for both).
        if needs_shell(args):
            raise ValueError(_shell_syntax_message(args))
        argv = args.split()
    else:
        argv = []
        for a in args:
            if not isinstance(a, (str, os.PathLike)):
                raise TypeError(f"command arguments must be str or path-like, got {a!r}")
            argv.append(os.fspath(a))
    if not argv:
        raise ValueError("empty command: give at least the program to run")
    return argv


def _shell_syntax_message(line: str) -> str:
    found = sorted(_SHELL_CHARS.intersection(line))
    if found:
        what = "shell syntax (" + " ".join(repr(c) for c in found) + ")"
    else:  # VAR=value as the first word, or a shell keyword or builtin such as `cd`
        what = f"a word only a shell understands ({line.split()[0]!r})"
    return (
        f"command {_short(line)} contains {what}, but a string is only split at "
        "spaces and run without a shell. Pass shell=True to run it with "
        f"{SHELL} -c (quote any value you insert with shlex.quote), or give a list "
        "of arguments to pass those characters to the program as they are."
    )


def _child_env(env: dict[str, str] | None) -> dict[str, str] | None:
    """The environment to start a program with: ``env`` plus ``PYTHONUNBUFFERED=1``.

    A Python program block-buffers its output into a pipe, so its lines would
    reach ``stream`` only at its exit (and be lost when a timeout kills it).
    Other programs ignore the variable; a caller's own value (even empty) wins.
    """
    base = os.environ if env is None else env
    if "PYTHONUNBUFFERED" in base:
        return env
    return {**base, "PYTHONUNBUFFERED": "1"}


def _not_found(name: str, env: dict[str, str] | None) -> ProgramNotFound:
    if "/" in name:
        msg = f"program {name!r} does not exist (or its '#!' interpreter does not)"
    else:
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        msg = (
            f"program {name!r} not found on PATH ({path}); install it, fix PATH, "
            "or give its full path"
        )
    return ProgramNotFound(errno.ENOENT, msg, name)


def _spawn(
    loop: ProcessLoop,
    argv: list[str],
    *,
    cwd: PathArg,
    env: dict[str, str] | None,
    stdin: _StdinPlan,
    **kwargs: Any,
) -> Child:
    opened = -1
    try:
        fd = stdin.fd
        if stdin.path is not None:
            fd = opened = os.open(stdin.path, os.O_RDONLY | os.O_CLOEXEC)
        return loop.spawn(argv, cwd=cwd, env=env, input=stdin.data, stdin=fd, **kwargs)
    except FileNotFoundError as exc:
        missing_cwd = cwd is not None and exc.filename == os.fspath(cwd)
        missing_stdin = stdin.path is not None and exc.filename == stdin.path
        if missing_cwd or missing_stdin:
            raise
        raise _not_found(argv[0], env) from None
    finally:
        if opened >= 0:
            os.close(opened)  # the program has its own copy


def _require_program(name: str, env: dict[str, str] | None, cwd: PathArg) -> None:
    if "/" in name:
        path = name if os.path.isabs(name) or cwd is None else os.path.join(cwd, name)
        if os.path.exists(path):
            return
    else:
        path_var = (env if env is not None else os.environ).get("PATH", os.defpath)
        if which(name, path_var) is not None or any(
            d and not os.path.isabs(d) for d in path_var.split(os.pathsep)
        ):
            return  # (relative PATH entries: let the start itself tell)
    raise _not_found(name, env)


def _encode_input(input: str | bytes | bytearray | memoryview | None) -> bytes | None:
    if input is None:
        return None
    if isinstance(input, str):
        return input.encode()
    if isinstance(input, (bytes, bytearray, memoryview)):
        return bytes(input)
    raise TypeError(f"input must be str, bytes or None, got {type(input).__name__}")


@dataclass(frozen=True, slots=True)
class _StdinPlan:
    """A program's stdin, resolved once per call: data, a descriptor, a path, or /dev/null."""

    #: Written to a pipe as the program reads it.
    data: bytes | None = None
    #: The caller's descriptor (it stays open); a terminal is handed over.
    fd: int | None = None
    #: Opened for each program.
    path: str | None = None


def _check_fd(fd: int, what: str) -> None:
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"{what} is not an open file descriptor") from None


def _stdin_plan(stdin: Stdin, input: Input) -> _StdinPlan:
    """Check ``stdin=`` and ``input=`` and say what the programs' stdin is."""
    if input is not None:
        if stdin is not None:
            raise ValueError(
                "give stdin= or input=, not both (input=DATA is the same as stdin=DATA)"
            )
        return _StdinPlan(data=_encode_input(input))
    if isinstance(stdin, bool):
        pass  # an int, but surely a mistake: the TypeError below
    elif (
        stdin is None
        or stdin is DEVNULL
        or (isinstance(stdin, int) and stdin == subprocess.DEVNULL)
    ):
        return _StdinPlan()
    elif stdin is INHERIT:
        try:
            os.fstat(0)
        except OSError:
            raise ValueError(
                "stdin=pt.INHERIT: this process has no stdin (descriptor 0 is closed); "
                "pass pt.DEVNULL"
            ) from None
        return _StdinPlan(fd=0)
    elif isinstance(stdin, (str, bytes, bytearray, memoryview)):
        return _StdinPlan(data=_encode_input(stdin))
    elif isinstance(stdin, int):
        if stdin < 0:
            raise ValueError(f"stdin={stdin} is not a file descriptor (pt.DEVNULL for no input)")
        _check_fd(stdin, f"stdin={stdin}")
        return _StdinPlan(fd=stdin)
    elif isinstance(stdin, os.PathLike):
        path = os.fspath(stdin)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        # Missing or unreadable: say so now. (Not by opening it: a named pipe
        # would wait for a writer, and lose it when closed.)
        if stat.S_ISDIR(os.stat(path).st_mode):  # (FileNotFoundError names the path)
            raise IsADirectoryError(errno.EISDIR, "stdin= is a directory", path)
        if not os.access(path, os.R_OK):
            raise PermissionError(errno.EACCES, "stdin= is not readable", path)
        return _StdinPlan(path=path)
    elif getattr(stdin, "closed", False) is True:
        raise ValueError(f"stdin= is a closed file ({stdin!r})")
    else:
        fileno = getattr(stdin, "fileno", None)
        read = getattr(stdin, "read", None)
        if fileno is not None:
            try:
                fd = fileno()
            except (io.UnsupportedOperation, OSError):
                fd = None  # io.BytesIO, io.StringIO: read it below
            if isinstance(fd, int) and not isinstance(fd, bool):
                _check_fd(fd, f"stdin={stdin!r} (descriptor {fd})")
                return _StdinPlan(fd=fd)
        if read is not None:
            data = read()
            if isinstance(data, (str, bytes)):
                return _StdinPlan(data=_encode_input(data))
    raise TypeError(
        "stdin must be pt.DEVNULL, pt.INHERIT, text or bytes, a file object, "
        f"a path (os.PathLike), a file descriptor or None, not {type(stdin).__name__}"
    )


class _Terminal:
    """The terminal, handed to a program's process group while it runs.

    Each program runs in a process group of its own, so on a terminal it is in
    the background, where its first read stops it (SIGTTIN) for good. As a
    shell does for its foreground job, the group is given the terminal while
    the program runs (Ctrl-C then goes to the program) and it comes back after.
    """

    __slots__ = ("_fd", "_saved")

    def __init__(self, fd: int, saved: list[Any]) -> None:
        self._fd = fd
        self._saved = saved

    @classmethod
    def give(cls, fd: int | None, pgid: int) -> _Terminal | None:
        """Hand the terminal on ``fd`` to group ``pgid`` if it is ours to give (else None)."""
        if fd is None:
            return None
        import termios

        try:
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return None  # not a terminal, or not ours to give (we are in the background)
            saved = termios.tcgetattr(fd)
            os.tcsetpgrp(fd, pgid)
        except (OSError, termios.error):
            return None
        try:
            os.killpg(pgid, signal.SIGCONT)  # a read before the hand-over stopped it
        except ProcessLookupError:
            pass
        return cls(fd, saved)

    def take_back(self, returncode: int | None) -> None:
        """Take the terminal back; after a program ended by a signal, restore its modes."""
        import termios

        # In the background now, tcsetpgrp would stop this process (SIGTTOU)
        # unless the signal is blocked; a mask is per thread, any thread can do it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(self._fd, os.getpgrp())
            if returncode is None or returncode < 0:  # e.g. an editor killed by a timeout
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        except (OSError, termios.error):
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _decode(data: bytes, text: bool) -> Any:
    return data.decode("utf-8", "replace") if text else data


def _result(args: Any, child: Child, text: bool, timeout: float | None) -> CommandResult[Any]:
    rc = child.returncode
    assert rc is not None
    return CommandResult(
        args,
        rc,
        _decode(child.output(STDOUT), text),
        _decode(child.output(STDERR), text),
        child.duration,
        child.pid,
        child.timed_out,
        timeout,
    )


class _CancelWatch:
    """Whether the task running this code (if any) was cancelled, e.g. by its TaskGroup.

    Threads cannot be interrupted, so a command waited for inside a thread task
    waits in short slices and looks at the task's flag between them; outside any
    task the waits need no slices at all.
    """

    __slots__ = ("_current", "slice")

    def __init__(self) -> None:
        current = current_task()
        inside = current._task is not None
        self._current = current if inside else None
        self.slice: float | None = _CANCEL_POLL if inside else None

    @property
    def cancelled(self) -> bool:
        return self._current is not None and self._current.cancelled

    def check(self, args: Any) -> None:
        """Raise :class:`Cancelled` if the task was cancelled (the caller ends the tree)."""
        if self._current is not None and self._current.cancelled:
            raise self.error(args)

    def error(self, args: Any) -> Cancelled:
        name = self._current.name if self._current is not None else "main"
        return Cancelled(
            f"command {_short(args)} was stopped because task {name!r} was cancelled "
            "(e.g. a sibling in its TaskGroup failed); its process tree was ended"
        )


def _timeout_error(
    args: Any, timeout: float | None, stdout: Any = None, stderr: Any = None
) -> CommandTimeout:
    return CommandTimeout(
        f"command {_short(args)} timed out: it ran past its timeout of {timeout:g} s "
        "and its process tree was ended",
        cmd=args,
        timeout=timeout,
        stdout=stdout,
        stderr=stderr,
    )


# --------------------------------------------------------------------------- run


@overload
def run(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
    stdin: Stdin = ...,
    input: Input = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    capture: bool = ...,
    text: Literal[True] = ...,
) -> CommandResult[str]: ...
@overload
def run(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
    stdin: Stdin = ...,
    input: Input = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    capture: bool = ...,
    text: Literal[False],
) -> CommandResult[bytes]: ...
@overload
def run(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
    stdin: Stdin = ...,
    input: Input = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    capture: bool = ...,
    text: bool,
) -> CommandResult[Any]: ...
def run(
    args: Args,
    *,
    shell: bool = False,
    timeout: float | None = None,
    check: bool = False,
    stdin: Stdin = None,
    input: Input = None,
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    capture: bool = True,
    text: bool = True,
) -> CommandResult[Any]:
    """Run a program to completion and return its :class:`CommandResult`.

    Args:
        args: a list of arguments, run directly with no shell; or a string:
            with ``shell=True`` given to ``/bin/sh -c``, else split at spaces
            (still no shell). A string with shell syntax (``|``, ``>``, ``*``,
            ``;``, ``&&``, ``$VAR``, quotes, ...) and no ``shell=True`` raises
            ``ValueError``: split, it would reach the program as plain
            arguments. With ``shell=True``, quote what you insert
            (``shlex.quote``) or pass a list instead.
        timeout: seconds (``float("inf")`` or None: no limit; 0: already
            expired, as ``subprocess.run``); past it the whole process tree is
            ended and ``CommandTimeout`` is raised with the output so far.
        check: raise ``CommandFailed`` (exit status, tail of stderr) on a
            non-zero exit.
        stdin: what the program reads. None or ``pt.DEVNULL`` (the default):
            nothing, end-of-file at once (a program waiting for input never
            hangs); ``pt.INHERIT``: this process's stdin, and on a terminal
            the program is handed the terminal while it runs (interactive
            programs; Ctrl-C then goes to it, as in a shell); text or bytes:
            written as the program reads them; a path (``os.PathLike``), a
            file object or a file descriptor: read from there (a descriptor
            stays yours, open).
        input: text or bytes, the same as ``stdin=DATA`` (not both).
        capture: collect stdout and stderr into the result (the default): the
            program's output is then not shown anywhere. ``capture=False``
            lets it through to this process's stdout and stderr as it is
            written (the result's ``stdout``/``stderr`` are then empty);
            :func:`stream` shows it line by line and still hands it to you.
        env: the program's whole environment (default: this process's).
            ``PYTHONUNBUFFERED=1`` is added unless it is set (even empty), so
            that a Python program's output is not held back in its buffer.
        text: decode the output as UTF-8 (else bytes).

    Raises:
        ProgramNotFound: the program does not exist (a FileNotFoundError).
        CommandTimeout, CommandFailed: see above.
        ValueError, TypeError: bad arguments, before anything starts.
        Cancelled: the thread task running this call was cancelled (its
            TaskGroup failed, see ``TaskGroup.run``); the tree was ended.

    Example::

        r = pt.run(["ls", "-l"], timeout=10)
        print(r.returncode, r.stdout)
        pt.run("ls *.py | wc -l", shell=True)
    """
    argv = _command_argv(args, shell)
    timeout = check_timeout(timeout)
    plan = _stdin_plan(stdin, input)
    child_env = _child_env(env)
    watch = _CancelWatch()
    watch.check(args)  # already cancelled: start nothing
    loop = ProcessLoop()
    child: Child | None = None
    terminal: _Terminal | None = None
    try:
        child = _spawn(
            loop, argv, cwd=cwd, env=child_env, stdin=plan, timeout=timeout, capture=capture
        )
        terminal = _Terminal.give(plan.fd, child.pid)
        while not child.done:
            watch.check(args)
            loop.wait(watch.slice)
    finally:
        loop.close()  # on an exception (Ctrl-C, cancellation) this ends the tree
        if terminal is not None:
            terminal.take_back(child.returncode if child is not None else None)
    assert child is not None
    result = _result(args, child, text, timeout)
    if result.timed_out or check:
        result.check()
    return result


# --------------------------------------------------------------------------- stream


class Stream(Generic[AnyStr]):
    """The lines of a running program, as it writes them (see :func:`stream`).

    Iterate to get :class:`OutputLine` items. Leaving the loop early (``break``,
    an exception), :meth:`close`, or leaving a ``with`` block ends the process
    tree. ``returncode`` is set once the program ended (negative: the signal
    that ended it, e.g. ``-15`` when the loop was left early).
    """

    def __init__(
        self,
        args: Args,
        argv: list[str],
        *,
        timeout: float | None,
        check: bool,
        stdin: _StdinPlan,
        cwd: PathArg,
        env: dict[str, str] | None,
        text: bool,
    ) -> None:
        self._watch = _CancelWatch()
        self._watch.check(args)  # already cancelled: start nothing
        self.args = args
        self.returncode: int | None = None
        self._text = text
        self._check = check
        self._lines: deque[OutputLine[Any]] = deque()
        self._pending: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
        self._stderr_tail: deque[bytes] = deque(maxlen=10)
        self._closed = False
        self._timeout = timeout
        self._terminal: _Terminal | None = None
        self._loop = ProcessLoop()
        try:
            self._child = _spawn(
                self._loop,
                argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                timeout=timeout,
                on_output=self._on_output,
            )
            self._terminal = _Terminal.give(stdin.fd, self._child.pid)
        except BaseException:
            self._closed = True
            self._loop.close()
            raise
        self.pid = self._child.pid

    @property
    def duration(self) -> float:
        return self._child.duration

    @property
    def timed_out(self) -> bool:
        return self._child.timed_out

    def _emit(self, kind: int, line: bytes) -> None:
        source: Literal["stdout", "stderr"] = "stdout" if kind == STDOUT else "stderr"
        if kind == STDERR:
            self._stderr_tail.append(line)
        self._lines.append(OutputLine(source, _decode(line, self._text)))

    def _on_output(self, child: Child, kind: int, data: bytes) -> None:
        pending = self._pending[kind]
        if b"\n" not in data:
            pending.append(data)  # a long line arrives in pieces: join once, at its end
            return
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._emit(kind, line)
        if rest:
            pending.append(rest)

    def _flush_partial(self) -> None:
        for kind in (STDOUT, STDERR):
            if self._pending[kind]:
                self._emit(kind, b"".join(self._pending[kind]))
                self._pending[kind].clear()

    def __iter__(self) -> Iterator[OutputLine[AnyStr]]:
        # A generator, so that leaving a ``for`` loop early (break, an exception)
        # drops it, and its ``finally`` ends the process tree right there, even
        # while the Stream itself is still referenced.
        try:
            while True:
                try:
                    line = self.__next__()
                except StopIteration:
                    return
                yield line
        finally:
            self.close()

    def __next__(self) -> OutputLine[AnyStr]:
        # Every line handed out is a cancellation point, not only the waits: a
        # program that writes faster than the loop consumes keeps lines pending.
        if self._watch.cancelled:
            self.close()
            raise self._watch.error(self.args)
        while not self._lines:
            if self._closed:
                raise StopIteration
            if self._child.done:
                self._finish()
                raise StopIteration
            self._loop.wait(self._watch.slice, any_event=True)
            if self._child.done:
                self._flush_partial()
            if self._watch.cancelled:
                self.close()
                raise self._watch.error(self.args)
        return self._lines.popleft()

    def _finish(self) -> None:
        self.close()
        child = self._child
        tail = b"\n".join(self._stderr_tail)
        if child.timed_out:
            raise _timeout_error(self.args, self._timeout, stderr=_decode(tail, self._text))
        if self._check and child.returncode != 0:
            assert child.returncode is not None
            raise CommandFailed(self.args, child.returncode, None, _decode(tail, self._text))

    def close(self) -> None:
        """End the program's process tree if it still runs (SIGTERM, grace, SIGKILL)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.close()
        finally:
            self.returncode = self._child.returncode
            if self._terminal is not None:
                terminal, self._terminal = self._terminal, None
                terminal.take_back(self.returncode)

    def __enter__(self) -> Stream[AnyStr]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


@overload
def stream(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
    stdin: Stdin = ...,
    input: Input = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    text: Literal[True] = ...,
) -> Stream[str]: ...
@overload
def stream(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
    stdin: Stdin = ...,
    input: Input = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    text: Literal[False],
) -> Stream[bytes]: ...
def stream(
    args: Args,
    *,
    shell: bool = False,
    timeout: float | None = None,
    check: bool = False,
    stdin: Stdin = None,
    input: Input = None,
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    text: bool = True,
) -> Stream[Any]:
    """Start a program and iterate over its output lines as they are written.

    Each item is an :class:`OutputLine` ``(source, text)`` with source
    ``"stdout"`` or ``"stderr"`` and the line without its newline. Arguments
    are those of :func:`run` (a string with shell syntax needs
    ``shell=True``); the program starts at this call (so a missing program
    raises ``ProgramNotFound`` here). At the end of the loop, ``returncode``
    is set; a timeout raises ``CommandTimeout`` and, with ``check=True``, a
    non-zero exit ``CommandFailed``, from the loop.

    A line arrives when the program writes it. Python programs get
    ``PYTHONUNBUFFERED=1``; a C program using stdio holds its output in a
    4 KiB buffer when it writes to a pipe, unless it flushes: run it as
    ``["stdbuf", "-oL", program, ...]`` to have it write line by line.

    Example::

        with pt.stream(["make", "all"]) as s:
            for source, line in s:
                print(source, line)
        print(s.returncode)
    """
    argv = _command_argv(args, shell)
    timeout = check_timeout(timeout)
    return Stream(
        args,
        argv,
        timeout=timeout,
        check=check,
        stdin=_stdin_plan(stdin, input),
        cwd=cwd,
        env=_child_env(env),
        text=text,
    )


# --------------------------------------------------------------------------- run_many


@overload
def run_many(
    commands: Iterable[Args],
    *,
    workers: int | None = ...,
    timeout: float | None = ...,
    keep_order: bool = ...,
    progress: bool | Literal["force"] = ...,
    check: bool = ...,
    shell: bool = ...,
    stdin: Stdin = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    capture: bool = ...,
    text: Literal[True] = ...,
) -> list[CommandResult[str]]: ...
@overload
def run_many(
    commands: Iterable[Args],
    *,
    workers: int | None = ...,
    timeout: float | None = ...,
    keep_order: bool = ...,
    progress: bool | Literal["force"] = ...,
    check: bool = ...,
    shell: bool = ...,
    stdin: Stdin = ...,
    cwd: PathArg = ...,
    env: dict[str, str] | None = ...,
    capture: bool = ...,
    text: Literal[False],
) -> list[CommandResult[bytes]]: ...
def run_many(
    commands: Iterable[Args],
    *,
    workers: int | None = None,
    timeout: float | None = None,
    keep_order: bool = True,
    progress: bool | Literal["force"] = False,
    check: bool = False,
    shell: bool = False,
    stdin: Stdin = None,
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    capture: bool = True,
    text: bool = True,
) -> list[CommandResult[Any]]:
    """Run many programs, at most ``workers`` at a time, and return their results.

    Each command is what :func:`run` takes (a string with shell syntax needs
    ``shell=True``). Results come in the order of ``commands``
    (``keep_order=True``) or in the order they finished. A command past its
    ``timeout`` (seconds, for each command) is ended and reported with
    ``timed_out=True``; the others go on. With ``check=True`` the first failure
    or timeout ends every running command and is raised. ``progress=True``
    shows a progress bar on stderr when it is a terminal (``"force"``: always).

    ``stdin`` is as for :func:`run`: data and paths are given to each program
    whole; a descriptor, a file object or ``pt.INHERIT`` is one stream that
    the programs would share, so it needs ``workers=1`` (they then read it
    one after the other).

    Raises:
        ProgramNotFound: a program does not exist (checked before any starts).
        ValueError, TypeError: bad arguments, before anything starts.

    Example::

        results = pt.run_many([["gzip", "-k", f] for f in files], workers=4, timeout=60)
        failed = [r for r in results if not r.ok]
    """
    prepared = [(c, _command_argv(c, shell)) for c in commands]
    timeout = check_timeout(timeout)
    if workers is None:
        workers = usable_cpus()
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1 or None, got {workers!r}")
    plan = _stdin_plan(stdin, None)
    if plan.fd is not None and workers > 1:
        raise ValueError(
            f"stdin={stdin!r} is one stream: programs running at the same time would "
            "each read parts of it; pass workers=1 (they read it one after the other), "
            "or give the data or a path, which every program gets whole"
        )
    child_env = _child_env(env)
    for name in {argv[0] for _, argv in prepared}:
        _require_program(name, env, cwd)
    total = len(prepared)
    results: list[CommandResult[Any] | None] = [None] * total
    completed: list[CommandResult[Any]] = []
    bar = Progress("commands", total) if want_progress(progress) else None
    watch = _CancelWatch()
    loop = ProcessLoop()
    terminal: _Terminal | None = None  # (workers=1: one program at a time has it)
    try:
        nxt = 0
        while nxt < total or loop.running:
            watch.check(f"run_many of {total} commands")
            while nxt < total and loop.running < workers:
                child = _spawn(
                    loop,
                    prepared[nxt][1],
                    cwd=cwd,
                    env=child_env,
                    stdin=plan,
                    token=nxt,
                    timeout=timeout,
                    capture=capture,
                )
                terminal = _Terminal.give(plan.fd, child.pid)
                nxt += 1
            finished, _ = loop.wait(watch.slice)
            for child in finished:
                if terminal is not None:
                    terminal.take_back(child.returncode)
                    terminal = None
                res = _result(prepared[child.token][0], child, text, timeout)
                if check:
                    res.check()  # the finally below ends the others
                results[child.token] = res
                completed.append(res)
                if bar is not None:
                    bar.advance()
    finally:
        loop.close()
        if terminal is not None:
            terminal.take_back(None)
        if bar is not None:
            bar.close()
    if keep_order:
        return [r for r in results if r is not None]
    return completed
