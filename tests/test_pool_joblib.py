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


def _pid_or_fail(fail: bool) -> int:
    if fail:
        raise ValueError("planned")
    return os.getpid()


def test_parallel_calls_reuse_idle_workers_as_loky_and_a_failed_call_does_not():
    # A short Parallel call was mostly worker start-up (3x loky's time on a
    # 100 MB memmapped array): the idle Pool waits for the next call of the same
    # configuration, as loky's reusable executor does.
    import psutil

    import polytask.joblib

    polytask.joblib.register()
    with joblib.parallel_config(backend="polytask", n_jobs=2):
        first = set(joblib.Parallel()(joblib.delayed(_pid_or_fail)(False) for _ in range(8)))
        second = set(joblib.Parallel()(joblib.delayed(_pid_or_fail)(False) for _ in range(8)))
        assert first & second
        with pytest.raises(ValueError, match="planned"):
            joblib.Parallel()(joblib.delayed(_pid_or_fail)(i == 3) for i in range(8))
        # The failed call ended its workers instead of handing them on.
        third = set(joblib.Parallel()(joblib.delayed(_pid_or_fail)(False) for _ in range(8)))
        assert not third & (first | second)
    kids = psutil.Process().children(recursive=True)
    assert any(k.pid in third for k in kids)  # idle, kept for the next call
    polytask.joblib.shutdown()
    gone, alive = psutil.wait_procs([k for k in kids if k.pid in third], timeout=30)
    assert alive == []


_seen: object = None


def _keep(value: object) -> None:
    global _seen
    _seen = value


def _seen_sum(_: int) -> float:
    return float(_seen.sum())  # type: ignore[attr-defined]


def test_reuse_compares_initargs_by_identity_never_elementwise():
    # Review: a fresh NumPy array in initargs made the reuse check raise ("truth
    # value of an array is ambiguous"); changed initargs must start new workers.
    np = pytest.importorskip("numpy")

    import polytask.joblib

    polytask.joblib.register()
    try:
        for value in (1.0, 2.0):
            a = np.full(4, value)
            with joblib.parallel_config(backend="polytask", n_jobs=2):
                got = joblib.Parallel(initializer=_keep, initargs=(a,))(
                    joblib.delayed(_seen_sum)(i) for i in range(4)
                )
            assert got == [4 * value] * 4
    finally:
        polytask.joblib.shutdown()
