"""One poll loop over many child processes, with no thread per process.

``run``, ``stream``, ``run_many`` and ``polytask parallel`` all drive their
programs through :class:`ProcessLoop`::

    spawn(argv) ──> posix_spawn or Popen (own process group, guarded) ──> child
                                                              │ stdout ─┐ memory file
                                                              │ stderr ─┤ or pipe
                                                              │ stdin <─┤ (input=)
                                                              └ pidfd ──┤
    wait(timeout) <── poll() over every fd above, plus the timers: ◄─────┘
      - output: appended to the child, or handed to its on_output callback
      - pidfd readable: waitpid the leader, SIGKILL what is left of its group
        (nothing outlives its job), unguard, drain the pipes (bounded), finish
      - deadline: SIGTERM the group; grace later: SIGKILL, reap (the kill policy's
        non-blocking form, _os.proc.Ending, driven by this loop's timers)

Both pipes are read as data arrives, so a program that fills both never
blocks; waits are poll() with the next timer as its timeout, never a sleep.

``spawn_soon`` (used by ``polytask parallel`` at ``-j`` 2 or more) starts on
the loop's thread while starts are quick, and hands them to two starter
threads while they are slow: a vfork suspends the thread that makes it until
the program exec'd, about 0.1 ms on a quiet machine but often a millisecond
or more on a busy one, when the other programs' exits would go unanswered
meanwhile. A thread's result comes back through a wake-up pipe in the same
poll, and only the loop's thread touches its state::

    spawn_soon ─┬─ starts quick ──> spawn here (memory files, posix_spawn)
                └─ a start was slow ──> queue ──> starter threads: posix_spawn ──> done list
                                                            └─ wake pipe ──> wait() adopts

A Ctrl-C (or a SIGTERM/SIGHUP handler that raises) on the main thread is held
from a program's start to its adoption (``ProcessLoop._hold``): a program is
either never started or the loop's, and so ended the loop's way.

With ``posix_spawn=True`` programs start through libc's ``posix_spawn``
(called by ctypes, which lets go of the GIL while the thread is suspended;
``os.posix_spawn`` does not): glibc's clone(CLONE_VM|CLONE_VFORK) copies no
page tables and no Python runs between fork and exec, which is most of what a
tiny job costs its parent. The price: descriptors this process inherited as
inheritable reach the programs (as with GNU parallel and xargs; every
descriptor Python opens is close-on-exec), where Popen would close them.
"""

from __future__ import annotations

# signal's own functions without its enum conversions: ~20x cheaper, and
# ProcessLoop._hold runs at every start.
import _signal  # type: ignore[import-not-found]
import ctypes
import heapq
import itertools
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._core.timeouts import poll_ms
from .proc import (
    DEFAULT_GRACE,
    Ending,
    TermSeq,
    end_now,
    end_trees,
    forget_job,
    guard,
    kill_group,
    last_pid,
    new_job,
    release_group,
    start_in_group,
    tree_marker,
)

__all__ = ["Child", "FileRange", "HoldableHandler", "ProcessLoop"]

STDOUT = 1
STDERR = 2
_PIDFD = 0
_STDIN = 3
_WAKE = 4

#: After a program's leader exits, how long its pipes may still deliver data
#: (held open by a descendant that left the process group) before we close them.
DEFAULT_DRAIN = 1.0

_READ_SIZE = 65536
#: os.fsencode's encoding, used directly for str arguments (saves its call per argument).
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
#: A program's input pipe is grown to hold up to this much (F_SETPIPE_SZ; Linux's
#: default limit for an unprivileged process, /proc/sys/fs/pipe-max-size), so
#: that a big input goes over in a few writes rather than one per 64 KiB.
_PIPE_SIZE = 1 << 20

#: A start by :meth:`ProcessLoop.spawn_soon` on the loop's own thread that kept
#: it suspended (vfork) longer than this, in seconds, is slow; ...
SLOW_START = 0.002
#: ... this many slow ones among the last :data:`SLOW_WINDOW` started there
#: mean a busy machine (one alone can be a hiccup of a quiet one) ...
SLOW_STARTS = 3
SLOW_WINDOW = 30
#: ... and then this many starts go to the starter threads before the next
#: one is tried on the loop's thread again (one more slow start there: back
#: to the threads at once).
THREADED_STARTS = 50

#: Up to this many pids handed out since a job's leader are compared with the loop's
#: own leaders before /proc is read (ProcessLoop._end_trees).
_KNOWN_ONLY = 64

#: Signals whose Python handlers wait while a started program is adopted (ProcessLoop._hold).
_HELD_SIGNALS = (int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGHUP))

OnOutput = Callable[["Child", int, bytes], None]


def which(name: str, path: str) -> str | None:
    """The absolute path of program ``name`` on ``path`` (None if not found or relative).

    What ``shutil.which`` does, without importing shutil (and its compression
    modules) on the command line's start-up path.
    """
    for d in path.split(os.pathsep):
        if not d or not os.path.isabs(d):
            continue  # relative entries depend on the child's cwd: leave them to exec
        full = os.path.join(d, name)
        if os.access(full, os.X_OK) and not os.path.isdir(full):
            return full
    return None


def _waitpid(pid: int) -> int:
    """Reap ``pid`` (blocking) and return its status as Popen's returncode."""
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): 0, as Popen says
        return 0


def _memory_files() -> tuple[int, int]:
    """Two new memory files, for one program's stdout and stderr."""
    out = os.memfd_create("polytask-out", os.MFD_CLOEXEC)
    try:
        return out, os.memfd_create("polytask-err", os.MFD_CLOEXEC)
    except BaseException:
        os.close(out)
        raise


# --------------------------------------------------------------------------- posix_spawn

