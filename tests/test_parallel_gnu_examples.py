"""GNU parallel's own examples (man parallel_examples, parallel_tutorial, parallel)
that `polytask parallel` got wrong, run side by side with GNU parallel 20221122.

Each case is a bash line in which ``parallel`` is the implementation under test,
also for a ``parallel`` that a job runs (GNU's nested example): a directory with
a ``parallel`` for it comes first in PATH. Both run in fresh directories; their
stdout, stderr (``parallel:`` read as ``polytask parallel:``) and exit status
must be the same.
"""

from __future__ import annotations

import math
import shlex
import subprocess
from pathlib import Path

import pytest

from test_parallel_gnu import BASH, PY, Run, _env, gnu_parallel
from test_parallel_pipe_more import gnu_csv

__all__ = ["gnu_csv", "gnu_parallel"]  # the fixtures, imported to be used here


def both_sh(gnu: str, tmp_path: Path, line: str) -> tuple[Run, Run]:
    """Run the bash ``line`` with ``parallel`` being GNU parallel, then polytask."""
    home = tmp_path / "parallel-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "will-cite").touch()
    runs = []
    for name, prog in (("gnu", [gnu]), ("pt", [PY, "-m", "polytask.cli", "parallel"])):
        cwd = tmp_path / name
        bin_dir = tmp_path / f"bin-{name}"
        cwd.mkdir()
        bin_dir.mkdir()
        wrapper = bin_dir / "parallel"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(prog)} "$@"\n')
        wrapper.chmod(0o755)
        env = _env(home, None)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        r = subprocess.run(
            [BASH, "-c", line], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
        )
        runs.append(Run(r, cwd))
    return runs[0], runs[1]


def same(g: Run, p: Run) -> None:
    assert (p.out, p.rc) == (g.out, g.rc), (g.err, p.err)
    assert p.err == g.err.replace("parallel: ", "polytask parallel: ")


