"""Programs: ``run``, ``stream`` and ``run_many``.

What ``os.system``, ``os.popen`` and ``subprocess`` do, made so that nothing
leaks, nothing deadlocks and nothing can be injected:

- every program runs in a process group of its own, registered with the
  guardian (``_proc.start_in_group``): a timeout, a Ctrl-C, an exception or the
  parent dying ends the whole tree (SIGTERM, a grace, SIGKILL), and when the
  program itself exits, whatever it left running in its group goes too;
- stdout and stderr are read together in one poll loop
  (:class:`~polytask._parallel_loop.ProcessLoop`), so a program that fills
  both pipes never blocks, and ``input=`` is written as the program reads it;
- a list of arguments runs with no shell at all; ``shell=True`` is explicit.

::

    run(args) ──> ProcessLoop.spawn ──> program (own group) ──┬─ stdout ─┐
    stream(args)      │                                       └─ stderr ─┤
    run_many(cmds) ───┘ (up to `workers` at once)   poll loop <──────────┘
                                                      │ exit / timeout / Ctrl-C
                                                      └─> CommandResult, or the tree ended
"""

from __future__ import annotations

import errno
import os
import shlex
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, AnyStr, Generic, Literal, NamedTuple, overload

from ._errors import Cancelled, CommandFailed, CommandTimeout, ProgramNotFound
from ._parallel_loop import STDERR, STDOUT, Child, ProcessLoop, which
from ._proc import usable_cpus
from ._progress import Progress, want_progress

__all__ = ["CommandResult", "OutputLine", "Stream", "run", "run_many", "stream"]

Args = str | Sequence[str | os.PathLike[str]]
Input = str | bytes | None
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
            raise CommandTimeout(
                f"command {_short(self.args)} timed out after {self.duration:.3g} s; "
                "its process tree was ended",
                cmd=self.args,
                timeout=self.timeout,
                stdout=self.stdout,
                stderr=self.stderr,
            )
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
        try:
            argv = shlex.split(args)
        except ValueError as exc:
            raise ValueError(f"cannot split command {args!r} into words: {exc}") from None
    else:
        argv = []
        for a in args:
            if not isinstance(a, (str, os.PathLike)):
                raise TypeError(f"command arguments must be str or path-like, got {a!r}")
            argv.append(os.fspath(a))
    if not argv:
        raise ValueError("empty command: give at least the program to run")
    return argv


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


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
    **kwargs: Any,
) -> Child:
    try:
        return loop.spawn(argv, cwd=cwd, env=env, **kwargs)
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename == os.fspath(cwd):
            raise
        raise _not_found(argv[0], env) from None


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


def _encode_input(input: Input) -> bytes | None:
    if input is None:
        return None
    if isinstance(input, str):
        return input.encode()
    if isinstance(input, (bytes, bytearray, memoryview)):
        return bytes(input)
    raise TypeError(f"input must be str, bytes or None, got {type(input).__name__}")


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
        from ._task import current_task

        current = current_task()
        inside = current._task is not None
        self._current = current if inside else None
        self.slice: float | None = _CANCEL_POLL if inside else None

    @property
    def cancelled(self) -> bool:
        return self._current is not None and self._current.cancelled

    def error(self, args: Any) -> Cancelled:
        name = self._current.name if self._current is not None else "main"
        return Cancelled(
            f"command {_short(args)} was stopped because task {name!r} was cancelled "
            "(e.g. a sibling in its TaskGroup failed); its process tree was ended"
        )


# --------------------------------------------------------------------------- run


