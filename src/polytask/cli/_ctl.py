"""``polytask ctl``: control a running ``polytask up`` through its socket.

The ``up`` is found by its socket, ``.polytask.sock`` in the Procfile's folder
(``-f PROCFILE``, default ``./Procfile``). Exit status: 0 when done; 1 when
no ``up`` runs there, it refused (the run is stopping...), or a timeout
passed; 2 for bad input (an unknown program name: the message lists them;
a bad option); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .._control import ControlProtocolError, Request, format_status, socket_name
from .._upcontrol import DEFAULT_TIMEOUT, FOLLOW_READ_TIMEOUT, ControlError, request
from ._args import BadInput, Parser, count, seconds

__all__ = ["main_ctl"]


def _parser() -> Parser:
    p = Parser(
        prog="polytask ctl",
        description="Control the polytask up running in this folder (or the folder of -f "
        "PROCFILE): list its programs, start, stop or restart one, read its output, wait "
        "until it is ready.",
    )
    p.add_argument(
        "-f",
        "--procfile",
        default="Procfile",
        help="the Procfile of the up to control; its folder holds the socket (default: ./Procfile)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def timeout_option(q: argparse.ArgumentParser, what: str) -> None:
        q.add_argument(
            "--timeout",
            type=seconds,
            default=DEFAULT_TIMEOUT,
            help=f"seconds to wait {what} (default: {DEFAULT_TIMEOUT:g})",
        )

    q = sub.add_parser(
        "status", help="a table of the programs: state, pid, uptime, restarts, ready"
    )
    q.add_argument("--json", action="store_true", help="the programs as JSON instead")
    timeout_option(q, "for the answer")
    name_help = "a process type (every copy: web) or one copy (web.2)"
    for op, text in (
        ("start", "start a program stopped by ctl stop (or one that exited or failed)"),
        ("stop", "stop a program and keep it stopped (no restart) until ctl start"),
        ("restart", "stop a program and start it again"),
    ):
        q = sub.add_parser(op, help=text, description=text)
        q.add_argument("name", metavar="NAME", help=name_help)
        timeout_option(q, f"until it is {'started' if op != 'stop' else 'stopped'}")
    q = sub.add_parser("logs", help="the recent output of a program (or of all), -f to follow")
    q.add_argument("name", metavar="NAME", nargs="?", help=name_help + " (default: all)")
    q.add_argument(
        "-n", "--lines", type=count, default=100, help="how many recent lines (default: 100)"
    )
    q.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new lines until Ctrl-C or until up ends",
    )
    q = sub.add_parser(
        "wait-ready",
        help="wait until a program is ready (its probe succeeded; without one: running)",
    )
    q.add_argument("name", metavar="NAME", help=name_help)
    timeout_option(q, "(exit 1 when it is not ready by then)")
    return p


def main_ctl(argv: list[str]) -> int:
    """``polytask ctl``: returns the exit status (see the module's docstring)."""
    try:
        return _ctl(argv)
    except BadInput as exc:
        print(f"polytask ctl: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (ControlError, ControlProtocolError) as exc:
        print(f"polytask ctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `polytask ctl logs | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        except OSError:
            pass
        return 0


def _ctl(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.procfile))
    op = args.command
    if op == "logs":
        req = Request("logs", args.name, lines=args.lines, follow=args.follow)
        timeout = FOLLOW_READ_TIMEOUT if args.follow else DEFAULT_TIMEOUT
    else:
        name = getattr(args, "name", None)
        req = Request(op, name, timeout=args.timeout if op != "status" else None)
        # The server gives up at the timeout and says so: read a little longer.
        timeout = args.timeout + 5.0
    out = sys.stdout.buffer
    for msg in request(folder, req, timeout=timeout, name=socket_name(args.procfile)):
        if "log" in msg:
            out.write(_raw(msg["log"]) + b" | " + _raw(msg["line"]) + b"\n")
            if args.command == "logs" and args.follow:
                out.flush()
            continue
        if "ok" not in msg:
            continue  # a tick: up is alive, nothing new
        out.flush()
        return _finish(op, args, msg)
    return 1  # pragma: no cover - request() ends with a reply or raises


def _raw(text: str) -> bytes:
    """A line's bytes as the program printed them (undecodable ones come as surrogate
    escapes); in a line with a surrogate no decoder makes (garbage), each one as ``?``."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _finish(op: str, args: argparse.Namespace, msg: dict[str, Any]) -> int:
    if not msg["ok"]:
        print(f"polytask ctl {op}: error: {msg['error']}", file=sys.stderr)
        return 2 if msg.get("kind") == "input" else 1
    if op == "logs":
        if msg.get("end"):
            print(f"polytask ctl logs: {msg['end']}", file=sys.stderr)
        return 0
    programs = msg.get("programs") or []
    if op == "status" and args.json:
        print(json.dumps(programs, indent=2))
    else:
        print(format_status(programs))
    return 0
