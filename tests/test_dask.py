"""The Dask backend on a real LocalCluster (the session's, see _engines.py)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import polytask as pt
from helpers import wait_for_file
from polytask.backends import get_backend, make_backend

pytestmark = pytest.mark.usefixtures("dask_cluster")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def add(a: int, b: int = 0) -> int:
    return a + b


def whoami() -> tuple[str, int]:
    return pt.current_task().name, os.getpid()


def boom(x: int) -> None:
    raise ValueError(f"bad value {x}")


def die() -> None:
    os._exit(7)


def sleep_then_touch(seconds: float, path: str) -> str:
    Path(path + ".started").touch()  # a test can wait for it: the task runs
    time.sleep(seconds)
    Path(path).write_text("ran to the end")
    return "done"


def give_lambda() -> object:
    return lambda: 1


def hold(lock: object, path: str, seconds: float) -> bool:
    with lock:  # type: ignore[attr-defined]
        with open(path, "a") as f:
            f.write("in\n")
        time.sleep(seconds)
        with open(path, "a") as f:
            f.write("out\n")
    return True


def wait_event(ev: pt.Event, timeout: float) -> bool:
    return ev.wait(timeout)


def produce(ch: pt.Channel[int], n: int) -> int:
    for i in range(n):
        ch.put(i, timeout=30)
    ch.close()
    return n


def run_script(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_results_lambdas_and_names() -> None:
    assert pt.spawn(add, 2, b=3, backend="dask").result(timeout=60) == 5
    assert pt.spawn(lambda x: x * 2, 21, backend="dask").result(timeout=60) == 42
    name, pid = pt.spawn(whoami, backend="dask", name="me").result(timeout=60)
    assert name == "me"
    assert pid != os.getpid()


def test_exception_keeps_its_type_and_remote_traceback() -> None:
    t = pt.spawn(boom, 3, backend="dask")
    with pytest.raises(ValueError, match="bad value 3") as info:
        t.result(timeout=60)
    assert "in boom" in str(info.value.__cause__)
    assert type(info.value.__cause__).__name__ == "RemoteTraceback"


def test_unpicklable_argument_fails_at_the_call() -> None:
    with pytest.raises(pt.SerializationError, match="argument 1"):
        pt.spawn(add, threading.Lock(), backend="dask")


def test_unpicklable_result_is_a_serialization_error() -> None:
    t = pt.spawn(give_lambda, backend="dask")
    # cloudpickle can ship a lambda: it comes back callable.
    assert t.result(timeout=60)() == 1  # type: ignore[operator]
    t = pt.spawn(threading.Lock, backend="dask")
    with pytest.raises(pt.SerializationError, match="cannot be pickled"):
        t.result(timeout=60)


def test_a_zero_timeout_never_runs_the_task(tmp_path: Path) -> None:
    # A run-time limit of 0 has expired before the task starts (tests/test_run_limits.py):
    # the function is never called; inf is no limit.
    marker = tmp_path / "m"
    for _ in range(3):
        t = pt.spawn(sleep_then_touch, 0, str(marker), backend="dask", timeout=0)
        with pytest.raises(pt.TaskTimeout, match="was not run"):
            t.result(timeout=60)
    assert list(tmp_path.iterdir()) == []
    t = pt.spawn(sleep_then_touch, 0, str(marker), backend="dask", timeout=float("inf"))
    assert t.result(timeout=60) == "done" and marker.exists()


def test_without_a_child_a_timeout_fails_the_task_but_dask_lets_it_run(tmp_path: Path) -> None:
    # By default a task with a timeout runs in a child process that the timeout kills
    # (tests/test_cluster_kill.py); killable=False runs it in the worker's thread.
    assert get_backend("dask").can_kill_running is False  # type: ignore[attr-defined]
    be = make_backend("dask", killable=False)
    marker = tmp_path / "marker"
    t = pt.spawn(sleep_then_touch, 2.5, str(marker), backend=be, timeout=0.3)
    with pytest.raises(pt.TaskTimeout, match="Dask cannot stop"):
        t.result(timeout=30)
    # Told at the deadline, not when the work ends (it writes the marker first);
    # 2.5 s of work leave a loaded machine room to tell at 0.3 s. No clock read.
    assert not marker.exists()
    # As documented: the running function is not interrupted, it runs to its end.
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "ran to the end"


def test_cancel_running_and_pending(tmp_path: Path, dask_cluster: object) -> None:
    slots = sum(dask_cluster.nthreads().values())  # type: ignore[attr-defined]
    running = [
        pt.spawn(sleep_then_touch, 1.5, str(tmp_path / f"r{i}"), backend="dask")
        for i in range(slots)
    ]
    pending = pt.spawn(sleep_then_touch, 0.0, str(tmp_path / "pending"), backend="dask")
    for i in range(slots):  # every slot is busy: `pending` waits in the queue
        wait_for_file(tmp_path / f"r{i}.started", 60)
    assert pending.cancel() is True
    assert running[0].cancel() is True
    with pytest.raises(pt.Cancelled):
        running[0].result(timeout=10)
    with pytest.raises(pt.Cancelled):
        pending.result(timeout=10)
    assert running[1].result(timeout=60) == "done"
    time.sleep(1.0)  # deliberate: time for a (wrongly) started `pending` to write its file
    assert not (tmp_path / "pending").exists()  # a queued task never starts


def test_worker_death_is_worker_crashed_and_the_cluster_goes_on() -> None:
    t = pt.spawn(die, backend="dask")
    with pytest.raises(pt.WorkerCrashed, match="'die' died"):
        t.result(timeout=60)
    assert pt.spawn(add, 1, 1, backend="dask").result(timeout=60) == 2


def test_group_failure_cancels_siblings(tmp_path: Path) -> None:
    with pytest.raises(ExceptionGroup) as info:
        with pt.TaskGroup(backend="dask") as g:
            slow = g.spawn(sleep_then_touch, 5.0, str(tmp_path / "slow"))
            g.spawn(boom, 1)
    assert info.group_contains(ValueError)
    assert slow.cancelled()


def test_join_existing_scheduler_by_address(dask_cluster: object) -> None:
    from polytask.backends.cluster.dask import DaskBackend

    address = dask_cluster.scheduler.address  # type: ignore[attr-defined]
    be = DaskBackend(address=address)
    try:
        assert pt.spawn(add, 40, 2, backend=be).result(timeout=60) == 42
    finally:
        be.shutdown()
    assert be.client.status == "closed"
    assert dask_cluster.status == "running"  # type: ignore[attr-defined]  # only our client closed


def test_borrowed_client_is_never_closed(dask_cluster: object) -> None:
    from polytask.backends.cluster.dask import DaskBackend

    be = DaskBackend(client=dask_cluster)
    assert pt.spawn(add, 1, backend=be).result(timeout=60) == 1
    be.shutdown()
    assert dask_cluster.status == "running"  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="shut down"):
        be.spawn(add, (1,), {})


def test_bad_options_fail_at_the_call(dask_cluster: object) -> None:
    from polytask.backends.cluster.dask import DaskBackend

    with pytest.raises(ValueError, match="max_workers"):
        DaskBackend(max_workers=0)
    with pytest.raises(ValueError, match="not both"):
        DaskBackend(address="tcp://127.0.0.1:1", client=dask_cluster)
    with pytest.raises(TypeError, match="distributed.Client"):
        DaskBackend(client="tcp://127.0.0.1:1")


def test_lock_is_exclusive_across_workers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pt.TaskGroup(backend="dask") as g:
        lock = g.Lock()
        a = g.spawn(hold, lock, str(log), 0.3)
        b = g.spawn(hold, lock, str(log), 0.3)
    assert a.result() and b.result()
    assert log.read_text() == "in\nout\nin\nout\n"
    assert lock.acquire(timeout=5)
    assert lock.locked()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.2) is False
    lock.release()
    assert isinstance(lock, pt.Lock)


def test_event_and_semaphore() -> None:
    be = get_backend("dask")
    ev = be.primitive("Event")
    t = pt.spawn(wait_event, ev, 30.0, backend="dask")
    time.sleep(0.3)  # deliberate: it keeps waiting while the event is not set
    assert not t.done()
    ev.set()
    assert t.result(timeout=60) is True
    assert ev.is_set()
    ev.clear()
    assert ev.wait(0.1) is False
    sem = pt.Semaphore(2, backend="dask")
    assert sem.acquire(timeout=5) and sem.acquire(timeout=5)
    assert sem.acquire(timeout=0.2) is False
    sem.release(2)
    with sem:
        pass


def test_channel_across_tasks() -> None:
    ch: pt.Channel[int] = pt.Channel(maxsize=10, backend="dask")
    t = pt.spawn(produce, ch, 25, backend="dask")
    assert list(ch) == list(range(25))
    assert t.result(timeout=60) == 25
    assert ch.closed
    with pytest.raises(pt.ChannelClosed):
        ch.put(1)
    empty: pt.Channel[int] = pt.Channel(backend="dask")
    with pytest.raises(pt.ChannelEmpty, match="empty") as caught:
        empty.get(timeout=0.2)
    assert isinstance(caught.value, queue.Empty)


def test_missing_engine_is_backend_unavailable() -> None:
    r = run_script(
        """
        import sys
        sys.modules["distributed"] = None
        import polytask as pt
        try:
            pt.spawn(print, 1, backend="dask")
        except ImportError as exc:
            assert isinstance(exc, pt.BackendUnavailable), type(exc)
            print(exc)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'polytask[dask]'" in r.stdout


