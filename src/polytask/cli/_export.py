"""``polytask export FORMAT LOCATION``: a Procfile as systemd, supervisord or runit files.

As ``honcho export`` and ``foreman export``, with honcho 2.0's options, the
same file names and the same unit layout (an app target, a target per process
type, a service per copy). What each program gets is what ``polytask up``
would give it: the Procfile and env files are read by the same code
(:mod:`polytask._procfile`, ``cli._up._load``), copies and ``PORT`` come from
the same :func:`~polytask._procfile.expand`, and the environment is the env
files plus ``PORT``, ``PS``, ``HONCHO_PROCESS_NAME`` and ``PYTHONUNBUFFERED``.

Rendering is pure (a :class:`Plan` in, :class:`ExportFile` objects out);
only :func:`main_export` touches the file system. Every value is quoted for
the parser that will read it (honcho pastes values into its templates, so a
``%``, a quote or a newline changes or breaks its units): systemd gets
C-escaped double-quoted words with ``%%`` and ``$$``; supervisord gets what
its own lexers give back unchanged; runit gets shell-quoted run scripts and
envdir files. A value a format cannot hold is refused with its name.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._core.errors import ProcfileError
from .._procfile import Instance, base_port, expand, parse_concurrency
from .._supervisor import RESTART_MODES
from ._args import BadInput, Parser, seconds
from ._up import _load, _run_guarded, procfile_options

__all__ = ["FORMATS", "ExportFile", "Plan", "Program", "main_export", "render"]

#: The formats written; the refused ones map to why.
FORMATS = ("systemd", "supervisord", "runit")
_REFUSED = {
    "upstart": "upstart is dead: Ubuntu replaced it with systemd in 15.04 and no "
    "maintained distribution runs it; export to systemd instead",
}

_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ExportFile:
    """One file to write in LOCATION: a plain file name (never a path), its text, its mode."""

    name: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Program:
    """One copy of a process type, with the environment ``up`` would give it."""

    instance: Instance
    env: dict[str, str]

    @property
    def name(self) -> str:
        """``web.1``: the name ``up`` prints and puts in ``PS``."""
        return self.instance.name

    @property
    def dashed(self) -> str:
        """``web-1``: honcho's file and program name (``.`` is special to systemd)."""
        return _dashed(self.instance.name)

    @property
    def command(self) -> str:
        cmd = self.instance.command
        return cmd if isinstance(cmd, str) else " ".join(cmd)


@dataclass(frozen=True)
class Plan:
    """Everything a format needs: the programs and the options of the command line."""

    app: str
    user: str
    root: str
    shell: str
    programs: tuple[Program, ...]
    #: Log folder; for systemd None means the journal.
    log: str | None = None
    restart: str = "on-failure"
    timeout: float = 5.0


def _dashed(name: str) -> str:
    # honcho's dashrepl: every non-word character becomes '-'.
    return re.sub(r"\W", "-", name)


def program_env(file_env: dict[str, str], inst: Instance) -> dict[str, str]:
    """The variables ``up`` sets for ``inst`` on top of the env files (minus os.environ)."""
    env = dict(file_env)
    env["PORT"] = str(inst.port)
    env["PS"] = env["HONCHO_PROCESS_NAME"] = inst.name
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# =========================================================================== systemd

_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def systemd_word(value: str, *, exec_line: bool = False) -> str:
    """``value`` as one double-quoted word of a systemd unit, read back unchanged.

    systemd C-unescapes quoted words, resolves ``%`` specifiers (``%%`` is a
    ``%``) and, on ``Exec*=`` lines only, substitutes ``$NAME`` / ``${NAME}``
    (``$$`` is a ``$``): so the shell, not systemd, expands the command's
    variables, as under ``up``.
    """
    out = []
    for ch in value:
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif _CONTROL.match(ch):
            out.append(f"\\x{ord(ch):02x}")
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and exec_line:
            out.append("$$")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _systemd_restart(mode: str) -> str:
    return {"never": "no", "on-failure": "on-failure", "always": "always"}[mode]


