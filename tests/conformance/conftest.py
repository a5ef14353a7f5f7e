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
import sys
from pathlib import Path

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
