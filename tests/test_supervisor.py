"""The supervisor: the pure state machine (no processes), then the runtime (real ones)."""

from __future__ import annotations

import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import polytask as pt
from helpers import wait_until
from polytask._supervisor import (
    TERMINAL,
    TRANSITIONS,
    Action,
    Event,
    ProcessMachine,
    RestartPolicy,
    State,
    format_summary,
)

PY = shlex.quote(sys.executable)

# =========================================================================== the pure machine


def machine(**kw) -> ProcessMachine:
    kw.setdefault("backoff", 1.0)
    kw.setdefault("backoff_max", 8.0)
    kw.setdefault("jitter", 0.0)
    return ProcessMachine(RestartPolicy(**kw), rand=lambda: 0.5)


def test_every_state_event_pair_is_in_the_table_or_rejected():
    for state, event in itertools.product(State, Event):
        m = machine()
        m.state = state
        if (state, event) in TRANSITIONS:
            continue
        with pytest.raises(ValueError, match="no transition"):
            m.handle(event, 0.0, code=0)
    # Stopping or killing is accepted in every state: the runtime may ask at any time.
    for state in State:
        assert (state, Event.STOP) in TRANSITIONS and (state, Event.KILL) in TRANSITIONS
    # Every row ends with an unconditional alternative.
    assert all(alts[-1][0] == "always" for alts in TRANSITIONS.values())


def test_start_then_running_after_start_seconds():
    m = machine(start_seconds=2.0)
    step = m.handle(Event.START, 10.0)
    assert (step.old, step.new, step.actions) == (State.STOPPED, State.STARTING, (Action.SPAWN,))
    assert m.due == 12.0 and m.spawns == 1 and m.restarts == 0
    step = m.handle(Event.TIMER, 12.0)
    assert step.new is State.RUNNING and step.actions == () and m.due is None
    assert m.uptime(15.0) == 5.0


def test_crash_at_once_is_given_up_after_start_retries():
    m = machine(start_retries=3, start_seconds=1.0)
    m.handle(Event.START, 0.0)
    now, delays = 0.0, []
    for attempt in range(3):
        step = m.handle(Event.EXIT, now + 0.1, code=1)
        assert step.new is State.BACKOFF and step.actions == ()
        delays.append(step.retry_in)
        now = m.due
        step = m.handle(Event.TIMER, now)
        assert step.new is State.STARTING and step.actions == (Action.SPAWN,)
    step = m.handle(Event.EXIT, now + 0.1, code=1)
    assert step.new is State.FAILED and m.due is None
    assert "4 times in a row" in step.reason and "giving up" in step.reason
    assert m.spawns == 4 and m.restarts == 3 and m.exitcode == 1
    assert delays == [1.0, 2.0, 4.0]


def test_backoff_doubles_is_capped_jittered_and_resets_after_a_stable_run():
    m = ProcessMachine(
        RestartPolicy(
            restart="always",
            backoff=1.0,
            backoff_max=4.0,
            jitter=0.5,
            start_seconds=0.0,
            stable_seconds=60.0,
        ),
        rand=lambda: 1.0,  # the largest jitter: delay * (1 - 0.5)
    )
    m.handle(Event.START, 0.0)
    now, delays = 0.0, []
    for _ in range(5):
        m.handle(Event.TIMER, now)  # running at once (start_seconds=0)
        step = m.handle(Event.EXIT, now + 2.0, code=0)
        delays.append(step.retry_in)
        now = m.due
        m.handle(Event.TIMER, now)
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    m.handle(Event.TIMER, now)
    step = m.handle(Event.EXIT, now + 61.0, code=0)  # a stable run: back to the first delay
    assert step.retry_in == 0.5
    assert m.failed_starts == 0  # every run lasted past start_seconds


def test_a_run_past_start_seconds_resets_the_failed_start_count():
    m = machine(start_retries=1, start_seconds=1.0)
    m.handle(Event.START, 0.0)
    assert m.handle(Event.EXIT, 0.5, code=1).new is State.BACKOFF
    m.handle(Event.TIMER, m.due)
    m.handle(Event.TIMER, m.due)  # past start_seconds: RUNNING
    assert m.state is State.RUNNING and m.failed_starts == 0
    assert m.handle(Event.EXIT, 100.0, code=1).new is State.BACKOFF
    m.handle(Event.TIMER, m.due)
    assert m.handle(Event.EXIT, m.due or 200.0, code=1).new is State.BACKOFF  # first failed start
    m.handle(Event.TIMER, m.due)
    assert m.handle(Event.EXIT, 300.0, code=1).new is State.FAILED


