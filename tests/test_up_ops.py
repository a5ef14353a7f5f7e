"""``polytask up`` operations settings: max_memory, liveness checks, log files, READY.

First the pure parts (the polytask.toml rules, the Supervision decisions, the
summary table), then real processes: a memory hog restarted at its limit, a
program whose log file rotates, a liveness check that starts failing.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import polytask as pt
from helpers import wait_for_file, wait_until
from polytask._supervision import (
    Action,
    Event,
    Exited,
    Kill,
    Liveness,
    NotAlive,
    OverMemory,
    Probe,
    ProcessMachine,
    Ready,
    RestartPolicy,
    Start,
    State,
    Supervision,
    SupervisionAction,
)
from polytask._supervisor import ProcessStatus, _tree_rss, format_summary
from polytask._upconfig import format_size, parse_size, parse_upconfig, scan_upconfig_text
from test_up_cli import Up, gone, spawned_pids, write_procfile

PY = shlex.quote(sys.executable)

# =========================================================================== polytask.toml


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("200M", 200 << 20),
        ("1G", 1 << 30),
        ("1.5g", 3 << 29),
        ("512K", 512 << 10),
        ("512KiB", 512 << 10),
        ("10MB", 10 << 20),
        (" 2 mb ", 2 << 20),
        ("100", 100),
        ("100B", 100),
        (4096, 4096),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["0", "-1M", "200X", "1e3", "M", "", "1.5.2G", 0, -5, 1.5, True])
def test_bad_sizes(bad: object) -> None:
    assert parse_size(bad) is None


def test_format_size() -> None:
    assert [format_size(n) for n in (900, 1024, 1536, 312 << 20, 200 << 20, 3 << 29)] == [
        "900 B",
        "1 KiB",
        "1.5 KiB",
        "312 MiB",
        "200 MiB",
        "1.5 GiB",
    ]


def test_good_ops_config() -> None:
    config = parse_upconfig(
        """
