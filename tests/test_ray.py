"""The Ray backend on a real local Ray (the session's, see _engines.py)."""

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

import psutil
import pytest

import polytask as pt
from helpers import wait_for_file
from polytask.backends import get_backend

pytestmark = pytest.mark.usefixtures("ray_session")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def add(a: int, b: int = 0) -> int:
    return a + b


def whoami() -> tuple[str, int]:
    return pt.current_task().name, os.getpid()


def boom(x: int) -> None:
    raise KeyError(f"missing {x}")


def die() -> None:
    os._exit(7)


def sleep_then_touch(seconds: float, path: str) -> str:
    Path(path + ".started").touch()  # a test can wait for it: the task runs
    time.sleep(seconds)
    Path(path).write_text("ran to the end")
    return "done"


def hold(lock: pt.Lock, path: str, seconds: float) -> bool:
    with lock:
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


def run_script(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC, RAY_ADDRESS="")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_results_lambdas_and_names() -> None:
    assert pt.spawn(add, 2, b=3, backend="ray").result(timeout=60) == 5
    assert pt.spawn(lambda x: x * 2, 21, backend="ray").result(timeout=60) == 42
    name, pid = pt.spawn(whoami, backend="ray", name="me").result(timeout=60)
    assert name == "me"
    assert pid != os.getpid()


def test_exception_keeps_its_type_and_remote_traceback() -> None:
    t = pt.spawn(boom, 3, backend="ray")
    with pytest.raises(KeyError, match="missing 3") as info:
        t.result(timeout=60)
    assert "in boom" in str(info.value.__cause__)


def test_unpicklable_argument_and_result() -> None:
    with pytest.raises(pt.SerializationError, match="argument 1"):
        pt.spawn(add, threading.Lock(), backend="ray")
    with pytest.raises(pt.SerializationError, match="cannot be pickled"):
        pt.spawn(threading.Lock, backend="ray").result(timeout=60)


def test_a_zero_timeout_never_runs_the_task(tmp_path: Path) -> None:
    # A run-time limit of 0 has expired before the task starts (tests/test_run_limits.py):
    # the function is never called; inf is no limit.
    marker = tmp_path / "m"
    for _ in range(3):
        t = pt.spawn(sleep_then_touch, 0, str(marker), backend="ray", timeout=0)
        with pytest.raises(pt.TaskTimeout, match="was not run"):
            t.result(timeout=60)
    assert list(tmp_path.iterdir()) == []
    t = pt.spawn(sleep_then_touch, 0, str(marker), backend="ray", timeout=float("inf"))
    assert t.result(timeout=60) == "done" and marker.exists()


def test_timeout_kills_the_running_task(tmp_path: Path) -> None:
    assert get_backend("ray").can_kill_running is True  # type: ignore[attr-defined]
    marker = tmp_path / "marker"
    t = pt.spawn(sleep_then_touch, 2.0, str(marker), backend="ray", timeout=0.5)
    with pytest.raises(pt.TaskTimeout, match="killed"):
        t.result(timeout=30)
    time.sleep(2.5)  # deliberate: past when the work would have written its marker
    assert not marker.exists()  # the worker was killed before it got there
    assert pt.spawn(add, 1, 2, backend="ray").result(timeout=60) == 3


def test_cancel_running_task_kills_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    t = pt.spawn(sleep_then_touch, 2.0, str(marker), backend="ray")
    wait_for_file(str(marker) + ".started", 60)  # running, not merely queued
    assert t.cancel() is True
    with pytest.raises(pt.Cancelled):
        t.result(timeout=10)
    assert t.cancelled()
    time.sleep(2.5)  # deliberate: past when the work would have written its marker
    assert not marker.exists()


def test_worker_death_is_worker_crashed() -> None:
    with pytest.raises(pt.WorkerCrashed, match="'die' died"):
        pt.spawn(die, backend="ray").result(timeout=60)
    assert pt.spawn(add, 1, 1, backend="ray").result(timeout=60) == 2


def test_group_failure_cancels_siblings(tmp_path: Path) -> None:
    with pytest.raises(ExceptionGroup) as info:
        with pt.TaskGroup(backend="ray") as g:
            slow = g.spawn(sleep_then_touch, 5.0, str(tmp_path / "slow"))
            g.spawn(boom, 1)
    assert info.group_contains(KeyError)
    assert slow.cancelled()


def test_borrowed_ray_is_not_shut_down() -> None:
    import ray

    from polytask.backends.cluster.ray import RayBackend

    be = RayBackend()
    assert pt.spawn(add, 4, backend=be).result(timeout=60) == 4
    be.shutdown()
    assert ray.is_initialized()
    with pytest.raises(RuntimeError, match="shut down"):
        be.spawn(add, (1,), {})
    with pytest.raises(ValueError, match="max_workers"):
        RayBackend(max_workers=0)


