"""Run-time limits of 0 and inf on every path that takes one.

A run-time limit is the ``timeout=`` of what runs (a task, a map's items, a
group, a pipeline, a program), not of a wait (``result(timeout=0)``, covered
by test_timeout_values.py). The rule, the same on every path and backend:

- ``0`` has expired by the time the work could start. A task's function is
  never called, and the task fails with ``TaskTimeout``, however fast the
  function is: no race between the function and the timer. A program is
  started and ended at once (``CommandTimeout``, or ``timed_out`` from
  ``run_many``), as ``subprocess.run(timeout=0)`` does.
- ``float("inf")`` is no limit, the same as ``None``.
- A negative number or NaN is a ``ValueError`` at the call.

Each function records that it ran by creating a file, so that "never called"
is checked in worker processes too. One test per backend and limit runs every
path with the same pools (made on first use: a worker start is the slow part,
and a limit of 0 starts none), and lists every path that broke the rule.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import polytask as pt
from helpers import wait_until

BACKENDS = ("thread", "process")
# Run-time limits that are no limit, besides 0 (the one that has expired).
UNLIMITED = {"inf": math.inf, "none": None}
ZERO_REPEATS = 3  # of each kind of task: a race shows as a mix of outcomes


def mark(path: str) -> str:
    """The task itself: leave a trace, return the file's name."""
    with open(path, "w"):
        pass
    return os.path.basename(path)


def mark2(path: str, suffix: str) -> str:
    return mark(path + suffix)


# As fast as a task gets (a worker finds them by reference in the stdlib, and
# they do next to nothing): what a limit of 0 used to lose the race to.
name = os.path.basename
name2 = os.path.join


class Ctx:
    """One path's setting: the test's pools, the backend, and where the traces go."""

    def __init__(self, pools: Pools, backend: str, tmp: Path) -> None:
        self.pools = pools
        self.backend = backend
        self.tmp = tmp
        self.n = 0
        # The functions the paths run: leaving a trace (or returning at once).
        self.f, self.f2 = mark, mark2

    def paths(self, k: int) -> list[str]:
        out = []
        for _ in range(k):
            self.n += 1
            out.append(str(self.tmp / f"m{self.n}"))
        return out

    def pool(self, default: Any = None) -> pt.Pool:
        return self.pools.pool(self.backend, default)

    def executor(self, default: Any) -> pt.Executor:
        return self.pools.executor(self.backend, default)


