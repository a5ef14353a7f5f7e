"""Control from outside: ``polytask ctl`` over ``up``'s socket, and the per-program API.

Three layers, as the code: the protocol and the per-program decisions, pure
(no process); ``pt.Supervisor.start_program`` / ``stop_program`` /
``restart_program`` / ``wait_ready`` with real programs; ``polytask up`` +
``polytask ctl`` as subprocesses, with real HTTP servers, signals and SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

import polytask as pt
from helpers import wait_until
from polytask._control import (
    MAX_REQUEST,
    SOCKET_NAME,
    ControlProtocolError,
    LineBuffer,
    LogRing,
    Request,
    encode,
    format_status,
    parse_reply,
    parse_request,
    resolve_names,
)
from polytask._supervision import Exited, Kill, RestartPolicy, Start, State, Supervision

SRC = str(Path(__file__).resolve().parents[1] / "src")
PY = sys.executable

# =========================================================================== the protocol, pure


def test_requests_round_trip_and_bad_ones_say_what_is_wrong():
    for req in (
        Request("status"),
        Request("restart", "web.1"),
        Request("logs", None, lines=5, follow=True),
        Request("wait-ready", "web", timeout=2.5),
    ):
        line = encode(req.to_json())
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert parse_request(line[:-1]) == req
    bad = {
        b"not json": "not a JSON line",
        b"[1]": "a JSON object",
        b'{"op": "status"}': "protocol version",
        b'{"v": 1, "op": "reboot"}': "unknown request 'reboot'",
        b'{"v": 1, "op": "stop"}': "stop needs a program name",
        b'{"v": 1, "op": "stop", "name": 3}': "name must be",
        b'{"v": 1, "op": "logs", "lines": -1}': "lines must be",
        b'{"v": 1, "op": "logs", "follow": "yes"}': "follow must be",
        b'{"v": 1, "op": "wait-ready", "name": "w", "timeout": -1}': "timeout must be",
        b"{" + b" " * MAX_REQUEST + b"}": "longer than",
    }
    for line, message in bad.items():
        with pytest.raises(ControlProtocolError, match=message):
            parse_request(line)
    assert parse_reply(b'{"ok": false, "error": "x"}')["error"] == "x"
    assert parse_reply(b'{"log": "web.1", "time": 1.5, "line": "hi"}')["line"] == "hi"
    assert parse_reply(b'{"tick": true}') == {"tick": True}
    for line in (b'{"ok": false}', b'{"what": 1}', b'{"log": "w", "line": 3, "time": 1}'):
        with pytest.raises(ControlProtocolError):
            parse_reply(line)


def test_line_buffer_splits_lines_and_refuses_an_endless_one():
    buf = LineBuffer(10)
    assert buf.feed(b"ab") == [] and buf.pending
    assert buf.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert buf.feed(b"\n") == [b"f"] and not buf.pending
    with pytest.raises(ControlProtocolError, match="longer than 10 bytes"):
        buf.feed(b"x" * 11)
    with pytest.raises(ControlProtocolError, match="longer than 10 bytes"):
        LineBuffer(10).feed(b"y" * 11 + b"\n")


def test_names_resolve_to_copies_and_an_unknown_one_lists_the_known():
    programs = [("web.1", "web"), ("web.2", "web"), ("worker.1", "worker")]
    assert resolve_names("web", programs) == ["web.1", "web.2"]
    assert resolve_names("web.2", programs) == ["web.2"]
    with pytest.raises(
        ValueError, match=r"no program 'db'.*web \(web.1, web.2\); worker \(worker.1\)"
    ):
        resolve_names("db", programs)
    with pytest.raises(ValueError, match="'web.3'"):
        resolve_names("web.3", programs)


def test_log_ring_is_bounded_per_program_and_keeps_the_order():
    ring = LogRing(max_lines=3, max_bytes=10, max_line=4)
    for i in range(5):
        ring.add("a", f"a{i}".encode(), float(i))
    ring.add("b", b"b-long-line", 9.0)
    assert [line.data for line in ring.tail(["a"], None)] == [b"a2", b"a3", b"a4"]
    assert ring.tail(["b"], None)[0].data == b"b-lo"  # cut to max_line
    assert [line.name for line in ring.tail(None, 2)] == ["a", "b"]
    assert ring.tail(None, 0) == [] and len(ring.tail(None, 100)) == 4
    assert [line.data for line in ring.after(4, None)] == [b"a4", b"b-lo"]
    for i in range(4):  # bytes bound: 4 lines of 4 bytes > 10
        ring.add("c", b"cccc", 0.0)
    assert len(ring.tail(["c"], None)) == 2


def test_log_ring_add_many_keeps_what_adding_one_by_one_keeps():
    # up adds what one read completed at once (a million short lines spent most
    # of their time in the ring); the ring must end the same, seq numbers included.
    batches = [[b"x" * (i % 7) for i in range(n)] for n in (0, 1, 2, 3, 5, 8, 13, 2, 40)] + [
        [b"long-line"] * 3,
        [b"y"] * 100,
    ]
    for max_lines, max_bytes in ((3, 10), (5, 1000), (50, 30)):
        one, many = (LogRing(max_lines=max_lines, max_bytes=max_bytes, max_line=4) for _ in "ab")
        for i, batch in enumerate(batches):
            for data in batch:
                one.add("a", data, float(i))
            one.add("b", b"b", float(i))
            many.add_many("a", batch, float(i))
            many.add_many("b", [b"b"], float(i))
            assert one.seq == many.seq
            assert one.tail(None, None) == many.tail(None, None)
            assert one.after(one.seq - 4, ["a"]) == many.after(many.seq - 4, ["a"])


def test_format_status_table():
    text = format_status(
        [
            {
                "name": "web.1",
                "state": "running",
                "pid": 42,
                "uptime": 75.0,
                "restarts": 1,
                "ready": True,
            },
            {
                "name": "worker.1",
                "state": "stopped",
                "pid": None,
                "uptime": 1.0,
                "restarts": 0,
                "ready": None,
            },
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY"]
    assert lines[1].split() == ["web.1", "running", "42", "1m15s", "1", "yes"]
    assert lines[2].split() == ["worker.1", "stopped", "-", "1.0s", "0", "-"]


# =========================================================================== decisions, pure


def run(*names: str, restart: str = "on-failure") -> Supervision:
    policy = RestartPolicy(restart=restart, backoff=1.0, jitter=0.0)  # type: ignore[arg-type]
    sup = Supervision(names, policy, grace=5.0, rand=lambda: 0.5)
    pid = 100
    while actions := sup.start_next(0.0):
        for a in actions:
            if isinstance(a, Start):
                sup.started(a.name, pid, 0.0)
                pid += 1
    return sup


@pytest.mark.parametrize("restart", ["on-failure", "always", "never"])
def test_a_program_stopped_on_request_is_held_and_keeps_the_run_going(restart):
    sup = run("web", "worker", restart=restart)
    assert [(type(a), a.name) for a in sup.stop_program("worker", 2.0)] == [(Kill, "worker")]
    assert sup.machines["worker"].state is State.STOPPING
    out = sup.exited("worker", -signal.SIGTERM, 2.5)
    assert [type(a) for a in out] == [Exited]  # no restart, no stop of the run, no exit
    assert sup.machines["worker"].state is State.STOPPED and not sup.stopping
    while actions := sup.tick(100.0):  # web's start counts; nothing starts worker
        assert not any(isinstance(a, Start) for a in actions)
    assert sup.status is None
    # The only other program ends cleanly: a held program still keeps the run going
    # (under "never" the first program to end still ends the run, as always).
    sup.exited("web", 0, 3.0)
    assert sup.done is (restart == "never")
    if restart == "never":
        assert sup.returncode == 0 and sup.stopping
        return
    assert sup.start_next(4.0) == []  # held: not started by start_next either
    started = sup.start_program("worker", 5.0)
    assert [(type(a), a.name) for a in started] == [(Start, "worker")]
    assert "worker" not in sup.held and sup.machines["worker"].restarts == 1


def test_restart_stops_then_starts_on_exit_and_start_ends_a_backoff():
    sup = run("web")
    assert [type(a) for a in sup.restart_program("web", 1.0)] == [Kill]
    out = sup.exited("web", -signal.SIGTERM, 1.5)
    assert [type(a) for a in out] == [Exited, Start] and not sup.done
    sup.started("web", 200, 1.5)
    # Crashed, backing off 1 s: start_program restarts it now.
    sup.exited("web", 1, 5.0)
    assert sup.machines["web"].state is State.BACKOFF
    assert [type(a) for a in sup.start_program("web", 5.1)] == [Start]
    # Asked while it is being stopped: it starts once it ended.
    sup.started("web", 201, 5.1)
    sup.stop_program("web", 6.0)
    assert sup.start_program("web", 6.1) == []
    assert [type(a) for a in sup.exited("web", -signal.SIGTERM, 6.2)] == [Exited, Start]
    # Once the run stops, requests do nothing.
    sup.started("web", 202, 6.2)
    sup.stop("test", 5.0, 7.0)
    assert sup.start_program("web", 7.1) == sup.restart_program("web", 7.1) == []


# =========================================================================== pt.Supervisor


SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(300)"]


def test_supervisor_start_stop_restart_program_and_wait_ready():
    out = io.StringIO()
    sup = pt.Supervisor(
        {"web": SLEEPER, "worker": SLEEPER},
        concurrency={"web": 2},
        start_seconds=0.2,
        backoff=0.0,
        output=out,
    )
    with sup:
        assert sup.wait_ready("web", timeout=30)
        before = {s.name: s.pid for s in sup.status()}
        (st,) = sup.restart_program("web.1", timeout=30)
        assert st.name == "web.1" and st.pid not in (None, before["web.1"]) and st.restarts == 1
        assert {s.name: s.pid for s in sup.status()}["web.2"] == before["web.2"]
        stopped = sup.stop_program("worker", timeout=30)
        assert [(s.name, s.state, s.pid) for s in stopped] == [("worker.1", "stopped", None)]
        # Held: not restarted by the policy (backoff 0 would restart it at once).
        sup.restart_program("web.2", timeout=30)  # one more loop round meanwhile
        assert sup.status()[2].state == "stopped"
        with pytest.raises(pt.PolytaskError, match="stopped on request"):
            sup.wait_ready("worker", timeout=5)
        (st,) = sup.start_program("worker", timeout=30)
        assert st.state == "starting" and st.pid
        with pytest.raises(ValueError, match=r"known: web \(web.1, web.2\); worker"):
            sup.stop_program("db")
        with pytest.raises(TypeError):
            sup.start_program(3)  # type: ignore[arg-type]
    assert "stopped on request" in out.getvalue()
    assert "restart web.1 (requested)" in out.getvalue()
    with pytest.raises(pt.PolytaskError, match="ended"):
        sup.start_program("web")


def test_wait_ready_with_a_probe_times_out_and_restart_never_stop_keeps_the_run():
    never_ready = [PY, "-c", "import time; time.sleep(300)"]
    sup = pt.Supervisor(
        {"slow": never_ready, "other": SLEEPER},
        config={"slow": {"ready": {"log": "never printed"}, "ready_timeout": 300}},
        restart="never",
        output=io.StringIO(),
    )
    with pytest.raises(RuntimeError, match="not started"):
        sup.wait_ready("slow", timeout=0)
    with sup:
        assert sup.wait_ready("slow", timeout=0.3) is False
        assert sup.status()[0].ready is False
        # Under "never" a program that ends ends the run; one stopped on request does not.
        sup.stop_program("slow", timeout=30)
        sup.stop_program("other", timeout=30)
        assert not sup.wait(timeout=0.2) and sup.returncode is None
        sup.start_program("other", timeout=30)
        assert sup.wait_ready("other", timeout=30)
    assert sup.returncode == 0


# =========================================================================== polytask up + ctl


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PORT", None)
    return e


def free_base() -> int:
    """A base PORT whose +0, +1 (web x2) and +100 (worker) are free now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 100 > 65535:
            continue
        try:
            for port in (base, base + 1, base + 100):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports")


