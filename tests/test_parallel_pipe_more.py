"""`polytask parallel` --roundrobin, --tee, --fifo, --group-by and --csv (issue 15).

Side by side with GNU parallel (20221122) where its output is certain: exactly
under ``-k``, else the parts that do not depend on timing (sorted lines,
sums, the number of jobs). What GNU parallel cannot show is checked alone:
--tee streams (a job sees input before stdin ends), --fifo never hangs on a
job that does not open its FIFO and leaves no FIFO behind (also after
SIGTERM), and CSV fields are only ever data.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import apt_install
from polytask._parallel_spec import (
    GroupMarker,
    PipeSplitter,
    csv_fields,
    csv_join,
    group_by_column,
)
from test_parallel_gnu import gnu_parallel, same_err
from test_parallel_pipe import PT, SEQ30, both_stdin
from test_parallel_quoting import HOSTILE

__all__ = ["gnu_parallel"]  # the fixture, imported to be used here

SEQ1000 = "".join(f"{i}\n" for i in range(1, 1001))


def pt(
    argv: list[str],
    data: str | bytes = "",
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*PT, *argv],
        input=data.encode() if isinstance(data, str) else data,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


# --------------------------------------------------------------------------- --roundrobin


def jobs_and_lines(out: str) -> dict[int, int]:
    """``echo "$PARALLEL_SEQ $(wc -l)"`` lines: job number -> records it got."""
    got: dict[int, int] = {}
    for line in out.splitlines():
        seq, n = line.split()
        got[int(seq)] = int(n)
    return got


@pytest.mark.parametrize(
    ("jobs", "block", "data", "expected_jobs"),
    [
        ("3", "1k", SEQ1000, 3),  # many blocks: -j jobs, started once
        ("2", "3", "".join(f"{i}\n" for i in range(1, 11)), 2),
        ("5", "1M", SEQ30, 1),  # one block: one job
    ],
)
def test_roundrobin_starts_j_jobs_and_loses_no_record(
    gnu_parallel: str, tmp_path: Path, jobs: str, block: str, data: str, expected_jobs: int
) -> None:
    argv = ["--pipe", "--roundrobin", "-j", jobs, "--block", block, 'echo "$PARALLEL_SEQ $(wc -l)"']
    g, p = both_stdin(gnu_parallel, tmp_path, argv, data)
    assert p.rc == g.rc == 0, (g.err, p.err)
    gj, pj = jobs_and_lines(g.out), jobs_and_lines(p.out)
    assert sorted(pj) == sorted(gj) == list(range(1, expected_jobs + 1))
    assert sum(pj.values()) == sum(gj.values()) == data.count("\n")
    same_err(g, p)


def test_roundrobin_gives_whole_records(gnu_parallel: str, tmp_path: Path) -> None:
    # Every record arrives whole, each exactly once (the order between jobs is free).
    data = "".join(f"record-{i:04d}-{'x' * (i % 37)}\n" for i in range(3000))
    g, p = both_stdin(
        gnu_parallel, tmp_path, ["--pipe", "--roundrobin", "-j2", "--block", "2k", "cat"], data
    )
    assert p.rc == g.rc == 0
    assert sorted(p.out.splitlines()) == sorted(g.out.splitlines()) == sorted(data.splitlines())


def test_roundrobin_gives_the_header_once_per_job(gnu_parallel: str, tmp_path: Path) -> None:
    data = "head\n" + SEQ30
    argv = ["--pipe", "--roundrobin", "-j2", "--block", "6", "--header", "1", "echo ==; cat"]
    g, p = both_stdin(gnu_parallel, tmp_path, argv, data)
    assert p.rc == g.rc == 0
    for run in (g, p):
        jobs = run.out.split("==\n")[1:]
        assert len(jobs) == 2
        assert all(j.startswith("head\n") and j.count("head") == 1 for j in jobs)
    assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())


def test_roundrobin_with_n_records_and_an_empty_input(gnu_parallel: str, tmp_path: Path) -> None:
    argv = ["--pipe", "--roundrobin", "-j2", "-N7", "wc -l"]
    g, p = both_stdin(gnu_parallel, tmp_path, argv, SEQ30)
    assert p.rc == g.rc == 0
    assert sum(map(int, p.out.split())) == sum(map(int, g.out.split())) == 30
    g, p = both_stdin(gnu_parallel, tmp_path, ["--pipe", "--roundrobin", "-j2", "wc -l"], "")
    assert (p.out, p.rc) == (g.out, g.rc)


def test_roundrobin_job_that_ends_early_does_not_hang(tmp_path: Path) -> None:
    # One job reads one line and exits: the other takes the rest; nothing waits forever.
    r = pt(
        ["--pipe", "--roundrobin", "-j2", "--block", "1k", "head -n1 >/dev/null; echo done"],
        SEQ1000 * 20,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["done", "done"]


# --------------------------------------------------------------------------- --tee


@pytest.mark.parametrize(
    "argv",
    [
        ["--pipe", "--tee", "--tag", "-k", "grep {} | wc -l", ":::", "1", "2", "3"],
        ["--pipe", "--tee", "-k", "-v", "wc", ":::", "-w", "-l", "-c"],
        ["--pipe", "--tee", "-k", "-v", "wc {}", ":::", "-w", "-l", "-c"],
        ["--pipe", "--tee", "--tag", "-k", "grep {1} | wc {2}", ":::", "0", "5", ":::", "-l", "-c"],
        ["--pipe", "--tee", "-k", "-j0", "head -n2; echo {}", ":::", "a", "b"],
    ],
)
def test_tee_same_as_gnu(gnu_parallel: str, tmp_path: Path, argv: list[str]) -> None:
    g, p = both_stdin(gnu_parallel, tmp_path, argv, SEQ1000)
    assert p.rc == g.rc == 0, (g.err, p.err)
    assert p.out == g.out
    same_err(g, p)


def test_tee_every_job_gets_all_of_a_big_input(tmp_path: Path) -> None:
    data = SEQ1000 * 3000  # ~11 MB: many chunks, jobs at different speeds
    cmd = "case {} in c) cat;; s) sort -n;; esac | md5sum"
    r = pt(["--pipe", "--tee", "-k", "--tag", cmd, ":::", "c", "s"], data)
    assert r.returncode == 0, r.stderr
    import hashlib

    plain = hashlib.md5(data.encode()).hexdigest()
    ordered = hashlib.md5("".join(sorted(data.splitlines(True), key=int)).encode()).hexdigest()
    assert r.stdout.decode().split() == ["c", plain, "-", "s", ordered, "-"]


def test_tee_streams_as_stdin_arrives(tmp_path: Path) -> None:
    # Each job echoes a line as soon as it reads it: both echo the first line while
    # stdin is still open, so nothing waited for the whole input.
    proc = subprocess.Popen(
        [
            *PT,
            "--pipe",
            "--tee",
            "--lb",
            "--tag",
            "while read x; do echo $x; done",
            ":::",
            "a",
            "b",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"\n") < 2 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                got += chunk
        assert sorted(got.splitlines()) == [b"a\tfirst", b"b\tfirst"]
        proc.stdin.write(b"second\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        assert sorted(rest.splitlines()) == [b"a\tsecond", b"b\tsecond"]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_tee_memory_stays_bounded() -> None:
    """100 MB through --tee to two jobs: the parent holds one chunk, not the input."""
    mb = 1 << 20
    total = 100 * mb
    feeder = subprocess.Popen(
        ["sh", "-c", f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {total}"],
        stdout=subprocess.PIPE,
    )
    assert feeder.stdout is not None
    try:
        proc = subprocess.Popen(
            [*PT, "--pipe", "--tee", "-k", "wc -c", ":::", "a", "b"],
            stdin=feeder.stdout,
            stdout=subprocess.PIPE,
        )
        feeder.stdout.close()
        assert proc.stdout is not None
        peak = 0
        out = b""
        # The runner's own high-water mark (VmHWM only grows), read while it runs.
        while True:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                break
            if select.select([proc.stdout], [], [], 0.05)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        out += proc.stdout.read()
        proc.stdout.close()
        assert proc.wait(timeout=120) == 0
    finally:
        feeder.wait(timeout=60)
    assert [int(x) for x in out.split()] == [total, total]
    assert 0 < peak < 60 * mb, f"peak RSS {peak / mb:.0f} MB for {total / mb:.0f} MB of input"


def test_tee_a_job_that_stops_reading_does_not_stop_the_others(tmp_path: Path) -> None:
    r = pt(
        ["--pipe", "--tee", "-k", "--tag", "case {} in t) true;; w) wc -l;; h) head -n1;; esac"]
        + [":::", "t", "w", "h"],
        SEQ1000 * 100,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "w\t100000\nh\t1\n"


# --------------------------------------------------------------------------- --fifo


@pytest.mark.parametrize(
    "argv",
    [
        ["--pipe", "--fifo", "--block", "10", "-k", "wc -l < {}"],
        ["--pipe", "--fifo", "-N4", "-k", "cat {}; echo --"],
        ["--pipe", "--fifo", "--block", "10", "-k", "sort -rn"],  # {} appended, stdin empty
    ],
)
def test_fifo_same_as_gnu(gnu_parallel: str, tmp_path: Path, argv: list[str]) -> None:
    if argv[-1] == "sort -rn":
        argv = [*argv[:-1], "sort -rn <"]
    g, p = both_stdin(gnu_parallel, tmp_path, argv, SEQ30)
    assert p.rc == g.rc == 0, (g.err, p.err)
    assert p.out == g.out
    same_err(g, p)


def test_fifo_with_pipepart(gnu_parallel: str, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text(SEQ1000)
    argv = ["--pipepart", "-a", str(big), "--block", "500", "--fifo", "-k", "wc -l < {}"]
    g, p = both_stdin(gnu_parallel, tmp_path, argv, "")
    assert (p.out, p.rc) == (g.out, g.rc)


def private_tmp(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return tmp, dict(os.environ, TMPDIR=str(tmp))


def test_fifo_never_hangs_on_a_job_that_does_not_open_it(tmp_path: Path) -> None:
    tmp, env = private_tmp(tmp_path)
    r = pt(["--pipe", "--fifo", "--block", "100", "-j2", "true"], SEQ1000 * 10, env=env)
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []  # every FIFO and their directory gone
    # A job that reads part of it and exits; one that opens it and closes it at once.
    r = pt(["--pipe", "--fifo", "-k", "head -n1 {}"], SEQ1000 * 100, env=env)
    assert (r.returncode, r.stdout) == (0, b"1\n"), r.stderr
    r = pt(
        ["--pipe", "--fifo", "--block", "1k", "-k", "exec 3<{}; exec 3<&-; echo ok"],
        SEQ1000,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {b"ok"}
    assert list(tmp.iterdir()) == []


def test_fifo_is_private(tmp_path: Path) -> None:
    tmp, env = private_tmp(tmp_path)
    r = pt(
        ["--pipe", "--fifo", "-k", 'stat -c "%a %F" {} "$(dirname {})"; cat {} >/dev/null'],
        SEQ30,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["600 fifo", "700 directory"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_fifo_removed_when_ended_by_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    tmp, env = private_tmp(tmp_path)
    env["PARALLEL_SHELL"] = shutil.which("bash") or "/bin/sh"
    proc = subprocess.Popen(
        [*PT, "--pipe", "--fifo", "--block", "10", "-j2", "sleep 60 < {}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(SEQ30.encode())
        proc.stdin.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the jobs' FIFOs
            fifos = [p for d in tmp.iterdir() for p in d.iterdir()] if any(tmp.iterdir()) else []
            if len(fifos) == 2:
                break
            time.sleep(0.05)
        assert len(fifos) == 2
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 255
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert list(tmp.iterdir()) == []


def test_fifo_unlinked_by_the_guardian_when_killed(tmp_path: Path) -> None:
    tmp, env = private_tmp(tmp_path)
    proc = subprocess.Popen(
        [*PT, "--pipe", "--fifo", "--block", "10", "-j2", "sleep 60 < {}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(SEQ30.encode())
    proc.stdin.close()

    def fifos() -> list[Path]:
        return [p for d in tmp.iterdir() for p in d.iterdir()]

    deadline = time.monotonic() + 60
    while len(fifos()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fifos()) == 2
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while fifos() and time.monotonic() < deadline:  # the guardian's clean-up
        time.sleep(0.05)
    assert fifos() == []


# --------------------------------------------------------------------------- --group-by

TABLE = "UserID,Consumption\n123,1\n123,2\n12-3,1\n221,3\n221,1\n2/21,5\n"


@pytest.mark.parametrize(
    ("argv", "data"),
    [
        (["--colsep", ",", "--group-by", "1", "-kN1", "wc"], TABLE.split("\n", 1)[1]),
        (["--colsep", ",", "--header", ":", "--group-by", "UserID", "-kN1", "wc"], TABLE),
        (["--colsep", ",", "--group-by", "UserID", "-kN1", "cat; echo --"], TABLE),
        (["--colsep", ",", "--group-by", "1", "-kN2", "cat; echo --"], TABLE.split("\n", 1)[1]),
        (["--colsep", ",", "--group-by", "2", "-kN1", "cat; echo --"], TABLE),
        (["--group-by", "1", "-kN1", "cat; echo --"], "a\t1\na\t2\nb\t3\n\na\t4\n"),
        (["--colsep", ";", "--group-by", "2", "-kN1", "cat; echo --"], "x;k;1\ny;k;2\nz;j\n"),
    ],
)
def test_group_by_same_as_gnu(
    gnu_parallel: str, tmp_path: Path, argv: list[str], data: str
) -> None:
    g, p = both_stdin(gnu_parallel, tmp_path, ["--pipe", *argv], data)
    assert p.rc == g.rc == 0, (g.err, p.err)
    assert p.out == g.out
    same_err(g, p)


def test_group_by_a_number_with_a_header() -> None:
    # GNU parallel 20221122 leaks its record separator into the header here
    # ("JyWj...k,v"); polytask gives the header as --header : does elsewhere.
    r = pt(
        ["--pipe", "--colsep", ",", "--header", ":", "--group-by", "1", "-kN1", "cat; echo --"],
        "k,v\n1,a\n1,b\n2,c\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "k,v\n1,a\n1,b\n--\nk,v\n2,c\n--\n"


def test_group_by_keeps_a_group_whole_across_blocks() -> None:
    data = "".join(f"{k}\t{i}\n" for k in range(20) for i in range(200))
    r = pt(["--pipe", "--group-by", "1", "--block", "1k", "-k", "cut -f1 | uniq -c | wc -l"], data)
    assert r.returncode == 0, r.stderr
    # every job's lines are whole groups: 20 groups over the jobs, none split
    counts = [int(x) for x in r.stdout.split()]
    assert sum(counts) == 20


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--group-by", "UserID s/\\D//g"], "Perl expression"),
        (["--group-by", "$_ = 1"], "Perl expression"),
        (["--group-by", "0"], "numbered from 1"),
        (["--group-by", "Nope"], "no such column"),
        (["--group-by", "1", "--recend", ";"], "--recend"),
        (["--group-by", "1", "--header", "2"], "first line"),
    ],
)
def test_group_by_refusals_exit_255(argv: list[str], why: str) -> None:
    r = pt(["--pipe", "--colsep", ",", *argv, "cat"], TABLE)
    assert r.returncode == 255, r.stderr
    assert why in r.stderr.decode()
    assert r.stdout == b""


# --------------------------------------------------------------------------- --csv


@pytest.fixture(scope="session")
def gnu_csv(gnu_parallel: str) -> str | None:
    """GNU parallel able to run --csv (perl's Text::CSV, installed if missing), else None."""

    def has() -> bool:
        return subprocess.run(["perl", "-MText::CSV", "-e1"], capture_output=True).returncode == 0

    if not has():
        apt_install("libtext-csv-perl")
    return gnu_parallel if has() else None


CSV_CASES: list[tuple[list[str], str, str]] = [
    (
        ["--csv", "echo", "{1}", "of", "{2}", "at", "{3}"],
        '"1 big, 2 small","2""x4"" plank",12.34\n',
        '1 big, 2 small of 2"x4" plank at 12.34\n',
    ),
    (
        ["--csv", "--colsep", ";", "echo", "Field 1: {1} Field 2: {2}"],
        '"Start of field 1 with newline\nLine 2 in field 1";value 2\n',
        "Field 1: Start of field 1 with newline\nLine 2 in field 1 Field 2: value 2\n",
    ),
    (
        ["--csv", "-k", "echo", "[{1}]", "[{2}]", "[{3}]"],
        "a, b ,c\n,,\nx\n",
        "[a] [ b ] [c]\n[] [] []\n[x] [] []\n",
    ),
    (
        ["--csv", "--header", ":", "-k", "echo", "{h2}", "{h1}"],
        'h1,h2\n1,2\n"a,b",c\n',
        "2 1\nc a,b\n",
    ),
    (["--csv", "-k", "echo", "{2}-{1}"], 'p,"q\n\nr"\ns,t\n', "q\n\nr-p\nt-s\n"),
]


@pytest.mark.parametrize(
    ("argv", "data", "expected"), CSV_CASES, ids=[c[1][:20] for c in CSV_CASES]
)
def test_csv_same_as_gnu(
    gnu_csv: str | None, tmp_path: Path, argv: list[str], data: str, expected: str
) -> None:
    r = pt(argv, data)
    assert (r.stdout.decode(), r.returncode) == (expected, 0), r.stderr
    if gnu_csv is None:  # compared with what GNU parallel prints (checked by hand)
        return
    g, p = both_stdin(gnu_csv, tmp_path, argv, data)
    assert (p.out, p.rc) == (g.out, g.rc) == (expected, 0), (g.err, p.err)


def test_csv_from_arguments_and_files(gnu_csv: str | None, tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_text('1,"two\nlines"\n3,4\n')
    argv = ["--csv", "-k", "echo", "{1}:{2}", "{3}:{4}", "::::", str(f), ":::", 'x,"y,z"']
    r = pt(argv)
    expected = "1:two\nlines x:y,z\n3:4 x:y,z\n"
    assert (r.stdout.decode(), r.returncode) == (expected, 0), r.stderr
    if gnu_csv is not None:
        g, p = both_stdin(gnu_csv, tmp_path, argv, "")
        assert (p.out, p.rc) == (g.out, g.rc) == (expected, 0), (g.err, p.err)


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_csv_hostile_fields_are_data(tmp_path: Path, shell: str) -> None:
    # Quotes, $(), backticks and newlines inside quoted fields: each field comes back
    # byte for byte, and nothing of it ran (no file in the job's directory).
    if not shutil.which(shell):
        pytest.skip(f"no {shell}")
    values = [v.decode() for v in HOSTILE if b"\r" not in v] + ['a"b', "x,y", "two\nlines", '""']

    def q(v: str) -> str:
        return '"' + v.replace('"', '""') + '"'

    data = "".join(f"{q(v)},{q(v[::-1])}\n" for v in values)
    work = tmp_path / "w"
    work.mkdir()
    env = dict(os.environ, PARALLEL_SHELL=shutil.which(shell) or shell)
    r = pt(
        ["--csv", "-k", "-j2", "printf '%s\\0%s\\0' {1} \"$(printf '%s' {2})\""],
        data,
        cwd=work,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert os.listdir(work) == [], "a CSV field was run as shell code"
    out = r.stdout.decode().split("\0")[:-1]
    assert out == [w for v in values for w in (v, v[::-1].rstrip("\n"))]


# --------------------------------------------------------------------------- bad combinations


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--roundrobin", "cat"], "--roundrobin goes with --pipe"),
        (["--tee", "echo", ":::", "a"], "--tee goes with --pipe"),
        (["--fifo", "cat"], "--fifo goes with --pipe"),
        (["--group-by", "1", "cat"], "--group-by goes with --pipe"),
        (["--pipe", "--tee", "cat"], "--tee needs ::: ARGS"),
        (["--pipe", "--tee", "-j1", "cat", ":::", "a", "b"], "-j 2 or -j 0"),
        (["--pipe", "--tee", "--roundrobin", "cat", ":::", "a"], "does not go with"),
        (["--pipe", "--fifo", "--cat", "cat"], "does not go with"),
        (["--pipe", "--csv", "cat"], "--csv does not go with --pipe"),
        (["--csv", "--colsep", "::", "echo"], "one character"),
    ],
)
def test_bad_combinations_exit_255(tmp_path: Path, argv: list[str], why: str) -> None:
    r = pt(argv, "a\n", cwd=tmp_path)
    assert r.returncode == 255, r.stderr
    assert why in r.stderr.decode()
    assert r.stdout == b""


def test_group_by_and_roundrobin_refuse_pipepart(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text(SEQ30)
    for opt in (["--group-by", "1"], ["--roundrobin"], ["--tee"]):
        r = pt(["--pipepart", "-a", str(f), *opt, "cat", ":::", "a"], cwd=tmp_path)
        assert r.returncode == 255
        assert "not --pipepart" in r.stderr.decode()


# --------------------------------------------------------------------------- pure helpers


def test_group_marker_marks_each_change_of_key() -> None:
    g = GroupMarker(1, ",", b"#M#", header=False)
    out = g.feed(b"a,1\na,2\nb") + g.feed(b",3\na,4") + g.feed(b"")
    assert out == b"#M#a,1\na,2\n#M#b,3\n#M#a,4"
    # cut as GNU parallel does: a record starts at each marker, no record end
    split = PipeSplitter(block=1 << 20, recstart=b"#M#", recend=b"", records=1)
    split.feed(out)
    split.feed(b"")
    assert [bytes(b).replace(b"#M#", b"") for b in split.ready] == [b"a,1\na,2\n", b"b,3\n", b"a,4"]


def test_group_marker_header_and_names() -> None:
    g = GroupMarker("v", ",", b"#", header=False)  # a name: the first line is the header
    assert g.feed(b"k,v\n1,x\n2,x\n3,y\n") == b"#1,x\n2,x\n#3,y\n"
    assert g.header == b"k,v\n"
    g = GroupMarker("nope", ",", b"#", header=False)
    with pytest.raises(ValueError, match="no such column"):
        g.feed(b"k,v\n1,2\n")


def test_group_by_column_refuses_perl() -> None:
    assert group_by_column("3") == 3
    assert group_by_column(" UserID ") == "UserID"
    for bad in ("UserID s/\\D//g", "$_%3", "-1", "0"):
        with pytest.raises(ValueError):
            group_by_column(bad)


def test_csv_join_and_fields() -> None:
    lines = ['a,"b', 'c",d', "e,f", '"unterminated']
    assert csv_join(lines) == ['a,"b\nc",d', "e,f", '"unterminated']
    assert csv_fields('a,"b\nc",d', ",") == ["a", "b\nc", "d"]
    assert csv_fields('"x""y",,"$(z)"', ",") == ['x"y', "", "$(z)"]
    assert csv_fields("", ",") == [""]
    assert csv_fields("a; b", ";") == ["a", " b"]
