"""polytask.joblib: joblib's automatic memory mapping of large NumPy arrays."""

from __future__ import annotations

import os
import signal
import threading

import joblib
import numpy as np
import pytest
from joblib.externals.loky.backend import resource_tracker

import polytask as pt
import polytask.joblib

polytask.joblib.register()

TWO_MB = 2 * 1024 * 1024


@pytest.fixture(autouse=True)
def _stop_joblib_tracker():
    # joblib registers its memmapped files with loky's resource tracker, a process
    # that lives as long as the interpreter (it deletes the files if the caller
    # dies): stop it so the suite's check for leftover processes holds.
    yield
    resource_tracker._resource_tracker._stop()


def describe(a):
    """What a worker received: its type, file, writability and pid."""
    return type(a).__name__, getattr(a, "filename", None), a.flags.writeable, os.getpid(), a.sum()


def big():
    return np.arange(TWO_MB // 8, dtype=np.float64)


def test_a_large_array_reaches_the_worker_as_a_memmap(tmp_path):
    a = big()
    out = joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(tmp_path))(
        joblib.delayed(describe)(a) for _ in range(4)
    )
    kinds = {kind for kind, *_ in out}
    files = {f for _, f, *_ in out}
    assert kinds == {"memmap"}
    assert {os.getpid()}.isdisjoint(pid for *_, pid, _ in out)
    assert all(s == a.sum() for *_, s in out)
    # One array, dumped once, opened read-only (mmap_mode="r").
    (path,) = files
    assert path.startswith(str(tmp_path) + os.sep)
    assert {w for _, _, w, *_ in out} == {False}
    # The call's folder is gone with the call.
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


def test_max_nbytes_none_sends_plain_arrays(tmp_path):
    a = big()
    out = joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(tmp_path), max_nbytes=None)(
        joblib.delayed(describe)(a) for _ in range(2)
    )
    assert {kind for kind, *_ in out} == {"ndarray"}
    assert os.listdir(tmp_path) == []


def test_small_arrays_go_by_value_and_the_threshold_is_max_nbytes(tmp_path):
    small = np.ones(1000)
    with joblib.parallel_config(backend="polytask", n_jobs=2, temp_folder=str(tmp_path)):
        assert joblib.Parallel()(joblib.delayed(describe)(small) for _ in range(2))[0][0] == (
            "ndarray"
        )
        out = joblib.Parallel(max_nbytes="1K", mmap_mode="r+")(
            joblib.delayed(describe)(small) for _ in range(2)
        )
    assert {(kind, writeable) for kind, _, writeable, *_ in out} == {("memmap", True)}
    assert os.listdir(tmp_path) == []


def test_default_folder_is_removed_after_the_call():
    # No temp_folder: JOBLIB_TEMP_FOLDER, /dev/shm or the system's tmp, as joblib.
    a = big()
    ((kind, path, *_),) = joblib.Parallel(n_jobs=2, backend="polytask")(
        [joblib.delayed(describe)(a)]
    )
    assert kind == "memmap"
    folder = os.path.dirname(path)
    assert os.path.basename(folder).startswith("joblib_memmapping_folder_")
    assert not os.path.exists(folder)


def test_a_with_block_keeps_its_folder_until_it_ends(tmp_path):
    a = big()
    with joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(tmp_path)) as p:
        first = p(joblib.delayed(describe)(a) for _ in range(2))
        assert os.listdir(tmp_path) != []
        second = p(joblib.delayed(describe)(a) for _ in range(2))
    # Dumped once for the whole block, removed when it ends.
    assert len({f for _, f, *_ in first + second}) == 1
    assert os.listdir(tmp_path) == []


def test_an_error_in_a_batch_still_removes_the_folder(tmp_path):
    a = big()
    with pytest.raises(ZeroDivisionError):
        joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(tmp_path))(
            joblib.delayed(divide)(a, d) for d in [1, 0, 1]
        )
    assert os.listdir(tmp_path) == []


def divide(a, d):
    return int(a.sum()) // d


def test_threads_share_the_array_itself(tmp_path):
    a = big()
    out = joblib.Parallel(
        n_jobs=2, backend="polytask", prefer="threads", temp_folder=str(tmp_path)
    )(joblib.delayed(lambda x: x is a)(a) for _ in range(2))
    assert out == [True, True]
    assert os.listdir(tmp_path) == []


def test_an_unpicklable_argument_is_still_named(tmp_path):
    a = big()
    with pytest.raises(pt.SerializationError, match="cannot be pickled"):
        joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(tmp_path))(
            joblib.delayed(divide)(a, threading.Lock()) for _ in range(2)
        )
    assert os.listdir(tmp_path) == []


KILLED_OWNER = """
import sys, time
import joblib, numpy as np
import polytask.joblib

polytask.joblib.register()
ready, folder = sys.argv[1], sys.argv[2]


def kind(x):
    # Not joblib.delayed(type): 3.12.1's functools.wraps fails on the builtin type
    # ("__type_params__ must be set to a tuple", fixed in 3.12.2).
    return type(x)


a = np.ones(300_000)
with joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=folder) as p:
    kinds = p(joblib.delayed(kind)(a) for _ in range(2))
    with open(ready, "w") as f:
        f.write(" ".join(k.__name__ for k in kinds) + " ready")
    time.sleep(600)
"""


def test_a_sigkilled_owner_leaves_no_file_and_no_process(tmp_path):
    from helpers import Harness

    ready, folder = tmp_path / "ready", tmp_path / "memmaps"
    folder.mkdir()
    with Harness(KILLED_OWNER, tmp_path, str(ready), str(folder)) as h:
        h.wait_for_line(ready, "ready", timeout=60)
        assert ready.read_text() == "memmap memmap ready"
        assert os.listdir(folder) != []
        h.signal(signal.SIGKILL)
        assert h.wait() == -signal.SIGKILL
        # The workers die with their owner; joblib's resource tracker deletes the
        # folder, then exits.
        assert h.leftovers(within=10) == []
    assert os.listdir(folder) == []


def test_results_come_back_as_joblib_sends_them(tmp_path):
    # A memmap of the call's own files comes back as a plain array (its file goes
    # with the call); a memmap of the caller's file, as a memmap of that file.
    a = big()
    path = tmp_path / "mine.mmap"
    mine = np.memmap(path, dtype=np.float64, mode="w+", shape=(1000,))
    mine[:] = 7.0
    mine.flush()
    temp = tmp_path / "temp"
    temp.mkdir()
    back, same = joblib.Parallel(n_jobs=2, backend="polytask", temp_folder=str(temp))(
        joblib.delayed(identity)(x) for x in [a, mine]
    )
    assert type(back) is np.ndarray and np.array_equal(back, a)
    assert isinstance(same, np.memmap) and str(same.filename) == str(path)
    assert np.array_equal(same, mine)
    assert os.listdir(temp) == []


def identity(x):
    return x