[web]
max_memory = "200M"
liveness = {http = "http://127.0.0.1:$PORT/health", period = 5, timeout = 2, failures = 3}
log_file = "logs/web.log"
log_max_size = "10M"
log_backups = 5
[worker]
liveness = {cmd = "test -f alive"}
log_file = "logs/worker.log"
""",
        ["web", "worker"],
    )
    web, worker = config.get("web"), config.get("worker")
    assert web.max_memory == 200 << 20
    assert web.liveness is not None and web.liveness.probe.kind == "http"
    assert (web.liveness.period, web.liveness.timeout, web.liveness.failures) == (5, 2, 3)
    assert (web.log_file, web.log_max_size, web.log_backups) == ("logs/web.log", 10 << 20, 5)
    assert worker.liveness is not None
    assert (worker.liveness.period, worker.liveness.timeout, worker.liveness.failures) == (10, 2, 3)
    # A log without a size grows; the backups count is only used with a size.
    assert (worker.log_max_size, worker.log_backups) == (None, 3)
    assert config.get("worker").max_memory is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_memory = '200X'", "max_memory must be a size such as '200M'"),
        ("max_memory = -1", "max_memory must be a size"),
        ("max_memory = '0M'", "max_memory must be a size"),
        ("max_memory = 1.5", "max_memory must be a size"),
        ("log_file = 'w.log'\nlog_max_size = 'lots'", "log_max_size must be a size"),
        ("log_file = 'w.log'\nlog_max_size = 0", "log_max_size must be a size"),
        ("log_file = 'w.log'\nlog_backups = -1", "log_backups must be a whole number >= 0"),
        ("log_file = 'w.log'\nlog_backups = 1.5", "log_backups must be a whole number >= 0"),
        ("log_max_size = '1M'", "log_max_size needs log_file"),
        ("log_backups = 2", "log_backups needs log_file"),
        ("log_file = ''", "log_file must be a file path"),
        ("log_file = 3", "log_file must be a file path"),
        ("log_file = 'logs/'", "log_file must name a file, not a folder"),
        ("liveness = 'curl x'", "liveness must be a table with one of cmd, tcp, http"),
        ("liveness = {cmd = 'true', every = 3}", "liveness: unknown key 'every'"),
        ("liveness = {log = 'up'}", "liveness cannot be a log probe"),
        ("liveness = {period = 3}", "liveness must have exactly one of cmd, tcp, http, got 0"),
        (
            "liveness = {cmd = 'true', period = 0}",
            "liveness.period must be a number of seconds > 0",
        ),
        ("liveness = {cmd = 'true', period = -2}", "liveness.period must be"),
        ("liveness = {cmd = 'true', timeout = 'x'}", "liveness.timeout must be"),
        (
            "liveness = {cmd = 'true', failures = 0}",
            "liveness.failures must be a whole number >= 1",
        ),
        ("liveness = {cmd = 'true', failures = 2.5}", "liveness.failures must be"),
        ("liveness = {tcp = 70000}", "liveness.tcp: 70000 is not a port number"),
        ("max_memoryy = '1G'", "unknown key 'max_memoryy'"),
    ],
)
def test_ops_problems(text: str, expected: str) -> None:
    _, problems = scan_upconfig_text(f"[web]\n{text}\n", ["web", "worker"])
    assert any(expected in p[2] for p in problems), problems


def test_two_types_cannot_share_a_log_file() -> None:
    text = "[web]\nlog_file = 'logs/app.log'\n[worker]\nlog_file = './logs/app.log'\n"
    _, problems = scan_upconfig_text(text, ["web", "worker"])
    assert [p[2] for p in problems] == [
        "[worker] log_file './logs/app.log' is also [web]'s: give each process type its own "
        "file (the copies of one type share theirs)"
    ]


def test_two_spellings_of_one_log_file_are_refused(tmp_path: Path) -> None:
    # The pure check compares the text; the supervisor compares the files themselves.
    (tmp_path / "logs").mkdir()
    os.symlink(tmp_path / "logs", tmp_path / "link")
    config = {
        "web": {"log_file": "logs/app.log"},
        "worker": {"log_file": str(tmp_path / "link/app.log")},
    }
    with pytest.raises(pt.ProcfileError, match=r"\[worker\] log_file .* is the file of \[web\]"):
        pt.Supervisor({"web": "sleep 1", "worker": "sleep 1"}, config=config, cwd=tmp_path)


def test_check_lists_every_bad_ops_setting(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: sleep 1\nworker: sleep 1\n")
    (tmp_path / "polytask.toml").write_text(
        "[web]\n"
        "max_memory = '200 parsecs'\n"
        "log_max_size = '-10M'\n"
        "liveness = {cmd = 'true', failures = -1}\n"
        "[worker]\n"
        "log_file = 'w.log'\n"
        "log_backups = -3\n"
        "restart_on_oom = true\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "polytask", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    expected = [
        "[web] max_memory must be a size such as '200M', '1.5G', '512K' or a whole number "
        "of bytes (> 0), got '200 parsecs'",
        "[web] liveness.failures must be a whole number >= 1",
        "[web] log_max_size must be a size such as '200M'",
        "[web] log_max_size needs log_file",
        "[worker] unknown key 'restart_on_oom'",
        "[worker] log_backups must be a whole number >= 0, got -3",
    ]
    for fragment in expected:
        assert any(f"polytask.toml: {fragment}" in e for e in errors), (fragment, r.stderr)
    assert len(errors) == len(expected), r.stderr


def test_up_refuses_a_log_file_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    config = {"web": {"log_file": "blocker/web.log"}}
    with pytest.raises(pt.ProcfileError, match=r"\[web\] log_file 'blocker/web.log': .*blocker"):
        pt.Supervisor({"web": "sleep 1"}, config=config, cwd=tmp_path)


# =========================================================================== the pure decisions


def machine(**kw: Any) -> ProcessMachine:
    kw.setdefault("backoff", 1.0)
    kw.setdefault("jitter", 0.0)
    kw.setdefault("start_seconds", 1.0)
    return ProcessMachine(RestartPolicy(**kw), rand=lambda: 0.5)


def test_a_restart_stops_with_a_grace_then_backs_off_as_a_failure() -> None:
    m = machine()
    m.handle(Event.START, 0.0)
    m.handle(Event.TIMER, 1.0)  # running
    step = m.handle(Event.RESTART, 50.0, grace=3.0)
    assert (step.new, step.actions, m.due) == (State.RESTARTING, (Action.TERMINATE,), 53.0)
    assert m.handle(Event.RESTART, 51.0, grace=0.0).actions == ()  # one restart at a time
    assert m.handle(Event.TIMER, 53.0).actions == (Action.KILL,)  # grace over: SIGKILL
    # Even an exit 0 (a program that ends cleanly on SIGTERM) is restarted.
    step = m.handle(Event.EXIT, 53.1, code=0)
    assert step.new is State.BACKOFF and step.retry_in == 1.0
    assert m.failed_starts == 0  # it ran past start_seconds: not a failed start


def test_a_restart_before_start_seconds_is_a_failed_start() -> None:
    m = machine(start_retries=1)
    m.handle(Event.START, 0.0)
    m.handle(Event.RESTART, 0.5, grace=1.0)
    assert m.handle(Event.EXIT, 0.6, code=-15).new is State.BACKOFF
    assert m.failed_starts == 1
    m.handle(Event.TIMER, m.due or 0.0)  # started again
    m.handle(Event.RESTART, 3.0, grace=1.0)
    step = m.handle(Event.EXIT, 3.1, code=-15)
    assert step.new is State.FAILED and "2 times in a row; giving up" in (step.reason or "")


def test_a_restart_under_never_ends_the_program() -> None:
    m = machine(restart="never")
    m.handle(Event.START, 0.0)
    m.handle(Event.RESTART, 5.0, grace=1.0)
    step = m.handle(Event.EXIT, 5.1, code=0)
    assert step.new is State.FAILED and step.reason == "not restarted (restart policy: never)"


def test_stopping_the_run_during_a_restart_keeps_its_grace_and_does_not_restart() -> None:
    m = machine()
    m.handle(Event.START, 0.0)
    m.handle(Event.RESTART, 5.0, grace=2.0)
    step = m.handle(Event.STOP, 5.5, grace=30.0)
    assert (step.new, step.actions, m.due) == (State.STOPPING, (), 7.0)
    assert m.handle(Event.EXIT, 6.0, code=-15).new is State.STOPPED
    m2 = machine()
    m2.handle(Event.START, 0.0)
    m2.handle(Event.RESTART, 5.0, grace=2.0)
    assert m2.handle(Event.KILL, 5.5).actions == (Action.KILL,)


def sup_of(restart: str = "on-failure", **kw: Any) -> Supervision:
    policy = RestartPolicy(restart=restart, backoff=1.0, jitter=0.0, start_seconds=1.0)
    return Supervision(["web", "db"], policy, grace=5.0, rand=lambda: 0.5, **kw)


def kinds(actions: list[SupervisionAction]) -> list[str]:
    return [type(a).__name__ for a in actions]


def start_both(sup: Supervision) -> list[SupervisionAction]:
    seen: list[SupervisionAction] = []
    while actions := sup.start_next(0.0):
        for a in actions:
            if isinstance(a, Start):
                sup.started(a.name, 100, 0.0)
        seen += actions
    return seen


def test_memory_over_the_limit_restarts_with_the_programs_grace() -> None:
    sup = sup_of(max_memory={"web": 1000}, graces={"web": 2.0})
    start_both(sup)
    assert sup.memory("web", 1000, 1.0) == []  # at the limit is fine
    assert sup.memory("db", 10**12, 1.0) == []  # no limit
    actions = sup.memory("web", 1500, 2.0)
    assert actions == [OverMemory("web", 1500, 1000, True), Kill("web", "term")]
    assert sup.machines["web"].state is State.RESTARTING and sup.machines["web"].due == 4.0
    assert sup.memory("web", 5000, 2.5) == []  # already restarting
    actions = sup.exited("web", -15, 2.6)
    assert isinstance(actions[0], Exited) and actions[0].state is State.BACKOFF
    assert sup.memory("web", 5000, 2.7) == []  # backing off: nothing runs
    assert [type(a) for a in sup.tick(3.6)] == [Start]


def test_memory_under_never_ends_the_run_with_the_programs_status() -> None:
    sup = sup_of("never", max_memory={"web": 1000})
    start_both(sup)
    assert sup.memory("web", 2000, 1.0)[0] == OverMemory("web", 2000, 1000, False)
    actions = sup.exited("web", -15, 1.1)
    assert "GiveUp" in kinds(actions) and "Stopping" in kinds(actions)
    assert sup.status == 128 + signal.SIGTERM
    assert sup.memory("db", 10**12, 1.2) == []  # stopping: no more restarts


def test_liveness_begins_at_start_without_a_probe_and_at_ready_with_one() -> None:
    sup = sup_of(liveness={"web": 2, "db": 1}, ready_timeouts={"db": 10.0})
    seen = start_both(sup)
    assert [a for a in seen if isinstance(a, (Liveness, Probe))] == [
        Liveness("web"),
        Probe("db", 10.0),
    ]
    assert sup.alive("db", False, 0.5, "refused") == []  # not watched before it is ready
    assert sup.ready("db", 1.5) == [Ready("db"), Liveness("db")]
    assert sup.ready_in == {"db": 1.5}
    actions = sup.alive("db", False, 2.0, "refused")
    assert actions == [NotAlive("db", 1, "refused", True), Kill("db", "term")]
    assert sup.ready_now == set() and sup.ready_in == {"db": 1.5}  # kept for the summary
    sup.exited("db", -15, 2.1)
    assert sup.alive("db", False, 2.2, "late answer") == []
    due = sup.machines["db"].due
    assert due is not None
    drained: list[SupervisionAction] = []
    while actions := sup.tick(due):
        drained += actions
    assert [a for a in drained if a.name == "db"] == [Start("db"), Probe("db", 10.0)]
    assert "db" not in sup.ready_in  # a new run: not ready yet


def test_liveness_failures_must_be_in_a_row() -> None:
    sup = sup_of(liveness={"web": 3})
    start_both(sup)
    for ok in (False, False, True, False, False):
        assert sup.alive("web", ok, 1.0, "x") == []
    assert kinds(sup.alive("web", False, 1.0, "still failing")) == ["NotAlive", "Kill"]


def test_bad_health_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown program 'ghost'"):
        sup_of(max_memory={"ghost": 1})
    with pytest.raises(ValueError, match="unknown program 'ghost'"):
        sup_of(liveness={"ghost": 1})


def status(name: str, ready: bool | None, ready_in: float | None) -> ProcessStatus:
    return ProcessStatus(name, name, "stopped", None, 5000, 0, 0, 2.0, "x", ready, ready_in)


def test_summary_has_a_ready_column_only_with_probes() -> None:
    text = format_summary(
        [status("db.1", False, 1.25), status("web.1", False, None), status("tool.1", None, None)]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["PROCESS", "STATE", "RESTARTS", "LAST", "EXIT", "UPTIME", "READY"]
    assert lines[1].endswith("after 1.2s") and lines[2].endswith("no")
    assert lines[3].endswith("-")
    assert "READY" not in format_summary([status("tool.1", None, None)])


# =========================================================================== real processes

HOG = textwrap.dedent(
    """
    import time
    chunks = []
    print("hog starts", flush=True)
    while True:
        if len(chunks) < 40:  # 160 MiB at most: a failing test must not eat the machine
            chunks.append(b"x" * (4 << 20))  # written, so resident
        time.sleep(0.02)
    """
)


def test_a_memory_hog_is_restarted_at_its_limit(tmp_path: Path) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    # The hog runs under a shell that waits for it: only the whole tree goes over.
    write_procfile(tmp_path, hog=f"{PY} hog.py; echo hog ended", calm="exec sleep 300")
    (tmp_path / "polytask.toml").write_text(
        "[hog]\nmax_memory = '60M'\nstop_timeout = 2\n[calm]\nmax_memory = '60M'\n"
    )
    up = Up(tmp_path, "--backoff", "0.05", "--start-seconds", "0.1", "--timeout", "2")
    try:
        up.wait_for("hog.1 restarted (restart 2)")
        up.proc.send_signal(signal.SIGINT)
        assert up.finish() == 130
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    events = up.events()
    over = [e for e in events if e["event"] == "max_memory"]
    assert {e["process"] for e in over} == {"hog.1"}  # calm stays far below
    assert all(e["rss"] > e["limit"] == 60 << 20 for e in over)
    lines = re.findall(r"hog\.1 uses (\S+) MiB > max_memory 60 MiB: restarting", up.out)
    assert len(lines) >= 2 and all(float(n) > 60 for n in lines), up.out
    # Stopped with its stop signal, then restarted after a backoff, as after a crash.
    first = events.index(over[0])
    after = [e["event"] for e in events[first:] if e.get("process") == "hog.1"][:4]
    assert after == ["max_memory", "signal", "exit", "retry"]
    exit_event = next(e for e in events[first:] if e["event"] == "exit")
    assert exit_event["state"] == "backoff" and exit_event["pid"] == over[0]["pid"]
    hog_spawns = [e for e in events if e["event"] == "spawn" and e["process"] == "hog.1"]
    assert len(hog_spawns) >= 3
    assert gone(spawned_pids(events)) == []


def test_tree_rss_counts_children_and_setsid_escapes(tmp_path: Path) -> None:
    # A small leader whose child leaves the group and allocates 64 MiB.
    script = (
        "import os, subprocess, sys, time\n"
        'code = \'import os, time; os.setsid(); d = b"x" * (64 << 20); '
        'open("child", "w").write(str(os.getpid())); time.sleep(300)\'\n'
        "subprocess.Popen([sys.executable, '-c', code]); time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, process_group=0)
    try:
        wait_for_file(tmp_path / "child")
        child = int((tmp_path / "child").read_text())
        wait_until(lambda: psutil.Process(child).memory_info().rss > 64 << 20, what="64 MiB")
        rss = _tree_rss([proc.pid])[proc.pid]
        leader = psutil.Process(proc.pid).memory_info().rss
        assert rss >= leader + (64 << 20)
        assert _tree_rss([child + 10**7]) == {}  # no such process: left out
    finally:
        for pid in (proc.pid, locals().get("child")):
            if pid:
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
        proc.wait()
        if "child" in locals():
            wait_until(lambda: not psutil.pid_exists(child), what="the child to go")


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("backups", [3, 0])
def test_a_log_file_rotates_by_size(tmp_path: Path, backups: int) -> None:
    count = 400
    talk = [
        sys.executable,
        "-c",
        f"for i in range({count}): print(f'line {{i:04d}} ' + 'x' * (i % 50))",
    ]
    logs = tmp_path / "logs"
    log = logs / "talk.log"
    config = {
        "talk": {"log_file": "logs/talk.log", "log_max_size": "4K", "log_backups": backups},
        "quiet": {},
    }
    out = io.StringIO()
    sup = pt.Supervisor(
        {"talk": talk, "quiet": [sys.executable, "-c", "print('not in the log')"]},
        config=config,
        cwd=tmp_path,
        output=out,
        colour=True,  # the file gets no colour
    )
    assert log.exists()  # checked (and created) when the Supervisor is made
    with sup:
        assert sup.wait(timeout=60)
    assert sup.returncode == 0
    files = [log] + [Path(f"{log}.{i}") for i in range(1, backups + 1)]
    assert sorted(p.name for p in logs.iterdir()) == sorted(p.name for p in files)
    for path in files:
        assert 0 < path.stat().st_size <= 4096, path
    # Oldest first, the files hold the last lines, whole, in order, none missing.
    kept = [line for path in reversed(files) for line in log_lines(path)]
    for line in kept:
        assert re.fullmatch(r"\d\d:\d\d:\d\d talk\.1   \| line \d{4} x*", line), line
    numbers = [int(line.split("| line ")[1][:4]) for line in kept]
    assert numbers == list(range(numbers[0], count))
    # Nothing was dropped but what did not fit in the backups: each file but the
    # newest was full (the next line would have taken it past 4K).
    for older, newer in zip(files[1:], files[:-1], strict=False):
        first_of_newer = len(log_lines(newer)[0]) + 1
        assert older.stat().st_size + first_of_newer > 4096
    # The output got the same lines, with colour.
    printed = [line for line in out.getvalue().splitlines() if "| line " in line]
    assert len(printed) == count and "\x1b[" in printed[0]


def test_a_log_file_is_appended_to_and_shared_by_copies(tmp_path: Path) -> None:
    log = tmp_path / "both.log"
    log.write_text("from before\n")
    echo = ["sh", "-c", "echo hello from $PS"]
    config = {"echo": {"log_file": str(log)}}
    with pt.Supervisor(
        {"echo": echo}, concurrency={"echo": 2}, config=config, output=io.StringIO()
    ) as sup:
        assert sup.wait(timeout=60)
    lines = log_lines(log)
    assert lines[0] == "from before"
    assert sorted(line.split("| ")[1] for line in lines[1:]) == [
        "hello from echo.1",
        "hello from echo.2",
    ]


def test_a_failing_liveness_check_restarts_the_program(tmp_path: Path) -> None:
    (tmp_path / "alive").touch()
    events: list[dict[str, Any]] = []
    # The check records each run; it fails once the test deletes "alive".
    check = "echo x >> checks; test -f alive"
    config = {
        "web": {
            "ready": {"log": "web is up"},
            "liveness": {"cmd": check, "period": 0.1, "timeout": 2, "failures": 2},
            "stop_timeout": 2,
        }
    }
    web = [sys.executable, "-c", "import time; print('web is up', flush=True); time.sleep(300)"]
    out = io.StringIO()
    sup = pt.Supervisor(
        {"web": web},
        config=config,
        cwd=tmp_path,
        output=out,
        on_event=events.append,
        backoff=0.05,
        start_seconds=0.1,
    )
    with sup:
        wait_until(lambda: len(log_lines(tmp_path / "checks")) >= 3, what="three checks")
        assert [e["event"] for e in events if e["event"] in ("not_alive", "exit")] == []
        first_pid = sup.status()[0].pid
        (tmp_path / "alive").unlink()
        wait_until(lambda: any(e["event"] == "not_alive" for e in events), what="not_alive")
        (tmp_path / "alive").touch()
        wait_until(lambda: sup.status()[0].restarts >= 1 and sup.status()[0].ready, what="ready")
        st = sup.status()[0]
        assert st.pid != first_pid and st.ready_in is not None
    text = out.getvalue()
    assert (
        "web.1 failed 2 liveness checks in a row (liveness: cmd echo x >> checks; test -f alive; "
        "last: the probe command exited with code 1): restarting"
    ) in text
    dead = next(e for e in events if e["event"] == "not_alive")
    assert dead["pid"] == first_pid and dead["failures"] == 2
    # Checks begin only once the program is ready, and go on after the restart.
    ready = [i for i, e in enumerate(events) if e["event"] == "ready"]
    assert len(ready) >= 2 and ready[0] < events.index(dead)
    summary = format_summary(sup.status())
    assert summary.splitlines()[0].endswith("READY")
    assert re.search(r"web\.1 .* after \d+\.\ds$", summary), summary
    assert gone([e["pid"] for e in events if e["event"] == "spawn"]) == []


def test_a_restart_keeps_the_grace_for_a_program_under_a_shell_that_ignores_sigterm(
    tmp_path: Path,
) -> None:
    # The shell dies of SIGTERM at once; the hog under it ignores it and must get
    # its stop_timeout, then SIGKILL (reported as such), then its restart.
    stubborn = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + HOG
    (tmp_path / "hog.py").write_text(stubborn)
    events: list[dict[str, Any]] = []
    out = io.StringIO()
    sup = pt.Supervisor(
        {"hog": f"{PY} hog.py; echo hog ended"},
        config={"hog": {"max_memory": "60M", "stop_timeout": 1}},
        cwd=tmp_path,
        output=out,
        on_event=events.append,
        backoff=0.05,
        start_seconds=0.1,
    )
    with sup:
        wait_until(lambda: sup.status()[0].restarts >= 1, what="a restart")
    first = next(e for e in events if e["event"] == "max_memory")
    after = [e for e in events[events.index(first) :] if e.get("process") == "hog.1"][:5]
    assert [e["event"] for e in after] == ["max_memory", "signal", "signal", "exit", "retry"]
    assert [e.get("signal") for e in after[1:3]] == ["SIGTERM", "SIGKILL"]
    assert after[3]["code"] == -signal.SIGKILL and after[3]["state"] == "backoff"
    assert f"hog.1 (pid {first['pid']}) did not stop in time: SIGKILL" in out.getvalue()
    assert gone([e["pid"] for e in events if e["event"] == "spawn"]) == []


@pytest.mark.parametrize("op", ["start_program", "restart_program", "stop_program"])
def test_a_request_during_a_health_restart(op: str) -> None:
    # polytask ctl (or the live view) acting on a program being restarted for its health.
    sup = sup_of(max_memory={"web": 1000})
    start_both(sup)
    sup.memory("web", 2000, 1.0)
    assert sup.machines["web"].state is State.RESTARTING
    getattr(sup, op)("web", 1.5)  # no transition error
    actions = sup.exited("web", -15, 2.0)
    if op == "stop_program":
        assert sup.machines["web"].state is State.STOPPED and "web" in sup.held
        assert not any(isinstance(a, Start) for a in actions)
    else:  # started again at once, not after the backoff
        assert [a for a in actions if isinstance(a, Start)] == [Start("web")]
        assert sup.machines["web"].state is State.STARTING


def test_a_liveness_get_that_never_gets_an_answer_does_not_hold_the_stop() -> None:
    # A server that accepts and never answers: the GET would wait for its 300 s
    # timeout. The end of the run must not wait for it (it held the stop, and the
    # supervisor's lock, so status() and ctl froze meanwhile).
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        url = f"http://127.0.0.1:{port}/health"
        config = {"web": {"liveness": {"http": url, "period": 0.05, "timeout": 300}}}
        web = [sys.executable, "-c", "import time; time.sleep(300)"]
        sup = pt.Supervisor({"web": web}, config=config, output=io.StringIO())
        sup.start()
        try:
            conn, _ = server.accept()  # the check's GET is in flight, and never answered
            with conn:
                sup.stop(timeout=60)
                assert sup.wait(timeout=0), "the stop waited for the GET"
        finally:
            sup.stop(timeout=60)