PROCFILE = (
    f"web: {PY} -m http.server $PORT --bind 127.0.0.1\n"
    "worker: while true; do echo tick; sleep 0.2; done\n"
)


class Up:
    """``polytask up`` in ``folder`` (output to files), and ``polytask ctl`` beside it."""

    def __init__(self, folder: Path, *args: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.out_path = folder / "up.out"
        self.err_path = folder / "up.err"
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "polytask.cli", "up", "--color", "never", *args],
                cwd=folder,
                stdout=out,
                stderr=err,
                env=env(),
            )

    def wait_serving(self) -> None:
        sock = self.folder / SOCKET_NAME
        wait_until(
            lambda: (
                self.proc.poll() is not None
                or (sock.exists() and self.ctl("status").returncode == 0)
            ),
            what="up's control socket",
        )
        assert self.proc.poll() is None, self.err_path.read_text()

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return ctl(self.folder, *args, timeout=timeout)

    def finish(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


def ctl(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


def table(text: str) -> dict[str, list[str]]:
    lines = text.strip().splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY"], text
    return {cols[0]: cols[1:] for cols in (line.split() for line in lines[1:])}


def get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return int(r.status)


def test_ctl_controls_a_running_up(tmp_path: Path):
    base = free_base()
    (tmp_path / "Procfile").write_text(PROCFILE)
    up = Up(tmp_path, "-c", "web=2", "-p", str(base), "--backoff", "0")
    try:
        up.wait_serving()
        mode = (tmp_path / SOCKET_NAME).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

        r = up.ctl("wait-ready", "web", "--timeout", "30")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: _serves(base) and _serves(base + 1), what="both web copies serving")
        rows = table(up.ctl("status").stdout)
        assert sorted(rows) == ["web.1", "web.2", "worker.1"]
        assert all(
            row[0] == "running" and row[1].isdigit() and row[4] == "-" for row in rows.values()
        )
        pids = {name: int(row[1]) for name, row in rows.items()}

        # Restart web.1 while web.2 serves: every GET on web.2 succeeds throughout.
        stop = threading.Event()
        answers: list[int | str] = []

        def hammer() -> None:
            while not stop.is_set():
                try:
                    answers.append(get(base + 1))
                except OSError as exc:
                    answers.append(repr(exc))

        t = threading.Thread(target=hammer)
        t.start()
        try:
            wait_until(lambda: len(answers) >= 3, what="GETs on web.2")
            r = up.ctl("restart", "web.1")
            assert r.returncode == 0, r.stderr
            assert up.ctl("wait-ready", "web.1").returncode == 0
            wait_until(lambda: _serves(base), what="web.1 serving again")
            seen = len(answers)
            wait_until(lambda: len(answers) >= seen + 3, what="more GETs on web.2")
        finally:
            stop.set()
            t.join(30)
        assert answers and all(a == 200 for a in answers), [a for a in answers if a != 200][:3]
        rows = table(up.ctl("status").stdout)
        assert int(rows["web.1"][1]) != pids["web.1"] and rows["web.1"][3] == "1"
        assert int(rows["web.2"][1]) == pids["web.2"] and rows["web.2"][3] == "0"

        # stop: held (not restarted by the policy, even with --backoff 0) until start.
        r = up.ctl("stop", "worker")
        assert r.returncode == 0 and table(r.stdout)["worker.1"][:2] == ["stopped", "-"]
        r = up.ctl("wait-ready", "worker", "--timeout", "5")
        assert r.returncode == 1 and "stopped on request" in r.stderr
        assert up.ctl("restart", "web").returncode == 0  # both copies, one more loop round
        assert table(up.ctl("status").stdout)["worker.1"][0] == "stopped"
        r = up.ctl("start", "worker")
        assert r.returncode == 0, r.stderr
        assert table(r.stdout)["worker.1"][0] in ("starting", "running")

        # logs: the recent lines of one program, then follow until up ends.
        wait_until(lambda: "tick" in up.ctl("logs", "worker", "-n", "50").stdout, what="ticks")
        r = up.ctl("logs", "worker.1", "-n", "2")
        assert r.returncode == 0 and r.stdout.splitlines() == ["worker.1 | tick"] * 2
        # Every line kept (each program's ring: 1,000 lines; the GETs above may fill
        # web.2's, so -n 1000 could hold none of polytask's own lines).
        r = up.ctl("logs", "-n", "100000")
        assert "polytask | restart web.1 (requested)" in r.stdout
        assert "polytask | stop worker.1 (requested)" in r.stdout

        # Bad input: an unknown name lists the known ones (exit 2), no traceback.
        r = up.ctl("restart", "db")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "no program 'db'" in r.stderr and "web (web.1, web.2); worker (worker.1)" in r.stderr

        follower = subprocess.Popen(
            [PY, "-m", "polytask.cli", "ctl", "logs", "-f", "-n", "0", "worker"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == "worker.1 | tick\n"  # a new line arrived
            assert up.finish(signal.SIGTERM) == 143
            rest, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
        assert follower.returncode == 0 and "polytask up ended" in err
    finally:
        up.finish(signal.SIGKILL)
    assert not (tmp_path / SOCKET_NAME).exists()  # removed when up ended
    r = ctl(tmp_path, "status")
    assert r.returncode == 1 and "no polytask up is running in" in r.stderr
    assert "Traceback" not in r.stderr


def _serves(port: int) -> bool:
    try:
        return get(port) == 200
    except OSError:
        return False


def test_an_up_of_another_procfile_runs_beside_with_its_own_socket(tmp_path: Path):
    # honcho's and foreman's habit: `up -f Procfile.dev` beside `up` in one folder.
    (tmp_path / "Procfile").write_text("main: sleep 300\n")
    (tmp_path / "Procfile.dev").write_text("dev: sleep 300\n")
    first = Up(tmp_path)
    dev = Up(tmp_path, "-f", "Procfile.dev")
    try:
        first.wait_serving()
        wait_until(
            lambda: (
                dev.proc.poll() is not None
                or ctl(tmp_path, "-f", "Procfile.dev", "status").returncode == 0
            ),
            what="the second up's socket",
        )
        assert dev.proc.poll() is None, dev.err_path.read_text()
        assert (tmp_path / ".polytask.Procfile.dev.sock").exists()
        assert list(table(ctl(tmp_path, "status").stdout)) == ["main.1"]
        assert list(table(ctl(tmp_path, "-f", "Procfile.dev", "status").stdout)) == ["dev.1"]
        assert dev.finish(signal.SIGINT) == 130 and first.finish(signal.SIGINT) == 130
        assert not (tmp_path / ".polytask.Procfile.dev.sock").exists()
    finally:
        dev.finish(signal.SIGKILL)
        first.finish(signal.SIGKILL)


def test_second_up_is_refused_and_a_stale_socket_is_taken_over(tmp_path: Path):
    (tmp_path / "Procfile").write_text("sleeper: sleep 300\n")
    first = Up(tmp_path)
    try:
        first.wait_serving()
        second = subprocess.run(
            [PY, "-m", "polytask.cli", "up"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env(),
            timeout=60,
        )
        assert second.returncode == 2
        assert "another polytask up is running in" in second.stderr
        assert "sleeper" not in second.stdout  # refused before starting anything
        programs = [p.pid for p in psutil.Process(first.proc.pid).children()]
        first.proc.kill()  # SIGKILL: no clean-up of its own; the guardian ends its programs
        first.proc.wait(30)
        assert (tmp_path / SOCKET_NAME).exists()  # stale
        r = ctl(tmp_path, "status")
        assert r.returncode == 1 and "was left by one that was killed" in r.stderr
        wait_until(lambda: not any(psutil.pid_exists(p) for p in programs), what="guardian")
    finally:
        first.finish(signal.SIGKILL)
    third = Up(tmp_path)
    try:
        third.wait_serving()  # took the stale socket over
        assert table(third.ctl("status").stdout)["sleeper.1"][0] in ("starting", "running")
        assert third.finish(signal.SIGINT) == 130
    finally:
        third.finish(signal.SIGKILL)
    assert not (tmp_path / SOCKET_NAME).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(SOCKET_NAME)] == []


def test_a_folder_path_longer_than_sun_path_works(tmp_path: Path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / SOCKET_NAME)) > 108
    deep.mkdir(parents=True)
    (deep / "Procfile").write_text("sleeper: sleep 300\n")
    up = Up(deep)
    try:
        up.wait_serving()
        r = ctl(tmp_path, "-f", str(deep / "Procfile"), "status")  # found through -f
        assert r.returncode == 0 and "sleeper.1" in r.stdout
        r = ctl(tmp_path, "--procfile", str(deep / "Procfile"), "status", "--json")
        assert json.loads(r.stdout)[0]["name"] == "sleeper.1"
        assert up.finish(signal.SIGTERM) == 143
    finally:
        up.finish(signal.SIGKILL)
    assert not (deep / SOCKET_NAME).exists()


def test_ctl_bad_usage(tmp_path: Path):
    r = ctl(tmp_path, "explode")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = ctl(tmp_path, "wait-ready", "web", "--timeout", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = ctl(tmp_path, "stop", "web")
    assert r.returncode == 1 and "no polytask up is running" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_socket_is_removed_when_up_ends_by_itself(tmp_path: Path):
    (tmp_path / "Procfile").write_text("once: while [ ! -e go ]; do sleep 0.05; done\n")
    up = Up(tmp_path, "--restart", "never")
    try:
        up.wait_serving()
        (tmp_path / "go").touch()
        assert up.proc.wait(60) == 0
    finally:
        up.finish(signal.SIGKILL)
    assert not (tmp_path / SOCKET_NAME).exists()


def test_wait_ready_times_out_with_the_states_and_ctrl_c_ends_a_follower(tmp_path: Path):
    (tmp_path / "Procfile").write_text("slow: echo starting; exec sleep 300\n")
    (tmp_path / "polytask.toml").write_text(
        '[slow]\nready = {log = "never printed"}\nready_timeout = 300\n'
    )
    up = Up(tmp_path)
    try:
        up.wait_serving()
        r = up.ctl("wait-ready", "slow", "--timeout", "0.5")
        assert r.returncode == 1, r.stderr
        assert "slow not ready within 0.5s (slow.1 " in r.stderr and "not ready)" in r.stderr
        assert table(up.ctl("status").stdout)["slow.1"][4] == "no"
        follower = subprocess.Popen(
            [PY, "-m", "polytask.cli", "ctl", "logs", "-f", "slow"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == "slow.1 | starting\n"
            follower.send_signal(signal.SIGINT)
            _, err = follower.communicate(timeout=60)
            assert follower.returncode == 130 and "Traceback" not in err
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
        assert up.proc.poll() is None  # a client leaving changes nothing for up
        assert table(up.ctl("status").stdout)["slow.1"][0] in ("starting", "running")
        assert up.finish(signal.SIGTERM) == 143
    finally:
        up.finish(signal.SIGKILL)


def test_a_request_from_the_loop_thread_is_refused_without_effect():
    errors: list[str] = []
    sup: pt.Supervisor

    def on_event(record: dict) -> None:
        if record["event"] == "running" and record["process"] == "web.1":
            try:
                sup.stop_program("web")
            except RuntimeError as exc:
                errors.append(str(exc))

    out = io.StringIO()
    sup = pt.Supervisor({"web": SLEEPER}, start_seconds=0.1, output=out, on_event=on_event)
    with sup:
        assert sup.wait_ready("web", timeout=30)
        assert sup.restart_program("web", timeout=30)[0].restarts == 1  # one loop round later
    assert errors == ["cannot stop web from the supervisor's own loop thread"]
    assert "stop web.1 (requested)" not in out.getvalue()  # nothing was queued
    assert "restart web.1 (requested)" in out.getvalue()


def test_two_ups_started_at_once_one_runs_and_one_is_refused(tmp_path: Path):
    (tmp_path / "Procfile").write_text("sleeper: sleep 300\n")
    ups = [Up(tmp_path), Up(tmp_path)]
    try:
        # The socket is claimed by link(), which fails if the name exists: one wins.
        refused = wait_until(
            lambda: [u for u in ups if u.proc.poll() is not None], what="a refusal"
        )
        assert len(refused) == 1 and refused[0].proc.returncode == 2
        assert "another polytask up is running" in (tmp_path / "up.err").read_text()
        (running,) = [u for u in ups if u is not refused[0]]
        running.wait_serving()
        assert running.finish(signal.SIGTERM) == 143
    finally:
        for u in ups:
            u.finish(signal.SIGKILL)
    assert not (tmp_path / SOCKET_NAME).exists()
