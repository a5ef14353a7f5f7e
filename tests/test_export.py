"""``polytask export`` side by side with ``honcho export`` (2.x), and read back by the real parsers.

The comparison runs both tools on the same Procfile and .env and checks the
same files, commands, environments, ports and names come out; where polytask
chooses differently (docs/up.md, "Export to systemd / supervisord") the test
asserts polytask's form. Every value is then read back the way its consumer
reads it: systemd's own loader (``systemd --test`` dumps the parsed units,
``systemd-analyze verify`` checks them) and supervisord's lexers (configparser,
``shlex.split`` for the command, supervisor's environment lexer).
"""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import apt_install
from polytask.cli._export import main_export

HONCHO = str(Path(sys.executable).with_name("honcho"))
SRC = str(Path(__file__).resolve().parents[1] / "src")
SYSTEMD = "/lib/systemd/systemd"

PROCFILE = (
    "web: python -m http.server $PORT\n"
    "worker: python worker.py --queue default\n"
    "clock: python clock.py\n"
)
DOTENV = 'A=1\nB="x y"\nURL=http://db:5432/app\n'


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PORT", None)
    return e


@pytest.fixture(autouse=True)
def _no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)


def app_dir(tmp_path: Path, procfile: str = PROCFILE, dotenv: str | None = DOTENV) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "Procfile").write_text(procfile)
    if dotenv is not None:
        (root / ".env").write_text(dotenv)
    return root


def honcho_export(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("honcho")
    return subprocess.run(
        [HONCHO, "export", *args],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def export(*args: str) -> int:
    return main_export(list(args))


def files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- systemd syntax


_C = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "s": " "}


def systemd_words(value: str, *, exec_line: bool = False) -> list[str]:
    """Split a unit-file value as systemd 252 does (systemd.syntax(7)), for the tests.

    Whitespace separates words; '...' and "..." quote (anywhere in a word);
    backslash C escapes are decoded; then ``%%`` is ``%`` and, on Exec lines,
    ``$$`` is ``$`` (what systemd substitutes when it runs the command).
    """
    words: list[str] = []
    cur: list[str] | None = None
    quote = ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            nxt = value[i + 1]
            if nxt == "x":
                ch, i = chr(int(value[i + 2 : i + 4], 16)), i + 3
            else:
                ch, i = _C[nxt], i + 1
            cur = (cur or []) + [ch]
        elif quote:
            if ch == quote:
                quote = ""
            else:
                cur = (cur or []) + [ch]
        elif ch in "'\"":
            quote, cur = ch, cur or []
        elif ch.isspace():
            if cur is not None:
                words.append("".join(cur))
            cur = None
        else:
            cur = (cur or []) + [ch]
        i += 1
    assert not quote, f"unterminated quote in {value!r}"
    if cur is not None:
        words.append("".join(cur))
    words = [w.replace("%%", "\0").replace("\0", "%") for w in words]
    if exec_line:
        words = [w.replace("$$", "$") for w in words]
    return words


def unit_lines(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, raw value), ...]}``, keys repeated as systemd allows."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = []
        else:
            key, _, value = line.partition("=")
            out[section].append((key, value))
    return out


def service_view(text: str) -> dict[str, object]:
    """What a service unit means: its settings, its environment and its argv."""
    lines = unit_lines(text)
    service = lines["Service"]
    env = {}
    for key, value in service:
        if key == "Environment":
            for word in systemd_words(value):
                k, _, v = word.partition("=")
                env[k] = v
    (exec_start,) = [v for k, v in service if k == "ExecStart"]
    return {
        "unit": dict(lines["Unit"]),
        "service": {k: v for k, v in service if k not in ("Environment", "ExecStart")},
        "install": dict(lines["Install"]),
        "env": env,
        "argv": systemd_words(exec_start, exec_line=True),
    }


# --------------------------------------------------------------------------- systemd's own parser


def _systemd_reason() -> str | None:
    if not Path(SYSTEMD).exists() or shutil.which("systemd-analyze") is None:
        return "systemd is not installed here"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "systemd refuses --test as root and setpriv is missing"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "no 'nobody' user to run systemd --test as"
    return None


