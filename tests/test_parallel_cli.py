"""`polytask parallel`: its pure rules (_parallel_spec) and the command on real programs.

Most runs call ``main(argv)`` in this process (the jobs are real processes;
output is read back from file descriptors 1 and 2); the few that need stdin,
signals or a fresh interpreter run ``python -m polytask.cli`` as a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polytask import _parallel_spec as spec
from polytask._os.proc import usable_cpus
from polytask.cli._parallel import main

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(
    *argv: str, input: str | None = None, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *argv],
        input=input,
        text=True,
        timeout=timeout,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def peak(log: Path) -> int:
    running = top = 0
    for mark in log.read_text().split():
        running += 1 if mark == "+" else -1
        top = max(top, running)
    return top


# =========================================================================== pure rules


@pytest.mark.parametrize(
    ("mod", "value", "expected"),
    [
        ("", "dir/sub/file.tar.gz", "dir/sub/file.tar.gz"),
        (".", "dir/sub/file.tar.gz", "dir/sub/file.tar"),
        (".", "dir.d/file", "dir.d/file"),
        ("/", "dir/sub/file.tar.gz", "file.tar.gz"),
        ("//", "dir/sub/file.tar.gz", "dir/sub"),
        ("//", "file", "."),
        ("//", "/file", "/"),
        ("//", "a/b/", "a"),
        ("/.", "dir/sub/file.tar.gz", "file.tar"),
        ("/.", ".hidden", ""),
    ],
)
def test_replacement_modifiers(mod: str, value: str, expected: str) -> None:
    assert spec.replace_value(value, mod) == expected


def test_template_renders_every_replacement_string() -> None:
    t = spec.Template.parse(
        ["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", "{1}", "{2/}"]
    )
    assert not t.needs_shell and t.has_repl
    assert t.argv(("a/b.c", "x/y"), 7, 2) == [
        "echo", "a/b.c", "x/y", "a/b", "x/y", "b.c", "y", "a", "x", "b", "y", "7", "2", "a/b.c", "y",
    ]  # fmt: skip
    assert t.max_index() == 2


def test_parsed_records_are_immutable_values_that_pickle_and_copy() -> None:
    import copy
    import pickle

    t = spec.Template.parse(["echo", "{1}", "{#}"])
    halt = spec.HaltPolicy.parse("soon,fail=3")
    for record in (t, halt, spec.Repl("arg", 1, "."), *t.parts):
        for clone in (pickle.loads(pickle.dumps(record)), copy.copy(record), copy.deepcopy(record)):
            assert clone == record and hash(clone) == hash(record)
    with pytest.raises(AttributeError, match="immutable"):
        halt.when = "now"  # type: ignore[misc]


def test_template_appends_arguments_without_replacement_strings() -> None:
    t = spec.Template.parse(["gzip", "-k"])
    assert t.argv(("f 1",), 1, 1) == ["gzip", "-k", "f 1"]
    assert t.shell_text(("f 1",), 1, 1) == "gzip -k 'f 1'"


@pytest.mark.parametrize(
    ("command", "shell"),
    [
        (["echo", "{}"], False),
        (["gzip -9 {}"], False),
        (["echo {} | wc -c"], True),
        (["echo", "{}", ">", "out"], True),
        (["FOO=1 env"], True),
        (["cd", "/tmp"], True),
        (["echo $HOME"], True),
        (["ls", "*.txt"], True),
    ],
)
def test_shell_only_when_the_command_needs_one(command: list[str], shell: bool) -> None:
    assert spec.Template.parse(command).needs_shell is shell


@pytest.mark.parametrize(
    "name", ["x; rm -rf ~", "$(reboot)", "`reboot`", "a'b\"c", "-n", "new\nline"]
)
def test_arguments_are_quoted_for_the_shell(name: str) -> None:
    t = spec.Template.parse(["echo {} | cat"])
    text = t.shell_text((name,), 1, 1)
    out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30).stdout
    assert out == (name + "\n" if name != "-n" else "")  # echo -n: an option, not a shell word


def test_parse_jobs() -> None:
    assert spec.parse_jobs("4", 2) == 4
    assert spec.parse_jobs("50%", 2) == 1
    assert spec.parse_jobs("200%", 2) == 4
    assert spec.parse_jobs("+1", 2) == 3
    assert spec.parse_jobs("-1", 2) == 1
    assert spec.parse_jobs("-5", 2) == 1
    assert spec.parse_jobs("3", 2) == 3
    assert spec.parse_jobs("0", 2) is None
    for bad in ("abc", "", "-x", "0%", "1.5"):
        with pytest.raises(ValueError, match="not a number of jobs"):
            spec.parse_jobs(bad, 2)


def test_parse_duration() -> None:
    assert spec.parse_duration("30") == (30.0, False)
    assert spec.parse_duration("1.5") == (1.5, False)
    assert spec.parse_duration("1h30m") == (5400.0, False)
    assert spec.parse_duration("2d") == (172800.0, False)
    assert spec.parse_duration("200%") == (200.0, True)
    # Zero is accepted in every spelling (--timeout 0: no limit, as GNU parallel).
    for zero in ("0", "0.0", "0s", "0m", "00"):
        assert spec.parse_duration(zero) == (0.0, False)
    assert spec.parse_duration("0%") == (0.0, True)
    for bad in ("", "x", "-0", "-1", "1x", "m", "-0%", "-5%"):
        with pytest.raises(ValueError, match="not a duration"):
            spec.parse_duration(bad)


def test_halt_policy() -> None:
    h = spec.HaltPolicy.parse("now,fail=1")
    assert (h.when, h.what, h.count) == ("now", "fail", 1)
    assert not h.triggered(failed=0, succeeded=5, total=10)
    assert h.triggered(failed=1, succeeded=0, total=10)
    assert h.exit_status(failed=1, started=3, total=10, exitval=7, signal=0) == 7
    assert h.exit_status(failed=1, started=3, total=10, exitval=-1, signal=15) == 255
    s = spec.HaltPolicy.parse("soon,fail=3")
    assert not s.triggered(failed=2, succeeded=0, total=None)
    assert s.exit_status(failed=3, started=3, total=None, exitval=1, signal=0) == 3
    p = spec.HaltPolicy.parse("now,success=50%")
    assert p.triggered(failed=0, succeeded=2, total=4) and not p.triggered(
        failed=0, succeeded=1, total=4
    )
    assert spec.HaltPolicy.parse("2") == spec.HaltPolicy("now", "fail", 1)
    assert not spec.HaltPolicy.parse("never").active
    for bad in ("later,fail=1", "now,fail", "now,fail=0", "now,fail=150%", "now,oops=1"):
        with pytest.raises(ValueError, match="--halt"):
            spec.HaltPolicy.parse(bad)


def test_exit_status() -> None:
    assert [spec.exit_status(n) for n in (0, 1, 100, 101, 5000)] == [0, 1, 100, 101, 101]


def test_joblog_round_trip() -> None:
    line = spec.joblog_line(3, 1700000000.12345, 1.5, 0, 42, 2, 0, "echo 'a b'")
    assert line == "3\t:\t1700000000.123\t     1.500\t0\t42\t2\t0\techo 'a b'\n"
    entries = spec.parse_joblog(
        spec.JOBLOG_HEADER + line + spec.joblog_line(4, 1.0, 0, 0, 0, -1, 15, "x\ty")
    )
    assert entries[0] == spec.JoblogEntry(3, ":", 1700000000.123, 1.5, 0, 42, 2, 0, "echo 'a b'")
    assert entries[1].command == "x\ty" and entries[1].failed
    with pytest.raises(ValueError, match="line 2"):
        spec.parse_joblog(spec.JOBLOG_HEADER + "1\t:\tnot-a-time\n")


def test_resume_skip() -> None:
    e = [
        spec.JoblogEntry(1, ":", 0, 0, 0, 0, 0, 0, "a"),
        spec.JoblogEntry(2, ":", 0, 0, 0, 0, 1, 0, "b"),
        spec.JoblogEntry(3, ":", 0, 0, 0, 0, -1, 15, "c"),
        spec.JoblogEntry(2, ":", 0, 0, 0, 0, 0, 0, "b"),  # a later run of 2 succeeded
    ]
    assert spec.resume_skip(e, failed_too=False) == {1, 2, 3}
    assert spec.resume_skip(e, failed_too=True) == {1, 2}


def test_results_dir_escapes_each_argument() -> None:
    assert spec.results_dir("out/", ["a/b", "c"]) == "out/1/a\\_b/2/c"
    assert spec.results_dir("out", [".."]) == "out/1/\\.."
    assert spec.results_dir("out", [""]) == "out/1/\\"


def test_results_dir_shortens_long_names_without_collisions() -> None:
    long1, long2 = "a" * 300 + "1", "a" * 300 + "2"
    d1, d2 = spec.results_dir("out", [long1]), spec.results_dir("out", [long2])
    assert d1 != d2  # GNU parallel cuts both to the same 255 bytes
    for d in (d1, d2):
        name = d.split("/")[-1]
        assert len(name.encode()) <= 255
        assert name.startswith("a" * 200) and re.fullmatch(r"a+\\#[0-9a-f]{16}", name)
    assert spec.results_dir("out", [long1]) == d1  # the same input, the same place
    assert spec.results_dir("out", ["a" * 255]) == "out/1/" + "a" * 255  # fits: as it is
    # \# cannot come out of the escaping, so no input's own name can equal a shortened one.
    lookalike = d1.split("/")[-1]
    assert spec.results_dir("out", [lookalike]) != d1
    # Multi-byte characters are never cut in half; the limit is in bytes.
    name = spec.results_dir("out", ["é" * 200]).split("/")[-1]
    assert len(name.encode()) <= 255 and name.encode().decode("utf-8")
    name = spec.results_dir("out", ["x/" * 40], name_max=41).split("/")[-1]
    assert len(name) <= 41 and re.fullmatch(r".*\\#[0-9a-f]{16}", name)
    assert not name.split("\\#")[0].endswith("\\")  # not inside the pair \_


# =========================================================================== the command


def test_cartesian_product_in_order(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capfd, "-k", "-j", "3", "echo", "{1}-{2}", ":::", "a", "b", ":::", "1", "2", "3"
    )
    assert code == 0 and err == ""
    assert out.split() == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]


def test_arg_files_and_appended_arguments(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = tmp_path / "inputs"
    f.write_text("one\ntwo words\n")
    code, out, _ = run(capfd, "-k", "-q", "printf", "[%s]\\n", "::::", str(f))
    assert code == 0 and out == "[one]\n[two words]\n"
    code, out, _ = run(capfd, "-k", "-a", str(f), "echo", "{#}:{}")
    assert out == "1:one\n2:two words\n"


def test_replacement_strings_end_to_end(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "echo", "{},{.},{/},{//},{/.},{#},{%}", ":::", "d/s/f.tar.gz")
    assert out == "d/s/f.tar.gz,d/s/f.tar,f.tar.gz,d/s,f.tar,1,1\n"


def test_keep_order_and_grouping(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Each job writes three lines with pauses; grouped output keeps them together.
    # Job 1 ends first, whenever the jobs got to start: the others wait for its
    # flag, then 0.3 s or more (a loaded machine may start job 1 last).
    flag = tmp_path / "one"
    cmd = (
        f"echo {{}}a; sleep 0.1; echo {{}}b; if [ {{}} = 1 ]; then touch {flag}; "
        f"else while [ ! -e {flag} ]; do sleep 0.01; done; sleep 0.{{}}; fi; echo {{}}c"
    )
    code, out, _ = run(capfd, "-j", "3", cmd, ":::", "6", "1", "3")
    lines = out.split()
    assert sorted(lines) == sorted(f"{i}{c}" for i in "613" for c in "abc")
    for i in range(0, 9, 3):
        assert {line[0] for line in lines[i : i + 3]} == {lines[i][0]}  # one job's block
    assert lines[0] == "1a"  # without -k: the first to finish first
    flag.unlink()
    code, out, _ = run(capfd, "-k", "-j", "3", cmd, ":::", "6", "1", "3")
    assert out.split() == ["6a", "6b", "6c", "1a", "1b", "1c", "3a", "3b", "3c"]


def test_line_buffer_prints_lines_while_jobs_run(tmp_path: Path) -> None:
    out_file = tmp_path / "out"
    # The job waits until its own first line reached our stdout: only --line-buffer
    # gets it there while the job runs (grouped output would wait for the job's end).
    job = f"echo early; while ! grep -q early {out_file}; do sleep 0.01; done; echo done"
    with open(out_file, "w") as out:
        r = cli(
            "--line-buffer", "--timeout", "20", job, ":::", "x", stdout=out, stderr=subprocess.PIPE
        )
    assert r.returncode == 0, r.stderr
    assert out_file.read_text() == "early\ndone x\n"  # (the input is appended)
    with open(out_file, "w") as out:
        r = cli("--timeout", "2", job, ":::", "x", stdout=out, stderr=subprocess.PIPE)
    assert r.returncode == 1 and "timed out" in r.stderr


@pytest.mark.parametrize("mode", ["grouped", "--line-buffer"])
def test_jobs_spamming_both_pipes(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, mode: str
) -> None:
    spam = tmp_path / "spam.py"
    spam.write_text(
        "import sys\nline = sys.argv[1].encode() * 511 + b'\\n'\n"
        "for _ in range(2048):\n sys.stdout.buffer.write(line); sys.stderr.buffer.write(line)\n"
    )
    extra = [mode] if mode != "grouped" else []
    code, out, err = run(
        capfd, *extra, "-j", "2", "--timeout", "120", PY, str(spam), ":::", "a", "b"
    )
    assert code == 0
    for stream in (out, err):
        lines = stream.splitlines()
        assert len(lines) == 4096 and {len(line) for line in lines} == {511}
        assert sorted(set(lines)) == ["a" * 511, "b" * 511]  # whole lines, never torn
        if mode == "grouped":  # one job's output, then the other's
            assert lines[:2048] == [lines[0]] * 2048


def test_tag_results_dry_run(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capfd, "-k", "--tag", "echo", "x", ":::", "a", "b c")
    assert out == "a\tx a\nb c\tx b c\n"
    code, out, _ = run(capfd, "--dry-run", "echo {} | wc", ":::", "a b", "$(reboot)")
    assert out == "echo 'a b' | wc\necho '$(reboot)' | wc\n"
    res = tmp_path / "res"
    code, out, _ = run(
        capfd,
        "--results",
        str(res),
        "-q",
        "sh",
        "-c",
        "echo out $0; echo err $0 >&2",
        ":::",
        "p/q",
        "r",
    )
    assert code == 0 and out == ""
    assert (res / "1" / "p\\_q" / "stdout").read_text() == "out p/q\n"
    assert (res / "1" / "p\\_q" / "stderr").read_text() == "err p/q\n"
    assert (res / "1" / "r" / "seq").read_text() == "2"


def test_results_of_long_inputs_are_saved(tmp_path: Path) -> None:
    res = tmp_path / "res"
    inputs = ["a" * 300 + "1", "a" * 300 + "2", "b" * 5000, "short"]
    r = cli("--results", str(res), "echo", "out", ":::", *inputs)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    dirs = sorted((res / "1").iterdir())
    assert len(dirs) == 4
    saved = sorted((d / "stdout").read_text() for d in dirs)
    assert saved == sorted(f"out {i}\n" for i in inputs)
    assert sorted(int((d / "seq").read_text()) for d in dirs) == [1, 2, 3, 4]


def test_results_that_cannot_be_saved_are_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("-k", "--results", str(blocker / "res"), "echo", "out", ":::", "x", "y")
    # Not silent: each job says why, its output comes here instead, and it counts as failed.
    assert r.returncode == 2
    assert r.stdout == "out x\nout y\n"
    assert r.stderr.count("cannot save the results of job") == 2
    assert "Not a directory" in r.stderr


def test_exit_status_counts_failures(capfd: pytest.CaptureFixture[str]) -> None:
    assert run(capfd, "exit", ":::", "0", "0")[0] == 0
    assert run(capfd, "exit", ":::", "0", "1", "2", "0", "3")[0] == 3
    assert run(capfd, "-j", "4", "false", ":::", *map(str, range(102)))[0] == 101
    # A program that cannot start counts as failed, like a shell's 127.
    for jobs in ("1", "4"):  # spawn, and spawn_soon
        code, _, err = run(capfd, "-j", jobs, "no-such-program-polytask", ":::", "a", "b")
        assert code == 2 and err.count("no-such-program-polytask: command not found") == 2


@pytest.mark.parametrize("slow_start", [float("inf"), -1.0], ids=["here", "threads"])
def test_both_start_paths(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, slow_start: float
) -> None:
    # Programs start on the loop's thread while starts are quick; after a slow
    # one (here: every one) the next go to the starter threads. Either way each
    # job runs in a process group of its own and its output stays together.
    from polytask._os import childloop as _parallel_loop

    monkeypatch.setattr(_parallel_loop, "SLOW_START", slow_start)
    job = 'test "$(cut -d" " -f5 /proc/$$/stat)" = $$ && echo own {}; echo err {} >&2'
    code, out, err = run(capfd, "-j", "3", "-k", job, ":::", *map(str, range(120)))
    assert code == 0
    assert out == "".join(f"own {i}\n" for i in range(120))
    assert sorted(err.splitlines()) == sorted(f"err {i}" for i in range(120))
    code, _, err = run(capfd, "-j", "3", "no-such-program-polytask", ":::", *"abcd")
    assert code == 4 and err.count("no-such-program-polytask: command not found") == 4


def test_program_looked_up_once_per_run(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from polytask._os import childloop as _parallel_loop

    looked_up: list[str] = []
    real = _parallel_loop.which

    def which(name: str, path: str) -> str | None:
        looked_up.append(name)
        return real(name, path)

    monkeypatch.setattr(_parallel_loop, "which", which)
    assert run(capfd, "-j", "2", "true", ":::", *map(str, range(30)))[0] == 0
    assert looked_up == ["true"]


def test_job_started_but_not_watchable_is_ended(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # posix_spawn succeeded, then the loop could not watch the program (no
    # descriptor left for its pidfd): it is killed and reaped at once, its
    # files closed, and the job counts as failed; the others run.
    from polytask._os import childloop as _parallel_loop

    real = os.pidfd_open
    calls = [0]

    def pidfd_open(pid: int, flags: int = 0) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(24, "Too many open files")
        return real(pid, flags)

    monkeypatch.setattr(_parallel_loop.os, "pidfd_open", pidfd_open)
    code, out, err = run(capfd, "-j", "1", "-k", "echo", ":::", "a", "b", "c")
    assert code == 1
    assert out == "a\nc\n"
    assert "echo: Too many open files" in err


def test_many_short_jobs_none_lost(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    code, out, _ = run(
        capfd, "-j", "4", "--joblog", str(joblog), "echo", ":::", *map(str, range(300))
    )
    assert code == 0 and sorted(map(int, out.split())) == list(range(300))
    entries = spec.parse_joblog(joblog.read_text())
    assert sorted(e.seq for e in entries) == list(range(1, 301))
    assert all(e.exitval == 0 and e.receive == len(str(e.seq - 1)) + 1 for e in entries)


def test_jobs_limit_and_slots(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "log"
    slots = tmp_path / "slots"
    cmd = f"echo + >> {log}; echo {{%}} >> {slots}; sleep 0.2; echo - >> {log}"
    assert run(capfd, "-j", "2", cmd, ":::", *"abcdef")[0] == 0
    assert peak(log) == 2
    assert set(slots.read_text().split()) == {"1", "2"}
    log.unlink()
    slots.unlink()
    half = max(1, usable_cpus() // 2)
    assert run(capfd, "-j", "50%", cmd, ":::", *"abcd")[0] == 0
    assert 1 <= peak(log) <= half
    assert {int(s) for s in slots.read_text().split()} <= set(range(1, half + 1))


def test_timeout_kills_and_is_logged(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    t0 = time.monotonic()
    code, out, err = run(
        capfd, "--timeout", "1", "--joblog", str(joblog), "-k", "sleep", ":::", "60", "0"
    )
    assert time.monotonic() - t0 < 30
    assert code == 1 and "timed out" in err and "sleep 60" in err
    entries = {e.seq: e for e in spec.parse_joblog(joblog.read_text())}
    assert (entries[1].exitval, entries[1].signal) == (-1, 15)
    assert (entries[2].exitval, entries[2].signal) == (0, 0)


def test_retries(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    counter = tmp_path / "count"
    # Fails twice, then succeeds: the third try is the charm.
    cmd = f"echo x >> {counter}.{{}}; [ $(wc -l < {counter}.{{}}) -ge 3 ]"
    assert run(capfd, "--retries", "3", cmd, ":::", "a")[0] == 0
    assert Path(f"{counter}.a").read_text().count("x") == 3
    assert run(capfd, "--retries", "2", cmd, ":::", "b")[0] == 1
    assert Path(f"{counter}.b").read_text().count("x") == 2


def test_joblog_columns(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    before = time.time()
    code, _, _ = run(
        capfd,
        "--joblog",
        str(joblog),
        "-j",
        "1",
        "-q",
        "sh",
        "-c",
        'printf "%s" "$0"; exit $1',
        ":::",
        "hello",
        "xy z",
        ":::",
        "0",
        "3",
    )
    after = time.time()
    assert code == 2
    text = joblog.read_text()
    lines = text.splitlines()
    assert lines[0].split("\t") == [
        "Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command",
    ]  # fmt: skip
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 4
    expected = [("hello", "0"), ("hello", "3"), ("xy z", "0"), ("xy z", "3")]
    for i, (row, (word, status)) in enumerate(zip(rows, expected, strict=True), 1):
        seq, host, start, runtime, send, receive, exitval, sig, command = row
        assert int(seq) == i
        assert host == ":"
        assert before - 1 <= float(start) <= after and len(start.split(".")[1]) == 3
        assert len(runtime) == 10 and 0 <= float(runtime) < 30
        assert send == "0"
        assert int(receive) == len(word.encode())
        assert exitval == status and sig == "0"
        assert (
            command
            == f'sh -c \'printf "%s" "$0"; exit $1\' {word if " " not in word else repr(word)} {status}'
        )
    # and back through the parser, column by column
    parsed = spec.parse_joblog(text)
    assert [(e.seq, e.exitval, e.receive) for e in parsed] == [
        (1, 0, 5),
        (2, 3, 5),
        (3, 0, 4),
        (4, 3, 4),
    ]


def test_resume_and_resume_failed(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    ran = tmp_path / "ran"
    cmd = f"echo {{}} >> {ran}; exit $(( {{}} % 2 ))"
    assert run(capfd, "--joblog", str(joblog), cmd, ":::", "1", "2")[0] == 1
    assert sorted(ran.read_text().split()) == ["1", "2"]
    ran.unlink()
    # --resume: jobs 1 and 2 are in the log; only the new job 3 and 4 run.
    assert run(capfd, "--joblog", str(joblog), "--resume", cmd, ":::", "1", "2", "3", "4")[0] == 1
    assert sorted(ran.read_text().split()) == ["3", "4"]
    ran.unlink()
    # --resume-failed: the failed ones (1 and 3) run again, the others do not.
    assert (
        run(capfd, "--joblog", str(joblog), "--resume-failed", cmd, ":::", "1", "2", "3", "4")[0]
        == 2
    )
    assert sorted(ran.read_text().split()) == ["1", "3"]
    seqs = [e.seq for e in spec.parse_joblog(joblog.read_text())]
    assert seqs.count(1) == 2 and seqs.count(2) == 1 and joblog.read_text().count("Seq\t") == 1


def test_halt_now_kills_running_jobs(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    t0 = time.monotonic()
    code, _, err = run(
        capfd,
        "--halt",
        "now,fail=1",
        "-j",
        "2",
        f"echo {{}} >> {ran}; sleep {{}}; exit 4",
        ":::",
        "0.3",
        "60",
        "0",
        "0",
    )
    assert time.monotonic() - t0 < 30
    assert code == 4  # the failing job's own exit status, as GNU parallel
    assert err.count("\n") == 2 and "This job failed:" in err  # GNU parallel's lines, no more
    assert sorted(ran.read_text().split()) == ["0.3", "60"]  # nothing started after the halt


def test_halt_soon_waits_for_running_jobs(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = tmp_path / "done"
    cmd = f"sleep {{}}; echo {{}} >> {done}; exit 3"
    code, _, err = run(capfd, "--halt", "soon,fail=1", "-j", "2", cmd, ":::", "1", "0", "0", "0")
    assert code == 3 and "Waiting for 1 jobs" in err
    assert sorted(done.read_text().split()) == ["0", "1"]  # the running job finished


def test_injection_names_are_only_names(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("alive")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A fake `reboot` that leaves a mark: if it ever runs, the test sees it.
    (bin_dir / "reboot").write_text(f"#!/bin/sh\ntouch {tmp_path}/REBOOTED\n")
    (bin_dir / "reboot").chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    work = tmp_path / "work"
    work.mkdir()
    names = ["x; rm -rf ~", "$(reboot)", "`reboot`", "a'b", "&& reboot", "|reboot", "*"]
    for name in names:
        (work / name).write_text(name)
    monkeypatch.chdir(work)
    # Through a shell (the command has shell syntax) and with no shell at all.
    code, out, _ = run(capfd, "-k", "cat {} | cat", ":::", *names)
    assert code == 0 and out == "".join(names)
    code, out, _ = run(capfd, "-k", "cat", "--", ":::", *names)
    assert code == 0 and out == "".join(names)
    code, out, _ = run(capfd, "-k", "echo {/} {.} {//} > /dev/null; cat -- {}", ":::", *names)
    assert code == 0 and out == "".join(names)
    assert (home / "canary").read_text() == "alive"
    assert not (tmp_path / "REBOOTED").exists()
    assert sorted(os.listdir(work)) == sorted(names)


def test_no_shell_when_none_is_needed(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    show = tmp_path / "ppid.py"
    show.write_text("import os, sys\nprint(os.getppid(), sys.argv[1])")
    code, out, _ = run(capfd, PY, str(show), "{}", ":::", "a b")
    ppid, arg = out.split(" ", 1)
    assert int(ppid) == os.getpid() and arg == "a b\n"  # our child: no shell in between
    code, out, _ = run(capfd, PY, str(show), "{}", ";", "true", ":::", "x")
    assert int(out.split()[0]) != os.getpid()  # shell syntax: run by a shell
    code, out, _ = run(capfd, "-q", "sh", "-c", 'echo "$PPID"', ":::", "x")
    assert int(out) == os.getpid()  # -q: the words as they are, no shell of ours


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--bogus", "echo", ":::", "a"], "unrecognized arguments: --bogus"),
        (["-j", "abc", "echo", ":::", "a"], "-j 'abc'"),
        (["--timeout", "soon", "echo", ":::", "a"], "--timeout 'soon'"),
        (["--halt", "later", "echo", ":::", "a"], "--halt 'later'"),
        (["--retries=-1", "echo", ":::", "a"], "--retries -1"),
        (["--retries", "x", "echo", ":::", "a"], "invalid int value"),
        (["--colsep", "(", "echo", ":::", "a"], "--colsep '('"),
        (["--header", "2", "echo", ":::", "a"], "only --header :"),
        (["--arg-sep", "", "echo", ":::", "a"], "non-empty separator"),
        (["-d", "", "echo", ":::", "a"], "-d needs a delimiter"),
        (["echo", "::::"], "at least one file"),
        (["--resume", "echo", ":::", "a"], "need --joblog"),
    ],
)
def test_bad_options_exit_255_with_one_line(
    capfd: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    code, out, err = run(capfd, *argv)
    assert code == 255
    assert err.count("\n") == 1 and err.startswith("polytask parallel: error: ")
    assert text in err


def test_unreadable_input_file(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capfd, "echo", "::::", str(tmp_path / "missing"))
    assert code == 255 and "cannot read input file" in err and err.count("\n") == 1


def test_options_after_the_command_belong_to_it(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "-k", "-q", "printf", "%s-%s\\n", "--bar", ":::", "a")
    assert code == 0 and out == "--bar-a\n"


# =========================================================================== as a program


def test_stdin_inputs_and_exit_codes() -> None:
    r = cli("-k", "echo", "x{}y", input="a\nb c\n\n")
    assert r.returncode == 0 and r.stdout == "xay\nxb cy\nxy\n"
    r = cli("-k", input="echo one\necho two; exit 3\n")
    assert r.returncode == 1 and r.stdout == "one\ntwo\n"
    r = cli(input="")
    assert r.returncode == 0 and r.stdout == r.stderr == ""
    r = cli("--bar", "true", input="1\n2\n3\n")
    assert r.returncode == 0 and "3/3" in r.stderr


def test_help_imports_only_what_it_needs() -> None:
    code = (
        "import sys; from polytask.cli import main; code = main(['parallel', '--help']); "
        "heavy = ['rich', 'cloudpickle', 'polytask.backends.process.backend', 'numpy', 'psutil']; "
        "print(code, [m for m in heavy if m in sys.modules], file=sys.stderr)"
    )
    r = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert r.returncode == 0
    assert "--joblog" in r.stdout and "{/.}" in r.stdout
    assert r.stderr.strip() == "0 []"


def test_perl_expressions_are_refused_never_run(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # GNU parallel runs {= perl =}; handed to a shell it would run as a command.
    mark = tmp_path / "ran"
    for argv in (
        ["echo {= s:\\.[^.]+$:: =}; touch " + str(mark), ":::", "foo.tar.gz"],
        ["--rpl", "{..} s:\\.[^.]+$::", "touch " + str(mark), ":::", "a"],
        ["echo {=2 $_ =}; touch " + str(mark), ":::", "a", ":::", "b"],
    ):
        code, out, err = run(capfd, *argv)
        assert code == 255 and out == "" and "Perl" in err and err.count("\n") == 1
    assert not mark.exists()


def test_citation_options_are_accepted_silently(capfd: pytest.CaptureFixture[str]) -> None:
    assert run(capfd, "--will-cite", "--citation", "-k", "echo", ":::", "a") == (0, "a\n", "")


def test_job_variables(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Read by a program run without a shell too (the posix_spawn path), and
    # a nested run's PARALLEL_SEQ is not passed on as is.
    show = tmp_path / "env.py"
    show.write_text(
        "import os\nprint(*(os.environ.get(k) for k in "
        "('PARALLEL_SEQ', 'PARALLEL_JOBSLOT', 'PARALLEL_PID')))"
    )
    os.environ["PARALLEL_SEQ"] = "99"
    try:
        code, out, _ = run(capfd, "-j1", PY, str(show), ":::", "a", "b")
    finally:
        del os.environ["PARALLEL_SEQ"]
    assert code == 0 and out == f"1 1 {os.getpid()}\n2 1 {os.getpid()}\n"
    assert "PARALLEL_PID" not in os.environ  # set for the run only
    code, out, _ = run(capfd, "-j2", "-k", PY, str(show), "{#}", ":::", "a", "b")
    assert [line.split()[0] for line in out.splitlines()] == ["1", "2"]


def test_last_input_source(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "-k", "echo", "{-1}", "{-2/}", "{-3}", ":::", "a/x", ":::", "b")
    assert code == 0 and out == "b x\n"  # a source that does not exist: no word at all


def test_several_inputs_per_job(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "-k", "-n2", "echo", "{#}:", "{}", ":::", *"abcde")
    assert code == 0 and out == "1: a b\n2: c d\n3: e\n"
    code, out, _ = run(capfd, "-k", "-X", "-j1", "-q", "printf", "<%s>", "x{}", ":::", "a b", "c")
    assert code == 0 and out == "<xa b><xc>"
    # Below 0: one input a job, as GNU parallel (its jobs take inputs until they have
    # N or more); it was a usage error.
    code, out, err = run(capfd, "-k", "--max-args=-1", "echo", ":::", "a", "b")
    assert (code, out) == (0, "a\nb\n"), err
    code, out, err = run(capfd, "-n", "2x", "echo", ":::", "a")
    assert code == 255 and out == "" and "-n '2x': not a number" in err and "1k = 1000" in err
    r = cli("-k", "-N2", "echo", "{2}", "{1}", input="a\nb\nc\n")
    assert r.returncode == 0 and r.stdout == "b a\nc\n"


def test_delay_spaces_the_starts(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    joblog = tmp_path / "log"
    code, _, _ = run(capfd, "-j3", "--delay", "0.2", "--joblog", str(joblog), "true", ":::", *"abc")
    starts = sorted(e.starttime for e in spec.parse_joblog(joblog.read_text()))
    assert code == 0 and len(starts) == 3
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:], strict=False))
    code, _, err = run(capfd, "--delay", "soon", "true", ":::", "a")
    assert code == 255 and "--delay 'soon'" in err


def test_delay_in_percent_is_a_usage_error(capfd: pytest.CaptureFixture[str]) -> None:
    # N% is --timeout's (a share of the median runtime); GNU parallel's --delay takes
    # a duration only. `--delay 1%` was taken for 1 s.
    code, out, err = run(capfd, "--delay", "1%", "echo", ":::", "a")
    assert code == 255 and out == ""
    assert "--delay '1%'" in err and "percent" in err and "seconds" in err, err
    # With --pipe too (it was a traceback there, as was any bad --delay).
    for bad in ("5%", "xyz"):
        code, out, err = run(capfd, "--pipe", "--delay", bad, "cat", ":::", "a")
        assert code == 255 and out == "" and f"--delay '{bad}'" in err, err
        assert "Traceback" not in err
    assert "% of the median" not in err  # the --timeout form is not offered for --delay
    with pytest.raises(ValueError, match="percent"):
        spec.parse_duration("50%", option="--delay", percent=False)
    with pytest.raises(ValueError, match="not a duration") as info:
        spec.parse_duration("soon", option="--delay", percent=False)
    assert "%" not in str(info.value)


def test_a_count_or_size_past_a_float_is_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    # A count of 10**400 is float("inf") on the way: int() of it raised OverflowError.
    # GNU parallel puts every input in the job; a --block that large is refused.
    huge = "1" + "0" * 400
    for option in ("-n", "-N", "-L", "-l"):
        code, out, err = run(capfd, "-k", option, huge, "echo", ":::", "a", "b")
        assert (code, out) == (0, "a b\n"), (option, err)
    r = cli("--pipe", "--block", huge, "cat", input="a\n")
    assert r.returncode == 255 and r.stdout == "" and "too big" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
