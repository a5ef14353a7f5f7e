"""The Ray backend: tasks run as Ray remote functions.

::

    caller thread                         Ray core worker (driver; its own threads)      cluster
    ─────────────                         ─────────────────────────────────────────      ───────
    spawn(): pack the call (pickle) ────> _run.remote(fn bytes, payload) ─── ObjectRef ──> raylet
             Task (RUNNING)                                                                 │
    timer thread: deadline ─> Task fails with TaskTimeout; ray.cancel(force=True)           v
                                          ref completion callback  <──────────────── worker process
    result() <── Task._finish() <──────── outcome: result / exception + traceback       fn(*args)

Where Ray comes from: if Ray is already initialised in this process (by the
user, or by ``client=``), it is used and never shut down; ``address=`` joins a
cluster (``ray.init(address=...)``); otherwise a local Ray with ``max_workers``
CPUs is started. Ray started by polytask is shut down when the last
RayBackend that uses it shuts down.

No orphan: the processes of a local Ray polytask starts (GCS, raylet, the
dashboard and runtime-env agents, the first workers) are registered with
polytask's guardian once ``ray.init`` returns (``_proc.guard_pid``). While
``ray.init`` runs they also carry a marker in their environment
(``_proc.guard_env``), which covers an owner that dies before it returns; a
process that renames itself (Ray's do, with setproctitle) no longer shows the
marker, hence the pids. Workers the raylet starts later end with the raylet.
If this process dies without shutting Ray down, even by SIGKILL, the guardian
ends them all. On its own, Ray ends its GCS and raylet
with their owner, but the agents would live on for about a minute: they notice
that the raylet is gone within seconds and then try to report it to the dead
GCS until that times out.

Ray *can* stop a running task: ``ray.cancel(force=True)`` kills the worker
process running it (Ray starts a new one). So a cancelled or timed-out task
really stops (``can_kill_running = True``). With ``killable=True`` a task
runs in a child process of its worker instead
(``backends.cluster.child``): a cancel interrupts the worker
(``ray.cancel(force=False)``), which kills the child and what it started, and
the worker goes on. Tasks run with ``max_retries=0``:
a worker that dies fails its task with :class:`WorkerCrashed` instead of
running it again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ..._core.backend import Backend, expired_at_start
from ..._core.errors import BackendUnavailable, WorkerCrashed
from ..._core.task import Task
from ..._core.timer import call_later
from ..._os.proc import guard_env, guard_pid, unguard_env, unguard_pid
from .base import (
    Outcome,
    cancelled_error,
    driver_paths,
    pack_call,
    run_pickled,
    settle,
    timeout_error,
)
from .child import child_of, run_killable

__all__ = ["RayBackend"]

T = TypeVar("T")

_INSTALL = "pip install 'polytask[ray]'"
_KILLED = "its Ray worker process was killed (ray.cancel(force=True)) and Ray replaces it"
_KILLED_CHILD = "the process running it on its Ray worker was killed; the worker goes on"

# Ray is one per process: count the RayBackends relying on the Ray polytask started.
_init_lock = threading.Lock()
_owners = 0
_remote_fn: Any = None
#: ``KEY=VALUE`` in the environment of the local Ray polytask started (see the docstring).
_MARK_KEY = "POLYTASK_RAY_OWNER"
_marker: str | None = None
#: Guardian tokens of the local Ray's processes (see the docstring).
_guarded: list[bytes] = []


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend='ray' needs Ray, which is not installed ({exc}); install it with: {_INSTALL}"
        ) from exc
    return ray


_killable_fn: Any = None


def _in_ray_task() -> bool:
    """True in a Ray task (a worker process running one), False in a driver."""
    import ray

    try:
        return ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None
    except Exception:  # an engine too old or too new for this: wait as a driver does
        return False


def _remote(killable: bool = False) -> Any:
    global _remote_fn, _killable_fn
    import ray

    if killable:
        if _killable_fn is None:
            _killable_fn = ray.remote(max_retries=0, retry_exceptions=False, num_cpus=1)(
                _run_killable
            )
        return _killable_fn
    if _remote_fn is None:
        _remote_fn = ray.remote(max_retries=0, retry_exceptions=False, num_cpus=1)(run_pickled)
    return _remote_fn


def _run_killable(
    fn_bytes: bytes, by_ref: bool, payload: bytes, name: str, timeout: float | None
) -> Outcome:
    """On a Ray worker: the call in a child process (see ``backends.cluster.child``).

    A cancel reaches it as KeyboardInterrupt (``ray.cancel(force=False)``), which
    kills the child and leaves the worker to Ray for the next task.
    """
    import ray

    address = ray.get_runtime_context().gcs_address
    return run_killable(fn_bytes, by_ref, payload, name, timeout, "ray", address)


def _check_shipping(working_dir: Any, py_modules: Any) -> dict[str, Any]:
    """The ``runtime_env`` entries for ``working_dir=`` / ``py_modules=``, checked here."""
    env: dict[str, Any] = {}
    if working_dir is not None:
        if not isinstance(working_dir, (str, os.PathLike)) or not os.path.isdir(working_dir):
            raise ValueError(f"working_dir must be an existing folder, got {working_dir!r}")
        env["working_dir"] = os.fspath(working_dir)
    if py_modules is not None:
        if isinstance(py_modules, (str, os.PathLike, types.ModuleType)):
            raise TypeError("py_modules must be a list of modules or paths, not a single one")
        mods: list[Any] = []
        for mod in py_modules:
            if isinstance(mod, types.ModuleType):
                paths = list(getattr(mod, "__path__", []))
                path = paths[0] if len(paths) == 1 else getattr(mod, "__file__", None)
                if path is None:
                    raise ValueError(f"py_modules: module {mod.__name__!r} has no file to ship")
                # Its path, as Ray would take it: a Ray Client (ray://) deep-copies the
                # runtime_env, and a module object cannot be copied.
                mods.append(os.fspath(path))
            elif isinstance(mod, (str, os.PathLike)) and os.path.exists(mod):
                mods.append(os.fspath(mod))
            else:
                raise ValueError(
                    f"py_modules: {mod!r} is neither a module nor an existing path "
                    "(a package folder, a .py file, a .whl or .zip)"
                )
        env["py_modules"] = mods
    return env


class RayBackend(Backend):
    """Runs tasks on Ray.

    Args:
        max_workers: CPUs of the local Ray started when none runs (default: all).
        address: a Ray cluster to join (``"auto"``, ``"10.0.0.5:6379"``, ``"ray://..."``).
        client: the context ``ray.init()`` returned: use that Ray, never shut it down.
        working_dir: a folder sent to every worker of this job, which runs there with
            it on its ``sys.path`` (Ray's ``runtime_env``): for a cluster given by
            ``address`` whose workers do not have your code.
        py_modules: modules (objects, or package / ``.py`` paths) sent to every worker.
        killable: run each task in a child process of its Ray worker, so that a
            timeout or a cancel kills it (and what it started) without killing the
            worker. Default (False/None): a cancel or timeout kills the worker
            (``ray.cancel(force=True)``), which Ray replaces. Not the default because
            a task in a child that waits for tasks of its own keeps its CPU (Ray
            frees it only for a worker blocked in ``ray.get``): with more such
            parents than CPUs, the children would never start.
        engine_options: passed to ``ray.init``.

    A local Ray that polytask starts gets this process's code the way process
    workers do: the folders of ``sys.path`` that are not installed packages (the
    script's folder, the working directory) go on its workers' ``PYTHONPATH``.

    Raises:
        BackendUnavailable: Ray is not installed.
    """

    name: ClassVar[str] = "ray"
    primitives: ClassVar[Mapping[str, Any]] = {
        kind: f"polytask.backends.cluster.sync:Hub{kind}"
        for kind in (
            "Lock",
            "RLock",
            "Event",
            "Condition",
            "Semaphore",
            "BoundedSemaphore",
            "Barrier",
            "Channel",
        )
    }
    #: ``ray.cancel(force=True)`` kills the worker running a task.
    can_kill_running: ClassVar[bool] = True

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        address: str | None = None,
        client: Any = None,
        working_dir: str | os.PathLike[str] | None = None,
        py_modules: Sequence[Any] | None = None,
        killable: bool | None = None,
        **engine_options: Any,
    ) -> None:
        global _owners
        ray = _import_ray()
        if killable is not None and not isinstance(killable, bool):
            raise TypeError(f"killable must be True, False or None, not {killable!r}")
        shipping = _check_shipping(working_dir, py_modules)
        self._killable = killable
        #: runtime_env for each task, when Ray was initialised without ours.
        self._task_env: dict[str, Any] | None = None
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        if client is not None and address is not None:
            raise ValueError("pass either address= or client=, not both")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str such as 'auto' or 'host:6379', not {address!r}")
        if client is not None and not ray.is_initialized():
            raise ValueError("client= was given but Ray is not initialised in this process")
        self._lock = threading.Lock()
        self._refs: dict[Task[Any], Any] = {}
        #: Refs of tasks running in a child process: a cancel interrupts, never kills the worker.
        self._in_child: set[Any] = set()
        self._closed = False
        self._owner = False
        with _init_lock:
            if ray.is_initialized():
                # Ray polytask started is shared by count; the user's is only borrowed.
                if _owners > 0:
                    _owners += 1
                    self._owner = True
                self._task_env = shipping or None
            else:
                if address is None:
                    # In a task's child process (see .child): the cluster the task runs on.
                    address = child_of("ray")
                opts: dict[str, Any] = {"logging_level": logging.WARNING}
                if address is not None:
                    opts["address"] = address
                else:
                    opts["num_cpus"] = max_workers or os.cpu_count() or 1
                    opts["include_dashboard"] = False
                local = address in (None, "local")
                opts.update(engine_options)
                runtime_env = dict(opts.get("runtime_env") or {})
                runtime_env.update(shipping)
                if local:
                    # Workers see the driver's code as process workers do (their own
                    # settings first).
                    env_vars = dict(runtime_env.get("env_vars") or {})
                    paths = driver_paths()
                    if paths and "PYTHONPATH" not in env_vars:
                        old = os.environ.get("PYTHONPATH")
                        env_vars["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
                        runtime_env["env_vars"] = env_vars
                if runtime_env:
                    opts["runtime_env"] = runtime_env
                if local:
                    _init_local(ray, opts)
                else:
                    ray.init(**opts)
                _owners = 1
                self._owner = True

    def submit(
        self,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str,
        timeout: float | None,
    ) -> Task[T]:
        fn_bytes, by_ref, payload, pins = pack_call(fn, args, kwargs, name)
        task: Task[T] = Task(self, name, timeout)
        killable = bool(self._killable)
        opts: dict[str, Any] = {"name": name[:100]}
        if self._task_env:
            opts["runtime_env"] = self._task_env
        with self._lock:
            if self._closed:
                raise RuntimeError("this ray backend is shut down; create a new one")
            if timeout == 0:
                return expired_at_start(task)  # never submitted: see there
            task.set_running_or_notify_cancel()
            task._mark_started()
            if killable:
                ref = _remote(True).options(**opts).remote(fn_bytes, by_ref, payload, name, timeout)
            else:
                ref = _remote().options(**opts).remote(fn_bytes, by_ref, payload)
            self._refs[task] = ref
            if killable:
                self._in_child.add(ref)
        if timeout is not None:
            task._timer = call_later(timeout, lambda: self._expire(task))

        # The callback holds the pins (see pack_call) until the task ends.
        def done(fut: Any, _pins: list[Any] = pins) -> None:
            self._on_done(task, fut)

        on_done: Callable[[Any], None] = done
        if _client_connected():
            # Ray Client (ray://) calls it on its data thread, which must stay free: a
            # submit from the callback (a Pool's next chunk) waits for that thread.
            on_done = _relayed(done)
        ref.future().add_done_callback(on_done)
        return task

    def _on_done(self, task: Task[Any], fut: Any) -> None:
        with self._lock:
            ref = self._refs.pop(task, None)
            self._in_child.discard(ref)
        if task.done():
            return
        try:
            outcome = fut.result(0)
        except BaseException as exc:
            task._finish(exc=self._translate(task, exc))
        else:
            settle(task, outcome)

    def _translate(self, task: Task[Any], exc: BaseException) -> BaseException:
        import ray.exceptions as rex

        if isinstance(exc, rex.TaskCancelledError):
            return cancelled_error(task, "Ray cancelled it")
        crashed = (
            rex.WorkerCrashedError,
            rex.NodeDiedError,
            rex.LocalRayletDiedError,
            rex.OutOfMemoryError,
            rex.ObjectLostError,
        )
        if isinstance(exc, crashed):
            why = "the out-of-memory killer" if isinstance(exc, rex.OutOfMemoryError) else "a crash"
            err = WorkerCrashed(
                f"the Ray worker running task {task.name!r} died ({type(exc).__name__}: "
                f"{why}, os._exit, or a signal); the task did not finish, Ray starts a new worker",
                name=task.name,
            )
            err.__cause__ = exc
            return err
        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            return cause or exc
        return exc

    def _kill(self, tasks: list[Task[Any]]) -> None:
        import ray

        with self._lock:
            refs = [r for r in (self._refs.pop(t, None) for t in tasks) if r is not None]
            gentle = {r for r in refs if r in self._in_child}
            self._in_child -= gentle
        if not ray.is_initialized():
            return
        for ref in refs:
            try:
                # In a child: KeyboardInterrupt in the worker kills the child, the worker lives.
                ray.cancel(ref, force=ref not in gentle)
            except Exception:  # pragma: no cover - it finished meanwhile
                pass

    def _how_killed(self, task: Task[Any]) -> str:
        with self._lock:
            in_child = self._refs.get(task) in self._in_child
        return _KILLED_CHILD if in_child else _KILLED

    def _expire(self, task: Task[Any]) -> None:
        task._cancel_requested = True
        if task._finish(exc=timeout_error(task, "ray", self._how_killed(task))):
            self._kill([task])

    def wait(self, task: Task[Any], timeout: float | None) -> bool:
        """Inside a Ray task, wait in ``ray.wait``: Ray lends the waiting task's CPU out
        only to a worker blocked in its own calls, so parents waiting for their
        children on a future would hold every CPU and the children never start."""
        with self._lock:
            ref = self._refs.get(task)
        if ref is not None and not task.done() and _in_ray_task():
            import ray

            ray.wait([ref], timeout=timeout)
            # The result is there (or the wait timed out): the done callback follows.
            return super().wait(task, 0 if not ray.wait([ref], timeout=0)[0] else 30.0)
        return super().wait(task, timeout)

    def cancel(self, task: Task[Any]) -> bool:
        how = self._how_killed(task)
        if not task._finish(exc=cancelled_error(task, how + " if it had started")):
            return False
        self._kill([task])
        return True

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop accepting tasks; ``cancel`` kills the unfinished ones (:class:`Cancelled`),
        ``wait`` waits for the others. Ray polytask started is shut down with its last user."""
        global _owners
        with self._lock:
            self._closed = True
            tasks = list(self._refs)
        if cancel:
            for task in tasks:
                task._cancel_requested = True
                task._finish(exc=cancelled_error(task, "its backend shut down; " + _KILLED))
            self._kill(tasks)
        elif wait:
            for task in tasks:
                task.join()
        with _init_lock:
            if not self._owner:
                return
            self._owner = False
            _owners -= 1
            last = _owners == 0
        if last:
            _shutdown_ray()

    def primitive(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """Lock, RLock, Event, Condition, Semaphore, BoundedSemaphore, Barrier or Channel,
        held on the cluster (see ``backends.cluster.sync``) so that any task can use it."""
        from .sync import RayLink, make_cluster_primitive

        return make_cluster_primitive(kind, RayLink(), *args, **kwargs)

    def __repr__(self) -> str:
        return f"<RayBackend{' closed' if self._closed else ''}>"


def _client_connected() -> bool:
    """True when this process reaches Ray through Ray Client (``address="ray://..."``)."""
    from ray.util.client import ray as client

    connected: Callable[[], bool] = client.is_connected
    return bool(connected())


_relay_lock = threading.Lock()
_relay: queue.SimpleQueue[Callable[[], None]] | None = None


def _relay_main(calls: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        call = calls.get()
        try:
            call()
        except Exception:  # pragma: no cover - _on_done ends its task whatever happens
            logging.getLogger(__name__).exception("a Ray task's completion failed")


def _relayed(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """``fn``, called on polytask's relay thread instead of the caller's thread."""
    global _relay
    with _relay_lock:
        if _relay is None:
            _relay = queue.SimpleQueue()
            threading.Thread(
                target=_relay_main, args=(_relay,), name="polytask-ray-client-relay", daemon=True
            ).start()
        calls = _relay
    return lambda f: calls.put(lambda: fn(f))


def _init_local(ray: Any, opts: dict[str, Any]) -> None:
    """Start a local Ray whose every process carries the guardian's marker."""
    global _marker
    import psutil

    value = f"{os.getpid()}-{uuid.uuid4().hex}"
    marker = f"{_MARK_KEY}={value}"
    # Registered before anything starts, so a death during ray.init leaves nothing either.
    guard_env(marker)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # the guardian among them
    # Ray's processes inherit this environment (the raylet's children inherit the
    # raylet's); the variable is ours alone, set only while ray.init starts them.
    os.environ[_MARK_KEY] = value
    try:
        ray.init(**opts)
    finally:
        # Still guarded if ray.init failed: whatever it left is ended with this process.
        os.environ.pop(_MARK_KEY, None)
    _marker = marker
    # The agents change their process title, which overwrites what /proc shows of
    # their environment: they are found by pid instead (ray.init waits for them).
    for proc in me.children(recursive=True):
        if proc.pid not in before:
            token = guard_pid(proc.pid)
            if token is not None:
                _guarded.append(token)


def _shutdown_ray() -> None:
    global _marker
    import ray

    ray.shutdown()
    while _guarded:
        unguard_pid(_guarded.pop())
    if _marker is not None:
        unguard_env(_marker)
        _marker = None