@pytest.mark.parametrize(
    "restart, code, expected",
    [
        ("on-failure", 0, State.EXITED),
        ("on-failure", 2, State.BACKOFF),
        ("on-failure", -9, State.BACKOFF),
        ("always", 0, State.BACKOFF),
        ("never", 0, State.EXITED),
        ("never", 1, State.FAILED),
    ],
)
@pytest.mark.parametrize("phase", ["starting", "running"])
def test_restart_policies(restart, code, expected, phase):
    m = machine(restart=restart)
    m.handle(Event.START, 0.0)
    if phase == "running":
        m.handle(Event.TIMER, m.due)
    step = m.handle(Event.EXIT, 50.0, code=code)
    assert step.new is expected
    if expected is State.FAILED:
        assert "restart policy: never" in step.reason


def test_stop_sends_sigterm_then_kill_at_the_grace_deadline():
    m = machine()
    m.handle(Event.START, 0.0)
    m.handle(Event.TIMER, m.due)
    step = m.handle(Event.STOP, 10.0, grace=3.0)
    assert (step.new, step.actions, m.due) == (State.STOPPING, (Action.TERMINATE,), 13.0)
    assert m.handle(Event.STOP, 11.0, grace=0.0).actions == ()  # the first grace stands
    step = m.handle(Event.TIMER, 13.0)
    assert step.actions == (Action.KILL,) and m.due is None
    step = m.handle(Event.EXIT, 13.1, code=-9)
    assert step.new is State.STOPPED and m.exitcode == -9


def test_stop_while_backing_off_cancels_the_restart_and_kill_hurries():
    m = machine()
    m.handle(Event.START, 0.0)
    m.handle(Event.EXIT, 0.1, code=1)
    assert m.state is State.BACKOFF and m.due is not None
    step = m.handle(Event.STOP, 0.2, grace=5)
    assert step.new is State.STOPPED and step.actions == () and m.due is None
    m2 = machine()
    m2.handle(Event.START, 0.0)
    m2.handle(Event.STOP, 1.0, grace=30)
    step = m2.handle(Event.KILL, 1.5)
    assert step.new is State.STOPPING and step.actions == (Action.KILL,)
    for state in TERMINAL:
        m3 = machine()
        m3.state = state
        assert m3.handle(Event.KILL, 0.0).actions == ()


def test_start_again_after_failure_resets_counters():
    m = machine(start_retries=0)
    m.handle(Event.START, 0.0)
    assert m.handle(Event.EXIT, 0.1, code=1).new is State.FAILED
    step = m.handle(Event.START, 1.0)
    assert step.new is State.STARTING and m.failed_starts == 0 and m.restarts == 1


def test_exit_needs_a_code_and_policy_is_validated():
    m = machine()
    m.handle(Event.START, 0.0)
    with pytest.raises(ValueError, match="needs the exit code"):
        m.handle(Event.EXIT, 1.0)
    for bad in (
        {"restart": "sometimes"},
        {"backoff": -1},
        {"backoff": 2, "backoff_max": 1},
        {"jitter": 2},
        {"start_retries": -1},
        {"start_retries": 1.5},
        {"start_seconds": float("nan")},
        {"backoff": "1"},
        {"jitter": "0.5"},
        {"stable_seconds": True},
    ):
        with pytest.raises(ValueError):
            RestartPolicy(**bad)


def test_restart_durations_take_any_real_number_of_seconds():
    # As every timeout does: a Fraction (or a numpy scalar) is seconds too.
    from fractions import Fraction

    p = RestartPolicy(
        start_seconds=Fraction(1, 2),
        backoff=Fraction(1, 4),
        backoff_max=Fraction(3),
        jitter=Fraction(1, 10),
        stable_seconds=Fraction(7, 2),
    )
    assert (p.start_seconds, p.backoff, p.backoff_max, p.jitter, p.stable_seconds) == (
        0.5,
        0.25,
        3.0,
        0.1,
        3.5,
    )
    assert all(type(v) is float for v in (p.start_seconds, p.backoff, p.jitter))
    assert p.delay(10, 0.0) == 3.0
    # An int past a float's range is as long as inf (float() says OverflowError).
    assert RestartPolicy(stable_seconds=10**400).stable_seconds == float("inf")


def test_format_summary():
    st = pt.ProcessStatus("web.1", "web", "failed", None, 5000, 3, -9, 75.0, "x")
    table = format_summary([st])
    assert table.splitlines()[0].split() == [
        "PROCESS",
        "STATE",
        "RESTARTS",
        "LAST",
        "EXIT",
        "UPTIME",
    ]
    assert "killed by signal SIGKILL (9)" in table and "1m15s" in table and " 3 " in table