@pytest.fixture(scope="session")
def systemd_installed() -> None:
    """systemd's own tools, installed with apt-get where missing (CI is root)."""
    if not Path(SYSTEMD).exists() or shutil.which("systemd-analyze") is None:
        apt_install("systemd")
    why = _systemd_reason()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def runit_installed() -> None:
    """runit's chpst, installed with apt-get where missing (CI is root)."""
    if shutil.which("chpst") is None:
        why = apt_install("runit")
        if shutil.which("chpst") is None:
            pytest.skip(why or "runit's chpst is not installed")


needs_systemd = pytest.mark.usefixtures("systemd_installed")


def systemd_dump(units: Path, unit: str) -> dict[str, dict[str, list[str]]]:
    """Load ``unit`` from ``units`` with systemd itself and return what it parsed.

    ``systemd --test --user`` loads the unit files, resolves specifiers and
    prints every setting as it understood it (it refuses to run as root, so
    as root it runs as nobody on a world-readable copy).
    """
    work = Path(tempfile.mkdtemp(prefix="polytask-systemd-"))
    try:
        copy = work / "units"
        shutil.copytree(units, copy)
        runtime = work / "runtime"
        runtime.mkdir(mode=0o700)
        prefix: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chmod(work, 0o755)
            for p in [copy, *copy.iterdir()]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            os.chown(runtime, nobody.pw_uid, nobody.pw_gid)
            prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
            prefix.append("--clear-groups")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            "XDG_RUNTIME_DIR": str(runtime),
            "SYSTEMD_UNIT_PATH": str(copy),
        }
        done = subprocess.run(
            [*prefix, SYSTEMD, "--test", "--user", f"--unit={unit}", "--no-pager"]
            + ["--log-target=console"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(copy) in line and "/" in line.split(":")[0]
    ]
    assert not problems, "systemd complained:\n" + "\n".join(problems)
    out: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    last_key = ""
    for line in done.stdout.splitlines():
        if line.startswith("\t-> Unit "):
            current = out.setdefault(line[len("\t-> Unit ") : -1], {})
        elif current is None:
            continue
        elif line.startswith("\t\t"):
            key, _, value = line.lstrip("\t").partition(": ")
            current.setdefault(key, []).append(value)
            last_key = key
        elif not line.startswith("\t") and last_key == "Environment":
            # A value with a line break goes on over the next lines.
            current["Environment"][-1] += "\n" + line
    return out


def dump_argv(line: str) -> list[str]:
    """systemd's "Command Line:" back to argv ("..." with \\ \" \\$ \\` escaped)."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        word = []
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    word.append(_C.get(line[i], line[i]) if line[i] in "nt" else line[i])
                else:
                    word.append(line[i])
                i += 1
            i += 1
        else:
            while i < n and line[i] != " ":
                word.append(line[i])
                i += 1
        words.append("".join(word).replace("$$", "$"))
    return words


def systemd_verify(units: Path) -> None:
    """``systemd-analyze verify`` on every unit: no complaint about our files."""
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(units) in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


# --------------------------------------------------------------------------- supervisord syntax


def supervisor_env(value: str) -> dict[str, str]:
    """supervisor's own ``dict_of_key_value_pairs`` (supervisor/datatypes.py, 4.x)."""
    lexer = shlex.shlex(value)
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    out = {}
    for i in range(0, len(tokens), 4):
        key, eq, val = tokens[i : i + 3]
        assert eq == "=", tokens
        out[key] = val.strip("'\"")
    return out


def supervisord_view(text: str) -> dict[str, dict[str, object]]:
    """Read a supervisord file as supervisord does (configparser, % expansion, lexers)."""
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=False, interpolation=None
    )
    parser.read_string(text)
    out: dict[str, dict[str, object]] = {}
    for section in parser.sections():
        values: dict[str, object] = {k: v.replace("%%", "%") for k, v in parser.items(section)}
        if "command" in values:
            values["command"] = shlex.split(str(values["command"]))
        if "environment" in values:
            values["environment"] = supervisor_env(str(values["environment"]))
        out[section] = values
    return out


# =========================================================================== side by side: systemd


