"""The Dask backend: tasks run on a ``dask.distributed`` cluster.

::

    caller thread                      Dask client (its own event-loop thread)      cluster
    ─────────────                      ───────────────────────────────────────      ───────
    spawn(): pack the call (pickle) ─> client.submit(run_pickled, fn, payload) ───> scheduler
             Task (RUNNING)                                                          │
    timer thread: deadline ─> Task fails with TaskTimeout, future cancelled          v
                                       done callback (a client thread) <──────── worker runs
    result() <── Task._finish() <───── outcome: result / exception + traceback      fn(*args)

Where the cluster comes from, first match wins: ``client=`` (used, never
closed); ``address=`` (a Client to that scheduler, closed at shutdown); the
Dask *default client* of this process if there is one (as ``dask.compute``
does; used, never closed); inside a task on a Dask worker, that worker's client
(the cluster the task runs on; never closed); else a ``LocalCluster`` of
``max_workers`` worker processes with one thread each, started here and closed
at shutdown.

What Dask cannot do: stop a task that is already running in a worker's
thread. So a task that has a timeout (every task with ``killable=True``) runs
in a child process of its worker (``backends.cluster.child``), which a timeout
or a cancel kills, freeing the worker. Otherwise a cancelled or timed-out task
fails at once for its caller (:class:`Cancelled`, :class:`TaskTimeout`) and
Dask releases it, but the function runs on to its end on its worker and its
result is dropped (``can_kill_running`` is True only with ``killable=True``).
A worker that dies while running a task fails that task with
:class:`WorkerCrashed` (Dask's ``KilledWorker``; on a cluster polytask starts,
``allowed-failures`` is 0 so the task is not retried on another worker).
"""

from __future__ import annotations

import os
import threading
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ..._core.backend import Backend, expired_at_start
from ..._core.errors import BackendUnavailable, WorkerCrashed
from ..._core.task import Task
from ..._core.timer import call_later
from .base import Outcome, cancelled_error, pack_call, run_pickled, settle, timeout_error
from .child import child_of, note_nested, run_killable

__all__ = ["DaskBackend"]

T = TypeVar("T")

_INSTALL = "pip install 'polytask[dask]'"
_KILLED_CHILD = "the process running it on its Dask worker was killed; the worker goes on"
_NOT_KILLED = (
    "Dask cannot stop a task that is already running: the function runs on to its end "
    "on its worker and its result is dropped"
)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend='dask' needs dask.distributed, which is not installed ({exc}); "
            f"install it with: {_INSTALL}"
        ) from exc
    return distributed