# =========================================================================== the runtime

LINE = re.compile(rb"^\d\d:\d\d:\d\d (\S+) +\| (.*)$")


def lines_of(out: io.BytesIO | io.StringIO, name: str) -> list[str]:
    data = out.getvalue()
    if isinstance(data, str):
        data = data.encode()
    found = []
    for raw in data.splitlines():
        m = LINE.match(raw)
        assert m, f"malformed output line {raw!r}"
        if m.group(1) == name.encode():
            found.append(m.group(2).decode())
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def quick(**kw):
    kw.setdefault("backoff", 0.02)
    kw.setdefault("backoff_max", 0.1)
    kw.setdefault("start_seconds", 0.5)
    kw.setdefault("timeout", 2.0)
    return kw


def test_copies_get_distinct_ports_env_file_and_all_end(tmp_path: Path):
    (tmp_path / "dev.env").write_text("GREETING=hello from env\n")
    out = io.BytesIO()
    show = f"{PY} -c \"import os; print(os.environ['PS'], os.environ['PORT'], os.environ['GREETING'])\""
    sup = pt.Supervisor(
        {"web": show, "job": [sys.executable, "-c", "print('argv', 42)"]},
        concurrency="web=3",
        env_file=tmp_path / "dev.env",
        restart="on-failure",
        output=out,
        **quick(),
    )
    with sup:
        assert sup.wait(timeout=30)
    assert sup.returncode == 0
    assert sorted(lines_of(out, "web.1") + lines_of(out, "web.2") + lines_of(out, "web.3")) == [
        "web.1 5000 hello from env",
        "web.2 5001 hello from env",
        "web.3 5002 hello from env",
    ]
    assert lines_of(out, "job.1") == ["argv 42"]
    states = {s.name: (s.state, s.exitcode, s.port) for s in sup.status()}
    assert states["job.1"] == ("exited", 0, 5100)
    assert all(s.state == "exited" and s.pid is None for s in sup.status())


def test_crash_at_once_is_given_up_and_the_others_are_stopped():
    events: list[dict] = []
    out = io.StringIO()
    sup = pt.Supervisor(
        {"crash": "echo dying >&2; exit 3", "steady": "sleep 60"},
        start_retries=2,
        output=out,
        on_event=events.append,
        **quick(),
    )
    sup.start()
    assert sup.wait(timeout=30)
    final = {s.name: s for s in sup.stop()}
    assert sup.returncode == 3  # the status of the program given up on
    assert final["crash.1"].state == "failed" and final["crash.1"].restarts == 2
    assert final["crash.1"].exitcode == 3
    assert final["steady.1"].state == "stopped" and final["steady.1"].exitcode == -15
    assert lines_of(out, "crash.1") == ["dying"] * 3
    kinds = [(e["event"], e.get("process")) for e in events]
    assert kinds.count(("spawn", "crash.1")) == 3 and kinds.count(("retry", "crash.1")) == 2
    assert ("failed", "crash.1") in kinds
    assert kinds.index(("failed", "crash.1")) < kinds.index(("stop", None))
    assert kinds[-1] == ("done", None) and events[-1]["returncode"] == 3
    assert "giving up" in out.getvalue()


def test_keep_running_after_a_failure_without_exit_on_failure():
    sup = pt.Supervisor(
        {"crash": "exit 1", "steady": "sleep 60"},
        start_retries=0,
        exit_on_failure=False,
        output=io.BytesIO(),
        **quick(),
    )
    with sup:
        wait_until(lambda: sup.status()[0].state == "failed", what="crash.1 failed")
        time.sleep(0.3)  # deliberate: the supervisor must not end meanwhile
        assert not sup.wait(timeout=0)
        assert sup.status()[1].state in ("starting", "running") and sup.status()[1].pid
    assert sup.returncode == 1


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)


