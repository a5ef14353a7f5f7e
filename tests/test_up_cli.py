"""``polytask up`` and ``polytask check`` from the command line: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import Harness
from polytask.cli._up import main_check, main_up

PY = shlex.quote(sys.executable)
SRC = str(Path(__file__).resolve().parents[1] / "src")

STUBBORN = (
    f'{PY} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
    f"print('stubborn ready', flush=True); time.sleep(300)\""
)
# A program that starts grandchildren (some through a shell) and records their PIDs.
TREE = (
    f'{PY} -c "import subprocess, time; '
    "kids = [subprocess.Popen(['sleep', '300']), "
    "subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300 & wait'])]; "
    "open('tree.pids', 'w').write(' '.join(str(k.pid) for k in kids)); "
    "print('tree ready', flush=True); time.sleep(300)\""
)
WEB = "echo web $PS PORT=$PORT; exec sleep 300"
FLOOD = (
    f'{PY} -c "import sys; '
    "[(print(f'out {i:05d} ' + 'x' * (i % 200)), "
    "print(f'err {i:05d} ' + 'y' * (i % 200), file=sys.stderr)) for i in range(5000)]\""
)


# --------------------------------------------------------------------------- helpers


def write_procfile(tmp_path: Path, **procs: str) -> Path:
    path = tmp_path / "Procfile"
    path.write_text("".join(f"{name}: {cmd}\n" for name, cmd in procs.items()))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PORT", None)
    e.pop("NO_COLOR", None)
    return e


class Up:
    """``polytask up`` as a subprocess whose output goes to files we can poll."""

    def __init__(self, tmp_path: Path, *args: str):
        self.out_path = tmp_path / "up.out"
        self.err_path = tmp_path / "up.err"
        self.events_path = tmp_path / "events.jsonl"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "polytask.cli",
                    "up",
                    "--events",
                    str(self.events_path),
                    *args,
                ],
                cwd=tmp_path,
                stdout=out,
                stderr=err,
                env=env(),
            )

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, *texts: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in self.out for t in texts):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{texts} not all seen; output:\n{self.out}\n{self.err_path.read_text()}"
        )

    def finish(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"polytask up did not end within {timeout}s:\n{self.out}"
            ) from None

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.events_path.read_text().splitlines()]

    def program_lines(self, name: str) -> list[str]:
        out = []
        for line in self.out.splitlines():
            m = re.match(r"^\d\d:\d\d:\d\d (\S+) +\| (.*)$", line)
            if m and m.group(1) == name:
                out.append(m.group(2))
        return out


def spawned_pids(events: list[dict]) -> list[int]:
    return [e["pid"] for e in events if e["event"] == "spawn"]


def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """PIDs still alive (not zombies) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------- bad input


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    "procfile, args, fragment",
    [
        (None, [], "cannot read Procfile 'Procfile': No such file or directory"),
        ("web: a\nweb: b\n", [], "Procfile:2: duplicate process name 'web'"),
        ("web: a\nworker:\n", ["--strict"], "Procfile:2: empty command for process 'worker'"),
        ("web: a\n", ["nope"], "unknown process 'nope'"),
        ("web: a\n", ["-c", "web:2"], "malformed concurrency 'web:2'"),
        ("web: a\n", ["-c", "worker=2"], "unknown process 'worker'"),
        ("web: a\n", ["-e", "missing.env"], "cannot read env file 'missing.env'"),
        ("web: a\n", ["--timeout", "soon"], "'soon' is not a number of seconds"),
        ("web: a\n", ["--restart", "sometimes"], "invalid choice: 'sometimes'"),
        # Restart tuning that would do nothing under 'never' is refused.
        (
            "web: a\n",
            ["--restart", "never", "--start-retries", "2"],
            "--start-retries has no effect with --restart never",
        ),
        (
            "web: a\n",
            ["--restart", "never", "--no-exit-on-failure"],
            "--no-exit-on-failure has no effect with --restart never",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, procfile, args, fragment):
    monkeypatch.chdir(tmp_path)
    if procfile is not None:
        (tmp_path / "Procfile").write_text(procfile)
    assert main_up(list(args)) == 2
    line = one_error_line(capsys)
    assert line.startswith("polytask up: error: ") and fragment in line
    assert not list(tmp_path.glob("*.pids"))


def test_bad_env_file_is_reported_with_its_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Procfile").write_text("web: a\n")
    (tmp_path / ".env").write_text("A=1\nB='open\n")
    assert main_up([]) == 2
    assert ".env:2: cannot parse" in one_error_line(capsys)


def test_check_lists_every_problem_with_line_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Procfile").write_text(
        "# app\nweb: a\nweb: b\nnot a process line\nbad name: c\nempty:\n  worker: d\n"
    )
    assert main_check([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    found = [re.match(r"polytask check: (\w+): Procfile:(\d+): ", e).groups() for e in err]
    # Lines foreman and honcho skip are warnings; the duplicate is an error.
    assert found == [("warning", str(n)) for n in (4, 5, 6, 7)] + [("error", "3")]
    assert main_check(["--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    found = [re.match(r"polytask check: (\w+): Procfile:(\d+): ", e).groups() for e in err]
    assert found == [("error", str(n)) for n in (3, 4, 5, 6, 7)]


def test_check_and_up_skip_lines_foreman_skips_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Procfile").write_text("web.v2: echo v2\nweb: echo ran $PS\n  indented: echo no\n")
    assert main_check([]) == 0
    captured = capsys.readouterr()
    assert "would start 1 program: web (2 lines skipped, see the warnings)" in captured.out
    assert "warning: Procfile:1: invalid process name 'web.v2'" in captured.err
    assert "warning: Procfile:3: indented line" in captured.err
    up = Up(tmp_path)
    assert up.finish() == 0
    assert up.program_lines("web.1") == ["ran web.1"]
    notes = up.program_lines("polytask")
    assert any(n.startswith("warning: Procfile:1: invalid process name 'web.v2'") for n in notes)
    assert any(n.startswith("warning: Procfile:3: indented line") for n in notes)


def test_check_ok_and_help(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Procfile").write_text("web: a\nworker: b\n")
    assert main_check(["-c", "web=2"]) == 0
    assert "would start 3 programs: web x2, worker" in capsys.readouterr().out
    assert main_check(["-f", "nope"]) == 2
    assert "cannot read Procfile 'nope'" in one_error_line(capsys)
    assert main_up(["--help"]) == 0
    assert "--restart" in capsys.readouterr().out


# --------------------------------------------------------------------------- real runs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_everything_gracefully(tmp_path, sig):
    write_procfile(tmp_path, web=WEB, stubborn=STUBBORN, tree=TREE)
    up = Up(tmp_path, "-c", "web=2", "--timeout", "1")
    try:
        up.wait_for("web web.1 PORT=5000", "web web.2 PORT=5001", "stubborn ready", "tree ready")
        grandchildren = [int(p) for p in (tmp_path / "tree.pids").read_text().split()]
        pids = spawned_pids(up.events()) + grandchildren
        up.proc.send_signal(sig)
        assert up.finish() == 128 + sig  # 130 / 143, as honcho
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []
    events = up.events()
    assert any(e["event"] == "stop" and sig.name in e["reason"] for e in events)
    kills = [e["process"] for e in events if e["event"] == "signal" and e["signal"] == "SIGKILL"]
    assert kills == ["stubborn.1"]
    assert events[-1] == {**events[-1], "event": "done", "returncode": 128 + sig}
    summary = up.out.split("PROCESS")[-1]
    assert re.search(r"stubborn\.1 +stopped +0 +killed by signal SIGKILL \(9\)", summary)
    assert re.search(r"web\.2 +stopped +0 +killed by signal SIGTERM \(15\)", summary)
    assert up.program_lines("web.2") == ["web web.2 PORT=5001"]


def test_second_ctrl_c_kills_at_once(tmp_path):
    write_procfile(tmp_path, stubborn=STUBBORN, tree=TREE)
    up = Up(tmp_path, "--timeout", "120")
    try:
        up.wait_for("stubborn ready", "tree ready")
        pids = spawned_pids(up.events())
        up.proc.send_signal(signal.SIGINT)
        up.wait_for("stopping (SIGINT received)")
        up.proc.send_signal(signal.SIGINT)
        # Without the second Ctrl-C this would take the 120 s grace.
        assert up.finish(timeout=60) == 130
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []
    assert any(e["event"] == "kill" for e in up.events())
    assert "killing every program now (second signal, SIGINT)" in up.out


def test_crash_given_up_fast_output_intact_exit_with_its_status(tmp_path):
    write_procfile(tmp_path, crash="echo crashing >&2; exit 3", flood=FLOOD, steady=WEB)
    up = Up(
        tmp_path,
        "--restart",
        "on-failure",
        "--start-retries",
        "2",
        "--backoff",
        "0.05",
        "--timeout",
        "2",
        "--start-seconds",
        "2",
    )
    assert up.finish() == 3  # the status of the program given up on
    out = up.out
    assert up.program_lines("crash.1") == ["crashing"] * 3
    assert "crash.1 (pid" in out and "failed: exited within 2s of starting 3 times in a row" in out
    assert re.search(r"crash\.1 +failed +2 +exited with code 3", out.split("PROCESS")[-1])
    # The flood may have been stopped by the crash: whatever it printed is whole and in order.
    flood = up.program_lines("flood.1")
    seen: dict[str, list[int]] = {"out": [], "err": []}
    for text in flood:
        m = re.fullmatch(r"(out|err) (\d{5}) (x*|y*)", text)
        assert m, f"cut or mixed line: {text[:80]!r}"
        assert len(m.group(3)) == int(m.group(2)) % 200
        seen[m.group(1)].append(int(m.group(2)))
    for stream in seen.values():
        assert stream == list(range(len(stream)))
    assert gone(spawned_pids(up.events())) == []


def test_fast_output_all_lines_arrive(tmp_path):
    write_procfile(tmp_path, flood=FLOOD)
    up = Up(tmp_path, "--restart", "never")
    assert up.finish() == 0
    flood = up.program_lines("flood.1")
    assert len(flood) == 10000
    assert sorted(flood) == sorted(
        [f"out {i:05d} " + "x" * (i % 200) for i in range(5000)]
        + [f"err {i:05d} " + "y" * (i % 200) for i in range(5000)]
    )


def test_without_exit_on_failure_the_others_keep_running(tmp_path):
    write_procfile(tmp_path, crash="exit 4", web=WEB)
    up = Up(
        tmp_path,
        "--restart",
        "on-failure",
        "--no-exit-on-failure",
        "--start-retries",
        "0",
        "--timeout",
        "2",
    )
    try:
        up.wait_for("crash.1 (pid", "failed:", "web web.1 PORT=5100")
        time.sleep(0.3)  # deliberate: up must not end meanwhile
        assert up.proc.poll() is None
        pids = spawned_pids(up.events())
        up.proc.send_signal(signal.SIGTERM)
        # The failure came first: its status, not SIGTERM's 143.
        assert up.finish() == 4
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()
    assert gone(pids) == []


HARNESSED_UP = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(log, 1)
os.dup2(log, 2)
os.chdir(sys.argv[2])
os.execv(sys.executable, [sys.executable, "-m", "polytask.cli", "up", *sys.argv[3:]])
"""


def test_sigkill_of_up_leaves_nothing_running(tmp_path):
    write_procfile(tmp_path, web=WEB, stubborn=STUBBORN, tree=TREE)
    log = tmp_path / "up.log"
    h = Harness(HARNESSED_UP, tmp_path, str(log), str(tmp_path), "-c", "web=2", "--timeout", "30")
    try:
        for text in ("web web.1 PORT=5000", "web web.2 PORT=5001", "stubborn ready", "tree ready"):
            h.wait_for_line(log, text)
        # "tree ready" can come before its inner shell has forked its sleeps.
        deadline = time.monotonic() + 30
        while len(h.descendants()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(h.descendants()) >= 10
        h.signal(signal.SIGKILL)
        assert h.wait() == -signal.SIGKILL
        assert h.leftovers(within=10) == []
    finally:
        h.close()
        # Harness leaves its own pipes open (a ResourceWarning under filterwarnings=error).
        for pipe in (h.proc.stdin, h.proc.stdout):
            if pipe is not None:
                pipe.close()


# --------------------------------------------------------------------------- polytask run


def polytask_run(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polytask.cli", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
        **kw,
    )


def test_run_loads_the_env_files_and_exits_with_the_commands_status(tmp_path):
    (tmp_path / ".env").write_text("GREETING=hello\nWHO=$GREETING world\n")
    (tmp_path / "dev.env").write_text("GREETING=bonjour\n")
    show = "import os, sys; print(os.environ['GREETING'], os.environ['WHO']); sys.exit(7)"
    r = polytask_run(tmp_path, sys.executable, "-c", show)
    assert (r.returncode, r.stdout) == (7, "hello hello world\n")
    r = polytask_run(
        tmp_path, "-e", "dev.env", "--", sys.executable, "-c", show.replace("WHO", "GREETING")
    )
    assert (r.returncode, r.stdout) == (7, "bonjour bonjour\n")
    r = polytask_run(tmp_path, "no-such-command-here")
    assert r.returncode == 127 and "command not found: 'no-such-command-here'" in r.stderr
    r = polytask_run(tmp_path)
    assert r.returncode == 2 and "no command given" in r.stderr


def test_run_a_procfile_type_gets_what_up_gives_its_first_copy(tmp_path):
    write_procfile(tmp_path, web="echo other", worker="echo $PS $HONCHO_PROCESS_NAME $PORT; exit 3")
    r = polytask_run(tmp_path, "worker")
    assert (r.returncode, r.stdout) == (3, "worker.1 worker.1 5100\n")
    r = polytask_run(tmp_path, "-p", "8000", "worker")
    assert r.stdout == "worker.1 worker.1 8100\n"


def test_run_execs_the_command_so_signals_reach_it_and_nothing_is_left(tmp_path):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "polytask.cli", "run", sys.executable, "-c", code],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        assert proc.stdout is not None
        # The command is polytask run's own process: a signal goes straight to it.
        assert int(proc.stdout.readline()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