# Linux values (glibc and musl) of the posix_spawnattr flags.
_SETPGROUP = 0x02
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
# Opaque libc types, allocated larger than any libc's (glibc x86-64: 336, 80, 128 bytes).
_ATTR_SIZE = 1024
_ACTIONS_SIZE = 256
_SIGSET_SIZE = 256
#: Distinct (stdin, stdout, stderr) triples whose file actions are kept for reuse.
_ACTIONS_CACHE = 256


class _Spawner:
    """``posix_spawn`` by ctypes: a new process group, default SIGPIPE/SIGXFSZ, dup'ed stdio.

    Built on the loop's thread; ``spawn`` may then run on any thread (the
    attributes and the environment block are only read). The environment is
    the one at construction.
    """

    def __init__(self, environ: Mapping[str, str], mask: Iterable[int]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._libc = libc
        for name in ("posix_spawn", "posix_spawnp"):
            fn = getattr(libc, name)
            fn.argtypes = [ctypes.POINTER(ctypes.c_int)] + [ctypes.c_void_p] * 5
            fn.restype = ctypes.c_int
        self._spawn = libc.posix_spawn
        self._spawnp = libc.posix_spawnp
        self._attr = ctypes.create_string_buffer(_ATTR_SIZE)
        self._sigdef = self._sigset((signal.SIGPIPE, signal.SIGXFSZ))  # Python ignores them
        self._sigmask = self._sigset(mask)
        self._check(libc.posix_spawnattr_init(self._attr))
        self._check(
            libc.posix_spawnattr_setflags(
                self._attr, ctypes.c_short(_SETPGROUP | _SETSIGDEF | _SETSIGMASK)
            )
        )
        self._check(libc.posix_spawnattr_setpgroup(self._attr, 0))
        self._check(libc.posix_spawnattr_setsigdefault(self._attr, self._sigdef))
        self._check(libc.posix_spawnattr_setsigmask(self._attr, self._sigmask))
        # Each program's environment is this one plus its job's mark (see _proc.tree_env).
        self._environ = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items()]
        # Per number of a program's own variables: an envp with their slots and the
        # job mark's left empty, copied and filled in at each start (a tenth of the
        # cost of building one from the list, ~36 variables, each time).
        self._envps: dict[int, ctypes.Array[ctypes.c_char_p]] = {}
        self._actions: dict[tuple[int, int, int], ctypes.Array[ctypes.c_char]] = {}
        self._path = environ.get("PATH", os.defpath)  # the children's, frozen with envp
        self._exe: dict[str, str | None] = {}

    def executable(self, name: str) -> str | None:
        """The path to start program ``name`` by (None: let posix_spawnp search PATH).

        Looked up once per name: exec would otherwise try every PATH entry,
        each a failed execve, with the parent suspended (vfork) meanwhile.
        """
        try:
            return self._exe[name]
        except KeyError:
            pass
        if "/" in name or not name:
            exe: str | None = name or None
        else:
            # Not found on PATH's absolute entries: posix_spawnp searches the rest.
            exe = which(name, self._path)
        self._exe[name] = exe
        return exe

    def _envp(self, extra_env: Sequence[bytes], marker: bytes) -> ctypes.Array[ctypes.c_char_p]:
        """The program's environment: its own variables (b"NAME=value"), ahead of the
        shared ones, then its job's ``marker``, then NULL. Any thread."""
        n = len(extra_env)
        template = self._envps.get(n)
        if template is None:
            template = (ctypes.c_char_p * (n + len(self._environ) + 2))(
                *([None] * n), *self._environ, None, None
            )
            self._envps[n] = template  # racing threads: one copy wins, both are valid
        # A copy of the pointers; the shared strings stay alive with the template,
        # the ones set here with the copy (ctypes keeps them).
        envp = type(template).from_buffer_copy(template)
        for i, entry in enumerate(extra_env):
            envp[i] = entry
        envp[n + len(self._environ)] = marker
        return envp

    @staticmethod
    def _check(err: int) -> None:
        if err:
            raise OSError(err, os.strerror(err))

    def _sigset(self, signals: Iterable[int]) -> ctypes.Array[ctypes.c_char]:
        s = ctypes.create_string_buffer(_SIGSET_SIZE)
        if self._libc.sigemptyset(s) != 0:  # pragma: no cover - cannot fail on Linux
            raise OSError(22, "sigemptyset failed")
        for sig in signals:
            if self._libc.sigaddset(s, int(sig)) != 0:  # pragma: no cover - valid signals
                raise OSError(22, f"sigaddset({int(sig)}) failed")
        return s

    def _file_actions(self, fds: tuple[int, int, int]) -> tuple[ctypes.Array[ctypes.c_char], bool]:
        """The actions that dup ``fds`` onto 0, 1, 2 (-1: inherit), and whether they are cached."""
        actions = self._actions.get(fds)
        if actions is not None:
            return actions, True
        actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
        self._check(self._libc.posix_spawn_file_actions_init(actions))
        for target, fd in enumerate(fds):
            if fd >= 0:  # dup2 onto itself clears close-on-exec (glibc >= 2.29, musl)
                self._check(self._libc.posix_spawn_file_actions_adddup2(actions, fd, target))
        if len(self._actions) < _ACTIONS_CACHE:
            self._actions[fds] = actions  # racing threads: one copy wins, both are valid
            return actions, True
        return actions, False

    def spawn(
        self,
        path: str | None,
        argv: Sequence[str],
        fds: tuple[int, int, int],
        pid: ctypes.c_int,
        job: str,
        extra_env: Sequence[bytes] = (),
    ) -> None:
        """Start ``argv`` (``path`` None: search PATH); its pid lands in ``pid`` at once.

        Writing the pid into the caller's object (rather than returning it)
        means that an exception raised right after the start still finds it.
        """
        args = [
            a.encode(_FS_ENCODING, _FS_ERRORS) if type(a) is str else os.fsencode(a) for a in argv
        ]
        for a in args:
            if b"\0" in a:
                raise ValueError(f"embedded null byte in argument {a!r}")
        cargv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        envp = self._envp(extra_env, tree_marker(job))
        actions, cached = self._file_actions(fds)
        try:
            if path is None:
                fn, exe = self._spawnp, args[0]
            else:
                fn, exe = self._spawn, os.fsencode(path)
            # ctypes lets go of the GIL here, for the whole vfork + exec.
            err = fn(ctypes.byref(pid), exe, actions, self._attr, cargv, envp)
        finally:
            if not cached:
                self._libc.posix_spawn_file_actions_destroy(actions)
        if err:
            raise OSError(err, os.strerror(err), argv[0])