@pytest.mark.parametrize("via_shell", [False, True], ids=["argv", "shell"])
def test_program_ignoring_sigterm_is_killed_after_the_timeout(via_shell):
    events: list[dict] = []
    out = io.BytesIO()
    # dash does not exec the command it runs: the shell dies of SIGTERM, the
    # program under it must still get the whole grace before SIGKILL.
    cmd = f'{PY} -c "{STUBBORN}"' if via_shell else [sys.executable, "-c", STUBBORN]
    sup = pt.Supervisor({"stubborn": cmd}, output=out, on_event=events.append, **quick())
    with sup:
        wait_until(lambda: "ready" in lines_of(out, "stubborn.1"), what="ready")
        leader = psutil.Process(sup.status()[0].pid)
        tree = [leader.pid] + [p.pid for p in leader.children(recursive=True)]
        t0 = time.monotonic()
        final = sup.stop(timeout=0.5)
        waited = time.monotonic() - t0
    assert final[0].state == "stopped"
    assert final[0].exitcode == -9
    assert waited >= 0.45  # the grace was honoured (a lower bound, not a speed check)
    signals = [e["signal"] for e in events if e["event"] == "signal"]
    assert signals == ["SIGTERM", "SIGKILL"]
    wait_until(lambda: not any(alive(p) for p in tree), 10, "the tree to be gone")


GRANDPARENT = """
import subprocess, sys, time
kids = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
inner = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
with open(sys.argv[1], "w") as f:
    f.write(" ".join(str(k.pid) for k in kids + [inner]))
print("spawned", flush=True)
time.sleep(300)
"""


def test_grandchildren_are_gone_after_stop(tmp_path: Path):
    script = tmp_path / "gp.py"
    script.write_text(GRANDPARENT)
    pids = tmp_path / "pids"
    out = io.BytesIO()
    sup = pt.Supervisor(
        {"tree": [sys.executable, str(script), str(pids)]},
        concurrency={"tree": 2},
        output=out,
        **quick(),
    )
    sup.start()
    try:
        wait_until(
            lambda: len(lines_of(out, "tree.1") + lines_of(out, "tree.2")) == 2, what="spawned"
        )
        leaders = [s.pid for s in sup.status()]

        def descendants() -> list[int]:
            return [p.pid for pid in leaders for p in psutil.Process(pid).children(recursive=True)]

        # "spawned" can come before the inner shell has forked its sleeps.
        wait_until(lambda: len(descendants()) >= 2 * 5, what="2 sleeps + sh + its 2 sleeps, each")
        tree = descendants()
    finally:
        sup.stop()
    wait_until(lambda: not any(alive(p) for p in leaders + tree), 10, "the tree to be gone")


def test_a_program_that_exits_takes_its_background_jobs_with_it(tmp_path: Path):
    pidfile = tmp_path / "bg"
    sup = pt.Supervisor(
        {"leaver": f"sleep 300 & echo $! > {shlex.quote(str(pidfile))}; exit 0"},
        restart="never",
        output=io.BytesIO(),
        **quick(),
    )
    with sup:
        assert sup.wait(timeout=30)
    bg = int(pidfile.read_text())
    wait_until(lambda: not alive(bg), 10, "the background job to be killed")


FLOOD = """
import sys
n = int(sys.argv[1])
for i in range(n):
    pad = "x" * (i % 300)
    print(f"out {i:06d} {pad}")
    print(f"err {i:06d} {pad}", file=sys.stderr)
"""


def test_fast_output_on_both_streams_loses_and_mixes_nothing(tmp_path: Path):
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    n = 20000
    out = io.BytesIO()
    # Block-buffered stdout: its writes end mid-line, the hard case for reassembly.
    sup = pt.Supervisor(
        {"flood": [sys.executable, str(script), str(n)], "calm": "echo calm"},
        env={"PYTHONUNBUFFERED": ""},
        restart="on-failure",
        output=out,
        **quick(),
    )
    with sup:
        assert sup.wait(timeout=60)
    assert sup.returncode == 0
    got = lines_of(out, "flood.1")
    assert len(got) == 2 * n
    seen: dict[str, list[int]] = {"out": [], "err": []}
    for text in got:
        m = re.fullmatch(r"(out|err) (\d{6}) (x*)", text)
        assert m, f"line mixed or cut: {text[:80]!r}"
        i = int(m.group(2))
        assert len(m.group(3)) == i % 300
        seen[m.group(1)].append(i)
    assert seen["out"] == list(range(n)) and seen["err"] == list(range(n))
    assert lines_of(out, "calm.1") == ["calm"]


def test_restart_always_with_backoff_and_status(tmp_path: Path):
    out = io.BytesIO()
    sup = pt.Supervisor(
        {"blink": "echo up $PORT; sleep 0.2"},
        restart="always",
        start_seconds=0.1,
        backoff=0.05,
        backoff_max=0.1,
        output=out,
        timeout=2.0,
    )
    with sup:
        wait_until(lambda: sup.status()[0].restarts >= 3, what="three restarts")
        st = sup.status()[0]
        assert st.kind == "blink" and st.port == 5000 and st.exitcode == 0
    assert sup.returncode == 0
    assert lines_of(out, "blink.1")[:3] == ["up 5000"] * 3