@pytest.mark.slow
def test_own_local_cluster_is_closed_with_its_processes() -> None:
    r = run_script(
        """
        import psutil, polytask as pt
        from polytask.backends.cluster.dask import DaskBackend
        be = DaskBackend(max_workers=1)
        assert pt.spawn(sum, [1, 2], backend=be).result(timeout=60) == 3
        assert len(psutil.Process().children(recursive=True)) >= 2
        be.shutdown()
        def cmd(p):
            try:
                return " ".join(p.cmdline())
            except psutil.Error:  # a zombie (still ours: wait_procs checks it goes)
                return ""
        left = [p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in cmd(p)]
        gone, alive = psutil.wait_procs(left, timeout=20)
        print("ALIVE", [p.pid for p in alive])
        """
    )
    assert r.returncode == 0, r.stderr
    assert "ALIVE []" in r.stdout


def crash_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(9)
    return x * 2


def test_pool_map_batches_and_isolates_a_crash() -> None:
    with pt.Pool(2, backend="dask") as pool:
        assert pool.map(add, range(3000)) == list(range(3000))
        tasks = [pool.submit(crash_on, x, 5) for x in range(10)]
        results = []
        for t in tasks:
            try:
                results.append(t.result(timeout=120))
            except pt.WorkerCrashed:
                results.append("crashed")
        # The worker is replaced and the pool goes on.
        assert pool.map(add, range(100)) == list(range(100))
    assert results[5] == "crashed"
    # As documented: a dying Dask worker fails every task it held at that moment (its
    # other threads, tasks queued to it), since Dask cannot tell which one killed it.
    for x, r in enumerate(results):
        assert r in (x * 2, "crashed")
    assert results.count("crashed") < 10


