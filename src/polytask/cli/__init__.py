"""The ``polytask`` command.

Each subcommand lives in its own private module, imported only when that
subcommand runs, so that ``polytask parallel --help`` starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

__all__ = ["main"]

# name -> (module, function, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("polytask.cli._demo", "main", "show what polytask does, in under 30 seconds"),
    "parallel": (
        "polytask.cli._parallel",
        "main",
        "run a command over many inputs (GNU parallel style)",
    ),
    "up": (
        "polytask.cli._up",
        "main_up",
        "run a Procfile's programs together and keep them running",
    ),
    "check": ("polytask.cli._up", "main_check", "validate a Procfile"),
    "run": (
        "polytask.cli._up",
        "main_run",
        "run one command (or Procfile type) with the environment up would give it",
    ),
    "ctl": (
        "polytask.cli._ctl",
        "main_ctl",
        "control a running up: status, start, stop, restart, logs, wait-ready",
    ),
    "export": (
        "polytask.cli._export",
        "main_export",
        "write systemd, supervisord or runit files that run a Procfile's programs",
    ),
}

_USAGE = "usage: polytask [-h] [--version] {" + ",".join(_COMMANDS) + "} ..."


def _help() -> str:
    lines = [
        _USAGE,
        "",
        "One toolkit for multitasking: threads, processes, programs, clusters.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, (_, _, text) in _COMMANDS.items()]
    lines += ["", "Run 'polytask COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polytask`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"polytask {version('polytask')}")
        return 0
    entry = _COMMANDS.get(args[0])
    if entry is None:
        print(f"{_USAGE}\npolytask: error: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    module, func, _ = entry
    fn = getattr(import_module(module), func)
    return int(fn(args[1:]) or 0)


def _console() -> None:  # pragma: no cover - `python -m polytask` and `python -m polytask.cli`
    sys.exit(main())
