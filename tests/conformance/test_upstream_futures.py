"""CPython 3.11's test_concurrent_futures against pt.Executor (thread and process backends).

Every test class of the upstream module that runs an executor is collected here
unchanged; only the executor types are swapped (see _swap.py). The start-method
mixins keep their contexts: ``mp_context=get_context("fork" | "spawn" |
"forkserver")`` goes to pt.Executor as it would to ProcessPoolExecutor.
``FutureTests`` (the stdlib's own Future class, no executor) is not collected.
What does not pass is in skips.py with its reason.
"""

from __future__ import annotations

import unittest

import _swap
import _upstream

tcf = _upstream.cpython_module("test_concurrent_futures")

tcf.futures = _swap.futures_module()
tcf.assert_python_ok = _swap.with_prelude(tcf.assert_python_ok)
tcf.ThreadPoolMixin.executor_type = _swap.ThreadPoolExecutor
for _mixin in (tcf.ProcessPoolForkMixin, tcf.ProcessPoolSpawnMixin, tcf.ProcessPoolForkserverMixin):
    _mixin.executor_type = _swap.ProcessPoolExecutor

for _name, _obj in vars(tcf).items():
    if (
        isinstance(_obj, type)
        and issubclass(_obj, unittest.TestCase)
        and issubclass(_obj, tcf.ExecutorMixin)
    ):
        globals()[_name] = _obj
del _name, _obj, _mixin
