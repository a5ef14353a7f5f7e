"""The one skip table of the upstream conformance suites.

Key: ``suite::Class::test`` (``suite::test[params]`` for joblib), glob patterns
allowed; value: ``(category, reason)``. A test is listed only if it cannot pass
by design:

- INTERNAL: it reads a private attribute or CPython internals (``_processes``,
  ``_threads``, ``_pool``...) that polytask does not have.
- DIFFERENCE: a deliberate, documented difference (each explained in
  docs/compat.md, under the heading named in the reason).

Everything else must pass; a failure is a bug.
"""

from __future__ import annotations

INTERNAL = "reads a private attribute / CPython internals"
DIFFERENCE = "documented deliberate difference (docs/compat.md)"

SKIPS: dict[str, tuple[str, str]] = {
    # ======================================================== concurrent.futures
    # -- reads the stdlib executors' private state
    "futures::ThreadPoolShutdownTest::test_threads_terminate": (
        INTERNAL,
        "counts executor._threads (then blocks its tasks on a semaphore it never releases)",
    ),
    "futures::ProcessPool*ProcessPoolShutdownTest::test_processes_terminate": (
        INTERNAL,
        "counts executor._processes (then blocks its tasks on a semaphore it never releases)",
    ),
    "futures::ThreadPoolShutdownTest::test_context_manager_shutdown": (
        INTERNAL,
        "joins executor._threads",
    ),
    "futures::ThreadPoolShutdownTest::test_del_shutdown": (INTERNAL, "joins executor._threads"),
    "futures::ThreadPoolShutdownTest::test_shutdown_no_wait": (INTERNAL, "joins executor._threads"),
    "futures::ThreadPoolShutdownTest::test_thread_names_*": (
        INTERNAL,
        "reads the names of executor._threads (thread_name_prefix itself is tested in "
        "tests/test_executor.py)",
    ),
    "futures::ThreadPoolExecutorTest::test_default_workers": (
        INTERNAL,
        "reads executor._max_workers (and see compat.md, 'Default number of workers')",
    ),
    "futures::ThreadPoolExecutorTest::test_saturation": (
        INTERNAL,
        "reads executor._max_workers and executor._threads",
    ),
    "futures::ThreadPoolExecutorTest::test_idle_thread_reuse": (
        INTERNAL,
        "counts executor._threads",
    ),
    "futures::*FailingInitializerTest::test_initializer": (
        INTERNAL,
        "polls executor._broken (and see compat.md, 'No broken pool')",
    ),
    "futures::ProcessPool*ProcessPoolShutdownTest::test_context_manager_shutdown": (
        INTERNAL,
        "joins executor._processes",
    ),
    "futures::ProcessPool*ProcessPoolShutdownTest::test_del_shutdown": (
        INTERNAL,
        "joins executor._executor_manager_thread, _processes and _call_queue",
    ),
    "futures::ProcessPool*ProcessPoolShutdownTest::test_shutdown_no_wait": (
        INTERNAL,
        "joins executor._executor_manager_thread, _processes and _call_queue",
    ),
    "futures::ProcessPool*ProcessPoolExecutorTest::test_killed_child": (
        INTERNAL,
        "terminates a process taken from executor._processes (and see compat.md, 'No broken pool')",
    ),
    "futures::ProcessPool*ProcessPoolExecutorTest::test_saturation": (
        INTERNAL,
        "reads executor._max_workers and executor._processes",
    ),
    "futures::ProcessPool*ProcessPoolExecutorTest::test_idle_process_reuse_*": (
        INTERNAL,
        "reads executor._max_workers and executor._processes",
    ),
    "futures::ProcessPool*ProcessPoolExecutorTest::test_max_tasks_per_child_defaults_to_spawn_context": (
        INTERNAL,
        "reads executor._mp_context (polytask's default start method is spawn)",
    ),
    "futures::ProcessPoolSpawnProcessPoolExecutorTest::test_max_tasks_per_child": (
        INTERNAL,
        "counts executor._processes",
    ),
    "futures::ProcessPoolForkserverProcessPoolExecutorTest::test_max_tasks_per_child": (
        INTERNAL,
        "counts executor._processes",
    ),
    "futures::ProcessPool*ProcessPoolExecutorTest::test_traceback": (
        INTERNAL,
        "checks the class concurrent.futures.process._RemoteTraceback; polytask attaches "
        "its own RemoteTraceback, with the same .tb text",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_shutdown_deadlock_pickle": (
        INTERNAL,
        "joins executor._executor_manager_thread",
    ),
    # -- documented differences
    "futures::ProcessPoolForkserver*": (
        DIFFERENCE,
        "mp_context=get_context('forkserver') gives spawn workers ('forkserver'): these "
        "are the ProcessPoolSpawn* tests again, which run",
    ),
    "futures::ProcessPoolForkProcessPoolExecutorTest::test_max_tasks_per_child": (
        DIFFERENCE,
        "expects ValueError for max_tasks_per_child with fork; polytask supports it "
        "('max_tasks_per_child with fork')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_crash_*": (
        DIFFERENCE,
        "expects BrokenProcessPool; a crash fails only its task, with WorkerCrashed "
        "('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_shutdown_deadlock": (
        DIFFERENCE,
        "expects BrokenProcessPool after a crash; polytask raises WorkerCrashed ('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_error_at_task_unpickle": (
        DIFFERENCE,
        "expects BrokenProcessPool; an argument the worker cannot unpickle fails its task "
        "with SerializationError ('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_exit_at_task_unpickle": (
        DIFFERENCE,
        "expects BrokenProcessPool; an argument whose unpickling exits fails its task "
        "('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_error_during_result_unpickle_in_result_handler": (
        DIFFERENCE,
        "expects BrokenProcessPool; a result the caller cannot unpickle fails its task "
        "with SerializationError ('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_exit_during_result_unpickle_in_result_handler": (
        DIFFERENCE,
        "expects BrokenProcessPool; a result whose unpickling exits fails its task "
        "('No broken pool')",
    ),
    "futures::ProcessPool*ExecutorDeadlockTest::test_exit_during_*": (
        DIFFERENCE,
        "expects the task's SystemExit re-raised in the caller; sys.exit() in a process "
        "task ends its worker, and the task fails with WorkerCrashed ('sys.exit in a task')",
    ),
    # ============================================================ multiprocessing
    "mp_pool::With*TestPool::test_make_pool": (
        INTERNAL,
        "counts pool._pool (the ValueError for 0 and -1 workers, which it checks first, passes)",
    ),
    "mp_pool::With*TestPool::test_resource_warning": (
        INTERNAL,
        "sets pool._state to multiprocessing.pool.RUN and expects its ResourceWarning",
    ),
    "mp_pool::WithProcessesTestPoolWorkerLifetime::test_pool_worker_lifetime": (
        INTERNAL,
        "reads the pids of pool._pool and calls pool._repopulate_pool() (recycling itself "
        "is tested by test_pool_worker_lifetime_early_close and tests/test_pool.py)",
    ),
    "mp_pool::WithProcessesTestPool::test_traceback": (
        DIFFERENCE,
        "checks for multiprocessing.pool.RemoteTraceback as __cause__; polytask attaches its "
        "own RemoteTraceback, with the same .tb text ('Remote tracebacks')",
    ),
    "mp_pool::WithProcessesTestPool::test_map_unplicklable": (
        DIFFERENCE,
        "expects the pickler's own RuntimeError; polytask raises SerializationError naming "
        "the argument, with that error as __cause__ ('Errors of pickling')",
    ),
    "mp_pool::WithProcessesTestPoolWorkerErrors::test_unpickleable_result": (
        DIFFERENCE,
        "expects MaybeEncodingError; polytask raises SerializationError ('Errors of pickling')",
    ),
    "mp_pool::TestInitializers::test_pool_initializer": (
        DIFFERENCE,
        "a pool that never runs a task starts no worker, so its initializer never runs "
        "('Workers start on demand')",
    ),
    "mp_pool::With*TestPool::test_map_no_failfast": (
        DIFFERENCE,
        "expects join() to wait for every item of a map that failed; polytask's map drops "
        "the items no worker has started (passes only when both had started) "
        "('multiprocessing.Pool')",
    ),
    # ==================================================================== joblib
    "joblib::test_nested_loop[loky-polytask]": (
        DIFFERENCE,
        "Parallel(backend='polytask') inside a loky worker, a process that never imported "
        "polytask: joblib has no plugin discovery ('joblib: the backend in other processes')",
    ),
    "joblib::test_nested_loop[back_compat_backend-polytask]": (
        DIFFERENCE,
        "the same inside the workers of a LokyBackend subclass ('joblib: the backend in "
        "other processes')",
    ),
}
