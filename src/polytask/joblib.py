"""Run joblib's ``Parallel`` on polytask: ``polytask.joblib.register()``.

::

    import joblib
    import polytask.joblib

    polytask.joblib.register()
    with joblib.parallel_config(backend="polytask", n_jobs=2):
        squares = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(10))

joblib's batches become tasks of a private :class:`polytask.Pool`, so a worker
that crashes fails only its batch (``WorkerCrashed``) and is replaced, and
every worker is killed and reaped when a call fails or is interrupted; the
Pool of a call that ended well waits for the next call of the same
configuration, as loky's reusable executor does (:func:`shutdown` ends it).
Options given to ``parallel_config``/``parallel_backend`` after the name go to
the Pool: ``backend="thread"``, ``timeout=``, ``retries=``,
``max_tasks_per_worker=``...

Large NumPy arrays are memory-mapped as with joblib's own process backends
(``max_nbytes``, ``mmap_mode``, ``temp_folder``), with joblib's own machinery::

    parent: Parallel -> submit(batch)                       worker process
      loky's cloudpickle Pickler + joblib's forward reducers
        array > max_nbytes -> joblib.dump to <temp>/joblib_memmapping_folder_*/
        -> bytes ---------- Pool task _run_batch(bytes) ----> pickle.loads:
                                                             np.memmap(mmap_mode)
    retrieve_result: pickle.loads <------- bytes ---------- batch(), pickled with
                                                             the backward reducers
    terminate(): Pool closed and joined, then the folder is deleted

The folder belongs to the ``Parallel`` call, or to its ``with Parallel(...)``
block. joblib registers its files with loky's resource tracker (a process that
lives as long as the interpreter), which deletes them if the caller dies first.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

__all__ = ["PolytaskBackend", "register", "shutdown"]

try:
    from joblib import cpu_count, register_parallel_backend  # type: ignore[import-untyped]
    from joblib._memmapping_reducer import (  # type: ignore[import-untyped]
        TemporaryResourcesManager,
        get_memmapping_reducers,
    )
    from joblib._parallel_backends import (  # type: ignore[import-untyped]
        AutoBatchingMixin,
        ParallelBackendBase,
    )
    from joblib.externals.loky.backend.reduction import (  # type: ignore[import-untyped]
        dumps as _loky_dumps,
    )
except ImportError as exc:  # pragma: no cover - joblib is an optional dependency
    from ._core.errors import BackendUnavailable

    raise BackendUnavailable(
        "polytask.joblib needs joblib: pip install joblib (or polytask[dev])"
    ) from exc

from ._pool import Pool


class PolytaskBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib parallel backend running each batch as a task of a polytask Pool."""

    supports_retrieve_callback = True
    supports_timeout = True
    # n_jobs=None means one job, as for joblib's own backends (outside a
    # parallel_config that sets n_jobs).
    default_n_jobs = 1

    def __init__(self, *args: Any, **pool_options: Any) -> None:
        nesting_level = pool_options.pop("nesting_level", None)
        inner = pool_options.pop("inner_max_num_threads", None)
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner)
        self._pool_options = pool_options
        self._pool: Pool | None = None
        self._pool_args: tuple[int, Any, tuple[Any, ...], dict[str, Any]] | None = None
        self._memmapping: _Memmapping | None = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(int(cpu_count()) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_options: Any,
    ) -> int:
        # backend_options are joblib's own (max_nbytes, mmap_mode, context...): the
        # Pool's options come from parallel_config(backend="polytask", **options),
        # except joblib's initializer and initargs, which go to the Pool's workers.
        n = self.effective_n_jobs(n_jobs)
        options = dict(self._pool_options)
        if require == "sharedmem" or (prefer == "threads" and "backend" not in options):
            options["backend"] = "thread"
        initializer = backend_options.get("initializer") or options.pop("initializer", None)
        initargs = tuple(backend_options.get("initargs") or options.pop("initargs", ()))
        if options.get("backend", "process") == "process":
            # A batch may run Parallel(backend="polytask") itself: the worker must know
            # the name (it imports joblib anyway to run the batch).
            initializer, initargs = _init_worker, (initializer, initargs)
        self._close_pool()  # configured again without terminate(): do not leak the old one
        self._pool_args = (n, initializer, initargs, options)
        # Only process workers need the arrays in shared memory: threads share them
        # already, and a cluster's workers cannot map the caller's files.
        max_nbytes = backend_options.get("max_nbytes")
        if options.get("backend", "process") == "process" and max_nbytes is not None:
            self._memmapping = _Memmapping(
                max_nbytes,
                backend_options.get("mmap_mode", "r"),
                backend_options.get("temp_folder"),
                backend_options.get("verbose", 0),
            )
        # joblib runs n_jobs=1 in the caller, without terminate() after: no Pool then.
        if n > 1:
            self._pool = self._new_pool()
        self.parallel = parallel
        return n

    def _new_pool(self) -> Pool:
        assert self._pool_args is not None, "configure() first"
        reused = _reusable.take(self._pool_args)
        if reused is not None:
            return reused
        n, initializer, initargs, options = self._pool_args
        return Pool(n, initializer, initargs, **options)

    def submit(self, func: Any, callback: Any = None) -> Any:
        if self._pool is None:
            self._pool = self._new_pool()
        task = None
        if self._memmapping is not None:
            try:
                batch = self._memmapping.dumps(func)
            except Exception:
                # The Pool's own pickling reports what cannot be pickled, naming it
                # (SerializationError); the arrays then go by value.
                pass
            else:
                task = self._pool.submit(_run_batch, batch)
        if task is None:
            task = self._pool.submit(func)
        if callback is not None:
            task.add_done_callback(callback)
        return task

    def retrieve_result_callback(self, out: Any) -> Any:
        return _unreduce(out.result())

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        return _unreduce(out.result(timeout))

    def terminate(self) -> None:
        self._close_pool()
        self.reset_batch_stats()

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        try:
            if pool is not None and self._pool_args is not None:
                # Kept for the next call of the same configuration, as loky keeps
                # its executor: starting workers is most of a short call's time.
                _reusable.give_back(self._pool_args, pool)
            elif pool is not None:
                pool.close()
                pool.join()
        finally:
            # After the join: no worker maps the files any more.
            memmapping, self._memmapping = self._memmapping, None
            if memmapping is not None:
                memmapping.clean()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        # Kill everything now; with ensure_ready (a Parallel used as a context
        # manager goes on), a fresh Pool of the same configuration takes over.
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
        if ensure_ready and self._pool_args is not None:
            self._pool = self._new_pool()