# --------------------------------------------------------------------------- the hub, no engine


def test_hub_state_machine_without_an_engine() -> None:
    import asyncio

    from polytask.backends.cluster.hub import SyncHub

    async def scenario() -> None:
        hub = SyncHub()
        call = hub.call
        assert await call("l", "RLock", 0, "acquire", ["a", None]) == ["ok", True]
        assert await call("l", "RLock", 0, "acquire", ["a", 0.0]) == ["ok", True]
        assert await call("l", "RLock", 0, "acquire", ["b", 0.05]) == ["ok", False]
        assert (await call("l", "RLock", 0, "release", ["b"]))[0] == "RuntimeError"
        # A condition over the RLock: wait releases it fully, notify wakes the waiter.
        waiter = asyncio.ensure_future(call("c", "Condition", ["l", "RLock"], "wait", ["a", 5]))
        await asyncio.sleep(0.01)
        assert await call("l", "RLock", 0, "acquire", ["b", 0.0]) == ["ok", True]
        assert await call("c", "Condition", ["l", "RLock"], "notify", ["b", 1]) == ["ok", None]
        await call("l", "RLock", 0, "release", ["b"])
        assert await waiter == ["ok", True]
        # Barrier: a timeout breaks it for everyone until reset.
        first = asyncio.ensure_future(call("b", "Barrier", 3, "wait", [5]))
        await asyncio.sleep(0.01)
        assert (await call("b", "Barrier", 3, "wait", [0.05]))[0] == "BrokenBarrierError"
        assert (await first)[0] == "BrokenBarrierError"
        await call("b", "Barrier", 3, "reset", [])
        assert await call("b", "Barrier", 3, "state", []) == ["ok", [3, 0, False]]
        # Bounded semaphore and channel.
        assert (await call("s", "BoundedSemaphore", 1, "release", [1]))[0] == "ValueError"
        assert await call("q", "Channel", 1, "put", [b"x", None]) == ["ok", "ok"]
        assert await call("q", "Channel", 1, "put", [b"y", 0.01]) == ["ok", "full"]
        await call("q", "Channel", 1, "close", [])
        assert await call("q", "Channel", 1, "get", [None]) == ["ok", ["ok", b"x"]]
        assert await call("q", "Channel", 1, "get", [None]) == ["ok", ["closed", None]]
        assert (await call("z", "Nope", 1, "get", [None]))[0] == "ValueError"
        # The hub's own operations: count its objects, forget one (and what it held).
        assert await call("", "", None, "count", []) == ["ok", 5]  # l, c, b, s, q
        assert await call("q", "Channel", 1, "put", [b"z", None]) == ["ok", "closed"]
        assert await call("q", "", None, "forget", []) == ["ok", None]
        assert await call("", "", None, "count", []) == ["ok", 4]
        assert await call("q", "", None, "forget", []) == ["ok", None]  # already gone: fine
        # Used again (a copy that outlived its creator's stake), it is an error, never
        # a new empty object; a forgotten lock is not silently unlocked either.
        status, message = await call("q", "Channel", 1, "size", [])
        assert status == "RuntimeError" and "was dropped" in message
        assert await call("l2", "Lock", None, "acquire", ["me", None]) == ["ok", True]
        await call("l2", "", None, "forget", [])
        assert (await call("l2", "Lock", None, "locked", []))[0] == "RuntimeError"

    asyncio.run(asyncio.wait_for(scenario(), 30))


