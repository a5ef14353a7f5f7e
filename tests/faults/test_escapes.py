"""Nothing outlives its owner, even what tries to: descendants that leave their
process group or session (setsid, setpgid, a daemon's double fork, nohup, one
that ignores SIGTERM) are found by the job's mark in their environment and
ended when their job ends, or by the guardian when the owner is SIGKILLed.

Every escaping process carries a unique tag on its command line, and the whole
machine is searched for it (an escaped process is not a descendant any more).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from tests.helpers import Harness

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[2] / "src")
DAEMONIZE = str(Path(__file__).with_name("_daemonize.py"))

# How a command can put a process out of reach of its process group. {tag} is a
# unique number that `sleep` takes as its duration (and that we search for).
ESCAPES = {
    "setsid": "setsid sleep {tag} &",
    "setpgid": (f"{PY} -c 'import os, time; os.setpgid(0, 0); time.sleep({{tag}})' &"),
    "double-fork-daemon": f"{PY} {DAEMONIZE} {{tag}}",
    "nohup": "nohup setsid sleep {tag} >/dev/null 2>&1 &",
    "ignores-TERM": "setsid sh -c 'trap \"\" TERM; sleep {tag}' &",
    "nested-later": "setsid sh -c 'sleep 0.3; setsid sleep {tag}' &",
}


def then(kind: str, tag: str, rest: str) -> str:
    """The escape of ``kind``, then ``rest``, as one shell line."""
    first = ESCAPES[kind].format(tag=tag).rstrip()
    return f"{first} {rest}" if first.endswith("&") else f"{first}; {rest}"


def _tag() -> str:
    # A duration nobody else uses, so the search cannot hit another test's process.
    return f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"


def tagged(tag: str) -> list[psutil.Process]:
    """Every live process on the machine whose command line holds ``tag``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(tag in a for a in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_gone(tag: str, timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = tagged(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = tagged(tag)
    return left


def wait_present(tag: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not tagged(tag):
        if time.monotonic() > deadline:
            raise AssertionError(f"the escaping process {tag} never started")
        time.sleep(0.02)


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _assert_gone(tag: str) -> None:
    left = wait_gone(tag)
    _kill(left)
    assert left == [], f"escaped processes outlived their owner: {left}"


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_run_returns_with_nothing_left(kind):
    """pt.run of a command that leaves something behind ends it before returning."""
    import polytask as pt

    tag = _tag()
    r = pt.run(then(kind, tag, "sleep 0.05"), shell=True, timeout=60)
    assert r.returncode == 0, r
    left = tagged(tag)  # no waiting: pt.run has already returned
    _kill(left)
    if kind == "nested-later":
        # Its intermediate was ended before it could start the last one: deliberately
        # give it time to (wrongly) appear, since an absence cannot be waited for.
        time.sleep(0.5)
        left += tagged(tag)
        _kill(left)
    assert left == []


@pytest.mark.parametrize("kind", ["setsid", "double-fork-daemon", "ignores-TERM"])
def test_owner_sigkilled_while_the_command_runs(tmp_path, kind):
    tag = _tag()
    script = f"""
        import sys
        import polytask as pt
        open(sys.argv[1], "w").write("ready")
        pt.run({then(kind, tag, "sleep 300")!r}, shell=True)
    """
    ready = tmp_path / "ready"
    with Harness(script, tmp_path, str(ready)) as h:
        h.wait_for_line(ready, "ready")
        wait_present(tag)
        h.signal(signal.SIGKILL)
        h.wait()
        _assert_gone(tag)
        h.leftovers(within=5)


def _cli(*argv: str, **kw) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    kw.setdefault("stdout", subprocess.DEVNULL)
    return subprocess.Popen(
        [PY, "-m", "polytask.cli", *argv],
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kw,
    )


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill (if still running), reap and close what :func:`_cli` started."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()


@pytest.mark.parametrize("kind", ["setsid", "double-fork-daemon", "nohup"])
def test_parallel_jobs_leave_nothing(kind):
    tag = _tag()
    proc = _cli("parallel", "-j", "2", then(kind, tag, "true {}"), ":::", "a", "b")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _assert_gone(tag)


def test_parallel_sigkilled_leaves_nothing():
    tag = _tag()
    proc = _cli("parallel", "-j", "2", then("setsid", tag, "sleep 300; : {}"), ":::", "a", "b")
    try:
        wait_present(tag)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_gone(tag)
    finally:
        _end(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_up_with_a_daemonizing_program_leaves_nothing(tmp_path, sig):
    tag = _tag()
    (tmp_path / "Procfile").write_text(
        textwrap.dedent(
            f"""\
            daemon: {then("double-fork-daemon", tag, "sleep 300")}
            web: sleep 300
            """
        )
    )
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = _cli("up", "--restart", "never", cwd=tmp_path, stdout=out)
    try:
        wait_present(tag)
        # SIGINT as a terminal's Ctrl-C would: to the whole foreground group.
        os.killpg(proc.pid, sig) if sig != signal.SIGKILL else proc.kill()
        proc.wait(timeout=30)
        try:
            _assert_gone(tag)
        except AssertionError as exc:
            # Seen once on 3.12 under load, not reproduced: what up said helps.
            assert proc.stderr is not None
            raise AssertionError(
                f"{exc}\nup exited {proc.returncode}; its output:\n{log.read_text()}"
                f"\nstderr:\n{proc.stderr.read().decode(errors='replace')}"
            ) from None
    finally:
        _end(proc)


# A first child that kills its owner at once: the owner dies while (before the fix:
# before) its guardian starts. The guardian must be up, with the owner's mark
# registered, before the first child exists.
KILLS_ITS_OWNER = "kill -KILL $PPID; exec sleep {tag}"


def test_an_owner_killed_by_its_first_child_leaves_nothing():
    tag = _tag()
    script = (
        f"import sys, time; sys.path.insert(0, {SRC!r})\n"
        "from polytask._os import proc\n"
        f"proc.start_in_group(['/bin/sh', '-c', {KILLS_ITS_OWNER.format(tag=tag)!r}])\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([PY, "-c", script], start_new_session=True)
    assert owner.wait(timeout=60) == -signal.SIGKILL
    _assert_gone(tag)


def test_up_killed_by_its_first_program_leaves_nothing(tmp_path):
    tag = _tag()
    (tmp_path / "Procfile").write_text(f"first: {KILLS_ITS_OWNER.format(tag=tag)}\n")
    proc = _cli("up", cwd=tmp_path)
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
        _assert_gone(tag)
    finally:
        _end(proc)


# --------------------------------------------------------------------------- process tasks


def _start_escape(kind: str, tag: str) -> int:
    """In a process task: start the escape, return the worker's pid."""
    import subprocess as sp

    sp.run(["/bin/sh", "-c", then(kind, tag, "true")], check=True)
    return os.getpid()


def _start_escape_and_hang(kind: str, tag: str) -> None:
    _start_escape(kind, tag)
    time.sleep(300)


@pytest.mark.parametrize("kind", ["setsid", "setpgid", "double-fork-daemon", "ignores-TERM"])
def test_process_task_leaves_nothing(kind):
    """What a process task starts ends with the task, not with the worker."""
    import polytask as pt

    tag = _tag()
    with pt.Pool(workers=1) as pool:
        worker = pool.submit(_start_escape, kind, tag).result(timeout=60)
        left = tagged(tag)  # the result is back: the task's processes are gone already
        _kill(left)
        assert left == []
        # The worker itself lives on for the next task.
        assert pool.submit(os.getpid).result(timeout=60) == worker


@pytest.mark.parametrize("end", ["timeout", "cancel"])
def test_killed_process_task_leaves_nothing(end):
    import polytask as pt

    tag = _tag()
    task = pt.spawn(
        _start_escape_and_hang,
        "double-fork-daemon",
        tag,
        backend="process",
        timeout=60 if end == "cancel" else 3,
    )
    wait_present(tag)
    if end == "cancel":
        task.cancel()
    with pytest.raises((pt.TaskTimeout, pt.Cancelled)):
        task.result(timeout=60)
    _assert_gone(tag)


def test_owner_sigkilled_with_a_process_task_daemon(tmp_path):
    tag = _tag()
    script = f"""
        import subprocess, sys, time
        import polytask as pt

        def start_and_hang():
            subprocess.run([{PY!r}, {DAEMONIZE!r}, {tag!r}], check=True)
            time.sleep(300)

        t = pt.spawn(start_and_hang, backend="process")
        open(sys.argv[1], "w").write("ready")
        t.result()
    """
    ready = tmp_path / "ready"
    with Harness(script, tmp_path, str(ready)) as h:
        h.wait_for_line(ready, "ready")
        wait_present(tag)
        h.signal(signal.SIGKILL)
        h.wait()
        _assert_gone(tag)
        h.leftovers(within=5)