def render_systemd(plan: Plan) -> list[ExportFile]:
    """``APP.target``, ``APP-TYPE.target`` per type, ``APP-TYPE-N.service`` per copy."""
    app = plan.app
    kinds = list(dict.fromkeys(p.instance.kind for p in plan.programs))
    files = [
        ExportFile(
            f"{app}.target",
            "[Unit]\n"
            f"Description={_pct(app)} (polytask export)\n"
            f"Wants={' '.join(f'{app}-{_dashed(k)}.target' for k in kinds)}\n"
            "\n[Install]\nWantedBy=multi-user.target\n",
        )
    ]
    for kind in kinds:
        group = f"{app}-{_dashed(kind)}"
        mine = [p for p in plan.programs if p.instance.kind == kind]
        files.append(
            ExportFile(
                f"{group}.target",
                "[Unit]\n"
                f"PartOf={app}.target\n"
                f"Wants={' '.join(f'{app}-{p.dashed}.service' for p in mine)}\n",
            )
        )
        for p in mine:
            lines = [
                "[Unit]",
                f"Description={_pct(app)} {p.name} (polytask export)",
                f"PartOf={group}.target",
                "",
                "[Service]",
                f"User={_pct(plan.user)}",
                f"WorkingDirectory={_pct(plan.root)}",
            ]
            lines += [f"Environment={systemd_word(f'{k}={v}')}" for k, v in p.env.items()]
            lines.append(
                f"ExecStart={_pct(plan.shell)} -c {systemd_word(p.command, exec_line=True)}"
            )
            lines += [
                f"Restart={_systemd_restart(plan.restart)}",
                "StandardInput=null",
            ]
            if plan.log is None:
                lines += ["StandardOutput=journal", "StandardError=journal"]
            else:
                base = os.path.join(plan.log, p.dashed)
                lines += [
                    f"StandardOutput=append:{_pct(base)}.log",
                    f"StandardError=append:{_pct(base)}.error.log",
                ]
            lines += [
                "SyslogIdentifier=%n",
                # up ends a program's whole tree: so does the default
                # control-group mode (honcho's KillMode=process spares children).
                "KillMode=control-group",
                f"TimeoutStopSec={plan.timeout:g}",
                "",
                "[Install]",
                "WantedBy=multi-user.target",
                "",
            ]
            files.append(ExportFile(f"{app}-{p.dashed}.service", "\n".join(lines)))
    return files


def _pct(value: str) -> str:
    """A single-value systemd setting (a path, a name): only specifiers need escaping."""
    return value.replace("%", "%%")


# =========================================================================== supervisord


def _ini_value(what: str, value: str) -> str:
    """``value`` checked for what configparser would change, with ``%`` escaped.

    supervisord reads its files with configparser: a line break, surrounding
    whitespace, or whitespace before ``;`` / ``#`` (an inline comment) cannot
    be written so that it comes back.
    """
    if _CONTROL.search(value):
        raise BadInput(
            f"{what} contains a line break or control character, which a supervisord "
            "file cannot hold; export to systemd, which can"
        )
    if value != value.strip() or re.search(r"\s[;#]", value):
        raise BadInput(
            f"{what} {value!r} has surrounding whitespace or whitespace before ';' or '#' "
            "(an inline comment for supervisord); export to systemd, which can hold it"
        )
    return value.replace("%", "%%")


def supervisord_command(argv: Sequence[str]) -> str:
    """``argv`` as supervisord's ``command=``: shlex.split gives it back.

    Each word is single-quoted, with ``'``, ``;`` and ``#`` written outside the
    quotes as ``\\'``, ``\\;``, ``\\#`` so that configparser never sees an
    inline comment.
    """
    words = []
    for arg in argv:
        if "\n" in arg or "\r" in arg:
            raise BadInput(f"a supervisord command cannot hold a line break: {arg!r}")
        if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
            words.append(arg)
            continue
        parts = re.split(r"(['#;])", arg)
        words.append(
            "".join(
                ("\\" + part) if part in ("'", "#", ";") else f"'{part}'" for part in parts if part
            )
            or "''"
        )
    return " ".join(words).replace("%", "%%")


