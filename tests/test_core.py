"""The core beyond the contract: input checks, backend specifics, wire and pickling."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from typing import Any

import pytest

import polytask as pt
from helpers import wait_until
from polytask._ipc.codec import dumps_call, dumps_exception, loads_exception
from polytask.backends import available, get_backend, make_backend
from polytask.backends.process import wire as _wire
from polytask.backends.process.backend import ProcessBackend
from polytask.backends.thread import ThreadBackend

HANG = 60


def pid(*_: object) -> int:
    return os.getpid()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def retire_when(flag: bool) -> int:
    from polytask.backends.process.worker import retire_after_task

    if flag:
        retire_after_task()
    return os.getpid()


STATE: dict[str, int] = {}


def remember(value: int) -> None:
    STATE["value"] = value


def recall() -> int:
    return STATE["value"]


# --------------------------------------------------------------- bad input
def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backend 'proces'.*thread.*process"):
        pt.spawn(pid, backend="proces")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"timeout": -1}, ValueError, ">= 0"),
        ({"timeout": "5"}, TypeError, "number of seconds"),
        ({"timeout": True}, TypeError, "number of seconds"),
        ({"name": 3}, TypeError, "name must be a str"),
    ],
)
def test_bad_spawn_arguments_fail_at_the_call(kwargs, error, words):
    with pytest.raises(error, match=words):
        pt.spawn(pid, backend="process", **kwargs)


def test_spawn_needs_a_callable():
    with pytest.raises(TypeError, match="needs a callable"):
        pt.spawn(42)  # type: ignore[call-overload]


def test_group_spawn_outside_the_block_is_an_error():
    g = pt.TaskGroup()
    with pytest.raises(RuntimeError, match="inside the group's with block"):
        g.spawn(pid)
    with g:
        g.spawn(pid)
    with pytest.raises(RuntimeError, match="inside the group's with block"):
        g.spawn(pid)
    with pytest.raises(RuntimeError, match="entered only once"), g:
        pass


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="start_method"):
        ProcessBackend(start_method="forkserver-ish")
    with pytest.raises(ValueError, match="max_workers"):
        ProcessBackend(0)
    with pytest.raises(ValueError, match="max_workers"):
        ThreadBackend(0)
    with pytest.raises(TypeError, match="initializer must be callable"):
        ProcessBackend(initializer=3)  # type: ignore[arg-type]


def test_registry_names_every_backend():
    assert {"thread", "process", "dask", "ray"} <= set(available())
    assert get_backend("thread") is get_backend("thread")
    private = make_backend("thread", max_workers=1)
    assert private is not get_backend("thread")
    private.shutdown()


def test_spawn_after_shutdown_is_a_clear_error():
    be = ProcessBackend(1)
    be.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        be.spawn(pid, (), {})


# --------------------------------------------------------------- process backend
def test_workers_stay_warm_and_are_reused():
    be = ProcessBackend(1)
    try:
        pids = {be.spawn(pid, (), {}).result(HANG) for _ in range(20)}
        assert len(pids) == 1
        assert pids != {os.getpid()}
    finally:
        be.shutdown()


def test_max_workers_bounds_the_processes():
    be = ProcessBackend(2)
    try:
        tasks = [be.spawn(nap, (0.2,), {}) for _ in range(6)]
        assert len({t.result(HANG) for t in tasks}) <= 2
        assert be.statistics()["workers"] <= 2
    finally:
        be.shutdown()


def test_max_tasks_per_worker_recycles():
    be = ProcessBackend(1, max_tasks_per_worker=2)
    try:
        pids = [be.spawn(pid, (), {}).result(HANG) for _ in range(6)]
        assert len(set(pids)) == 3
        assert pids[0] == pids[1] != pids[2]
    finally:
        be.shutdown()


def test_a_worker_may_ask_to_retire_after_its_task():
    be = ProcessBackend(1)
    try:
        first = be.spawn(retire_when, (True,), {}).result(HANG)
        second = be.spawn(retire_when, (False,), {}).result(HANG)
        third = be.spawn(retire_when, (False,), {}).result(HANG)
        assert first != second == third
    finally:
        be.shutdown()


def test_initializer_runs_once_per_worker_and_keeps_state():
    be = ProcessBackend(1, initializer=remember, initargs=(41,))
    try:
        assert be.spawn(recall, (), {}).result(HANG) == 41
    finally:
        be.shutdown()


def test_failing_initializer_fails_the_task_clearly():
    be = ProcessBackend(1, initializer=remember, initargs=("not", "one"))
    try:
        with pytest.raises(pt.PolytaskError, match="initializer failed"):
            be.spawn(recall, (), {}).result(HANG)
    finally:
        be.shutdown(cancel=True)


def test_fork_start_method_when_asked():
    be = ProcessBackend(1, start_method="fork")
    try:
        assert be.spawn(pid, (), {}).result(HANG) != os.getpid()
        # By-value functions work too.
        assert be.spawn(lambda: 5, (), {}).result(HANG) == 5
    finally:
        be.shutdown()


def test_process_task_sees_its_name_and_exitcode_is_none_on_success():
    t = pt.spawn(nap, 0, backend="process", name="quick")
    t.result(HANG)
    assert t.exitcode is None
    assert repr(t) == "<Task 'quick' on process: done>"


def test_shutdown_with_cancel_kills_running_tasks():
    be = ProcessBackend(2)
    tasks = [be.spawn(nap, (60,), {}) for _ in range(2)]
    pending = be.spawn(nap, (60,), {})
    wait_until(lambda: all(t.running() for t in tasks), HANG, "both tasks to run")
    started = time.monotonic()
    be.shutdown(wait=True, cancel=True)
    assert time.monotonic() - started < 30
    for t in [*tasks, pending]:
        with pytest.raises(pt.Cancelled):
            t.result(HANG)


def test_cancel_a_pending_task_never_runs_it(tmp_path):
    be = ProcessBackend(1)
    release = tmp_path / "release"
    try:
        # Busy until released, not for a fixed time: `later` is still pending at
        # the cancel, however slowly this thread gets to it.
        blocker = be.spawn(wait_for_path, (str(release),), {})
        marker = tmp_path / "ran"
        later = be.spawn(marker.write_text, ("x",), {})
        assert later.cancel()
        release.touch()
        blocker.result(HANG)
        assert be.spawn(pid, (), {}).result(HANG) > 0
        assert not marker.exists()
        with pytest.raises(pt.Cancelled, match="before it started"):
            later.result(0)
    finally:
        release.touch()
        be.shutdown()


def test_many_threads_wait_on_one_backend_at_once():
    be = ProcessBackend(2)
    results: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(30):
            value = be.spawn(pow, (k, 2), {}).result(HANG)
            with lock:
                results.append(value)

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG)
        assert sorted(results) == sorted(k * k for k in range(6) for _ in range(30))
    finally:
        be.shutdown()


# --------------------------------------------------------------- thread backend
def ignore_flag(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_thread_timeout_flags_the_task_cancelled():
    seen: list[bool] = []

    def watcher() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not pt.current_task().cancelled:
            time.sleep(0.01)
        seen.append(pt.current_task().cancelled)

    t = pt.spawn(watcher, timeout=0.2)
    with pytest.raises(pt.TaskTimeout):
        t.result(HANG)
    deadline = time.monotonic() + HANG
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [True]


def test_current_task_outside_tasks_is_main():
    assert pt.current_task().name == "main"
    assert not pt.current_task().cancelled
    pt.current_task().raise_if_cancelled()


# --------------------------------------------------------------- wire and pickling
def test_frame_decoder_reassembles_split_and_merged_frames():
    frames = [_wire.encode_response(i, 0, bytes([i]) * i) for i in range(1, 6)]
    stream = b"".join(frames)
    dec = _wire.FrameDecoder(_wire.RESPONSE)
    got = []
    for i in range(0, len(stream), 3):  # fed in 3-byte pieces
        got += dec.feed(stream[i : i + 3])
    assert [(h[0], b) for h, b in got] == [(i, bytes([i]) * i) for i in range(1, 6)]
    # Nothing was left over: the next frame decodes on its own.
    assert [(h[0], b) for h, b in dec.feed(_wire.encode_response(9, 0, b"z"))] == [(9, b"z")]
    req = _wire.encode_request(9, _wire.K_RUN, b"fn", b"payload")
    ((header, body),) = _wire.FrameDecoder(_wire.REQUEST).feed(req)
    assert header[:3] == (9, _wire.K_RUN, 2) and body == b"fnpayload"


def test_dumps_call_marks_module_functions_by_reference():
    fn, by_ref, payload = dumps_call(pid, (1,), {"x": 2}, "n")
    assert by_ref and pickle.loads(fn) is pid
    assert pickle.loads(payload) == ("n", (1,), {"x": 2})
    # "by_ref": the worker may cache it by its bytes. A closure carries state: never.
    limit = 3
    _, by_ref, _ = dumps_call(lambda: limit, (), {}, "l")
    assert not by_ref


def _script_function(source: str) -> tuple[Any, dict[str, Any]]:
    """A function defined as a script's are: in a module named __main__ (by value)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<script>", "exec"), namespace)
    return namespace["f"], namespace