class FileRange:
    """Bytes ``offset`` to ``offset + length`` of the open file ``fd``, as a program's input.

    ``head`` goes first. The loop moves the range into the program's stdin
    with ``sendfile`` (in the kernel: the bytes never come up to Python); the
    caller keeps ``fd`` open until the program finished.
    """

    __slots__ = ("fd", "head", "length", "offset")

    def __init__(self, fd: int, offset: int, length: int, head: bytes = b"") -> None:
        self.fd = fd
        self.offset = offset
        self.length = length
        self.head = head

    def __len__(self) -> int:
        return len(self.head) + self.length


def _with_extra(env: dict[str, str] | None, extra: Sequence[bytes]) -> dict[str, str] | None:
    """``env`` (None: ours) with the ``b"NAME=value"`` entries of ``extra`` set."""
    if not extra:
        return env
    out = dict(os.environ if env is None else env)
    for entry in extra:
        name, _, value = os.fsdecode(entry).partition("=")
        out[name] = value
    return out


# --------------------------------------------------------------------------- children


class Child:
    """One program in a :class:`ProcessLoop`: its state, output and result."""

    __slots__ = (
        "_stdin_data",
        "_stdin_fd",
        "_stdin_pos",
        "argv",
        "deadline",
        "done",
        "drain_until",
        "ended",
        "ending",
        "exited",
        "fds",
        "files",
        "job",
        "killed",
        "nbytes",
        "on_output",
        "out",
        "pid",
        "pidfd",
        "proc",
        "returncode",
        "started",
        "started_wall",
        "timed_out",
        "token",
    )

    def __init__(
        self,
        pid: int,
        proc: subprocess.Popen[bytes] | None,
        argv: Sequence[str],
        token: Any,
        started: float,
        started_wall: float,
    ) -> None:
        self.pid = pid
        self.proc = proc  # kept (when Popen started it) so that it never reaps behind our back
        self.argv = argv
        self.token = token
        self.job = ""  # its mark, found on descendants that leave its group (_proc.tree_env)
        self.started = started
        self.started_wall = started_wall
        self.ended: float | None = None
        self.deadline: float | None = None
        self.ending: Ending | None = None  # set when the loop starts ending it
        self.drain_until: float | None = None
        self.exited = False
        self.done = False
        self.killed = False
        self.timed_out = False
        self.returncode: int | None = None
        self.pidfd = -1
        self.fds: list[int] = []  # open output pipes
        self.files: list[int] = []  # memory files holding stdout, stderr
        self.out: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        self.nbytes = [0, 0, 0]
        self.on_output: OnOutput | None = None
        self._stdin_fd = -1
        self._stdin_data: bytes | memoryview | FileRange = b""
        self._stdin_pos = 0

    @property
    def kill_at(self) -> float | None:
        """When the loop SIGKILLs it if it is still running (None: not being ended)."""
        return None if self.ending is None else self.ending.kill_at

    @property
    def duration(self) -> float:
        """Seconds from start to the leader's exit (or until now)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def output(self, which: int) -> bytes:
        """Everything collected from stdout (1) or stderr (2)."""
        out = self.out[which]
        return out[0] if len(out) == 1 else b"".join(out)

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} argv={list(self.argv)!r} returncode={self.returncode}>"


class _Start:
    """One program on its way to a :class:`Child`: its descriptors, then its pid or error."""

    __slots__ = (
        "argv",
        "cwd",
        "env",
        "err_w",
        "error",
        "executable",
        "extra_env",
        "files",
        "input",
        "job",
        "on_output",
        "ours",
        "out_w",
        "pid",
        "pipes",
        "proc",
        "spawner",
        "started",
        "started_wall",
        "stdin",
        "theirs",
        "timeout",
        "token",
    )

    def __init__(
        self,
        argv: Sequence[str],
        token: Any,
        timeout: float | None,
        input: bytes | memoryview | FileRange | None,
        cwd: str | os.PathLike[str] | None,
        env: dict[str, str] | None,
        on_output: OnOutput | None,
        extra_env: Sequence[bytes] = (),
    ) -> None:
        self.argv = argv
        self.extra_env = extra_env
        self.token = token
        self.timeout = timeout
        self.input = input
        self.cwd = cwd
        self.env = env
        self.on_output = on_output
        self.job = new_job()
        self.ours: list[int] = []  # fds we keep
        self.theirs: list[int] = []  # the child's ends, closed once it started
        self.out_w = -1
        self.err_w = -1
        self.stdin = -1
        self.files = False
        self.pipes = False
        self.executable: str | None = None
        self.spawner: _Spawner | None = None  # None: Popen
        self.started = 0.0
        self.started_wall = 0.0
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Start the program, guarded; sets ``pid`` (and ``proc``) or ``error``. Any thread."""
        self.started, self.started_wall = time.monotonic(), time.time()
        try:
            if self.spawner is not None:
                pid = ctypes.c_int(0)
                try:
                    fds = (self.stdin, self.out_w, self.err_w)
                    self.spawner.spawn(
                        self.executable, self.argv, fds, pid, self.job, self.extra_env
                    )
                    guard(pid.value)
                except BaseException:
                    if pid.value > 0:  # started, but cannot be watched: end it now
                        kill_group(pid.value)
                        _waitpid(pid.value)
                    raise
                self.pid = pid.value
            else:
                self.proc = start_in_group(
                    self.argv,
                    executable=self.executable,
                    stdin=self.stdin,
                    stdout=None if self.out_w < 0 else self.out_w,
                    stderr=None if self.err_w < 0 else self.err_w,
                    cwd=self.cwd,
                    env=_with_extra(self.env, self.extra_env),
                    job=self.job,
                )
                forget_job(self.proc.pid)  # the loop ends its trees itself (_end_trees)
                self.pid = self.proc.pid
        except (OSError, ValueError) as exc:
            self.error = exc

    def close_theirs(self) -> None:
        for fd in self.theirs:
            os.close(fd)
        self.theirs = []

    def close_all(self) -> None:
        self.close_theirs()
        for fd in self.ours:
            os.close(fd)
        self.ours = []