# One case a line, as typed in bash. Output from more than one job slot is
# kept in order (-k) or sorted: without it both tools print in finishing order.
LINES = r"""
parallel -k -- echo ::: a b
parallel -k -n 2 -- echo ::: a b c
parallel -k -- ::: 'echo a' 'echo b'
parallel -j2 --linebuffer 'printf "%s-start\n" {}; sleep {}; echo {}-end' ::: 0.3 0.1 | sort
parallel --keeporder --linebuffered --tag-string '<{}>' -C , --maxargs 1 echo {2} ::: a,b c,d
parallel -k --argsep ,, --dr echo ,, a b
parallel --argfile <(printf 'a\nb\n') --jl log --maxprocs 1 echo; cut -f 7- log
parallel -k --willcite --haltonerror now,fail=1 --maxreplaceargs 2 echo {2} ::: a b c d
parallel -k --jl log 'echo {}; exit {}' ::: 0 1; parallel -k --jl log --resumefailed 'echo {}; exit {}' ::: 0 1
parallel -k --jl log 'echo {}; exit {}' ::: 0 1; parallel -k --jl log --retryfailed
printf 'a\n\nb\n' | parallel -k --norunifempty echo
seq -w 0 99 | parallel -j4 -q -I,, --pipe --block 100 parallel -j0 touch pict{}.jpg; ls | wc -l
seq 3 | parallel --pipe -I,, 'echo [,,] [{}]; cat'
seq 3 | parallel --pipe --cat -I,, 'echo [{}]; cat ,,'
seq 3 | parallel --pipe -q -I,, echo '{}' ',,'
seq 3 | parallel -k --tagstring '\033[30;3{}m' seq {}
parallel -k --tagstring 'a\tb\1\r\n{#}\8' echo ::: x y
printf 'a,b,c' | parallel -k -d '\054' echo
printf 'a,b\\c\\td\\ae\x01f' | parallel -k -d '\\' echo
printf 'a,b\\c\\td\\ae\x01f' | parallel -k -d '\\t' echo
printf 'a,b\\c\\td\\ae\x01f' | parallel -k -d '\a' echo
printf 'a,b\\c\\td\\ae\x01f' | parallel -k -d '\1' echo
parallel -k -j2 -n 3 -X echo x{}y ::: a b c
parallel -k -j3 -n 3 -m echo ::: $(seq 15)
seq 9 | parallel -k -j3 -n 3 -X echo x{}y
parallel -k --colsep '|' echo '[{1}]' '[{2}]' '[{3}]' ::: 'a|b'
parallel -k --colsep 'x*' echo '[{1}]' '[{2}]' '[{3}]' ::: axxb
printf 'a,b\r\nc , d \r\n' | parallel -k --colsep , echo '[{1}]' '[{2}]' | od -c
printf 'x\ty\n 1 \t 2 \n' | parallel -k --header : echo '[{x}]' '[{y}]'
parallel -k --header : echo '[{x}]' '[{y}]' ::: x ' 1 ' ::: y '2 '
printf ' x \ty\n 1 \t 2 \n' | parallel -k --header : --colsep '\t' echo '[{x}]' '[{y}]'
printf 'x\ty\r\n1\t2\r\n' | parallel -k --header : echo '[{x}]' '[{y}]' | od -c
printf ' a b \n\tc\t\n' | parallel -k --trim n echo '[{}]'
printf ' a b \n\tc\t\n' | parallel -k --trim l echo '[{}]'
printf ' a b \n\tc\t\n' | parallel -k --trim r echo '[{}]'
printf ' a b \n\tc\t\n' | parallel -k --trim lr echo '[{}]' '[{.}]'
parallel -k --trim rl echo '[{}]' '[{/.}]' ::: ' d/f.txt ' ::: ' x '
parallel -k --trim n --colsep , echo '[{1}][{2}]' ::: ' a , b '
parallel -k --trim l --colsep , echo '[{1}][{2}]' ::: ' a , b '
parallel -k --trim r --colsep , echo '[{1}][{2}]' ::: ' a , b '
printf 'x,y\n 1 , 2 \n' | parallel -k --trim n --header : --colsep , echo '[{x}][{y}]'
parallel --trim x echo ::: a 2>/dev/null; echo $?
parallel -k -j2 -n0 -m echo x ::: a b c
parallel -k -j2 -n0 -X echo x ::: a b c
parallel -k -j3 -N0 -X printf '[%s]' x{}y {} ::: a b c d e
parallel -k -j2 -n0 -m printf '[%s]' x{}y {} ::: a b c
parallel -k -n0 --xargs printf '[%s]' x{}y ::: a b c
parallel -k -j2 -n0 -m --dry-run echo x {} y ::: a b c
parallel -k -j2 -n0 -X --dry-run echo x{}y {} ::: a b c
parallel -k -N0 printf '[%s]' x{}y {} {1} {.} {//} '{#}' ::: a b
parallel -k -n0 printf '[%s]' x{}y {} {1} ::: a b
parallel -k -n0 -q printf '[%s]' x{}y {} ::: a b
parallel -k -N0 printf '[%s]' x{}y{2}z ::: a b ::: c d
parallel -k -n0 --tag --jl log echo x ::: a b; cut -f 7- log
printf 'a\nb\n' | parallel -k echo :::: - -
seq 5 | parallel -k echo :::: - - -
seq 5 | parallel -k echo :::: - ::: x y :::: -
seq 5 | parallel -k --link echo :::: - -
seq 3 | parallel -k -a - -a - echo
seq 1 | parallel -k printf '[%s]' {1} {2} {3} :::: - - -
seq 2 | parallel -k printf '[%s]' {1} {2} :::: - -
seq 6 | parallel -k --header : echo {1} {2} :::: - -
seq 3 | parallel -k --header : printf '[%s]' {1} {2} :::: - -
seq 2 | parallel -k --header : echo {1} {2} :::: - -
seq 5 | parallel -k --link --header : echo {1} {2} :::: - -
seq 4 | parallel -k --header : -a - -a - echo {1}/{2}
parallel -k --shellquote ::: 'a b' "c'd" '' a/b-c.d_+ "'x'"
printf 'a b\n$x\n"q"\n\\\n!\n\n' | parallel -k --shellquote
parallel -k --shellquote --shellquote -n2 ::: 'a b' "c'd" e
parallel -k --shellquote --tag --jl log ::: 'a b'; cut -f 7- log
parallel -k -t --shellquote ::: 'a b' "c'd" '' a/b-c.d_+ "'x'"
parallel -k -t --shellquote --shellquote --shellquote -n2 ::: 'a b' "c'd" e
parallel -k -t --tag --shellquote ::: 'a b'
parallel -k --dry-run -t --shellquote --shellquote ::: 'a b' "c'd"
parallel -k --dry-run --tag -t --shellquote -X ::: 'a b' c
parallel -k --dry-run -t echo ::: 'a b' c
parallel -k --dry-run --tag echo ::: 'a b' c
parallel -k --dry-run --tagstring '<{}>' -v echo ::: 'a b' c
parallel -k echo {#}-{} ::: $'a\nb' c
parallel -k echo {#}-{} ::: $'a\n' $'\n' $'a\n\nb' $'c\r\nd'
parallel -k -0 echo {#}-{} ::: $'a\nb' c
parallel -k --null -d , echo {#}-{} ::: $'a\nb' c,d
parallel -k -d , echo {#}-{} ::: $'a\nb' c,d e,
parallel -k -d '\n' echo {#}-{} ::: $'a\nb'
parallel -k --link echo {#}-{1}-{2} ::: $'a\nb' c ::: x y z
parallel -k echo {#}-{1}-{2} ::: $'a\nb' c :::+ x y z
parallel -k echo {#}-{1}-{2} ::: $'a\nb' ::: $'x\ny' :::: <(printf 'f\n')
parallel -k -E b echo {#}-{} ::: $'a\nb\nc' d
parallel -k -r echo {#}-{} ::: $'a\n\n \nb'
parallel -k -N2 echo {#}-{} ::: $'a\nb\nc'
parallel -k --header : echo {#}-{a}-{b} ::: $'a\nx\ny' ::: b z
parallel -k --colsep , echo {#}-{1}-{2} ::: $'a,b\nc,d'
parallel -k --csv echo {#}-{1}-{2} ::: $'"a\nb",c' $'d\ne,f' '"g' 'h",i'
parallel -k ::: $'echo a\necho b'
echo x | parallel -k --pipe --tee 'echo {}; cat' ::: $'a\nb'
"""
CASES = LINES.strip().splitlines()
GNU_RC_RACES = {"seq 3 | parallel --pipe -q -I,, echo '{}' ',,'"}
assert GNU_RC_RACES <= set(CASES)


