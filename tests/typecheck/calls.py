"""Calls a user's type checker should accept, and calls it should refuse.

Not a test module: tests/test_typing.py runs mypy on this file and checks
that it reports exactly the lines marked ``# E: <error code>`` and that each
``reveal_type`` line shows the type after ``# R:``. Nothing here runs.
"""

from __future__ import annotations

import functools
from typing import reveal_type

import polytask as pt


def work(x: int) -> int:
    return x * 2


def label(x: int, *, sep: str = ":") -> str:
    return f"{x}{sep}"


def needs_key(x: int, *, key: str) -> str:
    return f"{x}{key}"


def nothing() -> None:
    pass


# --- pt.spawn: positional arguments are checked against the function's parameters
reveal_type(pt.spawn(work, 1))  # R: Task[int]
reveal_type(pt.spawn(label, 1, backend="process", timeout=5))  # R: Task[str]
pt.spawn(work, 1, backend="process", timeout=2.5, name="w", daemon=True)
pt.spawn(nothing)
pt.spawn(sum, [1, 2, 3])
pt.spawn(work, "wrong type")  # E: arg-type
pt.spawn(work, "wrong type", backend="process")  # E: arg-type
pt.spawn(work)  # E: call-arg, arg-type
pt.spawn(work, 1, 2)  # E: call-arg, arg-type
pt.spawn(work, 1, backend=3)  # E: call-arg
pt.spawn(work, 1, timeout="soon")  # E: call-arg
pt.spawn(work, 1, daemon="yes")  # E: call-arg

# keyword arguments for the function: checked when no option is given ...
pt.spawn(label, 1, sep="-")
pt.spawn(needs_key, 1, key="k")
pt.spawn(needs_key, 1)  # E: arg-type
pt.spawn(needs_key, x=1, key="k")
# ... and with options, the positional ones still are.
pt.spawn(label, 1, sep="-", backend="process")
pt.spawn(label, "wrong", sep="-", backend="process")  # E: call-arg, arg-type
# A required keyword-only parameter together with an option: through partial.
pt.spawn(functools.partial(needs_key, key="k"), 1, backend="process")


# --- @pt.background keeps the function's parameters and wraps its return in a Task
@pt.background
def double(x: int) -> int:
    return x * 2


@pt.background(backend="process", timeout=10)
def shout(text: str, *, times: int = 1) -> str:
    return text.upper() * times


reveal_type(double(2))  # R: Task[int]
reveal_type(shout("hi", times=2))  # R: Task[str]
double("two")  # E: arg-type
shout("hi", times="2")  # E: arg-type
shout()  # E: call-arg
pt.background(backend="process", timeout="later")  # E: call-overload


# --- TaskGroup.spawn: as pt.spawn
with pt.TaskGroup() as g:
    reveal_type(g.spawn(work, 1))  # R: Task[int]
    g.spawn(work, 1, name="w", timeout=3)
    g.spawn(label, 1, sep="-", timeout=3)
    g.spawn(needs_key, 1, key="k")
    g.spawn(work, "wrong type")  # E: arg-type
    g.spawn(label, "wrong", sep="-", timeout=3)  # E: call-arg, arg-type


# --- Known gaps, pinned so that a fix shows: a keyword argument that fits no
# parameter of the function is not flagged (it fails when the task runs), since
# the overload that lets keyword arguments and options mix cannot check them.
pt.spawn(work, 1, bogus=3)
with pt.TaskGroup() as g:
    g.spawn(work, 1, backend="process")  # TaskGroup.spawn has no backend= option