#: The loop holding signals now (ProcessLoop._hold), if any: on the main thread only.
_holding: list[ProcessLoop | None] = [None]


class HoldableHandler:
    """A Python signal handler that a :class:`ProcessLoop`'s hold need not swap out.

    While a loop takes a started program into its care (``ProcessLoop._hold``)
    the signal is only noted, and ``handler`` runs when the loop lets go;
    otherwise it runs at once. For a program that owns its handlers (the
    ``polytask parallel`` command): the hold then costs no ``sigaction`` calls
    at each start, six otherwise.
    """

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.handler = handler

    def __call__(self, signum: int, frame: Any) -> Any:
        loop = _holding[0]
        if loop is not None:
            loop._on_signal(signum, frame)
            return None
        return self.handler(signum, frame)


class _Starters:
    """Threads that start programs for :meth:`ProcessLoop.spawn_soon`; results come back by a pipe."""

    def __init__(self, n: int) -> None:
        import queue
        import threading

        self.wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._todo: queue.SimpleQueue[_Start | None] = queue.SimpleQueue()
        self._done: list[_Start] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name="polytask-starter", daemon=True)
            for _ in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, start: _Start) -> None:
        self._todo.put(start)

    def _work(self) -> None:
        while True:
            start = self._todo.get()
            if start is None:
                return
            if self._stopping:
                start.error = InterruptedError("not started: the loop is closing")
            else:
                try:
                    start.run()
                except BaseException as exc:  # pragma: no cover - run reports errors itself
                    start.error = exc
            with self._lock:
                self._done.append(start)
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass

    def collect(self) -> list[_Start]:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            done, self._done = self._done, []
        return done

    def stop(self) -> None:
        """End the threads; what they did not start yet is not started."""
        self._stopping = True
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join(10)

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self._wake_w)


# --------------------------------------------------------------------------- the loop


