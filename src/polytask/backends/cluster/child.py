"""Killable cluster tasks: run the packed call in a child process of the engine's worker.

Neither Dask nor (without killing its worker) Ray can stop a function that runs
in a worker's thread. So, when asked (``killable=``; by default when the task
has a timeout), the worker does not run the call itself: :func:`run_killable`
starts a child process, hands it the packed call over a pipe, and waits for its
outcome on another pipe, while watching for the end of the task:

::

    engine worker thread                         child (own process group, guarded)
    ────────────────────                         ──────────────────────────────────
    run_killable(): start child ── call ──────>  run_pickled(fn bytes, payload)
      poll the outcome pipe (0.1 s) <── outcome  fn(*args) ... exits
        deadline passed / task cancelled on the engine / interrupted
          -> terminate(): SIGTERM, grace, SIGKILL to the group, reaped

So a timeout or a cancel kills the work, its descendants too, and frees the
worker thread at once. The child never outlives the worker: its process group
is registered with the worker's guardian (:mod:`polytask._os.proc`), which ends
it when the worker dies, even by SIGKILL (``ray.cancel(force=True)``, a nanny
restart); descendants that left the group are found by their tree marker.

A child that dies (``os._exit``, a signal, the OOM killer) fails its task with
:class:`WorkerCrashed`; the engine's worker lives on. The child gets the
worker's ``sys.path``, working directory and environment, plus the address of
the cluster, so that the cluster primitives a task was given work in it.
"""

from __future__ import annotations

import os
import pickle
import select
import sys
import time
from collections.abc import Callable

from ..._core.errors import Cancelled, WorkerCrashed
from ..._ipc.codec import PROTOCOL, dumps_exception
from ..._os.proc import python_command, restore_env, start_in_group, terminate, wait_pid
from .base import Outcome, run_pickled

__all__ = ["CHILD_ADDRESS_ENV", "child_of", "run_killable"]

#: ``engine:address`` of the cluster, in a child's environment: a backend made in
#: the child (for a primitive it was given) joins that cluster instead of starting one.
CHILD_ADDRESS_ENV = "POLYTASK_CLUSTER_CHILD_OF"

_POLL = 0.1
_GRACE = 0.5
_CHILD_CODE = "from polytask.backends.cluster.child import _child_main; _child_main()"


#: In a task's child: the pipe end that tells the waiting worker thread "this task
#: submits tasks of its own" (see :func:`note_nested`); None elsewhere.
_note_fd: int | None = None


def note_nested() -> None:
    """Tell the worker thread waiting for this child that the task submits tasks.

    The thread then gives up its slot as a task that submits does on the worker
    itself (Dask's secede): else parents that wait for their children in child
    processes hold every thread and the children never start. Once per child.
    """
    global _note_fd
    fd, _note_fd = _note_fd, None
    if fd is not None:
        try:
            os.write(fd, b"S")
        finally:
            os.close(fd)


def child_of(engine: str) -> str | None:
    """The cluster's address when this process is a task's child on ``engine``, else None."""
    kind, _, address = os.environ.get(CHILD_ADDRESS_ENV, "").partition(":")
    return address if kind == engine and address else None


def _crashed(name: str, engine: str, code: int) -> Outcome:
    how = f"signal {-code}" if code < 0 else f"exit status {code}"
    err = WorkerCrashed(
        f"the process running task {name!r} on the {engine} worker died ({how}: a crash, "
        "os._exit, or the out-of-memory killer) before returning; the worker goes on",
        name=name,
    )
    return False, dumps_exception(err)


def run_killable(
    fn_bytes: bytes,
    by_ref: bool,
    payload: bytes,
    name: str,
    timeout: float | None,
    engine: str,
    address: str,
    gone: Callable[[], bool] | None = None,
    on_nested: Callable[[], None] | None = None,
) -> Outcome:
    """Run a packed call in a child process of this worker and return its outcome.

    The child is killed (with its process group) when ``timeout`` seconds pass
    since it started, when ``gone()`` says the engine dropped the task
    (cancelled), or when this thread is interrupted (Ray's cancel raises
    KeyboardInterrupt here); in those cases the caller has already been told,
    and the outcome returned is one nobody reads. ``on_nested()`` runs here when
    the child says its task submits tasks of its own (see :func:`note_nested`).
    """
    start = time.monotonic()
    env = dict(os.environ)
    env[CHILD_ADDRESS_ENV] = f"{engine}:{address}"
    call_r, call_w = os.pipe()
    out_r, out_w = os.pipe()
    note_r, note_w = os.pipe()
    argv, env, saved = python_command(
        "polytask-cluster-task", ["-c", _CHILD_CODE, str(call_r), str(out_w), str(note_w)], env
    )
    try:
        proc = start_in_group(
            argv, executable=sys.executable, env=env, pass_fds=(call_r, out_w, note_w)
        )
    except BaseException:
        for fd in (call_r, call_w, out_r, out_w, note_r, note_w):
            os.close(fd)
        raise
    os.close(call_r)
    os.close(out_w)
    os.close(note_w)
    chunks: list[bytes] = []
    ended = False  # the child closed its end: done, or died
    try:
        try:
            # The child reads its whole call before it writes anything: no deadlock.
            with os.fdopen(call_w, "wb", closefd=True) as f:
                call_w = -1
                f.write(pickle.dumps((saved, list(sys.path), fn_bytes, by_ref, payload), PROTOCOL))
        except BrokenPipeError:
            pass  # it died at start: its exit status tells
        poller = select.poll()
        poller.register(out_r, select.POLLIN)
        poller.register(note_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll(_POLL * 1000)}
            if note_r in ready:
                poller.unregister(note_r)  # one note at most; EOF alone says nothing
                if os.read(note_r, 1) and on_nested is not None:
                    on_nested()
            if out_r in ready:
                data = os.read(out_r, 1 << 20)
                if not data:
                    ended = True
                    break
                chunks.append(data)
                continue
            if ready:
                continue
            if timeout is not None and time.monotonic() - start > timeout:
                break
            if gone is not None and gone():
                break
    finally:
        if call_w >= 0:
            os.close(call_w)
        os.close(out_r)
        os.close(note_r)
        if ended:
            wait_pid(proc.pid, 5.0)  # let it exit by itself after its outcome
        # Done or not, the child and its group end here and the child is reaped; an
        # interrupt (Ray's cancel) passes on after that.
        code = terminate(proc, _GRACE)
    if not ended:
        # Killed at the deadline or on cancel: the caller was told already.
        return False, dumps_exception(Cancelled(f"task {name!r} was stopped and killed"))
    try:
        outcome: Outcome = pickle.loads(b"".join(chunks))
    except Exception:  # nothing, or a truncated outcome: the child died
        return _crashed(name, engine, code)
    return outcome


def _child_main() -> None:
    """The child: read the call, run it, write the outcome, exit."""
    global _note_fd
    call_r, out_w, _note_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    del sys.argv[1:]
    with os.fdopen(call_r, "rb", closefd=True) as f:
        data = f.read()
    saved, path, fn_bytes, by_ref, payload = pickle.loads(data)
    restore_env(saved)
    sys.path[:] = path
    if child_of("ray") and b"ray.actor" in payload:
        # A Ray actor handle (a cluster primitive's) unpickles only in a connected
        # process: join the cluster the task runs on first.
        from .. import get_backend

        get_backend("ray")
    outcome = run_pickled(fn_bytes, by_ref, payload)
    blob = pickle.dumps(outcome, PROTOCOL)
    with os.fdopen(out_w, "wb", closefd=True) as f:
        f.write(blob)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
