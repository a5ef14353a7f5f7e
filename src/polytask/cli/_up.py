"""``polytask up`` and ``polytask check``: run a Procfile's programs together, or validate it.

``up`` is a thin shell around :class:`polytask.Supervisor`: it parses the
command line, validates everything before starting anything (the same checks
as ``check``), turns SIGINT/SIGTERM/SIGHUP into a graceful stop (a second one
kills at once), and prints a summary table at the end.

Exit status (the table in docs/up.md): as honcho, the first decisive event
decides it. Under ``--restart never`` (honcho's and foreman's rule; the
default is ``on-failure``, which keeps programs running) the first program to
end stops the others and gives its own status;
a program given up on gives its own status; SIGINT / SIGTERM / SIGHUP give
128 + the signal number (130 / 143 / 129); a program not ready within its
``ready_timeout`` (polytask.toml) gives 1; 0 when everything ended cleanly;
2 for bad input (one line on stderr), a bad polytask.toml included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .._control import socket_name
from .._core.errors import PolytaskError, ProcfileError
from .._os import proc as _proc
from .._procfile import (
    DEFAULT_BASE_PORT,
    Procfile,
    base_port,
    expand,
    parse_concurrency,
    scan_procfile,
)
from .._supervisor import (
    RESTART_MODES,
    RestartMode,
    Supervisor,
    format_summary,
    load_env_files,
    scan_upconfig_files,
)
from .._upconfig import UpConfig, missing_dependencies
from .._upcontrol import ControlBusy, ControlServer
from ._args import BadInput, Parser, count, seconds
from ._events import EventLog

__all__ = ["main_check", "main_run", "main_up"]

_DEFAULT_ENV = ".env"


def _port(text: str) -> int:
    value = count(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def procfile_options(parser: argparse.ArgumentParser, *, files_in: str = "") -> None:
    """The options every command that reads a Procfile shares (up, check, run,
    export): which Procfile and env files (``files_in``: where relative paths
    start, for the help), the copies of each type, the base PORT, strictness."""
    parser.add_argument(
        "-f",
        "--procfile",
        default="Procfile",
        help=f"the Procfile{files_in} (default: ./Procfile)",
    )
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="FILE",
        help=f"env file(s) to load{files_in}, comma-separated or repeated (default: ./.env "
        "if present)",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        action="append",
        metavar="NAME=N,...",
        help="copies of each process type, e.g. web=2,worker=3; all=N sets every type not "
        "named, as in foreman (default: 1 each)",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        help=f"base PORT (default: $PORT, else {DEFAULT_BASE_PORT}); copy i of type t gets "
        "base + 100*t + i",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="Procfile lines that foreman and honcho skip (no colon, a name such as web.v2, "
        "an empty command, an indented entry) are errors, not warnings",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    procfile_options(parser)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="process types to run (default: all)"
    )


def _up_parser() -> Parser:
    p = Parser(
        prog="polytask up",
        description="Run a Procfile's programs together, several copies of each if asked, "
        "restart them when they die, and stop them all (and everything they started) "
        "on Ctrl-C or SIGTERM.",
    )
    _common(p)
    p.add_argument(
        "--restart",
        choices=RESTART_MODES,
        default=None,
        help="when to restart a program that exited (default: on-failure; never: as honcho "
        "and foreman, the first program to end stops the others and gives its exit status)",
    )
    p.add_argument(
        "-t",
        "--timeout",
        type=seconds,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when stopping (default: 5)",
    )
    # The restart tuning defaults to None so that giving one without a restarting
    # policy is caught (it would silently do nothing); _RESTART_DEFAULTS fills them.
    p.add_argument(
        "--start-seconds",
        type=seconds,
        help="with --restart on-failure/always: a run shorter than this is a failed start "
        "(default: 1)",
    )
    p.add_argument(
        "--start-retries",
        type=count,
        help="with --restart on-failure/always: restarts after failed starts in a row before "
        "a program is given up on (default: 3, so at most 4 starts in a row)",
    )
    p.add_argument(
        "--backoff",
        type=seconds,
        help="with --restart on-failure/always: first restart delay; doubles with each "
        "restart in a row (default: 0.5)",
    )
    p.add_argument(
        "--backoff-max",
        type=seconds,
        help="with --restart on-failure/always: longest restart delay (default: 30)",
    )
    p.add_argument(
        "--exit-on-failure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --restart on-failure/always: when a program is given up on, stop the "
        "others (default: on); up exits with that program's status either way",
    )
    p.add_argument(
        "--events",
        metavar="FILE",
        help="append one JSON line per spawn, exit, retry, failure, signal and stop "
        "('-' for stderr)",
    )
    p.add_argument(
        "--tui",
        action="store_true",
        help="a live view instead of the programs' output: state, pid, uptime, restarts, "
        "CPU, RSS and readiness of each, the selected one's last lines; keys to restart, "
        "stop and start one (needs a terminal)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the prefixes (default: auto, on a terminal without NO_COLOR)",
    )
    return p


_RESTART_DEFAULTS: dict[str, Any] = {
    "start_seconds": 1.0,
    "start_retries": 3,
    "backoff": 0.5,
    "backoff_max": 30.0,
    "exit_on_failure": True,
}


def _restart_options(args: argparse.Namespace) -> RestartMode:
    """The restart policy; fills the tuning defaults, refuses tuning that would do nothing."""
    restart: RestartMode = args.restart or "on-failure"
    given = [k for k in _RESTART_DEFAULTS if getattr(args, k) is not None]
    if restart == "never" and given:
        flag = "--" + given[0].replace("_", "-")
        if given[0] == "exit_on_failure" and not args.exit_on_failure:
            flag = "--no-exit-on-failure"
        raise BadInput(
            f"{flag} has no effect with --restart never: under 'never' (as honcho) the first "
            "program to end stops the others; add --restart on-failure or --restart always"
        )
    for key, value in _RESTART_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return restart


def _check_parser() -> Parser:
    p = Parser(
        prog="polytask check",
        description="Validate a Procfile (and, if given, env files, -c and process names) "
        "without starting anything; problems are reported with line numbers.",
    )
    _common(p)
    return p


def _env_files(given: Sequence[str] | None) -> list[str]:
    if given is None:
        return [_DEFAULT_ENV] if Path(_DEFAULT_ENV).is_file() else []
    return [part.strip() for item in given for part in item.split(",") if part.strip()]


def _read_file_error(kind: str, path: str, exc: OSError) -> BadInput:
    return BadInput(f"cannot read {kind} {path!r}: {exc.strerror or exc}")


def _load(args: argparse.Namespace) -> tuple[Procfile, dict[str, str], list[ProcfileError]]:
    """Read the Procfile and env files; raise BadInput for an unreadable file."""
    problems: list[ProcfileError] = []
    try:
        text = Path(args.procfile).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise _read_file_error("Procfile", args.procfile, exc) from None
    procfile, found = scan_procfile(text, source=args.procfile, strict=args.strict)
    if found:
        problems.append(ProcfileError(found))
        # Nothing runs from a Procfile with errors; its skipped lines are still shown.
        procfile = Procfile((), procfile.source, procfile.skipped)
    env: dict[str, str] = {}
    for path in _env_files(args.env):
        try:
            env.update(load_env_files([path], environ={**os.environ, **env}))
        except OSError as exc:
            raise _read_file_error("env file", path, exc) from None
        except ProcfileError as exc:
            problems.append(exc)
    return procfile, env, problems


def _load_config(
    args: argparse.Namespace, procfile: Procfile
) -> tuple[UpConfig, list[ProcfileError]]:
    """The polytask.toml (or pyproject.toml table) beside the Procfile, and its problems."""
    if not procfile.entries:
        return UpConfig({}), []
    config, found = scan_upconfig_files(args.procfile, procfile.names)
    return config, [ProcfileError(found)] if found else []


def _run_guarded(prog: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except BadInput as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


def main_check(argv: list[str]) -> int:
    """``polytask check``: 0 if valid; else every problem on stderr and exit 2."""

    def run() -> int:
        args = _check_parser().parse_args(argv)
        procfile, env, problems = _load(args)
        config, config_problems = _load_config(args, procfile)
        problems += config_problems
        try:
            counts = parse_concurrency(args.concurrency)
        except ProcfileError as exc:
            problems.append(exc)
            counts = {}
        if procfile.entries:
            try:
                port = args.port or base_port({**os.environ, **env}.get("PORT"))
                instances = expand(procfile, counts, args.names, base_port=port)
            except ProcfileError as exc:
                problems.append(exc)
            else:
                if missing := missing_dependencies(config, [i.kind for i in instances]):
                    problems.append(ProcfileError(missing))
        for problem in procfile.skipped:
            print(f"polytask check: warning: {ProcfileError([problem])}", file=sys.stderr)
        if problems:
            for error in problems:
                for problem in error.problems:
                    print(f"polytask check: error: {ProcfileError([problem])}", file=sys.stderr)
            return 2
        kinds = ", ".join(
            f"{e.name} x{n}" if (n := sum(i.kind == e.name for i in instances)) != 1 else e.name
            for e in procfile.entries
            if any(i.kind == e.name for i in instances)
        )
        print(
            f"{args.procfile}: OK, {len(procfile.entries)} process type"
            f"{'s' if len(procfile.entries) != 1 else ''}; would start {len(instances)} "
            f"program{'s' if len(instances) != 1 else ''}: {kinds}"
            + (f"; settings from {config.source}" if config else "")
            + (
                f" ({len(procfile.skipped)} line{'s' if len(procfile.skipped) != 1 else ''} "
                "skipped, see the warnings)"
                if procfile.skipped
                else ""
            )
        )
        return 0

    return _run_guarded("polytask check", run)


def main_up(argv: list[str]) -> int:
    """``polytask up``: run the programs until they end, fail, or a signal stops them."""
    return _run_guarded("polytask up", lambda: _up(argv))


def _up(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    restart = _restart_options(args)
    procfile, env, problems = _load(args)
    config, config_problems = _load_config(args, procfile)
    problems += config_problems
    if problems:
        raise BadInput(problems[0].first_line())
    events: EventLog | None = None
    if args.events:
        try:
            events = EventLog.open(args.events)
        except OSError as exc:
            raise _read_file_error("events file", args.events, exc) from None
    sink = None
    if args.tui:
        from ._tui import terminal_problem

        problem = terminal_problem()
        if problem is not None:
            raise BadInput(problem)
        # The view shows the lines from the run's log ring: none to the terminal.
        sink = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        sup = Supervisor(
            procfile,
            concurrency=args.concurrency,
            names=args.names,
            env=env,
            port=args.port,
            config=config,
            restart=restart,
            timeout=args.timeout,
            start_seconds=args.start_seconds,
            start_retries=args.start_retries,
            backoff=args.backoff,
            backoff_max=max(args.backoff_max, args.backoff),
            exit_on_failure=args.exit_on_failure,
            colour=None if args.color == "auto" else args.color == "always",
            output=sink,
            on_event=None if events is None else events.write,
        )
    except ValueError as exc:  # ProcfileError included
        if events is not None:
            events.close()
        if sink is not None:
            sink.close()
        text = exc.first_line() if isinstance(exc, ProcfileError) else str(exc)
        raise BadInput(text) from None
    try:
        return _supervise(sup, args.procfile, tui=args.tui)
    finally:
        if sink is not None:
            sink.close()
        if events is not None:
            events.close()


def _claim_control(sup: Supervisor, folder: str, procfile: str) -> ControlServer | None:
    """The control socket for ``polytask ctl`` (docs/up.md, "Control"); a second up in
    the folder is refused (exit 2) before anything starts. A folder where the socket
    cannot be made (read-only, say) only costs the control: up runs without it."""
    server = ControlServer(sup, folder, socket_name(procfile))
    try:
        return server.claim()
    except ControlBusy as exc:
        raise BadInput(str(exc)) from None
    except (OSError, PolytaskError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(
            f"polytask up: warning: no control socket ({server.path}: {why}); "
            "'polytask ctl' cannot reach this run",
            file=sys.stderr,
        )
        return None


def _supervise(sup: Supervisor, procfile: str, *, tui: bool = False) -> int:
    """Run ``sup`` to its end (with the live view of ``--tui``); its exit status.
    ``procfile``: its path, whose folder holds the control socket."""
    folder = os.path.dirname(os.path.abspath(procfile))
    server = _claim_control(sup, folder, procfile)
    try:
        return _supervise_with(sup, server, tui=tui)
    finally:
        if server is not None:
            server.close()


def _supervise_with(
    sup: Supervisor, server: ControlServer | None = None, *, tui: bool = False
) -> int:
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        signals_seen.append(signum)
        # As honcho (and a shell): stopped by signal N, exit 128 + N, unless a
        # program's end decided the status first.
        if len(signals_seen) == 1:
            sup.request_stop(f"{name} received", status=128 + signum)
        else:
            sup.request_stop(f"second signal, {name}", kill=True, status=128 + signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    view = None
    # This process is polytask's own: orphans of the programs (a daemon's double
    # fork) become its children, not init's, so that those that also left the
    # program's group and environment (setsid + env -i: the supervisor finds
    # neither) are still ended with the run (_end_adopted).
    _proc.become_subreaper()
    try:
        sup.start()
        if server is not None:
            server.start()
        if tui:
            from ._tui import LiveView

            view = LiveView(sup)
            view.open()
            while not view.step():
                sup._reap_adopted()
        while not sup.wait(timeout=0.5):
            sup._reap_adopted()
    except PolytaskError as exc:
        print(f"polytask up: {exc}", file=sys.stderr)
    finally:
        if view is not None:
            view.close()
        if _ended(sup):  # not while it may still own programs (our children too)
            _end_adopted(sup.timeout)
        for s, handler in previous.items():
            signal.signal(s, handler)
    code = sup.returncode if sup.returncode is not None else 1
    try:
        sys.stdout.flush()
        print(format_summary(sup.status()), flush=True)
    except (BrokenPipeError, ValueError):
        pass
    return code


def _ended(sup: Supervisor) -> bool:
    """Whether ``sup`` has ended every program it started (or started none)."""
    try:
        return sup.wait(timeout=0)
    except RuntimeError:  # never started
        return True
    except PolytaskError:  # its loop failed: its clean-up ended every program
        return True


def _end_adopted(grace: float) -> None:
    """End what is left among our children once every program has ended: orphans
    adopted as their subreaper (and, round after round, their own orphans), with
    the one kill policy (SIGTERM, ``grace``, SIGKILL), then reap every zombie."""
    ended: list[int] = []
    for _ in range(5):
        left = [p for p in _proc.stray_children(()) if _proc.pid_state(p) not in (b"Z", b"X")]
        if not left:
            break
        ended += left
        _proc.end_processes(left, grace)
    for pid in _proc.stray_children(()):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if ended:
        pids = ", ".join(map(str, sorted(set(ended))))
        print(
            f"polytask up: ended {len(set(ended))} process(es) left by the programs outside "
            f"their process groups: pid {pids}",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- polytask run


def _run_parser() -> Parser:
    p = Parser(
        prog="polytask run",
        description="Run one command with the env files loaded, as 'foreman run' and "
        "'honcho run' do; a Procfile type name runs its command with the PORT, PS and "
        "HONCHO_PROCESS_NAME its first copy gets under 'up'. polytask replaces itself "
        "with the command (exec): signals reach it directly and its exit status is "
        "polytask run's.",
    )
    p.add_argument(
        "-f", "--procfile", default="Procfile", help="the Procfile (default: ./Procfile)"
    )
    p.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="FILE",
        help="env file(s) to load, comma-separated or repeated (default: ./.env if present)",
    )
    p.add_argument(
        "-p",
        "--port",
        type=_port,
        help=f"base PORT for a Procfile type (default: $PORT, else {DEFAULT_BASE_PORT})",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    return p


def main_run(argv: list[str]) -> int:
    """``polytask run``: exec COMMAND with the env files loaded; returns only on error."""
    return _run_guarded("polytask run", lambda: _run(argv))


def _run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    command: list[str] = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise BadInput("no command given (usage: polytask run [-e FILE] COMMAND [ARG...])")
    env = dict(os.environ)
    for path in _env_files(args.env):
        try:
            env.update(load_env_files([path], environ=env))
        except OSError as exc:
            raise _read_file_error("env file", path, exc) from None
        except ProcfileError as exc:
            raise BadInput(exc.first_line()) from None
    argv_out = command
    if len(command) == 1 and Path(args.procfile).is_file():
        # foreman's `run web`: a Procfile type runs its command as `up` runs its first copy.
        text = Path(args.procfile).read_text(encoding="utf-8", errors="replace")
        procfile, problems = scan_procfile(text, source=args.procfile)
        if not problems and command[0] in procfile:
            try:
                base = args.port or base_port(env.get("PORT"))
                (inst,) = expand(procfile, {command[0]: 1}, [command[0]], base_port=base)
            except ProcfileError as exc:
                raise BadInput(exc.first_line()) from None
            env["PORT"] = str(inst.port)
            env["PS"] = env["HONCHO_PROCESS_NAME"] = inst.name
            assert isinstance(inst.command, str)
            argv_out = ["/bin/sh", "-c", inst.command]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv_out[0], argv_out, env)
    except FileNotFoundError:
        print(f"polytask run: error: command not found: {argv_out[0]!r}", file=sys.stderr)
        return 127  # as a shell says it
    except OSError as exc:
        print(f"polytask run: error: cannot run {argv_out[0]!r}: {exc.strerror}", file=sys.stderr)
        return 126
