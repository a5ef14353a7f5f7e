"""Suite-wide hygiene checks: every test ends with no stray process, and the
session ends with no process, file descriptor or /dev/shm segment of polytask's.

Every process the suite starts inherits POLYTASK_TEST_SESSION, so a leak is found
even after it was reparented away from us.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

SESSION_TAG = uuid.uuid4().hex
os.environ["POLYTASK_TEST_SESSION"] = SESSION_TAG
sys.path.insert(0, str(Path(__file__).parent))
faulthandler.enable()

# Session-long engines (one Dask cluster, one local Ray) for the cluster backends.
from _engines import ENGINE_FDS, dask_cluster, is_engine_process, ray_session  # noqa: E402
from helpers import new_fds  # noqa: E402
from helpers import open_fds as _fd_targets  # noqa: E402

__all__ = ["dask_cluster", "ray_session"]

SHM = Path("/dev/shm")


def _shm_names() -> set[str]:
    try:
        return {p.name for p in SHM.iterdir() if "polytask" in p.name}
    except OSError:
        return set()


def _is_guardian(p: psutil.Process) -> bool:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return False
    return bool(cmd) and cmd[0] == "polytask-guardian"


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # ended (or a zombie) since it was listed
        return "(gone)"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_descendants() -> list[psutil.Process]:
    """Descendants of this test process that still run (zombies are reaped first)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if _is_guardian(p) or is_engine_process(p):
                continue
            out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def marked_processes() -> list[psutil.Process]:
    """Every process on the machine started by this test session, other than us."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            if p.environ().get("POLYTASK_TEST_SESSION") == SESSION_TAG and not _is_guardian(p):
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _shutdown_defaults() -> None:
    try:
        from polytask.backends import shutdown_defaults
    except ImportError:  # pragma: no cover
        return
    shutdown_defaults()
    # joblib's backend keeps an idle Pool for the next Parallel call (as loky does).
    if "polytask.joblib" in sys.modules:
        sys.modules["polytask.joblib"].shutdown()


def _wait_gone(get, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = get()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = get()
    return left


# POLYTASK_FD_TRACE=FILE: after each test, append the descriptors it left open to FILE.
_FD_TRACE = os.environ.get("POLYTASK_FD_TRACE")


@pytest.fixture(autouse=True)
def no_stray_process(request):
    """After each test (and the default backends' shutdown) nothing we started runs."""
    before = _fd_targets() if _FD_TRACE else {}
    yield
    if _FD_TRACE:
        _shutdown_defaults()
        new = {fd: t for fd, t in _fd_targets().items() if before.get(fd) != t}
        if new:
            with open(_FD_TRACE, "a") as f:
                print(f"{request.node.nodeid}: {new}", file=f)
    _shutdown_defaults()
    left = _wait_gone(live_descendants, 5.0)
    if left:
        desc = [(p.pid, _cmdline(p)[:120]) for p in left if _alive(p)]
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        if desc:
            pytest.fail(f"test left processes behind: {desc}")


_session_start: dict[str, object] = {}

#: New descriptors the session may end with: the guardian's pipe (the one descriptor
#: polytask may keep for the process's life), and a little slack.
_FDS_KEPT = 3


def _new_fds_kept() -> dict[int, str]:
    """Descriptors open now that were not at the session's start, but the engines'.

    Compared by identity (number and target), not counted: a descriptor another
    thread opens and closes meanwhile is no leak, and one closed since the start
    does not hide one left open.
    """
    engines: dict[int, str] = {}
    for kept in ENGINE_FDS.values():
        engines.update(kept)
    new = new_fds(_session_start["fd_targets"])  # type: ignore[arg-type]
    return {fd: t for fd, t in new.items() if engines.get(fd) != t}


def _wait_few(get, timeout: float) -> dict[int, str]:
    """``get()`` once it holds at most _FDS_KEPT (transient ones closed), or at ``timeout``."""
    deadline = time.monotonic() + timeout
    left = get()
    while len(left) > _FDS_KEPT and time.monotonic() < deadline:
        time.sleep(0.05)
        left = get()
    return left


def pytest_configure(config):
    # A shell starts a background job ("make test &") with SIGINT and SIGQUIT
    # ignored, and an ignored signal is inherited: the programs the tests start
    # and interrupt would not see Ctrl-C. The tests start from the defaults.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def pytest_sessionstart(session):
    _session_start["fd_targets"] = _fd_targets()
    _session_start["shm"] = _shm_names()


def pytest_sessionfinish(session, exitstatus):
    _shutdown_defaults()
    problems = []
    left = _wait_gone(marked_processes, 10.0)
    if left:
        problems.append(f"processes left running: {[(p.pid, _cmdline(p)) for p in left]}")
    shm = _shm_names() - _session_start.get("shm", set())  # type: ignore[operator]
    if shm:
        problems.append(f"/dev/shm segments left: {sorted(shm)}")
    new = _wait_few(_new_fds_kept, 5.0)
    if len(new) > _FDS_KEPT:
        problems.append(f"file descriptors left open: {new}")
    if problems:
        print("\nHYGIENE CHECK FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        session.exitstatus = 1
    else:
        print("\nhygiene check: no process, fd or /dev/shm segment left behind", file=sys.stderr)
