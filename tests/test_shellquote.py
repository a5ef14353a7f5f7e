"""The quoting rules of `polytask parallel` (_shellquote): pure, no processes.

What a shell then does with the quoted text is tested on dash and bash in
test_parallel_quoting.py; here: which context each replacement string lands
in, how a value is written there, and which COMMANDs and inputs are refused.
"""

from __future__ import annotations

import pytest

from polytask import _shellquote as sq
from polytask._parallel_spec import Repl, Template, UnsafeInput


def plans(command: str, shell: str = "bash") -> list[tuple[str, ...]]:
    """The layers (innermost first) of each replacement in ``command``."""
    return [layers for _, layers in Template.parse([command], shell=shell).plans]


def render(command: str, value: str, shell: str = "bash") -> str:
    return Template.parse([command], shell=shell).shell_text((value,), 1, 1)


def test_quote_word() -> None:
    assert sq.quote_word("plain-File_1.txt") == "plain-File_1.txt"
    assert sq.quote_word("") == "''"
    assert sq.quote_word("a b") == "'a b'"
    assert sq.quote_word("it's") == "'it'\\''s'"
    # = and , are quoted too: no assignment, no brace expansion.
    assert sq.quote_word("PATH=/x") == "'PATH=/x'"
    assert sq.quote_word("a,b") == "'a,b'"
    assert sq.quote_word("é") == "'é'"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo {}", [("word",)]),
        ("echo '{}'", [("sq",)]),
        ('echo "file: {}"', [("dq",)]),
        ("echo $'{}'", [("ansi",)]),
        ("echo `echo {}`", [("word", "bt")]),
        ('echo "`echo {}`"', [("word", "bt")]),
        ("echo `echo \\`echo {}\\``", [("word", "bt", "bt")]),
        ("echo $(echo {})", [("word",)]),
        ('echo "$(echo "{}")"', [("dq",)]),
        ("cat <(echo {})", [("word",)]),
        ("sh -c 'echo {}'", [("word", "sq")]),
        ('sh -c "echo {}"', [("word", "dq")]),
        ("sh -c \"echo '{}'\"", [("sq", "dq")]),
        ("bash -e -o pipefail -c 'echo \"{}\"'", [("dq", "sq")]),
        ("timeout 5 sh -c 'echo {}'", [("word", "sq")]),
        ("sh -c \"sh -c 'echo {}'\"", [("word", "sq", "dq")]),
        ("sh -c 'echo $1' sh {}", [("word",)]),  # an argument, not the script
        ("eval echo {}", [("word", "word")]),
        ("eval \"echo '{}'\"", [("sq", "dq")]),
        ("trap 'echo {}' EXIT", [("word", "sq")]),
        ("echo {} # {}", [("word",), ("comment",)]),
        ("echo \\{}", [("word\\",)]),
        ('echo "\\{}"', [("dq\\",)]),
        ("echo ${}", [("word$",)]),
        ('echo "${}"', [("dq$",)]),
        ("echo $x{}", [("word!",)]),
        ('echo "$x{}"', [("dq$",)]),
        ("echo ~{}", [("word!",)]),
        ("echo $(( {} + 1 ))", [("arith",)]),
        ("cat <<EOF\n{}\nEOF", [("hd",)]),
        ("cat <<'EOF'\n{}\nEOF", [("raw",)]),
        ("cat <<EOF\n$(echo {})\nEOF", [("word",)]),
        ("case {} in a) echo {};; esac", [("word",), ("word",)]),
        ('echo "$(case x in x) echo {};; esac)"', [("word",)]),
        ("f() { echo {}; }; f", [("word",)]),
        ('x={} y="{}" env', [("word",), ("dq",)]),
    ],
)
def test_contexts(command: str, expected: list[tuple[str, ...]]) -> None:
    assert plans(command) == expected


