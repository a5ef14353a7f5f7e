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


# --- Pool.submit: as pt.spawn, with the pool's options timeout= and name=
def pair(a: int, b: str) -> tuple[int, str]:
    return a, b


def triple(a: int, b: str, c: float) -> str:
    return f"{a}{b}{c}"


pool = pt.Pool(2)
reveal_type(pool.submit(work, 1))  # R: Task[int]
reveal_type(pool.submit(work, 1).result())  # R: int
reveal_type(pool.submit(label, 1, timeout=5, name="l"))  # R: Task[str]
pool.submit(work, 1, timeout=pt.DEFAULT)
pool.submit(label, 1, sep="-")
pool.submit(needs_key, x=1, key="k")
pool.submit(work, "wrong type")  # E: arg-type
pool.submit(work, "wrong type", timeout=5)  # E: arg-type
pool.submit(work)  # E: call-arg, arg-type
pool.submit(work, 1, timeout="soon")  # E: call-arg
pool.submit(label, "wrong", sep="-", name="l")  # E: call-arg, arg-type
pool.submit(functools.partial(needs_key, key="k"), 1, timeout=5)

# --- Pool.map, imap, imap_unordered: fn's parameters against the element types
reveal_type(pool.map(work, [1, 2]))  # R: list[int]
reveal_type(pool.map(work, range(3), 10))  # R: list[int]
reveal_type(pool.map(pair, [1], ["a"], chunksize=4))  # R: list[tuple[int, str]]
reveal_type(pool.map(str, [1.5]))  # R: list[str]
reveal_type(pool.imap(work, [1, 2]))  # R: MapIterator[int]
reveal_type(pool.imap_unordered(label, (i for i in range(3))))  # R: MapIterator[str]
reveal_type(next(pool.imap(work, [1])))  # R: int
reveal_type(pool.map(work, [1], return_exceptions=True))  # R: list[int | BaseException]
reveal_type(pool.imap(work, [1], return_exceptions=True))  # R: MapIterator[int | BaseException]
pool.map(work, ["a"])  # E: arg-type
pool.map(work, ["a"], return_exceptions=True)  # E: arg-type
pool.imap(work, ["a"], progress=True)  # E: arg-type
pool.imap_unordered(work, ["a"])  # E: arg-type
pool.map(pair, [1], [2])  # E: arg-type
pool.map(work, [1], [2])  # E: arg-type
pool.map(work, [1], chunksize="big")  # E: call-overload
pool.map(work)  # E: call-overload
# three iterables and more: the result type is kept, the elements are not checked
reveal_type(pool.map(triple, [1], ["a"], [2.5]))  # R: list[str]
pool.map(triple, ["a"], [1], [2])  # not checked
reveal_type(pool.map(lambda a, b, c: f"{a}{b}{c}", [1], [2], [3], 10))  # R: list[str]


async def consume() -> None:
    async for r in pool.amap(work, [1, 2], ordered=False):
        reveal_type(r)  # R: int
    async for r2 in pool.amap(work, [1], return_exceptions=True):
        reveal_type(r2)  # R: int | BaseException
    pool.amap(work, ["a"])  # E: arg-type


# --- as typeshed types multiprocessing.Pool: the result type is kept, args/kwds
# (apply, apply_async) and rows (starmap) are not checked against fn.
reveal_type(pool.apply(work, (1,)))  # R: int
reveal_type(pool.apply_async(label, (1,), {"sep": "-"}))  # R: AsyncResult[str]
reveal_type(pool.apply_async(work, [1]).get())  # R: int
reveal_type(pool.starmap(pair, [(1, "a")]))  # R: list[tuple[int, str]]
reveal_type(pool.map_async(work, [1]))  # R: AsyncResult[list[int]]
reveal_type(pool.starmap_async(pair, [[1, "a"]]).get())  # R: list[tuple[int, str]]
pool.map_async(work, ["a"])  # E: arg-type
pool.apply_async(work, (1,), callback=lambda r: r.upper())  # E: attr-defined
pool.apply(work, 1)  # E: arg-type
pool.apply(work, ("wrong type",))  # not checked, as for multiprocessing.Pool.apply
pool.starmap(pair, [("a", 1)])  # not checked, as for multiprocessing.Pool.starmap


# --- Executor: concurrent.futures.Executor's signatures (typeshed), results typed
with pt.Executor(2) as ex:
    reveal_type(ex.submit(work, 1))  # R: Task[int]
    reveal_type(ex.submit(work, 1).result())  # R: int
    reveal_type(ex.submit(needs_key, 1, key="k"))  # R: Task[str]
    ex.submit(label, x=1, sep="-")
    ex.submit(work, "wrong type")  # E: arg-type
    ex.submit(needs_key, 1)  # E: call-arg
    ex.submit(work, 1, timeout=5)  # E: call-arg
    reveal_type(ex.map(work, [1, 2]))  # R: MapIterator[int]
    reveal_type(list(ex.map(pair, [1], ["a"], timeout=5)))  # R: list[tuple[int, str]]
    ex.map(work, [1], timeout="soon")  # E: arg-type
    # The elements are not checked: concurrent.futures.Executor.map takes
    # Callable[..., T] and any iterables, and a subclass must accept what it does.
    ex.map(work, ["a"])


# --- Known gaps, pinned so that a fix shows: a keyword argument that fits no
# parameter of the function is not flagged (it fails when the task runs), since
# the overload that lets keyword arguments and options mix cannot check them.
pt.spawn(work, 1, bogus=3)
pool.submit(work, 1, bogus=3)
pool.submit(label, 1, sep=3, timeout=5)  # sep is not checked when timeout= is given
with pt.TaskGroup() as g:
    g.spawn(work, 1, backend="process")  # TaskGroup.spawn has no backend= option
