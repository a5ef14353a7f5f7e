"""The upstream conformance suites: selection, the one skip table, and the counts.

The suites themselves are fetched and loaded by _upstream.py (a failed fetch
fails the run) and swapped onto polytask by _swap.py. Here:

- the tests listed in skips.SKIPS are marked skipped with their category and reason;
- joblib's tests pinned to another backend are deselected (see test_upstream_joblib.py);
- at the end, each suite prints passed / skipped by the table / skipped by the
  upstream test itself (not for this platform) / failed.
"""

from __future__ import annotations

import collections
import fnmatch
import gc
import os
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import skips  # noqa: E402

SUITES = {
    "test_upstream_futures.py": "futures",
    "test_upstream_mp_pool.py": "mp_pool",
    "test_upstream_joblib.py": "joblib",
}
TITLES = {
    "futures": "CPython test_concurrent_futures vs pt.Executor",
    "mp_pool": "CPython multiprocessing Pool tests vs pt.Pool",
    "joblib": "joblib test_parallel.py, polytask backend",
}
_TABLE = "skip table"


def suite_and_id(nodeid: str) -> tuple[str, str] | None:
    """``("futures", "Class::test")`` for an upstream test's node id, else None."""
    path, _, rest = nodeid.partition("::")
    suite = SUITES.get(Path(path).name)
    if suite is None or "conformance" not in path:
        return None
    return suite, rest


def table_entry(suite: str, test_id: str) -> tuple[str, str] | None:
    key = f"{suite}::{test_id}"
    found = skips.SKIPS.get(key)
    if found is not None:
        return found
    for pattern, entry in skips.SKIPS.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(key, pattern):
            return entry
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Markers of joblib's test module (for pytest-run-parallel and coverage runs).
    config.addinivalue_line("markers", "thread_unsafe: joblib's marker, unused here")
    config.addinivalue_line("markers", "no_cover: joblib's marker, unused here")


def _runs_on_polytask(item: pytest.Item) -> bool:
    """A joblib test parametrised over backends, in its polytask parametrisation.

    That is a parameter that is "polytask", a PolytaskBackend, or a backend of None
    (joblib's default backend, which the module made polytask). joblib's other tests
    exercise a backend they name in their body (loky, multiprocessing, threading).
    """
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    from polytask.joblib import PolytaskBackend

    for name, value in callspec.params.items():
        if isinstance(value, PolytaskBackend) or value == "polytask":
            return True
        if name.endswith("backend") and value is None:
            return True
    return False


