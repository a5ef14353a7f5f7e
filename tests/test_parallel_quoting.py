"""An input is only ever data: hostile inputs in every shell context, on dash and bash.

Each test runs ``python -m polytask.cli parallel`` on a COMMAND that echoes
its input back with ``printf '%s'`` and a NUL after each job, over a corpus
of inputs that would create a file if a shell ever ran them. It asserts that
no file appears in the job's working directory (the canary) and that each
job printed exactly the input's bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from polytask._parallel_spec import replace_value

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]

# Every one of these creates a file if a shell reads any part of it as code.
HOSTILE: list[bytes] = [
    b"$(touch PWNED1)",
    b"`touch PWNED2`",
    b";touch PWNED3",
    b"|touch PWNED4",
    b"&touch PWNED5&",
    b"x\ntouch PWNED6\n",
    b"'$(touch PWNED7)'",
    b'"$(touch PWNED8)"',
    b"'\"'\"'$(touch PWNED9)'\"'\"'",
    b"\\'$(touch PWNED10)\\'",
    b'\\"`touch PWNED11`\\"',
    b"')`touch PWNED12`('",
    b">PWNED13",
    b"$(touch${IFS}PWNED14)",
    b"\\$(touch PWNED15)",
    b"$'\\x27'$(touch PWNED16)",
    b"}$(touch PWNED17){",
    b"\\\n$(touch PWNED18)",
    b"#\ntouch PWNED19",
    b"!$(touch PWNED20)",
]
# And these must come through unchanged.
PLAIN: list[bytes] = [
    b"plain",
    b"a b",
    b"'",
    b'"',
    b"\\",
    b"$HOME",
    b"*",
    b"?",
    b"~",
    b"-n",
    b" lead and trail ",
    b"\ttab",
    b"",
    b"'\"'\"'",
    b"\\'",
    b"${IFS}",
    b"!",
    b"#",
    b"d/s/f.tar.gz",
    b"caf\xc3\xa9",
    b"\xff\xfe not utf-8",
    b"a=b,c",
    b"x" * 20000,
]
CORPUS = HOSTILE + PLAIN


def strip_nl(b: bytes) -> bytes:
    return b.rstrip(b"\n")  # what a command substitution does to its output


Expect = Callable[[bytes], bytes]

# (COMMAND, what each job prints for an input): one per shell context.
CONTEXTS: list[tuple[str, Expect]] = [
    ("printf '%s' {}", lambda v: v),
    ("printf '%s' 'in single quotes: {}'", lambda v: b"in single quotes: " + v),
    ('printf "%s" "in double quotes: {}"', lambda v: b"in double quotes: " + v),
    ('printf "%s" "`printf "%s" {}`"', strip_nl),
    ("printf '%s' \"$(printf '%s' {})\"", strip_nl),
    ("printf '%s' \"$(printf '%s' \"`printf '%s' '{}'`\")\"", strip_nl),
    ("printf '%s' \"`printf '%s' \\\"\\`printf '%s' '{}'\\`\\\"`\"", strip_nl),
    ("sh -c 'printf \"%s\" {}'", lambda v: v),
    ('sh -c "printf \'%s\' \\"{}\\""', lambda v: v),
    ("sh -c \"bash -c 'printf %s {}'\"", lambda v: v),
    ("eval \"printf '%s' '{}'\"", lambda v: v),
    ("(trap 'printf %s {}' EXIT)", lambda v: v),
    ("x={}; printf '%s' \"$x\"", lambda v: v),
    ("case {} in *) printf '%s' {};; esac", lambda v: v),
    ("printf '%s' {} # a comment: {}", lambda v: v),
    ('printf "%s" "${}"', lambda v: b"$" + v),
    ("printf '%s' \\{}", lambda v: v),
    ("cat <<EOF\n{}\nEOF", lambda v: v + b"\n"),
    ("cat <<'EOF'\n{}\nEOF", lambda v: v + b"\n"),
    ("printf '%s|' {} {.} \"{/}\" '{//}' \"$(printf '%s' {/.})\"", None),  # type: ignore[list-item]
]


def parallel(
    *argv: str | bytes, cwd: Path, shell: str, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=SRC, PARALLEL_SHELL=shutil.which(shell) or shell)
    return subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *argv],
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def run_corpus(
    command: str, values: list[bytes], tmp_path: Path, shell: str, *extra: str
) -> tuple[subprocess.CompletedProcess[bytes], list[bytes], Path]:
    work = tmp_path / f"work-{shell}"
    work.mkdir()
    # A newline ends whatever the COMMAND ends with (a here-document, a comment).
    # -0 (here and wherever the corpus goes after :::): an argument holding a
    # newline would be cut into several inputs at it, as GNU parallel's.
    r = parallel(
        "-k",
        "-j",
        "2",
        "-0",
        *extra,
        command + "\nprintf '\\0'",
        ":::",
        *values,
        cwd=work,
        shell=shell,
    )
    return r, r.stdout.split(b"\0")[:-1], work


def nothing_ran(work: Path) -> None:
    assert sorted(os.listdir(work)) == [], "an input was run as shell code"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("command", "expect"), CONTEXTS, ids=[c for c, _ in CONTEXTS])
def test_hostile_inputs_are_data_in_every_context(
    tmp_path: Path, shell: str, command: str, expect: Expect | None
) -> None:
    values = list(CORPUS)
    if "cat <<" in command:
        values = [v for v in values if b"\\\n" not in v or "'EOF'" in command]
    r, outputs, work = run_corpus(command, values, tmp_path, shell)
    nothing_ran(work)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert len(outputs) == len(values)
    for value, out in zip(values, outputs, strict=True):
        if expect is None:  # {} {.} {/} {//} {/.}
            v = os.fsdecode(value)
            parts = [replace_value(v, m) for m in ("", ".", "/", "//")]
            parts.append(replace_value(v, "/.").rstrip("\n"))
            wanted = b"".join(os.fsencode(p) + b"|" for p in parts)
        else:
            wanted = expect(value)
        assert out == wanted, (value, r.stderr[-500:])


@pytest.mark.parametrize("shell", SHELLS)
def test_the_reported_injections(tmp_path: Path, shell: str) -> None:
    # The four COMMANDs that ran their input before: {} inside the user's quotes.
    work = tmp_path / shell
    work.mkdir()
    for argv in (
        ['echo "file: {}"', ":::", "$(touch PWNED)"],
        ["echo 'file: {}'", ":::", "'$(touch PWNED)'"],
        ["sh", "-c", "'echo {}'", ":::", "$(touch PWNED)"],
        ['echo convert "{}" "{.}.jpg"', ":::", "a`touch PWNED`.png"],
    ):
        r = parallel(*argv, cwd=work, shell=shell)
        assert r.returncode == 0, r.stderr
        nothing_ran(work)
        assert b"touch PWNED" in r.stdout
    r = parallel("--dry-run", 'echo "file: {}"', ":::", "$(id)", cwd=work, shell=shell)
    assert r.stdout == b'echo "file: \\$(id)"\n'
    r = parallel("--dry-run", "sh", "-c", "'echo {}'", ":::", "$(id)", cwd=work, shell=shell)
    assert r.stdout == b"sh -c 'echo '\\''$(id)'\\'''\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_words_of_a_command_without_shell_syntax(tmp_path: Path, shell: str) -> None:
    # No shell of ours (argv), and -q: a word is the input as it is, except the
    # script of a shell's -c, which is quoted for that shell.
    r, outputs, work = run_corpus("printf %s {}", CORPUS, tmp_path, shell)
    nothing_ran(work)
    assert outputs == CORPUS
    work = tmp_path / "q"
    work.mkdir()
    r = parallel(
        "-k", "-0", "-q", "sh", "-c", "printf '%s\\0' {}", ":::", *CORPUS, cwd=work, shell=shell
    )
    nothing_ran(work)
    assert r.returncode == 0 and r.stdout.split(b"\0")[:-1] == CORPUS
    # sh -c {} and -q sh -c (the input appended): the input is a word of the
    # script, never the script itself.
    for argv in (["sh", "-c", "{}"], ["-q", "sh", "-c"]):
        r = parallel(*argv, ":::", "touch PWNED", "$(touch PWNED)", cwd=work, shell=shell)
        nothing_ran(work)
        assert r.returncode == 2 and r.stderr.count(b"not found") == 2


@pytest.mark.parametrize("shell", SHELLS)
def test_several_sources_and_numbers(tmp_path: Path, shell: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    r = parallel(
        "-k",
        "-j",
        "1",
        "printf '%s|' \"{1}\" '{2}' {#} {%}; printf '\\0'",
        ":::",
        "$(touch PWNED)",
        "a'b",
        ":::",
        "`touch PWNED`",
        '"',
        cwd=work,
        shell=shell,
    )
    nothing_ran(work)
    assert r.stdout.split(b"\0")[:-1] == [
        b"$(touch PWNED)|`touch PWNED`|1|1|",
        b'$(touch PWNED)|"|2|1|',
        b"a'b|`touch PWNED`|3|1|",
        b"a'b|\"|4|1|",
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_arithmetic_takes_numbers_only(tmp_path: Path, shell: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    joblog = tmp_path / "log"
    bad = ["a[$(touch PWNED)]", "1;touch PWNED", "HOME", "$(touch PWNED)"]
    r = parallel(
        "-k",
        "--joblog",
        str(joblog),
        "echo $(( {} * 2 ))",
        ":::",
        "21",
        *bad,
        "-4",
        cwd=work,
        shell=shell,
    )
    nothing_ran(work)
    assert r.stdout == b"42\n-8\n"
    assert r.returncode == len(bad)
    assert r.stderr.count(b"not run: the input") == len(bad)
    assert b"'a[$(touch PWNED)]' is not a number" in r.stderr
    lines = joblog.read_text().splitlines()[1:]
    refused = [line.split("\t") for line in lines if line.split("\t")[6] == "2"]
    assert len(refused) == len(bad)
    assert {row[8] for row in refused} == {"echo $(( {} * 2 ))"}  # the COMMAND, never run
    # --dry-run: the refused lines are said on stderr, not printed.
    r = parallel("--dry-run", "echo $(( {} * 2 ))", ":::", "3", "x", cwd=work, shell=shell)
    assert r.stdout == b"echo $(( 3 * 2 ))\n" and b"job 2 would not run" in r.stderr
    assert r.returncode == 1


@pytest.mark.parametrize("shell", SHELLS)
def test_an_input_cannot_end_a_here_document(tmp_path: Path, shell: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    # -0: else the newlines would cut the argument into inputs of their own, as GNU's.
    r = parallel(
        "-k", "-0", "cat <<EOF\n{}\nEOF", ":::", "ok", "x\nEOF\ntouch PWNED", cwd=work, shell=shell
    )
    nothing_ran(work)
    assert r.stdout == b"ok\n" and r.returncode == 1
    assert b"end it early" in r.stderr


def test_commands_that_cannot_be_made_safe_are_usage_errors(tmp_path: Path) -> None:
    for command in ("echo ${x:-{}}", 'sh -c "echo $(echo {})"', "echo 'unterminated {}"):
        r = parallel(command, ":::", "a", cwd=tmp_path, shell="bash")
        assert r.returncode == 255
        assert r.stderr.startswith(b"polytask parallel: error: COMMAND: ")
        assert r.stderr.count(b"\n") == 1 and r.stdout == b""


def test_a_shell_with_other_quoting_rules_is_refused(tmp_path: Path) -> None:
    # fish reads \' inside '...' and csh expands ! there: the quoting would not hold.
    for shell in ("/usr/bin/fish", "tcsh"):
        r = parallel('echo "{}"', ":::", "a", cwd=tmp_path, shell=shell)
        assert r.returncode == 255 and b"not a POSIX shell" in r.stderr
        r = parallel("echo", ":::", "a", cwd=tmp_path, shell=shell)  # no shell needed: runs
        assert r.returncode == 0 and r.stdout == b"a\n"


# Several inputs per job (-X, -m, -N, -n): each input still only data, wherever
# the COMMAND (or its repeated words, with -X) puts it.
MULTI: list[tuple[list[str], str, Callable[[bytes], bytes]]] = [
    (["-X"], "printf '%s\\0' 'x{}'", lambda v: b"x" + v),
    (
        ["-X"],
        'printf "%s\\0" "x{/}"',
        lambda v: b"x" + os.fsencode(replace_value(os.fsdecode(v), "/")),
    ),
    (["-m"], "printf '%s\\0' {}", lambda v: v),
    (["--xargs"], "printf '%s\\0' {}", lambda v: v),
    (["-N3"], "printf '%s\\0' {1} \"{2}\" '{3}'", lambda v: v),
    (["-n2"], "sh -c 'printf \"%s\\0\" {}'", lambda v: v),
    (["-N2"], "printf '%s\\0' \"`printf '%s' {-1}`\" \"$(printf '%s' {1})\"", strip_nl),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("opts", "command", "expect"), MULTI, ids=[" ".join([*o, c]) for o, c, _ in MULTI]
)
def test_hostile_inputs_several_per_job(
    tmp_path: Path, shell: str, opts: list[str], command: str, expect: Expect
) -> None:
    values = CORPUS[:42]  # a multiple of 2 and 3: no job short of an input
    work = tmp_path / "w"
    work.mkdir()
    r = parallel("-k", "-j", "2", "-0", *opts, command, ":::", *values, cwd=work, shell=shell)
    nothing_ran(work)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-500:]
    outputs = r.stdout.split(b"\0")[:-1]
    if "-N2" in opts:  # {-1} then {1}: the pair's second input, then its first
        values = [v for a, b in zip(values[::2], values[1::2], strict=True) for v in (b, a)]
    assert outputs == [expect(v) for v in values]


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_inputs_in_columns_names_and_links(tmp_path: Path, shell: str) -> None:
    # --colsep splits and trims white space (Perl's \s, as GNU): keep the values it leaves whole.
    values = [v for v in CORPUS if b"\t" not in v and v.strip(b" \t\n\r\f\v") == v]
    work = tmp_path / "w"
    work.mkdir()

    def outputs(*argv: str | bytes) -> list[bytes]:
        r = parallel("-k", "-j", "2", "-0", *argv, cwd=work, shell=shell)
        nothing_ran(work)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-500:]
        return r.stdout.split(b"\0")[:-1]

    pairs = [v + b"\t" + v for v in values]
    out = outputs("--colsep", "\t", "printf '%s\\0' {2} \"{1}\"", ":::", *pairs)
    assert out == [v for v in values for _ in (1, 2)]
    out = outputs("--header", ":", "printf '%s\\0' {col} '{col/}'", ":::", "col", *values)
    assert out == [w for v in values for w in (v, os.fsencode(replace_value(os.fsdecode(v), "/")))]
    out = outputs("-I", "@@", "printf '%s\\0' @@ \"x@@\"", ":::", *values)
    assert out == [w for v in values for w in (v, b"x" + v)]
    out = outputs("printf '%s\\0' {1} \"`printf '%s' {2}`\"", ":::", *values, ":::+", *values[::-1])
    assert out == [w for v, u in zip(values, values[::-1], strict=True) for w in (v, strip_nl(u))]


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_inputs_in_tags_verbose_and_results(tmp_path: Path, shell: str) -> None:
    import json

    values = [v for v in CORPUS if b"\xff" not in v]  # JSON holds text
    work = tmp_path / "w"
    work.mkdir()
    r = parallel(
        "-k",
        "-0",
        "-v",
        "--tagstring",
        "<{}>",
        "printf '%s\\0' {}",
        ":::",
        *values,
        cwd=work,
        shell=shell,
    )
    nothing_ran(work)
    assert r.returncode == 0 and r.stdout.count(b"\0") == len(values)
    r = parallel(
        "-k",
        "-0",
        "--results",
        "../out.json",
        "printf '%s' {}",
        ":::",
        *values,
        cwd=work,
        shell=shell,
    )
    nothing_ran(work)
    assert r.returncode == 0, r.stderr[-500:]
    rows = [json.loads(line) for line in (tmp_path / "out.json").read_text().splitlines()]
    assert [row["V"] for row in rows] == [[os.fsdecode(v)] for v in values]
    assert [row["Stdout"] for row in rows] == [os.fsdecode(v) for v in values]