def test_restart_never_the_first_program_to_end_stops_the_rest_with_its_status():
    events: list[dict] = []
    sup = pt.Supervisor(
        {"web": "exec sleep 60", "test": "exit 5", "late": "exec sleep 60"},
        restart="never",
        output=io.BytesIO(),
        on_event=events.append,
        **quick(),
    )
    with sup:
        assert sup.wait(timeout=30)
    assert sup.returncode == 5
    states = {s.name: (s.state, s.exitcode) for s in sup.status()}
    assert states == {
        "web.1": ("stopped", -15),
        "test.1": ("failed", 5),
        "late.1": ("stopped", -15),
    }
    assert any(e["event"] == "stop" and "test.1 ended" in e["reason"] for e in events)


def test_a_stop_request_status_counts_only_if_nothing_decided_first():
    sup = pt.Supervisor({"web": "exec sleep 60"}, output=io.BytesIO(), **quick())
    with sup:
        sup.request_stop("asked", status=143)
        assert sup.wait(timeout=30)
    assert sup.returncode == 143
    sup = pt.Supervisor({"web": "exec sleep 60"}, output=io.BytesIO(), **quick())
    with sup:
        pass  # stop() carries no status
    assert sup.returncode == 0


def test_a_program_given_up_on_after_exiting_0_still_gives_status_1():
    # restart="always": it keeps exiting 0 at once, so it is given up on; a
    # failure must never read as success.
    sup = pt.Supervisor(
        {"blink": "true"}, restart="always", start_retries=0, output=io.BytesIO(), **quick()
    )
    with sup:
        assert sup.wait(timeout=30)
    assert sup.status()[0].state == "failed" and sup.returncode == 1


def test_a_program_that_cannot_start_is_reported_and_fails(tmp_path: Path):
    out = io.StringIO()
    sup = pt.Supervisor({"ghost": ["/nonexistent/program"]}, start_retries=1, output=out, **quick())
    with sup:
        assert sup.wait(timeout=30)
    st = sup.status()[0]
    assert st.state == "failed" and st.exitcode == 127 and st.restarts == 1
    assert "could not start" in out.getvalue()
    assert sup.returncode == 127


def test_api_misuse_and_bad_input():
    with pytest.raises(pt.ProcfileError, match="unknown process 'nope'"):
        pt.Supervisor({"web": "true"}, names=["nope"])
    with pytest.raises(pt.ProcfileError, match="malformed concurrency"):
        pt.Supervisor({"web": "true"}, concurrency="web")
    with pytest.raises(FileNotFoundError):
        pt.Supervisor("/nonexistent/Procfile")
    with pytest.raises(ValueError, match="timeout"):
        pt.Supervisor({"web": "true"}, timeout=-1)
    with pytest.raises(ValueError, match="restart must be one of"):
        pt.Supervisor({"web": "true"}, restart="sometimes")  # type: ignore[arg-type]
    sup = pt.Supervisor({"web": "true"}, output=io.BytesIO())
    with pytest.raises(RuntimeError, match="not started"):
        sup.wait(0)
    assert sup.stop() == sup.status()  # stopping what never started is harmless
    with sup:
        with pytest.raises(RuntimeError, match="already started"):
            sup.start()
    assert "finished" in repr(sup)


def test_procfile_path_and_colour(tmp_path: Path):
    (tmp_path / "Procfile").write_text("hello: echo hi from $PS\n")
    out = io.BytesIO()
    with pt.Supervisor(
        tmp_path / "Procfile", restart="never", output=out, colour=True, cwd=tmp_path
    ) as sup:
        assert sup.wait(timeout=30)
    data = out.getvalue()
    assert b"\x1b[36mhello.1  \x1b[0m| hi from hello.1" in data
    assert b"\x1b[1mpolytask \x1b[0m| " in data


def test_a_supervisor_left_running_is_stopped_at_interpreter_exit(tmp_path: Path):
    script = tmp_path / "forgot.py"
    script.write_text(
        "import polytask as pt\n"
        "sup = pt.Supervisor({'s': 'exec sleep 300'})\n"
        "sup.start()\n"
        "print('PID', sup.status()[0].pid, flush=True)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("PID ")[1].split()[0])
    # Stopped gracefully by the exit hook (the guardian alone would not print this).
    assert "stopping (stop() called)" in r.stdout
    assert "killed by signal SIGTERM (15)" in r.stdout
    wait_until(lambda: not alive(pid), 10, "the program to be gone")
