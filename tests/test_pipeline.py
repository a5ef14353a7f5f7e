"""pt.pipeline and pt.stage: order, fan-out, failures, bounded memory, cleanup."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

import polytask as pt
from helpers import run_python, wait_until

BACKENDS = ["thread", "process"]
HANG = 30.0  # a bound for "does not hang", never a speed check


def double(x: int) -> int:
    return 2 * x


def jitter(x: int) -> int:
    time.sleep(0.002 * (x % 5))  # later inputs often finish first
    return x


def fan_out(x: int):
    for k in range(x % 3):  # 0, 1 or 2 outputs per input
        yield (x, k)


def fail_at_13(x: int) -> int:
    if x == 13:
        raise ValueError(f"cannot take {x}")
    return x


def die_at_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


def sleepy(x: int) -> int:
    time.sleep(0.05)
    return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_stages_in_order_with_several_workers(backend):
    out = list(
        pt.pipeline(
            range(300), pt.stage(jitter, workers=3), pt.stage(double, workers=2), backend=backend
        )
    )
    assert out == [2 * x for x in range(300)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generators_yield_many_outputs_per_input(backend):
    out = list(pt.pipeline(range(60), pt.stage(fan_out, workers=3), double, backend=backend))
    assert out == [2 * (x, k) for x in range(60) for k in range(x % 3)]


def test_unordered_stage_gives_every_output_once():
    out = list(pt.pipeline(range(200), pt.stage(jitter, workers=4, ordered=False)))
    assert sorted(out) == list(range(200))


def test_empty_source():
    assert list(pt.pipeline([], double)) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_failure_stops_everything_and_names_the_stage(backend):
    p = pt.pipeline(
        itertools.count(),  # endless: only the failure can end it
        pt.stage(jitter, workers=2),
        pt.stage(fail_at_13, workers=2, name="checker"),
        backend=backend,
        maxsize=8,
    )
    with pytest.raises(ValueError, match="cannot take 13") as info:
        for _ in p:
            pass
    assert any("stage 2 ('checker')" in note for note in info.value.__notes__)


def test_crashed_process_worker_is_reported():
    with pytest.raises(pt.WorkerCrashed) as info:
        list(pt.pipeline(range(20), die_at_5, backend="process"))
    assert any("die_at_5" in note for note in info.value.__notes__)


def test_failing_source_is_reported():
    def source():
        yield 1
        raise KeyError("source broke")

    with pytest.raises(KeyError) as info:
        list(pt.pipeline(source(), double))
    assert any("source" in note for note in info.value.__notes__)


@pytest.mark.parametrize("backend", BACKENDS)
def test_endless_source_is_read_only_as_fast_as_results_are_taken(backend):
    taken = itertools.count()

    def source():
        for i in itertools.count():
            next(taken)
            yield i

    with pt.pipeline(source(), pt.stage(double, workers=2), backend=backend, maxsize=4) as p:
        for y in p:
            if y >= 40:
                break
        time.sleep(0.3)  # deliberate: would the source run ahead meanwhile?
        read = next(taken)
    # 21 results taken; each of the stage's window and the result queue holds <= 4.
    assert read <= 21 + 3 * 4 + 2, read


def test_breaking_out_stops_the_workers():
    # The threads themselves, not a count: one of another part of the suite that
    # ends meanwhile (a pool's finalizer) would hide one of the pipeline's.
    before = set(threading.enumerate())
    p = pt.pipeline(itertools.count(), pt.stage(sleepy, workers=3))
    for y in p:
        if y == 3:
            break
    wait_until(
        lambda: not [t for t in threading.enumerate() if t not in before],
        HANG,
        "the pipeline's threads to end",
    )


def test_timeout_bounds_the_whole_run():
    with pytest.raises(pt.TaskTimeout):
        list(pt.pipeline(itertools.count(), sleepy, timeout=0.5))


def test_a_pipeline_runs_once():
    p = pt.pipeline(range(3), double)
    assert list(p) == [0, 2, 4]
    with pytest.raises(RuntimeError, match="runs once"):
        list(p)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one stage"):
        pt.pipeline(range(3))
    with pytest.raises(TypeError, match="iterable"):
        pt.pipeline(5, double)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        pt.pipeline(range(3), double, maxsize=0)
    # Not the channel's error from inside (nor, before, a pipeline that took it).
    with pytest.raises(ValueError, match=r"maxsize must be an int from 1 to 2\*\*63-1 \(items per"):
        pt.pipeline(range(3), double, maxsize=2**64)
    with pytest.raises(ValueError, match="unknown backend"):
        pt.pipeline(range(3), double, backend="nope")
    with pytest.raises(TypeError, match="callable"):
        pt.stage(42)  # type: ignore[arg-type]
    for bad in (0, -1, 4097, 2**64, True, 1.5, float("inf")):
        # 2**64 used to start workers until the machine gave out.
        with pytest.raises(ValueError, match=r"workers must be an int from 1 to 4096 \(each"):
            pt.stage(double, workers=bad)  # type: ignore[arg-type]
    assert pt.stage(double, workers=4096).workers == 4096
    assert "double" in repr(pt.stage(double, workers=2))


_FREED_IN_A_PIPELINE_THREAD = r"""
import gc, sys, threading, time
import polytask as pt