def test_systemd_matches_honcho(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = app_dir(tmp_path)
    done = honcho_export(root, "-a", "shop", "-c", "web=2,clock=0", "systemd", str(tmp_path / "h"))
    assert done.returncode == 0, done.stderr
    assert (
        export("-d", str(root), "-a", "shop", "-c", "web=2,clock=0", "systemd", str(tmp_path / "p"))
        == 0
    )
    honcho, ours = files(tmp_path / "h"), files(tmp_path / "p")
    assert (
        sorted(ours)
        == sorted(honcho)
        == [
            "shop-web-1.service",
            "shop-web-2.service",
            "shop-web.target",
            "shop-worker-1.service",
            "shop-worker.target",
            "shop.target",
        ]
    )
    for name in ("shop.target", "shop-web.target", "shop-worker.target"):
        h, p = unit_lines(honcho[name]), unit_lines(ours[name])
        p["Unit"] = [kv for kv in p["Unit"] if kv[0] != "Description"]
        assert p == h, name
    ports = {}
    for name in ("shop-web-1.service", "shop-web-2.service", "shop-worker-1.service"):
        h, p = service_view(honcho[name]), service_view(ours[name])
        assert p["unit"] == {**h["unit"], "Description": p["unit"]["Description"]}  # type: ignore[dict-item]
        assert p["install"] == h["install"] == {"WantedBy": "multi-user.target"}
        # The same command through the same shell; honcho makes it a login shell.
        assert h["argv"][:2] == ["/bin/sh", "-lc"]  # type: ignore[index]
        assert p["argv"][:2] == ["/bin/sh", "-c"]  # type: ignore[index]
        assert p["argv"][2:] == h["argv"][2:]  # type: ignore[index]
        # The same environment, plus foreman's PS and up's PYTHONUNBUFFERED.
        penv, henv = dict(p["env"]), dict(h["env"])  # type: ignore[call-overload]
        assert penv.pop("PS") == penv["HONCHO_PROCESS_NAME"]
        assert penv.pop("PYTHONUNBUFFERED") == "1"
        assert penv == henv
        assert penv["B"] == "x y" and penv["URL"] == "http://db:5432/app"
        ports[penv["HONCHO_PROCESS_NAME"]] = penv["PORT"]
        # Same settings, except where polytask follows `up` (docs/up.md).
        hs, ps = dict(h["service"]), dict(p["service"])  # type: ignore[call-overload]
        assert hs.pop("Restart") == "always" and ps.pop("Restart") == "on-failure"
        assert hs.pop("KillMode") == "process" and ps.pop("KillMode") == "control-group"
        assert ps.pop("TimeoutStopSec") == "5"
        assert ps == hs
        assert ps["User"] == "shop" and ps["WorkingDirectory"] == str(root)
    assert ports == {"web.1": "5000", "web.2": "5001", "worker.1": "5100"}
    out = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in out) == sorted(ours)


def test_systemd_ports_and_options_match_honcho(tmp_path: Path) -> None:
    """-p, -u, -s, -f, -e and -d given to both tools."""
    root = app_dir(tmp_path, dotenv=None)
    (root / "Other").write_text("api: ./api --port $PORT\nadmin: ./admin\n")
    (root / "prod.env").write_text("MODE=prod\n")
    args = [
        "-a",
        "x",
        "-p",
        "7000",
        "-u",
        "www",
        "-s",
        "/bin/bash",
        "-f",
        "Other",
        "-e",
        "prod.env",
    ]
    assert honcho_export(root, *args, "systemd", str(tmp_path / "h")).returncode == 0
    assert export("-d", str(root), *args, "systemd", str(tmp_path / "p")) == 0
    honcho, ours = files(tmp_path / "h"), files(tmp_path / "p")
    assert sorted(ours) == sorted(honcho)
    for name in ("x-api-1.service", "x-admin-1.service"):
        h, p = service_view(honcho[name]), service_view(ours[name])
        assert p["argv"] == ["/bin/bash", "-c", h["argv"][2]]  # type: ignore[index]
        assert {k: v for k, v in p["env"].items() if k not in ("PS", "PYTHONUNBUFFERED")} == h[
            "env"
        ]  # type: ignore[union-attr]
        assert p["service"]["User"] == h["service"]["User"] == "www"  # type: ignore[index]
    assert service_view(ours["x-admin-1.service"])["env"]["PORT"] == "7100"  # type: ignore[index]


