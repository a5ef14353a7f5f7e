"""Multi-host, for real: a cluster on three hosts made of network namespaces.

As root, the test makes hosts of its own on this machine: network namespaces
``pt-sched-<run>``, ``pt-w1-<run>``, ``pt-w2-<run>``, each with its own address
on a private /24 (``10.213.N.1``, ``.2``, ``.3``; N is one no route of this
machine uses), joined by a bridge that lives in a fourth namespace
``pt-net-<run>`` (so the machine's own firewall, which may filter bridged
traffic, is not in the way). The test process stays in the root namespace, on
the same link as ``10.213.N.254`` (veth ``ptv0-<run>``), and reaches the
cluster only by its address, as a driver on another machine would::

    root namespace (this test, 10.213.N.254)
        │ ptv0-<run>
    pt-net-<run>: bridge br0 ──┬── pt-sched-<run>  10.213.N.1  the scheduler / head
                               ├── pt-w1-<run>     10.213.N.2  a worker
                               └── pt-w2-<run>     10.213.N.3  a worker

The hosts run the engine's own command-line programs (``dask scheduler`` and
``dask worker``; ``ray start --head`` with no CPUs and ``ray start --address``)
under ``ip netns exec``, with polytask's ``src`` on their ``PYTHONPATH`` (the
namespaces share this machine's filesystem) but nothing of ``tests/``: the
tasks' module (tests/_multihost_tasks.py) reaches them only with
``py_modules=``. The test then runs the contract's core through ``address=``:
code shipping, results from both worker hosts, remote errors with their
traceback, a timeout that kills the work, a worker SIGKILLed mid-task. Dask is
driven from this process (``tcp://10.213.N.1:8786``); Ray from a driver process
of its own in the root namespace (Ray is one per process, and the suite's local
Ray may live in this one), through the head's Ray Client port
(``ray://10.213.N.1:10001``), the way in for a host outside a Ray cluster.

``<run>`` is this process's pid (hex) and two random hex digits, so parallel
runs never collide; at start, hosts left by a run whose process is gone are
removed. Teardown always kills every process in the namespaces and deletes
them (the veth in the root namespace goes with its peer).

Skipped only where namespaces cannot be made here (not root, no ``ip``, or
``ip netns add`` fails), with what failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

import polytask as pt
from polytask.backends import make_backend

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")
#: Names of everything this test makes: namespaces ``pt-<role>-<run>``, the root veth.
_NS_RE = re.compile(r"^pt-(net|sched|w\d)-([0-9a-f]+)$")
_LINK_RE = re.compile(r"^ptv0-([0-9a-f]+)$")
_LOCK = Path("/run/lock/polytask-multihost.lock")
DASK_PORT = 8786
RAY_PORT = 6379
RAY_CLIENT_PORT = 10001
#: Ray's folders (``/tmp/ptr-<run>-<role>``): short, as Ray's Unix socket paths in them
#: must be; one per node, as nodes on one machine sharing one collide on those sockets.
_TEMP_ROOT = "/tmp"
ROLES = ("sched", "w1", "w2")


# --------------------------------------------------------------------------- the hosts


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _ns_pids(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def _run_alive(run: str) -> bool:
    """Whether the test process that made run ``run`` (pid = all but the last 2 digits) lives."""
    try:
        return psutil.pid_exists(int(run[:-2], 16))
    except ValueError:
        return False


def _kill_namespace(ns: str, timeout: float = 15.0) -> None:
    """SIGKILL every process in ``ns`` until none is left, then delete it."""
    deadline = time.monotonic() + timeout
    while pids := _ns_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes in namespace {ns} survive SIGKILL: {pids}")
        time.sleep(0.05)
    _ip("netns", "delete", ns, check=False)


def _remove_stale() -> None:
    """Remove the hosts of earlier runs whose test process is gone (a crashed run)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and not _run_alive(m.group(2)):
            _kill_namespace(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        m = _LINK_RE.match(name)
        if m and not _run_alive(m.group(1)):
            _ip("link", "delete", name, check=False)
    for folder in Path(_TEMP_ROOT).glob("ptr-*"):
        m = re.match(r"^ptr-([0-9a-f]+)-", folder.name)
        if m and not _run_alive(m.group(1)):
            shutil.rmtree(folder, ignore_errors=True)


def _free_subnet() -> int:
    """N such that no address or route of this machine is in 10.213.N.0/24."""
    used = _ip("-4", "route", "show", "table", "all", check=False).stdout
    used += _ip("-4", "addr", "show", check=False).stdout
    taken = {int(n) for n in re.findall(r"\b10\.213\.(\d+)\.", used)}
    free = [n for n in range(1, 255) if n not in taken]
    if not free:
        raise RuntimeError("no free 10.213.N.0/24 subnet on this machine")
    return random.choice(free)


@dataclass
class Hosts:
    """The namespaces of one run, their addresses, and the processes started in them."""

    run: str
    subnet: int
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def temp_dir(self, role: str) -> str:
        return os.path.join(_TEMP_ROOT, f"ptr-{self.run}-{role}")

    def ns(self, role: str) -> str:
        return f"pt-{role}-{self.run}"

    def addr(self, role: str) -> str:
        last = {"sched": 1, "w1": 2, "w2": 3, "root": 254}[role]
        return f"10.213.{self.subnet}.{last}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns("net"), *(self.ns(r) for r in ROLES)]

    def create(self) -> None:
        net = self.ns("net")
        _ip("netns", "add", net)
        _ip("-n", net, "link", "add", "br0", "type", "bridge")
        _ip("-n", net, "link", "set", "br0", "up")
        _ip("-n", net, "link", "set", "lo", "up")
        # The root namespace's end: the test process reaches the hosts through it.
        root_link = f"ptv0-{self.run}"
        _ip("link", "add", root_link, "type", "veth", "peer", "name", "p0", "netns", net)
        _ip("addr", "add", f"{self.addr('root')}/24", "dev", root_link)
        _ip("link", "set", root_link, "up")
        _ip("-n", net, "link", "set", "p0", "master", "br0", "up")
        for i, role in enumerate(ROLES, start=1):
            ns = self.ns(role)
            _ip("netns", "add", ns)
            _ip(
                "-n",
                net,
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", net, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(role)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def start(self, role: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` on host ``role``, in a session of its own, output to a log."""
        from _engines import ENGINE_PIDS

        cwd = self.logs / f"cwd-{role}"  # a folder with nothing importable in it
        cwd.mkdir(exist_ok=True)
        with open(self.logs / f"{role}.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        # `ip netns exec` execs the program: this pid is the program. The per-test
        # stray-process check leaves it and its descendants alone; teardown ends them.
        ENGINE_PIDS.add(proc.pid)
        self.procs[role] = proc
        return proc

    def log_tail(self) -> str:
        out = []
        for role in ROLES:
            path = self.logs / f"{role}.log"
            if path.exists():
                out.append(f"--- {role}\n" + path.read_text(errors="replace")[-3000:])
        # Ray's own logs of its client server (the driver's way in) on the head.
        for path in sorted(Path(self.temp_dir("sched")).glob("session_*/logs/ray_client_server*")):
            text = path.read_text(errors="replace")[-3000:]
            if text.strip():
                out.append(f"--- {path.name}\n{text}")
        return "\n".join(out)

    def destroy(self) -> None:
        """Kill every process on the hosts, reap ours, delete the namespaces and links."""
        from _engines import ENGINE_PIDS

        errors = []
        for ns in reversed(self.namespaces):
            try:
                _kill_namespace(ns)
            except RuntimeError as exc:
                errors.append(str(exc))
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {proc.pid} not reaped")
            ENGINE_PIDS.discard(proc.pid)
        _ip("link", "delete", f"ptv0-{self.run}", check=False)  # gone with its peer already
        for role in ROLES:
            shutil.rmtree(self.temp_dir(role), ignore_errors=True)
        left = [ns for ns in self.namespaces if ns in _ip("netns", "list", check=False).stdout]
        if left:
            errors.append(f"namespaces not deleted: {left}")
        if errors:
            raise RuntimeError("; ".join(errors))


def _can_make_namespaces() -> str | None:
    """Why namespaces cannot be made here, or None: tried, not assumed."""
    if os.geteuid() != 0:
        return f"network namespaces need root (ip netns add); this test runs as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"pt-probe-{os.getpid():x}{uuid.uuid4().hex[:2]}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"'ip netns add' failed here: {r.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


@contextlib.contextmanager
def namespace_hosts(logs: Path) -> Iterator[Hosts]:
    """Three hosts on a fresh link; always removed, with what runs on them, at exit."""
    why = _can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    run = f"{os.getpid():x}{random.randrange(256):02x}"
    with open(_LOCK, "w") as lock:
        # One run at a time picks a subnet and claims it (its veth address makes it taken).
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_stale()
        hosts = Hosts(run=run, subnet=_free_subnet(), logs=logs)
        try:
            hosts.create()
        except BaseException:
            hosts.destroy()
            raise
    try:
        yield hosts
    finally:
        hosts.destroy()


def host_env(**extra: str) -> dict[str, str]:
    """The hosts' environment: polytask's src on the path, nothing of tests/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "RAY_"))}
    env["PYTHONPATH"] = SRC
    env.update(extra)
    return env


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- the clusters


@dataclass
class Cluster:
    engine: str
    hosts: Hosts
    address: str
    #: The backend options that join it (the address, the tasks' module shipped).
    options: dict[str, Any]

    @property
    def head(self) -> str:
        return self.hosts.addr("sched")

    @property
    def workers(self) -> set[str]:
        return {self.hosts.addr("w1"), self.hosts.addr("w2")}

    def backend(self, **options: Any) -> Any:
        return make_backend(self.engine, **{**self.options, **options})


def _start_dask(hosts: Hosts) -> Cluster:
    distributed = pytest.importorskip("distributed")
    py = sys.executable
    head = hosts.addr("sched")
    address = f"tcp://{head}:{DASK_PORT}"
    # A worker's death fails its task at once (docs/cluster.md, "Timeouts ... crashes").
    hosts.start(
        "sched",
        [
            py,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            head,
            "--port",
            str(DASK_PORT),
            "--no-dashboard",
        ],
        host_env(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0"),
    )
    for role in ("w1", "w2"):
        hosts.start(
            role,
            [
                py,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--host",
                hosts.addr(role),
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--death-timeout",
                "60",
                "--local-directory",
                str(hosts.logs / f"dask-{role}"),
            ],
            host_env(),
        )
    try:
        client = distributed.Client(address, timeout=60, set_as_default=False)
        try:
            client.wait_for_workers(2, timeout=60)
        finally:
            client.close()
    except Exception as exc:
        raise AssertionError(
            f"the Dask cluster did not come up: {exc}\n{hosts.log_tail()}"
        ) from exc
    return Cluster("dask", hosts, address, {"address": address})


@pytest.fixture(scope="module", params=["dask"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A scheduler on one namespace host and a worker on each of two others."""
    engine = str(request.param)
    logs = tmp_path_factory.mktemp(f"multihost-{engine}")
    with namespace_hosts(logs) as hosts:
        c = _start_dask(hosts)
        import _multihost_tasks

        c.options["py_modules"] = [_multihost_tasks]
        yield c


@pytest.fixture
def tasks() -> Any:
    import _multihost_tasks

    return _multihost_tasks


# --------------------------------------------------------------------------- the contract's core


def test_code_is_shipped_with_py_modules_and_named_when_missing(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A fresh copy under a new name: never shipped before, whatever ran first.
    name = f"hidden_{uuid.uuid4().hex[:8]}"
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(TESTS / "_multihost_tasks.py", lib / f"{name}.py")
    sys.path.insert(0, str(lib))
    try:
        hidden = importlib.import_module(name)
        options = {k: v for k, v in cluster.options.items() if k != "py_modules"}
        with pt.Pool(2, backend=cluster.engine, **options) as pool:
            with pytest.raises(pt.SerializationError) as info:
                pool.submit(hidden.where, cluster.head, 3).result(timeout=60)
        message = str(info.value)
        assert repr(name) in message and "py_modules=" in message, message
        with pt.Pool(2, backend=cluster.engine, py_modules=[hidden], **options) as pool:
            square, host = pool.submit(hidden.where, cluster.head, 3).result(timeout=60)
        assert square == 9 and host in cluster.workers
    finally:
        sys.path.remove(str(lib))
        sys.modules.pop(name, None)


def test_results_come_back_from_both_worker_hosts(cluster: Cluster, tasks: Any) -> None:
    with pt.Pool(2, backend=cluster.engine, **cluster.options) as pool:
        out = pool.map(tasks.where, [cluster.head] * 200, range(200))
        assert [sq for sq, _ in out] == [x * x for x in range(200)]
        assert {host for _, host in out} <= cluster.workers
        # Tasks that take a while spread over both hosts: each has one thread.
        slow = [pool.submit(tasks.where, cluster.head, x, 0.3) for x in range(8)]
        hosts = {t.result(timeout=60)[1] for t in slow}
    assert hosts == cluster.workers, f"work ran only on {hosts}"
    assert cluster.head not in hosts  # the scheduler's host runs no task
    be = cluster.backend()
    try:
        barrier = be.primitive("Barrier", 2)
        # Two parties that must run at once: one on each worker host.
        met = [pt.spawn(tasks.meet, barrier, cluster.head, backend=be) for _ in range(2)]
        assert {host for _, host in (t.result(timeout=90) for t in met)} == cluster.workers
    finally:
        be.shutdown(wait=False, cancel=True)


def test_a_remote_exception_comes_back_with_its_traceback(cluster: Cluster, tasks: Any) -> None:
    be = cluster.backend()
    try:
        with pytest.raises(ValueError, match=r"bad value 7 on 10\.213\.") as info:
            pt.spawn(tasks.boom, cluster.head, 7, backend=be).result(timeout=60)
        host = str(info.value).rsplit(" ", 1)[-1]
        assert host in cluster.workers
        remote = str(info.value.__cause__)
        assert "Traceback" in remote and "in boom" in remote and "_multihost_tasks.py" in remote
    finally:
        be.shutdown(wait=False, cancel=True)


def test_a_timeout_kills_the_work_and_the_workers_go_on(
    cluster: Cluster, tasks: Any, tmp_path: Path
) -> None:
    be = cluster.backend()
    try:
        markers = [tmp_path / f"m{i}" for i in range(2)]
        # One per worker (each has one thread): both are killed at the deadline.
        timed = [
            pt.spawn(tasks.sleep_then_touch, 30.0, str(m), backend=be, timeout=3.0) for m in markers
        ]
        for t in timed:
            with pytest.raises(pt.TaskTimeout, match="was killed; the worker goes on"):
                t.result(timeout=60)
        for m in markers:
            started = Path(str(m) + ".started")
            _wait_for(started)
            child, worker = map(int, started.read_text().split())
            assert _gone(child), "the process running the task outlived its timeout"
            assert psutil.pid_exists(worker), "the worker itself died"
            assert not m.exists()
        # Both worker threads are free: two tasks that must run at once both run.
        barrier = be.primitive("Barrier", 2)
        met = [pt.spawn(tasks.meet, barrier, cluster.head, backend=be) for _ in range(2)]
        assert {host for _, host in (t.result(timeout=90) for t in met)} == cluster.workers
    finally:
        be.shutdown(wait=False, cancel=True)


def test_a_worker_killed_mid_task_fails_its_task(
    cluster: Cluster, tasks: Any, tmp_path: Path
) -> None:
    be = cluster.backend()
    try:
        marker = tmp_path / "m"
        # No timeout: the task runs in the worker process itself, which is SIGKILLed.
        t = pt.spawn(tasks.sleep_then_touch, 60.0, str(marker), backend=be)
        started = Path(str(marker) + ".started")
        _wait_for(started)
        worker, _nanny = map(int, started.read_text().split())
        os.kill(worker, signal.SIGKILL)
        # allowed-failures is 0 on this scheduler: the task fails, it is not re-run.
        with pytest.raises(pt.WorkerCrashed, match="died"):
            t.result(timeout=60)
        assert not marker.exists()
        # The nanny on that host starts a new worker; the cluster takes work again.
        be.client.wait_for_workers(2, timeout=60)
        with pt.Pool(2, backend=cluster.engine, **cluster.options) as pool:
            out = pool.map(tasks.where, [cluster.head] * 20, range(20))
        assert [sq for sq, _ in out] == [x * x for x in range(20)]
        assert {host for _, host in out} <= cluster.workers
    finally:
        be.shutdown(wait=False, cancel=True)


# --------------------------------------------------------------------------- Ray

#: The driver of the Ray case, run by the test in the root namespace (a process of
#: its own: Ray is one per process, and the suite's local Ray may be in this one).
#: It joins the head through the Ray Client port and prints what it saw as JSON.
RAY_DRIVER = """
import json, os, signal, sys, time
from pathlib import Path

import psutil
import polytask as pt
from polytask.backends import make_backend
import _multihost_tasks as tasks


ATTEMPTS = 4


def gone(pid, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:  # reaped (maybe right after a pid_exists said yes)
            return True
        time.sleep(0.05)
    return False


def started(path, timeout=60):
    marker = Path(path + ".started")
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.02)
    return [int(x) for x in marker.read_text().split()]


def join(address, **options):
    # A Pool on the cluster. Ray's client proxy at times loses the server process it
    # starts for a new client (it exits at once: "SpecificServer startup failed" in
    # the proxy's log, nothing in its own): that failure, Ray's, is tried again, and
    # reported with exit status 75 if it persists.
    for _ in range(ATTEMPTS):
        try:
            return pt.Pool(2, backend="ray", address=address, **options)
        except ConnectionError as exc:
            # (or the proxy's own psutil call meets a zombie and fails the new
            # client: "Initialization failure from server ... ZombieProcess")
            if "Starting Ray client server failed" not in str(exc) and not (
                "Initialization failure from server" in str(exc) and "ZombieProcess" in str(exc)
            ):
                raise
            print("RETRY", exc, flush=True)
            time.sleep(1)
    print(f"Ray's client proxy failed to start a server for this client {ATTEMPTS} times")
    sys.exit(75)


def wait_for_cpus(n):
    import ray

    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("CPU", 0) < n:
        assert time.monotonic() < deadline, f"the cluster has {ray.cluster_resources()}"
        time.sleep(0.2)


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(200, exit=True)  # where it hangs, if it does
    head, address, tmp, mode = sys.argv[1:5]
    out = {}
    if mode == "missing":
        with join(address) as pool:
            wait_for_cpus(2)
            try:
                pool.submit(tasks.where, head, 3).result(timeout=120)
            except pt.SerializationError as exc:
                out["missing"] = str(exc)
        print("RESULT", json.dumps(out), flush=True)
        sys.exit(0)
    # The first backend joins (ray.init) and ships the module for the whole job;
    # the backends made after it borrow that Ray.
    with join(address, py_modules=[tasks]) as pool:
        wait_for_cpus(2)
        res = pool.map(tasks.where, [head] * 200, range(200))
        print("STEP map", flush=True)
        out["squares"] = [sq for sq, _ in res] == [x * x for x in range(200)]
        out["map_hosts"] = sorted({h for _, h in res})
        # One Ray task each (pt.spawn, not pool.submit, which may batch tasks it
        # measured as short into one chunk, on one host): 8 x 0.3 s on two 1-CPU
        # hosts must use both.
        slow = [pt.spawn(tasks.where, head, x, 0.3, backend="ray") for x in range(8)]
        out["slow_hosts"] = sorted({t.result(timeout=60)[1] for t in slow})

        try:
            pt.spawn(tasks.boom, head, 7, backend="ray").result(timeout=60)
        except ValueError as exc:
            out["error"] = [type(exc).__name__, str(exc), str(exc.__cause__)]

        print("STEP timeout", flush=True)
        # A timeout on the default backend kills the Ray worker running the task.
        path = os.path.join(tmp, "plain")
        t = pt.spawn(tasks.sleep_then_touch, 30.0, path, backend="ray", timeout=3.0)
        try:
            t.result(timeout=60)
        except pt.TaskTimeout as exc:
            out["plain_timeout"] = str(exc)
        worker, _ = started(path)
        out["plain_worker_gone"] = gone(worker)

        print("STEP killable", flush=True)
        # killable=True: the child running it is killed, the worker lives and goes on.
        kb = make_backend("ray", killable=True)
        try:
            paths = [os.path.join(tmp, f"k{i}") for i in range(2)]
            timed = [
                pt.spawn(tasks.sleep_then_touch, 30.0, p, backend=kb, timeout=3.0) for p in paths
            ]
            out["killable_timeouts"] = []
            for t in timed:
                try:
                    t.result(timeout=60)
                except pt.TaskTimeout as exc:
                    out["killable_timeouts"].append(str(exc))
            pids = [started(p) for p in paths]
            out["children_gone"] = [gone(child) for child, _ in pids]
            out["workers_alive"] = [psutil.pid_exists(w) for _, w in pids]
            out["ran_to_end"] = [os.path.exists(p) for p in paths]
            # Both workers are free again: two tasks that must run at once both run.
            print("STEP barrier", flush=True)
            barrier = kb.primitive("Barrier", 2)
            met = [pt.spawn(tasks.meet, barrier, head, backend=kb) for _ in range(2)]
            out["met_hosts"] = sorted(t.result(timeout=90)[1] for t in met)
        finally:
            kb.shutdown(wait=False, cancel=True)

        print("STEP kill", flush=True)
        # A worker SIGKILLed mid-task: its task fails (Ray tasks run with max_retries=0).
        path = os.path.join(tmp, "killed")
        t = pt.spawn(tasks.sleep_then_touch, 60.0, path, backend="ray")
        worker, _ = started(path)
        os.kill(worker, signal.SIGKILL)
        try:
            t.result(timeout=60)
        except pt.WorkerCrashed as exc:
            out["crashed"] = str(exc)
        res = pool.map(tasks.where, [head] * 20, range(20))
        out["after_crash"] = [sq for sq, _ in res] == [x * x for x in range(20)]
    print("RESULT", json.dumps(out), flush=True)
"""


def _start_ray(hosts: Hosts) -> Cluster:
    pytest.importorskip("ray")
    ray = str(Path(sys.executable).with_name("ray"))
    head = hosts.addr("sched")
    # Token authentication (on by default in recent Ray) would need a shared token.
    env = host_env(RAY_AUTH_MODE="disabled")
    common = ["--block", "--disable-usage-stats"]
    # The head has no CPU for tasks: they run on the two worker hosts.
    hosts.start(
        "sched",
        [ray, "start", "--head", "--node-ip-address", head, "--port", str(RAY_PORT),
         "--ray-client-server-port", str(RAY_CLIENT_PORT), "--num-cpus", "0",
         "--include-dashboard", "false", "--temp-dir", hosts.temp_dir("sched"), *common],
        env,
    )  # fmt: skip
    for role in ("w1", "w2"):
        hosts.start(
            role,
            [ray, "start", "--address", f"{head}:{RAY_PORT}", "--node-ip-address",
             hosts.addr(role), "--num-cpus", "1", "--temp-dir", hosts.temp_dir(role), *common],
            env,
        )  # fmt: skip
    # Each node says so when it is up (then the driver waits for both workers' CPUs).
    deadline = time.monotonic() + 90
    for role in ROLES:
        log = hosts.logs / f"{role}.log"
        while "Ray runtime started" not in log.read_text(errors="replace"):
            proc = hosts.procs[role]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Ray on {role} did not start\n{hosts.log_tail()}")
            time.sleep(0.1)
    address = f"ray://{head}:{RAY_CLIENT_PORT}"
    return Cluster("ray", hosts, address, {"address": address})


@pytest.fixture(scope="module", params=["ray"])
def ray_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A Ray head on one namespace host (no CPUs) and a worker node on each of two others."""
    logs = tmp_path_factory.mktemp("multihost-ray")
    with namespace_hosts(logs) as hosts:
        yield _start_ray(hosts)


def _drive_ray(cluster: Cluster, tmp_path: Path, mode: str) -> dict[str, Any]:
    """Run the Ray driver in the root namespace; what it saw."""
    import json

    script = tmp_path / "driver.py"
    script.write_text(RAY_DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(TESTS)]), RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run(
            [sys.executable, str(script), cluster.head, cluster.address, str(tmp_path), mode],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"the Ray driver hung: {exc}\n{exc.stdout}\n{exc.stderr}\n{cluster.hosts.log_tail()}"
        ) from exc
    if r.returncode == 75:
        # Not polytask's failure, and not one of this test's hosts: Ray's own (see join()).
        pytest.skip(r.stdout.strip().splitlines()[-1] + " (Ray Client flake; see the driver)")
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (
        f"the Ray driver failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}\n"
        + cluster.hosts.log_tail()
    )
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return out


def test_ray_names_the_missing_module(ray_cluster: Cluster, tmp_path: Path) -> None:
    out = _drive_ray(ray_cluster, tmp_path, "missing")
    assert "missing" in out, "the task ran without its module shipped"
    assert "'_multihost_tasks'" in out["missing"] and "py_modules=" in out["missing"]


def test_ray_across_hosts(ray_cluster: Cluster, tmp_path: Path) -> None:
    out = _drive_ray(ray_cluster, tmp_path, "core")
    workers = sorted(ray_cluster.workers)
    assert out["squares"] is True
    assert set(out["map_hosts"]) <= set(workers)
    # Where Ray places 8 queued tasks is Ray's choice (its hybrid policy may
    # queue them all on one node: seen once); that both hosts work is shown by
    # met_hosts below, two tasks that can only finish if they run at once.
    assert out["slow_hosts"] and set(out["slow_hosts"]) <= set(workers)
    kind, message, remote = out["error"]
    assert kind == "ValueError" and message.startswith("bad value 7 on 10.213.")
    assert message.rsplit(" ", 1)[-1] in workers
    assert "Traceback" in remote and "in boom" in remote and "_multihost_tasks.py" in remote
    assert "ran past its timeout" in out["plain_timeout"] and out["plain_worker_gone"] is True
    assert len(out["killable_timeouts"]) == 2
    assert all("the worker goes on" in m for m in out["killable_timeouts"])
    assert out["children_gone"] == [True, True], "a child outlived its timeout"
    assert out["workers_alive"] == [True, True], "a worker died with its task's child"
    assert out["ran_to_end"] == [False, False]
    assert out["met_hosts"] == workers
    assert "died" in out["crashed"]
    assert out["after_crash"] is True
