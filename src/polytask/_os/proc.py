"""Process hygiene: the layer that keeps the "no zombie, no orphan" promise.

Every process polytask starts (pool workers, commands, supervised programs)
goes through this module:

- it runs in a process group of its own, so that one ``killpg`` reaches it and
  every descendant that did not leave the group;
- its group is registered with the *guardian*, one small helper process per
  polytask parent. The guardian holds the read end of a pipe whose write end
  only the parent has. When the parent dies for any reason (return, SIGTERM,
  SIGKILL), the kernel closes that end, the guardian reads EOF and ends every
  registered group: SIGTERM, a grace period, SIGKILL. This covers what
  PR_SET_PDEATHSIG cannot: programs we exec (no Python of ours runs in them)
  and the grandchildren of workers;
- the kill policy (SIGTERM, grace, SIGKILL, reap, then SIGKILL what stayed in
  the group) lives here only: :func:`terminate` blocks, :class:`Ending` is the
  same sequence for a caller that waits in its own loop (the program loop, the
  process backend's timer, the supervisor), :func:`kill_group` and
  :func:`end_now` are the no-grace forms, :func:`release_group` its last step;
- waits use a pidfd (no PID-reuse race, no sleep loop).

::

    parent ──pipe (+pgid / -pgid lines)──> guardian (own session, ignores SIGINT)
      │                                        │ on EOF: killpg(TERM) .. grace .. killpg(KILL)
      ├── worker (pgid A, PDEATHSIG=KILL) ── grandchildren (pgid A)
      └── command (pgid B) ── grandchildren (pgid B)

The guardian also unlinks registered paths (shared-memory segments, FIFOs)
when the parent dies, so a SIGKILLed owner leaves nothing in /dev/shm; and it
ends every process whose environment carries a registered marker
(:func:`guard_env`): for engines such as Ray whose helper processes start
later, in process groups that are not ours, and outlive the process that
started them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .._core.timeouts import POLL_MAX_MS, poll_ms
from . import guardian as _guardian_mod
from .ending import DEFAULT_GRACE, Ending, TermSeq, signal_group

__all__ = [
    "DEFAULT_GRACE",
    "Ending",
    "TermSeq",
    "at_shutdown",
    "become_subreaper",
    "children",
    "end_now",
    "end_processes",
    "end_trees",
    "ensure_guardian",
    "find_marked",
    "find_trees",
    "forget_job",
    "guard",
    "guard_env",
    "guard_path",
    "guard_pid",
    "guard_prefix",
    "guard_spill",
    "kill_group",
    "last_pid",
    "new_job",
    "owner_key",
    "pid_state",
    "python_command",
    "reap_strays",
    "release_group",
    "remember_job",
    "restore_env",
    "run_shutdown_hooks",
    "set_child_subreaper",
    "set_pdeathsig",
    "signal_group",
    "start_in_group",
    "stray_children",
    "terminate",
    "tree_env",
    "tree_marker",
    "unguard",
    "unguard_env",
    "unguard_path",
    "unguard_pid",
    "unguard_prefix",
    "unguard_spill",
    "usable_cpus",
    "wait_pid",
]


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_pdeathsig(sig: int = signal.SIGKILL, *, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits.

    If the parent already died before this call, no signal would ever come, so
    with ``expected_parent`` given we check ``getppid()`` afterwards and exit.
    """
    if not sys.platform.startswith("linux"):
        return
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def set_child_subreaper() -> None:
    """Make orphaned descendants reparent to this process (which must reap them)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# --------------------------------------------------------------------------- trees
#
# A process group holds a job's descendants only until one calls setsid() or
# setpgid(), as daemons do. So every process polytask starts also carries a
# variable in its environment, ``POLYTASK_TREE_<owner pid>_<random>=<job>``,
# which its descendants inherit whatever group or session they move to. When a
# job ends, its remaining processes are found by that marker (one pass over
# /proc) and ended; when the owner dies, its guardian ends every process with
# the owner's variable, whatever the value. Nested owners (a worker that runs
# commands) add their own variable, so the outer owner's marker reaches the
# inner jobs too. What it cannot find: a descendant that clears or replaces its
# whole environment (``env -i``), or one started by another user.

_TREE_PREFIX = "POLYTASK_TREE_"
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_owner: str | None = None
_jobs = itertools.count(1)
# The directory that holds the polytask package (src/ or site-packages): this file
# is polytask/_os/proc.py.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def owner_key() -> str:
    """The environment variable that marks every process this process starts."""
    global _owner
    if _owner is None:
        _owner = f"{_TREE_PREFIX}{os.getpid()}_{os.urandom(4).hex()}"
    return _owner


def new_job() -> str:
    """A job name, unique in this process, for :func:`tree_env` and :func:`end_trees`."""
    return str(next(_jobs))


def tree_env(job: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the marker of ``job`` added.

    Starts the guardian first (see :func:`ensure_guardian`): what carries the mark
    is covered before it exists.
    """
    ensure_guardian()
    out = dict(os.environ if env is None else env)
    out[owner_key()] = job
    return out


