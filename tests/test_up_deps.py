"""``polytask up`` with a polytask.toml: dependencies and readiness, with real processes.

A web server gated by an HTTP probe, a worker that waits for it, a one-shot
migration that must complete first, a dependency that never gets ready, and
Ctrl-C while a program waits: each run must leave nothing behind (psutil).
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_up_cli import Up, env, gone, spawned_pids, write_procfile

PY = shlex.quote(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_of(up: Up, kind: str) -> list[dict]:
    return [e for e in up.events() if e["event"] == kind]


def index(up: Up, kind: str, process: str) -> int:
    for i, e in enumerate(up.events()):
        if e["event"] == kind and e.get("process") == process:
            return i
    raise AssertionError(f"no {kind} event for {process}: {up.events()}")


def test_migration_then_web_gated_by_http_then_worker(tmp_path: Path) -> None:
    port = free_port()
    # The worker's first line is the server's answer: it can only print it
    # once the server answers (else urlopen raises and it exits 1).
    worker = (
        f'{PY} -c "import urllib.request, time; '
        f"r = urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5); "
        "print('worker got', r.status, flush=True); time.sleep(300)\""
    )
    migrate = (
        f'{PY} -c "import time, pathlib; time.sleep(0.5); '
        "pathlib.Path('migrated').write_text('ok'); print('migrated')\""
    )
    write_procfile(
        tmp_path,
        web=f"test -f migrated && exec {PY} -m http.server $PORT --bind 127.0.0.1",
        migrate=migrate,
        worker=worker,
    )
    (tmp_path / "polytask.toml").write_text(
        "[web]\n"
        'depends_on = {migrate = "completed"}\n'
        'ready = {http = "http://127.0.0.1:$PORT/"}\n'
        "ready_timeout = 30\n"
        "[worker]\n"
        'depends_on = {web = "ready"}\n'
        "stop_timeout = 1\n"
    )
    up = Up(tmp_path, "-p", str(port), "--timeout", "3")
    try:
        up.wait_for("worker got 200")
        pids = spawned_pids(up.events())
        assert up.program_lines("worker.1") == ["worker got 200"]
        assert index(up, "exit", "migrate.1") < index(up, "spawn", "web.1")
        assert index(up, "ready", "web.1") < index(up, "spawn", "worker.1")
        assert "worker.1 waits for web.1 (ready)" in up.out
        assert "web.1 waits for migrate.1 (completed)" in up.out
        up.proc.send_signal(signal.SIGINT)
        assert up.finish() == 130
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []
    # Dependents first: the worker is stopped (and gone) before the server is signalled.
    assert index(up, "signal", "worker.1") < index(up, "exit", "worker.1")
    assert index(up, "exit", "worker.1") < index(up, "signal", "web.1")


def test_never_ready_dependency_ends_the_run_after_its_timeout(tmp_path: Path) -> None:
    # The probe command records its PID and never ends: each attempt is killed.
    write_procfile(tmp_path, db="exec sleep 300", app="echo app started; exec sleep 300")
    (tmp_path / "polytask.toml").write_text(
        "[db]\n"
        "ready = {cmd = 'echo $$ >> probe.pids; exec sleep 100'}\n"
        "ready_timeout = 1.5\n"
        "[app]\n"
        "depends_on = {db = 'ready'}\n"
    )
    up = Up(tmp_path, "--timeout", "2")
    code = up.finish(timeout=60)
    assert code == 1, up.out
    assert "db.1 not ready within 1.5s (ready: cmd echo $$ >> probe.pids" in up.out
    assert "exit status 1 (db.1 not ready within 1.5s (app.1 waited for it))" in up.out
    assert [e["process"] for e in events_of(up, "spawn")] == ["db.1"]
    assert "app started" not in up.out
    probes = [int(p) for p in (tmp_path / "probe.pids").read_text().split()]
    assert probes
    assert gone(spawned_pids(up.events()) + probes, timeout=5) == []


def test_tcp_and_log_probes(tmp_path: Path) -> None:
    port = free_port()
    db = (
        f'{PY} -c "import socket, os, time; time.sleep(0.3); s = socket.socket(); '
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); time.sleep(300)\""
    )
    cache = f"{PY} -c \"import time; time.sleep(0.3); print('cache: accepting', flush=True); time.sleep(300)\""
    write_procfile(tmp_path, db=db, cache=cache, app="echo app up; exec sleep 300")
    (tmp_path / "polytask.toml").write_text(
        "[db]\nready = {tcp = '$PORT'}\n"
        "[cache]\nready = {log = 'accepting$'}\n"
        "[app]\ndepends_on = {db = 'ready', cache = 'ready'}\n"
    )
    up = Up(tmp_path, "-p", str(port), "--timeout", "2")
    try:
        up.wait_for("app up")
        pids = spawned_pids(up.events())
        assert index(up, "ready", "db.1") < index(up, "spawn", "app.1")
        assert index(up, "ready", "cache.1") < index(up, "spawn", "app.1")
        up.proc.send_signal(signal.SIGTERM)
        assert up.finish() == 143
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []


@pytest.mark.parametrize("exit_on_failure", [True, False])
def test_failed_migration_fails_what_waits_on_it(tmp_path: Path, exit_on_failure: bool) -> None:
    write_procfile(tmp_path, migrate="echo broken; exit 3", web="echo web; exec sleep 300")
    (tmp_path / "polytask.toml").write_text("[web]\ndepends_on = {migrate = 'completed'}\n")
    flag = "--exit-on-failure" if exit_on_failure else "--no-exit-on-failure"
    up = Up(tmp_path, "--start-retries", "0", flag)
    assert up.finish(timeout=60) == 3, up.out
    assert [e["process"] for e in events_of(up, "spawn")] == ["migrate.1"]
    if not exit_on_failure:
        # Nothing stops the run: web is given up on, else it would wait forever.
        assert "web.1 failed: not started: migrate.1 exited with code 3" in up.out


def test_sigint_while_waiting_for_readiness_leaves_nothing(tmp_path: Path) -> None:
    port = free_port()
    write_procfile(tmp_path, db="echo db; exec sleep 300", app="echo app; exec sleep 300")
    (tmp_path / "polytask.toml").write_text(
        "[db]\n"
        # An HTTP probe on a port nobody serves, and a long deadline.
        f"ready = {{http = 'http://127.0.0.1:{port}/health'}}\n"
        "ready_timeout = 120\n"
        "[app]\ndepends_on = {db = 'ready'}\n"
    )
    up = Up(tmp_path, "--timeout", "2")
    try:
        up.wait_for("app.1 waits for db.1 (ready)", "db.1 started")
        pids = spawned_pids(up.events())
        up.proc.send_signal(signal.SIGINT)
        assert up.finish() == 130
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []
    assert [e["process"] for e in events_of(up, "spawn")] == ["db.1"]


def test_check_refuses_a_cycle_and_up_does_not_start(tmp_path: Path) -> None:
    write_procfile(tmp_path, web="echo web", worker="echo worker")
    (tmp_path / "polytask.toml").write_text(
        "[web]\ndepends_on = {worker = 'started'}\n[worker]\ndepends_on = {web = 'ready'}\n[nope]\n"
    )
    for cmd in ("check", "up"):
        r = subprocess.run(
            [sys.executable, "-m", "polytask", cmd],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r
        assert "started" not in r.stdout
    check = subprocess.run(
        [sys.executable, "-m", "polytask", "check"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = check.stderr.splitlines()
    assert any("polytask.toml: dependency cycle: web -> worker -> web" in e for e in errors), errors
    assert any("no process type 'nope'" in e for e in errors), errors
    assert any("web has no ready probe" in e for e in errors), errors


def test_stop_signal_and_stop_timeout_per_type(tmp_path: Path) -> None:
    # gentle stops only on SIGINT (SIGTERM ignored); stubborn ignores SIGTERM and
    # gets SIGKILL after its own 0.5 s, long before the run's --timeout of 120 s.
    gentle = (
        f'{PY} -c "import signal, sys, time; '
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, lambda *a: (print('gentle got SIGINT', flush=True), "
        "sys.exit(0))); print('gentle ready', flush=True); time.sleep(300)\""
    )
    stubborn = (
        f'{PY} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
        "print('stubborn ready', flush=True); time.sleep(300)\""
    )
    write_procfile(tmp_path, gentle=gentle, stubborn=stubborn)
    (tmp_path / "polytask.toml").write_text(
        "[gentle]\nstop_signal = 'INT'\n[stubborn]\nstop_timeout = 0.5\n"
    )
    up = Up(tmp_path, "--timeout", "120")
    try:
        up.wait_for("gentle ready", "stubborn ready")
        pids = spawned_pids(up.events())
        up.proc.send_signal(signal.SIGTERM)
        assert up.finish(timeout=60) == 143
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []
    assert up.program_lines("gentle.1") == ["gentle ready", "gentle got SIGINT"]
    signals = [(e["process"], e["signal"]) for e in events_of(up, "signal")]
    assert ("gentle.1", "SIGINT") in signals and ("gentle.1", "SIGTERM") not in signals
    assert ("stubborn.1", "SIGKILL") in signals