class ProcessLoop:
    """Start programs and wait for their output and exits, all in one poll loop.

    Not thread-safe: one thread drives a loop. ``close()`` (or leaving the
    ``with`` block) ends every program still running, whatever the reason.
    With ``posix_spawn`` programs without ``cwd`` or ``env`` start through
    libc's posix_spawn (cheaper; inherited inheritable descriptors pass on),
    with the environment as it was at the first such start. ``termseq``: the
    signals and waits that end a program (:class:`~polytask._os.proc.Ending`'s
    ``steps``) instead of SIGTERM and ``grace``.
    """

    #: Starter threads for :meth:`spawn_soon` (two overlap the vfork waits on 2 cores).
    _STARTERS = 2

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        drain: float = DEFAULT_DRAIN,
        posix_spawn: bool = False,
        termseq: TermSeq | None = None,
    ) -> None:
        self.grace = grace
        self.termseq = termseq
        self.drain = drain
        self.posix_spawn = posix_spawn
        self._ended_jobs: list[tuple[str, int]] = []  # (job, leader pid)
        self._poll = select.poll()
        self._fds: dict[int, tuple[Child, int]] = {}
        self._watched: set[int] = set()
        self._children: set[Child] = set()
        self._finished: list[Child] = []
        self._timers: list[tuple[float, int, Child]] = []
        self._counter = itertools.count()
        self._devnull = -1
        self._loadavg = -1  # /proc/loadavg, open while the loop is (_last_pid)
        self._which: dict[tuple[str, str], str | None] = {}
        self._spawner: _Spawner | None = None
        self._spare_files: tuple[int, int] | None = None
        self._starters: _Starters | None = None
        self._starting = 0
        self._failed_starts: list[tuple[Any, Exception]] = []
        self._spawned = 0  # by spawn_soon
        self._spawned_here = 0  # by spawn_soon on this thread
        self._slow_starts: list[int] = []  # the last slow ones of those (their numbers)
        self._inline_after = 0
        # Signals held while a started program is taken into the loop's care (_hold).
        self._held: int | None = None
        self._handlers: dict[int, Any] = {}  # signal -> the handler our wrapper stands in for
        self._on_signal_bound = self._on_signal  # one object: compared by identity in _release
        self._outer_hold: ProcessLoop | None = None  # the loop that held before this one's hold

    # ------------------------------------------------------------------ holding signals

    def _hold(self) -> bool:
        """Hold back Ctrl-C (and SIGTERM/SIGHUP handlers) until :meth:`_release`.

        Between a program's start and its adoption a handler raising
        KeyboardInterrupt would leave a running program the loop does not
        know: ended by SIGKILL (or by the guardian), never by the ending the
        loop promises (``termseq``, SIGTERM then grace). So while the loop takes
        a program into its care, each Python-level handler is stood in for by
        one that notes the signal, and :meth:`_release` puts the handlers back
        and runs the one whose signal came. Only for that window: between two
        starts the program's own handlers are in place (two loops at once,
        asyncio.run's Ctrl-C, a loop dropped without close() all see them).
        Nothing is blocked in the kernel (other threads would take the signal
        instead). Handlers only run on the main thread: elsewhere there is
        nothing to hold (returns False). A :class:`HoldableHandler` (what
        ``polytask parallel`` installs) is not swapped: it defers to the
        holding loop itself, with no system call at each start.
        """
        if threading.get_ident() != threading.main_thread().ident:
            return False
        handlers = self._handlers
        on_signal = self._on_signal_bound
        for signum in _HELD_SIGNALS:
            handler = _signal.getsignal(signum)
            if callable(handler):  # SIG_DFL, SIG_IGN: the kernel's business, not held
                handlers[signum] = handler
                if type(handler) is not HoldableHandler:
                    _signal.signal(signum, on_signal)
        if not handlers:
            return False
        self._outer_hold, _holding[0] = _holding[0], self
        return True

    def _release(self) -> None:
        """End :meth:`_hold`: the handlers back, then the one whose signal came (it may raise)."""
        handlers, self._handlers = self._handlers, {}
        _holding[0], self._outer_hold = self._outer_hold, None
        on_signal = self._on_signal_bound
        for signum, handler in handlers.items():
            if type(handler) is not HoldableHandler and _signal.getsignal(signum) is on_signal:
                _signal.signal(signum, handler)
        held, self._held = self._held, None
        if held is not None:
            handlers[held](held, None)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._held is None:  # the first decides, as without the hold
            self._held = signum

    # ------------------------------------------------------------------ starting

    @property
    def running(self) -> int:
        """How many programs have not finished yet (those still starting included)."""
        return len(self._children) + self._starting

    def children(self) -> list[Child]:
        return list(self._children)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        token: Any = None,
        timeout: float | None = None,
        capture: bool = True,
        input: bytes | memoryview | FileRange | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        on_output: OnOutput | None = None,
        stdin: int | None = None,
        extra_env: Sequence[bytes] = (),
    ) -> Child:
        """Start ``argv`` in its own guarded process group; raises OSError if it cannot start.

        The program's stdin is a pipe fed with ``input`` (bytes, a memoryview, or a
        :class:`FileRange` of an open file), else descriptor
        ``stdin`` (the caller's: it stays open), else /dev/null.
        ``extra_env`` (``b"NAME=value"`` entries) is added to this program's
        environment only, without leaving the posix_spawn path.
        """
        if (
            self.posix_spawn
            and capture
            and on_output is None
            and input is None
            and stdin is None
            and cwd is None
            and env is None
        ):
            return self._spawn_to_files(argv, token, timeout, extra_env)
        held = self._hold()
        try:
            start = self._prepare(
                argv, token, timeout, capture, input, cwd, env, on_output, stdin, extra_env
            )
            try:
                start.run()
            finally:
                start.close_theirs()
            if start.error is not None:
                start.close_all()
                raise start.error
            return self._adopt(start)
        finally:
            if held:
                self._release()

    def _spawn_to_files(
        self,
        argv: Sequence[str],
        token: Any,
        timeout: float | None,
        extra_env: Sequence[bytes] = (),
    ) -> Child:
        """:meth:`spawn` by posix_spawn, output to memory files: the path of many tiny jobs."""
        if not argv:
            raise ValueError("no program to run: the argument list is empty")
        held = self._hold()
        try:
            return self._spawn_to_files_held(argv, token, timeout, extra_env)
        finally:
            if held:
                self._release()  # a Ctrl-C meanwhile raises here: the child is the loop's

    def _spawn_to_files_held(
        self,
        argv: Sequence[str],
        token: Any,
        timeout: float | None,
        extra_env: Sequence[bytes],
    ) -> Child:
        spawner = self._spawner
        if spawner is None:
            spawner = self._spawner = _Spawner(
                os.environ, signal.pthread_sigmask(signal.SIG_BLOCK, ())
            )
        if self._devnull < 0:
            self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        exe = spawner.executable(argv[0])
        out, err = self._spare_files or _memory_files()
        self._spare_files = None
        pid = ctypes.c_int(0)
        child: Child | None = None
        job = new_job()
        try:
            started, started_wall = time.monotonic(), time.time()
            spawner.spawn(exe, argv, (self._devnull, out, err), pid, job, extra_env)
            guard(pid.value)
            child = Child(pid.value, None, argv, token, started, started_wall)
            child.job = job
            child.pidfd = os.pidfd_open(child.pid)
            self._fds[child.pidfd] = (child, _PIDFD)
            self._poll.register(child.pidfd, select.POLLIN)
            child.files = [out, err]
            self._children.add(child)
        except BaseException:
            # Not adopted after all (an error, or Ctrl-C just now): undo, end it here.
            if child is not None:
                self._children.discard(child)
                if child.pidfd >= 0:
                    if self._fds.pop(child.pidfd, None) is not None:
                        try:
                            self._poll.unregister(child.pidfd)
                        except KeyError:  # interrupted before it was registered
                            pass
                    os.close(child.pidfd)
                child.exited = child.done = True
            os.close(out)
            os.close(err)
            if pid.value > 0:  # started, but cannot be watched: end it now
                end_now(pid.value)
            raise
        if timeout is not None:
            self.set_deadline(child, started + timeout)
        # The next start's files, made now that this program runs: not between
        # one job's exit and the next one's start.
        try:
            self._spare_files = _memory_files()
        except OSError:  # out of descriptors: the next start says so
            pass
        return child

    def spawn_soon(
        self,
        argv: Sequence[str],
        *,
        token: Any = None,
        timeout: float | None = None,
        on_output: OnOutput | None = None,
        extra_env: Sequence[bytes] = (),
    ) -> None:
        """Like :meth:`spawn`, but the start may be left to a starter thread.

        A start suspends the thread that makes it until the program has
        exec'd (vfork). On a quiet machine that is about 0.1 ms and starting
        here is cheapest (no hand-over between threads); on a busy one the
        new program may wait milliseconds for a core, and this thread with
        it, while the other programs' exits go unanswered. So programs start
        here until :data:`SLOW_STARTS` of the last :data:`SLOW_WINDOW` took
        longer than :data:`SLOW_START` each; then the next
        :data:`THREADED_STARTS` go to the starter threads, which overlap
        those waits, and one is tried here again.

        A program started by a thread joins the loop during a later
        :meth:`wait`, counted in :attr:`running` meanwhile; a program that
        cannot start is listed by :meth:`failed_starts`.
        """
        self._spawned += 1
        if self._spawned > self._inline_after:
            t0 = time.monotonic()
            try:
                self.spawn(
                    argv, token=token, timeout=timeout, on_output=on_output, extra_env=extra_env
                )
            except (OSError, ValueError) as exc:
                self._failed_starts.append((token, exc))
            self._spawned_here += 1
            if time.monotonic() - t0 > SLOW_START:
                slow = self._slow_starts
                slow.append(self._spawned_here)
                if (
                    len(slow) >= SLOW_STARTS
                    and slow[-SLOW_STARTS] > self._spawned_here - SLOW_WINDOW
                ):
                    self._inline_after = self._spawned + THREADED_STARTS
                del slow[:-SLOW_STARTS]
            return
        held = self._hold()
        try:
            start = self._prepare(
                argv, token, timeout, True, None, None, None, on_output, None, extra_env
            )
            if self._starters is None:
                self._starters = _Starters(self._STARTERS)
                self._fds[self._starters.wake_r] = (None, _WAKE)  # type: ignore[assignment]
                self._poll.register(self._starters.wake_r, select.POLLIN)
            self._starting += 1
            self._starters.submit(start)
        finally:
            if held:
                self._release()

    def failed_starts(self) -> list[tuple[Any, Exception]]:
        """(token, error) of each :meth:`spawn_soon` program that could not start, since the last call."""
        failed, self._failed_starts = self._failed_starts, []
        return failed

    def _prepare(
        self,
        argv: Sequence[str],
        token: Any,
        timeout: float | None,
        capture: bool,
        input: bytes | memoryview | FileRange | None,
        cwd: str | os.PathLike[str] | None,
        env: dict[str, str] | None,
        on_output: OnOutput | None,
        stdin: int | None = None,
        extra_env: Sequence[bytes] = (),
    ) -> _Start:
        if not argv:
            raise ValueError("no program to run: the argument list is empty")
        start = _Start(argv, token, timeout, input, cwd, env, on_output, extra_env)
        files = capture and on_output is None
        ours, theirs = start.ours, start.theirs
        try:
            if files:
                # Output that nobody reads live goes to memory files: no pipe to
                # drain, no poll event, never full, and two fds fewer.
                start.out_w = os.memfd_create("polytask-out", os.MFD_CLOEXEC)
                ours.append(start.out_w)
                start.err_w = os.memfd_create("polytask-err", os.MFD_CLOEXEC)
                ours.append(start.err_w)
                start.files = True
            elif capture:
                out_r, start.out_w = os.pipe2(os.O_CLOEXEC)
                err_r, start.err_w = os.pipe2(os.O_CLOEXEC)
                ours += [out_r, err_r]
                theirs += [start.out_w, start.err_w]
                start.pipes = True
            if input is not None:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                ours.append(in_w)
                theirs.append(in_r)
                start.stdin = in_r
                if len(input) > 65536:
                    import fcntl

                    try:  # best effort: the default 64 KiB works, only slower
                        fcntl.fcntl(in_w, fcntl.F_SETPIPE_SZ, min(len(input), _PIPE_SIZE))
                    except OSError:
                        pass
            elif stdin is not None:
                start.stdin = stdin
            else:
                if self._devnull < 0:
                    self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                start.stdin = self._devnull
            if self.posix_spawn and cwd is None and env is None:
                if self._spawner is None:
                    self._spawner = _Spawner(
                        os.environ, signal.pthread_sigmask(signal.SIG_BLOCK, ())
                    )
                start.spawner = self._spawner
                start.executable = self._spawner.executable(argv[0])
            else:
                start.executable = self._resolve(argv[0], cwd, env)
        except BaseException:
            start.close_all()
            raise
        return start

    def _adopt(self, start: _Start) -> Child:
        ours = start.ours
        child = Child(
            start.pid, start.proc, start.argv, start.token, start.started, start.started_wall
        )
        child.job = start.job
        try:
            child.on_output = start.on_output
            child.pidfd = os.pidfd_open(child.pid)
            self._register(child.pidfd, child, _PIDFD, select.POLLIN)
            if start.files:
                child.files = [ours[0], ours[1]]
            elif start.pipes:
                child.fds = [ours[0], ours[1]]
                self._register(ours[0], child, STDOUT, select.POLLIN)
                self._register(ours[1], child, STDERR, select.POLLIN)
            if start.input is not None:
                child._stdin_fd = ours[-1]
                child._stdin_data = start.input
                os.set_blocking(child._stdin_fd, False)
                self._register(child._stdin_fd, child, _STDIN, select.POLLOUT)
            self._children.add(child)
            if start.timeout is not None:
                self.set_deadline(child, child.started + start.timeout)
        except BaseException:
            # Not adopted after all: release what was registered, end it here.
            for fd in (child.pidfd, *ours):
                if fd >= 0:
                    if self._fds.pop(fd, None) is not None:
                        self._poll.unregister(fd)
                    os.close(fd)
            child.pidfd, child.fds, child.files, child._stdin_fd = -1, [], [], -1
            child.exited = child.done = True  # its timers, if any, are void
            self._children.discard(child)
            self._end_unadopted(child)
            raise
        return child

    def _end_unadopted(self, child: Child) -> None:
        child.returncode = end_now(child.pid)
        if child.proc is not None:
            child.proc.returncode = child.returncode

    def _started(self) -> bool:
        """Adopt what the starter threads started; True if anything came."""
        assert self._starters is not None
        got = False
        held = self._hold()
        try:
            for start in self._starters.collect():
                got = True
                self._starting -= 1
                start.close_theirs()
                if start.error is not None:
                    start.close_all()
                    error = start.error
                    if not isinstance(error, Exception):  # pragma: no cover - run catches these
                        raise error
                    self._failed_starts.append((start.token, error))
                else:
                    self._adopt(start)
        finally:
            if held:
                self._release()
        return got

    def _resolve(
        self, name: str, cwd: str | os.PathLike[str] | None, env: dict[str, str] | None
    ) -> str | None:
        # Exec would try every PATH entry, each a failed execve, with the
        # parent suspended (vfork) meanwhile: look the program up once.
        if "/" in name or cwd is not None or not name:
            return None
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        key = (name, path)
        try:
            return self._which[key]
        except KeyError:
            found = self._which[key] = which(name, path)
            return found

    def set_deadline(self, child: Child, when: float | None) -> None:
        """(Re)set the monotonic time at which ``child`` is ended as timed out."""
        child.deadline = when
        if when is not None and not child.exited:
            self._arm(child, when)

    def watch(self, fd: int) -> None:
        """Also report when ``fd`` (not a child's) becomes readable."""
        if fd not in self._watched:
            self._watched.add(fd)
            self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._watched.discard(fd)
            self._poll.unregister(fd)

    # ------------------------------------------------------------------ ending

    def terminate(self, child: Child) -> None:
        """Start ending ``child``'s tree (non-blocking): SIGTERM now, SIGKILL when the
        grace is over (:class:`~polytask._os.proc.Ending`, driven by this loop's timers)."""
        if child.exited or child.ending is not None:
            return
        child.killed = True
        child.ending = Ending(child.pid, self.grace, steps=self.termseq)
        self._arm(child, child.ending.kill_at)

    def kill_all(self) -> None:
        """End every program still running (SIGTERM, grace, SIGKILL) and wait until all finished."""
        while self._starting:
            self.wait(None)  # adopt what is being started, to end it too
        for child in list(self._children):
            self.terminate(child)
        while self._children:
            self.wait(None)
        self._finished.clear()

    def close(self) -> None:
        """End everything still running and release the loop's descriptors."""
        try:
            self.kill_all()
        finally:
            # A second Ctrl-C during the grace lands here: no more grace.
            for child in list(self._children):
                self._reap_now(child)
                self._close_pipes(child)
                self._finish(child)
            if self._ended_jobs:
                ended, self._ended_jobs = self._ended_jobs, []
                end_trees([job for job, _ in ended], 0)
            for fd in list(self._watched):
                self.unwatch(fd)
            self._finished.clear()
            if self._starters is not None:
                starters, self._starters = self._starters, None
                self._fds.pop(starters.wake_r, None)
                self._poll.unregister(starters.wake_r)
                starters.stop()
                # Interrupted while programs were being started: end them unadopted.
                for start in starters.collect():
                    start.close_all()
                    if start.error is None:
                        end_now(start.pid)
                        if start.proc is not None:
                            start.proc.returncode = -signal.SIGKILL
                starters.close()
                self._starting = 0
            if self._devnull >= 0:
                os.close(self._devnull)
                self._devnull = -1
            if self._loadavg >= 0:
                os.close(self._loadavg)
                self._loadavg = -1
            if self._spare_files is not None:
                for fd in self._spare_files:
                    os.close(fd)
                self._spare_files = None

    def __enter__(self) -> ProcessLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ waiting

    def wait(
        self, timeout: float | None = None, *, any_event: bool = False
    ) -> tuple[list[Child], list[int]]:
        """Wait for something to happen; returns (finished children, readable watched fds).

        Returns when a child finished or a watched fd is readable, with
        ``any_event`` also after any output, and after at most ``timeout``
        seconds (None: no limit).
        """
        end = None if timeout is None else time.monotonic() + timeout
        ready: list[int] = []
        woke = False
        fds = self._fds
        timers = self._timers
        while True:
            if timers:
                self._fire_timers(time.monotonic())
            if self._finished:
                ms: int | None = 0
            else:
                nxt = timers[0][0] if timers else None
                if end is not None:
                    nxt = end if nxt is None else min(nxt, end)
                if nxt is not None:
                    ms = max(0, math.ceil((nxt - time.monotonic()) * 1000))
                elif self._children or self._starting or self._watched:
                    ms = None
                else:
                    break  # nothing could ever happen
            events = self._poll.poll(poll_ms(ms))
            for fd, ev in events:
                entry = fds.get(fd)
                if entry is None:
                    if fd in self._watched:
                        ready.append(fd)
                    continue
                child, kind = entry
                if kind == _PIDFD:
                    self._on_exit(child)
                elif kind == _WAKE:
                    woke = self._started() or woke
                elif kind == _STDIN:
                    self._write_stdin(child, ev)
                else:
                    self._read(child, fd, kind, ev)
            if timers:
                self._fire_timers(time.monotonic())
            if self._ended_jobs:
                # Before any of them is reported finished; and their strays may hold
                # the pipes that keep a finished leader from being reported.
                self._end_trees()
            if self._finished or ready or woke or self._failed_starts or (any_event and events):
                break
            if end is not None and time.monotonic() >= end:
                break
        finished, self._finished = self._finished, []
        return finished, ready

    def _end_trees(self) -> None:
        """End what the jobs that just ended left outside their groups (daemons),
        before they are reported finished: one look at the processes started
        since the earliest of them (usually a few reads)."""
        ended, self._ended_jobs = self._ended_jobs, []
        jobs = [job for job, _ in ended]
        pids = [pid for _, pid in ended]
        # Leaders on both sides of a pid wrap-around: no single start, look at all.
        first = None if max(pids) - min(pids) > 1 << 14 else min(pids)
        # The other programs' leaders, not reaped yet (so their pids are not reused),
        # carry their own marks: not read. At -j 2 the next job's leader is usually
        # the only process started since, and read in the middle of its execve it
        # showed no environment yet and was read again after sleeps.
        skip = {c.pid for c in self._children if not c.exited}
        last = self._last_pid()
        if first is not None and last is not None and 0 <= last - first <= _KNOWN_ONLY:
            # The reaped leaders' pids are not reused before a wrap-around (which
            # would put ``last`` below ``first``): when every pid handed out since
            # the first leader is one of these, nothing else was started since,
            # and nothing of theirs can be left.
            skip.update(pids)
            if all(pid in skip for pid in range(first + 1, last + 1)):
                return
        end_trees(jobs, self.grace, first_pid=first, skip=skip, last=last)

    def _last_pid(self) -> int | None:
        """The last pid the kernel allocated, by one pread of /proc/loadavg kept open
        (open, read and close after every job's end cost ~4x more); None: unknown."""
        try:
            if self._loadavg < 0:
                self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
            return last_pid(os.pread(self._loadavg, 256, 0))
        except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
            return None

    # ------------------------------------------------------------------ internals

    def _register(self, fd: int, child: Child, kind: int, events: int) -> None:
        self._fds[fd] = (child, kind)
        self._poll.register(fd, events)

    def _drop(self, fd: int) -> None:
        del self._fds[fd]
        self._poll.unregister(fd)
        os.close(fd)

    def _arm(self, child: Child, when: float) -> None:
        heapq.heappush(self._timers, (when, next(self._counter), child))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, child = heapq.heappop(timers)
            if child.done:
                continue
            if not child.exited:
                if child.ending is not None:
                    due = child.ending.kill_at
                    if child.ending.step(now):
                        self._reap_now(child)
                    elif child.ending.kill_at != due:  # the next signal of its sequence
                        self._arm(child, child.ending.kill_at)
                elif child.deadline is not None and now >= child.deadline:
                    child.timed_out = True
                    self.terminate(child)
            elif child.drain_until is not None and now >= child.drain_until:
                self._close_pipes(child)
                self._maybe_finish(child)

    def _read(self, child: Child, fd: int, kind: int, ev: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except OSError:
            data = b""
        while data:
            child.nbytes[kind] += len(data)
            if child.on_output is not None:
                child.on_output(child, kind, data)
            else:
                child.out[kind].append(data)
            if not ev & select.POLLHUP:
                return
            # Every writer is gone: what is left in the pipe is bounded, read it all.
            data = os.read(fd, _READ_SIZE)
        child.fds.remove(fd)
        self._drop(fd)
        self._maybe_finish(child)

    def _write_stdin(self, child: Child, ev: int) -> None:
        fd = child._stdin_fd
        if not ev & select.POLLERR:
            data = child._stdin_data
            pos = child._stdin_pos
            try:
                if isinstance(data, FileRange):
                    head = len(data.head)
                    if pos < head:
                        pos += os.write(fd, memoryview(data.head)[pos:])
                    else:
                        done = pos - head
                        sent = os.sendfile(fd, data.fd, data.offset + done, data.length - done)
                        if sent == 0:  # the file is shorter than the range: end the input
                            pos = len(data)
                        pos += sent
                else:
                    # A memoryview: no copy of what is left, however big.
                    pos += os.write(fd, memoryview(data)[pos:])
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the program does not read its input
                pass
            else:
                child._stdin_pos = pos
                if pos < len(data):
                    return
        self._close_stdin(child)

    def _close_stdin(self, child: Child) -> None:
        if child._stdin_fd >= 0:
            self._drop(child._stdin_fd)
            child._stdin_fd = -1
            child._stdin_data = b""

    def _on_exit(self, child: Child) -> None:
        # The pidfd said the leader exited: this waitpid does not block.
        self._reaped(child, _waitpid(child.pid))

    def _reap_now(self, child: Child) -> None:
        """The end of the kill policy (its grace is over, or there is none): SIGKILL, reap."""
        if not child.exited:
            if child.ending is not None:
                child.ending.kill()
            else:
                kill_group(child.pid)
            self._reaped(child, _waitpid(child.pid))

    def _reaped(self, child: Child, returncode: int) -> None:
        child.returncode = returncode
        if child.proc is not None:
            child.proc.returncode = returncode
        # The leader is reaped: end what is left of its group (nothing outlives
        # its job) and release it from the guardian.
        release_group(child.pid)
        self._ended_jobs.append((child.job, child.pid))
        child.exited = True
        child.ended = time.monotonic()
        if child.pidfd >= 0:
            self._drop(child.pidfd)
            child.pidfd = -1
        self._close_stdin(child)
        if child.files:
            self._read_files(child)
        if child.fds:
            child.drain_until = child.ended + self.drain
            self._arm(child, child.drain_until)
        self._maybe_finish(child)

    def _read_files(self, child: Child) -> None:
        for kind, fd in zip((STDOUT, STDERR), child.files, strict=True):
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                data = os.pread(fd, size, 0)
                child.nbytes[kind] += len(data)
                child.out[kind].append(data)
            os.close(fd)
        child.files = []

    def _close_pipes(self, child: Child) -> None:
        for fd in child.fds:
            self._drop(fd)
        child.fds = []

    def _maybe_finish(self, child: Child) -> None:
        if child.exited and not child.fds and not child.done:
            self._finish(child)

    def _finish(self, child: Child) -> None:
        if child.done:
            return
        child.done = True
        self._children.discard(child)
        self._finished.append(child)
