"""``polytask parallel --backend dask|ray [--address ADDR]``: the jobs run on a cluster's workers.

GNU parallel reaches other machines with ``--sshlogin``; polytask uses the
cluster backends it already has. :class:`ClusterLoop` stands in for the local
:class:`~polytask._os.childloop.ProcessLoop` (the same methods the runner
calls), so a job's output, ``--tag``, ``-k``, the joblog, ``--results``,
retries and ``--halt`` go through the very paths of local jobs::

    _Runner.start(job) ── argv, stdin block, PARALLEL_* ──> ClusterLoop.spawn
        └─ backend.submit(run_command, ...)  (a Dask or Ray task, one per job)
                                    worker: run_command ── start_in_group(argv) ── sh -c ...
                                      poll its pipes; at --timeout: the kill policy
                                      (--termseq) on its process group; the worker lives on
    ClusterLoop.wait <── wake pipe <── task done (returncode, stdout, stderr, timed out, times)
        └─ finished "children" ──> _Runner.finished: retries, joblog, sink, halt

A job's command runs in a new process group registered with the guardian of
the process that started it, so a worker that dies takes the command with it;
the job then fails with a message (exit value 255, as GNU parallel reports a
lost ssh connection) or is run again under ``--retries``. On Dask that process
is the worker itself, and a cancel (``--halt now``, Ctrl-C, the end of the
run) reaches the running job through its task's state on the worker (Dask
cannot interrupt a running task). On Ray it is a child of the worker (the
backend's ``killable`` tasks): Ray SIGKILLs a worker's direct children with
it, a guardian too, so the command must not be one; a cancel ends the child.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._core.errors import Cancelled, WorkerCrashed
from .._os.ending import Ending
from .._os.proc import start_in_group, terminate, usable_cpus
from ..backends import make_backend

#: How the jobs' messages name the command (as cli/_parallel.py's PROG).
PROG = "polytask parallel"


class ClusterUnavailable(Exception):
    """The engine is not installed or its cluster cannot be used: one line for
    stderr, exit status 255 (``polytask parallel`` turns it into its fatal error)."""


__all__ = ["ClusterLoop", "check_options", "run_command"]

#: The exit value of a job whose worker died or that could not run on the cluster:
#: what GNU parallel shows for a job whose ssh connection was lost.
LOST = 255
#: How often the worker's wait looks at the deadline and at its task's state (s).
_POLL = 0.05
#: After the command's leader exited, how long descendants may keep its pipes open.
_DRAIN = 1.0
#: The signals `polytask parallel` handles (Ctrl-C, SIGTERM, SIGHUP: end the jobs, exit 255).
_OUR_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds to wait for a first worker of a Dask scheduler given by --address.
WORKER_WAIT = 30.0
#: Most threads a LocalCluster worker gets: jobs wait on programs, threads are cheap.
_MAX_THREADS = 256

#: (returncode, stdout, stderr, timed out, start (epoch s), runtime (s), start error)
Outcome = tuple[int, bytes, bytes, bool, float, float, "OSError | None"]


def check_options(opts: argparse.Namespace) -> str | None:
    """What is wrong with ``--backend``/``--address`` and the other options, or None."""
    if opts.backend is None:
        if opts.address is not None:
            return "--address goes with --backend dask or --backend ray"
        return None
    if opts.ungroup:
        return (
            f"-u/--ungroup does not go with --backend {opts.backend}: a job's output comes "
            "back from its worker when the job ends; use --line-buffer or the default --group"
        )
    for given, name in ((opts.cat, "--cat"), (getattr(opts, "fifo", False), "--fifo")):
        if given:
            return (
                f"{name} does not go with --backend {opts.backend}: its file is on this "
                f"machine, not on the worker; without {name} each job gets its block on stdin"
            )
    for given, name in (
        (getattr(opts, "load", None) is not None, "--load"),
        (getattr(opts, "memfree", None) is not None, "--memfree"),
    ):
        if given:
            return (
                f"{name} does not go with --backend {opts.backend}: it measures this machine, "
                "and the jobs run on the cluster's workers (their own scheduler places them)"
            )
    for given, name in (
        (getattr(opts, "tee", False), "--tee"),
        (getattr(opts, "roundrobin", False), "--roundrobin"),
    ):
        if given:
            return (
                f"{name} does not go with --backend {opts.backend}: it streams stdin into "
                "jobs while they run, and a worker's job gets its input whole when it starts"
            )
    return None


# --------------------------------------------------------------------------- on the worker


def _cancel_check() -> Callable[[], bool] | None:
    """On a Dask worker: a function telling whether this task was cancelled (Dask tells a
    running task nothing, but its worker's state does). None elsewhere: a Ray cancel
    interrupts this thread or ends the worker (and, through its guardian, the command)."""
    if "distributed" not in sys.modules:  # not a Dask worker: do not import it
        return None
    import distributed

    try:
        worker = distributed.get_worker()
    except ValueError:
        return None
    key = getattr(distributed.worker, "thread_state", None)
    key = getattr(key, "key", None)
    if key is None:
        return None

    def gone() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state not in ("executing", "long-running")

    return gone


def run_command(
    argv: Sequence[str],
    stdin: bytes | None,
    env: dict[str, str],
    cwd: str | None,
    timeout: float | None,
    grace: float,
    steps: Sequence[tuple[int, float]] | None,
) -> Outcome:
    """Run one job's command on this worker and return what it did.

    The command runs in its own process group, marked and guarded as every
    program polytask starts (:func:`~polytask._os.proc.start_in_group`), with
    this worker's environment plus ``env`` (PARALLEL_SEQ ...), in ``cwd`` when
    that folder exists here (else the worker's own), ``stdin`` on its stdin.
    At ``timeout`` seconds, or when its task is cancelled, its group is ended
    (``steps``: --termseq, else SIGTERM and ``grace``, then SIGKILL); what it
    wrote until then is returned. A program that cannot start comes back as
    the OSError, for the caller to report as a local start failure.
    """

    gone = _cancel_check()
    full_env = dict(os.environ)
    full_env.update(env)
    if cwd is not None and not os.path.isdir(cwd):
        cwd = None
    started_wall, t0 = time.time(), time.monotonic()
    try:
        proc = start_in_group(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
        )
    except OSError as exc:
        return (126, b"", b"", False, started_wall, 0.0, exc)
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    outs: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    poller = select.poll()
    for fd in outs:
        poller.register(fd, select.POLLIN)
    open_fds = set(outs)
    in_fd, view = -1, memoryview(stdin or b"")
    if stdin and proc.stdin is not None:
        in_fd = proc.stdin.fileno()
        os.set_blocking(in_fd, False)
        poller.register(in_fd, select.POLLOUT)
    deadline = None if timeout is None else t0 + timeout
    ending: Ending | None = None
    timed_out = False
    exited_at: float | None = None
    try:
        while open_fds or proc.poll() is None:
            now = time.monotonic()
            if ending is None:
                expired = deadline is not None and now >= deadline
                if expired or (gone is not None and gone()):
                    timed_out = expired
                    ending = Ending(proc.pid, grace, steps=steps)
            else:
                ending.step(now)
            if open_fds and proc.poll() is not None:  # descendants still hold its pipes
                exited_at = now if exited_at is None else exited_at
                if now - exited_at > _DRAIN:
                    break
            wait = _POLL
            if ending is not None and not ending.killed:  # wake for its next signal
                wait = max(0.0, min(_POLL, ending.kill_at - now))
            for fd, _ev in poller.poll(math.ceil(wait * 1000)):
                if fd == in_fd:
                    try:
                        view = view[os.write(in_fd, view[: 1 << 16]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # it stopped reading (EPIPE): the rest is dropped
                        view = view[:0]
                    if not view:
                        poller.unregister(in_fd)
                        assert proc.stdin is not None
                        proc.stdin.close()
                        in_fd = -1
                    continue
                data = os.read(fd, 1 << 16)
                if data:
                    outs[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        # The one kill policy: the leader reaped, what stayed in its group killed,
        # descendants that left the group found by their mark.
        code = terminate(proc, grace)
        for fd in open_fds:  # what strays wrote before they were ended
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, 1 << 16):
                    outs[fd].append(data)
            except OSError:
                pass
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:  # the unwritten rest of stdin: nobody reads it
                    pass
    out, err = b"".join(outs[out_fd]), b"".join(outs[err_fd])
    return (code, out, err, timed_out, started_wall, time.monotonic() - t0, None)


# --------------------------------------------------------------------------- here


class ClusterChild:
    """A job running on the cluster, as the runner sees a local :class:`Child`."""

    __slots__ = (
        "argv",
        "deadline",
        "duration",
        "exited",
        "kill_at",
        "killed",
        "nbytes",
        "on_output",
        "out",
        "pid",
        "returncode",
        "started",
        "started_wall",
        "task",
        "timed_out",
        "timeout",
        "token",
    )

    def __init__(self, argv: Sequence[str], token: Any, on_output: Any) -> None:
        self.argv = argv
        self.token = token
        self.on_output = on_output
        self.pid: int | None = None  # it runs on a worker: no pid of ours (--events: null)
        self.task: Any = None
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.deadline: float | None = None
        self.timeout: float | None = None  # --timeout, kept by the worker (run_command)
        self.kill_at: float | None = None  # set once it is being ended
        self.killed = False
        self.exited = False
        self.timed_out = False
        self.returncode = 0
        self.duration = 0.0
        self.out = (b"", b"", b"")
        self.nbytes = [0, 0, 0]

    def output(self, which: int) -> bytes:
        return self.out[which]


class ClusterLoop:
    """:class:`~polytask._os.childloop.ProcessLoop`'s part that ``polytask parallel``
    uses, with each program run by :func:`run_command` as a task of a Dask or Ray
    backend. Not thread-safe (one thread drives it), except the tasks' callbacks,
    which only queue the task and wake :meth:`wait` through a pipe."""

    def __init__(
        self,
        engine: str,
        address: str | None,
        *,
        jobs: int,
        grace: float,
        termseq: Sequence[tuple[int, float]] | None,
    ) -> None:
        self.engine = engine
        self.grace = grace
        self.termseq = termseq
        options: dict[str, Any] = {}
        if engine == "ray":
            # Ray ends a cancelled task's worker (and, when the run's driver goes, every
            # worker of the run) with SIGKILL, and its direct children with it: the
            # guardian of a worker too, which would leave the command's descendants
            # behind. In a child of the worker (a process start per job) the command's
            # guardian is the child's, which Ray does not reach; a cancel ends the child.
            options["killable"] = True
        if address is not None:
            options["address"] = address
        elif engine == "dask":
            # A LocalCluster for this run: a few processes, -j threads in all.
            workers = max(1, min(jobs, usable_cpus()))
            options["max_workers"] = workers
            options["threads_per_worker"] = max(1, min(-(-jobs // workers), _MAX_THREADS))
        else:
            options["max_workers"] = max(1, min(jobs, _MAX_THREADS))
            options["log_to_driver"] = False
        # Ray prints its news (a worker that died) on sys.stdout, which here carries
        # only the jobs' output: they go to stderr for the run.
        self._stdout = sys.stdout
        if engine == "ray":
            sys.stdout = sys.stderr
        # Ray's core installs its own SIGTERM handler (it logs and dies): ours, which
        # ends the jobs first and exits 255, are put back once the engine is up.
        handlers = {sig: signal.getsignal(sig) for sig in _OUR_SIGNALS}
        try:
            self._backend: Any = make_backend(engine, **options)
        except ImportError as exc:  # BackendUnavailable: which extra to install
            sys.stdout = self._stdout
            raise ClusterUnavailable(f"--backend {engine}: {exc}") from None
        except Exception as exc:
            sys.stdout = self._stdout
            where = f"at {address!r}" if address is not None else "(a local one)"
            raise ClusterUnavailable(
                f"--backend {engine}: cannot use the {engine} cluster {where}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        for sig, handler in handlers.items():
            if handler is not None:  # set again even if Python thinks it is still set
                try:
                    signal.signal(sig, handler)
                except ValueError:  # not the main thread: no handlers of ours either
                    pass
        if engine == "dask" and address is not None:
            self._wait_for_a_worker(address)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._watched: set[int] = set()
        self._children: set[ClusterChild] = set()
        self._done: deque[ClusterChild] = deque()  # appended by the tasks' callbacks
        self._failed: list[tuple[Any, Exception]] = []
        self._cwd: str | None
        try:
            self._cwd = os.getcwd()
        except OSError:
            self._cwd = None

    def _wait_for_a_worker(self, address: str) -> None:
        """A Dask scheduler with no worker would hold every job forever: wait a while
        for one (a cluster still starting), then give up with exit status 255."""

        try:
            self._backend.client.wait_for_workers(1, timeout=WORKER_WAIT)
        except Exception:
            self._backend.shutdown(wait=False, cancel=True)
            sys.stdout = self._stdout
            raise ClusterUnavailable(
                f"--backend dask: the scheduler at {address!r} has no worker (waited "
                f"{WORKER_WAIT:g} s): start workers with: dask worker {address}"
            ) from None

    @property
    def running(self) -> int:
        return len(self._children)

    def children(self) -> list[ClusterChild]:
        return list(self._children)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        token: Any = None,
        timeout: float | None = None,
        capture: bool = True,
        on_output: Any = None,
        input: Any = None,
        extra_env: Sequence[bytes] = (),
    ) -> ClusterChild:
        """Submit ``argv`` as a task; its outcome comes back through :meth:`wait`."""
        if not argv:
            raise ValueError("no program to run: the argument list is empty")
        env = {}
        pid = os.environ.get("PARALLEL_PID")
        if pid is not None:
            env["PARALLEL_PID"] = pid
        for entry in extra_env:
            name, _, value = os.fsdecode(entry).partition("=")
            env[name] = value
        child = ClusterChild(argv, token, on_output)
        child.timeout = timeout
        steps = list(self.termseq) if self.termseq else None
        child.task = self._backend.submit(
            run_command,
            (list(argv), _block_bytes(input), env, self._cwd, timeout, self.grace, steps),
            {},
            name=f"parallel-{env.get('PARALLEL_SEQ', '')}",
            timeout=None,  # run_command keeps the deadline, so that the worker lives on
        )
        self._children.add(child)
        child.task.add_done_callback(lambda _t, c=child: self._on_done(c))
        return child

    def spawn_soon(
        self,
        argv: Sequence[str],
        *,
        token: Any = None,
        timeout: float | None = None,
        on_output: Any = None,
        extra_env: Sequence[bytes] = (),
    ) -> None:
        try:
            self.spawn(argv, token=token, timeout=timeout, on_output=on_output, extra_env=extra_env)
        except (OSError, ValueError) as exc:
            self._failed.append((token, exc))

    def failed_starts(self) -> list[tuple[Any, Exception]]:
        failed, self._failed = self._failed, []
        return failed

    def set_deadline(self, child: ClusterChild, when: float | None) -> None:
        """A deadline kept here (--timeout N%): when it passes the job's task is cancelled."""
        child.deadline = when

    def watch(self, fd: int) -> None:
        if fd not in self._watched:
            self._watched.add(fd)
            self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._watched.discard(fd)
            self._poll.unregister(fd)

    def terminate(self, child: ClusterChild) -> None:
        """End the job: cancel its task (Dask: the worker sees it and ends the command;
        Ray: its worker is ended, and the command with it)."""
        if child.exited or child.killed:
            return
        child.killed = True
        child.kill_at = time.monotonic()
        child.task.cancel()

    def _on_done(self, child: ClusterChild) -> None:
        self._done.append(child)
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (it is woken anyway) or closed (the loop is gone)
            pass

    def _settle(self, child: ClusterChild) -> bool:
        """Fill in the finished job; False if its program could not start."""

        self._children.discard(child)
        child.exited = True
        exc = child.task.exception(timeout=0)
        out = err = b""
        if exc is None:
            code, out, err, timed_out, wall, runtime, start_error = child.task.result(timeout=0)
            if start_error is not None:
                self._failed.append((child.token, start_error))
                return False
            child.returncode = code
            child.timed_out = timed_out or child.timed_out
            child.started_wall, child.duration = wall, runtime
        elif isinstance(exc, Cancelled) and child.killed:
            child.returncode = -signal.SIGTERM
            child.duration = time.monotonic() - child.started
        else:
            what = (
                f"the {self.engine} worker running it died"
                if isinstance(exc, WorkerCrashed)
                else f"it could not run on the {self.engine} cluster"
            )
            text = f"{PROG}: {self._command(child)}: {what} ({type(exc).__name__}: {exc})\n"
            err = text.encode(errors="surrogateescape")
            child.returncode = LOST
            child.duration = time.monotonic() - child.started
        child.task = None
        child.nbytes = [0, len(out), len(err)]
        if child.on_output is not None:  # --line-buffer: whole lines, all at the end
            for kind, data in ((1, out), (2, err)):
                if data:
                    child.on_output(child, kind, data)
        else:
            child.out = (b"", out, err)
        return True

    @staticmethod
    def _command(child: ClusterChild) -> str:
        argv = child.argv
        return argv[-1] if len(argv) == 3 and argv[1] == "-c" else " ".join(argv)

    def wait(self, timeout: float | None = None) -> tuple[list[ClusterChild], list[int]]:
        """Wait until a job finished, a watched fd is readable, or ``timeout`` passed."""
        end = None if timeout is None else time.monotonic() + timeout
        finished: list[ClusterChild] = []
        ready: list[int] = []
        while True:
            while self._done:
                child = self._done.popleft()
                if child in self._children and self._settle(child):
                    finished.append(child)
            now = time.monotonic()
            nxt = end
            for child in self._children:
                if child.deadline is None or child.killed:
                    continue
                if now >= child.deadline:
                    child.timed_out = True
                    self.terminate(child)
                else:
                    nxt = child.deadline if nxt is None else min(nxt, child.deadline)
            if finished or ready or self._failed:
                break
            if end is not None and now >= end:
                break
            if not self._children and not self._watched and end is None:
                break  # nothing could ever happen
            ms = None if nxt is None else max(0, math.ceil((nxt - now) * 1000))
            for fd, _ev in self._poll.poll(ms):
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif fd in self._watched:
                    ready.append(fd)
        return finished, ready

    def close(self) -> None:
        """Cancel the jobs still running and let go of the cluster (a LocalCluster or
        local Ray started for this run is shut down)."""
        try:
            for child in list(self._children):
                self.terminate(child)
        finally:
            try:
                self._backend.shutdown(wait=False, cancel=True)
            finally:
                for fd in list(self._watched):
                    self.unwatch(fd)
                self._children.clear()
                self._done.clear()
                os.close(self._wake_r)
                os.close(self._wake_w)
                sys.stdout = self._stdout


def _block_bytes(block: Any) -> bytes | None:
    """A --pipe block as bytes; a --pipepart FileRange read from its file here."""
    if block is None or isinstance(block, bytes):
        return block
    if isinstance(block, memoryview | bytearray):
        return bytes(block)
    parts = [block.head]
    done = 0
    while done < block.length:
        data = os.pread(block.fd, block.length - done, block.offset + done)
        if not data:
            break
        parts.append(data)
        done += len(data)
    return b"".join(parts)