# --------------------------------------------------------------------------- primitives' lifetime


def test_dropped_primitives_leave_the_scheduler() -> None:
    from _engines import check_dropped_primitives_are_forgotten

    check_dropped_primitives_are_forgotten("dask")


def test_a_task_keeps_a_primitive_its_creator_dropped() -> None:
    from _engines import check_a_task_keeps_what_it_was_given

    check_a_task_keeps_what_it_was_given("dask")


def test_a_primitive_made_in_a_task_outlives_it() -> None:
    from _engines import check_made_in_a_task_outlives_it

    check_made_in_a_task_outlives_it("dask")


# --------------------------------------------------------------------------- joining, owning


def scheduler_clients(dask_scheduler: object = None) -> list[str]:
    return sorted(dask_scheduler.clients)  # type: ignore[attr-defined]


def test_pool_joins_a_running_scheduler_by_address(dask_cluster: object) -> None:
    cluster: Any = dask_cluster
    address = cluster.scheduler.address
    worker_pids = set(cluster.run(os.getpid).values())
    before = set(cluster.run_on_scheduler(scheduler_clients))
    with pt.Pool(2, backend="dask", address=address) as pool:
        client = pool._backend.client  # type: ignore[attr-defined]
        # Its own Client to that scheduler, not the session's default client.
        assert client is not cluster and client.scheduler.address == address
        assert client.id in set(cluster.run_on_scheduler(scheduler_clients)) - before
        assert pool.map(add, range(500)) == list(range(500))
        _, pid = pool.submit(whoami).result(timeout=60)
        assert pid in worker_pids  # ran on the scheduler's workers
    assert client.status == "closed"  # the Client polytask made is closed...
    deadline = time.monotonic() + 10
    while client.id in cluster.run_on_scheduler(scheduler_clients):
        assert time.monotonic() < deadline, "the scheduler still lists the pool's client"
        time.sleep(0.05)
    assert cluster.status == "running"  # ...the scheduler it joined is not
    assert pt.spawn(add, 1, 1, backend="dask").result(timeout=60) == 2


def test_sigkilled_owner_leaves_no_local_cluster_process(tmp_path: Path) -> None:
    from _engines import KILLED_OWNER
    from helpers import Harness

    ready = tmp_path / "ready"
    with Harness(KILLED_OWNER, tmp_path, str(ready), "dask") as h:
        h.wait_for_line(ready, "ready", timeout=120)
        workers = [p for p in h.descendants() if "spawn_main" in _cmdline(p)]
        assert len(workers) >= 2, [_cmdline(p) for p in h.descendants()]
        h.signal(signal.SIGKILL)
        assert h.wait() == -signal.SIGKILL
        assert h.leftovers(within=10) == []


def test_primitives_by_name_in_a_fresh_process_start_their_own_cluster() -> None:
    # No backend imported, no client: pt.Channel/pt.Lock(backend="dask") load the
    # backend, start a LocalCluster as pt.spawn would, and close it at exit.
    proc = run_script(
        """
        import polytask as pt
        ch, lock = pt.Channel(backend="dask"), pt.Lock(backend="dask")
        with lock:
            ch.put("hello", timeout=60)
        print(ch.get(timeout=60), type(ch).__name__)
        ch.close()
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["hello", "HubChannel"]


def spawn_child_and_wait(x: int) -> int:
    return pt.spawn(add, x, 1, backend="dask").result(timeout=60)


def test_tasks_waiting_for_their_own_tasks_do_not_starve_the_workers(dask_cluster: object) -> None:
    # More parents than worker threads (2 workers x 3 threads): each waits for a
    # child it spawned. A parent gives up its thread slot when it submits, so the
    # children get threads; else every thread waits and no child ever starts.
    with pt.TaskGroup(backend="dask") as g:
        parents = [g.spawn(spawn_child_and_wait, i, timeout=90) for i in range(10)]
    assert [p.result() for p in parents] == [i + 1 for i in range(10)]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # ended (or a zombie) since it was listed
        return ""