def tree_marker(job: str) -> bytes:
    """The ``KEY=VALUE`` entry that :func:`tree_env` adds for ``job``, as bytes."""
    # os.fsencode's own encoding, without its Python-level call (twice per job).
    return f"{_owner or owner_key()}={job}".encode(_FS_ENCODING, _FS_ERRORS)


def _read_proc(path: str) -> bytes:
    """The whole of a /proc file, by three system calls (open() takes seven: fstat,
    ioctl, lseek... and a buffered reader; this runs after every job's end)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) < 65536:
            return data
        chunks = [data]
        while data:
            data = os.read(fd, 65536)
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def last_pid(data: bytes) -> int:
    """The last pid allocated (in our namespace), from /proc/loadavg's ``data``."""
    return int(data.split()[4])


def _newer_pids(first: int, last: int | None = None) -> Iterable[int]:
    """The pids the kernel handed out after ``first`` (oldest first), as far as /proc
    can tell: a job's descendants were all started after its leader. ``last``: the
    last pid allocated, if the caller read it (else read here)."""
    if last is None:
        try:
            last = last_pid(_read_proc("/proc/loadavg"))
        except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
            last = first - 1
    if last >= first:
        count = last - first
        if count <= _PROBE_LIMIT:
            return range(first + 1, last + 1)
    else:  # wrapped around pid_max since
        count = _pid_max() - first + last
        if count <= _PROBE_LIMIT:
            return itertools.chain(range(first + 1, _pid_max()), range(1, last + 1))
    # Many processes started since: list the live ones instead of probing each.
    live = (int(n) for n in os.listdir("/proc") if n.isdigit())
    if last >= first:
        return [p for p in live if first < p <= last]
    return [p for p in live if p > first or p <= last]


#: Up to this many pids handed out since a job's leader are probed one by one;
#: beyond, /proc is listed.
_PROBE_LIMIT = 256


@functools.cache
def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):  # pragma: no cover
        return 1 << 22


def find_trees(
    jobs: Collection[str],
    first_pid: int | None = None,
    *,
    skip: Collection[int] = (),
    last: int | None = None,
) -> list[int]:
    """Every live process (not this one) that carries the marker of one of ``jobs``.

    ``first_pid``: the pid of the earliest job's leader; only processes started
    after it are looked at (usually a handful, so this costs a few reads, where
    a look at every process costs ~1 ms per hundred). ``skip``: pids known not
    to carry any of the markers (other jobs' leaders, not reaped yet), not read.
    ``last``: the last pid allocated (:func:`last_pid`), when the caller read it.
    """
    if not jobs:
        return []
    return find_marked({tree_marker(j) for j in jobs}, first_pid, skip=skip, last=last)


def find_marked(
    markers: Collection[bytes],
    first_pid: int | None = None,
    *,
    skip: Collection[int] = (),
    last: int | None = None,
) -> list[int]:
    """Every live process (not this one) whose environment holds one of ``markers``
    (``KEY=VALUE`` entries); ``first_pid``, ``skip`` and ``last`` as for
    :func:`find_trees`."""
    wanted = set(markers)
    me = os.getpid()
    if first_pid is None:
        pids: Iterable[int] = (int(n) for n in os.listdir("/proc") if n.isdigit())
    else:
        pids = _newer_pids(first_pid, last)
    if skip:
        pids = [p for p in pids if p not in skip]
    found: list[int] = []
    # A process in the middle of execve shows an empty environment for a moment
    # (the new image's is not set up yet): look at those again, briefly.
    unsure = _scan_environ(pids, wanted, me, found)
    for delay in (0.0005, 0.002, 0.005):
        if not unsure:
            break
        time.sleep(delay)
        unsure = _scan_environ(unsure, wanted, me, found)
    return found


def _scan_environ(pids: Iterable[int], wanted: set[bytes], me: int, found: list[int]) -> list[int]:
    unsure = []
    for pid in pids:
        if pid == me:
            continue
        try:
            env = _read_proc(f"/proc/{pid}/environ")
        except OSError:  # no such process, or not ours
            continue
        if not env:
            if pid_state(pid) not in (b"Z", b"X", None):  # a zombie has none either
                unsure.append(pid)
        elif wanted.intersection(env.split(b"\0")):
            found.append(pid)
    return unsure


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP: ``T``; a debugger's: ``t``)."""
    return pid_state(pid) in (b"T", b"t")