def supervisord_environment(env: dict[str, str], program: str) -> str:
    """``KEY='value',...`` as supervisord's own (non-POSIX shlex) lexer reads it back.

    That lexer has no escapes and strips every quote from both ends of a
    value, so a value with both kinds of quote, or that begins or ends with
    one, cannot be written: refused, naming the variable.
    """
    items = []
    for key, value in env.items():
        what = f"variable {key} of {program}"
        if not _ENV_NAME.fullmatch(key):
            raise BadInput(f"{what}: supervisord accepts only names of letters, digits and '_'")
        if value:
            _ini_value(what, value)
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise BadInput(
                f"{what} begins or ends with a quote, which supervisord strips; "
                "export to systemd, which keeps it"
            )
        if "'" not in value:
            quoted = f"'{value}'"
        elif '"' not in value:
            quoted = f'"{value}"'
        else:
            raise BadInput(
                f"{what} holds both ' and \", which supervisord's environment syntax "
                "cannot quote; export to systemd, which can"
            )
        items.append(f"{key}={quoted}")
    return ",".join(items).replace("%", "%%")


def render_supervisord(plan: Plan) -> list[ExportFile]:
    """One ``APP.conf``: a ``[program:TYPE-N]`` per copy and a ``[group:APP]``, as honcho."""
    autorestart = {"never": "false", "on-failure": "unexpected", "always": "true"}[plan.restart]
    log = plan.log if plan.log is not None else f"/var/log/{plan.app}"
    out: list[str] = []
    for p in plan.programs:
        base = os.path.join(log, p.dashed)
        out += [
            f"[program:{p.dashed}]",
            f"command={supervisord_command([plan.shell, '-c', p.command])}",
            "autostart=true",
            f"autorestart={autorestart}",
            "exitcodes=0",
            "startsecs=1",
            "startretries=3",
            # up: SIGTERM to the program's whole group, SIGKILL after the timeout.
            "stopsignal=TERM",
            f"stopwaitsecs={plan.timeout:g}",
            "stopasgroup=true",
            "killasgroup=true",
            f"stdout_logfile={_ini_value('log folder', base)}.log",
            f"stderr_logfile={_ini_value('log folder', base)}.error.log",
            f"user={_ini_value('user', plan.user)}",
            f"directory={_ini_value('app root', plan.root)}",
            f"environment={supervisord_environment(p.env, p.name)}",
            "",
        ]
    out += [f"[group:{plan.app}]", "programs=" + ",".join(p.dashed for p in plan.programs), ""]
    return [ExportFile(f"{plan.app}.conf", "\n".join(out))]


# =========================================================================== runit


def _envdir_value(key: str, value: str, program: str) -> str:
    """``value`` as an envdir file (chpst -e): its first line, line breaks as NULs."""
    what = f"variable {key} of {program}"
    if not _ENV_NAME.fullmatch(key):
        raise BadInput(f"{what}: an envdir file name takes only letters, digits and '_'")
    if value != value.rstrip(" \t"):
        raise BadInput(
            f"{what} ends with spaces or tabs, which runit's envdir removes; "
            "export to systemd, which keeps them"
        )
    # A file with one empty line sets an empty variable (an empty file unsets it).
    return value.replace("\n", "\0") + "\n"