class Pools:
    """Pools and executors made on first use, shared by the paths of one test."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str, Any], Any] = {}

    def pool(self, backend: str, default: Any) -> pt.Pool:
        key = ("pool", backend, default)
        if key not in self._made:
            self._made[key] = pt.Pool(2, backend=backend, timeout=default)
        return self._made[key]  # type: ignore[no-any-return]

    def executor(self, backend: str, default: Any) -> pt.Executor:
        key = ("executor", backend, default)
        if key not in self._made:
            self._made[key] = pt.Executor(2, backend=backend, timeout=default)
        return self._made[key]  # type: ignore[no-any-return]

    def close(self) -> None:
        for obj in self._made.values():
            if isinstance(obj, pt.Executor):
                obj.shutdown(wait=True)
            else:
                obj.close()
                obj.join()


@pytest.fixture
def pools() -> Iterator[Pools]:
    made = Pools()
    yield made
    made.close()


# --------------------------------------------------------------------------- the paths
# Each takes (ctx, limit) and returns (what it gave, the traces the work leaves when it runs).


def _spawn(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return pt.spawn(c.f, p, backend=c.backend, timeout=t).result(timeout=60), [p]


def _background(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return pt.background(backend=c.backend, timeout=t)(c.f)(p).result(timeout=60), [p]


def _alone(group: Callable[[], Any]) -> Any:
    """Run ``group`` (a TaskGroup block); the one error of its task, if any, unwrapped."""
    try:
        return group()
    except ExceptionGroup as eg:
        [exc] = eg.exceptions
        raise exc from None


def _group_spawn(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)

    def block() -> Any:
        with pt.TaskGroup(c.backend) as g:
            task = g.spawn(c.f, p, timeout=t)
        return task.result(timeout=0)

    return _alone(block), [p]


def _group_deadline(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(2)
    with pt.TaskGroup(c.backend, timeout=t) as g:
        tasks = [g.spawn(c.f, p) for p in ps]
    return [task.result(timeout=0) for task in tasks], ps


def _submit(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return c.pool().submit(c.f, p, timeout=t).result(timeout=60), [p]


def _submit_many(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    # More tasks than workers: they queue and travel in chunks, not the lone-task path.
    ps = c.paths(6)
    pool = c.pool()
    tasks = [pool.submit(c.f, p, timeout=t) for p in ps]
    return [task.result(timeout=60) for task in tasks], ps


def _map(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(5)
    return c.pool().map(c.f, ps, timeout=t), ps


def _map_chunked(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(6)
    return c.pool().map(c.f, ps, chunksize=3, timeout=t), ps


def _starmap(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(3)
    out = c.pool().starmap(c.f2, [(p, "") for p in ps], timeout=t)
    return out, ps


def _imap(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(5)
    return list(c.pool().imap(c.f, iter(ps), timeout=t)), ps


def _imap_unordered(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(5)
    return sorted(c.pool().imap_unordered(c.f, iter(ps), timeout=t)), ps


def _amap(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(3)

    async def collect() -> list[str]:
        return [x async for x in c.pool().amap(c.f, ps, timeout=t)]

    return asyncio.run(collect()), ps


def _default_submit(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return c.pool(t).submit(c.f, p).result(timeout=60), [p]


def _default_apply(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return c.pool(t).apply(c.f, (p,)), [p]


def _default_apply_async(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return c.pool(t).apply_async(c.f, (p,)).get(timeout=60), [p]


def _default_map(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(4)
    return c.pool(t).map(c.f, ps), ps


def _default_map_async(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(4)
    return c.pool(t).map_async(c.f, ps).get(timeout=60), ps


def _default_starmap_async(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(2)
    return c.pool(t).starmap_async(c.f2, [(p, "") for p in ps]).get(timeout=60), ps


def _executor_submit(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    [p] = c.paths(1)
    return c.executor(t).submit(c.f, p).result(timeout=60), [p]


def _executor_map(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(4)
    return list(c.executor(t).map(c.f, ps, timeout=60)), ps


def _pipeline(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    ps = c.paths(3)
    return list(pt.pipeline(ps, c.f, backend=c.backend, timeout=t)), ps


def _anyio_run_task(c: Ctx, t: Any) -> tuple[Any, list[str]]:
    import anyio

    import polytask.anyio as pta

    [p] = c.paths(1)
    return anyio.run(lambda: pta.run_task(c.f, p, backend=c.backend, timeout=t)), [p]


TASK_PATHS: dict[str, Callable[[Ctx, Any], tuple[Any, list[str]]]] = {
    "spawn": _spawn,
    "background": _background,
    "TaskGroup.spawn": _group_spawn,
    "TaskGroup(timeout=)": _group_deadline,
    "Pool.submit": _submit,
    "Pool.submit(queued)": _submit_many,
    "Pool.map": _map,
    "Pool.map(chunksize=3)": _map_chunked,
    "Pool.starmap": _starmap,
    "Pool.imap": _imap,
    "Pool.imap_unordered": _imap_unordered,
    "Pool.amap": _amap,
    "Pool(timeout=).submit": _default_submit,
    "Pool(timeout=).apply": _default_apply,
    "Pool(timeout=).apply_async": _default_apply_async,
    "Pool(timeout=).map": _default_map,
    "Pool(timeout=).map_async": _default_map_async,
    "Pool(timeout=).starmap_async": _default_starmap_async,
    "Executor(timeout=).submit": _executor_submit,
    "Executor(timeout=).map": _executor_map,
    "pipeline": _pipeline,
    "anyio.run_task": _anyio_run_task,
}


def _names(ps: list[str]) -> list[str]:
    return [os.path.basename(p) for p in ps]


def _traces(ps: list[str]) -> list[str]:
    return [os.path.basename(p) for p in ps if os.path.exists(p)]


def _broken(
    pools: Pools, backend: str, tmp: Path, check: Callable[[Ctx, str], str | None]
) -> dict[str, str]:
    """Each path's problem under ``check`` (None: none), each path in a folder of its own."""
    wrong = {}
    for i, path in enumerate(TASK_PATHS):
        folder = tmp / str(i)
        folder.mkdir()
        try:
            problem = check(Ctx(pools, backend, folder), path)
        except Exception as exc:  # noqa: BLE001 - reported with the path it came from
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            wrong[path] = problem
    return wrong


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_never_runs_the_task(pools: Pools, tmp_path: Path, backend: str) -> None:
    def check(ctx: Ctx, path: str) -> str | None:
        outcomes = []
        # First the fastest task there is (the race 0 used to lose), then one that
        # leaves a trace if it is called at all.
        for fast in [True] * ZERO_REPEATS + [False] * ZERO_REPEATS:
            ctx.f, ctx.f2 = (name, name2) if fast else (mark, mark2)
            try:
                got = TASK_PATHS[path](ctx, 0)[0]
                outcomes.append(f"returned {got!r}")
            except pt.TaskTimeout as exc:
                outcomes.append("TaskTimeout" if exc.timeout == 0 else f"timeout={exc.timeout}")
        ran = sorted(p.name for p in ctx.tmp.iterdir())
        if outcomes != ["TaskTimeout"] * len(outcomes) or ran:
            return f"{outcomes}; the function ran for {ran}"
        return None

    wrong = _broken(pools, backend, tmp_path, check)
    assert not wrong, "\n".join(f"{p}(timeout=0) on {backend}: {w}" for p, w in wrong.items())


