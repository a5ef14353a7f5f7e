"""polytask.toml validation, pure: TOML text in, a config or every problem out."""

from __future__ import annotations

import signal

import pytest

from polytask import ProcfileError
from polytask._upconfig import (
    DEFAULT_READY_TIMEOUT,
    Probe,
    dependency_depth,
    dependency_order,
    missing_dependencies,
    parse_upconfig,
    scan_upconfig_text,
)

NAMES = ("db", "migrate", "web", "worker")

GOOD = """
[db]
ready = {tcp = 5432}
ready_timeout = 10

[migrate]
depends_on = {db = "ready"}

[web]
depends_on = {db = "ready", migrate = "completed"}
ready = {http = "http://127.0.0.1:$PORT/health"}
stop_signal = "INT"
stop_timeout = 2.5

[worker]
depends_on = {web = "started"}
ready = {log = "listening on \\\\d+"}
"""


def test_good_config() -> None:
    config = parse_upconfig(GOOD, NAMES)
    db = config.get("db")
    assert db.ready == Probe("tcp", "127.0.0.1:5432")
    assert db.ready_timeout == 10
    web = config.get("web")
    assert dict(web.depends_on) == {"db": "ready", "migrate": "completed"}
    assert web.ready is not None and web.ready.resolve(5100) == "http://127.0.0.1:5100/health"
    assert web.stop_signal is signal.SIGINT and web.stop_timeout == 2.5
    assert web.ready_timeout == DEFAULT_READY_TIMEOUT
    assert config.get("worker").ready == Probe("log", "listening on \\d+")
    assert dependency_order(config, ("worker", "web", "migrate", "db")) == [
        "db",
        "migrate",
        "web",
        "worker",
    ]


def test_depends_on_list_means_started() -> None:
    config = parse_upconfig("[web]\ndepends_on = ['db', 'migrate']\n", NAMES)
    assert dict(config.get("web").depends_on) == {"db": "started", "migrate": "started"}


def test_empty_config_is_falsy() -> None:
    assert not parse_upconfig("", NAMES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[nope]\n", "no process type 'nope' in the Procfile"),
        ("[web]\nreadyy = 1\n", "unknown key 'readyy'"),
        ("[web]\ndepends_on = {ghost = 'started'}\n", "no process type 'ghost'"),
        ("[web]\ndepends_on = {db = 'healthy'}\n", "condition must be one of"),
        ("[web]\ndepends_on = {web = 'started'}\n", "cannot depend on itself"),
        ("[web]\ndepends_on = 'db'\n", "depends_on must be a table"),
        ("[web]\ndepends_on = ['db', 3]\n", "depends_on must be a table"),
        ("[web]\nready = {tcp = 70000}\n", "not a port number"),
        ("[web]\nready = {tcp = 'localhost'}\n", "ready.tcp must be a port"),
        ("[web]\nready = {tcp = 1, http = 'http://x/'}\n", "exactly one of"),
        ("[web]\nready = {smoke = 'x'}\n", "unknown key 'smoke'"),
        ("[web]\nready = {http = 'ftp://x'}\n", "http:// or https:// URL"),
        ("[web]\nready = {log = '('}\n", "not a valid regular expression"),
        ("[web]\nready = 'curl x'\n", "ready must be a table"),
        ("[web]\nready_timeout = 0\n", "ready_timeout must be a number of seconds > 0"),
        ("[web]\nready_timeout = '30'\n", "ready_timeout must be"),
        ("[web]\nstop_signal = 'SIGNOPE'\n", "is not a signal"),
        ("[web]\nstop_timeout = -1\n", "stop_timeout must be"),
        ("[web]\ndepends_on = {db = 'ready'}\n", "db has no ready probe"),
        ("web = 3\n", "web must be a table"),
        ("[web\n", "invalid TOML"),
    ],
)
def test_problems(text: str, expected: str) -> None:
    config, problems = scan_upconfig_text(text, NAMES)
    assert any(expected in p[2] for p in problems), problems
    with pytest.raises(ProcfileError, match="polytask.toml"):
        parse_upconfig(text, NAMES)