class DaskBackend(Backend):
    """Runs tasks on a ``dask.distributed`` cluster.

    Args:
        max_workers: worker processes of the LocalCluster started when no cluster
            is given (default: the number of CPUs); ignored with ``address``/``client``.
        address: a scheduler to join, e.g. ``"tcp://10.0.0.5:8786"``.
        client: a ``distributed.Client`` to use; polytask never closes it.
        working_dir: a folder sent to every worker of the cluster and put on its
            ``sys.path`` (Dask's ``UploadDirectory`` plugin): for a cluster whose
            workers do not have your code.
        py_modules: modules (objects, or ``.py`` / package paths) sent to every
            worker (``Client.upload_file``; a package goes as a ``.zip``).
        killable: run each task in a child process of its Dask worker, so that a
            timeout or a cancel kills it and frees the worker thread; default:
            the tasks that have a timeout. ``True`` makes every task killable
            (``can_kill_running``), at the cost of a process start per task or chunk.
        engine_options: passed to ``LocalCluster`` (or to ``Client`` with ``address``).

    A ``LocalCluster`` polytask starts sees this process's code: its workers are
    started with ``spawn``, which gives them this process's ``sys.path``.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
    """

    name: ClassVar[str] = "dask"
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
    #: Dask cannot interrupt a running task (see the module docstring).
    can_kill_running: ClassVar[bool] = False

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
        distributed = _import_distributed()
        if killable is not None and not isinstance(killable, bool):
            raise TypeError(f"killable must be True, False or None, not {killable!r}")
        uploads = _check_uploads(working_dir, py_modules)
        self._killable = killable
        if killable:
            # Every task then runs in a child process that a cancel kills.
            self.can_kill_running = True  # type: ignore[misc]
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        if client is not None and address is not None:
            raise ValueError("pass either address= or client=, not both")
        if client is not None and not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str such as 'tcp://host:8786', not {address!r}")
        self._lock = threading.Lock()
        self._futures: dict[Task[Any], Any] = {}
        #: Tasks running in a child process of their worker: a cancel kills them.
        self._in_child: set[Task[Any]] = set()
        self._closed = False
        self._cluster: Any = None
        self._owns_client = False
        if client is None and address is None:
            try:
                client = distributed.default_client()
            except ValueError:
                client = _worker_client(distributed)
            if client is None:
                # In a task's child process (see .child): the cluster the task runs on.
                address = child_of("dask")
        if client is not None:
            self._client = client
        elif address is not None:
            self._client = distributed.Client(address, set_as_default=False, **engine_options)
            self._owns_client = True
        else:
            self._cluster = _local_cluster(max_workers, engine_options)
            try:
                self._client = distributed.Client(self._cluster, set_as_default=False)
            except BaseException:
                self._cluster.close()
                raise
            self._owns_client = True
        if uploads:
            try:
                _upload(self._client, *uploads)
            except BaseException:
                self.shutdown(wait=False)
                raise

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` tasks are submitted through."""
        return self._client

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
        _secede_if_in_task()
        task: Task[T] = Task(self, name, timeout)
        with self._lock:
            if self._closed:
                raise RuntimeError("this dask backend is shut down; create a new one")
            if timeout == 0:
                return expired_at_start(task)  # never submitted: see there
            task.set_running_or_notify_cancel()
            task._mark_started()
            key = f"polytask-{name[:60]}-{uuid.uuid4().hex}"
            if self._killable if self._killable is not None else timeout is not None:
                fut = self._client.submit(
                    _run_killable,
                    fn_bytes,
                    by_ref,
                    payload,
                    name,
                    timeout,
                    key=key,
                    pure=False,
                    retries=0,
                )
                self._in_child.add(task)
            else:
                fut = self._client.submit(
                    run_pickled, fn_bytes, by_ref, payload, key=key, pure=False, retries=0
                )
            self._futures[task] = fut
        if timeout is not None:
            task._timer = call_later(timeout, lambda: self._expire(task))
        # The callback holds the pins (see pack_call) until Dask is done with the task.
        fut.add_done_callback(lambda f, _pins=pins: self._on_done(task, f))
        return task

    def _on_done(self, task: Task[Any], fut: Any) -> None:
        with self._lock:
            self._futures.pop(task, None)
            self._in_child.discard(task)
        if task.done():
            return
        try:
            status = fut.status
            if status == "finished":
                settle(task, fut.result(timeout=30))
            elif status == "cancelled":
                task._finish(exc=cancelled_error(task, "Dask cancelled it"))
            else:
                task._finish(exc=self._translate(task, fut.exception(timeout=30)))
        except BaseException as exc:  # the client lost the result: still end the task
            task._finish(exc=self._translate(task, exc))

    def _translate(self, task: Task[Any], exc: BaseException | None) -> BaseException:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            err = WorkerCrashed(
                f"the Dask worker running task {task.name!r} died (a crash, os._exit, or the "
                "out-of-memory killer); the task did not finish, the nanny restarts the worker",
                name=task.name,
            )
            err.__cause__ = exc
            return err
        if exc is None:
            return RuntimeError(f"Dask reported task {task.name!r} failed without an exception")
        if type(exc).__name__ == "CancelledError":
            return cancelled_error(task, "Dask cancelled it")
        return exc

    def _how_stopped(self, task: Task[Any]) -> str:
        with self._lock:
            return _KILLED_CHILD if task in self._in_child else _NOT_KILLED

    def _expire(self, task: Task[Any]) -> None:
        task._cancel_requested = True
        if task._finish(exc=timeout_error(task, "dask", self._how_stopped(task))):
            # A cancel is a round trip to the scheduler: keep it off the timer thread.
            threading.Thread(target=self._release, args=([task],), daemon=True).start()

    def _release(self, tasks: list[Task[Any]]) -> None:
        """Ask the scheduler to forget these tasks (a queued one then never runs)."""
        with self._lock:
            futs = [f for f in (self._futures.pop(t, None) for t in tasks) if f is not None]
            self._in_child.difference_update(tasks)
        if futs and self._client.status not in ("closing", "closed"):
            try:
                self._client.cancel(futs)
            except Exception:  # pragma: no cover - the client is going away
                pass

    def cancel(self, task: Task[Any]) -> bool:
        how = self._how_stopped(task)
        if not task._finish(exc=cancelled_error(task, how + " if it had started")):
            return False
        self._release([task])
        return True

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop accepting tasks. ``cancel`` fails the unfinished ones (:class:`Cancelled`);
        ``wait`` waits for the others. A cluster or client polytask started is closed."""
        with self._lock:
            self._closed = True
            tasks = list(self._futures)
        if cancel:
            for task in tasks:
                task._cancel_requested = True
                how = self._how_stopped(task)
                task._finish(exc=cancelled_error(task, "its backend shut down; " + how))
        elif wait:
            for task in tasks:
                task.join()
        # Tasks nobody waits for any more are released, so a borrowed cluster forgets them.
        self._release(tasks)
        if self._owns_client:
            self._owns_client = False
            _close_quietly(self._client)
            if self._cluster is not None:
                _close_quietly(self._cluster)
                self._cluster = None

    def primitive(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """Lock, RLock, Event, Condition, Semaphore, BoundedSemaphore, Barrier or Channel,
        held on the cluster (see ``backends.cluster.sync``) so that any task can use it."""
        from .sync import DaskLink, make_cluster_primitive

        return make_cluster_primitive(kind, DaskLink(self._client), *args, **kwargs)

    def __repr__(self) -> str:
        addr = getattr(getattr(self._client, "scheduler", None), "address", None)
        return f"<DaskBackend scheduler={addr!r}{' closed' if self._closed else ''}>"


def _run_killable(
    fn_bytes: bytes, by_ref: bool, payload: bytes, name: str, timeout: float | None
) -> Outcome:
    """On a Dask worker: the call in a child process (see ``backends.cluster.child``).

    Dask tells a running task nothing when it is cancelled, but the worker's
    state says so: the child is killed once this task's key is no longer
    executing there (cancelled, released, forgotten).
    """
    import distributed

    worker = distributed.get_worker()
    thread_state: Any = getattr(distributed.worker, "thread_state", None)
    key = thread_state.key

    def gone() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state not in ("executing", "long-running")

    address = worker.scheduler.address
    return run_killable(
        fn_bytes, by_ref, payload, name, timeout, "dask", address, gone, _secede_if_in_task
    )


def _check_uploads(working_dir: Any, py_modules: Any) -> tuple[str | None, list[str]]:
    """The folder and the files that ``working_dir=`` / ``py_modules=`` send, checked."""
    folder = None
    if working_dir is not None:
        if not isinstance(working_dir, (str, os.PathLike)) or not os.path.isdir(working_dir):
            raise ValueError(f"working_dir must be an existing folder, got {working_dir!r}")
        folder = os.path.abspath(working_dir)
    files: list[str] = []
    if py_modules is not None:
        if isinstance(py_modules, (str, os.PathLike, types.ModuleType)):
            raise TypeError("py_modules must be a list of modules or paths, not a single one")
        for mod in py_modules:
            if isinstance(mod, types.ModuleType):
                paths = list(getattr(mod, "__path__", []))
                path = paths[0] if len(paths) == 1 else getattr(mod, "__file__", None)
                if path is None:
                    raise ValueError(f"py_modules: module {mod.__name__!r} has no file to ship")
            elif isinstance(mod, (str, os.PathLike)) and os.path.exists(mod):
                path = os.fspath(mod)
            else:
                raise ValueError(
                    f"py_modules: {mod!r} is neither a module nor an existing path "
                    "(a package folder, a .py, .zip or .egg file)"
                )
            files.append(os.path.abspath(path))
    if folder is None and not files:
        return None, []
    return folder, files


def _upload(client: Any, folder: str | None, files: list[str]) -> None:
    """Send a folder and modules to every worker (and to workers that join later)."""
    import shutil
    import tempfile

    if folder is not None:
        from distributed.diagnostics import plugin

        upload_directory: Any = plugin.UploadDirectory
        client.register_plugin(
            upload_directory(folder, update_path=True, skip_words=(".git", "__pycache__"))
        )
    for path in files:
        if os.path.isdir(path):
            # A package travels as a zip holding it, which Dask puts on sys.path.
            with tempfile.TemporaryDirectory() as tmp:
                base = os.path.join(tmp, os.path.basename(path))
                archive = shutil.make_archive(
                    base, "zip", root_dir=os.path.dirname(path), base_dir=os.path.basename(path)
                )
                client.upload_file(archive, load=False)
        else:
            client.upload_file(path, load=False)


def _local_cluster(max_workers: int | None, options: dict[str, Any]) -> Any:
    import dask

    distributed: Any = _import_distributed()
    n = max_workers or os.cpu_count() or 1
    opts: dict[str, Any] = {
        "n_workers": n,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    opts.update(options)
    # A worker that dies fails its task (WorkerCrashed) instead of being retried elsewhere.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        return distributed.LocalCluster(**opts)


def _secede_if_in_task() -> None:
    """A Dask task that submits work will likely wait for it: give up its thread slot.

    Otherwise parents waiting for children hold every worker thread and the
    children never start (a deadlock); ``distributed.worker_client()`` does the
    same. The task goes on running on its own thread.
    """
    import distributed

    note_nested()  # in a task's child process: the waiting worker thread secedes
    # The task thread's state (where worker_client() reads its key too).
    thread_state: Any = getattr(distributed.worker, "thread_state", None)
    key = getattr(thread_state, "key", None)
    if key is None or getattr(thread_state, "polytask_seceded", None) == key:
        return  # not in a task thread, or this task already seceded
    secede: Any = distributed.secede
    secede()
    thread_state.polytask_seceded = key


def _worker_client(distributed: Any) -> Any:
    """The client of the Dask worker this code runs on, or None off a worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return None
    return distributed.get_client()


def _close_quietly(obj: Any) -> None:
    try:
        obj.close(timeout=30)
    except TypeError:  # pragma: no cover - close() without timeout=
        obj.close()
    except Exception:  # pragma: no cover - already gone
        pass