def test_lock_is_exclusive_across_workers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pt.TaskGroup(backend="ray") as g:
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
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    assert isinstance(lock, pt.Lock)


def test_event_and_semaphore() -> None:
    ev = pt.Event(backend="ray")
    t = pt.spawn(wait_event, ev, 30.0, backend="ray")
    time.sleep(0.3)  # deliberate: it keeps waiting while the event is not set
    assert not t.done()
    ev.set()
    assert t.result(timeout=60) is True
    ev.clear()
    assert ev.wait(0.1) is False
    sem = pt.Semaphore(2, backend="ray")
    assert sem.acquire(timeout=5) and sem.acquire(timeout=5)
    assert sem.acquire(timeout=0.2) is False
    sem.release(2)
    with sem:
        pass


def test_channel_across_tasks() -> None:
    ch: pt.Channel[int] = pt.Channel(maxsize=10, backend="ray")
    t = pt.spawn(produce, ch, 25, backend="ray")
    assert list(ch) == list(range(25))
    assert t.result(timeout=60) == 25
    assert ch.closed
    with pytest.raises(pt.ChannelClosed):
        ch.put(1)
    empty: pt.Channel[int] = pt.Channel(backend="ray")
    with pytest.raises(pt.ChannelEmpty, match="empty") as caught:
        empty.get(timeout=0.2)
    assert isinstance(caught.value, queue.Empty)


