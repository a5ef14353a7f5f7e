"""``polytask parallel --plus``: GNU parallel's further replacement strings.

Every --plus string runs side by side with GNU parallel 20221122 on the same
command line (the helpers of test_parallel_gnu.py: each in a fresh directory,
stdout and exit status compared), positional forms included, over paths with
several extensions, a hidden file, a directory, no extension, an empty string.
The bash-like strings take Perl regular expressions in GNU; polytask takes the
part of them whose meaning it matches exactly and refuses the rest (exit 255,
one line on stderr). And the hostile corpus of test_parallel_quoting.py goes
through each --plus string in several shell contexts: still only data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import test_parallel_gnu
from polytask import _parallel_spec as spec
from test_parallel_gnu import both
from test_parallel_quoting import CORPUS, SHELLS, nothing_ran, parallel, strip_nl

gnu_parallel = test_parallel_gnu.gnu_parallel  # the fixture: GNU parallel's path

PATHS = ["a/b.tar.gz", ".hidden", "dir/", "noext", "", "a.b/c", "/x/.y.z", "d.e/f.g.h.i"]
# (No newline in an argument: GNU splits such an argument into several.)
FIXED = ["{+/}", "{+.}", "{+..}", "{+...}", "{..}", "{...}", "{/..}", "{/...}"]
# The bash-like strings, each with inputs that make it change something (and not).
DYNAMIC = [
    "{:-dflt}",
    "{:2}",
    "{:2:3}",
    "{:9:2}",
    "{#a.}",
    "{#*.}",
    "{##.*\\.}",
    "{#[a-c]+}",
    "{%.gz}",
    "{%%.gz}",
    "{%\\..*}",
    "{%%\\..*}",
    "{%[.][a-z]+}",
    "{/a/X}",
    "{//a/X}",
    "{/#a/X}",
    "{/%z/X}",
    "{//[.]/_}",
    "{//\\d+/<n>}",
    "{/(a|b)c/-}",
    "{//\\s/_}",
    "{^a}",
    "{^^[a-c]}",
    "{,A}",
    "{,,A}",
    "{^^.}",
]
WORDS = ["0", "", "a.tar.gz", "aaz", "AAz", "abc", "z.z.foo", "a 1 22 b", "é.gz"]


def _printf(strings: list[str]) -> list[str]:
    return ["printf", "'[%s]'", *strings, "&&", "echo"]


def test_the_path_strings_match_gnu(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(gnu_parallel, tmp_path, ["-k", "--plus", *_printf(FIXED), ":::", *PATHS])
    assert (p.out, p.rc) == (g.out, g.rc)
    assert p.out.startswith("[a][gz][tar.gz][][a/b][a/b.tar.gz][b][b.tar.gz]\n")
    # {} = {+/}/{/} = {.}.{+.} = {..}.{+..} = {+/}/{/..}.{+..}, as GNU's manual says
    for v in ("a/b.tar.gz", "d.e/f.g.h.i"):
        r = {m: spec.replace_value(v, m) for m in ("/", ".", "+/", "+.", "..", "+..", "/..")}
        assert v == f"{r['+/']}/{r['/']}" == f"{r['.']}.{r['+.']}" == f"{r['..']}.{r['+..']}"
        assert v == f"{r['+/']}/{r['/..']}.{r['+..']}"


def test_positional_forms_match_gnu(gnu_parallel: str, tmp_path: Path) -> None:
    strings = ["{1..}", "{-1+.}", "{2/...}", "{1 .}", "{2+/}", "{1...}", "{-2/..}", "{2+...}"]
    strings += ["{2:-none}", "{1:2}", "{1:1:3}", "{2%.e}", "{1/b/B}", "{2^^x}", "{1#[^/]*/}"]
    g, p = both(
        gnu_parallel,
        tmp_path,
        ["-k", "--plus", *_printf(strings), ":::", *PATHS[:5], ":::+", "x/y.c.d.e", "", "0"],
    )
    assert (p.out, p.rc) == (g.out, g.rc)
    assert p.out.count("\n") == 3  # :::+ : linked, as long as the shorter source


@pytest.mark.parametrize("quoted", [False, True], ids=["shell", "-q"])
def test_the_bash_like_strings_match_gnu(gnu_parallel: str, tmp_path: Path, quoted: bool) -> None:
    strings = [s for s in DYNAMIC if s != "{#*.}"]  # GNU reads * after ^ as Perl does; refused
    argv = [
        "-k",
        "--plus",
        *(["-q", "printf", "[%s]\\n", *strings] if quoted else _printf(strings)),
    ]
    g, p = both(gnu_parallel, tmp_path, [*argv, ":::", *WORDS])
    assert (p.out, p.rc) == (g.out, g.rc)
    assert "[dflt]" in p.out and "[aaX]" in p.out and "[a_1_22_b]" in p.out


# Forms at the edges of GNU's key table: which key wins, what stays text.
ODD = ["{/a/b/c}", "{/a/}", "{:-}", "{:}", "{%%a|z}", "{##a|b}", "{^(a)(b)}", "{//(?=b)/_}"]
ODD += ["{//\\bx/X}", "{/x$/Y}", "{#.+?b}", "{##.+?b}", "{%b.*}", "{%%b.*}", "{^^[^a]}"]
ODD += ["{,,[^a]}", "{//./-}", "{/.*/all}", "{//(?<=a)b/B}", "{/%/E}", "{/#/S}", "{//x*/-}"]
ODD += ["{%\\.[a-z]*}", "{#[a-z]*\\.}", "{1/a/b}", "{2%%.*}", "{-1^^.}", "{1:-e}", "{//\\W/_}"]
ODD += ["{a}", "{/ /}", "{.:1}", "{%%}", "{##}x", "{###}", "{#%}", "{%#}", "{/%a/%}", "{//a|b/|}"]


def test_odd_forms_read_as_gnu_reads_them(gnu_parallel: str, tmp_path: Path) -> None:
    words = ["abcab", "a.b.c", "xbx x", "", "a/b 1.2.3", "AbC", "ab%cd", "0"]
    argv = ["-k", "--plus", "-q", "printf", "[%s]", *ODD, ":::", *words, ":::", "q"]
    g, p = both(gnu_parallel, tmp_path, argv)
    assert (p.out, p.rc) == (g.out, g.rc)
    assert p.out.startswith("[b/cbcab][q][bcab][q][{:-}][{:}][bcab][q]")


def test_with_stdin_several_inputs_a_job_and_context_replace(
    gnu_parallel: str, tmp_path: Path
) -> None:
    lines = "".join(v + "\n" for v in PATHS if "\n" not in v)
    for opts in (["-n2"], ["-N2"], ["-X", "-j1"]):
        g, p = both(
            gnu_parallel,
            tmp_path,
            ["-k", "--plus", *opts, "echo", "x{+.}y", "{..}", "x{%.gz}y"],
            input=lines,
        )
        assert (p.out, p.rc) == (g.out, g.rc), opts


# ------------------------------------------------------------------ {##} {0#} {0%}


@pytest.mark.parametrize(
    "opts",
    [[], ["-j10"], ["-j1"], ["-j0"], ["-n2"], ["-N3"], ["-N0"], ["-j3", "--shuf"], ["-j100"]],
    ids=str,
)
def test_counts_with_arguments_match_gnu(
    gnu_parallel: str, tmp_path: Path, opts: list[str]
) -> None:
    command = ["echo", "{##}", "{0#}", "{0%}"]
    if "--shuf" in opts:
        command = ["echo", "{##}", "{0%}"]  # (the order is random)
    g, p = both(gnu_parallel, tmp_path, ["-k", "--plus", *opts, *command, ":::", *"abcdefghijkl"])
    assert (_slots(p.out, "--shuf" in opts), p.rc) == (_slots(g.out, "--shuf" in opts), g.rc)
    assert len(p.out.splitlines()) == (6 if "-n2" in opts else 4 if "-N3" in opts else 12)
    if "-N0" in opts:  # one input read a job, none given: 12 jobs (polytask said 0 before)
        assert p.out.splitlines()[-1].startswith("12 12 ")


def _slots(out: str, shuffled: bool = False) -> list[str]:
    """Each line with its {0%} (the last word) as its width: which slot runs a job is timing."""
    lines = [" ".join([*ln.split()[:-1], f"w{len(ln.split()[-1])}"]) for ln in out.splitlines()]
    return sorted(lines) if shuffled else lines


def test_counts_read_all_of_stdin_first(gnu_parallel: str, tmp_path: Path) -> None:
    lines = "".join(f"{i}\n" for i in range(1, 13))
    g, p = both(
        gnu_parallel, tmp_path, ["-k", "-j2", "--plus", "echo {0#}/{##} {} {0%}"], input=lines
    )
    assert (_slots(p.out), p.rc) == (_slots(g.out), g.rc)
    assert p.out.splitlines()[0] == "01/12 1 1"
    g, p = both(
        gnu_parallel,
        tmp_path,
        ["-k", "--plus", "--tagstring", "{0#}/{##}", "echo", "{+.}"],
        input="a.b\nc.d\n",
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("1/2\tb\n2/2\td\n", 0)


def test_the_width_is_gnus_float_logarithm() -> None:
    # GNU: 1 + int(log(n) / log(10)); at n = 1000 the quotient is 2.9999999999999996.
    assert spec.Repl("seq0").values([], 1, 1, (1000, 2)) == ["001"]
    assert spec.Repl("seq0").values([], 1000, 1, (1000, 2)) == ["1000"]
    assert spec.Repl("seq0").values([], 7, 1, (999, 2)) == ["007"]
    assert spec.Repl("seq0").values([], 7, 1, (10, 2)) == ["07"]
    assert spec.Repl("slot0").values([], 1, 3, (5, 100)) == ["003"]
    assert spec.Repl("total").values([], 1, 3, (5, 100)) == ["5"]


def test_counts_that_cannot_be_known_are_refused(tmp_path: Path) -> None:
    for argv in (
        ["-X", "echo", "{##}"],
        ["-m", "echo", "{0#}"],
        ["--xargs", "-j0", "echo", "{0%}"],
    ):
        r = parallel("--plus", *argv, ":::", "a", cwd=tmp_path, shell="bash")
        assert r.returncode == 255 and r.stdout == b"", argv
        assert b"-m, -X or --xargs" in r.stderr and r.stderr.count(b"\n") == 1
    r = parallel("--pipe", "--plus", "echo {##}", cwd=tmp_path, shell="bash")
    assert r.returncode == 255 and b"--pipe" in r.stderr
    # {0%} under --pipe knows its slots: -j.
    work = tmp_path / "pipe"
    work.mkdir()
    env_input = b"x\n"
    r = _run_stdin(["-j12", "--pipe", "--plus", "echo {0%}"], env_input, work)
    assert (r[0], r[1]) == (0, b"01\n")


def _run_stdin(argv: list[str], data: bytes, cwd: Path) -> tuple[int, bytes]:
    import subprocess

    from test_parallel_quoting import PY, SRC

    r = subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *argv],
        input=data,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    return r.returncode, r.stdout


# ------------------------------------------------------------------ refused forms


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("echo {choose_k}", b"skips jobs"),
        ("echo {uniq}", b"skips jobs"),
        ("echo {slot}", b"{%}"),
        ("echo {host} {sshlogin}", b"remote hosts"),
        ("echo {agrp}", b"remote hosts"),
        ("echo {hgrp}", b"remote hosts"),
        ("echo {#*.}", b"follows nothing"),
        ("echo {%a(?{print 1})}", b"(?...)"),
        ("echo {/\\Qa/b}", b"\\Q"),
        ("echo {/[[:alpha:]]/b}", b"POSIX"),
        ("echo {%a{2}", b"unescaped {"),
        ("echo {%%(?<=a+)b}", b"Python's re cannot take it"),
        ("echo {//a++/b}", b"possessive"),
        ("echo {^\\1}", b"\\1"),
        ("echo {,(a}", b"not closed"),
    ],
)
def test_forms_without_an_exact_equivalent_are_refused(
    tmp_path: Path, command: str, why: bytes
) -> None:
    r = parallel("--plus", command, ":::", "a", cwd=tmp_path, shell="bash")
    assert r.returncode == 255 and r.stdout == b""
    assert r.stderr.startswith(b"polytask parallel: error: COMMAND: --plus: ")
    assert why in r.stderr and r.stderr.count(b"\n") == 1
    if "\\1" in command:
        return  # --tagstring reads \1 as the octal escape first (GNU's unquote_printf)
    # In --tagstring too, before any job runs.
    r = parallel(
        "--plus", "--tagstring", command[5:], "echo", ":::", "a", cwd=tmp_path, shell="bash"
    )
    assert r.returncode == 255 and r.stdout == b"" and why in r.stderr
    assert r.stderr.startswith(b"polytask parallel: error: --tagstring: --plus: ")


def test_without_plus_the_strings_are_text(tmp_path: Path) -> None:
    r = parallel("-k", "echo", "{+.}", "{##}", "{:-x}", ":::", "a.b", cwd=tmp_path, shell="bash")
    assert (r.returncode, r.stdout) == (0, b"{+.} {##} {:-x} a.b\n")


def test_every_form_spells_back_to_itself() -> None:
    # -X repeats a word by spelling its strings again: the spelling must read the same.
    command = " ".join(FIXED + DYNAMIC[:5] + DYNAMIC[6:] + ["{1..}", "{-2:-x}", "{##}", "{0#}"])
    parts = spec._split_parts(command, plus=True)
    repls = [p for p in parts if isinstance(p, spec.Repl)]
    assert len(repls) == len(FIXED) + len(DYNAMIC) - 1 + 4
    for r in repls:
        assert spec._split_parts(r.spelling(), plus=True) == [r]


def test_a_perl_regexp_is_refused_or_means_the_same() -> None:
    # What is taken: the Python spelling of the same regexp, on bytes.
    assert spec._perl_regex(rb"a.[b-d\d]+?\.x*|^\s$", "t") == rb"a.[\x62-\x64\d]+?\x2ex*|^\s$"
    assert spec._perl_regex(rb"a\z", "t") == rb"a\Z"
    # Bytes, as Perl sees them: {:1} cuts the first byte of a two-byte character.
    assert spec.replace_value("é", ":1") == "\udca9"
    assert spec.replace_value("é.gz", "^^.") == "é.GZ"
    assert spec._perl_regex(rb"a\Z", "t") == rb"a(?=\n?\Z)"
    assert spec._ungreedy(rb"a*b+c?[*+]\*") == rb"a*?b+?c?[*+]\*"
    for bad in (b"a\\", rb"(?i)a", rb"(?P<n>a)", rb"a{1,2}", rb"\p{L}", rb"*a", rb"a|*b", rb"\8"):
        with pytest.raises(spec.QuotingError):
            spec._perl_regex(bad, "t")


# ------------------------------------------------------------------ hostile inputs

PLUS_MODS = ["+/", "+.", "+..", "+...", "..", "...", "/..", "/...", ":-d", ":1", ":1:4"]
PLUS_MODS += ["#*.", "%.gz", "%%\\..*", "/$/X", "//[$`]/_", "^t", "^^[a-z]", ",,[A-Z]"]
PLUS_MODS.remove("#*.")  # refused
PLUS_MODS.append("##[^/]*/")


def _value(v: bytes, mod: str) -> bytes:
    return os.fsencode(spec.replace_value(os.fsdecode(v), mod))


# (COMMAND, what each job prints for an input, given the value of the string).
PLUS_CONTEXTS: list[tuple[str, str]] = [
    ("printf '%s' {S}", "plain"),
    ("printf '%s' 'in single quotes: {S}'", "single"),
    ('printf "%s" "in double quotes: {S}"', "double"),
    ("printf '%s' \"$(printf '%s' {S})\"", "subst"),
    ("sh -c 'printf \"%s\" {S}'", "plain"),
    ("x={S}; printf '%s' \"$x\"", "plain"),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("command", "kind"), PLUS_CONTEXTS, ids=[c for c, _ in PLUS_CONTEXTS])
def test_hostile_inputs_through_every_plus_string(
    tmp_path: Path, shell: str, command: str, kind: str
) -> None:
    # One job per input, every --plus string in it, each value followed by a NUL.
    text = "; ".join(command.replace("{S}", "{" + m + "}") + "; printf '\\0'" for m in PLUS_MODS)
    text += "; printf '%s\\0' {0#} {##} {0%} END"
    values = [v for v in CORPUS if len(v) < 1000]  # 20 copies must fit in sh -c's one argument
    work = tmp_path / "w"
    work.mkdir()
    r = parallel("-k", "-j2", "-0", "--plus", text, ":::", *values, cwd=work, shell=shell)
    nothing_ran(work)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-500:]
    fields = r.stdout.split(b"\0")
    assert fields.pop() == b""
    n = len(PLUS_MODS) + 4  # and {0#} {##} {0%} END
    jobs = [fields[i : i + n] for i in range(0, len(fields), n)]
    assert len(jobs) == len(values) and all(job[-1] == b"END" for job in jobs)
    prefix = {"plain": b"", "subst": b"", "single": b"in single quotes: "}
    prefix["double"] = b"in double quotes: "
    width = len(str(len(values)))
    for i, (value, got) in enumerate(zip(values, jobs, strict=True), 1):
        wanted = []
        for m in PLUS_MODS:
            v = _value(value, m)
            wanted.append(prefix[kind] + (strip_nl(v) if kind == "subst" else v))
        wanted += [str(i).zfill(width).encode(), str(len(values)).encode()]
        assert got[:-2] == wanted, (value, r.stderr[-300:])
        assert got[-2] in (b"1", b"2")  # {0%} at -j2


@pytest.mark.parametrize("shell", SHELLS)
def test_text_from_the_command_is_data_too(tmp_path: Path, shell: str) -> None:
    # The str of {/re/str} and {:-str} lands in the job as a value: quoted like an input.
    work = tmp_path / "w"
    work.mkdir()
    r = parallel(
        "-k",
        "--plus",
        "printf '%s\\n' {:-$(touch PWNED1)} '{/a/`touch PWNED2`}' \"{//a/$(touch PWNED3)}\"",
        ":::",
        "",
        "a",
        cwd=work,
        shell=shell,
    )
    nothing_ran(work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (b"$(touch PWNED1)\n\n\n" + b"a\n`touch PWNED2`\n$(touch PWNED3)\n")


def test_with_dash_i_and_results_paths(gnu_parallel: str, tmp_path: Path) -> None:
    g, p = both(
        gnu_parallel,
        tmp_path,
        ["-k", "-I", "XX", "--plus", "echo", "XX", "{+.}", "{1..}", ":::", "a.b.c"],
    )
    assert (p.out, p.rc) == (g.out, g.rc) == ("a.b.c c a\n", 0)
    g, p = both(
        gnu_parallel,
        tmp_path,
        ["--plus", "--results", "o/{+.}/{0#}", "echo", "{/..}", ":::", "d/a.x.z", "b.y"],
    )
    assert (p.out, p.rc) == (g.out, g.rc)
    assert p.files() == g.files()
    assert p.files()["o/z/1"] == "a\n" and "o/y/2" in p.files()
