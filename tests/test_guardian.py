"""The guardian's protocol, without processes, the guardian as ps shows it, and
its owner's sends to a guardian that does not read (SIGSTOP)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import polytask
from helpers import run_python, wait_until
from polytask._os import proc as _proc
from polytask._os.guardian import Registry, clean_up


def test_registry_applies_whole_lines_only():
    r = Registry()
    r.feed(b"+12\n+13\n-12\np/dev/shm/a\nq/dev/shm/a\np/dev/shm/b\nPpre\nekey=1\nk5 99")
    assert r.groups == {13}
    assert r.paths == {"/dev/shm/b"}
    assert r.prefixes == {"pre"}
    assert r.markers == {b"key=1"}
    assert r.procs == set()  # the last line is not complete yet
    r.feed(b"\nl5 99\n")
    assert r.procs == set()


def test_registry_markers_exact_or_by_variable():
    r = Registry()
    r.feed(b"eJOB=7\neOWNER_1=\n")
    assert r.matches(b"A=1\0JOB=7\0")
    assert not r.matches(b"JOB=70\0")
    assert r.matches(b"X=1\0OWNER_1=anything\0")
    assert r.matches(b"OWNER_1=\0")
    assert not r.matches(b"OWNER_10=3\0OWNER_=1\0")


def test_registry_ignores_empty_and_unknown_lines():
    r = Registry()
    assert r.feed(b"\n+\nZzz\n") == [b"Zzz"]
    assert not (r.groups or r.paths or r.markers or r.procs or r.prefixes)


def test_registry_skips_lines_it_cannot_read():
    """Numbers that are not pids (kill(0) is our own group, killpg(-5) raises, a
    huge one overflows), a path with a NUL: skipped and returned, never raised
    (the guardian used to die of the first)."""
    bad = [b"+abc", b"-\xff", b"+-5", b"+0", b"+1", b"+" + b"9" * 30, b"+1_0", b"kabc 1", b"k12"]
    bad += [b"k12 x", b"p/a\0b", b"P/a\0", b"Zz"]
    r = Registry()
    assert r.feed(b"\n".join([*bad, b"+12", b"k12 345", b"p/a", b""])) == bad
    assert (r.groups, r.procs, r.paths, r.prefixes) == ({12}, {b"12 345"}, {"/a"}, set())


def test_registry_net_is_what_lines_add_up_to():
    r = Registry()
    r.feed(b"+12\n+13\np/a\n")
    churn = b"+14\n-14\n-12\n+15\n-15\n+15\np/a\nq/b\np/c\nq/c\nkx\n"
    assert sorted(r.net(churn).split()) == [b"+15", b"-12"]
    assert r.net(b"+14\n", first=b"-14") == b"+14\n"  # "-14" was applied before
    assert r.net(b"-13\n", first=b"+13") == b"-13\n"
    whole = Registry()
    whole.feed(r.lines())
    assert (whole.groups, whole.paths) == ({12, 13}, {"/a"})


def test_files_expands_prefixes(tmp_path):
    (tmp_path / "seg-1").write_text("")
    (tmp_path / "seg-2").write_text("")
    (tmp_path / "other").write_text("")
    r = Registry()
    r.feed(b"P" + os.fsencode(tmp_path / "seg-") + b"\n")
    assert r.files() == {str(tmp_path / "seg-1"), str(tmp_path / "seg-2")}


def test_registry_spills_lines_and_net():
    """``s``/``t`` register and forget a channel's spill: a set of its own, sent whole
    to a replacement guardian and shrunk like the others."""
    r = Registry()
    assert r.feed(b"s/dev/shm/x\ns/dev/shm/y\nt/dev/shm/x\np/dev/shm/z\ns/a\0b\n") == [b"s/a\0b"]
    assert r.spills == {"/dev/shm/y"} and r.paths == {"/dev/shm/z"}
    assert "/dev/shm/y" not in r.files()  # not unlinked as a path: see release_spill
    whole = Registry()
    whole.feed(r.lines())
    assert (whole.spills, whole.paths) == ({"/dev/shm/y"}, {"/dev/shm/z"})
    assert sorted(r.net(b"s/v\nt/v\nt/dev/shm/y\ns/dev/shm/y\nt/w\n").split()) == []
    assert r.net(b"t/dev/shm/y\n") == b"t/dev/shm/y\n"


def test_clean_up_keeps_a_spill_that_holds_an_item(tmp_path):
    """A FULL spill written in full (an item its reader has not copied out) survives
    its writer's guardian while its channel exists, marked (byte 1) for its reader;
    FREE, empty or short ones go, a FULL one not written in full (the writer died
    copying it) goes, one of a channel that is gone goes, and a spill under a
    registered prefix goes whatever it holds (the channel's owner is gone)."""
    from polytask._ipc import channel as C
    from polytask._os import guardian as G

    assert (G.SPILL_HEADER, G.SPILL_FULL, G.SPILL_WRITTEN) == (
        C._SPILL_HEADER,
        C._SPILL_FULL,
        C._SPILL_WRITTEN,
    )
    (tmp_path / "ch").write_bytes(b"ring")  # the channel's ring; "gone" has none
    written = bytes([C._SPILL_FULL, 0, 1]) + bytes(C._SPILL_HEADER + 99)
    names = ("ch-1-1", "ch-1-2", "ch-1-3", "ch-1-4", "gone-1-1", "pre-1-1", "ch-1-5")
    full, free, empty, torn, gone, under, plain = (tmp_path / n for n in names)
    full.write_bytes(written)
    free.write_bytes(bytes([C._SPILL_FREE, 0, 1]) + bytes(C._SPILL_HEADER + 99))
    empty.write_bytes(b"")
    torn.write_bytes(bytes([C._SPILL_FULL]) + bytes(C._SPILL_HEADER + 99))
    gone.write_bytes(written)
    under.write_bytes(written)
    plain.write_bytes(written)
    r = Registry()
    spills = (full, free, empty, torn, gone, under)
    r.feed(b"".join(b"s" + os.fsencode(p) + b"\n" for p in spills))
    r.feed(b"P" + os.fsencode(tmp_path / "pre-") + b"\n")
    clean_up(r, 0.1)
    # "ch-1-5" was never registered: the guardian leaves what is not its own.
    assert sorted(os.listdir(tmp_path)) == ["ch", "ch-1-1", "ch-1-5"]
    assert full.read_bytes()[: C._SPILL_WRITER_GONE + 1] == bytes([C._SPILL_FULL, 1])


def test_guardian_is_named_in_ps():
    """`ps` shows polytask's helper by name, not a page of Python source."""
    code = (
        "import os, sys, time, psutil\nfrom polytask._os import proc as _proc\n"
        "_proc.guard_path('/nonexistent/x')\n"
        "g = psutil.Process(_proc._guardian.pid)\n"
        "end = time.monotonic() + 20\n"
        "while g.name() == 'python' and time.monotonic() < end: time.sleep(0.01)\n"
        "print(g.cmdline()[0], len(' '.join(g.cmdline())), g.name())"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    argv0, length, comm = out.stdout.split()
    assert argv0 == "polytask-guardian"
    assert int(length) < 200
    assert comm.startswith("polytask-guard")


def test_the_guardian_carries_no_job_mark():
    """An outer owner's clean-up must not end a nested owner's guardian early."""
    _proc.guard_path("/nonexistent/y")
    try:
        env = psutil.Process(_proc._guardian.pid).environ()
    finally:
        _proc.unguard_path("/nonexistent/y")
    assert not [k for k in env if k.startswith("POLYTASK_TREE_")]


# ----------------------------------------------------------- a guardian that does not read

HANG = 60.0  # a bound for "does not hang", never a speed claim

# An owner whose guardian is SIGSTOPped registers far more than the guardian's
# 64 KiB pipe holds: first a marker longer than the pipe (so the pipe takes part
# of that line only), carried by a `sleep` it starts; then files, some of them
# unregistered (and some of those registered again). It also starts a worker
# and a command. With a blocking write it hung at the pipe's 64 KiB. It prints
# the guardian's pid and the sleep's, then "ready", then, once told, waits until
# every registration is in a pipe and prints "sent PID" (the guardian's, a new
# one if the test killed the stopped one), or exits if told to.
_OWNER = r"""
import os, signal, subprocess, sys, time
import polytask as pt
from polytask._os import proc as _proc
from polytask.backends.process.backend import ProcessBackend

folder, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
g = _proc._guardian
_proc.ensure_guardian()
first = g.pid
fill = "y" * 100_000
sleeper = subprocess.Popen(
    ["sleep", "600"], env=dict(os.environ, POLYTASK_TEST_FILL=fill),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(first, sleeper.pid, flush=True)
os.kill(first, signal.SIGSTOP)
while _proc.pid_state(first) != b"T":
    time.sleep(0.001)
_proc.guard_env("POLYTASK_TEST_FILL=" + fill)

def path(i):
    return os.path.join(folder, "f%05d-" % i + "x" * 200)

for i in range(count):
    open(path(i), "w").close()
    _proc.guard_path(path(i))
    if i % 3 == 1:
        _proc.unguard_path(path(i))
        if i % 5 == 0:
            _proc.guard_path(path(i))
be = ProcessBackend(1)
assert be.spawn(os.getpid, (), {}).result(60) != os.getpid()
be.shutdown()
assert pt.run(["true"]).returncode == 0
print("ready", flush=True)
if sys.stdin.readline() == "exit\n":
    sys.exit(0)
end = time.monotonic() + 60
# Read without the lock: a restart under way shows pid 0 and, for a moment, no backlog.
while g._pending or (mode == "restart" and g.pid in (first, 0)):
    assert time.monotonic() < end, "the backlog was never sent"
    time.sleep(0.01)
print("sent", g.pid, flush=True)
time.sleep(600)
"""

_COUNT = 1000  # 1000 lines of about 270 bytes, and a third more: far past 64 KiB


def _removed(i: int) -> bool:
    """Whether file ``i`` is registered at the end (see _OWNER)."""
    return i % 3 != 1 or i % 5 == 0


def _line(proc: subprocess.Popen[bytes], what: str) -> list[str]:
    """The owner's next line, or a failure (not a hang) if it does not come."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], HANG)[0]:
        pytest.fail(f"the owner printed no {what!r} in {HANG:g} s: hung")
    return proc.stdout.readline().decode().split()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` unless it has ended (it may end meanwhile: its guardian's work)."""
    try:
        if not _gone(pid):
            psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


def _start_owner(tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    src = os.path.dirname(os.path.dirname(polytask.__file__))
    env = dict(os.environ, PYTHONPATH=src)
    argv = [sys.executable, "-c", _OWNER, str(tmp_path), str(_COUNT), mode]
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _end_owner(owner: subprocess.Popen[bytes], guardians: list[int], sleeper: int | None) -> None:
    """Whatever the test did: the guardians (perhaps stopped), the owner, its sleep gone."""
    for pid in guardians:
        if pid <= 0:  # kill(0) would be our own group
            continue
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    owner.kill()
    owner.wait()
    for pipe in (owner.stdin, owner.stdout, owner.stderr):
        pipe.close()  # type: ignore[union-attr]
    if sleeper is not None:
        _kill(sleeper)


def _owner_with_a_stopped_guardian(tmp_path: Path, mode: str) -> None:
    owner = _start_owner(tmp_path, mode)
    assert owner.stdin is not None and owner.stderr is not None
    guardians, sleeper = [], None
    try:
        first, sleeper = map(int, _line(owner, "pids"))
        guardians.append(first)
        assert _line(owner, "ready") == ["ready"]
        if mode == "restart":
            os.kill(first, signal.SIGKILL)  # killed from outside, with a backlog
        else:
            os.kill(first, signal.SIGCONT)
        owner.stdin.write(b"go\n")
        owner.stdin.flush()
        sent = _line(owner, "sent")
        assert sent[0] == "sent", sent
        guardians.append(int(sent[1]))
        # Killed, the owner cannot send anything more: what the guardian does now it
        # does with what it was sent, in order.
        owner.kill()
        owner.wait(HANG)
        wait_until(lambda: _gone(guardians[-1]), HANG, "the guardian's clean-up")
        # All of it, even in a new guardian (which the old one's pipe never reached):
        # the marker the old pipe took part of (ending the sleep)...
        assert _gone(sleeper)
        # ... and every file, unregistered ones kept.
        left = {int(p.name[1:6]) for p in tmp_path.iterdir()}
        assert left == {i for i in range(_COUNT) if not _removed(i)}
        err = owner.stderr.read().decode()
        assert "does not read its pipe" in err, err
    finally:
        _end_owner(owner, guardians, sleeper)
    if mode == "restart":
        assert guardians[1] != guardians[0]


def test_a_stopped_guardian_holds_up_no_registration(tmp_path):
    """SIGSTOP on the guardian: spawns, commands and registrations go on (they
    used to hang once its pipe was full), and once it runs again it gets them
    all, in order: it removes what was registered, and what was unregistered
    after, not."""
    _owner_with_a_stopped_guardian(tmp_path, "continue")


def test_a_guardian_killed_with_a_backlog_is_replaced_and_sent_it(tmp_path):
    """The stopped guardian killed from outside: a new one gets what the old one
    was not sent, the line it got part of whole, with no send to trigger it."""
    _owner_with_a_stopped_guardian(tmp_path, "restart")


def test_an_owner_exits_with_its_guardian_stopped(tmp_path):
    """At exit the stopped guardian is killed (a clean-up from a list it was not sent
    all of could end groups whose numbers were reused since) and the owner does its
    clean-up itself, from the list as it is: the sleep its marker covers is ended,
    the files are removed but those unregistered."""
    owner = _start_owner(tmp_path, "exit")
    assert owner.stdin is not None and owner.stderr is not None
    guardian = sleeper = None
    try:
        guardian, sleeper = map(int, _line(owner, "pids"))
        assert _line(owner, "ready") == ["ready"]
        owner.stdin.write(b"exit\n")
        owner.stdin.flush()
        assert owner.wait(HANG) == 0
        wait_until(lambda: _gone(guardian), HANG, "the stopped guardian killed")
        assert _gone(sleeper)
        left = {int(p.name[1:6]) for p in tmp_path.iterdir()}
        assert left == {i for i in range(_COUNT) if not _removed(i)}
        err = owner.stderr.read().decode()
        assert "did its clean-up here" in err, err
    finally:
        _end_owner(owner, [] if guardian is None else [guardian], sleeper)


# ----------------------------------------------------------- what a guardian must not lose

# An owner with jobs that only some registrations cover: "bare" runs with no
# environment (no owner key) in a session of its own (only its group's "+"),
# "plain" was started with subprocess, not polytask (no owner key: only its
# "k"), "marked" carries the owner key, "freed" was registered and released
# (it must outlive the owner); file "gone" is registered, "kept" was released.
# It prints the guardian's pid and the jobs' once all is in the pipe, then
# follows its mode:
# - "exit": exits when told to (the test stopped the guardian);
# - "replace": when told to, registers one more file (the test killed the
#   guardian: the send starts another), prints the new guardian's pid, waits;
# - "churn": stops its guardian, registers and releases 20,000 groups and
#   files, prints how many bytes wait for it, continues it, prints "sent" once
#   all went, waits.
_JOBS = r"""
import os, shutil, signal, subprocess, sys, time
from polytask._os import proc as _proc

folder, mode = sys.argv[1], sys.argv[2]
g = _proc._guardian
_proc.ensure_guardian()
sleep = shutil.which("sleep")

def start(**kw):
    return subprocess.Popen([sleep, "600"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

bare = start(start_new_session=True, env={})
_proc.guard(bare.pid)
plain = start()
_proc.guard_pid(plain.pid)
marked = start(start_new_session=True, env=_proc.tree_env(_proc.new_job()))
freed = start(start_new_session=True, env={})
_proc.guard(freed.pid)
_proc.unguard(freed.pid)
for name in ("gone", "kept"):
    open(os.path.join(folder, name), "w").close()
    _proc.guard_path(os.path.join(folder, name))
_proc.unguard_path(os.path.join(folder, "kept"))
while g._pending:
    time.sleep(0.001)
first = g.pid
print(first, bare.pid, plain.pid, marked.pid, freed.pid, flush=True)

def wait_sent():
    end = time.monotonic() + 60
    while g._pending or g.pid in (first, 0) and mode == "replace":  # 0: restarting
        assert time.monotonic() < end, "the backlog was never sent"
        time.sleep(0.001)

if mode == "exit":
    sys.stdin.readline()
    sys.exit(0)
if mode == "replace":
    sys.stdin.readline()
    open(os.path.join(folder, "late"), "w").close()
    _proc.guard_path(os.path.join(folder, "late"))
    wait_sent()
    print(g.pid, flush=True)
if mode == "churn":
    os.kill(first, signal.SIGSTOP)
    while _proc.pid_state(first) != b"T":
        time.sleep(0.001)
    path = os.path.join(folder, "x" * 200)
    jobs = {bare.pid, plain.pid, marked.pid, freed.pid}
    for group in (n for n in range(4_000_000, 4_020_000) if n not in jobs):
        _proc.guard(group)
        _proc.guard_path(path)
        _proc.unguard(group)
        _proc.unguard_path(path)
    print(len(g._pending), flush=True)
    os.kill(first, signal.SIGCONT)
    wait_sent()
    print("sent", flush=True)
time.sleep(600)
"""


class _Jobs:
    """The _JOBS owner, its guardians and jobs, all ended whatever the test did."""

    def __init__(self, tmp_path: Path, mode: str) -> None:
        self.folder = tmp_path
        src = os.path.dirname(os.path.dirname(polytask.__file__))
        self.owner = subprocess.Popen(
            [sys.executable, "-c", _JOBS, str(tmp_path), mode],
            env=dict(os.environ, PYTHONPATH=src),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.guardians: list[int] = []
        self.jobs: list[int] = []

    def __enter__(self) -> _Jobs:
        guardian, *self.jobs = map(int, _line(self.owner, "pids"))
        self.guardians.append(guardian)
        return self

    def tell(self, text: bytes = b"go\n") -> None:
        assert self.owner.stdin is not None
        self.owner.stdin.write(text)
        self.owner.stdin.flush()

    def check_cleaned_up(self) -> None:
        """What the registrations cover is gone; what was released is not."""
        bare, plain, marked, freed = self.jobs
        for pid in (bare, plain, marked):
            wait_until(lambda pid=pid: _gone(pid), HANG, f"job {pid} ended")
        assert not _gone(freed)
        assert sorted(p.name for p in self.folder.iterdir()) == ["kept"]

    def stderr(self) -> str:
        assert self.owner.stderr is not None
        return self.owner.stderr.read().decode()

    def __exit__(self, *exc: object) -> None:
        _end_owner(self.owner, self.guardians, None)
        for pid in self.jobs:
            _kill(pid)


def test_a_bad_line_on_the_pipe_does_not_end_the_guardian(tmp_path):
    """Lines the owner never writes, written into the guardian's pipe through /proc
    (as anyone with the owner's uid can): each is skipped with a word on stderr, and
    the guardian still ends every job when the owner is killed. It used to raise at
    the first (int(b"abc")) and exit: nothing was cleaned up."""
    garbage = (
        b"+abc\n-\xff\n+-5\n+0\n+1\n+99999999999999999999\n+1_0\n"
        b"kabc 1\nk12\nk12 x\n" + b"p" + os.fsencode(tmp_path / "kept") + b"\0\n" + b"Zz\n"
    )
    with _Jobs(tmp_path, "wait") as jobs:
        with open(f"/proc/{jobs.guardians[0]}/fd/0", "wb") as pipe:
            pipe.write(garbage)
        jobs.owner.kill()
        jobs.owner.wait(HANG)
        wait_until(lambda: _gone(jobs.guardians[0]), HANG, "the guardian's clean-up")
        jobs.check_cleaned_up()
        err = jobs.stderr()
        assert err.count("skipped a line") == garbage.count(b"\n"), err


def test_an_owner_exits_normally_with_its_guardian_stopped(tmp_path):
    """A stopped guardian would not read the end-of-file until continued (if ever):
    the owner, exiting, ends it and does the clean-up itself. It used to kill it
    after 5 s and leave every job running."""
    with _Jobs(tmp_path, "exit") as jobs:
        os.kill(jobs.guardians[0], signal.SIGSTOP)
        wait_until(lambda: _proc.pid_state(jobs.guardians[0]) == b"T", HANG, "stopped")
        jobs.tell()
        assert jobs.owner.wait(HANG) == 0
        jobs.check_cleaned_up()
        assert _gone(jobs.guardians[0])
        assert "did its clean-up here" in jobs.stderr()


def test_an_owner_exits_normally_with_its_guardian_killed(tmp_path):
    """The guardian killed from outside and no registration since to replace it:
    at exit the owner does the clean-up itself."""
    with _Jobs(tmp_path, "exit") as jobs:
        os.kill(jobs.guardians[0], signal.SIGKILL)
        jobs.tell()
        assert jobs.owner.wait(HANG) == 0
        jobs.check_cleaned_up()


def test_a_replacement_guardian_gets_all_that_is_registered(tmp_path):
    """The guardian SIGKILLed after it had read everything: the next registration
    starts another, which is sent all that is registered, not only that line. It
    used to get the owner key and the new line only: the jobs the key does not
    cover (no environment, not started by polytask) and the file outlived the
    owner."""
    with _Jobs(tmp_path, "replace") as jobs:
        os.kill(jobs.guardians[0], signal.SIGKILL)
        wait_until(lambda: _gone(jobs.guardians[0]), HANG, "the guardian killed")
        jobs.tell()
        (new,) = map(int, _line(jobs.owner, "new guardian"))
        jobs.guardians.append(new)
        assert new != jobs.guardians[0]
        jobs.owner.kill()
        jobs.owner.wait(HANG)
        wait_until(lambda: _gone(new), HANG, "the new guardian's clean-up")
        jobs.check_cleaned_up()


def test_a_stopped_guardians_backlog_grows_with_what_is_registered(tmp_path):
    """20,000 groups and files registered and released while the guardian is stopped
    (80,000 lines, 4.6 MB): what waits for it stays small, and once it reads again
    it holds what it should."""
    with _Jobs(tmp_path, "churn") as jobs:
        (held,) = map(int, _line(jobs.owner, "backlog"))
        assert held < 128 * 1024  # the history: 4.6 MB
        assert _line(jobs.owner, "sent") == ["sent"]
        jobs.owner.kill()
        jobs.owner.wait(HANG)
        wait_until(lambda: _gone(jobs.guardians[0]), HANG, "the guardian's clean-up")
        jobs.check_cleaned_up()


def test_a_path_with_a_nul_is_refused_at_the_call():
    """The guardian could not unlink it (ValueError, not OSError): it used to take
    the line and die of it in its clean-up."""
    for call in (_proc.guard_path, _proc.guard_prefix):
        with pytest.raises(ValueError, match="NUL"):
            call("/dev/shm/polytask-a\0b")


def test_an_owner_whose_guardian_could_not_be_replaced_cleans_up_at_exit(tmp_path):
    """The guardian killed from outside and its replacement failing to start (here:
    no interpreter at sys.executable any more): the owner's normal exit ends what
    it registered itself, as the guardian would have."""
    code = (
        "import os, signal, subprocess, sys, time\n"
        "from polytask._os import proc as P\n"
        "job = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
        "                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "P.guard(job.pid)\n"
        "g = P._guardian._proc\n"
        "os.kill(g.pid, signal.SIGKILL)\n"
        "g.wait(10)\n"
        "sys.executable = '/nonexistent/python'\n"
        "try:\n"
        "    P.guard_path('/nonexistent/x')\n"
        "except OSError as exc:\n"
        "    print('restart failed:', type(exc).__name__, file=sys.stderr)\n"
        "print(job.pid, flush=True)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "restart failed" in out.stderr
    job = int(out.stdout)
    try:
        wait_until(lambda: _gone(job), 10, "the owner's job to end with it")
    finally:
        try:
            os.killpg(job, signal.SIGKILL)
        except ProcessLookupError:
            pass


_FINALIZERS = r"""
import gc, os, sys, threading, weakref
from polytask._os import proc as _proc

d = sys.argv[1]
paths = [os.path.join(d, f"f{i}") for i in range(300)]
for path in paths:
    open(path, "w").close()
    _proc.guard_path(path)
inside = [0]


def forget(path):
    # What a channel's or a segment's finalizer does: unregister its files.
    if getattr(_proc._guardian, "_holder", None) == threading.get_ident():
        inside[0] += 1
    _proc.unguard_path(path)


def collect_there(frame, event, arg):
    # The collector runs wherever an allocation or a call finds it due: here, in
    # the functions that run with the guardian's lock held.
    if event == "call" and frame.f_code.co_name in ("_flush", "parse"):
        gc.collect()


class Junk:
    pass


for path in paths:
    junk = Junk()
    junk.me = junk  # a cycle: only the collector frees it
    weakref.finalize(junk, forget, path)
    del junk
    sys.setprofile(collect_there)
    _proc.guard_path(os.path.join(d, "never-made"))  # any send
    sys.setprofile(None)
print(inside[0])
"""


def test_a_finalizer_run_inside_a_send_neither_hangs_nor_loses_its_line(tmp_path):
    """The collector runs finalizers wherever it is: a channel's, which unregisters its
    files, ran inside a send, in the thread holding the guardian's lock, and waited
    for that lock for ever (CI hung so on 3.13). Its line must still reach the
    guardian: lost, the guardian would remove the file at exit."""
    out = run_python(_FINALIZERS.replace("sys.argv[1]", repr(str(tmp_path))))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 300  # each ran inside a send: the case was exercised
    assert len(os.listdir(tmp_path)) == 300  # every "-" line reached the guardian


_FINALIZERS_IN_CLOSE = r"""
import gc, os, sys, threading, weakref
from polytask._os import proc as _proc

gc.disable()  # only the hook collects
d = sys.argv[1]
paths = [os.path.join(d, f"f{i}") for i in range(50)]
inside = [0]


def forget(path):
    if _proc._guardian._holder == threading.get_ident():
        inside[0] += 1
    _proc.unguard_path(path)


class Junk:
    pass


for path in paths:
    open(path, "w").close()
    _proc.guard_path(path)
    junk = Junk()
    junk.me = junk  # a cycle: only the collector frees it
    weakref.finalize(junk, forget, path)
    del junk


def collect_there(frame, event, arg):
    # In close(), with the guardian's lock held: its drain writes the backlog.
    if event == "call" and frame.f_code.co_name == "_flush":
        gc.collect()


sys.setprofile(collect_there)
_proc._guardian.close()
sys.setprofile(None)
print(inside[0])
"""


def test_a_finalizer_run_inside_the_close_at_exit_still_reaches_the_guardian(tmp_path):
    """The lines a finalizer leaves inside a locked section wait for the section to
    send them; close()'s section, which the collector may enter too (the exit's
    collections), must send them before the end of file: a "-" kept back there let
    the guardian's clean-up remove what its owner had taken back."""
    out = run_python(_FINALIZERS_IN_CLOSE.replace("sys.argv[1]", repr(str(tmp_path))))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 50  # each ran inside close(): the case was exercised
    assert len(os.listdir(tmp_path)) == 50  # every "-" line reached the guardian


_FINALIZER_IN_A_SECTION_THAT_RAISES = r"""
import gc, os, sys, threading, weakref
from polytask._os import proc as _proc

gc.disable()  # only the hook collects
path = os.path.join(sys.argv[1], "segment")
open(path, "w").close()
_proc.guard_path(path)
inside = []


class Junk:
    pass


junk = Junk()
junk.me = junk  # a cycle: only the collector frees it
# What a segment's finalizer does: its owner took the file back, unregister it.
weakref.finalize(junk, lambda: inside.append(_proc._guardian._holder == threading.get_ident())
                 or _proc.unguard_path(path))
del junk


def interrupt_there(frame, event, arg):
    # Inside a send's section: the collector runs the finalizer (its line waits for
    # the section), then Ctrl-C arrives and the section raises.
    if event == "call" and frame.f_code.co_name == "_flush":
        sys.setprofile(None)
        gc.collect()
        raise KeyboardInterrupt


sys.setprofile(interrupt_there)
try:
    _proc.guard_path(os.path.join(sys.argv[1], "never-made"))  # any send
except KeyboardInterrupt:
    pass
sys.setprofile(None)
_proc.guard_path(path)  # registered again (a name reused): after the "-", it holds
print(inside, _proc._guardian._sent.holds("paths", path))
"""


def test_a_line_left_by_a_section_that_raised_goes_before_the_next_ones(tmp_path):
    """A finalizer's line waits for the section it ran in to send it. When that
    section raised (Ctrl-C there), the next send took it: after its own line, so a
    "+" of the same path then came before the "-" that preceded it, and the
    guardian forgot a file its owner had registered again."""
    out = run_python(
        _FINALIZER_IN_A_SECTION_THAT_RAISES.replace("sys.argv[1]", repr(str(tmp_path)))
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[True]", "True"]  # ran in the section; registered
    assert os.listdir(tmp_path) == []  # the guardian removed it at the owner's exit