@overload
def run(
    args: Args,
    *,
    shell: bool = ...,
    timeout: float | None = ...,
    check: bool = ...,
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
    input: Input = None,
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    capture: bool = True,
    text: bool = True,
) -> CommandResult[Any]:
    """Run a program to completion and return its :class:`CommandResult`.

    Args:
        args: a list of arguments (run directly, no shell), or a string: split
            into words with ``shlex.split`` (still no shell), or with
            ``shell=True`` given to ``/bin/sh -c``.
        timeout: seconds; past it the whole process tree is ended and
            ``CommandTimeout`` is raised with the output written so far.
        check: raise ``CommandFailed`` (exit status, tail of stderr) on a
            non-zero exit.
        input: text or bytes written to the program's stdin (else /dev/null).
        capture: collect stdout and stderr (else they go to this process's).
        text: decode the output as UTF-8 (else bytes).

    Raises:
        ProgramNotFound: the program does not exist (a FileNotFoundError).
        CommandTimeout, CommandFailed: see above.
        Cancelled: the thread task running this call was cancelled (its
            TaskGroup failed, see ``TaskGroup.run``); the tree was ended.

    Example::

        r = pt.run(["ls", "-l"], timeout=10)
        print(r.returncode, r.stdout)
    """
    argv = _command_argv(args, shell)
    _check_timeout(timeout)
    data = _encode_input(input)
    watch = _CancelWatch()
    loop = ProcessLoop()
    try:
        child = _spawn(loop, argv, cwd=cwd, env=env, timeout=timeout, capture=capture, input=data)
        while not child.done:
            if watch.cancelled:
                raise watch.error(args)
            loop.wait(watch.slice)
    finally:
        loop.close()  # on an exception (Ctrl-C, cancellation) this ends the tree
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
        input: bytes | None,
        cwd: PathArg,
        env: dict[str, str] | None,
        text: bool,
    ) -> None:
        self.args = args
        self.returncode: int | None = None
        self._text = text
        self._check = check
        self._lines: deque[OutputLine[Any]] = deque()
        self._pending: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
        self._stderr_tail: deque[bytes] = deque(maxlen=10)
        self._closed = False
        self._timeout = timeout
        self._watch = _CancelWatch()
        self._loop = ProcessLoop()
        try:
            self._child = _spawn(
                self._loop,
                argv,
                cwd=cwd,
                env=env,
                timeout=timeout,
                input=input,
                on_output=self._on_output,
            )
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
        while not self._lines:
            if self._closed:
                raise StopIteration
            if self._child.done:
                self._finish()
                raise StopIteration
            if self._watch.cancelled:
                self.close()
                raise self._watch.error(self.args)
            self._loop.wait(self._watch.slice, any_event=True)
            if self._child.done:
                self._flush_partial()
        return self._lines.popleft()

    def _finish(self) -> None:
        self._closed = True
        self._loop.close()
        child = self._child
        self.returncode = child.returncode
        tail = b"\n".join(self._stderr_tail)
        if child.timed_out:
            raise CommandTimeout(
                f"command {_short(self.args)} timed out after {child.duration:.3g} s; "
                "its process tree was ended",
                cmd=self.args,
                timeout=self._timeout,
                stderr=_decode(tail, self._text),
            )
        if self._check and child.returncode != 0:
            assert child.returncode is not None
            raise CommandFailed(self.args, child.returncode, None, _decode(tail, self._text))

    def close(self) -> None:
        """End the program's process tree if it still runs (SIGTERM, grace, SIGKILL)."""
        if self._closed:
            return
        self._closed = True
        self._loop.close()
        self.returncode = self._child.returncode

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
    input: Input = None,
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    text: bool = True,
) -> Stream[Any]:
    """Start a program and iterate over its output lines as they are written.

    Each item is an :class:`OutputLine` ``(source, text)`` with source
    ``"stdout"`` or ``"stderr"`` and the line without its newline. Arguments
    are those of :func:`run`; the program starts at this call (so a missing
    program raises ``ProgramNotFound`` here). At the end of the loop,
    ``returncode`` is set; a timeout raises ``CommandTimeout`` and, with
    ``check=True``, a non-zero exit ``CommandFailed``, from the loop.

    Example::

        with pt.stream(["make", "all"]) as s:
            for source, line in s:
                print(source, line)
        print(s.returncode)
    """
    argv = _command_argv(args, shell)
    _check_timeout(timeout)
    return Stream(
        args,
        argv,
        timeout=timeout,
        check=check,
        input=_encode_input(input),
        cwd=cwd,
        env=env,
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
    cwd: PathArg = None,
    env: dict[str, str] | None = None,
    capture: bool = True,
    text: bool = True,
) -> list[CommandResult[Any]]:
    """Run many programs, at most ``workers`` at a time, and return their results.

    Each command is what :func:`run` takes. Results come in the order of
    ``commands`` (``keep_order=True``) or in the order they finished. A command
    past its ``timeout`` (seconds, for each command) is ended and reported with
    ``timed_out=True``; the others go on. With ``check=True`` the first failure
    or timeout ends every running command and is raised. ``progress=True``
    shows a progress bar on stderr when it is a terminal (``"force"``: always).

    Raises:
        ProgramNotFound: a program does not exist (checked before any starts).

    Example::

        results = pt.run_many([["gzip", "-k", f] for f in files], workers=4, timeout=60)
        failed = [r for r in results if not r.ok]
    """
    prepared = [(c, _command_argv(c, shell)) for c in commands]
    _check_timeout(timeout)
    if workers is None:
        workers = usable_cpus()
    elif not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1 or None, got {workers!r}")
    for name in {argv[0] for _, argv in prepared}:
        _require_program(name, env, cwd)
    total = len(prepared)
    results: list[CommandResult[Any] | None] = [None] * total
    completed: list[CommandResult[Any]] = []
    bar = Progress("commands", total) if want_progress(progress) else None
    watch = _CancelWatch()
    loop = ProcessLoop()
    try:
        nxt = 0
        while nxt < total or loop.running:
            if watch.cancelled:
                raise watch.error(f"run_many of {total} commands")
            while nxt < total and loop.running < workers:
                _spawn(
                    loop,
                    prepared[nxt][1],
                    cwd=cwd,
                    env=env,
                    token=nxt,
                    timeout=timeout,
                    capture=capture,
                )
                nxt += 1
            finished, _ = loop.wait(watch.slice)
            for child in finished:
                res = _result(prepared[child.token][0], child, text, timeout)
                if check:
                    res.check()  # the finally below ends the others
                results[child.token] = res
                completed.append(res)
                if bar is not None:
                    bar.advance()
    finally:
        loop.close()
        if bar is not None:
            bar.close()
    if keep_order:
        return [r for r in results if r is not None]
    return completed