def test_numbers_only_where_bash_evaluates_arithmetic() -> None:
    for command in (
        "echo $(( {} + 1 ))",
        "(( {} > 1 ))",
        "echo $[ {} ]",
        "let x={}",
        "[[ {} -eq 3 ]]",
        "[ 3 -lt {} ]",
        "a[{}]=1",
        "declare -i n={}",
        'echo $(( $(echo "{}") ))',
    ):
        t = Template.parse([command], shell="bash")
        assert all(numeric for numeric, _ in t.plans), command
        assert "7" in t.shell_text(("7",), 1, 1)
        for bad in ("x", "a[$(id)]", "1;id", "HOME"):
            with pytest.raises(UnsafeInput, match="not a number"):
                t.shell_text((bad,), 1, 1)
    assert not any(n for n, _ in Template.parse(["[ {} = 3 ]"], shell="bash").plans)


@pytest.mark.parametrize(
    ("command", "value", "text"),
    [
        ('echo "file: {}"', "$(id)", 'echo "file: \\$(id)"'),
        ("echo 'file: {}'", "a'$(id)", "echo 'file: a'\\''$(id)'"),
        ("echo {}", "a b", "echo 'a b'"),
        ("echo {}", "", "echo ''"),
        ("echo $'{}'", "a'\\", "echo $'a\\'\\\\'"),
        ("echo `echo {}`", "$x`y", "echo `echo '\\$x\\`y'`"),
        ("sh -c 'echo {}'", "it's", "sh -c 'echo '\\''it'\\''\\'\\'''\\''s'\\'''"),
        ("echo ${}", "x", "echo $''x"),
        ('echo "${}"', "(id)", 'echo "$""(id)"'),
        ("echo $x{}", "y", "echo $x'y'"),
        ("echo \\{}", ";id", "echo \\\n';id'"),
        ("echo {} # {}", "a\nid", "echo 'a\nid' # a id"),
        ("cat <<EOF\n{}\nEOF", "$(id)`x`\\", "cat <<EOF\n\\$(id)\\`x\\`\\\\\nEOF"),
    ],
)
def test_values_written_for_their_context(command: str, value: str, text: str) -> None:
    assert render(command, value) == text


def test_every_replacement_string_is_quoted_for_its_context() -> None:
    strings = ["{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", "{1}", "{2}", "{1.}", "{2/.}"]
    for wrap, layers in (
        ("{}", ("word",)),
        ("'{}'", ("sq",)),
        ('"{}"', ("dq",)),
        ("`echo {}`", ("word", "bt")),
        ("$(echo {})", ("word",)),
        ("sh -c 'echo {}'", ("word", "sq")),
    ):
        command = "echo " + " ".join(wrap.replace("{}", s) for s in strings)
        t = Template.parse([command], shell="bash")
        assert t.plans == ((False, layers),) * len(strings), wrap


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("echo ${x:-{}}", r"inside \$\{\.\.\.\}"),
        ('echo "${x:-{}}"', r"inside \$\{\.\.\.\}"),
        ('sh -c "echo $(echo {})"', "read again as shell code"),
        ("sh -c \"echo `echo '{}'`\"", "read again as shell code"),
        ('eval "$(echo {})"', "read again as shell code"),
        ('echo "`echo \\"$(echo {})\\"`"', "before it undoes the backslashes"),
        ("echo 'unterminated {}", "never closed"),
        ('echo "unterminated {}', "never closed"),
        ("echo `unterminated {}", "never closed"),
        ("echo $(echo {}", "never closed"),
        ("echo {} )", "closes nothing"),
        ("cat <<{}\nx\n{}", "delimiter"),
        ("cat <<EOF\n${}\nEOF", "right after '\\$'"),
        ("cat <<EOF\n$x{}\nEOF", "would join the name"),
        ('cat <<EOF\n`echo "{}"`\nEOF', "use \\$\\(...\\)"),
        ("sh -c 'cat <<EOF\n{}\nEOF'", "cannot be checked"),
    ],
)
def test_commands_that_cannot_be_made_safe_are_refused(command: str, why: str) -> None:
    with pytest.raises(sq.QuotingError, match=why):
        Template.parse([command], shell="bash")


def test_heredoc_cannot_be_ended_by_an_input() -> None:
    for command in ("cat <<EOF\n{}\nEOF", "cat <<'EOF'\nx {}\nEOF", "cat <<-EOF\n\t{}\n\tEOF"):
        t = Template.parse([command], shell="bash")
        assert t.shell_text(("EOF is fine mid-line",), 1, 1)
        for bad in ("x\nEOF\nid", "\nEOF", "x\n\t\tEOF\n"):
            if "<<-" not in command and "\t" in bad:
                continue
            with pytest.raises(UnsafeInput, match="here-document"):
                t.shell_text((bad,), 1, 1)
    with pytest.raises(UnsafeInput, match="here-document"):
        Template.parse(["cat <<EOF\n{}\nEOF"], shell="bash").shell_text(("EOF",), 1, 1)


