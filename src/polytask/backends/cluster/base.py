"""What the Dask and Ray backends share: the call shipped to a worker, and its outcome.

A call crosses to the cluster already pickled by polytask (``fn`` bytes and a
``(name, args, kwargs)`` payload), so that:

- an argument that cannot be pickled fails in the caller, as
  :class:`SerializationError` naming it, before the engine sees anything;
- the engine moves two ``bytes`` objects and never walks a big argument list
  looking for its own futures (Dask does that for every ``submit``);
- a function that travels by reference is loaded once per worker process.

On the worker, :func:`run_pickled` runs the call and returns a small tuple: the
pickled result, or the pickled exception with its formatted traceback (the
same format as the process backend, so ``Task.result()`` re-raises the task's
own exception type with the remote traceback as ``__cause__``).
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..._core.errors import Cancelled, SerializationError, TaskTimeout
from ..._core.task import CurrentTask, Task, _set_current
from ..._ipc.codec import PROTOCOL, dumps, dumps_call, dumps_exception, loads_exception
from .sync import pinning

__all__ = [
    "Outcome",
    "cancelled_error",
    "driver_paths",
    "pack_call",
    "run_pickled",
    "settle",
    "timeout_error",
]

#: ``(True, pickled result)`` or ``(False, (exception pickled whole?, pickled exception))``.
Outcome = tuple[bool, Any]

_FN_CACHE: dict[bytes, Callable[..., Any]] = {}
_FN_CACHE_MAX = 64


def pack_call(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], name: str
) -> tuple[bytes, bool, bytes, list[Any]]:
    """Pickle a call in the caller: ``(fn bytes, by reference?, payload, pins)``.

    ``pins`` are the stakes of the cluster primitives the call carries: keep
    them until the task ends, so their hub objects outlive the caller's handles
    for as long as the task may use them (see ``backends.cluster.sync``).

    Raises :class:`SerializationError` naming the function or argument at fault.
    """
    with pinning() as pins:
        # A cluster worker's threads share its cached functions: only by reference.
        fn_bytes, by_ref, payload = dumps_call(fn, args, kwargs, name, keep_by_value=False)
    return fn_bytes, by_ref, payload, pins


def _load_fn(fn_bytes: bytes, by_ref: bool) -> Callable[..., Any]:
    fn = _FN_CACHE.get(fn_bytes) if by_ref else None
    if fn is None:
        fn = pickle.loads(fn_bytes)
        if by_ref:
            if len(_FN_CACHE) >= _FN_CACHE_MAX:
                _FN_CACHE.clear()
            _FN_CACHE[fn_bytes] = fn
    return fn


def _error(exc: BaseException) -> Outcome:
    return False, dumps_exception(exc)


def run_pickled(fn_bytes: bytes, by_ref: bool, payload: bytes) -> Outcome:
    """Run a packed call on a cluster worker; never raises (the outcome says what happened)."""
    try:
        fn = _load_fn(fn_bytes, by_ref)
        name, args, kwargs = pickle.loads(payload)
    except BaseException as exc:
        err = SerializationError(_unpickle_message(exc))
        err.__cause__ = exc
        return _error(err)
    _set_current(CurrentTask(name))
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return _error(exc)
    finally:
        _set_current(None)
    try:
        return True, dumps(result)
    except Exception as exc:
        err = SerializationError(
            f"the result of task {name!r} ({type(result).__name__}) cannot be pickled to send "
            f"back from the cluster worker: {type(exc).__name__}: {exc}"
        )
        tb = "".join(traceback.format_exception(exc))
        return False, (True, pickle.dumps((err, tb), PROTOCOL))


def _unpickle_message(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"the call could not be unpickled on the cluster worker: module {exc.name!r} "
            f"is not importable there ({exc}). Ship the code with the backend option "
            f"py_modules=[{exc.name.partition('.')[0]}] or working_dir='<the folder holding "
            "it>' (e.g. pt.Pool(backend=..., address=..., py_modules=[mymodule])), or install "
            "it on every worker"
        )
    return (
        f"the call could not be unpickled on the cluster worker ({type(exc).__name__}: "
        f"{exc}); the function's module and the arguments' classes must be importable "
        "on every worker (install the same code there, or pass py_modules= / working_dir= "
        "to the backend)"
    )


def driver_paths() -> list[str]:
    """The folders of this process's ``sys.path`` that hold code not installed.

    The script's folder, the working directory (``''``), folders added to
    ``sys.path`` or ``PYTHONPATH``: what a worker started by the engine would
    not see. The standard library and site-packages are left out (the same
    interpreter on the same machine has them).
    """
    import sysconfig

    skip = {
        os.path.realpath(p)
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    out: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if (
            path in skip
            or "site-packages" in path
            or "dist-packages" in path
            or not os.path.isdir(path)
            or path.startswith(os.path.realpath(sys.base_prefix) + os.sep + "lib")
            or path in out
        ):
            continue
        out.append(path)
    return out


def settle(task: Task[Any], outcome: Outcome) -> None:
    """Complete ``task`` from a worker's outcome (a no-op if it already ended)."""
    ok, data = outcome
    if ok:
        try:
            value = pickle.loads(data)
        except Exception as exc:
            task._finish(
                exc=SerializationError(
                    f"the result of task {task.name!r} could not be unpickled here "
                    f"({type(exc).__name__}: {exc}); is its class importable in this process?"
                )
            )
            return
        task._finish(value)
    else:
        whole, blob = data
        task._finish(exc=loads_exception(whole, blob))


def timeout_error(task: Task[Any], engine: str, what_happens: str) -> TaskTimeout:
    """The :class:`TaskTimeout` a cluster task gets at its deadline."""
    return TaskTimeout(
        f"task {task.name!r} ran past its timeout of {task.timeout:g} s on {engine} "
        f"(counted from submission); {what_happens}",
        name=task.name,
        timeout=task.timeout,
    )


def cancelled_error(task: Task[Any], what_happens: str) -> Cancelled:
    return Cancelled(f"task {task.name!r} was cancelled; {what_happens}")
