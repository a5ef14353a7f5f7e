"""`polytask parallel --pipe` / `--pipepart` side by side with GNU parallel (20221122).

Each case gives both the same command line and the same stdin (a file, so
that GNU parallel's reads are the same every run) in fresh directories, and
compares stdout (exactly under ``-k`` or ``-j1``, else as sorted lines), the
exit status and stderr (``parallel:`` read as ``polytask parallel:``). The
blocks must be GNU parallel's own: ``-k 'cat; echo --'`` shows where each
one was cut. Plus what GNU parallel cannot show: the parent's memory stays
bounded however much goes through it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_parallel_gnu import Run, _env, gnu_parallel, same_err

__all__ = ["gnu_parallel"]  # the fixture, imported to be used here

PY = sys.executable
PT = [PY, "-m", "polytask.cli", "parallel"]

SEQ30 = "".join(f"{i}\n" for i in range(1, 31))
LONG = "".join(f"{i:03d}-{'x' * 20}\n" for i in range(1, 9))  # records longer than --block 10
FASTA = ">a\nAC\nGT\n>b\nTT\n>c\nGGGG\nCC\n>d\nA\n"


def both_stdin(gnu: str, tmp_path: Path, argv: list[str], data: str | bytes) -> tuple[Run, Run]:
    """Run ``argv`` under GNU parallel and polytask with ``data`` as stdin (from a file)."""
    home = tmp_path / "parallel-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "will-cite").touch()
    stdin = tmp_path / "stdin"
    stdin.write_bytes(data.encode() if isinstance(data, str) else data)
    runs = []
    for name, prog in (("gnu", [gnu]), ("pt", PT)):
        cwd = tmp_path / name
        cwd.mkdir(exist_ok=True)
        with open(stdin, "rb") as f:
            r = subprocess.run(
                [*prog, *argv],
                stdin=f,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=cwd,
                env=_env(home, None),
            )
        runs.append(Run(r, cwd))
    return runs[0], runs[1]


# (argv, stdin, how to compare stdout: "exact" | "sorted")
CASES: list[tuple[list[str], str, str]] = [
    # the default block (1M): about 2.3 MB of lines, three blocks
    (["--pipe", "-k", "wc", "-l"], "".join(f"{i}\n" for i in range(1, 350001)), "exact"),
    (["--pipe", "--block", "10", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "--block", "1k", "wc", "-l"], "".join(f"{i}\n" for i in range(1, 1001)), "sorted"),
    (["--spreadstdin", "--block", "25", "-k", "-j3", "cat; echo --"], SEQ30, "exact"),
    # records longer than the block: the block grows (and says so on stderr)
    (["--pipe", "--block", "10", "-k", "cat; echo --"], LONG, "exact"),
    (["--pipe", "--block", "1", "-k", "cat; echo --"], "a\nbb\nccc\n", "exact"),
    # no newline at the end; empty stdin runs no job
    (["--pipe", "--block", "2", "-k", "cat; echo --"], "a\nb\nc", "exact"),
    (["--pipe", "-k", "cat; echo --"], "", "exact"),
    (["--pipe", "-k", "wc", "-c"], "", "exact"),
    # --recend / --recstart, escapes as GNU reads them
    (["--pipe", "--block", "5", "--recend", ";", "-k", "cat; echo"], "a;bb;ccc;dddd;e", "exact"),
    (["--pipe", "--block", "8", "--recstart", ">", "-k", "cat; echo --"], FASTA, "exact"),
    (
        ["--pipe", "--block", "8", "--recstart", ">", "--recend", "\\n", "-k", "cat; echo --"],
        FASTA,
        "exact",
    ),
    (["--pipe", "--block", "4", "--recend", "\\t", "-k", "cat; echo"], "a\tb\tc\td\te\t", "exact"),
    (["--pipe", "--block", "7", "--recend", "", "-k", "cat; echo"], "abcdefghijklmnop", "exact"),
    # --regexp
    (
        ["--pipe", "--regexp", "--block", "6", "--recend", "[;,]", "-k", "cat; echo"],
        "a;bb,ccc;dd,e;ff",
        "exact",
    ),
    (
        ["--pipe", "--regexp", "--recstart", ">[ab]", "--block", "5", "-k", "cat; echo --"],
        ">a1\n>c2\n>b3\n>a4\n>d5\n",
        "exact",
    ),
    (
        ["--pipe", "--regexp", "-N2", "--recstart", ">", "--recend", "\n", "-k", "cat; echo --"],
        FASTA,
        "exact",
    ),
    # -N records per job, -L lines per record
    (["--pipe", "-N3", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "-N4", "--block", "5", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "-N1", "--recstart", ">", "-k", "cat; echo --"], FASTA, "exact"),
    (["--pipe", "-N2", "--recend", ";", "-k", "cat; echo"], "a;b;c;d;e;", "exact"),
    (["--pipe", "-L3", "--block", "10", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "-L2", "-N2", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "-L", "0.003k", "--block", "10", "-k", "cat; echo --"], SEQ30, "exact"),
    (["--pipe", "-N", "0.004k", "-k", "cat; echo --"], SEQ30, "exact"),
    # --header: N lines, or a regex, repeated to every job
    (["--pipe", "--header", "1", "--block", "10", "-k", "cat; echo --"], "h\n" + SEQ30, "exact"),
    (
        ["--pipe", "--header", "2", "--block", "12", "-k", "cat; echo --"],
        "h1\nh2\n" + SEQ30,
        "exact",
    ),
    (["--pipe", "--header", ".*\n", "--block", "10", "-k", "cat; echo --"], "h\n" + SEQ30, "exact"),
    (["--pipe", "--header", ":", "-N5", "-k", "cat; echo --"], "id\n" + SEQ30, "exact"),
    (["--pipe", "--header", "1", "-k", "cat; echo --"], "only a header\n", "exact"),
    # -r: blank lines dropped
    (["--pipe", "-r", "--block", "3", "-k", "cat; echo --"], "a\n\n  \nb\n\nc\n", "exact"),
    (["--pipe", "-r", "-N2", "-k", "cat; echo --"], "\n\na\n \nb\nc\n\n", "exact"),
    # replacement strings, --tag, -q, the job's variables
    (["--pipe", "-j1", "--block", "10", "-k", "echo {#} {%} x{}y; wc -l"], SEQ30, "exact"),
    (["--pipe", "--block", "10", "-k", "echo $PARALLEL_SEQ; cat"], SEQ30, "exact"),
    (["--pipe", "--tag", "--block", "10", "-k", "cat"], SEQ30, "exact"),
    (["--pipe", "-q", "--block", "10", "-k", "sh", "-c", 'cat; echo "$0"', "a b"], SEQ30, "exact"),
    # an input is only ever data: shell syntax in stdin stays on stdin
    (["--pipe", "-k", "--block", "8", "cat"], "$(touch X)\n`touch Y`\n;touch Z\n", "exact"),
    # a job that reads part of its block, or none; output grouping and its options
    (["--pipe", "--block", "10", "-k", "head -n1"], SEQ30, "exact"),
    (["--pipe", "--block", "20", "-j4", "wc -l"], SEQ30 * 3, "sorted"),
    (["--pipe", "--block", "10", "-k", "--lb", "cat"], SEQ30, "exact"),
    (["--pipe", "--block", "10", "-k", "-v", "wc -l"], SEQ30, "exact"),
    # Without -k GNU prints dry-run jobs as its job slots finish them (9 before 8 once).
    (["--pipe", "--block", "10", "--dry-run", "echo {#}"], SEQ30, "sorted"),
    # --cat: the block in a temporary file named by {} (appended without one), stdin empty
    (["--pipe", "--cat", "--block", "10", "-k", "wc -l < {}; cat"], SEQ30, "exact"),
    (["--pipe", "--cat", "-N4", "-k", "sort -r {}"], SEQ30, "exact"),
    # exit status: the number of failed jobs
    (["--pipe", "--block", "10", "-k", "cat; exit 1"], SEQ30, "exact"),
    (["--pipe", "--block", "10", "-k", "grep -q 1"], SEQ30, "exact"),
]


@pytest.mark.parametrize(("argv", "data", "mode"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_pipe_same_as_gnu(
    gnu_parallel: str, tmp_path: Path, argv: list[str], data: str, mode: str
) -> None:
    g, p = both_stdin(gnu_parallel, tmp_path, argv, data)
    assert p.rc == g.rc, (g.err, p.err)
    if mode == "sorted":
        assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())
    else:
        assert p.out == g.out
    same_err(g, p)
    assert p.files() == g.files()  # nothing of stdin ran as a command


@pytest.mark.parametrize(
    "argv",
    [
        ["--block", "10", "-k", "cat; echo --"],
        ["-k", "wc", "-l"],  # the default: 10 parts per job slot
        ["-j1", "-k", "wc", "-l"],
        ["--block", "-3", "-j2", "-k", "wc", "-l"],
        ["--block", "25", "-k", "--header", "1", "cat; echo --"],
        ["--block", "10", "--recstart", ">", "-k", "cat; echo --"],
        ["--block", "10", "--regexp", "--recend", "[;\n]", "-k", "cat; echo --"],
        ["--block", "1k", "wc", "-c"],
        ["--block", "10", "-k", "--tag", "echo {#}; cat"],
        ["--block", "10", "-k", "--cat", "cat {}; echo --"],
    ],
)
def test_pipepart_same_as_gnu(gnu_parallel: str, tmp_path: Path, argv: list[str]) -> None:
    big = tmp_path / "big"
    if "--recstart" in argv:
        big.write_text(FASTA * 3)
    elif "--regexp" in argv:
        big.write_text("a;b\nccc;dd\neeee;f;g\n" * 3)
    elif "--header" in argv:
        big.write_text("head\n" + SEQ30)
    else:  # a few hundred jobs at most
        lines = 100 if argv[:2] == ["--block", "10"] else 2000
        big.write_text("".join(f"{i}\n" for i in range(1, lines + 1)))
    g, p = both_stdin(gnu_parallel, tmp_path, ["--pipepart", "-a", str(big), *argv], "")
    assert p.rc == g.rc, (g.err, p.err)
    if "-k" in argv:
        assert p.out == g.out
    else:
        assert sorted(p.out.splitlines()) == sorted(g.out.splitlines())
    same_err(g, p)


def test_pipepart_empty_file_and_no_trailing_newline(gnu_parallel: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    ragged = tmp_path / "ragged"
    ragged.write_text("a\nbb\nccc\ndddd")
    for path in (empty, ragged):
        argv = ["--pipepart", "-a", str(path), "--block", "3", "-k", "cat; echo --"]
        g, p = both_stdin(gnu_parallel, tmp_path, argv, "")
        assert (p.out, p.rc) == (g.out, g.rc)


def test_pipe_halt_on_a_failing_job(gnu_parallel: str, tmp_path: Path) -> None:
    # -j1: the jobs run one after another, so what GNU prints is certain.
    argv = ["--pipe", "-j1", "-k", "--block", "10", "--halt", "now,fail=1"]
    g, p = both_stdin(
        gnu_parallel,
        tmp_path,
        [*argv, 'x=$(cat); echo "$x"; case "$x" in *7*) exit 3;; esac'],
        SEQ30,
    )
    assert p.rc == g.rc == 3
    assert p.out == g.out
    same_err(g, p)
    # GNU parallel 20221122 hangs on --pipe --halt soon (it waits for a job
    # slot that never frees): polytask alone, stopping after the second failure.
    argv = ["--pipe", "-j1", "-k", "--block", "10", "--halt", "soon,fail=2", "cat; exit 4"]
    r = subprocess.run([*PT, *argv], input=SEQ30, capture_output=True, text=True, timeout=60)
    assert (r.stdout, r.returncode) == ("1\n2\n3\n4\n5\n6\n7\n8\n9\n", 2)
    assert r.stderr.count("This job failed:\ncat; exit 4\n") == 2


def test_pipe_joblog_as_gnu(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both_stdin(
        gnu_parallel,
        tmp_path,
        ["--pipe", "-j1", "--block", "10", "--joblog", "log", "wc -l"],
        SEQ30,
    )
    assert (p.out, p.rc) == (g.out, g.rc)

    def columns(run: Run) -> list[list[str]]:
        lines = (run.cwd / "log").read_text().splitlines()
        # Seq, Send, Receive, Exitval, Signal, Command: not Host, times.
        return [[c for i, c in enumerate(line.split("\t")) if i not in (1, 2, 3)] for line in lines]

    assert columns(p) == columns(g)


def test_n0_shell_command_runs(gnu_parallel: str, tmp_path: Path) -> None:
    # A COMMAND of shell syntax without any replacement string, where no input
    # is appended (-N0, and every --pipe job): it ran as an empty line before.
    g, p = both_stdin(gnu_parallel, tmp_path, ["-k", "-N0", "echo hi; echo x", ":::", "a", "b"], "")
    assert (p.out, p.rc) == (g.out, g.rc) == ("hi\nx\nhi\nx\n", 0)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--pipe", "echo", ":::", "a"], ":::"),
        (["--pipe", "-X", "echo"], "-X"),
        (["--pipe", "--block", "0", "cat"], "--block"),
        (["--pipe", "--block", "1x", "cat"], "not a size"),
        (["--pipe", "-N0", "cat"], "-N 0"),
        (["--pipe", "-L", "2.5", "cat"], "-L 2.5: with --pipe, the count is a whole number"),
        (["--pipe", "-N", "0.5", "cat"], "-N 0.5: with --pipe, the count is a whole number"),
        (["--pipe", "--regexp", "--recend", "(", "cat"], "not a regular expression"),
        (["--pipepart", "cat"], "-a FILE"),
        (["--block", "10", "cat"], "--pipe"),
        (["--recend", ";", "cat"], "--pipe"),
    ],
)
def test_bad_pipe_options_exit_255(tmp_path: Path, argv: list[str], why: str) -> None:
    r = subprocess.run(
        [*PT, *argv], input="a\n", capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 255, r.stderr
    assert why in r.stderr
    assert r.stdout == ""


def test_pipepart_refuses_a_pipe(tmp_path: Path) -> None:
    r = subprocess.run(
        [*PT, "--pipepart", "-a", "/dev/stdin", "cat"],
        input="a\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 255
    assert "seekable" in r.stderr


def test_pipe_from_a_file_with_a(tmp_path: Path) -> None:
    f = tmp_path / "in"
    f.write_text(SEQ30)
    r = subprocess.run(
        [*PT, "--pipe", "-a", str(f), "--block", "30", "-k", "wc -l"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert sum(map(int, r.stdout.split())) == 30
    assert len(r.stdout.split()) > 1


def test_a_job_that_reads_nothing_succeeds(tmp_path: Path) -> None:
    # GNU parallel 20221122 counts some of these jobs failed, a different number each
    # run (its write to the job meets EPIPE): polytask alone.
    r = subprocess.run(
        [*PT, "--pipe", "--block", "100k", "-k", "true"],
        input=SEQ30 * 4000,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("mode", ["--pipe", "--pipepart"])
def test_cat_files_are_removed(tmp_path: Path, mode: str) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    data = tmp_path / "data"
    data.write_text(SEQ30)
    argv = [*PT, mode, "-a", str(data), "--cat", "--block", "10", "-k"]
    r = subprocess.run(
        [*argv, "--retries", "2", 'test -s {} && cat {} && [ "$PARALLEL_SEQ" != 2 ]'],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    assert r.returncode == 1  # job 2 failed twice; every block went through
    assert r.stdout == SEQ30
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_pipe_ended_by_a_signal_exits_255_and_ends_its_jobs(tmp_path: Path, signum: int) -> None:
    """Jobs reading their blocks, stdin still open: a signal ends all of it, status 255."""
    proc = subprocess.Popen(
        [*PT, "--pipe", "-j2", "--block", "10", 'cat > "$PARALLEL_SEQ"; exec sleep 60'],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(SEQ30.encode())  # more blocks than slots; stdin stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not all((tmp_path / n).exists() and (tmp_path / n).stat().st_size for n in "12"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 255
    proc.stdin.close()
    assert not (tmp_path / "3").exists()  # no slot came free: the third block never ran


def test_pipe_retries_give_the_same_block_again(tmp_path: Path) -> None:
    # The first try of each job fails after reading its block; the retry must get it again.
    script = 'n=$(ls | grep -c "^$PARALLEL_SEQ\\.") ; cat > "$PARALLEL_SEQ.$n"; [ "$n" -ge 1 ]'
    r = subprocess.run(
        [*PT, "--pipe", "-j1", "--block", "10", "--retries", "2", script],
        input=SEQ30,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    got: dict[str, list[str]] = {}
    for p in sorted(tmp_path.iterdir()):
        got.setdefault(p.name.split(".")[0], []).append(p.read_text())
    assert all(len(v) == 2 and v[0] == v[1] and v[0] for v in got.values()), got
    assert "".join(got[k][0] for k in sorted(got, key=int)) == SEQ30


MB = 1 << 20


def test_pipe_memory_stays_bounded(tmp_path: Path) -> None:
    """200 MB through --pipe --block 1M -j2: the parent never holds more than a few blocks."""
    total = 200 * MB
    feeder = subprocess.Popen(
        ["sh", "-c", f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {total}"],
        stdout=subprocess.PIPE,
    )
    assert feeder.stdout is not None
    try:
        pt = subprocess.Popen(
            [*PT, "--pipe", "--block", "1M", "-j2", "wc", "-c"],
            stdin=feeder.stdout,
            stdout=subprocess.PIPE,
        )
        feeder.stdout.close()
        assert pt.stdout is not None
        # The runner's own peak (VmHWM only grows), read while it runs: wait4's
        # ru_maxrss is the largest of it and its waited-for descendants, which
        # is not the promise (the parent holds a few blocks); it once read 326 MB.
        hwm, done = [0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    with open(f"/proc/{pt.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                hwm[0] = max(hwm[0], int(line.split()[1]) * 1024)
                except (OSError, ValueError):
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out = pt.stdout.read()
        pt.stdout.close()
        _, status, usage = os.wait4(pt.pid, 0)
        done.set()
        watcher.join(timeout=60)
        pt.returncode = os.waitstatus_to_exitcode(status)
    finally:
        feeder.wait(timeout=60)
    assert pt.returncode == 0
    sizes = [int(x) for x in out.split()]
    assert sum(sizes) == total
    assert len(sizes) >= 190  # about one job a MiB
    assert max(sizes) <= 2 * MB
    peak = hwm[0]
    assert 0 < peak < 100 * MB, (
        f"peak RSS {peak / MB:.0f} MB for {total / MB:.0f} MB of input "
        f"(with its jobs: {usage.ru_maxrss / 1024:.0f} MB)"
    )


def test_pipepart_reads_only_near_the_edges() -> None:
    """--pipepart's split points come from reads near each edge, never the whole file."""
    from polytask._parallel_spec import split_positions

    line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    data = line * (64 * MB // len(line))
    read = []

    def read_at(offset: int, n: int) -> bytes:
        read.append(n)
        return data[offset : offset + n]

    pos = split_positions(read_at, len(data), 4 * MB, 0)
    assert len(pos) == 17 and pos[0] == 0 and pos[-1] == len(data)
    assert all(data[p - 1 : p] == b"\n" for p in pos[1:])
    assert sum(read) <= 16 * 131072  # one piece at each edge


def _split_all(data: bytes, reads: list[int] | None = None, **options: object) -> list[bytes]:
    """The blocks of ``data``, read as the splitter asks, or in pieces of the sizes in ``reads``."""
    from polytask._parallel_spec import PipeSplitter

    s = PipeSplitter(**options)  # type: ignore[arg-type]
    out: list[bytes] = []
    i = 0
    sizes = iter(reads or [])
    while True:
        n = min(s.wanted(), next(sizes, s.wanted()))
        piece = data[i : i + n]
        i += len(piece)
        s.feed(piece)
        out += [s.header + bytes(b) for b in s.ready]
        s.ready.clear()
        if not piece:
            return out


@pytest.mark.parametrize(
    "options",
    [
        {"block": 10},
        {"block": 1},
        {"block": 64, "records": 3},
        {"block": 50, "lines": 4},
        {"block": 16, "recstart": b">", "recend": b""},
        {"block": 16, "recstart": b">", "recend": b"\n"},
        {"block": 16, "regexp": True, "recstart": b"", "recend": b"[;\n]"},
    ],
)
def test_blocks_do_not_depend_on_how_stdin_is_read(options: dict[str, object]) -> None:
    """A pipe hands over any number of bytes at a time: the blocks must not change,
    and each is whole records that together are the input."""
    import random

    rnd = random.Random(7)
    data = b"".join(
        (b">" if rnd.random() < 0.3 else b"")
        + bytes(rnd.choice(b"abc;") for _ in range(rnd.randrange(0, 30)))
        + b"\n"
        for _ in range(300)
    )
    whole = _split_all(data, **options)
    assert b"".join(whole) == data
    for _ in range(5):
        reads = [rnd.randrange(1, 40) for _ in range(len(data))]
        assert _split_all(data, reads, **options) == whole
    recend = options.get("recend", b"\n")
    recstart = options.get("recstart", b"")
    assert isinstance(recend, bytes) and isinstance(recstart, bytes)
    if options.get("regexp"):
        recend = b""  # [;\n]: checked as ";" or "\n" below
    cut = 0
    for block in whole[:-1]:  # every cut is between two records
        cut += len(block)
        if options.get("regexp"):
            assert data[cut - 1 : cut] in (b";", b"\n")
        else:
            assert data[:cut].endswith(recend) and data[cut:].startswith(recstart)


def test_parse_size_as_gnu() -> None:
    from polytask._parallel_spec import parse_size

    assert parse_size("1M") == 1 << 20
    assert parse_size("1m") == 10**6
    assert parse_size("10k") == 10_000
    assert parse_size("10K") == parse_size("10ki") == 10_240
    assert parse_size("1.5M") == 3 << 19
    assert parse_size("-3") == -3
    with pytest.raises(ValueError, match="not a size"):
        parse_size("1x")