def pid_state(pid: int) -> bytes | None:
    """The state letter of process ``pid`` (``R``, ``S``, ``Z``...), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def end_trees(
    jobs: Collection[str],
    grace: float = DEFAULT_GRACE,
    *,
    first_pid: int | None = None,
    skip: Collection[int] = (),
    last: int | None = None,
) -> list[int]:
    """End what is left of ``jobs`` after their leaders ended: :func:`end_processes`
    for every process that still carries one of their markers, wherever it moved.
    Returns the pids that were found. ``first_pid``, ``skip`` and ``last`` as for
    :func:`find_trees` (the second look, after the grace, reads the last pid anew).
    """
    pids = find_trees(jobs, first_pid, skip=skip, last=last)
    if pids:
        end_processes(pids, grace, again=lambda: find_trees(jobs, first_pid, skip=skip))
    return pids


def end_processes(
    pids: Collection[int], grace: float = DEFAULT_GRACE, *, again: Callable[[], Any] | None = None
) -> None:
    """The kill policy for single processes (not groups): SIGTERM, up to ``grace``
    seconds for them to exit, then SIGKILL to the rest and to what ``again()``
    finds then (one of them may have started another meanwhile). Those that are
    our children are reaped (a subreaper's adopted orphans)."""
    fds = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    try:
        poller = select.poll()
        by_fd = {fd: pid for pid, fd in fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        waiting = set(fds)
        deadline = time.monotonic() + grace
        while waiting:
            ms = int((deadline - time.monotonic()) * 1000)
            if ms <= 0:
                break
            for fd, _ in poller.poll(poll_ms(ms)):
                poller.unregister(fd)
                waiting.discard(by_fd[fd])
        for pid in waiting | set(again() if again is not None else ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    finally:
        for fd in fds.values():
            os.close(fd)
    for pid in pids:
        _reap_if_child(pid)


def _reap_if_child(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            select.select([fd], [], [], 1.0)  # SIGKILLed: it exits at once
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not ours: init (or whoever adopted it) reaps it
    finally:
        if fd >= 0:
            os.close(fd)


def become_subreaper() -> None:
    """Make orphaned descendants reparent to this process instead of init.

    Only for processes polytask owns entirely (the ``polytask`` command, a
    worker): they must then reap what they adopt (:func:`reap_strays`); a
    library must not do this to its user's process.
    """
    set_child_subreaper()


def children() -> list[int]:
    """This process's children (every thread's), from /proc: a few reads, no scan."""
    out: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover - not Linux
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return out


def stray_children(known: Collection[int]) -> list[int]:
    """Children of ours that are not in ``known`` and not the guardian: for a
    subreaper, orphans it adopted (or programs a thread is starting right now)."""
    guardian = _guardian.pid
    return [p for p in children() if p not in known and p != guardian]


def reap_strays(pids: Collection[int]) -> None:
    """Reap those of ``pids`` (from :func:`stray_children`) that exited and are
    surely adopted: a job leader being started by another thread leads its own
    process group, so a zombie that does is left to whoever started it."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[2]) != pid:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def python_command(
    name: str, args: Sequence[str], env: Mapping[str, str]
) -> tuple[list[str], dict[str, str], dict[str, str | None]]:
    """How to start one of polytask's own Python processes so that ``ps`` names it.

    ``args`` are the interpreter's arguments (``["-c", code, ...]``). Returns
    ``(argv, env, saved)``: start ``argv`` with ``executable=sys.executable``
    and ``env``. ``argv[0]`` is ``name`` (``polytask-worker``...), which is what
    ``ps`` shows; ``PYTHONEXECUTABLE`` tells the interpreter where it really is
    (so that a virtual environment is still found) and ``PYTHONPATH`` where
    polytask is. ``saved`` holds the caller's own values of those two variables
    (None: unset), for the new process to restore before it runs user code.
    """
    out = dict(env)
    saved = {k: out.get(k) for k in ("PYTHONEXECUTABLE", "PYTHONPATH")}
    out["PYTHONEXECUTABLE"] = sys.executable
    path = saved["PYTHONPATH"]
    out["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + path if path else "")
    return [name, *args], out, saved


def restore_env(saved: Mapping[str, str | None]) -> None:
    """Undo :func:`python_command`'s changes in this process's environment."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --------------------------------------------------------------------------- waiting


def wait_pid(pid: int, timeout: float | None) -> bool:
    """Wait until process ``pid`` (our child) has exited, without reaping it.

    Returns True if it exited within ``timeout`` seconds. Uses a pidfd so there
    is no polling loop and no race with PID reuse.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = None if end is None else max(0, int((end - time.monotonic()) * 1000))
            try:
                if p.poll(poll_ms(ms)):
                    return True
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            if ms is not None and ms <= POLL_MAX_MS:
                return False
    finally:
        os.close(fd)


def _reap(proc: subprocess.Popen[Any], timeout: float | None) -> int | None:
    if proc.returncode is not None:
        return proc.returncode
    if wait_pid(proc.pid, timeout):
        return proc.wait()
    return proc.poll()


def kill_group(pgid: int) -> bool:
    """The kill policy with no grace: SIGKILL the group ``pgid`` (the caller reaps)."""
    return signal_group(pgid, signal.SIGKILL)


def release_group(pgid: int) -> None:
    """The end of the kill policy, once the group's leader is reaped: SIGKILL what
    stayed in the group (descendants that ignored SIGTERM, or outlived a leader
    that exited on its own), then stop guarding it (not before: after the reap
    its number could be reused, so it is unguarded last)."""
    signal_group(pgid, signal.SIGKILL)
    unguard(pgid)


def end_now(pid: int) -> int:
    """End a group leader of ours (no Popen: posix_spawn'ed or forked) at once:
    SIGKILL its group, reap it, :func:`release_group`. Returns its status as
    Popen's returncode (0 if something else reaped it)."""
    kill_group(pid)
    try:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): 0, as Popen says
        code = 0
    release_group(pid)
    return code


def terminate(
    proc: subprocess.Popen[Any],
    grace: float = DEFAULT_GRACE,
    *,
    group: bool = True,
) -> int:
    """End ``proc`` and (with ``group``) its whole process group, and reap it.

    The one kill policy of polytask, blocking (:class:`Ending` is the same
    policy for a caller that waits in its own loop): SIGTERM, up to ``grace``
    seconds for a clean exit, then SIGKILL; the leader is reaped before this
    returns and the group is sent SIGKILL once more so that descendants that
    ignored SIGTERM do not outlive it (:func:`release_group`); descendants that
    left the group (a daemon's setsid) are found by their job's mark
    (:func:`end_trees`). Returns the exit status (negative for a signal).
    """
    pgid = proc.pid
    if proc.returncode is None:
        ending = Ending(pgid, grace, group=group)
        code = _reap(proc, grace) if grace > 0 else proc.poll()
        if code is None:
            ending.kill()
            code = _reap(proc, None)
        assert code is not None
    if group:
        release_group(pgid)
    else:
        unguard(pgid)
    job = forget_job(pgid)
    if job is not None:  # and those that left the group (setsid, daemons)
        end_trees([job], grace, first_pid=pgid)
    return proc.returncode if proc.returncode is not None else -signal.SIGKILL


def start_in_group(
    argv: Sequence[str],
    *,
    guarded: bool = True,
    job: str | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` in a new process group, marked as a job of ours (:func:`tree_env`),
    and (by default) registered with the guardian. :func:`terminate` ends it and,
    through the mark, every descendant that left the group."""
    popen_kwargs.setdefault("process_group", 0)
    job = job or new_job()
    popen_kwargs["env"] = tree_env(job, popen_kwargs.get("env"))
    proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), **popen_kwargs)
    _pid_jobs[proc.pid] = job
    if guarded:
        guard(proc.pid)
    return proc


def remember_job(pid: int, job: str) -> None:
    """Record that process ``pid`` (started elsewhere, e.g. forked) carries ``job``'s mark."""
    _pid_jobs[pid] = job


def forget_job(pid: int) -> str | None:
    """The job :func:`start_in_group` marked process ``pid`` with (once; then forgotten)."""
    return _pid_jobs.pop(pid, None)


_pid_jobs: dict[int, str] = {}


# --------------------------------------------------------------------------- guardian


#: Registrations held back (the guardian not reading) past which the owner says so once.
_BACKLOG_WARN = 1 << 16
#: Held back past this (and past twice what the last rewrite left), the backlog is
#: rewritten as what it adds up to (see :meth:`_Guardian._compact`).
_COMPACT_MIN = 1 << 16


class _Guardian:
    """The parent's end of the guardian: a pipe, and the set of groups it watches.

    Sends never block: the write end is non-blocking, and what the pipe does not
    take (a guardian that is SIGSTOPped, or being debugged, reads nothing, and its
    64 KiB pipe fills up) waits here, in order, and a thread (:meth:`_feed`) sends
    it as soon as there is room: not at the next send, which may never come before
    the owner is killed. A blocking write there hung every spawn, worker start and
    command, with this lock held (and the supervisor's, around ``guard_pid``).

    The owner also keeps what it wrote into the pipe, as the guardian itself
    does (``_sent``, a :class:`~polytask._os.guardian.Registry`), so that

    - a replacement (the guardian killed from outside) is sent all of it, not
      only what the dead one was not sent: the owner key covers every job that
      kept its environment, not a file, a ``guard_pid`` or an ``env -i`` job;
    - the backlog of a guardian that does not read stays as large as the
      registrations it changes, not as their history (:meth:`_compact`): one
      stopped for a day while jobs come and go holds back a few lines;
    - at exit, a guardian that is stopped (or gone) has its clean-up done here,
      from the list as it is now (:meth:`close`).

    Left open, on purpose: a guardian killed from outside is replaced at the next
    registration (or by the feeding thread, with a backlog), not the moment it
    dies, so an owner SIGKILLed in between, with no registration since, leaves
    what it started running. Watching for that death takes a thread and a pidfd
    in every owner for its whole life (the guardian's pipe gives no signal to a
    writer that does not write); a normal exit is covered (:meth:`close`), and
    nothing else kills a guardian but a user's ``kill`` (the OOM killer scores
    a process by its memory, and the guardian holds next to none).
    """

    def __init__(self) -> None:
        self._new_lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._pid_owner = 0
        self._reset_backlog()

    def _new_lock(self) -> None:
        # Reentrant, and with its holder known, for the finalizers the garbage
        # collector runs inside a locked section, in the holder's thread (a
        # channel's or a segment's, which unregister their files): their lines
        # wait in ``_later`` for the section to send them (see :meth:`send`).
        self._lock = threading.RLock()
        self._holder: int | None = None
        self._later: list[bytes] = []

    @contextlib.contextmanager
    def _held(self, send_later: bool = True) -> Iterator[None]:
        """The lock, with its holder noted; on the way out, the lines finalizers left
        in the section are sent (``send_later``), before another thread's can be. A
        section that raises leaves them in ``_later``: the next send sends them first."""
        with self._lock:
            self._holder = threading.get_ident()
            try:
                yield
                while send_later and self._later:
                    fd = self._start()
                    self._pending += b"".join(self._take_later())
                    self._push(fd)
            finally:
                self._holder = None

    def _take_later(self) -> list[bytes]:
        later, self._later = self._later, []
        return later

    def _reset_backlog(self) -> None:
        #: Bytes not yet written: whole lines, but the first when ``_sent.partial``
        #: (written already) starts it.
        self._pending = bytearray()
        #: What the pipe was written, applied as the guardian applies it.
        self._sent = _guardian_mod.Registry()
        self._compact_at = _COMPACT_MIN
        self._warned = False
        self._feeding = False

    def _start(self) -> int:
        # Called with self._lock held.
        if self._fd is not None and self._pid_owner == os.getpid():
            return self._fd
        if self._pid_owner != os.getpid():  # a forked child: the backlog was its parent's
            self._reset_backlog()
        # It carries no job marker: an outer owner's clean-up must not end it
        # before it has done its own.
        env = {k: v for k, v in os.environ.items() if not k.startswith(_TREE_PREFIX)}
        argv, env, _ = python_command(
            _guardian_mod.PROCESS_NAME,
            ["-S", "-m", "polytask._os.guardian", str(DEFAULT_GRACE)],
            env,
        )
        self._proc = subprocess.Popen(
            argv,
            executable=sys.executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # terminal signals must not reach it
            close_fds=True,
        )
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        self._pid_owner = os.getpid()
        # Every job this process starts carries its owner key (see tree_env): one
        # registration covers them all, however they detach. The pipe is empty:
        # this write cannot block.
        key = b"e" + os.fsencode(owner_key()) + b"=\n"
        os.write(self._fd, key)
        self._sent = _guardian_mod.Registry()
        self._sent.feed(key)
        os.set_blocking(self._fd, False)
        return self._fd

    @property
    def pid(self) -> int:
        """The guardian's pid (0: none started by this process)."""
        proc = self._proc
        return proc.pid if proc is not None and self._pid_owner == os.getpid() else 0

    def _flush(self, fd: int) -> None:
        """Write as much of the backlog as the pipe takes now (BrokenPipeError: it is gone)."""
        pending = self._pending
        while pending:
            try:
                n = os.write(fd, pending)
            except BlockingIOError:
                return
            # Past PIPE_BUF a write may stop mid-line: _sent keeps that line's start.
            if n == len(pending):
                self._sent.feed(bytes(pending))
                pending.clear()
            else:
                self._sent.feed(bytes(pending[:n]))
                del pending[:n]
        self._warned = False

    def _all(self) -> _guardian_mod.Registry:
        """Everything registered: what was written and what waits (with the lock held;
        once only: it takes the backlog, and ``_sent`` is then not the pipe's any more)."""
        state = self._sent
        state.feed(bytes(self._pending))
        for line in self._take_later():
            state.feed(line)
        self._pending = bytearray()
        return state

    def _restart(self) -> None:
        # Called with self._lock held, the guardian killed from outside: start another
        # and send it all that is registered (what the dead one had read is lost
        # with it; the line it got part of is sent whole).
        old, self._proc, self._fd = self._proc, None, None
        if old is not None and old.stdin is not None:
            try:
                old.stdin.close()
            except OSError:
                pass
        # The backlog first: should the start fail, the next send starts one with it.
        self._pending = bytearray(self._all().lines())
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._pending))
        self._flush(self._start())

    def _compact(self) -> None:
        """Rewrite the backlog as what it adds up to after what the pipe was written:
        one line per registration it changes (a group started and released while the
        guardian was stopped: none), so that it grows with what is registered, not
        with how many registrations came and went. The rest of a line the pipe took
        part of stays first, as it is."""
        pending = self._pending
        head = pending.find(b"\n") + 1 if self._sent.partial else 0
        first = self._sent.partial + bytes(pending[: head - 1]) if head else b""
        pending[head:] = self._sent.net(bytes(pending[head:]), first)
        self._compact_at = max(_COMPACT_MIN, 2 * len(pending))

    def _note_backlog(self) -> None:
        if self._warned or len(self._pending) < _BACKLOG_WARN:
            return
        self._warned = True
        pid = self.pid
        state = (pid_state(pid) or b"?").decode()
        _say(
            f"the guardian (pid {pid}, state {state}; T: stopped) does not read its pipe; "
            f"{len(self._pending) >> 10} KiB of registrations wait in memory for it"
        )

    def send(self, line: bytes) -> None:
        if self._holder == threading.get_ident():
            # A finalizer the collector ran inside a locked section of this thread:
            # the section's state is half-changed (a line half-parsed, the backlog
            # half-written), so the line waits for the section to send it. Waiting
            # for the lock here hung the interpreter (a channel collected in a send).
            self._later.append(line)
            return
        # What _held() does, without a context manager's calls: this runs twice per
        # program started (guard, unguard).
        with self._lock:
            self._holder = threading.get_ident()
            try:
                fd = self._start()  # first: a forked child's start drops its parent's backlog
                if self._later:
                    # Left by a section that raised (Ctrl-C in it): they came before this
                    # line and go before it. After it, a "-" of a path then followed its
                    # "+" again, and the guardian forgot what was registered anew.
                    self._pending += b"".join(self._take_later())
                self._pending += line
                self._push(fd)
                while self._later:
                    fd = self._start()
                    self._pending += b"".join(self._take_later())
                    self._push(fd)
            finally:
                self._holder = None

    def send_group(self, add: bool, pgid: int) -> None:
        """:meth:`send` of ``+PGID`` (``add``) or ``-PGID``: with nothing waiting, one
        write and the registry's set updated in place, not the backlog's round
        (twice per program a loop starts; up to a seventh of its CPU there)."""
        line = b"+%d\n" % pgid if add else b"-%d\n" % pgid
        if self._holder != threading.get_ident() and 1 < pgid <= _guardian_mod.PID_MAX:
            with self._lock:
                fd = self._fd
                if (
                    fd is not None
                    and not self._pending
                    and not self._later
                    and not self._sent.partial
                    and self._pid_owner == os.getpid()
                ):
                    try:
                        # Under PIPE_BUF: all of it or nothing (EAGAIN, EPIPE: send's way).
                        os.write(fd, line)
                    except OSError:
                        pass
                    else:
                        groups = self._sent.groups
                        if add:
                            groups.add(pgid)
                        else:
                            groups.discard(pgid)
                        self._warned = False
                        return
        self.send(line)

    def _push(self, fd: int) -> None:
        # Called in _held(): send the backlog, or as much of it as the pipe takes.
        try:
            self._flush(fd)
        except BrokenPipeError:  # the guardian was killed from outside: start another
            self._restart()
        if self._pending:
            self._note_backlog()
            if len(self._pending) >= self._compact_at:
                self._compact()
            self._start_feeding()

    def _start_feeding(self) -> None:
        # Called with self._lock held and a backlog.
        if self._feeding:
            return
        try:
            threading.Thread(target=self._feed, name="polytask-guardian-feed", daemon=True).start()
        except RuntimeError:  # interpreter shutdown: close() sends what it can
            return
        self._feeding = True

    def _feed(self) -> None:
        """Send the backlog as the pipe makes room, until it is all sent."""
        try:
            self._feed_loop()
        except Exception as exc:  # pragma: no cover - a guardian that cannot restart
            _say(f"error sending registrations to the guardian: {exc!r}")
            with self._held(send_later=False):
                self._feeding = False

    def _feed_loop(self) -> None:
        poller = select.poll()
        while True:
            with self._held():
                fd = self._fd
                if fd is None or not self._pending or self._pid_owner != os.getpid():
                    self._feeding = False
                    return
                try:
                    self._flush(fd)
                except BrokenPipeError:
                    self._restart()
                    fd = self._fd
                if not self._pending or fd is None:
                    self._feeding = False
                    return
            # Unlocked, so a close or a restart may replace the pipe meanwhile: a wake-up
            # then is spurious, and the timeout bounds one that never comes.
            poller.register(fd, select.POLLOUT)
            poller.poll(1000)
            poller.unregister(fd)

    def close(self, timeout: float = 5.0) -> None:
        """Send the backlog (for up to ``timeout`` seconds), close the pipe and reap
        the guardian (up to ``timeout`` more: it cleans up what is still registered).

        A guardian that cannot do its clean-up (stopped: SIGSTOP, a debugger; or
        gone, killed and not replaced) is ended, and the clean-up done here, from
        the registrations as they are now: this process is about to go, and what
        it started must not outlive it.
        """
        with self._held(send_later=False):  # _all() takes them: there is no pipe after
            proc, fd = self._proc, self._fd
            owner = self._pid_owner == os.getpid()
            mine = proc is not None and owner
            sent = True
            if mine and fd is not None:
                assert proc is not None
                deadline = time.monotonic() + timeout
                sent = not _stopped(proc.pid) and self._drain(fd, deadline)
                # The collector may run finalizers in the drain (the exit's collections):
                # their lines wait in _later (see send) and must reach the guardian too,
                # or its clean-up undoes their "-". With _fd None, _forget sends nothing
                # more (there is no pipe left to forget in), so one more pass has them all.
                self._fd = None
                if sent and self._later:
                    self._pending += b"".join(self._take_later())
                    sent = self._drain(fd, deadline)
            left = self._all()
            self._proc, self._fd = None, None
            self._reset_backlog()
        if proc is None:
            if owner:  # killed, and its replacement did not start (_restart raised)
                _guardian_mod.clean_up(left, DEFAULT_GRACE)
            return
        if not mine:
            return
        assert proc.stdin is not None
        if not sent:
            # An end-of-file would not be read (stopped), or would have it clean up
            # from an old list and end groups whose "-" never reached it (their
            # numbers may be reused by now).
            _say(
                f"the guardian (pid {proc.pid}, state {(pid_state(proc.pid) or b'?').decode()}) "
                "does not read its pipe; ended it and did its clean-up here"
            )
            proc.kill()
        proc.stdin.close()
        _reap(proc, timeout)
        if proc.returncode is None:  # stopped since, or stuck in its clean-up
            proc.kill()
            proc.wait()
        if proc.returncode != 0:  # did not finish its clean-up (or none: killed, stopped)
            _guardian_mod.clean_up(left, DEFAULT_GRACE)

    def _drain(self, fd: int, deadline: float) -> bool:
        """Flush the whole backlog by ``deadline``, waiting for room; True if it all went
        (False: not in time, or the guardian is gone: nobody to send it)."""
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while True:
            try:
                self._flush(fd)
            except BrokenPipeError:
                return False
            left = deadline - time.monotonic()
            if not self._pending:
                return True
            if left <= 0:
                return False
            poller.poll(max(1, int(left * 1000)))

    def forget_after_fork(self) -> None:
        # A forked child must not keep the parent's write end open: the guardian
        # would then never see EOF when the parent dies.
        if self._proc is not None and self._proc.stdin is not None:
            # Pointed at /dev/null rather than closed: the file object still owns the
            # number and closes it when dropped just below (closed under it, it said
            # "Exception ignored ... Bad file descriptor" on 3.13 in every fork child).
            try:
                null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.dup2(null, self._proc.stdin.fileno(), inheritable=False)
                finally:
                    os.close(null)
            except OSError:
                pass
        self._proc, self._fd = None, None
        self._new_lock()
        self._reset_backlog()


def _say(text: str) -> None:
    try:
        print(f"polytask: {text}", file=sys.stderr)
    except BaseException:  # pragma: no cover - stderr closed at exit
        pass


_guardian = _Guardian()


def ensure_guardian() -> None:
    """Start this process's guardian now, if it has none, with the owner's marker
    registered: before the first child, not after it. (Started lazily by the first
    registration, the guardian came up only after that child, and an owner killed in
    between, even by the child itself, left a guardian with nothing registered.)"""
    with _guardian._held():
        _guardian._start()


def guard(pgid: int) -> None:
    """End process group ``pgid`` if this process dies before :func:`unguard`."""
    _guardian.send_group(True, pgid)


def unguard(pgid: int) -> None:
    """Stop watching ``pgid`` (its leader was reaped)."""
    if _guardian._fd is not None:
        _guardian.send_group(False, pgid)


def _register(op: bytes, what: str, path: str) -> None:
    # A newline would end the line early; a NUL no path holds (the guardian skips it).
    if "\n" in path or "\0" in path:
        raise ValueError(f"{what} {path!r} contains a newline or a NUL")
    _guardian.send(op + os.fsencode(path) + b"\n")


def _forget(op: bytes, path: str) -> None:
    if _guardian._fd is not None:  # no guardian: nothing was registered
        _guardian.send(op + os.fsencode(path) + b"\n")


def guard_path(path: str) -> None:
    """Unlink ``path`` (a /dev/shm segment, a FIFO) if this process dies before :func:`unguard_path`."""
    _register(b"p", "path", path)


def unguard_path(path: str) -> None:
    """Stop watching ``path`` (it was removed, or handed to another owner)."""
    _forget(b"q", path)


def guard_spill(path: str) -> None:
    """Unlink a channel's spill segment if this process (its writer) dies before
    :func:`unguard_spill`, unless it holds an item then: an item whose ``put``
    returned is its reader's (see :func:`polytask._os.guardian.release_spill`)."""
    _register(b"s", "path", path)


def unguard_spill(path: str) -> None:
    """Stop watching the spill ``path`` (removed, or left to its channel)."""
    _forget(b"t", path)


def guard_prefix(prefix: str) -> None:
    """Unlink every file whose path starts with ``prefix`` if this process dies first.

    For families of files made on the fly (a channel's spill segments
    ``/dev/shm/polytask-ch-1234-*``): one registration covers names not yet made.
    """
    _register(b"P", "prefix", prefix)


def unguard_prefix(prefix: str) -> None:
    """Stop watching ``prefix``."""
    _forget(b"Q", prefix)


def guard_env(marker: str) -> None:
    """End every process whose environment holds ``marker`` (``"KEY=VALUE"``) if this
    process dies before :func:`unguard_env`.

    Set the variable in the environment of what you start (and so of what that
    starts in turn, later, in any process group); the guardian finds them all
    through ``/proc/<pid>/environ`` when the owner dies.
    """
    if "\n" in marker or "\0" in marker or "=" not in marker:
        raise ValueError(f"marker {marker!r} must be KEY=VALUE on one line")
    _guardian.send(b"e" + os.fsencode(marker) + b"\n")


def unguard_env(marker: str) -> None:
    """Stop watching ``marker`` (what carried it was shut down)."""
    if _guardian._fd is not None:
        _guardian.send(b"f" + os.fsencode(marker) + b"\n")


def _proc_start(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def guard_pid(pid: int) -> bytes | None:
    """End process ``pid`` (not a group: one process that another program started)
    if this process dies first. Returns the token for :func:`unguard_pid`, or None
    if the process is already gone. Its start time is recorded too, so that a
    reused pid is never killed.
    """
    start = _proc_start(pid)
    if start is None:
        return None
    token = b"%d %s" % (pid, start)
    _guardian.send(b"k" + token + b"\n")
    return token


def unguard_pid(token: bytes) -> None:
    """Stop watching the process :func:`guard_pid` registered."""
    if _guardian._fd is not None:
        _guardian.send(b"l" + token + b"\n")


# --------------------------------------------------------------------------- shutdown

_shutdown_hooks: list[Callable[[], None]] = []
_shutdown_lock = threading.Lock()


def at_shutdown(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` at interpreter exit, before the guardian is closed (last added runs first)."""
    with _shutdown_lock:
        _shutdown_hooks.append(fn)
    return fn


def run_shutdown_hooks() -> None:
    """Run the :func:`at_shutdown` hooks, then close the guardian (an atexit handler)."""
    while True:
        with _shutdown_lock:
            if not _shutdown_hooks:
                break
            fn = _shutdown_hooks.pop()
        try:
            fn()
        except Exception as exc:  # pragma: no cover - shutdown must go on
            print(f"polytask: error during shutdown: {exc!r}", file=sys.stderr)
    _guardian.close()


def _after_fork_in_child() -> None:
    global _owner
    _owner = None  # a new owner: its jobs get a key of their own
    _guardian.forget_after_fork()
    _shutdown_hooks.clear()


atexit.register(run_shutdown_hooks)
os.register_at_fork(after_in_child=_after_fork_in_child)
