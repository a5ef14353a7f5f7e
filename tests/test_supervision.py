"""The supervisor's decisions, pure: scripted event sequences in, actions out.

No processes and no clock: time is an argument, and the jitter is fixed. The
runtime that carries these actions out is tested in test_supervisor.py,
test_up_cli.py and test_up_honcho.py.
"""

from __future__ import annotations

import signal

import pytest

from polytask._supervision import (
    Exit,
    Exited,
    GiveUp,
    Kill,
    Killing,
    NotReady,
    Probe,
    Ready,
    RestartPolicy,
    Running,
    Start,
    State,
    Stopping,
    Supervision,
    SupervisionAction,
    Waiting,
)

SIGINT_STATUS = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
SIGTERM_STATUS = 128 + signal.SIGTERM  # 143


def run(*names: str, grace: float = 5.0, exit_on_failure: bool = True, **policy) -> Supervision:
    policy.setdefault("backoff", 1.0)
    policy.setdefault("backoff_max", 8.0)
    policy.setdefault("jitter", 0.0)
    policy.setdefault("start_seconds", 1.0)
    return Supervision(
        names or ("web",),
        RestartPolicy(**policy),
        grace=grace,
        exit_on_failure=exit_on_failure,
        rand=lambda: 0.5,
    )


def short(actions: list[SupervisionAction]) -> list[tuple[object, ...]]:
    """Actions as tuples, for readable assertions."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        if isinstance(a, Start):
            out.append(("start", a.name))
        elif isinstance(a, Kill):
            out.append(("kill", a.name, a.policy))
        elif isinstance(a, Running):
            out.append(("running", a.name))
        elif isinstance(a, Exited):
            out.append(("exited", a.name, a.code, a.state.value))
        elif isinstance(a, GiveUp):
            out.append(("give_up", a.name, a.code))
        elif isinstance(a, Stopping):
            out.append(("stopping", a.alive, a.grace))
        elif isinstance(a, Killing):
            out.append(("killing",))
        else:
            assert isinstance(a, Exit)
            out.append(("exit", a.code))
    return out


def start_all(sup: Supervision, now: float = 0.0, pid: int = 100) -> list[tuple[object, ...]]:
    """Start every program as the runtime does: one per call, each reported started."""
    seen: list[tuple[object, ...]] = []
    while actions := sup.start_next(now):
        for a in actions:
            if isinstance(a, Start):
                sup.started(a.name, pid, now)
                pid += 1
        seen += short(actions)
    return seen


def ticks(sup: Supervision, now: float) -> list[tuple[object, ...]]:
    """Every timer due at ``now``, as the runtime drains them."""
    seen: list[tuple[object, ...]] = []
    while actions := sup.tick(now):
        seen += short(actions)
    return seen


def restart(sup: Supervision, name: str = "web") -> list[tuple[object, ...]]:
    """Wait out a backoff: tick at its due time (the restart's Start)."""
    due = sup.machines[name].due
    assert due is not None
    seen = short(sup.tick(due))
    sup.started(name, 999, due)
    return seen


# =========================================================================== restart modes


def test_on_failure_restarts_a_failure_and_not_a_clean_exit():
    sup = run("web", "job", restart="on-failure")
    assert start_all(sup) == [("start", "web"), ("start", "job")]
    assert ticks(sup, 1.0) == [("running", "web"), ("running", "job")]
    assert short(sup.exited("web", 3, 5.0)) == [("exited", "web", 3, "backoff")]
    assert restart(sup) == [("start", "web")]
    assert sup.machines["web"].restarts == 1
    assert short(sup.exited("job", 0, 7.0)) == [("exited", "job", 0, "exited")]
    assert not sup.done and not sup.stopping  # web still runs
    ticks(sup, 100.0)
    assert short(sup.exited("web", 0, 101.0)) == [("exited", "web", 0, "exited"), ("exit", 0)]
    assert sup.done and sup.returncode == 0 and sup.status is None


def test_always_restarts_even_a_clean_exit():
    sup = run(restart="always")
    start_all(sup)
    ticks(sup, 1.0)
    assert short(sup.exited("web", 0, 20.0)) == [("exited", "web", 0, "backoff")]
    assert restart(sup) == [("start", "web")]


@pytest.mark.parametrize("code", [0, 1, -signal.SIGKILL])
def test_never_first_exit_stops_all_with_that_programs_status(code):
    # foreman's and honcho's rule, whatever the status (0 included).
    sup = run("web", "worker", "clock", restart="never", grace=3.0)
    start_all(sup)
    ticks(sup, 1.0)
    state = "exited" if code == 0 else "failed"
    expected = [("exited", "worker", code, state)]
    if code:
        expected.append(("give_up", "worker", code))
    expected += [("stopping", 2, 3.0), ("kill", "web", "term"), ("kill", "clock", "term")]
    assert short(sup.exited("worker", code, 2.0)) == expected
    status = code if code >= 0 else 128 + signal.SIGKILL
    assert sup.status == status and "worker" in sup.reason
    # The others end as they are stopped: their statuses change nothing.
    assert short(sup.exited("web", -signal.SIGTERM, 2.1)) == [
        ("exited", "web", -signal.SIGTERM, "stopped")
    ]
    assert short(sup.exited("clock", 1, 2.2)) == [
        ("exited", "clock", 1, "stopped"),
        ("exit", status),
    ]
    assert sup.returncode == status


def test_never_a_program_that_cannot_start_stops_the_run_before_the_next_starts():
    sup = run("web", "worker", restart="never")
    assert short(sup.start_next(0.0)) == [("start", "web")]
    # The runtime could not start it: it reports the failure as exit 127.
    assert short(sup.exited("web", 127, 0.0)) == [
        ("exited", "web", 127, "failed"),
        ("give_up", "web", 127),
        ("stopping", 0, 5.0),
        ("exit", 127),
    ]
    assert sup.start_next(0.0) == []  # worker is never started
    assert sup.machines["worker"].spawns == 0 and sup.done and sup.returncode == 127


# =========================================================================== backoff and give-up


def test_give_up_after_the_first_start_plus_3_retries():
    sup = run(start_retries=3, start_seconds=1.0)
    assert start_all(sup) == [("start", "web")]
    starts, delays = 1, []
    for _ in range(3):
        (exited,) = sup.exited("web", 1, sup.machines["web"].started_at + 0.1)
        assert isinstance(exited, Exited) and exited.state is State.BACKOFF
        delays.append(exited.retry_in)
        assert exited.attempt == starts + 1
        assert restart(sup) == [("start", "web")]
        starts += 1
    assert starts == 4  # the first start plus 3 retries
    actions = sup.exited("web", 1, sup.machines["web"].started_at + 0.1)
    assert short(actions) == [
        ("exited", "web", 1, "failed"),
        ("give_up", "web", 1),
        ("stopping", 0, 5.0),
        ("exit", 1),
    ]
    give_up = actions[1]
    assert isinstance(give_up, GiveUp) and "4 times in a row" in give_up.reason
    assert delays == [1.0, 2.0, 4.0]  # doubling
    assert sup.tick(1e9) == [] and sup.due is None


def test_backoff_grows_is_capped_and_resets_after_a_stable_run():
    sup = run(restart="always", backoff=1.0, backoff_max=4.0, start_seconds=0.0, stable_seconds=60)
    start_all(sup)
    now, delays = 0.0, []
    for _ in range(5):
        ticks(sup, now)  # running at once (start_seconds=0)
        (exited,) = sup.exited("web", 0, now + 2.0)
        assert isinstance(exited, Exited)
        delays.append(exited.retry_in)
        now = sup.due
        restart(sup)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    ticks(sup, now)
    (exited,) = sup.exited("web", 0, now + 61.0)  # ran long enough: back to the first delay
    assert isinstance(exited, Exited) and exited.retry_in == 1.0


def test_a_program_that_ran_long_enough_starts_its_retry_count_again():
    sup = run(start_retries=1, start_seconds=1.0)
    start_all(sup)
    assert short(sup.exited("web", 1, 0.5))[0][-1] == "backoff"  # failed start 1 of 2
    restart(sup)
    assert ticks(sup, sup.due) == [("running", "web")]  # up past start_seconds: count reset
    assert short(sup.exited("web", 1, 50.0))[0][-1] == "backoff"
    restart(sup)
    assert short(sup.exited("web", 1, sup.machines["web"].started_at + 0.1))[0][-1] == "backoff"
    restart(sup)
    assert short(sup.exited("web", 1, sup.machines["web"].started_at + 0.1))[0][-1] == "failed"


def test_tick_decides_one_program_per_call_in_order():
    sup = run("a", "b", start_seconds=1.0)
    start_all(sup)
    assert short(sup.tick(0.5)) == []
    assert short(sup.tick(1.0)) == [("running", "a")]
    assert short(sup.tick(1.0)) == [("running", "b")]
    assert sup.tick(1.0) == [] and sup.due is None


# =========================================================================== exit status (docs/up.md)


@pytest.mark.parametrize(
    "sig, status", [("INT", SIGINT_STATUS), ("TERM", SIGTERM_STATUS), ("HUP", 129)]
)
def test_a_signal_stops_the_run_with_128_plus_its_number(sig, status):
    sup = run("web", "worker", grace=2.0)
    start_all(sup)
    actions = sup.stop(f"SIG{sig}", 2.0, 3.0, status=status)
    assert short(actions) == [
        ("stopping", 2, 2.0),
        ("kill", "web", "term"),
        ("kill", "worker", "term"),
    ]
    assert sup.machines["web"].due == 5.0  # SIGKILL when the grace is over
    sup.exited("web", -signal.SIGTERM, 3.5)
    assert sup.returncode == status and not sup.done


def test_given_up_program_gives_its_status_or_1_if_its_last_run_exited_0():
    sup = run(restart="always", start_retries=0)
    start_all(sup)
    # Exited 0 within start_seconds, no retries left: given up, and 0 is no success.
    assert short(sup.exited("web", 0, 0.2)) == [
        ("exited", "web", 0, "failed"),
        ("give_up", "web", 0),
        ("stopping", 0, 5.0),
        ("exit", 1),
    ]
    sup = run(start_retries=0)
    start_all(sup)
    sup.exited("web", -signal.SIGSEGV, 0.2)
    assert sup.returncode == 128 + signal.SIGSEGV


def test_the_first_decisive_event_keeps_its_status():
    sup = run("web", "worker", start_retries=0)
    start_all(sup)
    sup.exited("worker", 4, 0.1)  # given up: status 4, the run stops
    assert sup.stopping and sup.status == 4
    sup.stop("SIGINT", 5.0, 0.2, status=SIGINT_STATUS)  # a later Ctrl-C changes nothing
    sup.kill("second SIGINT", 0.3, status=SIGINT_STATUS)
    sup.fail("internal error")
    assert sup.returncode == 4


def test_stop_without_a_status_is_no_decision_and_fail_is_1():
    sup = run()
    start_all(sup)
    sup.stop("stop() called", 1.0, 0.0)
    sup.exited("web", -signal.SIGTERM, 0.1)
    assert sup.done and sup.status is None and sup.returncode == 0
    sup = run()
    start_all(sup)
    sup.fail("internal error: boom")
    assert sup.returncode == 1 and sup.reason == "internal error: boom"


def test_exit_on_failure_off_keeps_the_others_running():
    sup = run("web", "worker", start_retries=0, exit_on_failure=False)
    start_all(sup)
    assert short(sup.exited("worker", 2, 0.1)) == [
        ("exited", "worker", 2, "failed"),
        ("give_up", "worker", 2),
    ]
    assert not sup.stopping and sup.status == 2
    ticks(sup, 1.0)
    assert short(sup.exited("web", 0, 9.0)) == [("exited", "web", 0, "exited"), ("exit", 2)]


# =========================================================================== stopping


@pytest.mark.parametrize("status", [SIGINT_STATUS, SIGTERM_STATUS])
def test_ctrl_c_or_sigterm_during_backoff_cancels_the_restart(status):
    sup = run("web", "worker")
    start_all(sup)
    ticks(sup, 1.0)
    sup.exited("worker", 1, 2.0)
    assert sup.machines["worker"].state is State.BACKOFF
    actions = sup.stop("signal", 5.0, 2.1, status=status)
    # Only web has a process to signal; worker just stops waiting.
    assert short(actions) == [("stopping", 1, 5.0), ("kill", "web", "term")]
    assert sup.machines["worker"].state is State.STOPPED and sup.machines["worker"].due is None
    assert sup.due == 7.1  # web's grace, not worker's restart
    assert short(sup.tick(100.0)) == [("kill", "web", "kill")]
    assert sup.tick(100.0) == []
    assert sup.machines["worker"].spawns == 1
    assert short(sup.exited("web", -signal.SIGKILL, 100.1)) == [
        ("exited", "web", -signal.SIGKILL, "stopped"),
        ("exit", status),
    ]


def test_grace_over_asks_for_sigkill_and_a_second_stop_keeps_the_first_grace():
    sup = run(grace=5.0)
    start_all(sup)
    assert short(sup.stop("stop", 2.0, 10.0)) == [("stopping", 1, 2.0), ("kill", "web", "term")]
    assert sup.stop("stop again", 30.0, 11.0) == []
    assert sup.due == 12.0
    assert short(sup.tick(11.9)) == []
    assert short(sup.tick(12.0)) == [("kill", "web", "kill")]
    assert short(sup.exited("web", -signal.SIGKILL, 12.0)) == [
        ("exited", "web", -signal.SIGKILL, "stopped"),
        ("exit", 0),
    ]


def test_a_program_exiting_while_stopping_is_not_restarted():
    sup = run("web", "worker", restart="always")
    start_all(sup)
    ticks(sup, 1.0)
    sup.stop("SIGTERM", 5.0, 2.0, status=SIGTERM_STATUS)
    # worker exits on its own (status 1, not the SIGTERM) before web: no restart, no give-up.
    assert short(sup.exited("worker", 1, 2.5)) == [("exited", "worker", 1, "stopped")]
    assert sup.machines["worker"].due is None and sup.machines["worker"].restarts == 0
    assert short(sup.tick(7.0)) == [("kill", "web", "kill")]  # web's grace is over
    assert short(sup.exited("web", -signal.SIGKILL, 7.0)) == [
        ("exited", "web", -signal.SIGKILL, "stopped"),
        ("exit", SIGTERM_STATUS),
    ]


def test_kill_hurries_a_stop_and_happens_once():
    sup = run("web", "worker")
    start_all(sup)
    sup.stop("SIGINT", 120.0, 1.0, status=SIGINT_STATUS)
    assert short(sup.kill("second SIGINT", 1.5)) == [
        ("killing",),
        ("kill", "web", "kill"),
        ("kill", "worker", "kill"),
    ]
    assert sup.killing and sup.kill("third SIGINT", 1.6) == []
    sup.exited("web", -signal.SIGKILL, 1.6)
    assert short(sup.exited("worker", -signal.SIGKILL, 1.6))[-1] == ("exit", SIGINT_STATUS)


def test_kill_without_a_stop_first():
    sup = run()
    start_all(sup)
    assert short(sup.kill("kill", 0.5, status=137)) == [("killing",), ("kill", "web", "kill")]
    assert sup.stopping and sup.status == 137
    assert sup.start_next(0.6) == []


# =========================================================================== the status view


def test_status_view_pid_restarts_exitcode_uptime():
    sup = run()
    start_all(sup, now=10.0, pid=4242)
    m = sup.machines["web"]
    assert (m.state, m.pid, m.restarts, m.exitcode) == (State.STARTING, 4242, 0, None)
    assert m.uptime(12.5) == 2.5
    (exited,) = sup.exited("web", 2, 13.0, pid=4242)
    assert isinstance(exited, Exited) and exited.pid == 4242 and exited.uptime == 3.0
    assert (m.state, m.pid, m.exitcode) == (State.BACKOFF, None, 2)
    assert m.uptime(99.0) == 3.0  # the last run's length, once it ended
    restart(sup)
    assert m.restarts == 1 and m.pid == 999
    assert sup.names == ["web"]


# =========================================================================== dependencies and readiness


def deps_run(
    *names: str,
    depends_on: dict[str, dict[str, str]],
    ready: dict[str, float] | None = None,
    graces: dict[str, float] | None = None,
    grace: float = 5.0,
    exit_on_failure: bool = True,
    **policy,
) -> Supervision:
    policy.setdefault("backoff", 1.0)
    policy.setdefault("jitter", 0.0)
    return Supervision(
        names,
        RestartPolicy(**policy),
        grace=grace,
        exit_on_failure=exit_on_failure,
        rand=lambda: 0.5,
        depends_on=depends_on,  # type: ignore[arg-type]
        ready_timeouts=ready,
        graces=graces,
    )


def dshort(actions: list[SupervisionAction]) -> list[tuple[object, ...]]:
    """``short`` with the dependency actions."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        if isinstance(a, Waiting):
            out.append(("waiting", a.name, *a.pending))
        elif isinstance(a, Probe):
            out.append(("probe", a.name, a.timeout))
        elif isinstance(a, Ready):
            out.append(("ready", a.name))
        elif isinstance(a, NotReady):
            out.append(("not_ready", a.name, a.timeout))
        elif isinstance(a, Kill) and a.policy == "term":
            out.append(("term", a.name))
        else:
            out += short([a])
    return out


def starts(sup: Supervision, now: float, pid: int = 100) -> list[tuple[object, ...]]:
    """What start_next gives now, every started program reported started."""
    seen: list[tuple[object, ...]] = []
    while actions := sup.start_next(now):
        for a in actions:
            if isinstance(a, Start):
                sup.started(a.name, pid, now)
                pid += 1
        seen += dshort(actions)
    return seen


WEB_STACK = {"migrate": {"db": "ready"}, "web": {"db": "ready", "migrate": "completed"}}


def test_dependencies_start_in_order_when_their_conditions_are_met():
    sup = deps_run("web", "migrate", "db", depends_on=WEB_STACK, ready={"db": 10.0})
    assert starts(sup, 0.0) == [
        ("waiting", "web", "db (ready)", "migrate (completed)"),
        ("waiting", "migrate", "db (ready)"),
        ("start", "db"),
        ("probe", "db", 10.0),
    ]
    assert sup.due == 1.0  # db's start check; its readiness deadline is 10.0
    assert dshort(sup.ready("db", 2.0)) == [("ready", "db")]
    assert sup.ready("db", 2.5) == []  # a second answer changes nothing
    assert starts(sup, 2.0) == [("start", "migrate")]
    assert not sup.done
    assert dshort(sup.exited("migrate", 0, 3.0)) == [("exited", "migrate", 0, "exited")]
    assert not sup.done  # web still waits to start
    assert starts(sup, 3.0) == [("start", "web")]
    assert sup.pending("web") == []


def test_started_condition_needs_only_a_start():
    sup = deps_run("worker", "web", depends_on={"worker": {"web": "started"}})
    assert starts(sup, 0.0) == [
        ("waiting", "worker", "web (started)"),
        ("start", "web"),
        ("start", "worker"),
    ]


def test_not_ready_in_time_fails_the_run_and_never_starts_the_waiters():
    sup = deps_run("db", "web", depends_on={"web": {"db": "ready"}}, ready={"db": 3.0}, grace=2.0)
    starts(sup, 0.0)
    assert ticks(sup, 1.0) == [("running", "db")]
    assert sup.due == 3.0
    assert sup.tick(2.9) == []
    assert dshort(sup.tick(3.0)) == [
        ("not_ready", "db", 3.0),
        ("stopping", 1, 2.0),
        ("term", "db"),
    ]
    assert sup.status == 1 and sup.reason == "db not ready within 3s (web waited for it)"
    assert dshort(sup.ready("db", 3.1)) == []  # too late
    assert starts(sup, 3.1) == []  # web is never started
    assert dshort(sup.exited("db", -signal.SIGTERM, 3.2)) == [
        ("exited", "db", -signal.SIGTERM, "stopped"),
        ("exit", 1),
    ]
    assert sup.machines["web"].spawns == 0


def test_a_probe_restarts_with_each_start():
    sup = deps_run("db", depends_on={}, ready={"db": 5.0})
    starts(sup, 0.0)
    ticks(sup, 1.0)
    assert dshort(sup.exited("db", 1, 2.0)) == [("exited", "db", 1, "backoff")]
    assert sup.due == 3.0  # the backoff, not the dropped deadline
    assert dshort(sup.tick(3.0)) == [("start", "db"), ("probe", "db", 5.0)]
    assert ticks(sup, 7.9) == [("running", "db")]
    assert dshort(sup.tick(8.0))[0] == ("not_ready", "db", 5.0)


def test_completed_dependency_failing_fails_its_waiters():
    sup = deps_run(
        "migrate",
        "web",
        "worker",
        depends_on={"web": {"migrate": "completed"}, "worker": {"web": "started"}},
        exit_on_failure=False,
        start_retries=0,
    )
    starts(sup, 0.0)
    actions = sup.exited("migrate", 3, 0.5)
    gave_up = [a for a in actions if isinstance(a, GiveUp)]
    assert gave_up[1].reason.startswith("not started: migrate exited with code 3")
    assert dshort(actions) == [
        ("exited", "migrate", 3, "failed"),
        ("give_up", "migrate", 3),
        ("give_up", "web", 3),
        ("give_up", "worker", 1),  # web never ran: no status of its own
        ("exit", 3),
    ]
    assert (
        sup.machines["web"].state is State.FAILED and sup.machines["worker"].state is State.FAILED
    )
    assert sup.done and sup.returncode == 3


def test_a_completed_dependency_is_retried_before_its_waiters_give_up():
    sup = deps_run("migrate", "web", depends_on={"web": {"migrate": "completed"}})
    starts(sup, 0.0)
    assert dshort(sup.exited("migrate", 1, 0.5)) == [("exited", "migrate", 1, "backoff")]
    assert sup.machines["web"].state is State.STOPPED and not sup.done
    restart(sup, "migrate")
    assert dshort(sup.exited("migrate", 0, 5.0)) == [("exited", "migrate", 0, "exited")]
    assert starts(sup, 5.0) == [("start", "web")]


def test_never_a_one_shot_dependency_does_not_end_the_run():
    sup = deps_run("migrate", "web", depends_on={"web": {"migrate": "completed"}}, restart="never")
    starts(sup, 0.0)
    assert dshort(sup.exited("migrate", 0, 0.5)) == [("exited", "migrate", 0, "exited")]
    assert not sup.stopping
    assert starts(sup, 0.5) == [("start", "web")]
    # web is not a one-shot: its end ends the run, as foreman's rule says.
    assert dshort(sup.exited("web", 0, 9.0))[-1] == ("exit", 0)


def test_stop_goes_in_reverse_dependency_order_each_with_its_grace():
    sup = deps_run(
        "db",
        "web",
        "worker",
        "clock",
        depends_on={"web": {"db": "started"}, "worker": {"web": "started"}},
        graces={"db": 9.0},
        grace=2.0,
    )
    starts(sup, 0.0)
    assert dshort(sup.stop("SIGINT received", 2.0, 1.0, status=SIGINT_STATUS)) == [
        ("stopping", 4, 2.0),
        ("term", "worker"),
        ("term", "clock"),
    ]
    assert sup.machines["web"].state is State.STARTING  # waits for worker to end
    assert dshort(sup.exited("clock", -signal.SIGTERM, 1.5)) == [
        ("exited", "clock", -signal.SIGTERM, "stopped")
    ]
    assert dshort(sup.exited("worker", -signal.SIGTERM, 2.0)) == [
        ("exited", "worker", -signal.SIGTERM, "stopped"),
        ("term", "web"),
    ]
    assert sup.machines["web"].due == 4.0
    assert dshort(sup.exited("web", 0, 2.5)) == [("exited", "web", 0, "stopped"), ("term", "db")]
    assert sup.machines["db"].due == 11.5  # its own grace: 9 s
    assert dshort(sup.tick(11.5)) == [("kill", "db", "kill")]
    assert dshort(sup.exited("db", -signal.SIGKILL, 11.6))[-1] == ("exit", SIGINT_STATUS)


def test_kill_ignores_the_order():
    sup = deps_run("db", "web", depends_on={"web": {"db": "started"}})
    starts(sup, 0.0)
    sup.stop("SIGINT received", 5.0, 1.0)
    assert dshort(sup.kill("second signal", 1.5)) == [
        ("killing",),
        ("kill", "db", "kill"),
        ("kill", "web", "kill"),
    ]


def test_a_stop_while_waiting_ends_the_run():
    sup = deps_run("db", "web", depends_on={"web": {"db": "ready"}}, ready={"db": 30.0})
    starts(sup, 0.0)
    # web was never started: it has nothing to signal.
    assert dshort(sup.stop("SIGINT received", 5.0, 1.0, status=SIGINT_STATUS)) == [
        ("stopping", 1, 5.0),
        ("term", "db"),
    ]
    assert sup.due == 6.0  # the grace, no readiness deadline any more
    assert dshort(sup.exited("db", -signal.SIGTERM, 1.2))[-1] == ("exit", SIGINT_STATUS)
    assert sup.machines["web"].spawns == 0


def test_bad_dependency_tables_are_refused():
    with pytest.raises(ValueError, match="unknown dependency 'ghost'"):
        deps_run("web", depends_on={"web": {"ghost": "started"}})
    with pytest.raises(ValueError, match="unknown program 'ghost'"):
        deps_run("web", depends_on={}, ready={"ghost": 1.0})
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> c -> a"):
        deps_run(
            "a",
            "b",
            "c",
            depends_on={"a": {"b": "started"}, "b": {"c": "ready"}, "c": {"a": "completed"}},
        )
