"""The swap: polytask's executors and pools under the names the upstream suites use.

The upstream tests are run unchanged; only what they construct is replaced:

- ``concurrent.futures.ProcessPoolExecutor`` -> ``pt.Executor`` (process backend),
  ``ThreadPoolExecutor`` -> ``pt.Executor(backend="thread")``. The two classes
  below only give pt.Executor the stdlib's names (the tests use ``__name__`` in
  scripts they run in a child interpreter) and ThreadPoolExecutor's argument order.
- ``multiprocessing.Pool`` -> ``pt.Pool``; ``multiprocessing.dummy.Pool``
  (ThreadPool) -> ``pt.Pool(backend="thread")``.

Scripts the tests run in a fresh interpreter (``assert_python_ok("-c", ...)``)
get a prelude that makes the same swap there (:func:`install`).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import functools
import multiprocessing
import multiprocessing.dummy
import sys
import types
from typing import Any

import polytask as pt

_HERE = __file__.rsplit("/", 1)[0]


class ProcessPoolExecutor(pt.Executor):
    """``pt.Executor`` on the process backend, under the stdlib's name."""


class ThreadPoolExecutor(pt.Executor):
    """``pt.Executor(backend="thread")`` with ``ThreadPoolExecutor``'s argument order."""

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(
            max_workers,
            initializer=initializer,
            initargs=initargs,
            backend="thread",
            thread_name_prefix=thread_name_prefix,
        )


#: multiprocessing.Pool and multiprocessing.dummy.Pool (ThreadPool) as polytask.
ProcessPool = pt.Pool
ThreadPool = functools.partial(pt.Pool, backend="thread")


class _Proxy(types.ModuleType):
    """A module that is ``real`` except for the names set on it."""

    def __init__(self, real: types.ModuleType, **swapped: Any) -> None:
        super().__init__(real.__name__, real.__doc__)
        self.__dict__["_real"] = real
        self.__dict__.update(swapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_real"], name)


def futures_module() -> types.ModuleType:
    """``concurrent.futures`` with polytask's executors."""
    return _Proxy(
        concurrent.futures,
        ProcessPoolExecutor=ProcessPoolExecutor,
        ThreadPoolExecutor=ThreadPoolExecutor,
        process=concurrent.futures.process,
    )


def multiprocessing_module() -> types.ModuleType:
    """``multiprocessing`` whose ``Pool`` is polytask's."""
    return _Proxy(multiprocessing, Pool=ProcessPool)


def install(joblib: bool = False) -> None:
    """Make the swap process-wide (in a child interpreter a test started)."""
    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc]
    concurrent.futures.ThreadPoolExecutor = ThreadPoolExecutor  # type: ignore[misc]
    multiprocessing.Pool = ProcessPool  # type: ignore[assignment]
    multiprocessing.dummy.Pool = ThreadPool  # type: ignore[assignment]
    if joblib:
        # What a user's script does to use the backend: register it.
        import polytask.joblib

        polytask.joblib.register(make_default=True)


def prelude(joblib: bool = False) -> str:
    """Code put before a child script: this process's sys.path, then :func:`install`."""
    path = [_HERE, *sys.path]
    return f"import sys; sys.path[:0] = {path!r}; import _swap; _swap.install({joblib!r})\n"


def with_prelude(run: Any) -> Any:
    """Wrap ``assert_python_ok``-like functions: the ``-c`` script gets :func:`prelude`."""

    @functools.wraps(run)
    def wrapper(*args: Any, **env: Any) -> Any:
        args_list = list(args)
        if "-c" in args_list:
            i = args_list.index("-c") + 1
            args_list[i] = prelude() + args_list[i]
        return run(*args_list, **env)

    return wrapper


def with_prelude_cmd(run: Any) -> Any:
    """Wrap joblib's ``check_subprocess_call(cmd, ...)``: a ``python -c CODE`` or a
    ``python SCRIPT.py`` command runs its code after :func:`prelude` (joblib's swap)."""

    @functools.wraps(run)
    def wrapper(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        cmd = list(cmd)
        if len(cmd) >= 3 and cmd[1] == "-c":
            cmd[2] = prelude(joblib=True) + cmd[2]
        elif len(cmd) >= 2 and cmd[1].endswith(".py"):
            script = cmd[1]
            run_script = (
                f"import runpy; sys.argv = {cmd[1:]!r}; "
                f"runpy.run_path({script!r}, run_name='__main__')\n"
            )
            cmd = [cmd[0], "-c", prelude(joblib=True) + run_script]
        return run(cmd, *args, **kwargs)

    return wrapper
