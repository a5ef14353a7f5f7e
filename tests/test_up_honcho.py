"""``polytask up`` side by side with the real honcho (2.x): same Procfile, same .env.

Each scenario runs ``honcho start`` and ``polytask up`` in the same folder and
compares the exit status and the programs' lines (as a set where the order
between programs is not deterministic). Where polytask differs on purpose, the
test asserts the difference that docs/up.md states, so that a change in either
tool shows up here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("honcho")

HONCHO = str(Path(sys.executable).with_name("honcho"))
SRC = str(Path(__file__).resolve().parents[1] / "src")
LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+) +\| ?(.*)$")


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    for name in ("PORT", "NO_COLOR", "PS", "HONCHO_PROCESS_NAME"):
        e.pop(name, None)
    return e


class Run:
    """One tool (``honcho`` or ``polytask``) running in ``folder``, output to a file."""

    def __init__(self, tool: str, folder: Path, *args: str):
        self.tool = tool
        self.out_path = folder / f"{tool}.out"
        if tool == "honcho":
            argv = [HONCHO, "--no-colour", "start", *args]
        else:
            argv = [sys.executable, "-m", "polytask.cli", "up", "--color", "never"]
            # honcho's rule is --restart never (polytask's default keeps programs running)
            argv += [*args] if "--restart" in args else ["--restart", "never", *args]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=_env()
            )

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def lines(self) -> list[tuple[str, str]]:
        """(program, line) for every line a program printed (not the tool's own)."""
        found = []
        for text in self.out.splitlines():
            m = LINE.match(text)
            if m and m.group(1) not in ("system", "polytask"):
                found.append((m.group(1), m.group(2)))
        return found

    def wait_for_lines(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{self.tool}: {count} lines not seen:\n{self.out}")
            time.sleep(0.05)

    def finish(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.tool} did not end within {timeout}s:\n{self.out}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def both(folder: Path, *args: str, honcho_args: tuple[str, ...] | None = None) -> tuple[Run, Run]:
    """Run honcho, then polytask, each to its end; returns (honcho, polytask)."""
    runs = []
    for tool in ("honcho", "polytask"):
        run = Run(
            tool, folder, *(args if tool == "polytask" or honcho_args is None else honcho_args)
        )
        try:
            run.finish()
        finally:
            run.close()
        runs.append(run)
    return runs[0], runs[1]


def procfile(folder: Path, text: str) -> None:
    (folder / "Procfile").write_text(text)


# --------------------------------------------------------------------------- exit rules


@pytest.mark.parametrize("code", [0, 3])
def test_first_program_to_end_stops_the_others_with_its_status(tmp_path, code):
    procfile(tmp_path, f"web: exec sleep 60\ntest: echo testing; exit {code}\n")
    honcho, up = both(tmp_path)
    assert honcho.proc.returncode == up.proc.returncode == code
    assert honcho.lines() == up.lines() == [("test.1", "testing")]
    assert "web.1 (pid" in up.out and "killed by signal SIGTERM" in up.out


def test_a_program_killed_by_a_signal_gives_128_plus_n_where_honcho_gives_256_minus_n(
    tmp_path,
):
    # Documented difference: honcho passes -9 to sys.exit (247); a shell says 137.
    procfile(tmp_path, "web: exec sleep 60\ncrash: kill -9 $$\n")
    honcho, up = both(tmp_path)
    assert honcho.proc.returncode == 256 - 9
    assert up.proc.returncode == 128 + 9


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_gives_130_or_143(tmp_path, sig):
    procfile(tmp_path, "web: echo $PORT; exec sleep 60\nworker: echo working; exec sleep 60\n")
    results = []
    for tool in ("honcho", "polytask"):
        run = Run(tool, tmp_path)
        try:
            run.wait_for_lines(2)
            run.proc.send_signal(sig)
            results.append((run.finish(), sorted(run.lines())))
        finally:
            run.close()
    assert results[0] == results[1] == (128 + sig, [("web.1", "5000"), ("worker.1", "working")])


def signalled(folder: Path, count: int, *args: str, honcho_args: tuple[str, ...] = ()) -> list:
    """Run each tool until ``count`` program lines are out, then SIGTERM it.

    Returns [(exit status, sorted program lines)] for honcho, then polytask.
    """
    results = []
    for tool, extra in (("honcho", honcho_args or args), ("polytask", args)):
        run = Run(tool, folder, *extra)
        try:
            run.wait_for_lines(count)
            run.proc.send_signal(signal.SIGTERM)
            results.append((run.finish(), sorted(run.lines())))
        finally:
            run.close()
    return results


# --------------------------------------------------------------------------- parsing, names, ports

SHOW = "echo $HONCHO_PROCESS_NAME $PORT; exec sleep 60"
ODD_PROCFILE = f"""\
# lines honcho (and foreman) skip, then the two entries both tools run
web: {SHOW}
web.v2: echo v2; exec sleep 60
my web: echo my; exec sleep 60
nocolon echo x
empty:
  indented: echo indented; exec sleep 60
   # an indented comment
worker:{SHOW}
"""


def test_lines_honcho_skips_are_skipped_the_same_and_names_and_ports_match(tmp_path):
    procfile(tmp_path, ODD_PROCFILE)
    honcho, up = signalled(tmp_path, 3, "-c", "web=2")
    expected = [("web.1", "web.1 5000"), ("web.2", "web.2 5001"), ("worker.1", "worker.1 5100")]
    assert honcho == up == (143, expected)
    # polytask names each skipped line (honcho is silent about them).
    warned = re.findall(r"warning: Procfile:(\d+):", (tmp_path / "polytask.out").read_text())
    assert warned == ["3", "4", "5", "6", "7"]


def test_check_accepts_what_honcho_accepts_except_a_blank_command(tmp_path):
    # "empty: " with a trailing space: honcho's pattern takes the space as the
    # command; polytask skips the line (documented).
    procfile(tmp_path, ODD_PROCFILE + "blank:   \n")
    h = subprocess.run(
        [HONCHO, "check"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=60
    )
    assert h.returncode == 0 and "(web, worker, blank)" in h.stderr
    p = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert p.returncode == 0 and "would start 2 programs: web, worker" in p.stdout
    assert "Procfile:10: empty command for process 'blank'" in p.stderr


def test_a_subset_keeps_procfile_ports_where_honcho_renumbers(tmp_path):
    # Documented difference: polytask (as foreman) keeps each type's PORT.
    procfile(tmp_path, f"web: {SHOW}\nworker: {SHOW}\nclock: {SHOW}\n")
    honcho, up = signalled(tmp_path, 2, "clock", "web")
    assert honcho == (143, [("clock.1", "clock.1 5000"), ("web.1", "web.1 5100")])
    assert up == (143, [("clock.1", "clock.1 5200"), ("web.1", "web.1 5000")])


def test_dollar_in_env_values_is_expanded_where_honcho_keeps_it(tmp_path):
    # Documented difference: honcho (and foreman) keep .env values as written.
    procfile(tmp_path, 'show: echo "[$GREETING] [$PLAIN] [$LITERAL]"; exec sleep 60\n')
    (tmp_path / ".env").write_text(
        "NAME=world\nGREETING=\"hello ${NAME} $NAME\"\nPLAIN=abc\nLITERAL='$NAME'\n"
    )
    honcho, up = signalled(tmp_path, 1)
    assert honcho == (143, [("show.1", "[hello ${NAME} $NAME] [abc] [$NAME]")])
    assert up == (143, [("show.1", "[hello world world] [abc] [$NAME]")])


# --------------------------------------------------------------------------- run


def test_run_matches_honcho_run(tmp_path):
    (tmp_path / ".env").write_text("GREETING=hello\nQUOTED='two words'\n")
    cmd = ["sh", "-c", 'echo "$GREETING [$QUOTED] $1"; exit 4', "sh", "arg one"]
    h = subprocess.run(
        [HONCHO, "run", *cmd], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=60
    )
    p = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "run", *cmd],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert (
        (h.returncode, h.stdout) == (p.returncode, p.stdout) == (4, "hello [two words] arg one\n")
    )
