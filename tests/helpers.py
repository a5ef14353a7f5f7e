"""Test helpers shared by the suite (real processes, no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

HARNESS = str(Path(__file__).with_name("_harness.py"))
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_python(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter on this tree's polytask, output captured.

    For what only a whole interpreter shows (its exit, a deadlock: ``timeout`` turns
    a hang into a failure instead of a stuck suite).
    """
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something true and return that; fail after ``timeout``.

    The one way a test waits for something to have happened (a task started, a
    process appeared, a file was written) instead of sleeping a fixed time and
    hoping: it returns as soon as the state is there, and on a slow machine it
    still waits long enough. ``timeout`` is a bound for "never happens", not a
    speed claim.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points at.

    The listing's own descriptor is left out: its number moves from one call to
    the next, so a set of numbers compared across calls would see it as new.
    """
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = os.listdir(listing)
    finally:
        os.close(listing)
    out = {}
    for name in names:
        fd = int(name)
        if fd == listing:
            continue
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            pass
    return out


def new_fds(before: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not open (to the same file) in ``before``."""
    return {fd: t for fd, t in open_fds().items() if before.get(fd) != t}


def wait_for_file(path: Path | str, timeout: float = 30.0) -> None:
    """Wait until ``path`` exists (a task touches it to say it got that far)."""
    wait_until(Path(path).exists, timeout, f"{path} to exist")


def thread_is_in(ident: int, function: str) -> bool:
    """Whether thread ``ident`` is running inside a function named ``function`` now.

    How a test sees that a thread task got as far as a blocking call (say
    ``Task._sleep`` under ``pt.sleep``) before it cancels it: a flag set just
    before the call would still leave the thread short of it.
    """
    frame = sys._current_frames().get(ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


class Harness:
    """A script run under a subreaper: kill it, then list what it left behind."""

    def __init__(self, script: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        path = tmp_path / "script.py"
        path.write_text(textwrap.dedent(script))
        full_env = dict(os.environ)
        full_env.update(env or {})
        src = str(Path(__file__).resolve().parents[1] / "src")
        full_env["PYTHONPATH"] = src + os.pathsep + full_env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, HARNESS, str(path), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first and first[0] == "PID", first
        self.pid = int(first[1])

    def wait_for_line(self, path: Path, text: str, timeout: float = 30.0) -> None:
        """Wait until the script wrote ``text`` into file ``path``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text():
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in {path}")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"wait {timeout}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "EXIT", f"the script did not exit: {' '.join(line)}"
        return int(line[1])

    def leftovers(self, within: float = 5.0) -> list[list]:
        """Processes still alive ``within`` seconds after the script ended (killed after)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"report {within}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=30)
        assert line.startswith("LEFT "), line
        return json.loads(line[5:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apt_install(package: str) -> str:
    """Install a Debian package with apt-get (root only): "" when done, else why not.

    The side-by-side tests install the real tools they compare with (GNU parallel,
    runit, systemd) so that CI, a fresh root machine, runs them instead of skipping.
    """
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{package} is not installed (apt-get install {package}, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:  # an old package list: update it once, then try again
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return "" if r.returncode == 0 else f"cannot install {package}: {r.stderr.strip()[-300:]}"


def flood_sigint(proc: subprocess.Popen[str]) -> str:
    """SIGINT ``proc`` every 0.3 ms from its line "go" until its next line; return that.

    For interrupt tests: the child arms a handler that raises KeyboardInterrupt
    around the calls under test, prints "go", loops, then ignores SIGINT and says
    what it saw on one line (an empty string if it died).
    """
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "go"
    flooding = threading.Event()

    def flood() -> None:
        while not flooding.is_set() and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.0003)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        return proc.stdout.readline()
    finally:
        flooding.set()
        flooder.join()
