"""The Pool package's layering: a worker running a chunk loads none of the Pool.

A process worker unpickles ``polytask._pool.batch._run_chunk`` (and the pool's
initializer) by reference: that import must not drag in the Pool, its
scheduling, its progress bar or its primitive factories, which a worker never
uses (issue 13). And the Executor uses the Pool only through methods named
for it, never its state.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import polytask as pt
import polytask._pool

#: What a worker must not load to run a chunk.
NOT_IN_A_WORKER = (
    "polytask._pool.pool",
    "polytask._pool.executor",
    "polytask._pool.results",
    "polytask._pool.schedule",
    "polytask._pool.chunking",
    "polytask._progress",
    "polytask._factories",
)


def loaded_polytask_modules(_: object) -> list[str]:
    return sorted(m for m in sys.modules if m.startswith("polytask"))


def test_importing_the_chunk_runner_loads_nothing_of_the_pool():
    code = (
        "import json, sys\n"
        "import polytask._pool.batch\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('polytask'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert "polytask._pool.batch" in loaded
    assert loaded.isdisjoint(NOT_IN_A_WORKER), sorted(loaded & set(NOT_IN_A_WORKER))


def test_a_process_worker_runs_chunks_without_loading_the_pool():
    with pt.Pool(1) as pool:
        # Both paths of the worker: a map's block, and a submitted task's chunk.
        loaded = set(pool.map(loaded_polytask_modules, [0])[0])
        loaded |= set(pool.submit(loaded_polytask_modules, 0).result())
    assert "polytask._pool.batch" in loaded
    assert loaded.isdisjoint(NOT_IN_A_WORKER), sorted(loaded & set(NOT_IN_A_WORKER))


def test_the_package_still_exports_its_names():
    from polytask._pool import DEFAULT, AsyncResult, Executor, MapIterator, Pool

    assert (Pool, Executor, AsyncResult, MapIterator) == (
        pt.Pool,
        pt.Executor,
        pt.AsyncResult,
        pt.MapIterator,
    )
    assert repr(DEFAULT) == "<pool default>"
    try:
        polytask._pool.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


#: The Pool's internal methods the Executor may call (named for it in pool.py).
EXECUTOR_MAY_CALL = {
    "_submit",
    "_start",
    "_start_list",
    "_preload",
    "_end_run",
    "_end_dropped",  # the map iterators dropped since the last pump: ended before a shutdown reads inputs
    "_is_closed",
    "_delivering",
    "_cancel_pending",
}


def test_the_executor_reads_no_state_of_the_pool():
    source = Path(polytask._pool.__file__).with_name("executor.py").read_text()
    pool_names = {"pool"}
    reached: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        owner = node.value
        is_pool = (isinstance(owner, ast.Name) and owner.id in pool_names) or (
            isinstance(owner, ast.Attribute) and owner.attr == "_pool"
        )
        if is_pool:
            reached.add(node.attr)
    assert reached, "the check found no call at all: it no longer reads executor.py right"
    assert reached <= EXECUTOR_MAY_CALL, sorted(reached - EXECUTOR_MAY_CALL)
