"""``polytask up --tui`` driven in a real terminal: tmux (send-keys, capture-pane).

Each test runs ``up --tui`` in a detached tmux session of its own server,
reads the screen with capture-pane and presses keys with send-keys; the
programs are real (python -m http.server, a ticker), and what the screen says
is checked against the processes themselves (psutil, HTTP).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.helpers import apt_install, wait_until

PY = sys.executable


@pytest.fixture(scope="module")
def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        why = apt_install("tmux")
        path = shutil.which("tmux")
        if why or path is None:
            pytest.skip(why or "tmux is not installed")
    return path


class Screen:
    """One tmux server and session running a command; its screen and keys."""

    def __init__(self, tmux: str, cwd: Path, command: str) -> None:
        self.tmux = tmux
        self.sock = f"pt-tui-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd
        self.rc = cwd / "rc"
        script = f"cd {shlex.quote(str(cwd))} && {command}; echo $? > rc; sleep 600"
        self._tmux("new-session", "-d", "-x", "160", "-y", "40", script)

    def _tmux(self, *args: str) -> str:
        r = subprocess.run(
            [self.tmux, "-L", self.sock, *args], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def wait_for(self, pattern: str, what: str = "") -> re.Match[str]:
        rx = re.compile(pattern, re.M)
        return wait_until(lambda: rx.search(self.text()), what=what or pattern)

    def exit_status(self) -> int:
        wait_until(lambda: self.rc.exists() and self.rc.read_text().strip(), what="up's exit")
        return int(self.rc.read_text())

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.sock, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    # Two web servers and a ticker that prints a numbered line 5 times a second.
    (tmp_path / "Procfile").write_text(
        f"web: {PY} -u -m http.server --bind 127.0.0.1 $PORT\n"
        f'ticker: {PY} -u -c "import time, itertools; '
        "[(print('tick', i), time.sleep(0.2)) for i in itertools.count()]\"\n"
    )
    return tmp_path


@pytest.fixture
def screen(tmux: str, project: Path) -> Iterator[Screen]:
    port = 20000 + os.getpid() % 20000
    s = Screen(tmux, project, f"{PY} -m polytask.cli up --tui -c web=2 -p {port} -t 3")
    s.port = port  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.close()


def _row(screen: Screen, name: str) -> list[str]:
    m = screen.wait_for(rf"^\s*>?\s*{re.escape(name)}\s.*$", f"a row for {name}")
    return m.group(0).replace(">", " ").split()


def _pid(screen: Screen, name: str) -> int:
    def running() -> list[str] | None:
        row = _row(screen, name)
        return row if row[1] == "running" else None

    return int(wait_until(running, what=f"{name} running")[2])


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return int(r.status)


def test_the_view_shows_each_program_from_the_processes_themselves(screen: Screen) -> None:
    port: int = screen.port  # type: ignore[attr-defined]
    screen.wait_for(r"PROCESS\s+STATE\s+PID\s+UPTIME\s+RESTARTS\s+CPU%\s+RSS\s+READY")
    pids = {name: _pid(screen, name) for name in ("web.1", "web.2", "ticker.1")}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        assert proc.is_running(), name
        row = _row(screen, name)
        assert row[7] in ("KiB", "MiB") and float(row[6]) > 0, row  # its RSS
    assert _get(port) == _get(port + 1) == 200
    # The selected program's last lines: web.1 first, then ticker.1 (two down).
    screen.wait_for(rf"Serving HTTP on 127.0.0.1 port {port}\b")
    screen.keys("j", "j")
    screen.wait_for(r"^\s*>\s*ticker\.1\s")
    screen.wait_for(r"tick \d+")
    # Log only: the table goes, the lines stay.
    screen.keys("l")
    wait_until(lambda: "RESTARTS" not in screen.text(), what="the table hidden")
    screen.wait_for(r"tick \d+")
    screen.keys("l")
    screen.wait_for(r"RESTARTS")
    screen.keys("q")
    assert screen.exit_status() == 0
    for pid in pids.values():
        assert _ended(pid)


def test_keys_restart_stop_and_start_one_copy_while_the_other_serves(screen: Screen) -> None:
    port: int = screen.port  # type: ignore[attr-defined]
    before = {name: _pid(screen, name) for name in ("web.1", "web.2", "ticker.1")}
    # web.1 is selected: restart it; web.2 serves meanwhile.
    screen.keys("r")

    def restarted() -> int | None:
        pid = _pid(screen, "web.1")
        return pid if pid != before["web.1"] else None

    new = wait_until(restarted, what="web.1 restarted")
    assert not psutil.pid_exists(before["web.1"])
    assert _get(port + 1) == 200
    wait_until(lambda: _get(port) == 200, what="web.1 serving again")
    # Stop it: it stays stopped (the restart policy does not start it again).
    screen.keys("s")
    wait_until(lambda: _row(screen, "web.1")[1] == "stopped", what="web.1 stopped")
    assert not psutil.pid_exists(new)
    assert _get(port + 1) == 200
    screen.keys("s")
    started = _pid(screen, "web.1")
    assert started != new
    wait_until(lambda: _get(port) == 200, what="web.1 serving after start")
    # The others were not touched.
    assert _pid(screen, "web.2") == before["web.2"]
    assert _pid(screen, "ticker.1") == before["ticker.1"]
    screen.keys("C-c")
    assert screen.exit_status() == 130
    for pid in (started, before["web.2"], before["ticker.1"]):
        assert _ended(pid)


def _ended(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # reaped, maybe since pid_exists would have said yes
        return True


def test_tui_needs_a_terminal(project: Path) -> None:
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "up", "--tui"],
        cwd=project,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert r.returncode == 2
    assert "--tui needs a terminal" in r.stderr
    assert r.stdout == ""


def test_usage_forgets_the_processes_that_ended() -> None:
    # A program whose tree changes all the time (a shell starting short sleeps):
    # the CPU/RSS sampler keeps only what the last frame saw.
    from polytask.cli._tui import _Usage

    proc = subprocess.Popen(["sh", "-c", "while :; do sleep 0.02; done"])
    try:
        usage = _Usage()
        seen: set[int] = set()

        def frame() -> bool:
            assert usage.of(proc.pid) is not None
            usage.frame()
            seen.update(usage._procs)
            assert len(usage._procs) <= 3, usage._procs  # the shell and its sleep
            return len(seen) > 10  # many sleeps came and went

        wait_until(frame, what="ten short-lived processes sampled")
    finally:
        proc.kill()
        proc.wait()
