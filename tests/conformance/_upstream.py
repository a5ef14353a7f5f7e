"""Fetch the upstream test suites at test time, cache them, and load them.

Nothing upstream is copied into the repository:

- CPython 3.11's ``test/test_concurrent_futures.py`` and
  ``test/_test_multiprocessing.py`` come from Debian's
  ``libpython3.11-testsuite`` package (``apt-get download``, then ``dpkg -x``),
  unpacked into ``.cache/conformance/`` at the top of the checkout (gitignored).
  Their support modules (``test.support``) are the running interpreter's own:
  an overlay ``test`` package puts Debian's test files and the interpreter's
  ``test`` directory on one ``__path__``, so the worker processes (which get
  the caller's ``sys.path``) import the same modules.
- joblib's ``joblib/test/test_parallel.py`` ships in joblib's own wheel
  (installed with the dev extra).

A fetch that fails raises: the run fails, it never skips silently.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("POLYTASK_CONFORMANCE_CACHE", REPO / ".cache" / "conformance"))
DEB_PACKAGE = f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite"
_PYDIR = f"python{sys.version_info[0]}.{sys.version_info[1]}"
CPYTHON_FILES = ("test_concurrent_futures.py", "_test_multiprocessing.py")

#: What was loaded, for the summary line of each suite.
PROVENANCE: dict[str, str] = {}


class FetchError(RuntimeError):
    """An upstream suite could not be fetched: the run fails."""


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{' '.join(cmd)} failed: {exc}") from exc
    if out.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


def _fetch_debian(dest: Path) -> None:
    """Download and unpack the Debian test-suite package into ``dest`` (atomically)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(
            f"the CPython test suite comes from Debian's {DEB_PACKAGE} package, but apt-get "
            f"and dpkg-deb are not installed here: unpack that package into {dest} "
            f"(dpkg -x) and write its version to {dest / 'VERSION'}, or point "
            "POLYTASK_CONFORMANCE_CACHE at a cache that has them"
        )
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=dest.parent))
    try:
        _run(["apt-get", "download", DEB_PACKAGE], work)
        debs = sorted(work.glob(f"{DEB_PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download {DEB_PACKAGE} gave {debs}, expected one .deb")
        version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], work).strip()
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], work)
        tests = tree / "usr" / "lib" / _PYDIR / "test"
        missing = [f for f in CPYTHON_FILES if not (tests / f).is_file()]
        if missing:
            raise FetchError(f"{debs[0].name} does not contain {missing}")
        (tree / "VERSION").write_text(version + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tree.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpython_test_dir() -> tuple[Path, str]:
    """Debian's ``test`` directory (fetched on first use) and the package version."""
    dest = CACHE / "cpython"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once fetch once
        if not (dest / "VERSION").is_file():
            _fetch_debian(dest)
    version = (dest / "VERSION").read_text().strip()
    # "3.11.2-6+deb12u8": the tests must be for the running major.minor.
    upstream = version.split("-")[0].split("+")[0]
    if upstream.split(".")[:2] != [str(v) for v in sys.version_info[:2]]:
        raise FetchError(
            f"{DEB_PACKAGE} {version} is not for Python {sys.version_info[0]}."
            f"{sys.version_info[1]}; delete {dest} and fetch the right one"
        )
    return dest / "usr" / "lib" / _PYDIR / "test", version


def _overlay(debian_tests: Path) -> Path:
    """A ``test`` package whose ``__path__`` is Debian's test files, then the interpreter's
    own ``test`` directory (``test.support`` lives there: Debian packs it with the stdlib)."""
    try:
        spec = importlib.util.find_spec("test.support")
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        raise FetchError(
            "this Python has no test.support (the stdlib's test package): CPython's suites "
            "need it; on Debian it is in libpython3.11-stdlib"
        )
    stdlib_tests = Path(spec.origin).parent.parent
    root = CACHE / "overlay"
    pkg = root / "test"
    pkg.mkdir(parents=True, exist_ok=True)
    text = (
        "# Written by tests/conformance/_upstream.py: Debian's CPython test files, with the\n"
        "# running interpreter's test package (test.support) behind them.\n"
        f"__path__ = [{str(debian_tests)!r}, {str(stdlib_tests)!r}]\n"
    )
    init = pkg / "__init__.py"
    if not init.is_file() or init.read_text() != text:
        init.write_text(text)
    return root


def cpython_module(name: str) -> types.ModuleType:
    """Import ``test.<name>`` from Debian's CPython test suite."""
    tests, version = cpython_test_dir()
    root = str(_overlay(tests))
    if root not in sys.path:
        sys.path.insert(0, root)
    loaded = sys.modules.get("test")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").parent.parent != Path(
        root
    ):
        # Imported before the overlay was on sys.path: give it the overlay's path.
        loaded.__path__ = [str(tests), *list(loaded.__path__)]
    module = importlib.import_module(f"test.{name}")
    from test import support

    PROVENANCE["cpython"] = (
        f"CPython tests from Debian {DEB_PACKAGE} {version}, run on Python "
        f"{sys.version.split()[0]} with its own test.support ({Path(support.__file__).parent})"
    )
    return module


def joblib_test_source() -> tuple[Path, str]:
    """joblib's ``test_parallel.py`` from the installed joblib, and joblib's version."""
    try:
        import joblib
    except ImportError as exc:
        raise FetchError("joblib is not installed: pip install -e '.[dev]'") from exc
    path = Path(joblib.__file__).parent / "test" / "test_parallel.py"
    if not path.is_file():
        raise FetchError(
            f"joblib {joblib.__version__} at {path.parent.parent} has no test/test_parallel.py "
            "(a distribution that strips tests): reinstall joblib from its wheel"
        )
    PROVENANCE["joblib"] = f"joblib {joblib.__version__}'s own test/test_parallel.py ({path})"
    return path, joblib.__version__