def render_runit(plan: Plan) -> list[ExportFile]:
    """A service folder per copy, as honcho: ``APP-TYPE-N/{run,log/run,env/KEY}``.

    runsv restarts every exit (``--restart always`` only) and signals only the
    program it started; ``chpst -e`` reads the environment from ``env/``.
    """
    if plan.restart != "always":
        raise BadInput(
            f"runit restarts every program that exits (runsv): --restart {plan.restart} "
            "cannot be expressed; give --restart always, or export to systemd or supervisord"
        )
    q = shlex.quote
    log = plan.log if plan.log is not None else f"/var/log/{plan.app}"
    files: list[ExportFile] = []
    for p in plan.programs:
        folder = f"{plan.app}-{p.dashed}"
        for key, value in p.env.items():
            files.append(ExportFile(f"{folder}/env/{key}", _envdir_value(key, value, p.name)))
        files.append(
            ExportFile(
                f"{folder}/run",
                "#!/bin/sh\n"
                f"# {p.name} of {plan.app} (polytask export)\n"
                "exec 2>&1\n"
                'ENVDIR="$PWD/env"\n'
                f"cd {q(plan.root)} || exit 1\n"
                f'exec chpst -u {q(plan.user)} -e "$ENVDIR" {q(plan.shell)} -c {q(p.command)}\n',
                0o755,
            )
        )
        files.append(
            ExportFile(
                f"{folder}/log/run",
                "#!/bin/sh\n"
                "set -e\n"
                f"LOG={q(os.path.join(log, p.dashed))}\n"
                'if [ ! -d "$LOG" ]; then\n'
                '    mkdir -p -m 2750 "$LOG"\n'
                f'    chown {q(plan.user)} "$LOG"\n'
                "fi\n"
                f'exec chpst -u {q(plan.user)} svlogd "$LOG"\n',
                0o755,
            )
        )
    return files


def render(fmt: str, plan: Plan) -> list[ExportFile]:
    """The files of format ``fmt`` for ``plan`` (pure: nothing is written)."""
    if fmt == "systemd":
        files = render_systemd(plan)
    elif fmt == "supervisord":
        files = render_supervisord(plan)
    elif fmt == "runit":
        files = render_runit(plan)
    else:
        raise BadInput(_format_problem(fmt))
    names = [f.name for f in files]
    # Names are built from validated parts; checked again here because a file
    # written outside LOCATION, or one overwriting another, must never happen.
    for name in names:
        parts = name.split("/")
        if any(part in ("", ".", "..") or "\0" in part for part in parts):
            raise AssertionError(f"unsafe export file name {name!r}")
    if len(set(names)) != len(names):
        raise AssertionError(f"two export files share a name: {names}")
    return files


def _format_problem(fmt: str) -> str:
    if fmt in _REFUSED:
        return _REFUSED[fmt]
    return f"unknown format {fmt!r}: choose systemd, supervisord or runit"


# =========================================================================== the command


def _parser() -> Parser:
    p = Parser(
        prog="polytask export",
        description="Write the configuration that runs a Procfile's programs under a real "
        "init system: systemd (a target for the app, one per process type, a service per "
        "copy), supervisord (one file) or runit (a service folder per copy). Each program gets the command, environment, "
        "PORT and working directory 'polytask up' would give it.",
    )
    p.add_argument("format", metavar="FORMAT", help="systemd, supervisord or runit")
    p.add_argument("location", metavar="LOCATION", help="folder to write the files to")
    p.add_argument(
        "-a",
        "--app",
        help="app name, the prefix of every unit (default: the app root's folder name)",
    )
    p.add_argument(
        "-l",
        "--log",
        metavar="DIR",
        help="folder for the programs' log files (supervisord default: /var/log/APP; "
        "systemd default: the journal)",
    )
    procfile_options(p, files_in=", relative to the app root")
    p.add_argument("-u", "--user", help="user the programs run as (default: the app name)")
    p.add_argument(
        "-s",
        "--shell",
        default="/bin/sh",
        help="the shell that runs each command with -c (default: /bin/sh, as 'up')",
    )
    p.add_argument(
        "-d",
        "--app-root",
        metavar="DIR",
        default=".",
        help="the app's folder: where the Procfile and env files are, and the programs' "
        "working directory (default: .)",
    )
    p.add_argument(
        "--restart",
        choices=RESTART_MODES,
        help="when the init system restarts a program (default: on-failure, as 'up'; "
        "runit: always, the only mode runsv has)",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when stopping (default: 5, as 'up')",
    )
    p.add_argument("-t", "--template-dir", help=argparse.SUPPRESS)
    return p


def main_export(argv: list[str]) -> int:
    """``polytask export``: 0 once every file is written; 2 for bad input (one line)."""
    return _run_guarded("polytask export", lambda: _export(argv))


def _default_app(root: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(root)).lstrip(".-_")
    return name or "app"