def test_script_pending() -> None:
    sp = sq.script_pending
    assert sp(["sh", "-c"]) == "either"
    assert sp(["/bin/bash", "-ec"]) == "bash"
    assert sp(["dash", "-e", "-c"]) == "posix"
    assert sp(["bash", "-o", "pipefail", "-c"]) == "bash"
    assert sp(["bash", "-c", "-o"]) is None  # -o takes the next word
    assert sp(["timeout", "5", "zsh", "-c"]) == "bash"
    assert sp(["sh", "-c", "echo hi"]) is None
    assert sp(["sh", "script.sh", "-c"]) is None
    assert sp(["grep", "-c"]) is None
    assert sp(["sh", None, "-c"]) is None


def test_sh_is_either_shell_and_both_readings_must_agree() -> None:
    # dash reads $'...' as $ and '...', bash as one string: no safe plan for both.
    with pytest.raises(sq.QuotingError, match="dash and bash"):
        Template.parse(["echo $'{}'"], shell="/bin/sh")
    assert Template.parse(["echo $'{}'"], shell="/bin/bash").plans == ((False, ("ansi",)),)
    with pytest.raises(sq.QuotingError, match="dash and bash"):
        Template.parse(["sh -c \"echo \\$'{}'\""], shell="/bin/bash")
    # ((...)) is arithmetic to bash, two subshells to dash: numbers suit both.
    t = Template.parse(["(( {} > 1 )) && echo big"], shell="sh")
    assert t.plans == ((True, ("word",)),)
    assert sq.dialect("/usr/bin/dash") == "posix" and sq.dialect("zsh") == "bash"
    assert sq.dialect("/bin/sh") == sq.dialect("fish") == "either"


def test_argv_words_quote_only_a_shells_script() -> None:
    t = Template.parse(["sh", "-c", "echo {}", "sh", "{}"], quote=True)
    assert t.argv_plans == ((False, ("word", "raw")), (False, ("raw",)))
    assert t.argv(("$(id)",), 1, 1) == ["sh", "-c", "echo '$(id)'", "sh", "$(id)"]
    # Without -q a COMMAND with no shell syntax runs with no shell, as argv.
    t = Template.parse(["sh", "-c", "{}"])
    assert not t.needs_shell
    assert t.argv(("rm -rf ~",), 1, 1) == ["sh", "-c", "'rm -rf ~'"]
    assert t.argv_plans == ((False, ("word", "raw")),)
    t = Template.parse(["printf", "%s", "{}"])
    assert t.argv(("a b", "c"), 1, 1) == ["printf", "%s", "a b", "c"]


def test_appended_arguments_are_quoted_where_they_land() -> None:
    # No replacement string: the inputs are appended, and quoted for where
    # they land (here the script of sh -c, which GNU parallel would run).
    t = Template.parse(["sh", "-c"], quote=True)
    assert t.argv(("touch x",), 1, 1) == ["sh", "-c", "'touch x'"]
    t = Template.parse(["echo hi #"])
    assert t.shell_text(("a\nid",), 1, 1) == "echo hi # a id"
    assert t.source() == "echo hi #"


def test_planned_once_per_template(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Template.parse(['sh -c "echo \'{}\'" && echo "$(echo `echo {}`)"'], shell="bash")

    def no_lexing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the COMMAND was lexed again for a job")

    monkeypatch.setattr(sq, "_Lexer", no_lexing)
    monkeypatch.setattr(sq, "_lex", no_lexing)
    for i in range(50):
        assert str(i) in t.shell_text((str(i),), i, 1)


def test_source_spells_every_replacement_string() -> None:
    command = "echo {} {.} {/} {//} {/.} {#} {%} {1} {2.} {3/.}"
    assert Template.parse([command]).source() == command
    assert Repl("arg", 2, "//").spelling() == "{2//}"
