"""`polytask parallel`: --events, --resume keyed on the command line, --load and --memfree.

Runs call ``main(argv)`` in this process (the jobs are real processes), or
``python -m polytask.cli`` where a signal or a fresh interpreter is needed;
GNU parallel runs beside it where the two can be compared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from polytask import _parallel_spec as spec
from polytask.cli._parallel import main

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
BASH = shutil.which("bash") or "/bin/bash"


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def of_job(evs: list[dict[str, Any]], seq: int) -> list[str]:
    return [e["event"] for e in evs if e.get("job") == seq]


# =========================================================================== --events


def test_events_of_a_job_that_succeeds_fails_and_is_retried(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "events"
    code, _, _ = run(capfd, "--events", str(log), "--retries", "2", "-j1", "exit", ":::", "0", "3")
    assert code == 1
    evs = events(log)
    assert of_job(evs, 1) == ["spawn", "exit"]
    assert of_job(evs, 2) == ["spawn", "exit", "retry", "spawn", "exit"]
    assert evs[-1] == {"time": evs[-1]["time"], "event": "done", "returncode": 1}
    for e in evs:  # up's envelope: time, event, process first
        assert list(e)[:2] == ["time", "event"] and isinstance(e["time"], float)
        if "job" in e:
            assert e["process"] == f"job.{e['job']}"
    spawns = [e for e in evs if e["event"] == "spawn"]
    exits = [e for e in evs if e["event"] == "exit"]
    assert [e["pid"] for e in spawns] == [e["pid"] for e in exits]
    assert [(e["job"], e["attempt"], e["command"]) for e in spawns] == [
        (1, 1, "exit 0"),
        (2, 1, "exit 3"),
        (2, 2, "exit 3"),
    ]
    assert [(e["code"], e["description"], e["state"]) for e in exits] == [
        (0, "exited with code 0", "succeeded"),
        (3, "exited with code 3", "retry"),
        (3, "exited with code 3", "failed"),
    ]
    assert all(e["duration"] >= 0 for e in exits)
    retry = next(e for e in evs if e["event"] == "retry")
    assert (retry["attempt"], retry["attempts"]) == (2, 2)


def test_events_of_a_timeout(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "events"
    code, _, err = run(capfd, "--events", str(log), "--timeout", "0.3", "sleep", ":::", "30")
    assert code == 1 and "timed out" in err
    evs = events(log)
    assert [e["event"] for e in evs] == ["spawn", "timeout", "exit", "done"]
    spawn, timeout, exit_, _ = evs
    assert timeout["pid"] == exit_["pid"] == spawn["pid"]
    assert timeout["timeout"] == pytest.approx(0.3, abs=0.01)
    # stamped when the job was ended: its deadline, before its exit was seen
    assert spawn["time"] <= timeout["time"] <= exit_["time"]
    assert (exit_["code"], exit_["state"]) == (-signal.SIGTERM, "failed")
    assert exit_["description"] == "killed by signal SIGTERM (15)"


def test_events_of_a_job_killed_by_halt_now(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "events"
    flag = tmp_path / "started"
    # Job 1 fails only once job 2 runs: the halt always finds job 2 running.
    cmd = (
        f"if [ {{}} = a ]; then while [ ! -e {flag} ]; do sleep 0.01; done; exit 1; "
        f"else touch {flag}; exec sleep 30; fi"
    )
    code, _, _ = run(
        capfd, "--events", str(log), "-j2", "--halt", "now,fail=1", cmd, ":::", "a", "b"
    )
    assert code == 1
    evs = events(log)
    assert of_job(evs, 1) == ["spawn", "exit"]
    assert of_job(evs, 2) == ["spawn", "kill", "exit"]
    kill = next(e for e in evs if e["event"] == "kill")
    assert kill["reason"] == "halt"
    exit2 = [e for e in evs if e["event"] == "exit" and e["job"] == 2][0]
    assert (exit2["code"], exit2["state"]) == (-signal.SIGTERM, "killed")
    assert evs[-1]["event"] == "done" and evs[-1]["returncode"] == 1


def test_events_to_stderr_and_appended(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", "--events", "-", "echo", ":::", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0 and r.stdout == "x\n"
    assert [json.loads(line)["event"] for line in r.stderr.splitlines()] == [
        "spawn",
        "exit",
        "done",
    ]
    log = tmp_path / "events"
    log.write_text('{"time": 1.0, "event": "earlier"}\n')
    assert main(["--events", str(log), "true", ":::", "1"]) == 0
    assert [e["event"] for e in events(log)] == ["earlier", "spawn", "exit", "done"]


def test_events_of_jobs_that_never_start(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "events"
    code, _, _ = run(capfd, "--events", str(log), "-j1", "no-such-program-xyz", ":::", "a")
    assert code == 1
    evs = events(log)
    assert [e["event"] for e in evs] == ["spawn_error", "done"]
    assert evs[0]["code"] == 127 and "command not found" in evs[0]["error"]


def test_events_file_that_cannot_be_written(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    code, _, err = run(capfd, "--events", str(tmp_path / "no" / "dir"), f"touch {ran}", ":::", "a")
    assert code == 255 and "cannot write events file" in err and not ran.exists()


# =========================================================================== --resume


def test_resume_after_reordering_and_adding_inputs(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    joblog, ran = tmp_path / "log", tmp_path / "ran"
    cmd = f"echo {{}} >> {ran}"
    assert run(capfd, "--joblog", str(joblog), cmd, ":::", "a", "b", "c")[0] == 0
    ran.unlink()
    # reordered, one added in front and one at the end: only those two run
    code = run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "d", "c", "b", "a", "e")[0]
    assert code == 0
    assert sorted(ran.read_text().split()) == ["d", "e"]
    ran.unlink()
    # and again: everything is in the log now, whatever the order
    assert (
        run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "e", "a", "d", "b", "c")[0] == 0
    )
    assert not ran.exists()


def test_resume_failed_after_reordering(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog, ran, fixed = tmp_path / "log", tmp_path / "ran", tmp_path / "fixed"
    cmd = f"echo {{}} >> {ran}; case {{}} in bad*) [ -e {fixed} ];; esac"
    args = ["ok1", "bad1", "ok2", "bad2"]
    assert run(capfd, "--joblog", str(joblog), cmd, ":::", *args)[0] == 2
    ran.unlink()
    # reordered: the failed ones run again, not the ones that succeeded
    assert run(capfd, "--joblog", str(joblog), "--resume-failed", cmd, ":::", *args[::-1])[0] == 2
    assert sorted(ran.read_text().split()) == ["bad1", "bad2"]
    ran.unlink()
    fixed.touch()
    assert (
        run(
            capfd,
            "--joblog",
            str(joblog),
            "--resume-failed",
            cmd,
            ":::",
            "bad2",
            "ok1",
            "bad1",
            "ok2",
        )[0]
        == 0
    )
    assert sorted(ran.read_text().split()) == ["bad1", "bad2"]
    ran.unlink()
    # now each has a line that succeeded (its last): nothing runs
    assert run(capfd, "--joblog", str(joblog), "--resume-failed", cmd, ":::", *args)[0] == 0
    assert not ran.exists()


def test_resume_with_the_same_command_twice(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    joblog, ran = tmp_path / "log", tmp_path / "ran"
    cmd = f"echo {{}} >> {ran}"
    assert run(capfd, "--joblog", str(joblog), cmd, ":::", "a", "b")[0] == 0
    ran.unlink()
    # "a" twice: the log holds one job of it, so the second runs; then both are logged
    assert run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "b", "a", "a")[0] == 0
    assert ran.read_text().split() == ["a"]
    ran.unlink()
    assert run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "a", "b", "a")[0] == 0
    assert not ran.exists()
    assert run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "a", "a", "a", "b")[0] == 0
    assert ran.read_text().split() == ["a"]


@pytest.mark.parametrize(("slot", "shown"), [("{%}", "1"), ("{0%}", "1")])
def test_resume_with_the_job_slot_in_the_command_is_by_number(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, slot: str, shown: str
) -> None:
    joblog, ran = tmp_path / "log", tmp_path / "ran"
    cmd = f"echo {{}} {slot} >> {ran}"
    plus = ["--plus"] if slot == "{0%}" else []
    assert run(capfd, *plus, "-j1", "--joblog", str(joblog), cmd, ":::", "a", "b")[0] == 0
    ran.unlink()
    # The slot is known only as a job starts: GNU's rule, job numbers 1 and 2 are done
    argv = [*plus, "-j1", "--joblog", str(joblog), "--resume", cmd, ":::", "b", "a", "c"]
    assert run(capfd, *argv)[0] == 0
    assert ran.read_text().split() == ["c", shown]


def _entries(*lines: tuple[int, str, int]) -> list[spec.JoblogEntry]:
    return [spec.JoblogEntry(seq, ":", 0.0, 0.0, 0, 0, code, 0, cmd) for seq, cmd, code in lines]


def test_resume_index_is_gnus_rule_for_the_same_inputs_in_the_same_order() -> None:
    import random

    rng = random.Random(15)
    for _ in range(200):
        commands = [rng.choice("abcd") for _ in range(rng.randint(1, 8))]  # duplicates too
        lines = []
        for _ in range(rng.randint(0, 12)):  # several runs appended, gaps, reruns
            seq = rng.randint(1, len(commands))
            lines.append((seq, commands[seq - 1], rng.choice((0, 0, 1))))
        entries = _entries(*lines)
        for failed_too in (False, True):
            gnu = spec.resume_skip(entries, failed_too=failed_too)
            index = spec.ResumeIndex(entries, failed_too=failed_too)
            ours = {seq for seq, c in enumerate(commands, 1) if index.skip(seq, c)}
            assert ours == gnu, (commands, lines, failed_too)


def test_resume_index_rules() -> None:
    log = _entries((1, "a", 0), (2, "b", 1), (3, "c", 0))
    index = spec.ResumeIndex(log, failed_too=False)
    assert [index.skip(i, c) for i, c in enumerate("xcbad", 1)] == [False, True, True, True, False]
    index = spec.ResumeIndex(log, failed_too=True)
    assert [index.skip(i, c) for i, c in enumerate("cba", 1)] == [True, False, True]
    # a number with no line, the command logged at a later one: that is most
    # likely the later job's own (the first run stopped before this one)
    index = spec.ResumeIndex(_entries((1, "a", 0), (3, "a", 0)), failed_too=False)
    assert [index.skip(i, c) for i, c in enumerate("aaa", 1)] == [True, False, True]
    # the joblog's Command column holds a newline as NUL
    index = spec.ResumeIndex(_entries((1, "echo a\0b", 0)), failed_too=False)
    assert index.skip(5, "echo a\nb")
    # by_seq: GNU's rule
    index = spec.ResumeIndex(_entries((2, "a", 0)), failed_too=False, by_seq=True)
    assert [index.skip(i, "z") for i in (1, 2, 3)] == [False, True, False]


# =========================================================================== --load, --memfree


def test_load_and_memfree_that_hold_run_every_job(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    available, _ = spec.meminfo(Path("/proc/meminfo").read_text())
    for opts in (["--load", "100000"], ["--load", "+100000"], ["--memfree", "1M"]):
        code, out, _ = run(capfd, *opts, "-k", "echo", ":::", "a", "b", "c")
        assert (code, out) == (0, "a\nb\nc\n"), opts
    assert available > 2**20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--load", "abc"], "--load 'abc': not a load"),
        (["--load", "1e3"], "--load '1e3': not a load"),
        (["--load", "5%x"], "not a load"),
        (["--load", "+x"], "not a load"),
        (["--load", ""], "not a load"),
        (["--memfree", "lots"], "--memfree 'lots': not a size"),
        (["--memfree", "-1G"], "--memfree '-1G': must not be negative"),
        (["--memfree", "1000P"], "is more than this machine's memory"),
    ],
)
def test_bad_load_and_memfree_exit_255(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    ran = tmp_path / "ran"
    code, out, err = run(capfd, *argv, f"touch {ran}", ":::", "a")
    assert code == 255 and message in err and err.count("\n") == 1
    assert out == "" and not ran.exists()


def test_parse_load() -> None:
    assert spec.parse_load("3", 4) == 3.0
    assert spec.parse_load("2.5", 4) == 2.5
    assert spec.parse_load("50%", 4) == 2.0
    assert spec.parse_load("+2", 4) == 6.0
    assert spec.parse_load("-1", 4) == 3.0
    assert spec.parse_load("0", 4) == spec.MIN_LOAD  # as GNU: 0 is 0.01
    assert spec.parse_load("-8", 4) == spec.MIN_LOAD


def test_instant_load_and_meminfo_read_the_kernels_numbers() -> None:
    assert spec.instant_load("cpu 1 2 3\nprocs_running 3\nprocs_blocked 2\n") == 4
    assert spec.instant_load("procs_running 1\nprocs_blocked 0\n") == 0
    text = "MemTotal:  1000 kB\nMemFree:  100 kB\nMemAvailable:  600 kB\nCached: 400 kB\n"
    assert spec.meminfo(text) == (600 * 1024, 1000 * 1024)
    old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 400 kB\nSwapCached: 1 kB\n"
    assert spec.meminfo(old) == (511 * 1024, 1000 * 1024)
    available, total = spec.meminfo(Path("/proc/meminfo").read_text())
    assert 0 < available <= total
    load = spec.instant_load(Path("/proc/stat").read_text())
    assert load >= 0


def test_memfree_victim_is_the_youngest_under_half() -> None:
    assert spec.memfree_victim(600, 1000, [1, 5, 3]) is None  # under SIZE: only no new start
    assert spec.memfree_victim(500, 1000, [1, 5, 3]) is None
    assert spec.memfree_victim(499, 1000, [1, 5, 3]) == 5
    assert spec.memfree_victim(0, 1000, []) is None


def test_memfree_that_is_not_available_starts_nothing(tmp_path: Path) -> None:
    """A --memfree under the machine's memory but over what is available holds every
    start (polytask does not refuse it: memory may be freed); a signal still ends it."""
    available, total = spec.meminfo(Path("/proc/meminfo").read_text())
    assert available < total
    ran = tmp_path / "ran"
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.Popen(
        [PY, "-m", "polytask.cli", "parallel", "--memfree", str(total), f"touch {ran}", ":::", "a"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Several of its looks at the memory go by with nothing started.
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=1.5)
        assert not ran.exists()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 255
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stderr is not None
        p.stderr.close()
    assert not ran.exists()


# =========================================================================== beside GNU parallel


@pytest.fixture(scope="module")
def gnu_parallel() -> str:
    path = shutil.which("parallel")
    if not path:
        pytest.skip("GNU parallel is not installed")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    if not r.stdout.startswith("GNU parallel"):
        pytest.skip(f"{path} is not GNU parallel")
    return path


def _both(gnu: str, tmp_path: Path, *argv: str) -> list[tuple[int, str, str]]:
    home = tmp_path / "parallel-home"
    home.mkdir(exist_ok=True)
    (home / "will-cite").touch()
    env = dict(os.environ, PYTHONPATH=SRC, SHELL=BASH, PARALLEL_SHELL=BASH, PARALLEL_HOME=str(home))
    env.pop("PARALLEL", None)
    out = []
    for name, prog in (("gnu", [gnu]), ("pt", [PY, "-m", "polytask.cli", "parallel"])):
        cwd = tmp_path / name
        cwd.mkdir(exist_ok=True)
        r = subprocess.run(
            [*prog, *argv], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
        )
        out.append((r.returncode, r.stdout, r.stderr))
    return out


def test_resume_as_gnu_with_the_same_inputs_in_the_same_order(
    gnu_parallel: str, tmp_path: Path
) -> None:
    steps = [
        ["-k", "--joblog", "log", "sh -c 'echo {}; exit {}'", ":::", "0", "1", "0", "2"],
        [
            "-k",
            "--joblog",
            "log",
            "--resume",
            "sh -c 'echo {}; exit {}'",
            ":::",
            "0",
            "1",
            "0",
            "2",
            "3",
            "0",
        ],
        [
            "-k",
            "--joblog",
            "log",
            "--resume-failed",
            "sh -c 'echo {}; exit {}'",
            ":::",
            "0",
            "1",
            "0",
            "2",
            "3",
            "0",
            "4",
        ],
    ]
    for argv in steps:
        g, p = _both(gnu_parallel, tmp_path, *argv)
        assert p[:2] == g[:2], argv
    logs = [
        [line.split("\t") for line in (tmp_path / d / "log").read_text().splitlines()]
        for d in ("gnu", "pt")
    ]
    # the lines in the order the jobs ended, which -j2 leaves open: compared sorted
    g_log, p_log = (sorted((c[0], c[6], c[8]) for c in log) for log in logs)
    assert p_log == g_log


def test_load_and_memfree_as_gnu(gnu_parallel: str, tmp_path: Path) -> None:
    for opts in (["--load", "100000"], ["--memfree", "1M"]):
        g, p = _both(gnu_parallel, tmp_path, *opts, "-k", "echo", ":::", "a", "b")
        assert p == g == (0, "a\nb\n", ""), opts


def test_bad_load_exits_255_as_gnu(gnu_parallel: str, tmp_path: Path) -> None:
    for value in ("abc", "1e3"):
        g, p = _both(gnu_parallel, tmp_path, "--load", value, "echo", ":::", "a")
        # GNU parallel prints its usage on stdout; neither runs the job
        assert g[0] == p[0] == 255 and "Parsing of --load failed" in g[2]
        assert "\na\n" not in "\n" + g[1] and p[1] == ""
        assert f"--load {value!r}: not a load" in p[2]


def _meminfo(path: Path, available_mb: int) -> str:
    """Shell words that replace the meminfo file at ``path`` at once (mv)."""
    text = f"MemTotal: {1000 * 1024} kB\\nMemAvailable: {available_mb * 1024} kB\\n"
    return f'printf "{text}" > {path}.new && mv {path}.new {path}'


@pytest.mark.parametrize("retries", [2, 0])
def test_memfree_ends_the_youngest_job_and_queues_it_again(
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retries: int,
) -> None:
    """The kill path, on real jobs and signals. Only the memory is not real: the
    machine's cannot be brought under half a --memfree safely while others use
    it, so the runner reads a meminfo file that the jobs themselves rewrite."""
    from polytask.cli import _parallel

    fake = tmp_path / "meminfo"
    subprocess.run(["sh", "-c", _meminfo(fake, 800)], check=True)
    monkeypatch.setattr(_parallel, "_MEMINFO", str(fake))
    bpid, bterm = tmp_path / "bpid", tmp_path / "bterm"
    log, joblog = tmp_path / "events", tmp_path / "joblog"
    # Job 1 takes the memory away once job 2 (the youngest) runs. Job 2 gives it
    # back as it dies (memory is freed at exit), and ends at once when run again.
    job1 = f"while [ ! -e {bpid} ]; do sleep 0.01; done; {_meminfo(fake, 100)}; " + (
        f"while [ ! -e {bterm} ]; do sleep 0.01; done"
    )
    job2 = (
        f"[ -e {bpid} ] && exit 0; trap '{_meminfo(fake, 800)}; touch {bterm}; exit 143' TERM; "
        f"touch {bpid}; sleep 30 & wait"
    )
    code, _, err = run(
        capfd,
        "-j2",
        "--memfree",
        "500M",
        "--termseq",  # job 2's trap gives the memory back: never cut short by SIGKILL
        "TERM,30000,KILL",
        "--retries",
        str(retries),
        "--events",
        str(log),
        "--joblog",
        str(joblog),
        ":::",
        job1,
        job2,
    )
    evs = events(log)
    kill = next(e for e in evs if e["event"] == "kill")
    assert (kill["job"], kill["reason"], kill["available"]) == (2, "memfree", 100 * 2**20)
    assert "ending the youngest job, 2" in err
    lines = [line.split("\t") for line in joblog.read_text().splitlines()[1:]]
    if retries:
        assert code == 0
        assert of_job(evs, 2) == ["spawn", "kill", "exit", "retry", "spawn", "exit"]
        assert [e["state"] for e in evs if e["event"] == "exit" and e["job"] == 2] == [
            "retry",
            "succeeded",
        ]
        assert sorted((c[0], c[6]) for c in lines) == [("1", "0"), ("2", "0")]
    else:  # no try left: it fails as GNU parallel's killed job, Exitval -1
        assert code == 1 and "no --retries left" in err
        assert of_job(evs, 2) == ["spawn", "kill", "exit"]
        assert sorted((c[0], c[6], c[7]) for c in lines) == [("1", "0", "0"), ("2", "-1", "15")]


def test_resume_after_a_reorder_differs_from_gnu_on_purpose(
    gnu_parallel: str, tmp_path: Path
) -> None:
    first = _both(gnu_parallel, tmp_path, "-k", "--joblog", "log", "echo", ":::", "a", "b")
    assert first[0][:2] == first[1][:2] == (0, "a\nb\n")
    g, p = _both(
        gnu_parallel, tmp_path, "-k", "--joblog", "log", "--resume", "echo", ":::", "c", "a", "b"
    )
    # GNU parallel skips job numbers 1 and 2 (now c and a) and runs b again
    assert g[:2] == (0, "b\n")
    assert p[:2] == (0, "c\n")


def test_resume_of_pipe_blocks_is_by_number(tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=SRC)

    def pipe(*opts: str, data: str) -> str:
        r = subprocess.run(
            [
                PY,
                "-m",
                "polytask.cli",
                "parallel",
                "--pipe",
                "-N1",
                "-k",
                "--joblog",
                str(joblog),
                *opts,
                "cat",
            ],
            input=data,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert pipe(data="a\nb\n") == "a\nb\n"
    # every block's command line is "cat": blocks 1 and 2 are done, 3 and 4 run
    assert pipe("--resume", data="x\ny\nc\nd\n") == "c\nd\n"


def test_dry_run_with_resume_prints_the_jobs_that_would_run(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    joblog = tmp_path / "log"
    assert run(capfd, "--joblog", str(joblog), "true", ":::", "a", "b")[0] == 0
    code, out, _ = run(
        capfd, "--joblog", str(joblog), "--resume", "--dry-run", "-k", "true", ":::", "b", "c", "a"
    )
    assert (code, out) == (0, "true c\n")


def test_resume_with_shuf(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog, ran = tmp_path / "log", tmp_path / "ran"
    cmd = f"echo {{}} >> {ran}"
    args = [str(i) for i in range(20)]
    assert run(capfd, "--shuf", "--joblog", str(joblog), cmd, ":::", *args)[0] == 0
    ran.unlink()
    # numbered in another random order: still only the new input runs
    assert (
        run(capfd, "--shuf", "--joblog", str(joblog), "--resume", cmd, ":::", *args, "new")[0] == 0
    )
    assert ran.read_text().split() == ["new"]
