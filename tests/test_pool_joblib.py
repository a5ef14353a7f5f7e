"""polytask.joblib: joblib.Parallel running on a polytask Pool."""

from __future__ import annotations

import os

import joblib
import pytest

import polytask as pt
import polytask.joblib

polytask.joblib.register()


def square_pid(x):
    return x * x, os.getpid()


def crash(x):
    if x == 3:
        os._exit(9)
    return x


def test_parallel_runs_on_polytask_workers():
    with joblib.parallel_config(backend="polytask", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(square_pid)(i) for i in range(200))
    assert [v for v, _ in out] == [i * i for i in range(200)]
    pids = {p for _, p in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_parallel_backend_context_and_errors():
    with joblib.parallel_backend("polytask", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError):
            joblib.Parallel()(joblib.delayed(int)(x) for x in ["1", "x", "3"])


def test_a_crash_is_reported_not_hung():
    with joblib.parallel_config(backend="polytask", n_jobs=2):
        with pytest.raises(pt.WorkerCrashed):
            joblib.Parallel(batch_size=1)(joblib.delayed(crash)(i) for i in range(6))


def test_pool_options_and_threads():
    backend = polytask.joblib.PolytaskBackend(backend="thread")
    with joblib.parallel_config(backend=backend, n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(square_pid)(i) for i in range(10))
    assert {p for _, p in out} == {os.getpid()}
    with joblib.parallel_config(backend="polytask", n_jobs=2, prefer="threads"):
        out = joblib.Parallel()(joblib.delayed(square_pid)(i) for i in range(10))
    assert {p for _, p in out} == {os.getpid()}