class _Reusable:
    """One idle Pool kept between ``Parallel`` calls (loky's reusable executor):
    the next call with the same configuration takes it instead of starting
    workers. A call that is interrupted or fails ends its Pool instead
    (abort_everything); :func:`shutdown` and the interpreter's exit end the
    idle one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot: tuple[tuple[Any, ...], Pool] | None = None
        self._atexit = False
        # A forked child (a worker) must not use its copy of the parent's Pool.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._slot = None

    @staticmethod
    def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        # n and options by value; initializer and initargs by identity (a NumPy
        # array compares element-wise, and changed initargs must start new workers).
        try:
            return (
                a[0] == b[0]
                and a[1] is b[1]
                and len(a[2]) == len(b[2])
                and all(x is y for x, y in zip(a[2], b[2], strict=True))
                and bool(a[3] == b[3])
            )
        except Exception:
            return False

    def take(self, key: tuple[Any, ...]) -> Pool | None:
        with self._lock:
            if self._slot is None or not self._same(self._slot[0], key):
                return None
            pool = self._slot[1]
            self._slot = None
        return None if pool._is_closed() else pool

    def give_back(self, key: tuple[Any, ...], pool: Pool) -> None:
        with self._lock:
            old, self._slot = self._slot, (key, pool)
            if not self._atexit:
                import atexit

                atexit.register(shutdown)
                self._atexit = True
        if old is not None:
            old[1].close()
            old[1].join()

    def shutdown(self) -> None:
        with self._lock:
            old, self._slot = self._slot, None
        if old is not None:
            old[1].close()
            old[1].join()


_reusable = _Reusable()


def shutdown() -> None:
    """End the idle Pool kept for the next ``Parallel`` call (its workers are
    killed and reaped); the next call starts a new one."""
    _reusable.shutdown()


def register(name: str = "polytask", *, make_default: bool = False) -> None:
    """Register polytask as a joblib backend called ``name`` (default "polytask").

    ``make_default=True`` also makes it the backend of ``Parallel()`` calls that
    name none (joblib's own default is loky).
    """
    register_parallel_backend(name, PolytaskBackend, make_default=make_default)


class _Memmapping:
    """joblib's automatic memory mapping for one ``Parallel`` call or ``with`` block.

    joblib's forward reducers dump each array over ``max_nbytes`` once to a
    folder and pickle it as a reference that the worker opens as an
    ``np.memmap`` (``mmap_mode``); smaller arrays and everything else are pickled
    by value, by cloudpickle. The folder is made on the first large array only
    (that is also when joblib starts loky's resource tracker).
    """

    def __init__(self, max_nbytes: int, mmap_mode: str | None, root: Any, verbose: int) -> None:
        self._root = root
        self._manager: Any = None
        self._lock = threading.Lock()
        # unlink_on_gc_collect=False: the worker must not ask the resource tracker to
        # unlink the files (a polytask worker has no handle on the caller's); the
        # folder goes as a whole once the workers are gone, as for joblib's
        # multiprocessing backend.
        self._reducers, _ = get_memmapping_reducers(
            temp_folder_resolver=self._folder,
            max_nbytes=max_nbytes,
            mmap_mode=mmap_mode,
            verbose=verbose,
            unlink_on_gc_collect=False,
            prewarm=False,
        )

    def _folder(self) -> str:
        if self._manager is None:
            self._manager = TemporaryResourcesManager(self._root)
        folder: str = self._manager.resolve_temp_folder_name()
        return folder

    def dumps(self, batch: Any) -> bytes:
        """Pickle a batch with the reducers (dumping its large arrays first)."""
        # joblib dispatches under its own lock; this one keeps the reducers' cache of
        # dumped arrays consistent if two threads share the backend anyway.
        with self._lock:
            return bytes(_loky_dumps(batch, reducers=self._reducers))

    def clean(self) -> None:
        """Delete the folder and its files now (call it once no worker maps them)."""
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            # force: the workers are gone, so every file can go, whatever the
            # tracker's reference counts say.
            manager._clean_temporary_resources(force=True, allow_non_empty=True)


class _Reduced(bytes):
    """A batch's results, pickled in the worker with joblib's backward reducers."""


_backward_reducers: dict[Any, Any] | None = None


def _run_batch(batch: bytes) -> Any:
    """Run, in a worker, a batch pickled by :meth:`_Memmapping.dumps`.

    The results go back as joblib's backward reducers pickle them: an array backed
    by one of the call's temporary files comes back as a plain array (the file
    goes with the call), one backed by a file of the caller's as an ``np.memmap``
    of that file.
    """
    global _backward_reducers
    results = pickle.loads(batch)()
    if _backward_reducers is None:
        _, _backward_reducers = get_memmapping_reducers(unlink_on_gc_collect=False)
    try:
        return _Reduced(_loky_dumps(results, reducers=_backward_reducers))
    except Exception:
        # The Pool's own pickling sends them, or reports what cannot be sent.
        return results


def _unreduce(results: Any) -> Any:
    return pickle.loads(results) if type(results) is _Reduced else results


def _init_worker(initializer: Any, initargs: tuple[Any, ...]) -> None:
    """Start a worker of a joblib pool: "polytask" is a backend there too, then
    joblib's ``initializer`` (``Parallel(initializer=..., initargs=...)``) runs."""
    register()
    if initializer is not None:
        initializer(*initargs)
