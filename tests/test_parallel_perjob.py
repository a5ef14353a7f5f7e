"""The per-job path of ``polytask parallel`` (ProcessLoop's starts and ends), kept cheap
without losing what it does: each program's environment, the Ctrl-C hold, the
search for what a job left outside its group. Real processes; no timing asserts
(the speed is bench/bench_parallel.py's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from polytask._os import proc
from polytask._os.childloop import ProcessLoop


def _marked_sleeper(marker: bytes, padding: int = 0) -> subprocess.Popen[bytes]:
    """A process whose environment ends with ``marker`` (after ``padding`` bytes of
    another variable); it says "ready" once it runs."""
    key, _, value = marker.partition(b"=")
    # Several variables: the kernel takes none longer than 128 KiB.
    env = {f"PAD{i}": "x" * 50_000 for i in range(-(-padding // 50_000))}
    env[os.fsdecode(key)] = os.fsdecode(value)
    return subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        env=env,
        stdout=subprocess.PIPE,
    )


def _ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"


def test_find_marked_leaves_out_the_pids_it_is_told_to_skip() -> None:
    # The loop passes its running leaders: each carries its own job's mark, so
    # reading their environments (and, caught in their execve, reading them again
    # after sleeps) after every job's end was wasted.
    marker = proc.tree_marker("skip-test")
    p = _marked_sleeper(marker)
    try:
        _ready(p)
        first = p.pid - 1
        assert p.pid in proc.find_marked({marker}, first)
        assert p.pid not in proc.find_marked({marker}, first, skip={p.pid})
        assert p.pid not in proc.find_trees(["skip-test"], first, skip={p.pid})
        assert p.pid in proc.find_trees(["skip-test"], first, skip={p.pid + 1})
    finally:
        p.kill()
        p.communicate()


def test_a_marked_process_with_a_big_environment_is_found() -> None:
    # /proc/PID/environ is read by os.read: more than one read's worth (64 KiB)
    # before the mark at its end.
    marker = proc.tree_marker("big-env")
    p = _marked_sleeper(marker, padding=200_000)
    try:
        _ready(p)
        assert proc.find_marked({marker}, p.pid - 1) == [p.pid]
    finally:
        p.kill()
        p.communicate()


def test_a_job_that_left_its_group_is_ended_while_another_job_runs(tmp_path: Path) -> None:
    # The running leaders are skipped in the search, not the daemons: a job's
    # setsid'ed descendant is still found by its mark and ended when its leader
    # exits, while the loop's other program (skipped) runs on.
    pidfile = tmp_path / "daemon.pid"
    daemon = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); "
        "time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(0.2)\n"
    )
    with ProcessLoop(posix_spawn=True, grace=0.2) as loop:
        loop.spawn([sys.executable, "-c", daemon])
        # Started after the daemon's leader: in the pids searched, and skipped.
        other = loop.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
        finished: list[object] = []
        deadline = time.monotonic() + 30
        while not finished:
            assert time.monotonic() < deadline
            finished, _ = loop.wait(1.0)
        stray = int(pidfile.read_text())
        assert proc.pid_state(stray) in (None, b"Z")  # ended (a zombie of init's at most)
        assert not other.exited
        assert proc.pid_state(other.pid) not in (None, b"Z")


def test_each_program_gets_its_own_variables_and_mark() -> None:
    # The environment block is copied from a template per number of the program's
    # own variables: programs with none, one, two of them, in turns, see exactly theirs.
    with ProcessLoop(posix_spawn=True) as loop:
        runs = [(), (b"PT_A=1",), (b"PT_B=2", b"PT_C=3"), (), (b"PT_A=4",)]
        children = [loop.spawn(["env"], extra_env=extra) for extra in runs]
        done: list[object] = []
        deadline = time.monotonic() + 30
        while len(done) < len(children):
            assert time.monotonic() < deadline
            done += loop.wait(1.0)[0]
    key = proc.owner_key()
    for extra, child in zip(runs, children, strict=True):
        lines = child.output(1).splitlines()
        own = sorted(line for line in lines if line.startswith(b"PT_"))
        assert own == sorted(extra)
        marks = [line for line in lines if line.startswith(key.encode() + b"=")]
        assert marks == [proc.tree_marker(child.job)]
        assert lines.count(b"PATH=" + os.environ["PATH"].encode()) == 1


def test_the_hold_puts_back_the_very_same_handlers() -> None:
    def handler(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        loop = ProcessLoop(posix_spawn=True)
        try:
            int_handler = signal.getsignal(signal.SIGINT)
            child = loop.spawn(["true"])
            assert signal.getsignal(signal.SIGTERM) is handler
            assert signal.getsignal(signal.SIGINT) is int_handler
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
            while not child.done:
                loop.wait(1.0)
        finally:
            loop.close()
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_holdable_handler_is_held_without_being_swapped_out() -> None:
    # polytask parallel's handlers: the loop's hold leaves them in place (no
    # sigaction at each start) and they wait for the hold's end all the same.
    from polytask._os.childloop import HoldableHandler

    got: list[int] = []
    holdable = HoldableHandler(lambda signum, frame: got.append(signum))
    old = signal.signal(signal.SIGTERM, holdable)
    loop = ProcessLoop(posix_spawn=True)
    try:
        assert loop._hold()
        assert signal.getsignal(signal.SIGTERM) is holdable
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between two bytecodes: it has by now
            pass
        assert got == []
        loop._release()
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is holdable
        os.kill(os.getpid(), signal.SIGTERM)  # not held: at once
        for _ in range(100):
            pass
        assert got == [signal.SIGTERM, signal.SIGTERM]
        child = loop.spawn(["true"])
        while not child.done:
            loop.wait(1.0)
        assert signal.getsignal(signal.SIGTERM) is holdable
    finally:
        loop.close()
        signal.signal(signal.SIGTERM, old)


def test_the_command_leaves_an_ignored_sigint_ignored(tmp_path: Path) -> None:
    # Started in the background by a shell (SIGINT ignored): its jobs do not
    # get a handler for it, and neither does it.
    script = tmp_path / "job.sh"
    script.write_text('grep SigIgn /proc/$$/status; kill -INT "$PPID"; echo after\n')
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN);"
        "from polytask.cli._parallel import main;"
        f"sys.exit(main(['-j', '1', 'sh', {str(script)!r}, ':::', 'a']))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("after\n")


def test_a_group_registration_is_one_write_and_kept_in_the_owners_registry() -> None:
    # guard/unguard (twice per program started) go by send_group's fast path:
    # the owner's copy of the registry is what it was with the generic send.
    guardian = proc._guardian
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        guardian.send_group(True, p.pid)
        assert p.pid in guardian._sent.groups and not guardian._pending
        guardian.send_group(False, p.pid)
        assert p.pid not in guardian._sent.groups
        proc.guard(p.pid)
        assert p.pid in guardian._sent.groups
        proc.unguard(p.pid)
        assert p.pid not in guardian._sent.groups
    finally:
        p.kill()
        p.wait()


def test_a_group_guarded_by_the_fast_path_is_ended_when_its_owner_is_killed() -> None:
    code = (
        "import os, signal, subprocess\n"
        "from polytask._os import proc\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True, env={})\n"
        "proc.guard(p.pid)\n"
        "print(p.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(r.stdout)
    deadline = time.monotonic() + 30
    while proc.pid_state(pid) not in (None, b"Z"):  # ended by the guardian
        assert time.monotonic() < deadline, "the guarded group outlived its owner"
        time.sleep(0.05)
