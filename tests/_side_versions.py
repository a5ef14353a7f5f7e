"""pytest plugin for the runs on the other Python versions (``make versions``).

Loaded with ``-p tests._side_versions``: it deselects what those runs leave to
the full run on 3.11 (``make unit``), which keeps ``make test`` within its time
budget and the side venvs small (the ``test`` extra, no engines, no MkDocs):

- the cluster-engine tests: Dask and Ray (test_dask.py, test_ray.py,
  test_parallel_cluster.py, every test
  using their session fixtures, the contract tests' "dask"/"ray" parameters, the
  cluster guide's examples);
- the upstream conformance suites (tests/conformance/), which are CPython 3.11's
  own tests;
- the documentation site's build (tests/test_docs_site.py);
- every timeout value against every blocking call (test_timeout_values.py:
  the checks are plain Python, and the helper's runs on 3.12 and 3.13 passed);
- the side-by-side runs against GNU parallel and honcho (test_parallel_gnu.py,
  test_parallel_plus.py, test_parallel_gnu_examples.py, test_parallel_more.py,
  test_parallel_pipe.py, test_parallel_pipe_more.py, test_parallel_quoting.py,
  test_parallel_events.py, test_up_honcho.py, test_up_honcho_more.py) and
  the DNS-probe run (test_up_probe_dns.py, ~13 s of resolver timeouts): the
  other tools are the same programs on every Python, and polytask's CLIs run
  on these versions through the tests that stay (test_parallel_cli.py,
  test_up_cli.py, test_up_ops.py, test_up_ctl*.py, test_up_tui.py,
  test_procfile.py, test_export.py). Leaving them out saves ~3 min a version
  (measured on 3.13: ~190 s of ~590), which keeps ``make test`` within 40 min.

``KNOWN`` marks the tests that fail on a version for a reason not fixed yet as
strict xfails: they are reported as such, and one that starts to pass fails the
run until its entry is removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
_FILES = {
    TESTS / "test_dask.py",
    TESTS / "test_ray.py",
    TESTS / "test_parallel_cluster.py",  # polytask parallel --backend dask|ray
    TESTS / "test_parallel_gnu.py",  # ~95 s a version, GNU parallel's runs mostly
    TESTS / "test_parallel_plus.py",
    # ~190 s a version in all (3.13): side by side with GNU parallel and honcho.
    TESTS / "test_parallel_gnu_examples.py",
    TESTS / "test_parallel_more.py",
    TESTS / "test_parallel_pipe.py",
    TESTS / "test_parallel_pipe_more.py",
    TESTS / "test_parallel_quoting.py",
    TESTS / "test_parallel_events.py",
    TESTS / "test_up_honcho.py",
    TESTS / "test_up_honcho_more.py",
    TESTS / "test_up_probe_dns.py",
    TESTS / "test_docs_site.py",
    # ~1.5 min a version: every timeout value against every blocking call; the
    # checks (_core/timeouts.py) are plain Python, the same on every version.
    TESTS / "test_timeout_values.py",
}
_ENGINE_FIXTURES = {"dask_cluster", "ray_session"}
_ENGINES = {"dask", "ray"}

#: node id -> (the versions it fails on, why).
KNOWN: dict[str, tuple[set[tuple[int, int]], str]] = {
    "tests/test_executor.py::test_at_exit_an_executor_finishes_its_work_and_takes_no_more"
    "[process]": (
        {(3, 12)},
        "3.12 starts no thread once the interpreter shuts down (gh-104690): the process "
        "backend starts its collector thread lazily, here in the Executor's at-exit "
        "shutdown, so the task submitted before exit never reports (backends/process; "
        "3.13 allows the thread again)",
    ),
}


def _left_to_311(item: pytest.Item) -> bool:
    path = Path(str(item.path)).resolve()
    if path in _FILES or TESTS / "conformance" in path.parents:
        return True
    if _ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for value in callspec.params.values():
            if isinstance(value, str) and value in _ENGINES:
                return True
            if isinstance(value, Path) and value.name == "cluster.md":
                return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # Not even collected: collecting them fetches CPython's tests (apt-get download).
    if collection_path.resolve() == TESTS / "conformance":
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        known = KNOWN.get(item.nodeid)
        if known is not None and sys.version_info[:2] in known[0]:
            item.add_marker(pytest.mark.xfail(reason=known[1], strict=True))
    left = [item for item in items if _left_to_311(item)]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if not _left_to_311(item)]