@pytest.mark.parametrize("line", CASES)
def test_same_as_gnu(
    gnu_parallel: str, tmp_path: Path, line: str, request: pytest.FixtureRequest
) -> None:
    if "--csv" in line:
        # GNU's --csv needs perl's Text::CSV, which a fresh machine lacks: gnu_csv
        # installs it (the file's own --csv tests ran after this one and did).
        if request.getfixturevalue("gnu_csv") is None:
            pytest.skip("GNU parallel cannot run --csv here (perl's Text::CSV missing)")
    g, p = both_sh(gnu_parallel, tmp_path, line)
    if "parallel -j0 touch" in line:  # GNU's own warnings of slow starts, if any
        assert (p.out, p.rc) == (g.out, g.rc) == ("100\n", 0), p.err
        return
    if line in GNU_RC_RACES:
        # GNU parallel exits 1 now and then here: echo does not read its block,
        # and when it exits before GNU wrote the block, GNU counts the broken
        # pipe as a failed job. polytask takes a job's exit status as it is.
        assert (p.out, p.err, p.rc) == (g.out, g.err, 0) and g.rc in (0, 1)
        return
    same(g, p)


def pt_alone(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``polytask parallel ARGV`` alone (a refusal: GNU's answer is not the point)."""
    return subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *argv],
        input="a\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path, None),
    )


def test_shellquote_with_a_command_is_refused(tmp_path: Path) -> None:
    # GNU quotes the command line as it composes it, and polytask quotes an
    # input in a COMMAND its own way: the output would differ, so none is given.
    for argv in (["--shellquote", "echo", ":::", "a"], ["--shellquote", "--pipe", "cat"]):
        r = pt_alone(tmp_path, argv)
        assert (r.returncode, r.stdout) == (255, "")
        assert "--shellquote goes without a COMMAND only" in r.stderr


def test_retry_failed_keeps_a_command_holding_the_delimiter_whole(tmp_path: Path) -> None:
    # GNU parallel 20221122 cuts the joblog's commands at -d's delimiter, as it
    # cuts the arguments after :::, and runs the pieces (here: a shell error).
    r = pt_alone(tmp_path, ["--joblog", "log", "echo {}; false", ":::", "a,b"])
    assert (r.returncode, r.stdout) == (1, "a,b\n")
    r = pt_alone(tmp_path, ["--retry-failed", "-d", ",", "--joblog", "log"])
    assert (r.returncode, r.stdout, r.stderr) == (1, "a,b\n", "")


def test_csv_with_colsep_trims_as_gnu(gnu_csv: str | None, tmp_path: Path) -> None:
    if gnu_csv is None:
        pytest.skip("GNU parallel cannot run --csv here (perl's Text::CSV missing)")
    for i, line in enumerate(
        (
            "printf 'a; b \\n' | parallel --csv --colsep ';' echo '[{2}]'",
            "printf 'a, b \\n' | parallel --csv echo '[{2}]'",
        )
    ):
        same(*both_sh(gnu_csv, tmp_path / str(i), line))


def test_jobs_percent_rounds_up(gnu_parallel: str, tmp_path: Path) -> None:
    # --tee runs all its jobs at once and refuses a -j below their number: a
    # percentage giving 1.5 job slots must give 2 (GNU parallel rounds up).
    from polytask._os.proc import usable_cpus

    threads = subprocess.run(
        [gnu_parallel, "--number-of-threads"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    ncpu = usable_cpus()
    if threads != str(ncpu):
        pytest.skip(f"GNU parallel counts {threads} CPU threads, polytask {ncpu}")
    pct = 150 / ncpu
    assert math.ceil(ncpu * pct / 100) == 2
    line = f"echo x | parallel --pipe --tee -j {pct:g}% 'echo {{}}; wc -l' ::: a b | sort"
    g, p = both_sh(gnu_parallel, tmp_path, line)
    same(g, p)
    assert p.out == "1\n1\na\nb\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--tagstring", "{=$_++=}", "echo", ":::", "a"],
        ["--results", '{= $_="x" =}/', "echo", ":::", "a"],
        ["--pipe", "--tagstring", "{=1 $_ =}", "cat"],
    ],
)
def test_perl_expressions_outside_the_command_are_refused(tmp_path: Path, argv: list[str]) -> None:
    # GNU parallel evaluates them there too; kept as text, they named the tag
    # or the results directory without a word.
    r = pt_alone(tmp_path, argv)
    assert (r.returncode, r.stdout) == (255, "")
    assert "is a Perl expression" in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
