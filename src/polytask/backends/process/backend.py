"""The process backend: warm worker processes, a pipe pair each, our own wire protocol.

::

    caller thread                                    worker process (own process group)
    ─────────────                                    ───────────────────────────────────
    spawn(): pickle the call, os.write ──> request pipe ──> run fn(*args)
    result(): *claims* the task's worker and          │
              polls its response pipe + pidfd, <── response pipe <── pickle the result
              reads and completes the task itself      then poll the request pipe
              (no hop through another thread)          briefly before sleeping
              (first polling without sleeping for a short, adaptive budget:
              waking a sleeping process can cost more than a tiny task, see _spin_poll)
    collector thread: polls every busy worker nobody has claimed, and every pidfd:
              results for callbacks / as_completed / asyncio, and worker deaths
    launcher thread:  starts every worker, so PR_SET_PDEATHSIG is tied to a thread
              that lives as long as this process (it fires when the *thread* exits)
    timer thread:     a task's timeout -> SIGTERM its worker's group, grace, SIGKILL
                      (_os.proc.Ending: the one kill policy, driven by this timer)

A worker that dies fails only the task it held (:class:`WorkerCrashed`, with the
exit code or signal); a task past its timeout or cancelled while running has its
worker killed and reaped, and a fresh worker takes the next task.
"""

from __future__ import annotations

import collections
import concurrent.futures
import fcntl
import itertools
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from queue import SimpleQueue
from typing import Any, ClassVar, TypeVar

from ..._core.backend import Backend, expired_at_start
from ..._core.errors import (
    Cancelled,
    PolytaskError,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
)
from ..._core.task import Task, delivering, serving
from ..._core.timeouts import poll_ms
from ..._core.timer import TimerHandle, call_later
from ..._ipc.codec import dumps, dumps_call, loads_exception
from ..._ipc.spin import SPIN_MAX, SpinChoice, after_sleep
from ..._os import proc as _proc
from ..._os.proc import guard, usable_cpus, wait_pid
from . import wire as _wire

__all__ = ["ProcessBackend"]

T = TypeVar("T")

#: Seconds between SIGTERM and SIGKILL when a task's worker is killed.
KILL_GRACE = 0.25
# A task's timeout counts from when its worker is ready. Until the worker says so,
# this much more is allowed for interpreter start-up and the initializer, so a
# worker that hangs while starting still cannot hold a task forever.
_STARTUP_ALLOWANCE = 60.0
# The longest shutdown waits for one task on its way from the queue to a worker
# (see _finish_shutdown).
_HANDOVER_WAIT = 5.0
# How long a worker is waited for after SIGKILL, before it is left to a thread of
# its own (see _abandon, _on_death). It exits at once, unless it is stuck in the
# kernel (an uninterruptible sleep: a hung NFS or FUSE file).
_REAP_WAIT = 5.0
# How long a worker whose response pipe closed may take to exit before SIGKILL.
_EXIT_WAIT = 5.0
# How long shutdown lets the workers exit on their own before SIGKILL.
_STOP_WAIT = 5.0
# os.read allocates the full size before it shrinks the result: 64 KiB keeps a
# small response cheap, and a large one takes a few more reads.
_READ_SIZE = 1 << 16
#: A task whose ``__dict__`` holds this key (True) may be sent to a worker as soon
#: as the worker's previous result is in, before that result is unpickled and its
#: done callbacks run. A task is otherwise sent after them, so that a callback
#: (a group's) can still cancel it while it is pending: mark only tasks that no
#: callback cancels (the Pool's map chunks: only the map's end cancels them, and
#: then only pending ones; one already sent runs to its end either way).
SEND_AHEAD = "_send_ahead"
#: A worker's pipes are grown to this (F_SETPIPE_SZ; 64 KiB by default), so that a
#: chunk of a map (~80 KB for 16,384 small ints) and its results go over in one
#: write: else the collector thread, which sends a worker its next task, waits in
#: write() until that worker has read most of it, and reads nobody's results
#: meanwhile (a map of 10^6-10^7 small items: 10-20 % faster). Pages are taken
#: only as a pipe fills, but Linux counts the size against the user's
#: pipe-user-pages-soft (64 MiB by default; past it, every new pipe of the user is
#: made small): at most _PIPE_BUDGET pipes are grown at once, 16 MiB.
_PIPE_SIZE = 1 << 17
_PIPE_BUDGET = 128
_grown_pipes = 0
_grown_inodes: set[int] = set()
_grown_lock = threading.Lock()
# Spinning (polling without sleeping) before blocking: waking a sleeping process
# costs tens of microseconds on some hosts, far more than a tiny task's round trip,
# so on the hot path both ends poll briefly before they sleep (see _read_for and
# _worker.serve). It pays only while the spinner does not take a core that a
# worker needs: callers spin only while the busy workers leave a core free, one
# caller thread at a time, and workers are told to spin (_wire.F_SPIN) on the
# same condition. One core: never. (The cores this process may run on: a CPU
# quota set by a container's cgroup is not seen.)
_NCPU = usable_cpus()
_BOOT = "from polytask.backends.process.worker import main; main()"
START_METHODS = ("spawn", "fork")
#: What ``ps`` shows for a worker process.
WORKER_NAME = "polytask-worker"