gc.disable()  # only the hook collects
go = threading.Event()


def stage(x):
    if x == 1:
        go.wait(30)
        raise ValueError("boom")
    return x


def collect_there(frame, event, arg):
    # Pipeline._fail (a failed stage's worker, in its thread) calls add_note with
    # the pipeline's lock held.
    if event == "c_call" and getattr(arg, "__name__", "") == "add_note":
        gc.collect()


threading.setprofile(collect_there)  # the pipeline's threads, started below
p = pt.pipeline(range(5), stage, backend="thread")
it = iter(p)
assert next(it) == 0
box = [it]
box.append(box)  # a cycle (an exception kept with its frames): only the collector frees it
del it, box
go.set()
deadline = time.monotonic() + 20
while not p._finished and time.monotonic() < deadline:
    time.sleep(0.01)
print(p._finished)
"""


def test_an_iteration_the_collector_frees_in_a_pipeline_thread_closes_it():
    """Leaving an iteration closes the pipeline; the generator's close runs where the
    collector frees it, when it was left in a cycle: in one of the pipeline's own
    threads even, inside a section under the lock close() takes. It hung there."""
    out = run_python(_FREED_IN_A_PIPELINE_THREAD, timeout=HANG)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]  # closed all the same


_FREED_AT_EXIT = r"""
import threading
import polytask as pt

p = pt.pipeline(range(100), abs, backend="thread")
box = []


def consume():
    it = iter(p)
    next(it)
    box.append(it)
    box.append(box)  # a cycle: the exit's last collection frees it, in the main thread


t = threading.Thread(target=consume)
t.start()
t.join()
del box
print("end")
"""


def test_an_iteration_the_collector_frees_at_exit_does_not_hang_it():
    """Freed outside its consumer's thread, an iteration is closed by a thread of
    its own; but the exit's last collections run where no new thread ever starts,
    and the start waited for it for ever: the interpreter never exited."""
    out = run_python(_FREED_AT_EXIT, timeout=HANG)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["end"]
    assert "Exception ignored" not in out.stderr, out.stderr


def test_a_finished_process_pipeline_unmaps_its_channels_while_it_is_kept():
    """Its process channels' shared memory goes when the pipeline ends, not when the
    Pipeline object is dropped. The exit fix (a finalizer run with its handle alive
    leaves the mapping to the exit) had made the pipeline's explicit release keep
    every mapping (8 MiB of address space each, and the pages written) for as long
    as the object lived."""
    p = pt.pipeline(range(5), pt.stage(double), backend="process")
    assert list(p) == [0, 2, 4, 6, 8]
    names = [ch.name for ch in p._channels if getattr(ch, "backend", None) == "process"]
    assert names
    with open("/proc/self/maps") as f:
        mapped = f.read()
    assert [n for n in names if n in mapped] == []
