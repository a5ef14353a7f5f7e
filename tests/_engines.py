"""One Dask cluster and one local Ray per test session (both start in seconds, not ms).

``dask_cluster`` starts a LocalCluster (2 worker processes, 1 thread each) and
makes its Client the Dask default client, so every ``DaskBackend()`` made in
the session (the shared default too) uses it and never closes it.
``ray_session`` calls ``ray.init`` in this process, so every ``RayBackend()``
borrows it. Their processes (and everything they start later, e.g. a worker
that replaces a dead one) are listed in ``ENGINE_PIDS`` so the per-test stray
process check leaves them alone; at session end the fixtures close the
engines and check that every one of those processes is gone.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

#: Processes of the session's engines; their descendants are the engines' too.
ENGINE_PIDS: set[int] = set()
#: Give the current pids of engine processes started later (a restarted Dask worker
#: is a child of this process: its nanny lives here).
ENGINE_PROVIDERS: list[Callable[[], set[int]]] = []

#: File descriptors an engine keeps for the life of the process after it was closed
#: (Ray's C++ core keeps its epoll/eventfd/timerfd, a socket and its log files).
ENGINE_FDS: dict[str, int] = {}

N_WORKERS = 2
#: Dask cannot stop a running task: the contract tests leave a few 30 s naps running
#: (cancelled, timed out); spare threads keep them from delaying the next tests.
DASK_THREADS = 3
_TESTS = str(Path(__file__).resolve().parent)
_SRC = str(Path(__file__).resolve().parents[1] / "src")


def is_engine_process(p: psutil.Process) -> bool:
    """True if ``p`` belongs to a session engine (it or an ancestor was recorded)."""
    if not ENGINE_PIDS and not ENGINE_PROVIDERS:
        return False
    pids = set(ENGINE_PIDS)
    for provider in ENGINE_PROVIDERS:
        pids |= provider()
    try:
        if p.pid in pids:
            return True
        return any(a.pid in pids for a in p.parents())
    except psutil.Error:
        return False


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def _record(before: set[int]) -> list[psutil.Process]:
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    ENGINE_PIDS.update(p.pid for p in new)
    return new


def _check_gone(procs: list[psutil.Process], what: str, timeout: float = 30.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        ENGINE_PIDS.discard(p.pid)
        try:
            p.kill()
        except psutil.Error:
            pass
    for p in procs:
        ENGINE_PIDS.discard(p.pid)
    if alive:
        pytest.fail(f"{what} left processes after closing: {[p.pid for p in alive]}")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """The session's LocalCluster; its Client is the Dask default client."""
    from multiprocessing import resource_tracker

    import dask
    import distributed

    tracker_before = getattr(resource_tracker._resource_tracker, "_pid", None)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = distributed.LocalCluster(
                n_workers=N_WORKERS,
                threads_per_worker=DASK_THREADS,
                processes=True,
                dashboard_address=None,
            )
        client = distributed.Client(cluster)
    procs = _record(before)

    def worker_pids() -> set[int]:
        pids = set()
        for nanny in list(cluster.workers.values()):
            proc = getattr(getattr(nanny, "process", None), "process", None)
            if proc is not None and proc.pid:
                pids.add(proc.pid)
        return pids

    ENGINE_PROVIDERS.append(worker_pids)
    try:
        yield client
    finally:
        ENGINE_PROVIDERS.remove(worker_pids)
        procs += [psutil.Process(pid) for pid in worker_pids() if psutil.pid_exists(pid)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.close()
            cluster.close(timeout=30)
            # multiprocessing's helper outlives the cluster otherwise (until exit).
            if tracker_before is None and getattr(resource_tracker._resource_tracker, "_pid", None):
                resource_tracker._resource_tracker._stop()
        _check_gone(procs, "the Dask LocalCluster")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray started in this process with 2 CPUs (every RayBackend borrows it)."""
    import ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    fds_before = _fds()
    old = os.environ.get("PYTHONPATH")
    # Ray workers are started by the raylet: they need the tests' modules on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (_TESTS, _SRC, old) if x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = ray.init(
                num_cpus=N_WORKERS,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    procs = _record(before)
    try:
        yield ctx
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.shutdown()
        kept = _fds()
        ENGINE_FDS["ray"] = sum(
            1
            for fd, target in kept.items()
            if fds_before.get(fd) != target
            and (
                target.startswith(("anon_inode:[event", "anon_inode:[timerfd", "socket:"))
                or "/ray/session_" in target
            )
        )
        # Ray's processes are started by ray.init; let the last of them exit.
        time.sleep(0.2)
        _check_gone(procs, "the local Ray")
