"""More of ``polytask up`` side by side with the real honcho (2.x).

What tests/test_up_honcho.py does not cover: output that is not plain lines,
programs and the terminal, the base PORT from the environment, daemons, the
options -f / -e / -p, and the differences docs/up.md states (raw bytes, stdin).
Each scenario runs honcho, then polytask, in the same folder (helpers from
test_up_honcho).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import wait_until

from test_up_honcho import HONCHO, LINE, Run, _env, both, procfile, signalled


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


# --------------------------------------------------------------------------- output


def test_a_carriage_return_ends_a_line_as_in_honcho(tmp_path):
    # A progress bar's updates ("10%\r20%\r..."): honcho prints each as a line of
    # its own; a \r left inside a line sends the cursor back over the prefix.
    procfile(tmp_path, r"bar: printf '\r10%%\r20%%\r\r\ndone\r\n\nlast\r'" + "\n")
    honcho, up = both(tmp_path)
    expected = [("bar.1", s) for s in ("", "10%", "20%", "", "done", "", "last")]
    assert honcho.proc.returncode == up.proc.returncode == 0
    assert honcho.lines() == up.lines() == expected


_RAW_LINE = re.compile(rb"^\d\d:\d\d:\d\d (\S+) +\| ?(.*)$", re.S)


def _raw_lines(run: Run) -> list[tuple[bytes, bytes]]:
    """(program, line) as written, split on "\\n" only (``Run.lines`` uses
    str.splitlines, which would itself split on the line ends tested here)."""
    found = []
    for text in run.out_path.read_bytes().split(b"\n"):
        m = _RAW_LINE.match(text)
        if m and m.group(1) not in (b"system", b"polytask"):
            found.append((m.group(1), m.group(2)))
    return found


def test_every_line_end_of_str_splitlines_ends_a_line_as_in_honcho(tmp_path):
    # honcho decodes each line and prints what str.splitlines makes of it: \f, \v,
    # \x1c-\x1e, U+0085, U+2028 and U+2029 (UTF-8) end a line there; left inside a
    # line, a form feed or vertical tab would move the cursor away from the prefix.
    # "\f\n" is two ends (two empty lines); "\r\n" one; a last end with nothing
    # after it adds no empty line. Then line ends split across two writes (and
    # two reads, mostly): each still ends its line, "\r" + "\n" as one.
    procfile(
        tmp_path,
        r"ends: printf 'a\fb\vc\034d\035e\036f\302\205g\342\200\250h\342\200\251i\n"
        r"\f\nj\r\nk\v'; printf 'x\342\200'; sleep 0.2; printf '\250y\r'; sleep 0.2;"
        r" printf '\nz\302'; sleep 0.2; printf '\205'; sleep 0.2; printf end"
        "\n",
    )
    honcho, up = both(tmp_path)
    assert honcho.proc.returncode == up.proc.returncode == 0
    expected = [(b"ends.1", b"" if s == b"_" else s) for s in b"a b c d e f g h i _ _ j k".split()]
    expected += [(b"ends.1", s) for s in (b"x", b"y", b"z", b"end")]
    assert _raw_lines(honcho) == expected, honcho.out
    assert _raw_lines(up) == expected, up.out


def test_a_line_end_at_the_cut_of_an_endless_line_still_ends_a_line(tmp_path):
    # A line longer than 256 KiB is cut (honcho keeps it whole). When the cut fell
    # between the two bytes of U+0085 ("\xc2" | "\x85"), the end was lost: "\xc2"
    # went out with the cut piece, and "\x85" started the next line. The sleep
    # makes that split likely; the line after the end is "b" either way.
    procfile(
        tmp_path,
        r"long: head -c 262144 /dev/zero | tr '\0' a; printf '\302'; sleep 0.5;"
        r" printf '\205b\n'" + "\n",
    )
    run = Run("polytask", tmp_path)
    try:
        assert run.finish() == 0
    finally:
        run.close()
    lines = [data for name, data in _raw_lines(run) if name == b"long.1"]
    assert lines[-1] == b"b", lines[-2:]
    assert b"".join(lines[:-1]) == b"a" * 262144


# (what the long line's length, what follows it): the sleeps make polytask's cut
# (once more than 256 KiB is held) likely to fall right before the line's end,
# which then comes in a read of its own; "\r\n" split across two reads too.
LONG_LINE_ENDS = [
    (262145, r"printf '\nb\n'"),
    (262144, r"printf '\nb\n'"),
    (262144, r"printf '\r'; sleep 0.3; printf '\nb\n'"),
    (262145, r"printf '\r'; sleep 0.3; printf '\nb\n'"),
    (262145, r"printf '\r'; sleep 0.3; printf '\rb\n'"),
    (262145, r"printf '\302'; sleep 0.3; printf '\205\nb'"),
    (262145, r"printf '\r'"),
    (262145, "true"),
]


@pytest.mark.parametrize(("size", "then"), LONG_LINE_ENDS)
def test_the_end_of_a_cut_line_makes_no_line_of_its_own(tmp_path, size, then):
    # honcho prints the line whole; polytask in pieces (to bound its memory),
    # and the end that comes after the cut ends the last piece, as in honcho,
    # not an empty line of its own. What follows is the same as in honcho.
    procfile(tmp_path, f"long: head -c {size} /dev/zero | tr '\\0' a; sleep 0.3; {then}\n")
    honcho, up = both(tmp_path)
    assert honcho.proc.returncode == up.proc.returncode == 0
    whole, *after = [data for name, data in _raw_lines(honcho) if name == b"long.1"]
    assert whole == b"a" * size
    lines = [data for name, data in _raw_lines(up) if name == b"long.1"]
    pieces = 0
    while sum(map(len, lines[:pieces])) < size:
        pieces += 1
    assert b"".join(lines[:pieces]) == whole
    assert lines[pieces:] == after, [len(x) for x in lines]


def test_bytes_are_passed_through_where_honcho_replaces_them(tmp_path):
    # Documented difference: polytask writes a program's bytes as they are
    # (honcho decodes them as UTF-8 and writes U+FFFD for what is not).
    # Same: a last line without a newline is printed.
    procfile(tmp_path, r"raw: printf 'bad \377 byte\nno newline'" + "\n")
    honcho, up = both(tmp_path)
    assert honcho.proc.returncode == up.proc.returncode == 0
    assert b"| bad \xef\xbf\xbd byte\n" in honcho.out_path.read_bytes()
    assert b"| bad \xff byte\n" in up.out_path.read_bytes()
    assert honcho.lines()[-1] == up.lines()[-1] == ("raw.1", "no newline")


def test_stdin_is_dev_null_where_honcho_passes_its_own(tmp_path):
    # Documented difference: honcho's programs inherit honcho's stdin.
    procfile(tmp_path, 'reader: read x; echo "[$x]"\n')
    got = []
    for tool in ("honcho", "polytask"):
        r, w = os.pipe()
        os.write(w, b"typed\n")
        os.close(w)
        try:
            result = subprocess.run(
                [HONCHO, "--no-colour", "start"]
                if tool == "honcho"
                else [sys.executable, "-m", "polytask.cli", "up", "--color", "never"],
                cwd=tmp_path,
                stdin=r,
                capture_output=True,
                text=True,
                env=_env(),
                timeout=60,
            )
        finally:
            os.close(r)
        got.append(
            [
                m.group(2)
                for m in map(LINE.match, result.stdout.splitlines())
                if m and m.group(1) == "reader.1"
            ]
        )
    assert got == [["[typed]"], ["[]"]]


def test_crlf_lines_a_unicode_name_and_colons_in_commands_as_in_honcho(tmp_path):
    # A Procfile saved on Windows; a name that is not ASCII (skipped by both:
    # their pattern is [A-Za-z0-9_-]); colons in commands, ":" (the shell's no-op)
    # first among them.
    (tmp_path / "Procfile").write_bytes(
        "web: echo 'a:b' $PORT; exec sleep 60\r\n"
        "wébé: echo unicode; exec sleep 60\r\n"
        "\r\n# a comment\r\n"
        'worker:: ; echo "x: y" $PORT; exec sleep 60\r\n'.encode()
    )
    honcho, up = signalled(tmp_path, 2)
    assert honcho == up == (143, [("web.1", "a:b 5000"), ("worker.1", "x: y 5100")])


def test_a_program_that_ignores_sigterm_is_killed_after_the_grace_as_in_honcho(tmp_path):
    # honcho's grace is 5 s, fixed; polytask's is --timeout (5), 1 here for speed.
    procfile(
        tmp_path,
        "stubborn: trap '' TERM; echo ready; sleep 60; echo not reached\nweb: echo web; exec sleep 60\n",
    )
    results = []
    for tool, args in (("honcho", ()), ("polytask", ("--timeout", "1"))):
        run = Run(tool, tmp_path, *args)
        try:
            run.wait_for_lines(2)
            run.proc.send_signal(signal.SIGINT)
            results.append((run.finish(), sorted(run.lines())))
        finally:
            run.close()
        said = {"honcho": "stubborn.1 stopped (rc=-9)", "polytask": "killed by signal SIGKILL (9)"}
        assert said[tool] in run.out, run.out
    assert results[0] == results[1] == (130, [("stubborn.1", "ready"), ("web.1", "web")])


# --------------------------------------------------------------------------- the terminal


def _in_terminal(tool: str, folder: Path) -> tuple[int, str]:
    """Run ``tool`` as the session leader of a new terminal (a pty), as in a shell."""
    argv = (
        [HONCHO, "--no-colour", "start"]
        if tool == "honcho"
        else [sys.executable, "-m", "polytask.cli", "up", "--color", "never", "--restart", "never"]
    )
    take_tty = (
        "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    master, slave = os.openpty()
    out = folder / f"{tool}.out"
    try:
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-c", take_tty, *argv],
                cwd=folder,
                stdin=slave,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )
            try:
                code = proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        os.close(slave)
        os.close(master)
    return code, out.read_text(errors="replace")


def test_programs_have_no_controlling_terminal_as_in_honcho(tmp_path):
    # honcho starts each program in a session of its own: /dev/tty cannot be
    # opened, so a password prompt fails at once. In up's own session a program
    # that reads /dev/tty is stopped (SIGTTIN) for good, silently.
    procfile(
        tmp_path,
        "probe: if (exec 3</dev/tty) 2>/dev/null; then echo has a terminal; "
        "else echo no terminal; fi\n",
    )
    results = [_in_terminal(tool, tmp_path) for tool in ("honcho", "polytask")]
    for code, out in results:
        assert code == 0, out
        assert re.search(r"^\d\d:\d\d:\d\d probe\.1 +\| no terminal$", out, re.M), out


# --------------------------------------------------------------------------- PORT


@pytest.mark.parametrize("where", ["env file", "environment"])
def test_a_port_that_is_not_a_number_is_refused_as_by_honcho(tmp_path, where):
    # honcho: "invalid value for port: 'abc'", exit 1, nothing started. polytask
    # gave every program PORT 5000 as if nothing was set.
    procfile(tmp_path, "web: echo $PORT\n")
    extra = {}
    if where == "env file":
        (tmp_path / ".env").write_text("PORT=abc\n")
    else:
        extra["PORT"] = "abc"
    codes = {}
    for tool in ("honcho", "polytask"):
        argv = (
            [HONCHO, "--no-colour", "start"]
            if tool == "honcho"
            else [sys.executable, "-m", "polytask.cli", "up", "--color", "never"]
        )
        r = subprocess.run(
            argv,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**_env(), **extra},
            timeout=60,
        )
        assert "web.1" not in r.stdout, r.stdout
        assert "'abc'" in r.stderr, r.stderr
        codes[tool] = r.returncode
    assert codes == {"honcho": 1, "polytask": 2}
    check = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_env(), **extra},
        timeout=60,
    )
    assert check.returncode == 2 and "PORT" in check.stderr, check.stderr


def test_options_f_e_p_and_a_port_from_the_env_file_match_honcho(tmp_path):
    (tmp_path / "sub").mkdir()
    show = 'echo "$PORT $A$B $(basename $(pwd))"; exec sleep 60'
    (tmp_path / "sub" / "Procfile.dev").write_text(f"web: {show}\nworker: {show}\n")
    # A PORT with spaces around it: honcho takes it (int() strips them).
    (tmp_path / "a.env").write_text("A=a\nB=1\nPORT=' 7000'\n")
    (tmp_path / "b.env").write_text("B=2\n")
    args = ("-f", "sub/Procfile.dev", "-e", "a.env,b.env", "-c", "worker=2")
    honcho, up = signalled(tmp_path, 3, *args)
    name = tmp_path.name
    expected = [
        ("web.1", f"7000 a2 {name}"),
        ("worker.1", f"7100 a2 {name}"),
        ("worker.2", f"7101 a2 {name}"),
    ]
    assert honcho == up == (143, expected)
    honcho, up = signalled(
        tmp_path, 1, "-f", "sub/Procfile.dev", "-e", "b.env", "-p", "6000", "web"
    )
    assert honcho == up == (143, [("web.1", f"6000 2 {name}")])


# --------------------------------------------------------------------------- daemons


def test_a_daemon_that_clears_its_environment_does_not_outlive_up(tmp_path):
    # A double fork into a session of its own with a clean environment (env -i):
    # out of the program's process group and without polytask's mark. honcho
    # leaves it running; polytask, its subreaper, ends it with the run.
    procfile(
        tmp_path,
        "daemon: (setsid env -i /bin/sh -c 'echo $$ > daemon.pid; exec sleep 300'"
        " </dev/null >/dev/null 2>&1 &); until [ -s daemon.pid ]; do sleep 0.01; done;"
        " echo forked\n",
    )
    pids = {}
    try:
        for tool in ("honcho", "polytask"):
            run = Run(tool, tmp_path)
            try:
                assert run.finish() == 0, run.out
            finally:
                run.close()
            assert run.lines() == [("daemon.1", "forked")]
            pid_file = tmp_path / "daemon.pid"
            pids[tool] = int(pid_file.read_text())
            pid_file.unlink()
        assert _alive(pids["honcho"])
        assert not _alive(pids["polytask"])  # gone by the time up returned
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_orphans_that_exit_are_reaped_during_the_run(tmp_path):
    # As their subreaper, up must reap the programs' orphans (honcho leaves them
    # to init): a clock that double-forks a job every minute would otherwise fill
    # the process table with zombies, those that lead a session of their own too.
    procfile(
        tmp_path,
        "clock: for i in 1 2 3 4 5; do (setsid sh -c 'echo $$ >> orphans' &);"
        " (sh -c 'echo $$ >> orphans' &); done; exec sleep 60\n",
    )
    orphans = tmp_path / "orphans"
    run = Run("polytask", tmp_path)
    try:
        pids = wait_until(
            lambda: orphans.exists() and len(p := orphans.read_text().split()) == 10 and p,
            what="10 orphans",
        )
        # Each has exited or is about to: it must then be reaped (a zombie keeps
        # its /proc entry).
        wait_until(
            lambda: not any(os.path.exists(f"/proc/{p}") for p in pids),
            timeout=10,
            what=f"the orphans {pids} reaped",
        )
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish() == 143
    finally:
        run.close()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


def test_an_adopted_daemon_does_not_outlive_a_sigkilled_up(tmp_path):
    # The daemon (setsid + env -i: neither the program's group nor polytask's
    # variable) is adopted by up; up hands it to its guardian, which ends it when up
    # is SIGKILLed. The hand-over happens in up's check of its adopted children:
    # the test waits for that check to have run since the adoption (it reaps an
    # orphan made after it, "late"), as the documented limit says.
    procfile(
        tmp_path,
        "daemon: (setsid env -i /bin/sh -c 'echo $$ > daemon.pid; exec sleep 300'"
        " </dev/null >/dev/null 2>&1 &); until [ -e go ]; do sleep 0.01; done;"
        " (sh -c 'echo $$ > late.pid' &); exec sleep 300\n",
    )
    run = Run("polytask", tmp_path)
    daemon = 0
    try:
        daemon = int(
            wait_until(lambda: (p := tmp_path / "daemon.pid").exists() and p.read_text().strip())
        )
        wait_until(lambda: _ppid(daemon) == run.proc.pid, what="the daemon adopted by up")
        (tmp_path / "go").touch()
        late = int(
            wait_until(lambda: (p := tmp_path / "late.pid").exists() and p.read_text().strip())
        )
        wait_until(lambda: not os.path.exists(f"/proc/{late}"), what="the late orphan reaped")
        run.proc.kill()
        run.proc.wait()
        wait_until(lambda: not _alive(daemon), what=f"the daemon {daemon} ended by the guardian")
    finally:
        run.close()
        if daemon and _alive(daemon):
            os.kill(daemon, signal.SIGKILL)
