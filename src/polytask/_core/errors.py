"""polytask's one exception hierarchy.

::

    Exception
     └── PolytaskError                 root of every error polytask raises itself
          ├── TaskTimeout              (also TimeoutError) a task ran past its timeout
          │    └── CommandTimeout      a program ran past its timeout (output so far attached)
          ├── WaitTimeout              (also TimeoutError) a wait ran out; what it waited for goes on
          ├── WorkerCrashed            the process running a task died (exit code / signal)
          ├── Cancelled                (also concurrent.futures.CancelledError) the task was cancelled
          ├── CommandFailed            a program exited non-zero with check=True
          ├── ProgramNotFound          (also FileNotFoundError) the program to run does not exist
          ├── ChannelClosed            put() on a closed channel, get() on a closed, drained one
          ├── ChannelEmpty             (also queue.Empty) get() found no item before its timeout
          ├── ChannelFull              (also queue.Full) put() found no room before its timeout
          ├── SerializationError       something could not be pickled or unpickled
          ├── RemoteError              a task raised an exception that could not cross processes
          ├── BackendUnavailable       (also ImportError) the engine behind a backend is missing
          ├── PotentialDeadlock        two threads took the same locks in opposite orders
          └── ProcfileError            (also ValueError) a Procfile, .env file or -c spec is invalid

The exception a task raised itself is re-raised unchanged by ``Task.result()``
(same type, so ``except ValueError`` works); when it came from another process,
its remote traceback is attached as ``__cause__``.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import queue
import signal
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BackendUnavailable",
    "Cancelled",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "CommandFailed",
    "CommandTimeout",
    "PolytaskError",
    "PotentialDeadlock",
    "ProcfileError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeout",
    "WaitTimeout",
    "WorkerCrashed",
    "describe_exit",
]


class PolytaskError(Exception):
    """Root of every error that polytask raises itself."""


class TaskTimeout(PolytaskError, TimeoutError):
    """A task ran past its ``timeout=``.

    Raised by ``Task.result()`` (and a TaskGroup) when the task's own time limit
    expired. A process task is killed first (SIGTERM, a short grace, SIGKILL) and
    its worker reaped; a thread task cannot be killed, so it is flagged cancelled
    (``pt.current_task().cancelled``) and left to return. A limit of 0 has
    expired before the task starts: it never runs, on any backend.
    """

    def __init__(self, message: str, *, name: str | None = None, timeout: float | None = None):
        super().__init__(message)
        self.name = name
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class WaitTimeout(PolytaskError, TimeoutError):
    """A wait ran out of time (``Task.result(timeout=)``, ``Pool.join(timeout=)``, a
    ``FileLock`` or ``Fifo`` timeout); what it waited for goes on.

    Unlike :class:`TaskTimeout` (the task's own limit: it was stopped), nothing
    was stopped: wait again, or cancel the task. A ``TimeoutError`` too, as
    ``concurrent.futures`` raises.
    """


class CommandTimeout(TaskTimeout):
    """A program started by ``pt.run``/``pt.stream`` ran past its timeout.

    Its whole process tree was ended; ``stdout`` and ``stderr`` hold what it had
    written until then.
    """

    def __init__(
        self,
        message: str,
        *,
        cmd: Any = None,
        timeout: float | None = None,
        stdout: Any = None,
        stderr: Any = None,
    ):
        super().__init__(message, timeout=timeout)
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr


def describe_exit(exitcode: int | None) -> str:
    """Say in words how a process ended (``-11`` -> ``'killed by signal SIGSEGV (11)'``)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            signame = signal.Signals(-exitcode).name
        except ValueError:
            signame = f"signal {-exitcode}"
        return f"killed by signal {signame} ({-exitcode})"
    return f"exited with code {exitcode}"


class WorkerCrashed(PolytaskError):
    """The process running a task died before the task finished.

    Raised by ``Task.result()`` for the task (and only the task) the worker held;
    the pool or backend replaces the worker. ``exitcode`` is the worker's exit
    status, negative for a signal (``-9`` for SIGKILL, as the OOM killer sends);
    None if it had not exited yet when the task was failed (stuck in the kernel,
    even after SIGKILL: it is reaped when it exits).
    """

    def __init__(self, message: str, *, name: str | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.name = name
        self.exitcode = exitcode

    @property
    def signal(self) -> int | None:
        """The signal that killed the worker, or None if it exited."""
        if self.exitcode is not None and self.exitcode < 0:
            return -self.exitcode
        return None

    @classmethod
    def _for(cls, name: str | None, exitcode: int | None) -> WorkerCrashed:
        how = describe_exit(exitcode)
        if exitcode is None:
            how = (
                "stopped answering and did not exit, not even after SIGKILL (stuck in the "
                "kernel?): its exit status is not known yet"
            )
        hint = ""
        if exitcode == -11:
            hint = " (a segmentation fault in native code)"
        elif exitcode == -9:
            hint = " (SIGKILL: killed from outside, often by the out-of-memory killer)"
        return cls(
            f"the worker process running task {name!r} {how}{hint}; "
            "the task did not finish, the worker was replaced",
            name=name,
            exitcode=exitcode,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class Cancelled(PolytaskError, concurrent.futures.CancelledError):
    """The task was cancelled before it could finish.

    Raised by ``Task.result()`` after ``Task.cancel()``, or for a sibling of a
    failed task in a TaskGroup. Thread tasks may raise it themselves through
    ``pt.current_task().raise_if_cancelled()``.
    """


class CommandFailed(PolytaskError):
    """A program exited with a non-zero status and ``check=True`` was asked for.

    Carries ``cmd``, ``returncode``, ``stdout`` and ``stderr`` like
    ``subprocess.CalledProcessError``; the message shows the tail of stderr.
    """

    def __init__(
        self,
        cmd: Any,
        returncode: int,
        stdout: Any = None,
        stderr: Any = None,
        *,
        tail_lines: int = 10,
    ):
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        how = describe_exit(returncode)
        msg = f"command {_short_cmd(cmd)} {how}"
        tail = _tail(stderr, tail_lines)
        if tail:
            msg += "; last lines of stderr:\n" + tail
        super().__init__(msg)

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class ProgramNotFound(PolytaskError, FileNotFoundError):
    """The program a command names does not exist (or is not on ``PATH``).

    Raised by ``pt.run``, ``pt.stream`` and ``pt.run_many`` at the call, before
    anything ran. ``filename`` is the program's name; the message says where it
    was looked for. Built like any ``OSError``: ``ProgramNotFound(errno, message, name)``.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class ChannelClosed(PolytaskError):
    """``put()`` on a closed channel, or ``get()`` on one closed and drained."""


class ChannelEmpty(PolytaskError, queue.Empty):
    """``get()`` found no item before its timeout (``get_nowait()``: none at once).

    A ``queue.Empty`` too, so code written for ``queue`` or ``multiprocessing``
    queues catches it unchanged.
    """


class ChannelFull(PolytaskError, queue.Full):
    """``put()`` found no room before its timeout (``put_nowait()``: none at once).

    A ``queue.Full`` too, so code written for ``queue`` or ``multiprocessing``
    queues catches it unchanged.
    """


class SerializationError(PolytaskError, pickle.PicklingError):
    """Something could not be pickled to cross to another process, or back.

    Raised by ``spawn``/``submit`` for an argument (the message names which), or
    as the task's exception for a result that cannot be pickled. A
    ``pickle.PicklingError``, as the stdlib's executors raise, so that ported
    ``except pickle.PicklingError`` code still catches it.
    """


class RemoteError(PolytaskError):
    """A task in another process raised an exception that could not be sent back.

    ``type_name`` and ``text`` hold the original exception's type and repr;
    ``traceback_text`` its traceback, formatted in the worker.
    """

    def __init__(self, message: str, *, type_name: str = "", traceback_text: str = ""):
        super().__init__(message)
        self.type_name = type_name
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class BackendUnavailable(PolytaskError, ImportError):
    """The engine behind a backend is not installed (the message names the extra)."""


class PotentialDeadlock(PolytaskError):
    """Lock-order checking saw two threads take the same two locks in opposite orders."""


class RemoteTraceback(Exception):
    """Holds a traceback formatted in another process; attached as ``__cause__``."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    # Errors with keyword-only constructor arguments pickle through this, so a
    # worker can raise them and the parent gets the same object back.
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _short_cmd(cmd: Any) -> str:
    if isinstance(cmd, (list, tuple)):
        import shlex

        text = shlex.join(str(c) for c in cmd)
    else:
        text = str(cmd)
    return repr(text if len(text) <= 200 else text[:197] + "...")


def _tail(data: Any, lines: int) -> str:
    if not data:
        return ""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode(errors="replace")
    parts: Sequence[str] = str(data).rstrip("\n").splitlines()
    return "\n".join(parts[-lines:])


class ProcfileError(PolytaskError, ValueError):
    """A Procfile, an env file, a ``-c`` concurrency spec or a process name is invalid.

    Raised by ``pt.Supervisor(...)`` and by ``polytask up`` / ``polytask check``
    before anything starts. ``problems`` holds every problem found as
    ``(source, line, message)`` (``line`` is None when the problem has no line,
    e.g. a ``-c`` spec); the message lists them as ``source:line: message``.
    """

    def __init__(self, problems: Sequence[tuple[str, int | None, str]]):
        self.problems = tuple(problems)
        super().__init__("\n".join(_problem_text(p) for p in self.problems) or "invalid input")

    def first_line(self) -> str:
        """The first problem on one line, with a count of the others."""
        if not self.problems:
            return "invalid input"
        text = _problem_text(self.problems[0])
        more = len(self.problems) - 1
        if more:
            text += f" (and {more} more problem{'s' if more > 1 else ''}; run 'polytask check')"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _problem_text(problem: tuple[str, int | None, str]) -> str:
    source, line, message = problem
    where = source if line is None else f"{source}:{line}"
    return f"{where}: {message}" if where else message