def _native_tracebacks(item: pytest.Item) -> None:
    # Python's own traceback format for upstream failures: pytest's long format
    # re-parses the upstream file with ast, which on 3.11 can fail with
    # "SystemError: AST constructor recursion depth mismatch" and end the session.
    repr_py = getattr(item, "_repr_failure_py", None)
    if repr_py is not None:
        native = lambda excinfo, style=None: repr_py(excinfo, style="native")  # noqa: E731
        item._repr_failure_py = native  # type: ignore[attr-defined]
        item.repr_failure = native  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        found = suite_and_id(item.nodeid)
        if found is None:
            keep.append(item)
            continue
        suite, test_id = found
        if suite == "joblib" and not _runs_on_polytask(item):
            dropped.append(item)
            continue
        keep.append(item)
        _native_tracebacks(item)
        # Python's default warning filters, as the upstream suites run themselves
        # (regrtest, joblib's pytest setup): this project's filterwarnings=error
        # would turn their expected warnings into failures.
        item.add_marker(pytest.mark.filterwarnings("default"))
        entry = table_entry(suite, test_id)
        if entry is not None:
            category, reason = entry
            item.add_marker(pytest.mark.skip(reason=f"{_TABLE} [{category}]: {reason}"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_failed: dict[str, list[str]] = collections.defaultdict(list)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    found = suite_and_id(report.nodeid)
    if found is None:
        return
    suite, test_id = found
    if report.failed:
        if test_id not in _failed[suite]:
            _failed[suite].append(test_id)
            _counts[suite]["failed"] += 1
            if report.when == "teardown":
                # It had passed its call phase: count it once, as failed.
                _counts[suite]["passed"] -= 1
    elif report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        _counts[suite]["table" if _TABLE in str(reason) else "upstream skip"] += 1
    elif report.passed and report.when == "call":
        _counts[suite]["passed"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _counts:
        return
    import _upstream

    tr = terminalreporter
    tr.section("upstream conformance")
    for line in _upstream.PROVENANCE.values():
        tr.write_line(line)
    for suite in SUITES.values():
        c = _counts.get(suite)
        if not c:
            continue
        run = c["passed"] + c["failed"]
        share = f"{100 * c['passed'] / run:.1f} %" if run else "-"
        tr.write_line(
            f"{TITLES[suite]}: {c['passed']} passed ({share} of those run), "
            f"{c['table']} skipped by the table, {c['upstream skip']} skipped by upstream "
            f"itself (platform), {c['failed']} failed"
        )
        for test_id in _failed.get(suite, []):
            tr.write_line(f"    failed: {suite}::{test_id}")


# -- hygiene: tests/conftest.py checks after every test that no process is left.
# Upstream test classes that set up a pool in setUpClass keep its workers for the
# whole class: for those the same check runs when the class ends.
def _root_conftest(config: pytest.Config) -> object:
    for plugin in config.pluginmanager.get_plugins():
        if str(getattr(plugin, "__file__", "")).endswith(f"tests{os.sep}conftest.py"):
            return plugin
    raise RuntimeError("tests/conftest.py is not loaded")


def _class_owns_workers(cls: type | None) -> bool:
    setup = getattr(cls, "setUpClass", None)
    return setup is not None and getattr(setup, "__func__", None) is not (
        unittest.TestCase.setUpClass.__func__  # type: ignore[attr-defined]
    )


#: Helper processes that multiprocessing and loky keep for the life of the
#: interpreter once an upstream test used them (resource trackers, forkserver,
#: loky's reusable executor): theirs, not polytask's nor the test's.
_INTERPRETER_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "joblib.externals.loky",
)


def _not_a_helper(p: Any) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except Exception:
        return True
    return not any(h in cmd for h in _INTERPRETER_HELPERS)


def _check_strays(config: pytest.Config) -> None:
    root = _root_conftest(config)
    gc.collect()  # upstream tests leave managers and pools to the GC, as their runners do
    root._shutdown_defaults()  # type: ignore[attr-defined]

    def ours() -> list[Any]:
        return [p for p in root.live_descendants() if _not_a_helper(p)]  # type: ignore[attr-defined]

    left = root._wait_gone(ours, 5.0)  # type: ignore[attr-defined]
    if left:
        desc = [(p.pid, " ".join(p.cmdline())[:120]) for p in left if p.is_running()]
        for p in left:
            try:
                p.kill()
            except Exception:
                pass
        if desc:
            pytest.fail(f"test left processes behind: {desc}")


@pytest.fixture(autouse=True)
def no_stray_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/conftest.py's check, at the end of the class for classes that own workers."""
    yield
    if not _class_owns_workers(getattr(request.node, "cls", None)):
        _check_strays(request.config)


@pytest.fixture(scope="class", autouse=True)
def no_stray_process_after_class(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if _class_owns_workers(request.cls):
        _check_strays(request.config)


@pytest.fixture(scope="module", autouse=True)
def _stop_interpreter_helpers() -> Iterator[None]:
    """After each upstream module: the suites after it check that no process is left."""
    yield
    _stop_helpers()


def _stop_helpers() -> None:
    """Stop what the upstream tests left to the interpreter's exit: loky's executor,
    multiprocessing's and loky's resource trackers (they start again on demand)."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    gc.collect()
    for name in (
        "multiprocessing.resource_tracker",
        "joblib.externals.loky.backend.resource_tracker",
    ):
        tracker = getattr(sys.modules.get(name), "_resource_tracker", None)
        if tracker is not None:
            tracker._stop()