@pytest.mark.parametrize(
    "source",
    [
        "SEEN = []\ndef f(x): SEEN.append(x); return len(SEEN)",  # reads a mutable global
        "N = 0\ndef f(x):\n    global N\n    N += x\n    return N",  # assigns one
        "class C: pass\ndef f(x): return C()",  # a class of the script (by value)
        "def f(x, box=[]): return box",  # a mutable default
    ],
)
def test_a_script_function_that_can_change_unseen_is_pickled_every_time(source):
    # A guard for any future cache of by-value pickles (one was tried and reverted,
    # NOTES.md): what these functions read can change without their identity.
    from polytask._ipc.codec import dumps_fn

    f, _ = _script_function(source)
    data, cacheable = dumps_fn(f)
    assert not cacheable
    assert dumps_fn(f)[0] is not data


def test_a_script_sees_its_rebound_globals_in_the_worker(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import polytask as pt\n"
        "LIMIT = 1\n"
        "def f(x): return x + LIMIT\n"
        "if __name__ == '__main__':\n"
        "    with pt.Pool(workers=1) as pool:\n"
        "        got = [pool.submit(f, 10).result(60) for _ in range(3)]\n"
        "        LIMIT = 5\n"
        "        got += [pool.submit(f, 10).result(60) for _ in range(2)]\n"
        "    print(got)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[11, 11, 11, 15, 15]"


def test_every_pickle_naming_main_holds_the_stack_global_opcode():
    # The hot paths (Channel.put/put_many, codec.dumps) test for the STACK_GLOBAL
    # byte before they search for b"__main__": a protocol-5 pickle names a module
    # only with that opcode, so an object of __main__ can never skip the search.
    import enum
    import sys
    import types

    from polytask._ipc.codec import MAIN_REF, STACK_GLOBAL, by_reference

    main = sys.modules["__main__"]
    cls = types.new_class("PtProbeClass", (), {})
    cls.__module__, cls.__qualname__ = "__main__", "PtProbeClass"

    def fn() -> None:
        pass

    fn.__module__, fn.__qualname__ = "__main__", "pt_probe_fn"
    color = enum.Enum("PtProbeColor", "RED")
    color.__module__ = "__main__"
    names = {"PtProbeClass": cls, "pt_probe_fn": fn, "PtProbeColor": color}
    for name, obj in names.items():
        setattr(main, name, obj)
    try:
        naming_main = [cls, cls(), fn, color.RED, [1, (cls(),)], {cls: 1}, {"k": fn}]
        for obj in naming_main:
            data = pickle.dumps(obj, protocol=5)
            assert MAIN_REF in data and STACK_GLOBAL in data, obj
            assert not by_reference(data), obj
        # Nothing of __main__ in these (a string that holds the name is no reference).
        for obj in [(12345, "hello", 1.5), b"\x93", "__main__", [None, True, 2**70], {1: 2.0}]:
            assert by_reference(pickle.dumps(obj, protocol=5)), obj
    finally:
        for name in names:
            delattr(main, name)


def test_exceptions_round_trip_with_remote_traceback():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        ok, data = dumps_exception(exc)
    back = loads_exception(ok, data)
    assert isinstance(back, KeyError) and back.args == ("missing",)
    assert "raise KeyError" in str(back.__cause__)


def test_errors_pickle_with_their_fields():
    err = pt.WorkerCrashed._for("job", -9)
    back = pickle.loads(pickle.dumps(err))
    assert (back.name, back.exitcode, back.signal, str(back)) == ("job", -9, 9, str(err))


def test_error_hierarchy():
    assert issubclass(pt.TaskTimeout, TimeoutError)
    assert issubclass(pt.CommandTimeout, pt.TaskTimeout)
    assert issubclass(pt.Cancelled, __import__("concurrent.futures").futures.CancelledError)
    assert issubclass(pt.BackendUnavailable, ImportError)
    # The README's promise: the stdlib's own type where the stdlib has the error.
    import pickle

    assert issubclass(pt.SerializationError, pickle.PicklingError)
    assert issubclass(pt.ProgramNotFound, FileNotFoundError)
    assert issubclass(pt.WaitTimeout, TimeoutError)
    assert not issubclass(pt.WaitTimeout, pt.TaskTimeout)  # nothing was stopped
    import queue

    assert issubclass(pt.ChannelEmpty, queue.Empty) and issubclass(pt.ChannelFull, queue.Full)
    for name in pt.__all__:
        obj = getattr(pt, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, pt.PolytaskError), name


def test_every_wait_that_runs_out_raises_wait_timeout(tmp_path):
    """A wait that runs out is a pt.WaitTimeout (a PolytaskError and a TimeoutError;
    a pool's AsyncResult also a multiprocessing.TimeoutError): the one hierarchy's
    promise, where a plain TimeoutError was raised."""
    import multiprocessing

    caught: dict[str, BaseException] = {}
    gate = threading.Event()
    task = pt.spawn(gate.wait, 30)
    try:
        with pytest.raises(pt.WaitTimeout) as e:
            task.result(timeout=0.05)
        caught["Task.result"] = e.value
        pool = pt.Pool(1, backend="thread")
        pending = pool.apply_async(gate.wait, (30,))
        with pytest.raises(pt.WaitTimeout) as e:
            pending.get(timeout=0.05)
        assert isinstance(e.value, multiprocessing.TimeoutError)
        caught["AsyncResult.get"] = e.value
        pool.close()
        with pytest.raises(pt.WaitTimeout) as e:
            pool.join(timeout=0.05)
        caught["Pool.join"] = e.value
    finally:
        gate.set()
    assert task.result(timeout=30) is True
    pool.join(timeout=30)
    lock_path = str(tmp_path / "lock")
    with pt.FileLock(lock_path):
        holder = pt.spawn(_hold_file_lock, lock_path, backend="process")
        with pytest.raises(pt.WaitTimeout) as e:
            holder.result(timeout=30)
    caught["FileLock"] = e.value
    fifo = pt.Fifo(str(tmp_path / "fifo"))
    with pytest.raises(pt.WaitTimeout) as e:
        fifo.open("w", timeout=0.05)  # no reader comes
    caught["Fifo.open"] = e.value
    reader = fifo.open("r", keep_open=True)
    try:
        with pytest.raises(pt.WaitTimeout) as e:
            reader.recv(timeout=0.05)
        caught["FifoReader.recv"] = e.value
    finally:
        reader.close()
        fifo.unlink()
    for where, err in caught.items():
        assert isinstance(err, TimeoutError) and isinstance(err, pt.PolytaskError), where
        assert not isinstance(err, pt.TaskTimeout), where
        assert str(err), where


def _hold_file_lock(path: str) -> None:
    with pt.FileLock(path, timeout=0.05):  # held by the test: this times out
        pass


PUBLIC_NAMES = {
    # work
    "Task", "spawn", "background", "current_task", "CurrentTask", "TaskGroup",
    "sleep", "checkpoint",
    "Pool", "Executor", "AsyncResult", "MapIterator",
    # programs
    "run", "stream", "run_many", "CommandResult", "OutputLine", "Stream", "DEVNULL", "INHERIT",
    "Supervisor", "ProcessStatus",
    # IPC and synchronisation
    "Channel", "SharedArray", "pipeline", "stage", "Fifo", "FileLock",
    "Lock", "RLock", "Event", "Condition", "Semaphore", "BoundedSemaphore", "Barrier",
    "debug",
    # errors
    "PolytaskError", "TaskTimeout", "WaitTimeout", "WorkerCrashed", "Cancelled", "RemoteError",
    "SerializationError", "BackendUnavailable", "CommandFailed", "CommandTimeout",
    "ProgramNotFound", "ChannelClosed", "ChannelEmpty", "ChannelFull", "PotentialDeadlock",
    "ProcfileError",
}  # fmt: skip


def test_public_api_is_exported_and_documented():
    # A name added to or dropped from the public API is a decision: make it here too.
    assert set(pt.__all__) == PUBLIC_NAMES
    assert len(pt.__all__) == len(set(pt.__all__))
    # The lazy loader knows every public name and nothing else.
    assert set(pt._LAZY) == PUBLIC_NAMES
    for name in pt.__all__:
        obj = getattr(pt, name)
        assert obj.__doc__, f"{name} has no docstring"


def write_marker(path: str) -> None:
    with open(path, "w") as f:
        f.write("ran")


def boom() -> None:
    raise ArithmeticError("first failure")


def test_group_failure_means_pending_tasks_never_start(tmp_path):
    be = ProcessBackend(1)
    markers = [tmp_path / f"m{i}" for i in range(5)]
    try:
        with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
            with pt.TaskGroup(backend=be) as g:
                g.spawn(boom)
                for m in markers:
                    g.spawn(write_marker, str(m))
        assert [type(e) for e in info.value.exceptions] == [ArithmeticError]
        assert [m.exists() for m in markers] == [False] * 5
        assert all(t.cancelled() for t in g.tasks[1:])
    finally:
        be.shutdown()


def test_guardian_removes_a_prefix_family_when_its_owner_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    prefix = str(tmp_path / "polytask-family-")
    code = (
        "import os, sys, time\n"
        "from polytask._os import proc as _proc\n"
        f"_proc.guard_prefix({prefix!r})\n"
        "for i in range(3):\n"
        f"    open({prefix!r} + str(i), 'w').close()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert len(list(tmp_path.iterdir())) == 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(HANG)
        deadline = time.monotonic() + HANG
        while list(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(tmp_path.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def slow_init(value: int) -> None:
    time.sleep(1.5)
    STATE["value"] = value


def test_timeout_counts_from_when_the_worker_is_ready():
    # Start-up and a slow initializer are the backend's cost, not the task's. The
    # timeout is below the initializer's 1.5 s (counted from the submit, it would
    # run out), with room for a loaded machine to send, run and answer `recall`.
    be = ProcessBackend(1, initializer=slow_init, initargs=(7,))
    try:
        assert be.spawn(recall, (), {}, timeout=1.2).result(HANG) == 7
    finally:
        be.shutdown()


def test_initializer_may_be_a_closure():
    seen = []
    be = ProcessBackend(1, initializer=lambda: seen.append(1))
    try:
        assert be.spawn(pid, (), {}).result(HANG) > 0
    finally:
        be.shutdown()


# ---------------------------------------------------------------------------- Task internals
def test_task_sets_everything_future_init_sets():
    # Task does not call Future.__init__ (it would build the condition eagerly): if a
    # new Python adds an attribute there, Future's methods may need it on a Task too.
    import concurrent.futures

    from polytask._core.task import Task

    future_attrs = set(vars(concurrent.futures.Future()))
    task = Task(get_backend("thread"), "t")
    missing = {name for name in future_attrs if not hasattr(task, name)}
    assert not missing


def test_a_task_makes_its_condition_only_when_someone_waits():
    import concurrent.futures

    from polytask._core.task import Task

    be = get_backend("thread")
    quiet = Task(be, "quiet")
    assert quiet._set_running()
    assert quiet._finish(41)
    assert quiet.result() == 41 and quiet.done() and not quiet.cancelled()
    assert quiet._cond is None  # finished and read without a lock of its own

    waited = Task(be, "waited")
    assert waited.set_running_or_notify_cancel()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(waited.exception(timeout=HANG)))
    # A thread that blocks first is woken by the finish that comes later: finish
    # only once it has registered its waiter (made the condition) and sleeps.
    waiter.start()
    deadline = time.monotonic() + HANG
    while not getattr(waited, "_waiters", None):
        assert time.monotonic() < deadline, "the waiter never blocked"
        time.sleep(0.001)
    assert waited._finish(exc=ValueError("x"))
    waiter.join(HANG)
    assert isinstance(got[0], ValueError)

    later = Task(be, "later")
    later._set_running()
    threading.Timer(0.05, lambda: later._finish(7)).start()
    done, _ = concurrent.futures.wait([later, quiet], timeout=HANG)
    assert done == {later, quiet}
    assert [f.result() for f in concurrent.futures.as_completed([later, quiet])] in (
        [7, 41],
        [41, 7],
    )


def test_a_task_cancelled_before_it_starts_notifies_its_waiters():
    import concurrent.futures

    from polytask._core.task import Task

    task = Task(get_backend("thread"), "c")
    assert task.cancel() and task.cancelled()
    assert not task._set_running()  # tells concurrent.futures.wait, like Future does
    done, _ = concurrent.futures.wait([task], timeout=HANG)
    assert done == {task}
    with pytest.raises(pt.Cancelled):
        task.result(0)


def test_finish_many_completes_quiet_and_waited_tasks_alike():
    from polytask._core.task import Task, finish_many

    be = get_backend("thread")
    tasks = [Task(be, f"t{i}") for i in range(1200)]  # more than one batch
    called: list[object] = []
    tasks[5].add_done_callback(lambda t: called.append(t.result()))
    woke: list[object] = []
    waiter = threading.Thread(target=lambda: woke.append(tasks[700].result(HANG)))
    waiter.start()
    # It blocks before the finish comes: it has registered its waiter (made the condition).
    wait_until(lambda: getattr(tasks[700], "_waiters", None), HANG, "the waiter to block")
    assert tasks[9]._finish(-1)  # already done: finish_many leaves it as it is
    finish_many([(t, i) for i, t in enumerate(tasks)])
    waiter.join(HANG)
    assert called == [5] and woke == [700]
    assert [t.result(0) for t in tasks] == [-1 if i == 9 else i for i in range(1200)]
    assert all(t.duration is not None for t in tasks)


# --------------------------------------------------------------- spinning before sleeping
def test_worker_strips_the_spin_flag_and_serves_on():
    """A request may carry F_SPIN; the worker runs it as usual and keeps serving."""
    from polytask.backends.process.worker import serve

    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    server = threading.Thread(target=serve, args=(req_r, res_w), daemon=True)
    server.start()
    try:
        decoder = _wire.FrameDecoder(_wire.RESPONSE)
        got: list[tuple[int, object]] = []
        for i, spin in enumerate([True, True, False, True], 1):
            fn, by_ref, payload = dumps_call(pow, (i, 2), {}, f"t{i}")
            kind = (_wire.K_RUN_REF if by_ref else _wire.K_RUN) | (_wire.F_SPIN if spin else 0)
            os.write(req_w, _wire.encode_request(i, kind, fn, payload))
            frames: list[tuple[tuple[int, ...], bytes]] = []
            while not frames:
                frames = decoder.feed(os.read(res_r, 1 << 16))
            ((header, body),) = frames
            assert header[1] == _wire.S_OK
            got.append((header[0], pickle.loads(body)))
        assert got == [(1, 1), (2, 4), (3, 9), (4, 16)]
    finally:
        os.close(req_w)  # EOF: serve returns, even while it polls for the next request
        server.join(HANG)
        for fd in (req_r, res_r, res_w):
            os.close(fd)
    assert not server.is_alive()


def wait_for_path(path: str) -> int:
    deadline = time.monotonic() + HANG
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return os.getpid()


def test_workers_are_told_to_spin_only_while_a_core_is_left(monkeypatch, tmp_path):
    from polytask.backends.process import backend as process

    monkeypatch.setattr(process, "_NCPU", 2)
    be = ProcessBackend(2)
    release = tmp_path / "release"
    try:
        be.spawn(pid, (), {}).result(HANG)
        assert be._may_spin()  # one worker, idle: the caller and it fit on 2 cores
        # Both run until released: a fixed nap could end before a second worker,
        # slow to start on a loaded machine, has taken the other task.
        tasks = [be.spawn(wait_for_path, (str(release),), {}) for _ in range(2)]
        wait_until(lambda: all(t.running() for t in tasks), HANG, "both tasks to run")
        assert not be._may_spin()  # two busy workers take both cores: nobody spins
        release.touch()
        for t in tasks:
            t.result(HANG)
        assert be._may_spin()
    finally:
        release.touch()
        be.shutdown()


def test_an_idle_worker_and_a_waiting_caller_do_not_keep_spinning():
    """Spinning is bounded: a long task or an idle worker costs next to no CPU.

    Not a timing test: it bounds CPU seconds, with a wide margin (a side that
    kept spinning would use about one CPU second per second).
    """
    psutil = pytest.importorskip("psutil")
    be = ProcessBackend(1)
    try:
        for _ in range(50):  # tiny tasks: both ends' spin budgets at their maximum
            wpid = be.spawn(pid, (), {}).result(HANG)
        worker = psutil.Process(wpid)
        w0 = sum(worker.cpu_times()[:2])
        c0 = time.process_time()
        assert be.spawn(nap, (1.0,), {}).result(HANG) == wpid  # the caller waits 1 s
        time.sleep(1.0)  # deliberate: the worker idles 1 s, its CPU use is measured
        assert sum(worker.cpu_times()[:2]) - w0 < 0.5
        assert time.process_time() - c0 < 0.5
    finally:
        be.shutdown()


def test_thread_shutdown_with_cancel_reaches_a_task_an_idle_thread_just_took():
    # shutdown(cancel=True) looked at the running tasks, then drained the queue: a
    # task an idle thread took off the queue in between was in neither and ran on
    # uncancelled (Pool.terminate then waited for it). On 3.13 the woken thread won
    # that race in 2 of 3 tries; a tiny switch interval makes 3.11 show it too.
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            pt.sleep(0.01)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i in range(300):
            be = ThreadBackend(2)
            for warm in [be.spawn(int, (), {}), be.spawn(int, (), {})]:
                warm.result(HANG)  # both threads now idle, waiting on the queue
            tasks = [be.spawn(loop, (), {}), be.spawn(loop, (), {})]
            be.shutdown(wait=True, cancel=True, grace=2.0)
            assert all(t.done() for t in tasks), f"round {i}: a task was not cancelled"
    finally:
        sys.setswitchinterval(interval)
        stop.set()


def test_thread_shutdown_with_cancel_fails_a_task_that_ignores_it_once_abandoned():
    # A thread cannot be killed: after the grace the task is abandoned, and told
    # Cancelled then (its later result is dropped), so that nothing waits for it.
    release = threading.Event()
    be = ThreadBackend(1)
    try:
        task = be.spawn(release.wait, (HANG,), {})
        wait_until(task.running, HANG, "the task to run")
        be.shutdown(wait=True, cancel=True, grace=0.1)
        assert task.done()
        with pytest.raises(pt.Cancelled, match="abandoned"):
            task.result(0)
    finally:
        release.set()
    assert task.exception(0) is not None  # its late return changed nothing


def test_a_daemon_thread_task_abandoned_at_once_is_not_said_to_have_had_the_grace():
    # Daemon tasks alone are not waited for: shutdown(cancel=True) abandons them at
    # once. Their Cancelled said "it ignored its cancellation for 5 s".
    release = threading.Event()
    be = ThreadBackend(1)
    try:
        task = pt.spawn(release.wait, HANG, backend=be, daemon=True)
        wait_until(task.running, HANG, "the task to run")
        be.shutdown(wait=True, cancel=True, grace=HANG)
        with pytest.raises(pt.Cancelled, match="as a daemon task it was not waited for") as info:
            task.result(0)
        assert "ignored" not in str(info.value)
    finally:
        release.set()


def _shut_own_backend(be: ThreadBackend) -> str:
    be.shutdown(wait=True, cancel=True, grace=0.1)
    return "went on"


def test_a_thread_task_shutting_its_own_backend_down_is_not_failed_by_it():
    be = ThreadBackend(1)
    task = be.spawn(_shut_own_backend, (be,), {})
    assert task.result(HANG) == "went on"


def test_thread_shutdown_from_a_done_callback_still_abandons_a_task_that_ignores_it():
    # Called from a done callback on one of its threads, shutdown cannot wait (the
    # thread may be needed); it did not abandon either, so a task that ignores its
    # cancellation stayed unfinished for good (a Pool's join() after a terminate()
    # from such a callback waited for it). The grace runs in the background now.
    release = threading.Event()
    gate = threading.Event()
    be = ThreadBackend(2)
    try:
        stuck = be.spawn(release.wait, (HANG,), {})
        wait_until(stuck.running, HANG, "the task to run")
        first = be.spawn(gate.wait, (HANG,), {})
        first.add_done_callback(lambda _t: be.shutdown(wait=True, cancel=True, grace=0.1))
        gate.set()  # first ends on its thread, which runs the callback
        assert stuck.join(10), "the task that ignores its cancellation was never abandoned"
        with pytest.raises(pt.Cancelled, match="abandoned"):
            stuck.result(0)
        assert first.result(0) is True
    finally:
        release.set()


def test_a_thread_task_abandoned_once_is_reported_once(capsys: pytest.CaptureFixture[str]):
    # A later shutdown (a Pool's join() after terminate()) said again that the task
    # "ignored cancellation" and "was abandoned", though it had not cancelled it.
    release = threading.Event()
    be = ThreadBackend(1)
    try:
        task = be.spawn(release.wait, (HANG,), {})
        wait_until(task.running, HANG, "the task to run")
        be.shutdown(wait=True, cancel=True, grace=0.1)
        be.shutdown(wait=True)
        assert capsys.readouterr().err.count("were abandoned") == 1
    finally:
        release.set()


def test_a_waiting_thread_shutdown_stops_waiting_once_another_abandons_the_task():
    # shutdown(wait=True) after a shutdown(wait=False, cancel=True) (a Pool's join
    # after a terminate from a done callback): the first abandons the task that
    # ignores its cancellation after its grace; the second waited for its thread
    # for good, having looked only before its wait whether it was abandoned.
    release = threading.Event()
    be = ThreadBackend(1)
    try:
        task = be.spawn(release.wait, (HANG,), {})
        wait_until(task.running, HANG, "the task to run")
        be.shutdown(wait=False, cancel=True, grace=0.1)
        waiter = threading.Thread(target=be.shutdown, daemon=True)
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive(), "shutdown(wait=True) still waits for an abandoned thread"
        with pytest.raises(pt.Cancelled, match="abandoned"):
            task.result(0)
    finally:
        release.set()