def _plan(args: argparse.Namespace) -> Plan:
    if args.template_dir is not None:
        raise BadInput(
            "-t/--template-dir: polytask export has no templates; edit the written files"
        )
    if args.format not in FORMATS:
        raise BadInput(_format_problem(args.format))
    root = os.path.abspath(args.app_root)
    if not os.path.isdir(root):
        raise BadInput(f"app root {args.app_root!r} is not a folder")
    app = args.app if args.app is not None else _default_app(root)
    if not _APP.fullmatch(app):
        raise BadInput(
            f"app name {app!r}: use letters, digits, '_', '.' and '-', starting with a "
            "letter or digit (it names files in LOCATION and units)"
        )
    user = args.user if args.user is not None else app
    if not _USER.fullmatch(user):
        raise BadInput(f"user {user!r} is not a user name or a number")
    if not os.path.isabs(args.shell) or re.search(r"[\s\"'\\%$;#]", args.shell):
        raise BadInput(
            f"shell {args.shell!r} must be an absolute path without spaces, quotes or "
            "'%', e.g. /bin/sh or /bin/bash"
        )
    for what, value in (("app root", root), ("log folder", args.log or "")):
        if _CONTROL.search(value):
            raise BadInput(f"{what} {value!r} contains a line break or control character")
    log = os.path.abspath(args.log) if args.log is not None else None
    # The Procfile and env files are read from the app root, as honcho does.
    args.procfile = os.path.join(root, args.procfile)
    if args.env is None:
        default_env = os.path.join(root, ".env")
        args.env = [default_env] if os.path.isfile(default_env) else []
    else:
        args.env = [
            os.path.join(root, part.strip())
            for item in args.env
            for part in item.split(",")
            if part.strip()
        ]
    procfile, env, problems = _load(args)
    if problems:
        raise BadInput(problems[0].first_line())
    for problem in procfile.skipped:
        print(f"polytask export: warning: {ProcfileError([problem])}", file=sys.stderr)
    try:
        port = args.port or base_port({**os.environ, **env}.get("PORT"))
        counts = parse_concurrency(args.concurrency)
        instances = expand(procfile, counts, None, base_port=port)
    except ProcfileError as exc:
        raise BadInput(exc.first_line()) from None
    programs = tuple(Program(i, program_env(env, i)) for i in instances)
    return Plan(
        app=app,
        user=user,
        root=root,
        shell=args.shell,
        programs=programs,
        log=log,
        restart=args.restart or ("always" if args.format == "runit" else "on-failure"),
        timeout=args.timeout,
    )


def _export(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    plan = _plan(args)
    files = render(args.format, plan)
    location = Path(args.location)
    try:
        location.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create LOCATION {args.location!r}: {exc.strerror or exc}") from None
    for f in files:
        *parts, name = f.name.split("/")
        folder = _folder(location, parts)
        _write(folder, ExportFile(name, f.content, f.mode), args.location)
        print(os.path.join(args.location, f.name))
    return 0


def _folder(location: Path, parts: Sequence[str]) -> Path:
    """``location/parts...``, made one level at a time; a symlink on the way is refused.

    A symlink planted as a service folder would otherwise carry the files
    (and the folders made under it) outside LOCATION.
    """
    folder = location
    for part in parts:
        folder = folder / part
        if folder.is_symlink():
            raise BadInput(
                f"{str(folder)!r} is a symlink, which could lead outside LOCATION: "
                "remove it and export again"
            )
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise BadInput(f"{str(folder)!r} exists and is not a folder") from None
        except OSError as exc:
            raise BadInput(f"cannot create {str(folder)!r}: {exc.strerror or exc}") from None
    return folder


def _write(location: Path, f: ExportFile, shown: str) -> None:
    """Write ``f`` in ``location`` through a temporary file and a rename.

    The rename replaces whatever has the name (a symlink planted there is
    replaced, never followed), and a reader never sees half a file.
    """
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=location, prefix=f".{f.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f.content)
            os.fchmod(out.fileno(), f.mode)
        os.replace(tmp, location / f.name)
    except OSError as exc:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise BadInput(
            f"cannot write {f.name!r} in LOCATION {shown!r}: {exc.strerror or exc}"
        ) from None
