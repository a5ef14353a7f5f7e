"""Procfile, env file and -c parsing: pure functions, no processes."""

from __future__ import annotations

import pickle

import pytest

from polytask._core.errors import PolytaskError, ProcfileError
from polytask._procfile import (
    DEFAULT_BASE_PORT,
    Instance,
    base_port,
    expand,
    parse_concurrency,
    parse_env,
    parse_procfile,
    procfile_from_mapping,
)

GOOD = """\
# a comment
web: python -m http.server $PORT

worker: python worker.py --queue=a:b
  clock-1 :   python clock.py
"""


def test_parse_keeps_order_lines_and_colons_in_commands():
    pf = parse_procfile(GOOD + "clock-1:python clock.py\n", source="Procfile")
    assert pf.names == ("web", "worker", "clock-1")
    assert pf["worker"].command == "python worker.py --queue=a:b"
    assert [e.line for e in pf.entries] == [2, 4, 6]
    assert pf["clock-1"].command == "python clock.py"
    assert "web" in pf and "nope" not in pf and len(pf) == 3
    # The indented line 5 is skipped, as foreman and honcho skip it.
    assert [(s[1], s[2].split(":")[0]) for s in pf.skipped] == [(5, "indented line 'clock-1 ")]
    with pytest.raises(KeyError):
        pf["nope"]


def test_crlf_and_blank_only_lines():
    pf = parse_procfile("web: a\r\n\r\n   \r\nworker: b\r\n")
    assert pf.names == ("web", "worker")
    assert pf["web"].command == "a"


SKIPPED_LINES = [
    ("web: a\n\nworker:\n", 3, "empty command for process 'worker'"),
    ("web: a\njust words\n", 2, "expected 'name: command'"),
    ("web: a\nmy web: a\n", 2, "invalid process name 'my web'"),
    ("web: a\nweb.v2: a\n", 2, "invalid process name 'web.v2'"),
    ("web: a\nworker : a\n", 2, "invalid process name 'worker '"),
    ("web: a\n: a\n", 2, "missing process name"),
    ("web: a\n  worker: b\n", 2, "indented line 'worker: b'"),
    ("web: a\n\tworker: b\n", 2, "indented line 'worker: b'"),
]


@pytest.mark.parametrize("text, line, fragment", SKIPPED_LINES)
def test_lines_foreman_and_honcho_skip_are_skipped_with_their_line(text, line, fragment):
    pf = parse_procfile(text, source="Procfile")
    assert pf.names == ("web",)
    assert len(pf.skipped) == 1
    source, number, why = pf.skipped[0]
    assert (source, number) == ("Procfile", line)
    assert fragment in why and "--strict makes it an error" in why


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("web: a\nweb: b\n", 2, "duplicate process name 'web' (first defined on line 1)"),
        *SKIPPED_LINES,
    ],
)
def test_each_problem_has_its_line_number(text, line, fragment):
    with pytest.raises(ProcfileError) as info:
        parse_procfile(text, source="Procfile", strict=True)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, PolytaskError)
    assert err.problems[0][1] == line
    assert f"Procfile:{line}: " in str(err)
    assert fragment in str(err)


def test_every_problem_is_reported_and_first_line_summarises():
    text = "web: a\nweb: b\nbad\nx:\n"
    with pytest.raises(ProcfileError) as info:
        parse_procfile(text, source="P", strict=True)
    err = info.value
    assert [p[1] for p in err.problems] == [2, 3, 4]
    assert err.first_line().startswith("P:2: duplicate")
    assert "and 2 more problems" in err.first_line()
    assert "\n" not in err.first_line()
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   # indented comment\n"])
def test_empty_procfile_is_an_error(text):
    with pytest.raises(ProcfileError, match="no processes defined"):
        parse_procfile(text)


def test_a_procfile_of_skipped_lines_only_is_an_error_that_says_so():
    with pytest.raises(ProcfileError, match=r"2 line\(s\) skipped: run 'polytask check'"):
        parse_procfile("web.v2: a\nnothing\n")


def test_mapping_form_accepts_strings_and_argv_lists():
    pf = procfile_from_mapping({"web": "python app.py", "job": ["python", "-c", "print(1)"]})
    assert pf["web"].command == "python app.py"
    assert pf["job"].command == ("python", "-c", "print(1)")
    assert pf["web"].line is None


