"""The one kill policy (``_os/proc``): SIGTERM, a grace, SIGKILL, in a blocking and a
non-blocking form, and no other module of polytask sending those signals itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polytask
from polytask._os import proc as _proc

# A program that survives SIGTERM (it says it got it) until it is SIGKILLed.
_STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('term', flush=True))\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def _start_stubborn() -> subprocess.Popen[str]:
    proc = _proc.start_in_group(
        [sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_ending_sends_term_now_and_kill_only_once_the_grace_is_over():
    proc = _start_stubborn()
    try:
        ending = _proc.Ending(proc.pid, 60.0)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "term\n"  # SIGTERM went out when it was made
        assert ending.kill_at > time.monotonic() + 30
        assert not ending.step(time.monotonic())  # inside the grace: nothing more
        assert not _proc.wait_pid(proc.pid, 0.2)
        assert proc.poll() is None
        assert ending.step(ending.kill_at)  # the loop's timer fired: SIGKILL
        assert proc.wait(10) == -signal.SIGKILL
        assert ending.step(ending.kill_at + 1)  # stays done, sends nothing more
    finally:
        _proc.terminate(proc, 0)
        proc.stdout.close()


def test_ending_kill_cuts_the_grace_short():
    proc = _start_stubborn()
    try:
        ending = _proc.Ending(proc.pid, 60.0)
        ending.kill()
        assert ending.killed
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        _proc.terminate(proc, 0)
        proc.stdout.close()


def test_end_now_kills_reaps_and_reports_the_signal():
    proc = _start_stubborn()
    code = _proc.end_now(proc.pid)
    proc.returncode = code  # reaped by end_now, not by Popen
    proc.stdout.close()
    assert code == -signal.SIGKILL
    assert _proc.pid_state(proc.pid) is None


def test_terminate_gives_the_grace_then_kills():
    proc = _start_stubborn()
    t0 = time.monotonic()
    assert _proc.terminate(proc, 0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 >= 0.3  # the grace was given: it ignored SIGTERM
    assert proc.stdout is not None
    assert proc.stdout.read() == "term\n"
    proc.stdout.close()


# Sending SIGTERM / SIGKILL to a process or group (os.kill, os.killpg, Popen's
# kill/terminate/send_signal) is the kill policy's job: only _os/ending and
# _os/proc do it (the guardian, a separate process, imports _os/ending alone).
_SENDS = re.compile(
    r"os\.killpg?\(|def _killpg|\.send_signal\(|(?<!ending)\.kill\(\)|\.terminate\(\)"
)
# Probes (signal 0) and SIGCONT are not the kill policy.
_PROBE = re.compile(r", 0\)|SIGCONT")
# ending.py sends the signals; proc.py builds the blocking and reaping forms on it;
# the guardian uses ending.Ending too (since 2026-12-03), so it is not an owner.
_OWNERS = {Path("_os/ending.py"), Path("_os/proc.py")}
# Pools' and joblib's terminate() are their public API (they end workers through a backend).
_API = re.compile(r"(pool|_pool|self)\.terminate\(\)")


def test_only_proc_sends_the_kill_policys_signals():
    root = Path(polytask.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel in _OWNERS:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _SENDS.search(line) and not (_API.search(line) or _PROBE.search(line)):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "kill policy outside _os/proc:\n" + "\n".join(offenders)