def test_cycle() -> None:
    text = """
[db]
depends_on = {worker = "started"}
[web]
depends_on = {db = "started"}
[worker]
depends_on = {web = "completed"}
"""
    _, problems = scan_upconfig_text(text, NAMES)
    assert [p[2] for p in problems] == [
        "dependency cycle: db -> worker -> web -> db; no order can start them"
    ]


def test_every_problem_is_listed() -> None:
    _, problems = scan_upconfig_text("[web]\nx = 1\ny = 2\n[nope]\n", NAMES)
    assert len(problems) == 3


def test_pyproject_table() -> None:
    text = '[project]\nname = "x"\n[tool.polytask.up.web]\ndepends_on = {db = "started"}\n'
    config = parse_upconfig(text, NAMES, source="pyproject.toml", pyproject=True)
    assert dict(config.get("web").depends_on) == {"db": "started"}
    assert not parse_upconfig('[project]\nname = "x"\n', NAMES, pyproject=True)
    with pytest.raises(ProcfileError, match=r"pyproject.toml \[tool.polytask.up\]"):
        parse_upconfig("[tool.polytask.up.ghost]\n", NAMES, source="pyproject.toml", pyproject=True)


def _check(tmp_path, toml: str | None, *, pyproject: bool = False):
    import subprocess
    import sys

    (tmp_path / "Procfile").write_text("db: sleep 1\nweb: sleep 1\n")
    if toml is not None:
        name = "pyproject.toml" if pyproject else "polytask.toml"
        (tmp_path / name).write_text(toml)
    return subprocess.run(
        [sys.executable, "-m", "polytask", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_a_cycle(tmp_path) -> None:
    r = _check(
        tmp_path, '[db]\ndepends_on = {web = "started"}\n[web]\ndepends_on = {db = "started"}\n'
    )
    assert r.returncode == 2, r
    assert "polytask.toml: dependency cycle: db -> web -> db" in r.stderr


def test_check_accepts_a_config(tmp_path) -> None:
    r = _check(tmp_path, '[tool.polytask.up.web]\ndepends_on = {db = "started"}\n', pyproject=True)
    assert r.returncode == 0, r
    assert "settings from pyproject.toml [tool.polytask.up]" in r.stdout


def test_up_refuses_a_bad_config(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "Procfile").write_text("web: sleep 30\n")
    (tmp_path / "polytask.toml").write_text("[web]\nstop_timeout = 'soon'\n")
    r = subprocess.run(
        [sys.executable, "-m", "polytask", "up"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r
    assert "stop_timeout must be a number of seconds" in r.stderr
    assert "started" not in r.stdout


def test_depth_and_missing_dependencies() -> None:
    config = parse_upconfig(GOOD, NAMES)
    assert dependency_depth(config, NAMES) == 4  # db <- migrate <- web <- worker
    assert dependency_depth(parse_upconfig("", NAMES), NAMES) == 1
    assert missing_dependencies(config, ["web", "worker"]) == [
        (
            "polytask.toml",
            None,
            "web depends on db, which is not in this run (not named, or 0 copies): "
            "run db too, or leave web out",
        ),
        (
            "polytask.toml",
            None,
            "web depends on migrate, which is not in this run (not named, or 0 copies): "
            "run migrate too, or leave web out",
        ),
    ]
    assert missing_dependencies(config, NAMES) == []


def test_check_and_up_refuse_a_subset_without_its_dependency(tmp_path) -> None:
    import subprocess
    import sys

    r = _check(tmp_path, '[web]\ndepends_on = {db = "started"}\n')
    assert r.returncode == 0, r
    for cmd in ("check", "up"):
        r = subprocess.run(
            [sys.executable, "-m", "polytask", cmd, "web"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r
        assert "web depends on db, which is not in this run" in r.stderr


def test_a_broken_pyproject_without_our_table_changes_nothing(tmp_path) -> None:
    r = _check(tmp_path, "[project\nname = 'x'\n", pyproject=True)
    assert r.returncode == 0, r
    assert "settings from" not in r.stdout
