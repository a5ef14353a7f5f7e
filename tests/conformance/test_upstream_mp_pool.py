"""CPython 3.11's multiprocessing Pool tests against pt.Pool.

``_TestPool`` runs as CPython runs it, once with processes (``pt.Pool``) and
once with threads (``pt.Pool(backend="thread")`` for ``multiprocessing.dummy``'s
ThreadPool); ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime`` and
``TestInitializers.test_pool_initializer`` call ``multiprocessing.Pool``
directly, which is pt.Pool in that module. The assertions are upstream's,
unchanged; what does not pass is in skips.py with its reason.
"""

from __future__ import annotations

import unittest

import _swap
import _upstream

tmp = _upstream.cpython_module("_test_multiprocessing")

tmp.multiprocessing = _swap.multiprocessing_module()
tmp.test.support.script_helper.assert_python_ok = _swap.with_prelude(
    tmp.test.support.script_helper.assert_python_ok
)


def _case(name: str, base: type, mixin: type, pool: object) -> type:
    # What install_tests_in_module_dict builds for a start method, with our Pool.
    cls = type(name, (base, mixin, unittest.TestCase), {"Pool": staticmethod(pool)})
    cls.__qualname__ = name
    return cls


WithProcessesTestPool = _case(
    "WithProcessesTestPool", tmp._TestPool, tmp.ProcessesMixin, _swap.ProcessPool
)
WithThreadsTestPool = _case(
    "WithThreadsTestPool", tmp._TestPool, tmp.ThreadsMixin, _swap.ThreadPool
)
WithProcessesTestPoolWorkerErrors = _case(
    "WithProcessesTestPoolWorkerErrors",
    tmp._TestPoolWorkerErrors,
    tmp.ProcessesMixin,
    _swap.ProcessPool,
)
WithProcessesTestPoolWorkerLifetime = _case(
    "WithProcessesTestPoolWorkerLifetime",
    tmp._TestPoolWorkerLifetime,
    tmp.ProcessesMixin,
    _swap.ProcessPool,
)


class TestInitializers(tmp.TestInitializers):
    """Only the Pool's test: ``test_manager_initializer`` tests multiprocessing's Manager."""

    test_manager_initializer = None