@pytest.mark.parametrize(
    "mapping, fragment",
    [
        ({}, "no processes given"),
        ({"web": ""}, "empty command"),
        ({"web": []}, "empty command"),
        ({"a b": "x"}, "invalid process name"),
        ({"web": 3}, "must be a string or a list of strings"),
    ],
)
def test_mapping_form_is_validated(mapping, fragment):
    with pytest.raises(ProcfileError, match=fragment):
        procfile_from_mapping(mapping)


def test_concurrency_specs():
    assert parse_concurrency(None) == {}
    assert parse_concurrency("web=2,worker=3") == {"web": 2, "worker": 3}
    assert parse_concurrency(["web=2", " worker = 0 "]) == {"web": 2, "worker": 0}
    assert parse_concurrency({"web": 4}) == {"web": 4}


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("web", "malformed concurrency 'web'"),
        ("web:2", "malformed concurrency"),
        ("web=", "malformed concurrency"),
        ("=2", "malformed concurrency"),
        ("web=two", "is not a whole number"),
        ("web=-1", "between 0 and 100"),
        ("web=101", "between 0 and 100"),
        ("web=1,web=2", "given twice"),
        ("web=1,,worker=2", "malformed concurrency ''"),
    ],
)
def test_malformed_concurrency(spec, fragment):
    with pytest.raises(ProcfileError, match=fragment) as info:
        parse_concurrency(spec)
    assert info.value.problems[0][0] == "-c"


def test_expand_gives_foreman_ports_and_names():
    pf = parse_procfile("web: a\nworker: b\nclock: c\n")
    out = expand(pf, {"web": 2, "worker": 3})
    assert [(i.name, i.port) for i in out] == [
        ("web.1", 5000),
        ("web.2", 5001),
        ("worker.1", 5100),
        ("worker.2", 5101),
        ("worker.3", 5102),
        ("clock.1", 5200),
    ]
    assert out[0] == Instance("web", 1, "a", 5000)


def test_expand_subset_keeps_each_types_port_and_honours_base_and_zero():
    pf = parse_procfile("web: a\nworker: b\nclock: c\n")
    out = expand(pf, {"worker": 0}, ["clock", "web"], base_port=8000)
    assert [(i.name, i.port) for i in out] == [("web.1", 8000), ("clock.1", 8200)]


