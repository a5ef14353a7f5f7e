"""joblib's own test_parallel.py with "polytask" as the process backend.

The swap: ``polytask.joblib.register()`` makes "polytask" a joblib backend and
the default one (what ``Parallel()`` without a backend uses), and the module's
list of process backends, ``PROCESS_BACKENDS = ["multiprocessing", "loky"]``,
reads ``["polytask"]`` (so ``PARALLEL_BACKENDS`` is polytask and threading).
Scripts the tests run in a fresh interpreter register the backend first, as a
user's script would. Nothing else in the file changes. The tests collected are those that run on
polytask: a backend parameter that is "polytask" (or a PolytaskBackend), or
None (the default backend); tests pinned to loky, multiprocessing, threading,
sequential or dask are joblib's tests of those backends and are not collected.
What does not pass is in skips.py with its reason.
"""

from __future__ import annotations

import sys
import types

import _swap
import _upstream
import joblib.parallel

import polytask.joblib

_PATH, _VERSION = _upstream.joblib_test_source()
_ORIGINAL = 'PROCESS_BACKENDS = ["multiprocessing", "loky"]'
_SWAPPED = 'PROCESS_BACKENDS = ["polytask"]'


_DEFAULT = joblib.parallel.DEFAULT_BACKEND


def teardown_module() -> None:
    # The swap is for this module's tests only: the rest of the session gets joblib
    # as it was (its default backend, its own test module).
    joblib.parallel.DEFAULT_BACKEND = _DEFAULT
    sys.modules.pop("joblib.test.test_parallel", None)


def _load() -> types.ModuleType:
    source = _PATH.read_text()
    if source.count(_ORIGINAL) != 1:
        raise _upstream.FetchError(
            f"joblib {_VERSION}'s test_parallel.py no longer says {_ORIGINAL!r}: "
            "update the swap in tests/conformance/test_upstream_joblib.py"
        )
    polytask.joblib.register(make_default=True)
    name = "joblib.test.test_parallel"
    module = types.ModuleType(name)
    module.__file__ = str(_PATH)
    module.__package__ = "joblib.test"
    # Under its real name, so its functions pickle by reference (a worker imports the
    # installed module, whose functions are the same).
    sys.modules[name] = module
    exec(compile(source.replace(_ORIGINAL, _SWAPPED), str(_PATH), "exec"), module.__dict__)
    # Scripts it runs in a fresh interpreter register the backend first, as a
    # user's script would.
    module.check_subprocess_call = _swap.with_prelude_cmd(module.check_subprocess_call)
    return module


_module = _load()
for _name, _obj in vars(_module).items():
    if _name.startswith("test_") or _name == "pytestmark":
        globals()[_name] = _obj
del _name, _obj