@needs_systemd
def test_systemd_parser_reads_back_the_clean_export(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    assert (
        export(
            "-d",
            str(root),
            "-a",
            "shop",
            "-u",
            "root",
            "-c",
            "web=2",
            "systemd",
            str(tmp_path / "p"),
        )
        == 0
    )
    systemd_verify(tmp_path / "p")
    units = systemd_dump(tmp_path / "p", "shop.target")
    for name in ("shop-web-1", "shop-web-2", "shop-worker-1", "shop-clock-1"):
        unit = units[f"{name}.service"]
        assert dump_argv(unit["Command Line"][0])[:2] == ["/bin/sh", "-c"]
        assert unit["WorkingDirectory"] == [str(root)]
    web2 = units["shop-web-2.service"]
    assert dump_argv(web2["Command Line"][0]) == ["/bin/sh", "-c", "python -m http.server $PORT"]
    assert "PORT=5001" in web2["Environment"] and "B=x y" in web2["Environment"]


# =========================================================================== hostile input: systemd

HOSTILE_PROCFILE = (
    "web: printf '%s|%s|%s\\n' \"it's\" \"$HOME\" ${PORT} 50%d \\\\back `echo tick` ; echo '#not a comment'\n"
    "../evil: echo escaped\n"
    "a/b: echo escaped\n"
)
HOSTILE_ENV = (
    'MULTI="line1\\nline2"\n'
    'TAB="a\\tb"\n'
    "DOLLAR='$5 and ${X}'\n"
    "PCT='100% %n %%'\n"
    'QUOTES="say \\"hi\\" it\'s"\n'
    "BACK='c:\\\\dir\\n'\n"
    "SPACES='  padded  '\n"
)
HOSTILE_COMMAND = (
    'printf \'%s|%s|%s\\n\' "it\'s" "$HOME" ${PORT} 50%d \\\\back `echo tick` ; '
    "echo '#not a comment'"
)
HOSTILE_VALUES = {
    "MULTI": "line1\nline2",
    "TAB": "a\tb",
    "DOLLAR": "$5 and ${X}",
    "PCT": "100% %n %%",
    "QUOTES": 'say "hi" it\'s',
    "BACK": "c:\\dir\\n",
    "SPACES": "  padded  ",
}


def test_hostile_values_survive_systemd_syntax(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = app_dir(tmp_path, HOSTILE_PROCFILE, HOSTILE_ENV)
    location = tmp_path / "out" / "units"
    assert export("-d", str(root), "-a", "evil", "-u", "root", "systemd", str(location)) == 0
    # The lines with '/' or '..' in their names are skipped (as foreman and honcho
    # skip them), with a warning; nothing is written outside LOCATION.
    err = capsys.readouterr().err
    assert "'../evil'" in err and "'a/b'" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["units"]
    assert sorted(os.listdir(tmp_path)) == ["app", "out"]
    assert sorted(os.listdir(location)) == ["evil-web-1.service", "evil-web.target", "evil.target"]
    text = (location / "evil-web-1.service").read_text()
    # Every setting on one line: a value's line break is written as \n.
    assert all("=" in line or line.startswith("[") for line in text.splitlines() if line)
    view = service_view(text)
    assert view["argv"] == ["/bin/sh", "-c", HOSTILE_COMMAND]
    env = view["env"]
    for key, value in HOSTILE_VALUES.items():
        assert env[key] == value, key  # type: ignore[index]


@needs_systemd
def test_hostile_values_read_back_by_systemd(tmp_path: Path) -> None:
    root = app_dir(tmp_path, HOSTILE_PROCFILE, HOSTILE_ENV)
    location = tmp_path / "units"
    assert export("-d", str(root), "-a", "evil", "-u", "root", "systemd", str(location)) == 0
    systemd_verify(location)
    unit = systemd_dump(location, "evil.target")["evil-web-1.service"]
    # Specifiers resolved, quotes and escapes undone: the command the shell gets
    # (systemd turns $$ into $ when it runs it).
    assert dump_argv(unit["Command Line"][0]) == ["/bin/sh", "-c", HOSTILE_COMMAND]
    env = dict(e.partition("=")[::2] for e in unit["Environment"])
    for key, value in HOSTILE_VALUES.items():
        assert env[key] == value, key


def test_hostile_command_runs_as_up_would(tmp_path: Path) -> None:
    """The exported argv and environment, run: the output `polytask run web` gives."""
    root = app_dir(tmp_path, HOSTILE_PROCFILE, HOSTILE_ENV)
    assert export("-d", str(root), "-a", "e", "systemd", str(tmp_path / "u")) == 0
    view = service_view((tmp_path / "u" / "e-web-1.service").read_text())
    env = {**dict(view["env"]), "PATH": os.environ["PATH"], "HOME": "/home/x"}  # type: ignore[call-overload]
    exported = subprocess.run(
        view["argv"], env=env, cwd=root, capture_output=True, text=True, timeout=30
    )  # type: ignore[call-overload]
    run_env = {**_env(), "HOME": "/home/x"}
    via_run = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "run", "web"],
        env=run_env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert exported.returncode == via_run.returncode == 0, exported.stderr + via_run.stderr
    assert exported.stdout == via_run.stdout
    assert exported.stdout.startswith("it's|/home/x|5000\n")


# =========================================================================== supervisord


def test_supervisord_matches_honcho(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    args = ["-a", "shop", "-c", "web=2", "-l", "/var/log/shop"]
    assert honcho_export(root, *args, "supervisord", str(tmp_path / "h")).returncode == 0
    assert export("-d", str(root), *args, "supervisord", str(tmp_path / "p")) == 0
    assert sorted(os.listdir(tmp_path / "h")) == sorted(os.listdir(tmp_path / "p")) == ["shop.conf"]
    h = supervisord_view((tmp_path / "h" / "shop.conf").read_text())
    p = supervisord_view((tmp_path / "p" / "shop.conf").read_text())
    assert (
        list(p)
        == list(h)
        == [
            "program:web-1",
            "program:web-2",
            "program:worker-1",
            "program:clock-1",
            "group:shop",
        ]
    )
    assert p["group:shop"] == h["group:shop"]
    for section in list(h)[:-1]:
        hs, ps = dict(h[section]), dict(p[section])
        assert ps.pop("command") == hs.pop("command")
        penv, henv = dict(ps.pop("environment")), dict(hs.pop("environment"))  # type: ignore[call-overload]
        assert (
            penv.pop("PS") == penv["HONCHO_PROCESS_NAME"] == section.split(":")[1].replace("-", ".")
        )
        assert penv.pop("PYTHONUNBUFFERED") == "1"
        assert penv == henv
        # Where polytask follows `up`: restart on failure, SIGTERM to the group, 5 s.
        assert hs.pop("autorestart") == "true" and ps.pop("autorestart") == "unexpected"
        assert hs.pop("stopsignal") == "QUIT" and ps.pop("stopsignal") == "TERM"
        extra = {
            k: ps.pop(k)
            for k in (
                "exitcodes",
                "startsecs",
                "startretries",
                "stopwaitsecs",
                "stopasgroup",
                "killasgroup",
            )
        }
        assert extra == {
            "exitcodes": "0",
            "startsecs": "1",
            "startretries": "3",
            "stopwaitsecs": "5",
            "stopasgroup": "true",
            "killasgroup": "true",
        }
        assert ps == hs
    assert p["program:web-2"]["environment"]["PORT"] == "5001"  # type: ignore[index]
    assert p["program:clock-1"]["environment"]["PORT"] == "5200"  # type: ignore[index]


SUPERVISORD_ENV = (
    "DOLLAR='$5 and ${X}'\nPCT='100% %(ENV_HOME)s'\nMIXED=\"it's\"\nCOMMA='a,b=c'\nSEMI='a;b#c'\n"
)


def test_supervisord_hostile_values_read_back(tmp_path: Path) -> None:
    procfile = "web: echo \"it's\" 50% $PORT ; echo '# no comment'\n"
    root = app_dir(tmp_path, procfile, SUPERVISORD_ENV)
    assert export("-d", str(root), "-a", "s", "-u", "root", "supervisord", str(tmp_path / "p")) == 0
    view = supervisord_view((tmp_path / "p" / "s.conf").read_text())["program:web-1"]
    assert view["command"] == ["/bin/sh", "-c", procfile[5:-1]]
    env = view["environment"]
    assert env == {  # type: ignore[comparison-overlap]
        "DOLLAR": "$5 and ${X}",
        "PCT": "100% %(ENV_HOME)s",
        "MIXED": "it's",
        "COMMA": "a,b=c",
        "SEMI": "a;b#c",
        "PORT": "5000",
        "PS": "web.1",
        "HONCHO_PROCESS_NAME": "web.1",
        "PYTHONUNBUFFERED": "1",
    }


def test_supervisord_own_loader_reads_it(tmp_path: Path) -> None:
    """supervisor's ServerOptions, when supervisor is installed."""
    options = pytest.importorskip("supervisor.options", reason="supervisor is not installed")
    root = app_dir(tmp_path, "web: echo \"it's\" 50% $PORT ; echo '# x'\n", SUPERVISORD_ENV)
    user = pwd.getpwuid(os.getuid()).pw_name
    args = ["-d", str(root), "-a", "s", "-u", user, "-l", str(tmp_path / "log")]
    assert export(*args, "supervisord", str(tmp_path / "p")) == 0
    (tmp_path / "log").mkdir()  # supervisord refuses a missing log folder
    main = tmp_path / "supervisord.conf"
    main.write_text(f"[supervisord]\n[include]\nfiles = {tmp_path / 'p' / 's.conf'}\n")
    opts = options.ServerOptions()
    opts.realize(args=["-c", str(main)])
    (group,) = opts.process_group_configs
    (proc,) = group.process_configs
    assert group.name == "s" and proc.name == "web-1"
    assert shlex.split(proc.command) == ["/bin/sh", "-c", "echo \"it's\" 50% $PORT ; echo '# x'"]
    assert proc.environment["PCT"] == "100% %(ENV_HOME)s"
    assert proc.environment["SEMI"] == "a;b#c"
    assert proc.directory == str(root)


@pytest.mark.parametrize(
    ("dotenv", "why"),
    [
        ('MULTI="a\\nb"\n', "line break"),
        ('BOTH="say \\"hi\\" it\'s"\n', "both ' and"),
        ("QUOTED='\"x\"'\n", "begins or ends with a quote"),
        ("PAD='  x'\n", "surrounding whitespace"),
        ("HASH='a #b'\n", "inline comment"),
    ],
)
def test_supervisord_refuses_what_it_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dotenv: str, why: str
) -> None:
    root = app_dir(tmp_path, "web: run\n", dotenv)
    assert export("-d", str(root), "supervisord", str(tmp_path / "p")) == 2
    err = capsys.readouterr().err
    assert why in err and "web.1" in err and "systemd" in err, err
    assert not (tmp_path / "p").exists()


# =========================================================================== bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch", "OUT"], "unknown format 'nosuch': choose systemd, supervisord or runit"),
        (["upstart", "OUT"], "upstart is dead"),
        (["-a", "../evil", "systemd", "OUT"], "app name '../evil'"),
        (["-a", "a/b", "systemd", "OUT"], "app name 'a/b'"),
        (["-u", "bad user", "systemd", "OUT"], "user 'bad user'"),
        (["-s", "sh", "systemd", "OUT"], "shell 'sh' must be an absolute path"),
        (["-t", "templates", "systemd", "OUT"], "no templates"),
        (["-c", "nosuch=2", "systemd", "OUT"], "unknown process 'nosuch'"),
        (["-p", "70000", "systemd", "OUT"], "not a port number"),
        (["-f", "Missing", "systemd", "OUT"], "cannot read Procfile"),
        (["--strict", "systemd", "OUT"], "indented line"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    root = app_dir(tmp_path, "web: run\n  indented: x\n")
    args = [str(tmp_path / "OUT") if a == "OUT" else a for a in args]
    assert export("-d", str(root), *args) == 2
    *warnings, error = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("polytask export: error: ") and message in error, error
    assert all(w.startswith("polytask export: warning: ") for w in warnings)
    assert not (tmp_path / "OUT").exists()


def test_location_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = app_dir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for location in (blocker, blocker / "sub"):
        assert export("-d", str(root), "systemd", str(location)) == 2
        err = capsys.readouterr().err
        assert f"cannot create LOCATION {str(location)!r}" in err, err
    if os.geteuid() != 0:  # root writes through any mode bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert export("-d", str(root), "systemd", str(locked)) == 2
        assert "Permission denied" in capsys.readouterr().err
        assert os.listdir(locked) == []


def test_symlink_in_location_is_replaced_not_followed(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    location = tmp_path / "units"
    location.mkdir()
    (location / "shop.target").symlink_to(victim)
    assert export("-d", str(root), "-a", "shop", "systemd", str(location)) == 0
    assert victim.read_text() == "keep me\n"
    assert not (location / "shop.target").is_symlink()
    assert (location / "shop.target").read_text().startswith("[Unit]\n")
    assert not [n for n in os.listdir(location) if n.startswith(".")]


def test_cli_registers_export(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "export", "-l", "logs", "systemd", "out"],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # The app name defaults to the app root's folder name, as honcho's to the cwd's.
    assert (root / "out" / "app.target").is_file()
    service = (root / "out" / "app-web-1.service").read_text()
    assert f"StandardOutput=append:{root}/logs/web-1.log" in service
    assert f"StandardError=append:{root}/logs/web-1.error.log" in service
    assert (
        "export"
        in subprocess.run(
            [sys.executable, "-m", "polytask.cli", "--help"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )


def test_restart_never_and_timeout(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    assert (
        export(
            "-d",
            str(root),
            "--restart",
            "never",
            "--timeout",
            "12.5",
            "systemd",
            str(tmp_path / "s"),
        )
        == 0
    )
    view = service_view((tmp_path / "s" / "app-web-1.service").read_text())
    assert view["service"]["Restart"] == "no"  # type: ignore[index]
    assert view["service"]["TimeoutStopSec"] == "12.5"  # type: ignore[index]
    assert export("-d", str(root), "--restart", "always", "supervisord", str(tmp_path / "v")) == 0
    conf = supervisord_view((tmp_path / "v" / "app.conf").read_text())["program:web-1"]
    assert conf["autorestart"] == "true" and conf["stopwaitsecs"] == "5"


@needs_systemd
def test_honcho_units_break_where_polytask_units_hold(tmp_path: Path) -> None:
    """The reason polytask quotes differently: honcho pastes values into its templates.

    A quote in a command unbalances honcho's ExecStart (systemd refuses the
    unit), a line break in a .env value splits its Environment= line, and a
    ``%`` is left to systemd's specifiers; polytask's units load and keep them.
    """
    root = app_dir(tmp_path, 'web: echo "it\'s" 50%d $HOME\n', "MULTI=\"a\\nb\"\nPCT='5%n'\n")
    assert (
        honcho_export(root, "-a", "h", "-u", "root", "systemd", str(tmp_path / "h")).returncode == 0
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "h" / "h-web-1.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Unbalanced quoting" in done.stderr and "Missing '='" in done.stderr, done.stderr
    assert export("-d", str(root), "-a", "p", "-u", "root", "systemd", str(tmp_path / "p")) == 0
    systemd_verify(tmp_path / "p")
    unit = systemd_dump(tmp_path / "p", "p.target")["p-web-1.service"]
    assert dump_argv(unit["Command Line"][0]) == ["/bin/sh", "-c", 'echo "it\'s" 50%d $HOME']
    assert "MULTI=a\nb" in unit["Environment"] and "PCT=5%n" in unit["Environment"]


@needs_systemd
def test_paths_with_spaces_and_percent(tmp_path: Path) -> None:
    root = tmp_path / "my app%x"
    root.mkdir()
    (root / "Procfile").write_text("web: echo hi\n")
    logs = tmp_path / "lo gs"
    args = ["-d", str(root), "-u", "root", "-l", str(logs), "systemd", str(tmp_path / "u")]
    assert export(*args) == 0
    # The default app name is the folder's, made safe for a unit name.
    assert sorted(os.listdir(tmp_path / "u"))[0] == "my-app-x-web-1.service"
    systemd_verify(tmp_path / "u")
    unit = systemd_dump(tmp_path / "u", "my-app-x.target")["my-app-x-web-1.service"]
    assert unit["WorkingDirectory"] == [str(root)]
    assert unit["StandardOutputFileToAppend"] == [f"{logs}/web-1.log"]
    assert unit["StandardErrorFileToAppend"] == [f"{logs}/web-1.error.log"]


# =========================================================================== runit


def envdir(folder: Path) -> dict[str, str]:
    """What ``chpst -e`` / envdir sets: each file's first line, trailing blanks cut, NUL -> newline."""
    out = {}
    for p in folder.iterdir():
        raw = p.read_bytes()
        if raw:
            out[p.name] = raw.split(b"\n")[0].rstrip(b" \t").replace(b"\0", b"\n").decode()
    return out


def test_runit_matches_honcho(tmp_path: Path) -> None:
    root = app_dir(tmp_path)
    args = ["-a", "shop", "-u", "root", "-c", "web=2"]
    assert honcho_export(root, *args, "runit", str(tmp_path / "h")).returncode == 0
    assert export("-d", str(root), *args, "runit", str(tmp_path / "p")) == 0

    def tree(top: Path) -> set[str]:
        return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}

    h, p = tree(tmp_path / "h"), tree(tmp_path / "p")
    extra = {
        f"{s}/env/{k}"
        for s in ("shop-web-1", "shop-web-2", "shop-worker-1", "shop-clock-1")
        for k in ("PS", "PYTHONUNBUFFERED")
    }
    assert p == h | extra
    for service in ("shop-web-1", "shop-web-2", "shop-worker-1", "shop-clock-1"):
        penv, henv = (
            envdir(tmp_path / "p" / service / "env"),
            envdir(tmp_path / "h" / service / "env"),
        )
        assert penv.pop("PS") == penv["HONCHO_PROCESS_NAME"]
        assert penv.pop("PYTHONUNBUFFERED") == "1"
        assert penv == henv
        for name in ("run", "log/run"):
            assert os.access(tmp_path / "p" / service / name, os.X_OK)
            syntax = subprocess.run(["sh", "-n", str(tmp_path / "p" / service / name)], timeout=30)
            assert syntax.returncode == 0
        # The same command: honcho pastes it into its script, polytask passes it to sh -c.
        (hline,) = [
            ln
            for ln in (tmp_path / "h" / service / "run").read_text().splitlines()
            if ln.startswith("  ")
        ]
        pline = (tmp_path / "p" / service / "run").read_text().splitlines()[-1]
        assert shlex.split(pline)[:6] == ["exec", "chpst", "-u", "root", "-e", "$ENVDIR"]
        assert shlex.split(pline)[6:8] == ["/bin/sh", "-c"]
        assert shlex.split(pline)[8:] == [hline.strip()]
        hlog = (tmp_path / "h" / service / "log" / "run").read_text()
        plog = (tmp_path / "p" / service / "log" / "run").read_text()
        assert (
            f"LOG=/var/log/shop/{service[5:]}" in hlog
            and f"LOG=/var/log/shop/{service[5:]}" in plog
        )
    assert envdir(tmp_path / "p" / "shop-web-2" / "env")["PORT"] == "5001"


RUNIT_PROCFILE = (
    'web: printf \'[%s]\\n\' "$MULTI" "$TAB" "$DOLLAR" "$PCT" "$QUOTES" "$BACK" '
    '"$EMPTY" "$PORT" "$PS" 50% "it\'s"\n'
)
RUNIT_ENV = HOSTILE_ENV.replace("SPACES='  padded  '\n", "EMPTY=\n")


@pytest.mark.usefixtures("runit_installed")
def test_runit_run_script_runs_as_up_would(tmp_path: Path) -> None:
    """runsv's way: ./run started in the service folder, through the real chpst."""
    root = app_dir(tmp_path, RUNIT_PROCFILE, RUNIT_ENV)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert export("-d", str(root), "-a", "r", "-u", user, "runit", str(tmp_path / "sv")) == 0
    service = tmp_path / "sv" / "r-web-1"
    env = {"PATH": os.environ["PATH"]}
    exported = subprocess.run(
        ["./run"], cwd=service, env=env, capture_output=True, text=True, timeout=30
    )
    via_run = subprocess.run(
        [sys.executable, "-m", "polytask.cli", "run", "web"],
        env=_env(),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert exported.returncode == via_run.returncode == 0, exported.stdout + via_run.stderr
    assert exported.stdout == via_run.stdout
    values = [*HOSTILE_VALUES.values()][:6]
    expected = "".join(f"[{v}]\n" for v in [*values, "", "5000", "web.1", "50%", "it's"])
    assert exported.stdout == expected


def test_runit_refuses_what_envdir_cuts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = app_dir(tmp_path, "web: run\n", "PAD='x  '\n")
    assert export("-d", str(root), "runit", str(tmp_path / "sv")) == 2
    assert "ends with spaces or tabs" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    root2 = app_dir(tmp_path / "b", "web: run\n", "")
    assert export("-d", str(root2), "--restart", "on-failure", "runit", str(tmp_path / "sv")) == 2
    assert "runit restarts every program that exits" in capsys.readouterr().err
    assert not (tmp_path / "sv").exists()


def test_symlinked_service_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = app_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = tmp_path / "sv"
    location.mkdir()
    (location / "app-web-1").symlink_to(elsewhere)
    assert export("-d", str(root), "runit", str(location)) == 2
    assert "is a symlink, which could lead outside LOCATION" in capsys.readouterr().err
    assert os.listdir(elsewhere) == []
