"""What ``up``, ``check``, ``run``, ``export`` and ``ctl`` share in reading a command line:
bad input as one line for stderr (exit 2), and the number types of their options."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["BadInput", "Parser", "count", "seconds"]


class BadInput(Exception):
    """One line for stderr, then exit 2."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are :class:`BadInput` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see '{self.prog} --help')")


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value
