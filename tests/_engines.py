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

import gc
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import open_fds

#: Processes of the session's engines; their descendants are the engines' too.
ENGINE_PIDS: set[int] = set()
#: Give the current pids of engine processes started later (a restarted Dask worker
#: is a child of this process: its nanny lives here).
ENGINE_PROVIDERS: list[Callable[[], set[int]]] = []

#: File descriptors (number: target) an engine keeps for the life of the process
#: after it was closed (Ray's C++ core keeps its epoll/eventfd/timerfd, a socket and
#: its log files).
ENGINE_FDS: dict[str, dict[int, str]] = {}

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
    fds_before = open_fds()
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
        kept = open_fds()
        ENGINE_FDS["ray"] = {
            fd: target
            for fd, target in kept.items()
            if fds_before.get(fd) != target
            and (
                target.startswith(("anon_inode:[event", "anon_inode:[timerfd", "socket:"))
                or "/ray/session_" in target
            )
        }
        # Ray's processes are started by ray.init; let the last of them exit.
        time.sleep(0.2)
        _check_gone(procs, "the local Ray")


# --------------------------------------------------------------------------- the hub's objects


def hub_count(engine: str) -> int:
    """How many objects the engine's primitive hub holds now."""
    from polytask.backends import get_backend
    from polytask.backends.cluster.sync import DaskLink, RayLink

    link = DaskLink(get_backend("dask").client) if engine == "dask" else RayLink()  # type: ignore[attr-defined]
    link.setup()  # the hub exists once any primitive was made
    return int(link.call("", "", None, "count", []))


def settled_hub_count(engine: str, timeout: float = 10.0) -> int:
    """The count once earlier tests' dropped primitives have been forgotten."""
    gc.collect()
    deadline = time.monotonic() + timeout
    last = hub_count(engine)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = hub_count(engine)
        if now == last:
            return now
        last = now
    return last


def wait_hub_count_at_most(engine: str, limit: int, timeout: float = 15.0) -> int:
    """Collect garbage and wait (forgetting is sent without waiting) until count <= limit."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = hub_count(engine)
        if now <= limit or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def use_all(lock: Any, event: Any, sem: Any, ch: Any) -> bool:
    """A task using copies of the caller's primitives (dropped on the worker after)."""
    assert lock.acquire(timeout=30)
    lock.release()
    event.set()
    with sem:
        pass
    ch.put("from the task", timeout=30)
    return True


def drain_later(ch: Any, delay: float) -> list[Any]:
    time.sleep(delay)
    out = []
    while True:
        try:
            out.append(ch.get(timeout=5))
        except Exception:  # ChannelClosed when drained; queue.Empty if the channel was lost
            return out


def check_dropped_primitives_are_forgotten(engine: str) -> None:
    """Primitives made and dropped by their creator leave the hub as it was."""
    import pickle

    import polytask as pt
    from polytask.backends import get_backend

    be = get_backend(engine)
    base = settled_hub_count(engine)
    lock, event, sem = be.primitive("Lock"), be.primitive("Event"), be.primitive("Semaphore", 2)
    cond = be.primitive("Condition")  # and the RLock it makes for itself
    ch = be.primitive("Channel", 5)
    assert pt.spawn(use_all, lock, event, sem, ch, backend=be).result(timeout=60) is True
    with cond:
        cond.notify_all()
    ch.put("unread", timeout=30)
    ch.close()  # a closed channel with unread items
    assert hub_count(engine) >= base + 6
    # The task's copies are gone from its worker: nothing was forgotten for them.
    time.sleep(0.3)  # deliberate: time for a (wrong) forget from the worker to arrive
    assert event.is_set() and len(ch) == 2

    # A copy unpickled back into the creator keeps the object when the original goes.
    assert lock.acquire(timeout=30)
    copy = pickle.loads(pickle.dumps(lock))
    del lock
    gc.collect()
    time.sleep(0.5)  # deliberate: time for a (wrong) forget of the original to arrive
    assert copy.locked(), "the hub forgot a lock its creator still holds"
    copy.release()

    del copy, event, sem, cond, ch
    left = wait_hub_count_at_most(engine, base)
    assert left <= base, f"the hub kept {left - base} dropped primitives"


def check_a_task_keeps_what_it_was_given(engine: str) -> None:
    """A task may use a primitive after its creator dropped every handle."""
    import polytask as pt
    from polytask.backends import get_backend

    be = get_backend(engine)
    base = settled_hub_count(engine)
    ch = be.primitive("Channel")
    ch.put_many([1, 2, 3], timeout=30)
    ch.close()
    task = pt.spawn(drain_later, ch, 1.0, backend=be)
    del ch
    gc.collect()
    assert task.result(timeout=60) == [1, 2, 3]
    del task
    assert wait_hub_count_at_most(engine, base) <= base


def channel_made_in_a_task(engine: str, n: int) -> Any:
    from polytask.backends import get_backend

    # The engine's own factory (pt.Channel(backend=engine) needs the backend module
    # imported first in this process).
    ch: Any = get_backend(engine).primitive("Channel")
    ch.put_many(range(n), timeout=30)
    ch.close()
    return ch  # the task's own handle goes when it returns


def check_made_in_a_task_outlives_it(engine: str) -> None:
    """A primitive a task makes and returns keeps its state for the caller."""
    import polytask as pt

    ch = pt.spawn(channel_made_in_a_task, engine, 5, backend=engine).result(timeout=60)
    time.sleep(0.5)  # time for a (wrong) forget from the worker to arrive
    gc.collect()
    assert ch.closed
    assert drain_later(ch, 0) == [0, 1, 2, 3, 4]


#: A script that starts a pool on a cluster polytask starts itself, then waits to be
#: SIGKILLed (run under tests/_harness.py, which lists what it leaves behind).
KILLED_OWNER = """
import os, sys, time
import polytask as pt


def inc(x):
    return x + 1


def touch_then_sleep(path, seconds):
    open(path, "w").close()
    time.sleep(seconds)


if __name__ == "__main__":
    ready, backend = sys.argv[1], sys.argv[2]
    pool = pt.Pool(2 if backend == "dask" else 1, backend=backend)
    assert pool.map(inc, range(20)) == list(range(1, 21))
    # A worker is running a task at the kill (a cluster task is "running" once sent).
    busy = pool.submit(touch_then_sleep, ready + ".busy", 120)
    deadline = time.monotonic() + 60
    while not os.path.exists(ready + ".busy"):
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.01)
    open(ready, "w").write("ready")
    time.sleep(120)
"""