@pytest.mark.parametrize(
    "counts, names, base, fragment",
    [
        ({"nope": 1}, None, 5000, "unknown process 'nope' (the Procfile defines: web, worker)"),
        (None, ["web", "nope"], 5000, "unknown process 'nope'"),
        ({"web": 0, "worker": 0}, None, 5000, "nothing to start"),
        (None, None, 65500, "above 65535"),
        (None, None, 0, "not between 1 and 65535"),
    ],
)
def test_expand_problems(counts, names, base, fragment):
    pf = parse_procfile("web: a\nworker: b\n")
    with pytest.raises(ProcfileError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        expand(pf, counts, names, base_port=base)


def test_env_file_parsing_with_dotenv():
    env = parse_env('A=1\nexport B="two words"\n# note\nC=${A}x\nEMPTY=\nNOVALUE\n')
    assert env == {"A": "1", "B": "two words", "C": "1x", "EMPTY": ""}


@pytest.mark.parametrize(
    "line, expected",
    [
        ("X=$A", "1"),
        ("X=${A}x", "1x"),
        ("X=$A-$B", "1-two"),
        ('X="$A and ${B}"', "1 and two"),
        ("X='$A'", "$A"),  # single quotes: literal
        ("X=\\$A", "$A"),  # \$: literal
        ('X="\\$A"', "$A"),
        ("X=$NOPE.", "."),  # unset: empty, as a shell
        ("X=${NOPE:-dflt}", "dflt"),
        ("X=$HOME", "/home/test"),  # from the environment
        ("X=costs $5", "costs $5"),  # $ not followed by a name stays
        ("X=$", "$"),
    ],
)
def test_env_file_expands_dollar_var_and_braces(line, expected):
    env = parse_env(f"A=1\nB=two\n{line}\n", environ={"HOME": "/home/test", "A": "env"})
    assert env["X"] == expected
    assert env["A"] == "1"  # the file's own key wins over the environment


def test_env_files_expand_from_earlier_files(tmp_path):
    from polytask._supervisor import load_env_files

    (tmp_path / "a.env").write_text("ROOT=/srv\n")
    (tmp_path / "b.env").write_text("DATA=$ROOT/data\n")
    env = load_env_files([tmp_path / "a.env", tmp_path / "b.env"], environ={})
    assert env == {"ROOT": "/srv", "DATA": "/srv/data"}


def test_concurrency_all_as_foreman():
    pf = parse_procfile("web: a\nworker: b\nclock: c\n")
    counts = parse_concurrency("all=2,worker=0")
    assert counts == {"all": 2, "worker": 0}
    assert [i.name for i in expand(pf, counts)] == ["web.1", "web.2", "clock.1", "clock.2"]
    assert [i.name for i in expand(pf, parse_concurrency("web=3,all=0"))] == [
        "web.1",
        "web.2",
        "web.3",
    ]


def test_env_file_errors_carry_line_numbers():
    with pytest.raises(ProcfileError) as info:
        parse_env("A=1\nB='unterminated\n", source="dev.env")
    assert info.value.problems[0][:2] == ("dev.env", 2)
    assert "dev.env:2: cannot parse" in str(info.value)


# A NUL cannot reach a program (execve takes NUL-terminated strings): `polytask
# check` said OK and `polytask up` then failed with "internal error".
@pytest.mark.parametrize(
    ("text", "line", "where"),
    [
        ("A=1\nFOO=a\x00b\n", 2, "value of 'FOO'"),
        ('A=1\n\nBAR="x\x00y"\n', 3, "value of 'BAR'"),
        ("K\x00EY=1\n", 1, "name of 'K\\x00EY'"),
    ],
)
def test_env_file_nul_is_a_problem_of_its_line(text, line, where):
    with pytest.raises(ProcfileError) as info:
        parse_env(text, source="dev.env")
    assert info.value.problems[0][:2] == ("dev.env", line)
    assert where in str(info.value) and "NUL" in str(info.value)
    assert parse_env("# a comment with a NUL \x00 is harmless\nA=1\n") == {"A": "1"}


def test_procfile_command_with_nul_is_a_problem():
    with pytest.raises(ProcfileError, match=r"Procfile:2: the command of 'web' contains a NUL"):
        parse_procfile("ok: true\nweb: echo a\x00b\n")
    with pytest.raises(ProcfileError, match="NUL"):
        procfile_from_mapping({"web": ["echo", "a\x00b"]})


@pytest.mark.parametrize("where", ["env", "procfile"])
def test_check_and_up_both_report_a_nul(where, tmp_path, monkeypatch, capsys):
    from polytask.cli._up import main_check, main_up

    monkeypatch.chdir(tmp_path)
    if where == "env":
        (tmp_path / "Procfile").write_text("web: echo $FOO\n")
        (tmp_path / ".env").write_text("FOO=a\x00b\n")
        expected = ".env:1: the value of 'FOO' contains a NUL"
    else:
        (tmp_path / "Procfile").write_text("web: echo a\x00b\n")
        expected = "Procfile:1: the command of 'web' contains a NUL"
    # Both stop before anything starts, with exit status 2 (bad input).
    assert main_check([]) == 2
    assert expected in capsys.readouterr().err
    assert main_up([]) == 2
    err = capsys.readouterr().err
    assert expected in err and "internal error" not in err


def test_env_file_line_numbers_count_blank_lines():
    # python-dotenv gives a binding the line where the blank lines before it start.
    with pytest.raises(ProcfileError) as info:
        parse_env("A=1\n\n\nB='open\n", source="dev.env")
    assert info.value.problems[0][:2] == ("dev.env", 4)


@pytest.mark.parametrize(
    ("value", "port"),
    [
        (None, DEFAULT_BASE_PORT),
        ("", DEFAULT_BASE_PORT),
        ("  ", DEFAULT_BASE_PORT),
        ("7000", 7000),
        (" 7000\t", 7000),
    ],
)
def test_base_port_from_a_port_variable(value, port):
    assert base_port(value) == port


@pytest.mark.parametrize("value", ["abc", "70 00", "-5", "5000x", "\u0667\u0660\u0660\u0660"])
def test_a_port_variable_that_is_not_a_number_is_a_problem(value):
    # honcho refuses it too ("invalid value for port"); it was a silent 5000.
    with pytest.raises(ProcfileError, match="PORT"):
        base_port(value)