def test_missing_engine_is_backend_unavailable() -> None:
    r = run_script(
        """
        import sys
        sys.modules["ray"] = None
        import polytask as pt
        try:
            pt.spawn(print, 1, backend="ray")
        except ImportError as exc:
            assert isinstance(exc, pt.BackendUnavailable), type(exc)
            print(exc)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'polytask[ray]'" in r.stdout


def crash_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(9)
    return x * 2


def test_pool_map_batches_and_isolates_a_crash() -> None:
    with pt.Pool(2, backend="ray") as pool:
        assert pool.map(add, range(3000)) == list(range(3000))
        tasks = [pool.submit(crash_on, x, 5) for x in range(10)]
        results = []
        for t in tasks:
            try:
                results.append(t.result(timeout=120))
            except pt.WorkerCrashed:
                results.append("crashed")
    assert results == [x * 2 if x != 5 else "crashed" for x in range(10)]


# --------------------------------------------------------------------------- primitives' lifetime


def test_a_link_unpickled_where_the_hub_was_made_keeps_its_handle() -> None:
    # Unpickling a Ray actor handle fetches the actor's class from Ray's GCS (no
    # timeout): CI hung 240 s there, in the process that had made the hub. A link
    # unpickled there now takes the handle it already has.
    import pickle

    import polytask as pt

    lock = pt.Lock(backend="ray")
    copy = pickle.loads(pickle.dumps(lock))
    assert copy._link._handle is lock._link._handle
    assert copy.acquire(timeout=30)
    assert lock.locked()
    copy.release()


def test_dropped_primitives_leave_the_hub_actor() -> None:
    from _engines import check_dropped_primitives_are_forgotten

    check_dropped_primitives_are_forgotten("ray")


def test_a_task_keeps_a_primitive_its_creator_dropped() -> None:
    from _engines import check_a_task_keeps_what_it_was_given

    check_a_task_keeps_what_it_was_given("ray")


def test_a_primitive_made_in_a_task_outlives_it() -> None:
    from _engines import check_made_in_a_task_outlives_it

    check_made_in_a_task_outlives_it("ray")


# --------------------------------------------------------------------------- joining, owning

JOIN_BY_ADDRESS = """
import sys
import ray
import polytask as pt


def where(x):
    import ray
    return ray.get_runtime_context().get_node_id(), x + 1


address, node = sys.argv[1], sys.argv[2]
assert not ray.is_initialized()
with pt.Pool(2, backend="ray", address=address) as pool:
    assert ray.is_initialized()
    assert ray.get_runtime_context().gcs_address == address
    out = pool.map(where, range(200))
    assert [v for _, v in out] == list(range(1, 201))
    assert {n for n, _ in out} == {node}, out[:3]
    assert pool.submit(where, 1).result(timeout=60) == (node, 2)
assert not ray.is_initialized()  # polytask disconnected; the cluster is not its to stop
print("JOINED", len(out))
"""


def test_pool_joins_a_running_ray_by_address(ray_session: object) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    node = ray.get_runtime_context().get_node_id()
    nodes_before = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    r = run_script(JOIN_BY_ADDRESS, address, node)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "JOINED 200" in r.stdout
    # The joined Ray runs on, with the same single node: the script started no Ray of its own.
    assert [n["NodeID"] for n in ray.nodes() if n["Alive"]] == nodes_before
    assert pt.spawn(add, 1, 1, backend="ray").result(timeout=60) == 2


OWN_LOCAL_RAY = """
import psutil
import ray
import polytask as pt


def inc(x):
    return x + 1


def ours():
    # Everything under us but polytask's guardian, which lives until we exit.
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline()[:1] == ["polytask-guardian"]:
                continue
        except psutil.ZombieProcess:
            pass  # exited, not yet reaped: still ours, wait_procs checks it goes
        except psutil.NoSuchProcess:
            continue
        out.append(p)
    return out


def name(p):
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return "(gone)"


assert not ray.is_initialized()
with pt.Pool(1, backend="ray") as pool:
    assert ray.is_initialized()
    assert pool.map(inc, range(100)) == list(range(1, 101))
    started = ours()
    names = {name(p) for p in started}
assert not ray.is_initialized()
gone, alive = psutil.wait_procs(started, timeout=30)
print("NAMES", sorted(names))
print("ALIVE", [(p.pid, name(p)) for p in alive])
"""


def test_local_ray_polytask_starts_is_shut_down_with_its_processes() -> None:
    r = run_script(OWN_LOCAL_RAY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "raylet" in r.stdout and "gcs_server" in r.stdout  # it did start a Ray
    assert "ALIVE []" in r.stdout, r.stdout


def test_sigkilled_owner_leaves_no_local_ray_process(tmp_path: Path) -> None:
    """No orphan of a local Ray polytask started when its owner is SIGKILLed.

    Ray ends its GCS and raylet with their owner; its agents exit when they see
    the raylet go, after reporting it to the GCS, and when the GCS is already
    gone (a race) they wait on it for about a minute. polytask's guardian ends
    them at once.
    """
    from _engines import KILLED_OWNER
    from helpers import Harness

    ready = tmp_path / "ready"
    with Harness(KILLED_OWNER, tmp_path, str(ready), "ray", env={"RAY_ADDRESS": ""}) as h:
        h.wait_for_line(ready, "ready", timeout=120)
        procs = {}
        for p in h.descendants():
            try:
                procs[p.name()] = p.pid
            except psutil.Error:
                pass
        # Ray's own processes, and the agents that outlived a SIGKILLed owner before.
        assert {"raylet", "gcs_server"} <= set(procs), procs
        assert any("Agent" in n for n in procs), procs
        h.signal(signal.SIGKILL)
        assert h.wait() == -signal.SIGKILL
        assert h.leftovers(within=10) == []


def spawn_child_and_wait(x: int) -> int:
    return pt.spawn(add, x, 1, backend="ray").result(timeout=60)


def test_tasks_with_timeouts_waiting_for_their_own_tasks_do_not_starve_ray() -> None:
    # Parents with a timeout run in killable child processes; each waits for a
    # child task of its own: more parents than CPUs must still all finish.
    with pt.TaskGroup(backend="ray") as g:
        parents = [g.spawn(spawn_child_and_wait, i, timeout=120) for i in range(6)]
    assert [p.result() for p in parents] == [i + 1 for i in range(6)]


OLD_SESSION_PRIMITIVE = """
import pickle
import warnings

import psutil
import ray
import polytask as pt

warnings.simplefilter("ignore")


def start():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


def outcome(what):
    try:
        what()
    except RuntimeError as exc:
        return "RuntimeError: " + str(exc)
    except BaseException as exc:
        return type(exc).__name__ + ": " + str(exc)
    return "no error"


start()
old = pt.Lock(backend="ray")
with old:
    pass
blob = pickle.dumps(old)
ray.shutdown()
start()
print("UNPICKLE", outcome(lambda: pickle.loads(blob)), flush=True)
print("PICKLE", outcome(lambda: pickle.dumps(old)), flush=True)
print("ACQUIRE", outcome(lambda: old.acquire(timeout=5)), flush=True)
new = pt.Lock(backend="ray")
back = ray.get(ray.remote(lambda lock: lock).remote(new), timeout=60)
print("NEW", back.acquire(timeout=5), new.acquire(timeout=0.1), flush=True)
back.release()
started = psutil.Process().children(recursive=True)
ray.shutdown()
psutil.wait_procs(started, timeout=30)
"""


def test_a_primitive_of_an_ended_ray_session_fails_clearly() -> None:
    # A Lock made before ray.shutdown() and a new ray.init() in the same process:
    # pickling it aborted the process (a failed check in Ray's C++ core), its old
    # pickle failed with an AssertionError from Ray's insides (or, before any new
    # primitive, left the dead hub's handle to them). Each now says what happened;
    # the new session's primitives work, also through a Ray task and back.
    r = run_script(OLD_SESSION_PRIMITIVE)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    for what in ("UNPICKLE", "PICKLE", "ACQUIRE"):
        assert lines.get(what, "").startswith(
            "RuntimeError: this polytask primitive was made in Ray session"
        ), r.stdout
    assert lines.get("NEW") == "True False", r.stdout