class _Launcher:
    """One long-lived thread that starts every worker process (see module docstring)."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="polytask-launcher", daemon=True
                )
                self._thread.start()
        self._queue.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except BaseException as exc:  # pragma: no cover - _start_worker reports its own
                print(f"polytask: launcher error: {exc!r}", file=sys.stderr)
            # Until the next launch, the last one's bound method would keep its
            # backend alive, and with it the pool's initargs (pipes, shared memory).
            del fn

    def _after_fork(self) -> None:
        self.__init__()  # type: ignore[misc]


_launcher = _Launcher()
os.register_at_fork(after_in_child=_launcher._after_fork)


def _main_objects() -> dict[str, Any]:
    """The functions and classes defined in ``__main__``, by name."""
    main = sys.modules.get("__main__")
    if main is None:
        return {}
    return {
        k: v
        for k, v in list(vars(main).items())
        if isinstance(v, (type, types.FunctionType)) and v.__module__ == "__main__"
    }


class _Inherited(Mapping[str, Any]):
    """The ``__main__`` objects every forked worker of a backend holds, looked up by
    name when a call names one: bound to the same object now, and at every fork
    so far (a worker forked from now on copies the parent as it is)."""

    def __init__(self, backend: ProcessBackend) -> None:
        self._backend = backend

    def __getitem__(self, name: str) -> Any:
        main = sys.modules.get("__main__")
        obj = getattr(main, name, None)
        known = self._backend._forked_main
        if obj is None or (known is not None and known.get(name) is not obj):
            raise KeyError(name)
        return obj

    def __iter__(self) -> Iterator[str]:
        return iter(_main_objects())

    def __len__(self) -> int:
        return len(_main_objects())


class _ForkedProc:
    """The little of Popen's interface the backend needs, for a forked worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class _Worker:
    __slots__ = (
        "booting",
        "born",
        "claim",
        "dead",
        "decoder",
        "eof",
        "kill_exc",
        "ntasks",
        "pid",
        "pidfd",
        "poller",
        "proc",
        "ready",
        "ready_at",
        "reaping",
        "rfd",
        "rlock",
        "send_cost",
        "sending",
        "task",
        "task_id",
        "wfd",
    )

    def __init__(self, proc: subprocess.Popen[bytes] | _ForkedProc, wfd: int, rfd: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = os.pidfd_open(proc.pid)
        self.wfd = wfd
        self.rfd = rfd
        try:
            os.set_blocking(rfd, False)
            self.decoder = _wire.FrameDecoder(_wire.RESPONSE)
            # For the caller that claims this worker to read its own result (one at a time).
            self.poller = select.poll()
            self.poller.register(self.pidfd, select.POLLIN)
            self.poller.register(rfd, select.POLLIN)
        except BaseException:
            # Not made: _configure's _abandon closes the pipes, not this pidfd.
            os.close(self.pidfd)
            raise
        self.task: Task[Any] | None = None
        self.task_id = 0
        self.claim = threading.Lock()  # held by the caller thread reading for its task
        self.rlock = threading.Lock()  # held while reading the response pipe
        self.dead = False
        # Set under the backend's lock before anything may reap it: from then on its
        # pid (and group id) may be reused, and nothing signals it (see _kill).
        self.reaping = False
        self.eof = False
        self.kill_exc: BaseException | None = None
        self.ntasks = 0
        self.ready = False  # it sent S_READY: start-up and initializer are done
        self.born = time.monotonic()  # for the start-up time (see _drains_soon)
        self.ready_at = 0.0
        self.booting = True  # counted in ProcessBackend._booting until READY or death
        self.sending = False  # a frame is being written: do not close its fds yet
        # Seconds the last request's write took (see ProcessBackend._spin_poll).
        self.send_cost = 0.0


class ProcessBackend(Backend):
    """Runs tasks in warm worker processes.

    Args:
        max_workers: at most this many worker processes (None: one per running
            task, as ``multiprocessing.Process`` would start).
        start_method: ``"spawn"`` (default: a fresh interpreter, safe when this
            process has threads) or ``"fork"`` (fast, but only safe without threads).
        keep_idle: idle workers kept warm for the next task (default: CPU count).
        kill_grace: seconds between SIGTERM and SIGKILL when a task is killed.
        initializer, initargs: run once in each worker before its first task.
        max_tasks_per_worker: replace a worker after it ran this many tasks.
    """

    name: ClassVar[str] = "process"
    can_kill_running: ClassVar[bool] = True
    # Imported on first use: a user of tasks alone never loads shared memory.
    primitives: ClassVar[Mapping[str, Any]] = {
        "Lock": "polytask._ipc.sync:ProcessLock",
        "RLock": "polytask._ipc.sync:ProcessRLock",
        "Event": "polytask._ipc.sync:ProcessEvent",
        "Condition": "polytask._ipc.sync:ProcessCondition",
        "Semaphore": "polytask._ipc.sync:ProcessSemaphore",
        "BoundedSemaphore": "polytask._ipc.sync:ProcessBoundedSemaphore",
        "Barrier": "polytask._ipc.sync:ProcessBarrier",
        "Channel": "polytask._ipc.channel:ProcessChannel",
    }

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        keep_idle: int | None = None,
        kill_grace: float = KILL_GRACE,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        max_tasks_per_worker: int | None = None,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        method = start_method or "spawn"
        if method not in START_METHODS:
            raise ValueError(
                f"unknown start_method {start_method!r}; choose one of: {', '.join(START_METHODS)}"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(
                f"max_tasks_per_worker must be >= 1 or None, got {max_tasks_per_worker}"
            )
        self._max = max_workers
        self._method = method
        # Forked workers: the __main__ functions and classes bound at every fork so
        # far (None before the first). What is in it, or bound now before any fork,
        # a worker has in its copy of __main__: it goes by name (see _Inherited).
        self._forked_main: dict[str, Any] | None = None
        self._inherited = _Inherited(self) if method == "fork" else None
        self._keep_idle = (
            keep_idle if keep_idle is not None else (max_workers or os.cpu_count() or 1)
        )
        self._grace = kill_grace
        self._max_tasks = max_tasks_per_worker
        init: bytes | None = None
        # A forked worker runs the very initializer and initargs it inherited, as
        # multiprocessing's fork workers do: a script's initializer then sets the
        # globals the script's tasks read (they go to it by name too), and initargs
        # may hold what only inheritance shares (a multiprocessing.Queue or Lock).
        self._inherited_init: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        if initializer is not None and method == "fork":
            self._inherited_init = (initializer, tuple(initargs))
        elif initializer is not None:
            try:
                init = dumps((initializer, tuple(initargs)))
            except Exception as exc:
                raise SerializationError(
                    f"the initializer {initializer!r} or its initargs cannot be pickled "
                    f"for the worker processes: {type(exc).__name__}: {exc}. Objects "
                    "shared only by inheritance (a multiprocessing.Queue or Lock) need "
                    "start_method='fork'; or pass a Manager proxy or a pt.Channel."
                ) from exc
        self._init_config: dict[str, Any] = {
            "initializer": init,
            "inherited_initializer": self._inherited_init is not None,
        }
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._idle: list[_Worker] = []
        self._pending: collections.deque[Task[Any]] = collections.deque()
        # Worker starts in flight: queued on the launcher or in Popen (_starting), and
        # started but not READY yet (_booting). At most _boot_limit at once, and only
        # while tasks wait for them (see _want_launch).
        self._starting = 0
        self._booting = 0
        self._boot_limit = max_workers if max_workers is not None else _NCPU
        self._started = 0  # worker processes started, ever (statistics)
        # Without max_workers, a task that waits gets a worker of its own only if
        # the busy workers would not reach it sooner than a new one could start
        # (see _drains_soon): a start's seconds (moving average), and the last tasks'
        # (their median, so that one stalled task does not start a worker).
        self._boot_time = 0.1
        self._task_times: collections.deque[float] = collections.deque(maxlen=16)
        self._recheck: TimerHandle | None = None  # the timer that asks again (see _recheck_later)
        self._closed = False
        self._ids = itertools.count(1)
        self._graveyard: list[_Worker] = []
        # shutdown's last sweep of the graveyard is done: a worker left in it then (its
        # frame was going out, see _Worker.sending) is closed by _assign (_late_fds).
        self._swept = False
        # The wake pipe: a byte in it wakes the collector from its poll (see _wake).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Guards the wake pipe's numbers (see _wake); held only for a few steps, never
        # across a write, and nothing else is taken while it is held.
        self._wake_lock = threading.Lock()
        self._wakers = 0  # _wake calls that read the write end and may still write to it
        self._wake_closing = False  # shutdown is done with the pipe: the last waker closes it
        self._collector: threading.Thread | None = None
        self._stopping = False
        # shutdown(cancel=True) was called: a task handed to a worker from now on
        # (taken off the queue before, bound only now, see _assign) is cancelled.
        self._cancel_all = False
        # Workers between the queue and a task (taken off the queue or the idle list,
        # not bound yet: see _assign). Neither list shows their task, and a dead one is
        # in neither: shutdown waits for them here (see _finish_shutdown).
        self._handing: set[_Worker] = set()
        self._broken: BaseException | None = None  # see _break
        self._broken_why = ""
        # The caller's spin budget (see _read_for) and the token one spinner holds.
        self._spin = SPIN_MAX
        self._spinner = threading.Lock()
        # Whether spinning pays at all, on this machine now (both ends follow it).
        self._spin_choice = SpinChoice()

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str,
        timeout: float | None,
    ) -> Task[T]:
        fn_bytes, by_ref, payload = dumps_call(fn, args, kwargs, name, self._inherited)
        task: Task[T] = Task(self, name, timeout)
        task._keep = (args, kwargs)  # until done: the worker unpickles them later
        task_id = next(self._ids)
        kind = _wire.K_RUN_REF if by_ref else _wire.K_RUN
        if self._may_spin(1):  # a guess; _assign corrects it (then at the cost of a copy)
            kind |= _wire.F_SPIN
        task._slot = (task_id, _wire.encode_request(task_id, kind, fn_bytes, payload))
        launch = False
        with self._lock:
            if self._closed:
                if self._broken is not None:
                    raise PolytaskError(
                        f"this process backend {self._broken_why}; create a new one"
                    ) from self._broken
                raise RuntimeError("this process backend is shut down; create a new one")
            if timeout == 0:
                task._slot = None
                return expired_at_start(task)  # never sent: see there
            w = self._idle.pop() if self._idle else None
            if w is None:
                self._pending.append(task)
                launch = self._want_launch()
            else:
                self._handing.add(w)
        if w is not None:
            self._assign(w, task)
        if launch:
            _launcher.submit(self._start_worker)
        return task

    def _may_spin(self, extra: int = 0) -> bool:
        """Whether to spin: it pays lately (see SpinChoice), and the busy workers
        (plus ``extra`` about to be) leave a core for a spinner."""
        return self._spin_choice.spin and self._cores_free(extra)

    def _cores_free(self, extra: int = 0) -> bool:
        return bool(SPIN_MAX) and len(self._workers) - len(self._idle) + extra < _NCPU

    def _want_launch(self) -> bool:
        """Whether to start one more worker now (then counted as starting).

        Called with self._lock held. Only for tasks that wait, each start taking
        one; and at most ``_boot_limit`` starts in flight (until their worker is
        READY): a burst of tiny tasks must not queue a start per task, since the
        first workers up drain the queue long before the later ones would boot.
        """
        if len(self._pending) <= self._starting:
            return False
        if self._starting + self._booting >= self._boot_limit:
            return False  # the next READY (or a death) asks again
        if self._max is not None and len(self._workers) + self._starting >= self._max:
            return False
        if self._max is None and self._drains_soon():
            self._recheck_later()
            return False
        self._starting += 1
        return True

    def _drains_soon(self) -> bool:
        """Whether the ready workers would reach the waiting tasks before a new worker
        could start (called with self._lock held).

        Without max_workers each running task may have a worker of its own, but a
        burst of tiny tasks must not start an interpreter per task: the first
        workers up drain the queue long before the later ones would boot, which
        would then only be retired (a load storm, and an exit that waits for them).
        So: no ready worker, or a task running for longer than a start takes (it
        may wait for the tasks behind it), means start one; otherwise the queue's
        drain time, from the median task time, decides. Unknown yet (fewer than 4
        task times): not now, and :meth:`_recheck_later` asks again once a start's
        time has passed.
        """
        now = time.monotonic()
        busy = 0
        longest = 0.0
        for w in self._workers.values():
            if not w.ready or w.dead:
                continue
            task = w.task
            if task is None:
                continue
            busy += 1
            since = max(task._started_at or now, w.ready_at)
            longest = max(longest, now - since)
        if not busy and not self._idle:
            return False
        boot = self._boot_time
        if longest <= boot and busy + self._starting + self._booting >= _NCPU:
            # Short tasks on every core already: one more interpreter would share the
            # cores, not drain the queue sooner (ProcessPoolExecutor's default is one
            # worker per CPU too). A burst's median task time, still inflated by the
            # warm-up, started a third worker on 2 cores now and then (1 run in 12).
            return True
        times = self._task_times
        if longest > boot or len(times) < 4:
            # Fewer than 4 task times: the median is the first ones, which still pay
            # for warming up (one of 5 ms started a third worker for a burst of
            # 60 us tasks); asked again in a start's time, when there are more.
            return longest <= boot
        typical = sorted(times)[len(times) // 2]
        # Workers already starting will take from the queue about as soon as a new
        # one could: the queue drains among them all (a burst's second worker still
        # booting must not bring a third).
        sharing = busy + self._starting + self._booting
        return len(self._pending) * typical < boot * max(1, sharing)

    def _recheck_later(self) -> None:
        # Called with self._lock held: a declined start is reconsidered after about
        # a start's time, so a task queued behind long ones is never stranded.
        if self._recheck is None and not self._stopping:
            self._recheck = call_later(self._boot_time / 2, self._recheck_launch)

    def _recheck_launch(self) -> None:
        with self._lock:
            self._recheck = None
            launch = bool(self._pending) and not self._stopping and self._want_launch()
        if launch:
            _launcher.submit(self._start_worker)

    def _assign(self, w: _Worker, task: Task[Any], ahead: bool = False) -> bool:
        """Send ``task`` to idle worker ``w`` (which the caller took out of the idle list).

        ``ahead``: sent ahead (see SEND_AHEAD); if ``task`` was cancelled, a next task
        not marked is left pending and False returned: ``w`` is still the caller's.
        """
        dropped = broken = False
        with self._lock:
            # Task and worker are bound under the lock, before the frame goes out, so
            # that cancel(), a timeout and the worker's death all see the pair whole.
            while not task._set_running():
                # Cancelled while it waited: take the next one, or idle.
                if not self._pending:
                    self._handing.discard(w)
                    self._make_idle(w)
                    return True
                if ahead and not self._pending[0].__dict__.get(SEND_AHEAD):
                    return False  # a callback may still cancel it: sent after them
                task = self._pending.popleft()
            task_id, frame = task._slot
            self._handing.discard(w)  # bound, requeued or dropped: under this lock
            if self._broken is not None:
                # _break failed every task it saw; this one was between the queue and
                # w then (w is killed): it fails the same way, never queued again.
                launch = False
                broken = True
            elif w.dead or self._cancel_all:
                if self._cancel_all or self._stopping:
                    # shutdown(cancel=True) came while the task was between the queue
                    # and this worker, where it saw neither: it must not run now. (Or
                    # shutdown gave up waiting for this hand-over, see _finish_shutdown,
                    # and no worker starts any more: queued, it would never finish.)
                    self._make_idle(w)
                    launch = False
                    dropped = True
                else:  # it died while idle, and its death was handled: requeue
                    self._pending.appendleft(task)
                    launch = self._want_launch()
            else:
                task._slot = w
                w.task = task
                w.task_id = task_id
                w.sending = True  # its fds stay open until the frame is out
                launch = False
                # The worker is out of the idle list now, so it counts as busy.
                if bool(frame[8] & _wire.F_SPIN) != self._may_spin():
                    frame = frame[:8] + bytes([frame[8] ^ _wire.F_SPIN]) + frame[9:]
        if launch:
            _launcher.submit(self._start_worker)
        if task._slot is not w:
            if broken:
                task._finish(exc=self._broken_error(task))
            elif dropped:
                _cancel_for_shutdown(task)
            return True
        try:
            # Timed: waking a sleeping worker is paid here, in the sender (see _spin_poll).
            t0 = time.monotonic()
            _write_all(w.wfd, frame)
            w.send_cost = time.monotonic() - t0
        except OSError:
            # The worker died while idle: give the task to another one, unless its
            # death was already handled (then the task has its WorkerCrashed).
            with self._lock:
                w.sending = False
                late = self._late_fds(w)
                if w.task is not task:
                    if late is not None:
                        _close_taken(late)
                    return True
                w.task = None
                task._slot = (task_id, frame)
                # Not back in the queue if cancel() or shutdown(cancel=True) came
                # meanwhile: each saw the task running and killed this worker (hence,
                # likely, the EPIPE); requeued, it would run after the cancel. Nor once
                # shutdown stops the workers: no worker would start for it.
                dropped = task._cancel_requested or self._cancel_all or self._stopping
                if not dropped:
                    self._pending.appendleft(task)
                # If its death is not handled yet, _on_death starts the replacement.
                launch = self._want_launch() if w.dead and not dropped else False
            if late is not None:
                _close_taken(late)
            if dropped:
                if w.kill_exc is not None:
                    task._finish(exc=w.kill_exc)
                else:
                    _cancel_for_shutdown(task)
            if launch:
                _launcher.submit(self._start_worker)
            self._wake()
            return True
        w.sending = False
        if w.dead:  # its death was handled while the frame went out (rare)
            with self._lock:
                late = self._late_fds(w)
            if late is not None:
                _close_taken(late)
        task._mark_started()
        if task._cancel_requested:  # cancel() came between binding and sending
            self._kill(w, Cancelled(f"task {task.name!r} was cancelled"), task)
        if task.timeout is not None:
            # A worker still starting gets its start-up allowance on top; the READY
            # frame re-arms the timer to the task's own timeout (see _complete).
            extra = 0.0 if w.ready else _STARTUP_ALLOWANCE
            task._timer = call_later(task.timeout + extra, lambda: self._on_timeout(w, task))
        # The caller reading its own result is the fast path: the collector thread is
        # woken only for a task something else waits on (see watch()), so a plain
        # spawn().result() costs one write, one poll and one read, and no thread hop.
        # A task with a timeout is watched too: a result nobody reads must not be
        # mistaken for a late task. So is every task while others wait for a worker:
        # a result read only when its caller gets to it would keep this worker from
        # the queue (a burst would then start more workers than it needs).
        if (task._watched or task.timeout is not None or self._pending) and (
            threading.current_thread() is not self._collector
        ):
            self._wake()
        return True

    def _late_fds(self, w: _Worker) -> tuple[int, int, int] | None:
        """The fds of dead ``w``, whose frame just went out (or failed to), if nobody
        else closes them: shutdown's last sweep left them, as the collector would.

        Called with self._lock held, after ``w.sending`` was cleared.
        """
        if not self._swept or w not in self._graveyard:
            return None
        self._graveyard.remove(w)
        return _take_fds(w)

    def _make_idle(self, w: _Worker) -> None:
        # Called with self._lock held.
        if self._closed or len(self._idle) >= self._keep_idle:
            self._retire(w)
        else:
            self._idle.append(w)

    def _retire(self, w: _Worker) -> None:
        # Called with self._lock held, as every taking of a worker's fds is (see
        # _take_fds): one closer per fd, never a second close of a reused number.
        # Closing the request pipe makes the worker exit; the collector reaps it.
        fd, w.wfd = w.wfd, -1
        _close_pipe(fd)

    # ------------------------------------------------------------------ workers
    def _start_worker(self) -> None:
        with self._lock:
            # Dropped if the tasks it was for found a worker meanwhile (a worker that
            # finished its task took them): after a burst of tiny tasks, the starts
            # still queued would only boot interpreters to retire them.
            if self._stopping or len(self._pending) < self._starting:
                self._starting -= 1
                return
        try:
            w = self._spawn_process() if self._method == "spawn" else self._fork_process()
        except BaseException as exc:
            with self._lock:
                self._starting -= 1
                orphans: list[Task[Any]] = []
                if not self._workers and self._starting == 0:
                    orphans = list(self._pending)
                    self._pending.clear()
            for t in orphans:
                t._finish(exc=PolytaskError(f"could not start a worker process: {exc!r}"))
            return
        with self._lock:
            self._starting -= 1
            self._booting += 1
            self._started += 1
            self._workers[w.pid] = w
            task = self._pending.popleft() if self._pending and not self._stopping else None
            if task is None:
                self._make_idle(w)
            else:
                self._handing.add(w)
        try:
            self._ensure_collector()
        except BaseException as exc:
            # No collector: nothing would notice results nobody reads or deaths.
            self._break(exc, "could not start its collector thread")
            if task is not None:
                task._finish(exc=self._broken_error(task))
            return
        if task is not None:
            self._assign(w, task)
        else:
            self._wake()  # its READY is read by the collector

    def _config_frame(self, job: str, env_restore: dict[str, str | None]) -> bytes:
        config = dict(
            self._init_config,
            sys_path=list(sys.path),
            # The worker ends what a task leaves running by this mark (_worker._Strays).
            tree_marker=_proc.tree_marker(job),
            env_restore=env_restore,
            # multiprocessing's key, as its own spawn children get it: a Manager proxy
            # (or a Listener client) passed to a task or the initializer connects with it.
            authkey=bytes(multiprocessing.current_process().authkey),
        )
        return _wire.encode_request(0, _wire.K_INIT, b"", pickle.dumps(config, 5))

    def _spawn_process(self) -> _Worker:
        req_r, req_w = _pipe()
        res_r, res_w = _pipe()
        try:
            job = _proc.new_job()
            argv, env, saved = _proc.python_command(
                WORKER_NAME, ["-c", _BOOT, str(req_r), str(res_w), str(os.getpid())], os.environ
            )
            frame = self._config_frame(job, saved)  # before the process: one less to undo
            proc = _proc.start_in_group(
                argv,
                executable=sys.executable,
                env=env,
                job=job,
                pass_fds=(req_r, res_w),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            # No worker: our ends go too (else their fds leak, and a grown pipe's
            # place in the budget with them).
            _close_pipe(req_w)
            _close_pipe(res_r)
            raise
        finally:
            os.close(req_r)
            os.close(res_w)
        return self._configure(proc, req_w, res_r, frame)

    def _configure(
        self,
        proc: subprocess.Popen[bytes] | _ForkedProc,
        req_w: int,
        res_r: int,
        frame: bytes,
        forked_job: str | None = None,
    ) -> _Worker:
        """The started worker ``proc`` as a _Worker, its config frame written.

        If that fails (it died at once: EPIPE), nothing of it stays: its fds are
        closed, it is killed and reaped, and the error goes on to _start_worker,
        which fails the tasks that were waiting for it.
        """
        w: _Worker | None = None
        try:
            if forked_job is not None:  # start_in_group does this for a spawned one
                guard(proc.pid)
                _proc.remember_job(proc.pid, forked_job)
            w = _Worker(proc, req_w, res_r)
            _write_all(req_w, frame)
        except BaseException:
            _abandon(proc, req_w, res_r, w)
            raise
        return w

    def _fork_process(self) -> _Worker:
        req_r, req_w = _pipe()
        res_r, res_w = _pipe()
        try:
            job = _proc.new_job()
            frame = self._config_frame(job, {})
            mark_key = _proc.owner_key()  # here: a forked child gets a key of its own
            _proc.ensure_guardian()  # the mark is covered before a process carries it
            parent = os.getpid()
            snap = _main_objects()
            with self._lock:
                # Before the fork, so that a call pickled from now on by name finds its
                # function in this worker too.
                known = self._forked_main
                self._forked_main = (
                    snap if known is None else {k: v for k, v in known.items() if snap.get(k) is v}
                )
                # The child must not hold other workers' pipe ends: a retired worker
                # would never see EOF while a younger sibling kept its request pipe open.
                inherited = [self._wake_r, self._wake_w]
                for other in self._workers.values():
                    inherited += [other.wfd, other.rfd, other.pidfd]
            pid = os.fork()
        except BaseException:
            # No worker: close the pipes (see _spawn_process).
            os.close(req_r)
            os.close(res_w)
            _close_pipe(req_w)
            _close_pipe(res_r)
            raise
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.setpgid(0, 0)
                os.close(req_w)
                os.close(res_r)
                for fd in inherited:
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                from ..._os.guardian import set_comm
                from . import worker
                from .worker import _strays, serve_to_the_end

                worker.INHERITED_INITIALIZER = self._inherited_init
                worker.after_fork()

                os.environ[mark_key] = job  # what it starts carries its job's mark
                set_comm(WORKER_NAME)
                _proc.set_pdeathsig(signal.SIGKILL, expected_parent=parent)
                _strays.activate()
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                code = serve_to_the_end(req_r, res_w)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(res_w)
        return self._configure(_ForkedProc(pid), req_w, res_r, frame, job)

    # ------------------------------------------------------------------ results
    def _service(self, w: _Worker, exited: bool = False) -> None:
        """Read what ``w`` sent and complete tasks; notice its death. Holds ``w.rlock``.

        ``exited``: its pidfd was readable (the process ended).
        """
        # Done callbacks run in here, with w.rlock held: a shutdown() called from one
        # cannot wait for this worker (see shutdown).
        outer = getattr(serving, "backends", ())
        serving.backends = (*outer, self)
        try:
            while not w.eof:
                try:
                    data = os.read(w.rfd, _READ_SIZE)
                except BlockingIOError:
                    break
                if not data:
                    w.eof = True
                    break
                frames = w.decoder.feed(data)
                for i, (header, body) in enumerate(frames):
                    try:
                        self._complete(w, header, body)
                    except BaseException:
                        # A done callback raised (or Ctrl-C came): the frames after it were
                        # read already, and their tasks must not hang.
                        for header, body in frames[i + 1 :]:
                            try:
                                self._complete(w, header, body)
                            except BaseException as exc:
                                _report("completing a task", exc)
                        raise
                if len(data) < _READ_SIZE:
                    break
            # Its pidfd readable: it exited (unreaped; _on_death reaps it).
            if w.eof or exited:
                self._on_death(w)
        finally:
            serving.backends = outer

    def _complete(self, w: _Worker, header: tuple[int, ...], body: bytes) -> None:
        task_id, status, _ = header
        retiring = bool(status & _wire.F_RETIRE)
        status &= ~_wire.F_RETIRE
        task = w.task
        if status == _wire.S_READY:
            w.ready = True
            w.ready_at = now = time.monotonic()
            with self._lock:
                self._boot_time = (self._boot_time + (now - w.born)) / 2
                self._booted(w)
                launch = self._want_launch()
            if launch:
                _launcher.submit(self._start_worker)
            running = w.task
            if running is not None and running.timeout is not None and not running._is_done():
                if running._timer is not None:
                    running._timer.cancel()
                running._timer = call_later(running.timeout, lambda: self._on_timeout(w, running))
            return
        if status == _wire.S_INIT_FAILED:
            init_exc = loads_exception(True, body)
            w.kill_exc = PolytaskError(f"the pool's initializer failed in a worker: {init_exc!r}")
            w.kill_exc.__cause__ = init_exc
            return
        if task is None or task_id != w.task_id:
            return  # a result that raced a kill: the task was already settled
        nxt: Task[Any] | None = None
        stopped: BaseException | None = None
        later = False
        started = task._started_at
        now = time.monotonic()
        with self._lock:
            if w.task is not task:
                return  # killed and settled meanwhile
            w.task = None
            w.ntasks += 1
            if started is not None and w.ntasks > 1:
                # A worker's first task (imports, unpickling its function) says
                # little about the next ones.
                self._task_times.append(now - max(started, w.ready_at))
            if retiring or (self._max_tasks is not None and w.ntasks >= self._max_tasks):
                if w.kill_exc is None and not w.dead:
                    self._retire(w)
            else:
                nxt = self._take_next(w)
        if nxt is not None and nxt.__dict__.get(SEND_AHEAD):
            # Nothing the callbacks of this task do can cancel nxt (see SEND_AHEAD):
            # the worker gets it now, not after this result is unpickled and its
            # callbacks ran (most of a map chunk's round trip for tiny items).
            ahead, nxt = nxt, None
            try:
                later = not self._assign(w, ahead, ahead=True)
            except BaseException as why:  # a Ctrl-C: this task must still finish
                stopped = why
        result: Any = None
        exc: BaseException | None = None
        try:
            if status == _wire.S_OK:
                result = pickle.loads(body)
            elif status in (_wire.S_ERROR, _wire.S_ERROR_TEXT):
                exc = loads_exception(status == _wire.S_ERROR, body)
            else:
                exc = SerializationError(pickle.loads(body))
        except BaseException as why:
            # Any exception, SystemExit and KeyboardInterrupt included: unpickling runs
            # the result's own code (__reduce__, __setstate__), and what it raises is
            # this task's failure, not the collector's or the caller's. (A Ctrl-C that
            # lands in these microseconds fails the task the same way, visibly.)
            exc = SerializationError(
                f"the result of task {task.name!r} could not be unpickled in the caller: "
                f"{type(why).__name__}: {why}"
            )
            exc.__cause__ = why
        # Finish first: a done callback (a group's) may cancel what would run next.
        # Like concurrent.futures', callbacks must not block.
        try:
            task._finish(result, exc)
        finally:
            # Even if a done callback raised: the next task must not be lost.
            if later:  # the marked task was cancelled and the next one is not marked
                with self._lock:
                    nxt = self._take_next(w)
            if nxt is not None:
                self._assign(w, nxt)
        if stopped is not None:
            raise stopped

    def _take_next(self, w: _Worker) -> Task[Any] | None:
        """The next queued task for ``w``, which just finished one; else ``w`` goes idle
        (None). None too if ``w`` is being killed or is dead: its death is handled.

        Called with self._lock held. The task returned is bound by ``_assign(w, task)``:
        until then it is in neither the queue nor a worker (``w`` is in _handing).
        """
        if w.kill_exc is None and not w.dead:
            if self._pending:
                self._handing.add(w)
                return self._pending.popleft()
            self._make_idle(w)
        self._handing.discard(w)  # after an ahead task was left (see _complete)
        return None

    def _on_death(self, w: _Worker, grace: float | None = None) -> None:
        """Handle the death of ``w`` (its response pipe closed, or it exited): reap
        it, fail its task, free its place. Called with ``w.rlock`` held, so one at a
        time; a second call (shutdown's, for a worker it saw alive) does nothing.

        ``grace``: how long it may take to exit before SIGKILL (None: _EXIT_WAIT).
        One that has not exited _REAP_WAIT after it is reaped by a thread of its own
        (see _reap_later), its task failed and its place freed now.
        """
        # Dead: its death was handled, the process reaped or left to its reaper (its
        # returncode still None then). Never a second reap, nor a second release.
        if w.dead:
            return
        with self._lock:
            w.reaping = True  # no signal by its pid from now on (see _signal)
        code = w.proc.poll()
        exited = True
        if code is None:
            # EOF came first; the exit follows within moments.
            if not wait_pid(w.pid, _EXIT_WAIT if grace is None else grace):
                _proc.kill_group(w.pid)
                # Bounded: this runs on the collector thread (every result nobody reads,
                # every death) or in shutdown.
                exited = wait_pid(w.pid, _REAP_WAIT)
            code = w.proc.poll() if exited else None
        if exited:
            _proc.release_group(w.pid)  # descendants left in its group
            job = _proc.forget_job(w.pid)
            if job is not None and (code != 0 or w.kill_exc is not None):
                # Killed or crashed mid-task: what its task started and that left the
                # group was not ended by the worker (_worker._Strays). Off this thread:
                # the kill policy's grace must not hold up other tasks' results.
                _end_strays_later(job, w.pid)
        else:
            _say(
                f"worker process {w.pid} did not exit within {_REAP_WAIT:g} s of SIGKILL "
                "(stuck in the kernel?); it is reaped when it exits"
            )
        with self._lock:
            self._booted(w)
            w.dead = True
            self._workers.pop(w.pid, None)
            if w in self._idle:
                self._idle.remove(w)
            task, w.task = w.task, None
            launch = self._want_launch() if not self._closed or self._pending else False
        if not exited:
            # Its group (SIGKILLed above), its job and what its task left running are
            # released after the reap: its group id cannot be reused before, and a
            # search by its job's mark could find it, and reap it before its reaper.
            _reap_later(w.proc, end_strays=True)
        self._bury(w)
        try:
            if task is not None:
                task.exitcode = code
                exc = w.kill_exc if w.kill_exc is not None else WorkerCrashed._for(task.name, code)
                task._finish(exc=exc)
        finally:
            if launch:
                _launcher.submit(self._start_worker)

    def _booted(self, w: _Worker) -> None:
        # Called with self._lock held: w no longer counts as a start in flight.
        if w.booting:
            w.booting = False
            self._booting -= 1

    def _bury(self, w: _Worker) -> None:
        with self._lock:
            self._graveyard.append(w)
        self._wake()

    # ------------------------------------------------------------------ kill
    def _kill(self, w: _Worker, exc: BaseException, task: Task[Any] | None = None) -> None:
        """Kill ``w``; its task fails with ``exc``. With ``task``: only if still running it."""
        with self._lock:
            if w.dead or w.reaping or w.kill_exc is not None:
                return
            if task is not None and (w.task is not task or task._is_done()):
                return  # it finished, and w may already run the next task
            w.kill_exc = exc
            # The kill policy's non-blocking form; the timer thread ends the grace, and
            # the collector reaps the worker when its pidfd says it exited (_on_death).
            # Signalled under the lock, as every signal by its pid: not once reaping.
            ending = _proc.Ending(w.pid, self._grace)

        def hard_kill() -> None:
            with self._lock:
                if not (w.dead or w.reaping):
                    ending.step(time.monotonic())

        call_later(max(0.0, ending.kill_at - time.monotonic()), hard_kill)

    def _on_timeout(self, w: _Worker, task: Task[Any]) -> None:
        if w.task is not task or task._is_done():
            return
        # Its result may be sitting unread in the pipe: read it before calling it late.
        if not w.claim.locked() and w.rlock.acquire(blocking=False):
            try:
                if not w.claim.locked() and not w.dead:
                    self._service(w)
            except BaseException as exc:  # a done callback's: the timeout must still act
                _report("reading a late result", exc)
            finally:
                w.rlock.release()
        if task._is_done():
            return
        task._cancel_requested = True
        self._kill(
            w,
            TaskTimeout(
                f"task {task.name!r} ran past its timeout of {task.timeout:g} s; its worker "
                "process was killed",
                name=task.name,
                timeout=task.timeout,
            ),
            task,
        )

    def cancel(self, task: Task[Any]) -> bool:
        with self._lock:
            w = task._slot
            if not isinstance(w, _Worker):
                # Back in the queue after its worker died before it could be sent.
                try:
                    self._pending.remove(task)
                except ValueError:
                    return False
                queued = True
            else:
                queued = False
        if queued:
            task._finish(exc=Cancelled(f"task {task.name!r} was cancelled before it started"))
            return True
        if w.task is task:
            self._kill(
                w, Cancelled(f"task {task.name!r} was cancelled; its worker was killed"), task
            )
            return True
        return False

    def live_tasks(self) -> list[Task[Any]]:
        with self._lock:
            running = [w.task for w in self._workers.values() if w.task is not None]
            return running + list(self._pending)

    # ------------------------------------------------------------------ waiting
    def watch(self, task: Task[Any]) -> None:
        if isinstance(task._slot, _Worker):
            self._wake()

    def wait(self, task: Task[Any], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not task._is_done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return task._is_done()
            w = task._slot
            if not isinstance(w, _Worker) or w.dead or not w.claim.acquire(blocking=False):
                # Pending, or another thread reads for this worker: it completes the task.
                if not isinstance(w, _Worker):
                    # Pending: workers may be busy with tasks nobody reads for; the
                    # collector completes those, which frees a worker for this one.
                    self._wake()
                with task._condition:
                    if not task._is_done():
                        task._condition.wait(0.05 if remaining is None else min(remaining, 0.05))
                continue
            try:
                self._read_for(task, w, deadline)
            finally:
                w.claim.release()
                if (
                    not task._is_done()
                    or w.dead
                    or (w.task is not None and w.task._watched)
                    or self._pending
                ):
                    self._wake()
        return True

    def _read_for(self, task: Task[Any], w: _Worker, deadline: float | None) -> None:
        # The collector re-checks the claim under rlock before it reads, so once we
        # have passed through rlock no other thread reads w: if our result was read
        # before the claim, the task is done now; if not, it is ours to read.
        with w.rlock:
            pass
        while not task._is_done() and task._slot is w and not w.dead:
            if deadline is None:
                ms = -1
            else:
                ms = int((deadline - time.monotonic()) * 1000)
                if ms <= 0:
                    return
                ms = poll_ms(ms)  # past poll()'s limit: this loop polls again
            events = self._spin_poll(w, ms)
            if events:
                exited = len(events) > 1 or events[0][0] != w.rfd
                with w.rlock:
                    try:
                        self._service(w, exited)
                    except BaseException:
                        # Interrupted mid-frame (Ctrl-C): the stream may be torn, so the
                        # worker cannot be trusted with another task.
                        self._kill(w, Cancelled(f"task {task.name!r} was interrupted"))
                        raise

    def _spin_poll(self, w: _Worker, ms: int) -> list[tuple[int, int]]:
        """``w.poller.poll(ms)``, after polling without sleeping for up to the spin budget.

        A tiny task's result comes back in microseconds, sooner than this thread
        could be woken from a sleep. The budget adapts: back to the maximum when
        the sleep after a failed spin was short (spinning a little longer would
        have caught the result), halved when it was long (a task that takes a
        while: spinning on it only burns a core). It is skipped while the busy
        workers use every core, and only one caller thread spins at a time (the
        others would take the GIL and a core from it for nothing).

        What SpinChoice is told is the round trip's cost to this side: the wait
        plus the request's write (``w.send_cost``). Writing to a pipe wakes a
        sleeping worker with a "sync" wake-up, which Linux may place on the
        writer's core: the worker then runs its task inside the write, and the
        wait after it is 1.5-2.5 us while the call takes 38-56 us. Timing the
        wait alone, such an epoch made blocking look that cheap for good
        (spinning must beat 0.9 of it, less than a tiny task's own round trip),
        and the process never spun again: the "blocked for life" regime of a
        Pool used beside pt.spawn.
        """
        poller = w.poller
        if not self._cores_free():
            return poller.poll(ms)
        monotonic = time.monotonic
        choice = self._spin_choice
        sent, w.send_cost = w.send_cost, 0.0  # counted once per request
        start = monotonic()
        if not choice.spin:
            # Timed too: SpinChoice compares the waits with and without spinning.
            events = poller.poll(ms)
            choice.record(monotonic() - start + sent)
            return events
        budget = self._spin
        if not budget or not self._spinner.acquire(blocking=False):
            return poller.poll(ms)
        try:
            end = start + budget
            while True:
                events = poller.poll(0)
                if events:
                    choice.record(monotonic() - start + sent)
                    return events
                if monotonic() >= end:
                    break
        finally:
            self._spinner.release()
        t0 = monotonic()
        events = poller.poll(ms)
        now = monotonic()
        self._spin = after_sleep(budget, now - t0)
        choice.record(now - start + sent, vain=True)
        return events

    def _wake(self) -> None:
        # A wake can come at any time, after shutdown too (_bury, _assign, a timer, a
        # caller's wait). Were the write end's number read and then written to with
        # nothing more, a waker paused in between (a thread switch, a preemption)
        # while shutdown closed the pipe would write its byte into whatever file got
        # the number next: another pipe, a socket. So the number is read, and the
        # waker counted, under _wake_lock, and the pipe is closed only while no
        # waker is counted (else the last one closes it, see _close_wake); closed,
        # the number is -1 and a wake does nothing. The write is outside the lock:
        # no thread ever waits for a waker's syscall (a paused waker holds up
        # neither shutdown, nor other wakes, nor the collector's drain).
        # Cost: two short lock holds, ~0.4 us in all on CPython 3.11, beside the
        # write's syscall and the collector's wake-up; a plain spawn().result()
        # does not wake at all (see _assign).
        with self._wake_lock:
            fd = self._wake_w
            if fd < 0:
                return  # closed: nobody polls the pipe any more
            self._wakers += 1
        try:
            os.write(fd, b"x")
        except OSError:  # full (BlockingIOError): a wake is pending anyway
            pass
        finally:
            with self._wake_lock:
                self._wakers -= 1
                if self._wake_closing and not self._wakers:
                    self._close_wake_fds()

    def _close_wake(self) -> None:
        """Close the wake pipe: now, or as the last waker in flight leaves (see _wake)."""
        with self._wake_lock:
            self._wake_closing = True
            if not self._wakers:
                self._close_wake_fds()

    def _close_wake_fds(self) -> None:
        # Called with _wake_lock held, and no waker counted: each number is read as
        # -1 from now on, and closed once (another call finds -1).
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _drain_wake(self) -> None:
        # Under _wake_lock, which the read end is closed under: read outside it, the
        # number could name another file by the read, whose data this would eat (the
        # collector may outlive shutdown's wait for it, in a slow done callback).
        with self._wake_lock:
            fd = self._wake_r
            if fd < 0:
                return
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def _ensure_collector(self) -> None:
        with self._lock:
            if self._collector is None and not self._stopping:
                self._collector = threading.Thread(
                    target=self._collect, name="polytask-collector", daemon=True
                )
                self._collector.start()

    def _collect(self) -> None:
        try:
            self._collect_loop()
        except BaseException as exc:
            # Its own bookkeeping failed (servicing a worker cannot get here): without
            # it, results nobody reads and deaths go unnoticed, so fail loudly now.
            self._break(exc, "lost its collector thread")

    def _collect_loop(self) -> None:
        poller = select.poll()
        registered: dict[int, tuple[str, _Worker | None]] = {self._wake_r: ("wake", None)}
        poller.register(self._wake_r, select.POLLIN)
        while True:
            with self._lock:
                stop = bool(self._stopping and not self._workers)
                want: dict[int, tuple[str, _Worker | None]] = {self._wake_r: ("wake", None)}
                for w in self._workers.values():
                    if w.dead:
                        continue
                    want[w.pidfd] = ("pid", w)
                    if (w.task is not None or w.booting) and not w.eof and not w.claim.locked():
                        want[w.rfd] = ("res", w)
                buried = [w for w in self._graveyard if not w.claim.locked() and not w.sending]
                for w in buried:
                    self._graveyard.remove(w)
                fds = [_take_fds(w) for w in buried]
            for fd in list(registered):
                if fd not in want or registered[fd] != want[fd]:
                    poller.unregister(fd)
                    del registered[fd]
            for taken in fds:
                _close_taken(taken)
            if stop:
                return
            for fd, entry in want.items():
                if fd not in registered:
                    poller.register(fd, select.POLLIN)
                    registered[fd] = entry
            try:
                events = poller.poll()
            except InterruptedError:  # pragma: no cover
                continue
            for fd, _ in events:
                kind, hit = registered.get(fd, ("gone", None))
                if kind == "wake":
                    self._drain_wake()
                elif (
                    hit is not None and not hit.claim.locked() and hit.rlock.acquire(blocking=False)
                ):
                    try:
                        if not hit.claim.locked():
                            self._service(hit, kind == "pid")
                    except BaseException as exc:
                        # A done callback raised (SystemExit included): its task is
                        # finished, and the next one was sent (see _complete); the
                        # collector must go on for every other task.
                        _report("a task's done callback", exc)
                    finally:
                        hit.rlock.release()

    def _broken_error(self, task: Task[Any]) -> PolytaskError:
        err = PolytaskError(
            f"task {task.name!r} failed: the process backend {self._broken_why}; it takes no "
            "more tasks (create a new one)"
        )
        err.__cause__ = self._broken
        return err

    def _break(self, exc: BaseException, why: str) -> None:
        """A service thread failed in a way that leaves tasks unwatched: fail every task
        now, loudly, and kill the workers, rather than let anything hang."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken, self._broken_why = exc, why
            self._closed = True
            tasks = list(self._pending)
            self._pending.clear()
            workers = list(self._workers.values())
            for w in workers:
                if w.task is not None:
                    tasks.append(w.task)
                    w.task = None
        _report(f"the process backend {why}; its {len(tasks)} task(s) fail", exc)
        with self._lock:  # by pid: not once a worker is being reaped (see _Worker)
            for w in workers:
                if not (w.dead or w.reaping):
                    _proc.kill_group(w.pid)
        for t in tasks:
            if not t._is_done():
                t._finish(exc=self._broken_error(t))

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop accepting tasks, then stop the workers.

        ``cancel``: pending tasks fail with :class:`Cancelled` and running ones are
        killed; otherwise both are finished first. ``wait=False`` returns at once and
        finishes the shutdown on a background thread; so does a shutdown called from a
        task's done callback, which could not wait: the results it would wait for
        (its own worker's, or every one nobody reads) are read by this very thread.
        """
        if delivering(self):
            wait = False
        with self._lock:
            if self._closed and self._stopping:
                return
            self._closed = True
            pending = list(self._pending) if cancel else []
            if cancel:
                self._pending.clear()
                self._cancel_all = True
            busy = [(w, w.task) for w in self._workers.values() if w.task is not None]
        for t in pending:
            _cancel_for_shutdown(t)
        if cancel:
            for w, running in busy:
                self._kill(w, Cancelled("the backend was shut down while the task ran"), running)
        if not wait:
            threading.Thread(
                target=self._finish_shutdown, name="polytask-shutdown", daemon=True
            ).start()
            return
        self._finish_shutdown()

    def _finish_shutdown(self) -> None:
        self._wake()  # the collector completes results nobody reads
        # A worker between the queue and a task (taken off the queue, not bound yet:
        # see _handing) holds a task neither list shows: it is waited for too, unless
        # cancelled (_assign drops it then). Moments, as a rule (a result unpickled,
        # its callbacks run); at most _HANDOVER_WAIT each, as one cut short by an
        # exception (a Ctrl-C in submit) never ends. A task handed over later still
        # finishes: _assign fails it.
        handovers: dict[tuple[_Worker, int], float] = {}  # (worker, its count): first seen
        while True:
            with self._lock:
                tasks = [w.task for w in self._workers.values() if w.task is not None]
                tasks += list(self._pending)
                moving = []
                if not self._cancel_all and self._broken is None:  # broken: no collector
                    moving = [(w, w.ntasks) for w in self._handing]
                now = time.monotonic()
                handovers = {key: handovers.get(key, now) for key in moving}
                waiting = any(now - seen < _HANDOVER_WAIT for seen in handovers.values())
                if not tasks and not self._starting and not waiting:
                    # Stopped in the same hold as the check: a hand-over that ends from
                    # now on (a dead worker's task requeued) sees _stopping, and drops
                    # its task rather than queue it for a worker that never starts.
                    self._stopping = True
                    idle, self._idle = self._idle, []
                    if self._recheck is not None:
                        self._recheck.cancel()
                        self._recheck = None
                    workers = list(self._workers.values())
                    # Idle workers exit when their request pipe closes; so does one still
                    # in a hand-over (given up: its send then fails, and its task is
                    # cancelled), rather than be killed after the wait below. Under the
                    # lock: the collector takes a dead worker's fds under it too.
                    for w in idle + [w for w in self._handing if not w.dead]:
                        self._retire(w)
                    break
            for t in tasks:
                t.join(0.05)
            if not tasks:
                time.sleep(0.01)  # a worker is starting (it retires on arrival) or moving
        deadline = time.monotonic() + _STOP_WAIT
        for w in workers:
            if w.dead:
                continue
            grace = None
            if not wait_pid(w.pid, max(0.0, deadline - time.monotonic())):
                with self._lock:  # the collector may be reaping it right now
                    if not (w.dead or w.reaping):
                        _proc.kill_group(w.pid)
                grace = 0.0  # its time is up: _on_death waits for it after SIGKILL
            with w.rlock:
                w.eof = True
                self._on_death(w, grace)
        self._wake()
        collector = self._collector
        if collector is not None and collector is not threading.current_thread():
            collector.join(10.0)
        with self._lock:
            # Not the fds of a worker whose frame is going out: _assign holds its request
            # fd's number, and writes to it once more (then fails: the worker is dead).
            # Closed here, the number could be another file's by then; _assign closes
            # them once it is done (see _late_fds).
            self._swept = True
            rest = [w for w in self._graveyard if not w.sending]
            self._graveyard = [w for w in self._graveyard if w.sending]
            fds = [_take_fds(w) for w in rest]
        for taken in fds:
            _close_taken(taken)
        # Taken under _wake_lock and closed once: two shutdowns at once (one from a
        # done callback, finishing in the background, and the caller's) both closed
        # them, the second time another file's number; and a late _wake wrote to it.
        self._close_wake()

    def statistics(self) -> dict[str, int]:
        """Counts: workers (live, idle), worker starts in flight (queued, or started and
        not ready yet), worker processes started so far, and tasks waiting for a worker."""
        with self._lock:
            return {
                "workers": len(self._workers),
                "idle": len(self._idle),
                "starting": self._starting + self._booting,
                "started": self._started,
                "pending": len(self._pending),
            }


def _cancel_for_shutdown(task: Task[Any]) -> None:
    # A task that never ran: cancelled as a Future is, or (back in the queue after a
    # failed send, so "running" already) finished with Cancelled.
    if not concurrent.futures.Future.cancel(task):
        task._finish(exc=Cancelled(f"task {task.name!r}: the backend was shut down"))


def _abandon(
    proc: subprocess.Popen[bytes] | _ForkedProc, req_w: int, res_r: int, w: _Worker | None
) -> None:
    """End a worker process that started but could not be set up (see _configure):
    our ends of its pipes (and its pidfd) closed, the process killed, reaped and
    its group released (by a thread of its own if it does not exit in _REAP_WAIT)."""
    if w is not None:  # not published: no other thread has it (see _take_fds)
        _close_taken(_take_fds(w))
    else:
        _close_pipe(req_w)
        _close_pipe(res_r)
    pid = proc.pid
    _proc.kill_group(pid)
    try:
        # A forked child may not lead its own group yet; and until it is reaped,
        # its number is not reused.
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    # Bounded: this runs on the launcher thread, which starts every backend's workers.
    if wait_pid(pid, _REAP_WAIT):
        _reaped(proc)
        return
    _say(
        f"worker process {pid} did not exit within {_REAP_WAIT:g} s of SIGKILL (stuck in "
        "the kernel?); it is reaped when it exits"
    )
    _reap_later(proc)


def _reaped(proc: subprocess.Popen[bytes] | _ForkedProc, end_strays: bool = False) -> None:
    """Reap ``proc``, which has exited, and release its group and its job (with
    ``end_strays``, end what its job left running too, as _on_death does)."""
    proc.poll()
    # After the reap nothing signals its pid (it may be reused); its group is signalled
    # once more, as every reaped leader's is (release_group).
    _proc.release_group(proc.pid)
    job = _proc.forget_job(proc.pid)
    if end_strays and job is not None:
        _end_strays_later(job, proc.pid)


def _reap_later(proc: subprocess.Popen[bytes] | _ForkedProc, end_strays: bool = False) -> None:
    """Reap ``proc`` (SIGKILLed, not exited yet) on a thread of its own, when it exits;
    then :func:`_reaped`."""

    def reap() -> None:
        # No bound on the whole: a process in an uninterruptible sleep exits when the
        # kernel lets it go, and only this thread waits for it (unreaped, it would
        # stay a zombie, and its group guarded).
        while not wait_pid(proc.pid, 60.0):
            pass
        _reaped(proc, end_strays)

    try:
        threading.Thread(target=reap, name="polytask-reaper", daemon=True).start()
    except RuntimeError as exc:  # interpreter shutdown: no thread can start now
        _say(f"process {proc.pid} is left unreaped: {exc}")


def _report(what: str, exc: BaseException) -> None:
    """An error in a service thread that must not end it: say so on stderr."""
    _say(f"error in {what}: {type(exc).__name__}: {exc!r}")


def _say(text: str) -> None:
    try:
        print(f"polytask: {text}", file=sys.stderr)
    except BaseException:  # pragma: no cover - stderr closed at exit
        pass


def _end_strays_later(job: str, pid: int) -> None:
    if _proc.find_trees([job], first_pid=pid):
        threading.Thread(
            target=_proc.end_trees,
            args=([job],),
            kwargs={"first_pid": pid},
            name="polytask-reaper",
            daemon=True,
        ).start()


def _reset_grown_lock() -> None:
    # A fork while another thread was in _pipe would leave the child's copy locked
    # (its first worker start would hang). The count is kept: the child holds the
    # parent's grown pipes too until it closes them.
    global _grown_lock
    _grown_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_grown_lock)


def _pipe() -> tuple[int, int]:
    """A pipe between the caller and a worker, grown to :data:`_PIPE_SIZE` if allowed."""
    global _grown_pipes
    r, w = os.pipe()
    with _grown_lock:
        if _grown_pipes >= _PIPE_BUDGET:
            return r, w
        _grown_pipes += 1
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        # Known by the pipe's inode, not by its size (a host whose default pipe is
        # larger) nor by an fd number (which another path may close and reuse).
        ino = os.fstat(w).st_ino
    except OSError:  # over the user's limits: the default size works too
        with _grown_lock:
            _grown_pipes -= 1
        return r, w
    with _grown_lock:
        _grown_inodes.add(ino)
    return r, w


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _close_pipe(fd: int) -> None:
    """Close our end of a worker's pipe (a grown one leaves the budget, see _pipe)."""
    global _grown_pipes
    if fd < 0:
        return
    try:
        ino = os.fstat(fd).st_ino
        with _grown_lock:
            if ino in _grown_inodes:
                _grown_inodes.discard(ino)
                _grown_pipes -= 1
        os.close(fd)
    except OSError:
        pass


def _take_fds(w: _Worker) -> tuple[int, int, int]:
    """A dead worker's fds, for :func:`_close_taken`; the worker keeps none (-1).

    Called with the backend's lock held, as :meth:`ProcessBackend._retire` is: an fd
    is closed by whoever took it, once. Read here and closed by two threads, its
    number could be reused by a file opened between the closes, and closed under it.
    """
    fds = (w.rfd, w.wfd, w.pidfd)
    w.rfd = w.wfd = w.pidfd = -1
    return fds


def _close_taken(fds: tuple[int, int, int]) -> None:
    rfd, wfd, pidfd = fds
    _close_pipe(rfd)
    _close_pipe(wfd)
    if pidfd >= 0:
        try:
            os.close(pidfd)
        except OSError:
            pass