@pytest.mark.parametrize("limit", list(UNLIMITED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_and_none_are_no_limit(pools: Pools, tmp_path: Path, backend: str, limit: str) -> None:
    def check(ctx: Ctx, path: str) -> str | None:
        got, ps = TASK_PATHS[path](ctx, UNLIMITED[limit])
        want = _names(ps)
        if (sorted(got) if isinstance(got, list) else [got]) != sorted(want):
            return f"gave {got!r}, not {want!r}"
        if _traces(ps) != want:
            return f"ran for {_traces(ps)}, not {want}"
        return None

    wrong = _broken(pools, backend, tmp_path, check)
    assert not wrong, "\n".join(f"{p}(timeout={limit}) on {backend}: {w}" for p, w in wrong.items())


def test_a_per_call_limit_overrides_the_pools(pools: Pools, tmp_path: Path) -> None:
    ctx = Ctx(pools, "thread", tmp_path)
    [p, q] = ctx.paths(2)
    assert ctx.pool(0).submit(mark, p, timeout=math.inf).result(timeout=60) == "m1"
    with pytest.raises(pt.TaskTimeout):
        ctx.pool(math.inf).submit(mark, q, timeout=0).result(timeout=60)
    assert _traces([p, q]) == ["m1"]


def test_zero_with_retries_still_never_runs(tmp_path: Path) -> None:
    # TaskTimeout is in retry_on by default: each retry has expired as well.
    with pt.Pool(2, backend="thread", timeout=0, retries=2) as pool:
        ps = [str(tmp_path / f"r{i}") for i in range(4)]
        out = pool.map(mark, ps, return_exceptions=True)
        task = pool.submit(mark, str(tmp_path / "s"))
        with pytest.raises(pt.TaskTimeout):
            task.result(timeout=60)
    assert all(isinstance(x, pt.TaskTimeout) for x in out), out
    assert list(tmp_path.iterdir()) == []


def test_zero_on_a_long_map_neither_recurses_nor_runs(tmp_path: Path) -> None:
    # Every item fails at once, in the caller's thread: settled in a loop, not by
    # each failure launching the next from inside its own callback.
    for backend in BACKENDS:
        with pt.Pool(2, backend=backend, timeout=0) as pool:
            out = pool.map(
                mark, [str(tmp_path / f"x{i}") for i in range(3000)], return_exceptions=True
            )
        assert len(out) == 3000 and all(isinstance(x, pt.TaskTimeout) for x in out)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- programs


def _run(t: Any) -> list[bool]:
    return [pt.run(["true"], timeout=t).timed_out]


def _stream(t: Any) -> list[bool]:
    with pt.stream(["echo", "x"], timeout=t) as s:
        lines = list(s)
    return [lines == [pt.OutputLine("stdout", "x")] and not s.timed_out]


def _run_many(t: Any) -> list[bool]:
    return [r.timed_out for r in pt.run_many([["true"]] * 3, workers=2, timeout=t)]


def _group_run(t: Any) -> list[bool]:
    def block() -> list[bool]:
        with pt.TaskGroup() as g:
            task = g.run(["true"], timeout=t)
        return [task.result(timeout=0).timed_out]

    return _alone(block)  # type: ignore[no-any-return]


COMMAND_PATHS: dict[str, Callable[[Any], list[bool]]] = {
    "run": _run,
    "stream": _stream,
    "run_many": _run_many,
    "TaskGroup.run": _group_run,
}


@pytest.mark.parametrize("path", list(COMMAND_PATHS))
def test_a_program_with_zero_is_ended_at_once(path: str) -> None:
    # As subprocess.run(timeout=0): started, then ended at once, even `true`.
    for _ in range(ZERO_REPEATS):
        if path == "run_many":
            assert _run_many(0) == [True, True, True]
            continue
        with pytest.raises(pt.CommandTimeout) as info:
            COMMAND_PATHS[path](0)
        assert info.value.timeout == 0


@pytest.mark.parametrize("limit", list(UNLIMITED))
@pytest.mark.parametrize("path", list(COMMAND_PATHS))
def test_a_program_with_inf_or_none_has_no_limit(path: str, limit: str) -> None:
    got = COMMAND_PATHS[path](UNLIMITED[limit])
    want = {"stream": [True], "run_many": [False] * 3}.get(path, [False])
    assert got == want


def test_a_program_a_group_runs_past_its_deadline_never_starts(tmp_path: Path) -> None:
    # TaskGroup(timeout=0) has expired at entry: what its block starts is born
    # cancelled, a program of g.run too. Started, then cancelled, the program ran
    # whenever its thread got there first: the hook lets that thread go first.
    marker = tmp_path / "ran"

    def hold(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "_adopt":
            task = frame.f_locals["task"]
            wait_until(lambda: task.done() or marker.exists(), what="the program to start")

    with pytest.raises(pt.TaskTimeout), pt.TaskGroup(timeout=0) as g:
        sys.setprofile(hold)
        try:
            task = g.run(["touch", str(marker)])
        finally:
            sys.setprofile(None)
    assert task.cancelled()
    assert not marker.exists()


# --------------------------------------------------------------------------- bad values

BAD = {"minus_one": -1, "nan": math.nan, "minus_inf": -math.inf}


@pytest.mark.parametrize("value", list(BAD))
def test_negative_or_nan_is_refused_at_the_call(pools: Pools, tmp_path: Path, value: str) -> None:
    v, x = BAD[value], str(tmp_path / "x")
    pool = pools.pool("thread", None)
    calls: list[Callable[[], Any]] = [
        lambda: pt.spawn(mark, x, timeout=v),
        lambda: pt.background(timeout=v),
        lambda: pt.TaskGroup(timeout=v),
        lambda: pool.submit(mark, x, timeout=v),
        lambda: pool.map(mark, [x], timeout=v),
        lambda: pool.imap(mark, [x], timeout=v),
        lambda: pool.imap_unordered(mark, [x], timeout=v),
        lambda: pool.starmap(mark2, [(x, "")], timeout=v),
        lambda: pt.Pool(1, timeout=v),
        lambda: pt.Executor(1, timeout=v),
        lambda: pt.pipeline([x], mark, timeout=v),
        lambda: pt.run(["true"], timeout=v),
        lambda: pt.stream(["true"], timeout=v),
        lambda: pt.run_many([["true"]], timeout=v),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="timeout"):
            call()
    with pt.TaskGroup() as g:
        with pytest.raises(ValueError, match="timeout"):
            g.spawn(mark, x, timeout=v)
    # Refused too in a group that is cancelled already (its tasks are born cancelled).
    with pytest.raises(pt.TaskTimeout), pt.TaskGroup(timeout=0) as g:
        with pytest.raises(ValueError, match="timeout"):
            g.spawn(mark, x, timeout=v)
    assert list(tmp_path.iterdir()) == []


def test_a_pipeline_with_zero_says_it_did_not_run(tmp_path: Path) -> None:
    # It starts nothing (see _pipeline above): "did not finish within 0.0 s" and
    # "the pipeline was stopped" were not true of it.
    x = str(tmp_path / "x")
    with pytest.raises(pt.TaskTimeout) as info:
        list(pt.pipeline([x], mark, timeout=0))
    text = "\n".join([str(info.value), *getattr(info.value, "__notes__", [])])
    assert "was not run" in text and "timeout of 0 s" in text, text
    assert "within" not in text and "stopped" not in text, text
    assert info.value.timeout == 0
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the CLI


def test_parallel_timeout_zero_is_no_limit_as_in_gnu(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # GNU parallel runs `--timeout 0` jobs without a limit (as timeout(1)'s 0 does).
    from polytask.cli._parallel import main

    for zero in ("0", "0.0", "0s", "0%"):
        code = main(["-k", "--timeout", zero, "sleep 0.05; echo {}", ":::", "a", "b"])
        out, err = capfd.readouterr()
        assert (code, out) == (0, "a\nb\n"), (zero, err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_with_retries_is_not_retried_and_counts_no_attempt(
    backend: str, tmp_path: Path
) -> None:
    # A task whose limit of 0 had expired before it could start never ran: it is
    # not retried, and Task.attempts ("how many times the task was started") is 0,
    # as for pt.spawn's. It said retries + 1.
    with pt.Pool(2, backend=backend, timeout=0, retries=2) as pool:
        tasks = [
            pool.submit(mark, str(tmp_path / "a")),
            pool.submit(mark, str(tmp_path / "b"), timeout=0),
        ]
        for task in tasks:
            with pytest.raises(pt.TaskTimeout):
                task.result(timeout=60)
        assert pool.statistics()["unsettled"] == 0
    alone = pt.spawn(mark, str(tmp_path / "c"), backend=backend, timeout=0)
    with pytest.raises(pt.TaskTimeout):
        alone.result(timeout=60)
    assert [t.attempts for t in [*tasks, alone]] == [0, 0, 0]
    assert list(tmp_path.iterdir()) == []
