"""The main loop of a process-backend worker.

Started by the parent as ``polytask-worker -c 'from polytask.backends.process.worker import main;
main()' RFD WFD PARENT`` (argv[0] is what ``ps`` shows; or forked, with
start_method="fork"). It reads request frames from one pipe
and writes one response frame per task to another. It sets PDEATHSIG so that
it dies with the thread that started it, and checks that its parent is still
the one that started it.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from ..._core.task import CurrentTask, _set_current
from ..._ipc import stable as _stable
from ..._ipc.codec import describe, dumps, dumps_exception
from ..._ipc.spin import SPIN_MAX, after_sleep
from ..._os import proc as _proc
from ..._os.guardian import set_comm
from . import wire as _wire

__all__ = ["FORKED_CHILD_EXIT", "main", "retire_after_task", "serve"]

_FN_CACHE_SIZE = 256

#: The exit status of a process forked by a task that returned (or raised) from the
#: task function instead of ending with ``os._exit``: 70, EX_SOFTWARE of sysexits.h.
#: See :func:`_forked_child_returned`.
FORKED_CHILD_EXIT = 70


_retiring = False

#: Seconds the worker's exit (multiprocessing's end, then the ``atexit`` handlers
#: its tasks registered) may take before it is cut short: a retired worker keeps
#: its place in the pool until it exits, so a handler that hangs held that place
#: for good. Below the parent's stop wait, so a shutdown sees the worker's trace.
_EXIT_HANDLERS_WAIT = 4.0


def retire_after_task() -> None:
    """Ask this worker to exit once the current task's result is sent.

    For code running inside a process-backend worker (the Pool uses it for
    ``max_memory_per_worker``). The parent is told in the same response frame,
    so no further task is ever sent to a retiring worker; it starts a fresh one.
    """
    global _retiring
    _retiring = True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# After sending a result, when the parent allows it (_wire.F_SPIN: it sets the
# flag only while the busy workers and the waiting caller fit on the cores), the
# worker polls its request pipe before it sleeps, so a caller that submits again
# at once finds it awake (the policy: _spin). An idle worker thus burns at most
# one budget after its last task.


class _Strays:
    """Ends what a task started and left running, before its result goes out.

    The worker is a subreaper (set at start-up), so whatever a task started, and
    the orphans of that, stays a descendant of the worker: with no child left
    at all, nothing of the task's is left either (one system call, the common
    case). Otherwise every process carrying this worker's job mark (inherited
    from it, whatever group or session it moved to; see _proc's trees) is ended
    with the one kill policy, except the worker's own children from its
    start-up and initializer, and the zombies among our children are reaped.
    """

    __slots__ = ("active", "keep", "marker")

    def __init__(self) -> None:
        self.active = False
        self.marker: bytes | None = None
        self.keep: frozenset[int] = frozenset()

    def activate(self) -> None:
        """This process is a worker of ours (not a test calling :func:`serve` in a
        thread): become the subreaper of what tasks start, and clean up after them."""
        _proc.become_subreaper()
        self.active = True

    def ready(self, marker: bytes | None) -> None:
        """Start-up and initializer are done: what runs now is the worker's own."""
        self.marker = marker
        self.keep = frozenset(_proc.children())

    def after_task(self) -> None:
        if not self.active:
            return
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        # As their subreaper, every child we did not have at start-up is the task's
        # (or adopted from it): end those and everything carrying our mark, again
        # while any is left (one may have been between fork and exec, unmarked).
        for _ in range(5):
            left = [p for p in self._living_children() if p not in self.keep]
            found = (
                [p for p in _proc.find_marked({self.marker}) if p not in self.keep]
                if self.marker is not None
                else []
            )
            if not left and not found:
                break
            _proc.end_processes(set(left) | set(found))
        for pid in _proc.children():
            if pid not in self.keep:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    @staticmethod
    def _living_children() -> list[int]:
        return [p for p in _proc.children() if _proc.pid_state(p) not in (b"Z", b"X", None)]


_strays = _Strays()


def serve(rfd: int, wfd: int) -> None:
    """Serve tasks until the request pipe closes or an exit frame arrives."""
    decoder = _wire.FrameDecoder(_wire.REQUEST)
    fn_cache: dict[bytes, tuple[Callable[..., Any], _stable.Guard | None]] = {}
    loads = pickle.loads
    poll = select.poll()
    poll.register(rfd, select.POLLIN)
    monotonic = time.monotonic
    getpid = os.getpid
    me = getpid()
    budget = SPIN_MAX
    spin = False  # the last request asked for a spin after its result
    while True:
        if spin and budget:
            spin = False
            end = monotonic() + budget
            while not poll.poll(0):
                if monotonic() >= end:
                    t0 = monotonic()
                    poll.poll()
                    budget = after_sleep(budget, monotonic() - t0)
                    break
        data = os.read(rfd, 1 << 16)  # the full size is allocated per read
        if not data:
            return
        for header, body in decoder.feed(data):
            task_id, kind, fn_len, _ = header
            spin = bool(kind & _wire.F_SPIN)
            kind &= ~_wire.F_SPIN
            if kind == _wire.K_INIT:
                _init(loads(body), wfd, me)
                continue
            fn_bytes, payload = body[:fn_len], body[fn_len:]
            try:
                if kind == _wire.K_RUN_REF:
                    # A function pickled by reference is the same object every time:
                    # caching it skips the import lookup. So is a script's function the
                    # caller found cannot change unseen (_ipc/stable.py); other
                    # by-value ones (closures) come as K_RUN and are unpickled afresh,
                    # so each call sees the state it was sent with.
                    kept = fn_cache.get(fn_bytes)
                    if kept is None:
                        fn = loads(fn_bytes)
                        if len(fn_cache) >= _FN_CACHE_SIZE:
                            fn_cache.clear()
                        # A script's function kept by value (see _ipc/stable.py) is
                        # checked after each call: a call that changed the copy drops it.
                        kept = fn_cache[fn_bytes] = (fn, _stable.guard(fn))
                    fn, watch = kept
                else:
                    fn, watch = loads(fn_bytes), None
                name, args, kwargs = loads(payload)
            except BaseException as exc:
                msg = f"the worker could not unpickle the task: {type(exc).__name__}: {exc}"
                _write_all(wfd, _wire.encode_response(task_id, _wire.S_BAD_CALL, pickle.dumps(msg)))
                continue
            _set_current(CurrentTask(name))
            try:
                result = fn(*args, **kwargs)
            except SystemExit:
                # The task asked the process to exit: the parent sees the exit code. (In
                # a child the task forked, sys.exit ends that child, as it should.)
                raise
            except BaseException as exc:
                if getpid() != me:
                    _forked_child_returned(f"task {name!r}", exc)
                ok, data = _dumps_exception(exc)
                del exc
                status = _wire.S_ERROR if ok else _wire.S_ERROR_TEXT
                frame = _wire.encode_response(task_id, status, data)
            else:
                if getpid() != me:
                    _forked_child_returned(f"task {name!r}", None)
                try:
                    frame = _wire.encode_response(task_id, _wire.S_OK, dumps(result))
                except BaseException as exc:  # pickling runs the result's code: any error
                    msg = (
                        f"the result of task {name!r} ({describe(result)}) cannot be pickled to "
                        f"return it from the worker process: {type(exc).__name__}: {exc}. "
                        "Return a picklable value."
                    )
                    frame = _wire.encode_response(task_id, _wire.S_BAD_RESULT, pickle.dumps(msg))
                del result
            finally:
                _set_current(None)
            # Freed now, not when the next task comes (the caller freed its copies;
            # an object may release a resource, or its memory is due back).
            del fn, args, kwargs
            _strays.after_task()
            if _retiring:
                frame = frame[:8] + bytes([frame[8] | _wire.F_RETIRE]) + frame[9:]
                _write_all(wfd, frame)
                return
            _write_all(wfd, frame)
            # After the result is out (off the caller's wait): only the next call of
            # this copy, read after this, depends on it.
            if watch is not None and not watch.intact():
                fn_cache.pop(fn_bytes, None)
            del watch


def _dumps_exception(exc: BaseException) -> tuple[bool, bytes]:
    """:func:`dumps_exception`, which runs the exception's own pickling code: if that
    raises (SystemExit included), the parent still gets the facts, as text."""
    try:
        return dumps_exception(exc)
    except BaseException as why:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        text = f"<{type(exc).__name__}>"
        return False, pickle.dumps((name, text, "", f"{type(why).__name__}: {why}"))


def _forked_child_returned(where: str, exc: BaseException | None) -> NoReturn:
    """End a process that the task forked and that came back into this loop.

    It shares the worker's pipes: had it gone on, it would answer the task with
    a second result and then read requests meant for the worker (two readers
    split a large request between them, and the worker hangs). So it ends here,
    writing nothing to the pipes, with exit status :data:`FORKED_CHILD_EXIT`,
    and says so on stderr. The worker's own result, if any, stands.
    """
    try:
        what = "returned" if exc is None else f"raised {type(exc).__name__}: {exc}"
        sys.stderr.write(
            f"polytask: a process forked by {where} (pid {os.getpid()}) {what} from "
            "the function instead of calling os._exit(); it was ended with exit status "
            f"{FORKED_CHILD_EXIT} (end forked children with os._exit)\n"
        )
        if exc is not None:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        # What the child printed is kept, as its own exit would keep it.
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(FORKED_CHILD_EXIT)


# Set in a forked worker (backend._fork_process) when the initializer or its
# arguments could not be pickled: the child has them in its copy of the memory.
INHERITED_INITIALIZER: tuple[Callable[..., Any], tuple[Any, ...]] | None = None


def _init(config: dict[str, Any], wfd: int, me: int) -> None:
    sys.path[:] = config["sys_path"]
    # What the parent set only to start this interpreter (see _proc.python_command)
    # must not reach the programs a task starts.
    _proc.restore_env(config.get("env_restore", {}))
    authkey = config.get("authkey")
    if authkey is not None:
        from multiprocessing import process as mp_process  # only when a key came

        mp_process.current_process().authkey = authkey
    init = config.get("initializer")
    if init is not None or config.get("inherited_initializer"):
        try:
            if init is not None:
                fn, args = pickle.loads(init)
            elif INHERITED_INITIALIZER is not None:
                fn, args = INHERITED_INITIALIZER
            fn(*args)
        except BaseException as exc:
            if os.getpid() != me:
                _forked_child_returned("the worker's initializer", exc)
            _ok, data = _dumps_exception(exc)
            _write_all(wfd, _wire.encode_response(0, _wire.S_INIT_FAILED, data))
            os._exit(3)
        if os.getpid() != me:
            _forked_child_returned("the worker's initializer", None)
    _strays.ready(config.get("tree_marker"))
    # A task's timeout counts from here: interpreter start-up and the initializer
    # are the pool's cost, not the task's.
    _write_all(wfd, _wire.encode_response(0, _wire.S_READY, b""))


def serve_to_the_end(rfd: int, wfd: int) -> int:
    """:func:`serve`, then end as an interpreter does (:func:`at_exit`); the exit code.

    A task's ``sys.exit(code)`` ends the worker with the status the interpreter
    would exit with (see :func:`_exit_code`), after the same bounded
    :func:`at_exit`: a spawned worker went through the interpreter's own exit
    instead, which waited without a bound for the thread tasks it left. In a
    process a task forked, ``sys.exit`` only ends that process: the worker's exit
    handlers are the worker's (they ran there, and would have twice).
    """
    me = os.getpid()
    code = 0
    try:
        serve(rfd, wfd)
    except BrokenPipeError:
        pass
    except SystemExit as exc:
        code = _exit_code(exc)
        if os.getpid() != me:
            return code
    at_exit()
    return code


def _exit_code(exc: SystemExit) -> int:
    """The exit status ``exc`` means, as the interpreter reads it (a message: said, 1).

    Always 0-255, so ``os._exit`` takes it: an int is read as a C long (-1 past
    it) and the system keeps its low 8 bits. ``os._exit(2**31)`` raised
    OverflowError, which in a forked worker left the child running its parent's
    code (until the exit watchdog ended it), and a spawned one exited 1 with a
    traceback.
    """
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        if not -sys.maxsize - 1 <= code <= sys.maxsize:
            return 255
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # an unprintable code (its __str__ raised): the interpreter says 1 too
        pass
    return 1


def at_exit() -> None:
    """End the worker as an interpreter ends: what multiprocessing runs at the end
    of its own children, if a task used it (a ``multiprocessing.Queue`` a task put
    to is flushed; without it the items still buffered die with the worker), then
    the ``atexit`` handlers the worker's tasks registered (as multiprocessing's
    spawned children run them: joblib removes a nested Parallel's memmapping
    folder from /dev/shm there, a task's logging handlers flush). The parent ends
    a worker that takes too long (SIGKILL after its stop wait); and the worker ends
    itself after :data:`_EXIT_HANDLERS_WAIT` (a retired worker is not stopped by
    the parent: it would hold its place in the pool), saying so."""
    _exit_watchdog(_EXIT_HANDLERS_WAIT)
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        try:
            util._exit_function()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    atexit._run_exitfuncs()  # prints a handler's error as the interpreter does


def _exit_watchdog(seconds: float) -> None:
    """End this process ``seconds`` from now (see :func:`at_exit`), saying why.

    A thread, then SIGALRM's default action two seconds later if that thread
    cannot run (a handler holding the GIL in C). Not faulthandler's watchdog: in a forked
    worker whose parent had one armed, arming it again waits for good for the
    parent's watchdog thread, which the fork did not copy.
    """

    def cut_short() -> None:
        time.sleep(seconds)
        try:
            os.write(
                2,
                f"polytask: worker process {os.getpid()} was ended: its exit (the atexit "
                f"handlers its tasks registered) took more than {seconds:g} s\n".encode(),
            )
        finally:
            os._exit(1)

    threading.Thread(target=cut_short, name="polytask-exit-watchdog", daemon=True).start()
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(seconds) + 2)
    except ValueError:  # pragma: no cover - not the main thread (a test serving in one)
        pass


def after_fork() -> None:
    """In a forked worker, what multiprocessing does first in its own fork
    children: the parent's finalizers and children are not this process's (so
    :func:`at_exit` touches only the worker's own), and objects it inherited
    (a Queue, a Manager proxy) reset their per-process state."""
    # The parent's atexit handlers are the parent's (its temp files, its pools):
    # a forked worker must not run them at its exit (multiprocessing's fork
    # children run none; this worker runs the ones its own tasks register, and
    # polytask's own, whose list the fork emptied: what its tasks started).
    atexit._clear()
    atexit.register(_proc.run_shutdown_hooks)
    # So are its weakref finalizers: disarmed (a finalizer gone from the registry does
    # nothing when called), or the exit function registered again below ran them
    # here: a forked worker removed its parent's TemporaryDirectory as it ended.
    weakref.finalize._registry.clear()  # type: ignore[attr-defined]
    if getattr(weakref.finalize, "_registered_with_atexit", False):
        # weakref.finalize registers its exit function once per process and keeps a
        # flag that the fork copied: without it again, the finalizers a task makes
        # (a TemporaryDirectory's) would not run at this worker's exit.
        atexit.register(weakref.finalize._exitfunc)  # type: ignore[attr-defined]
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    mp_process: Any = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        mp_process._children = set()
    util._finalizer_registry.clear()
    util._run_after_forkers()


def main() -> None:
    """Entry point of a spawned worker: ``argv = [rfd, wfd, parent pid]``."""
    rfd, wfd, parent = (int(a) for a in sys.argv[1:4])
    set_comm("polytask-worker")
    _proc.set_pdeathsig(signal.SIGKILL, expected_parent=parent)
    _strays.activate()
    # The worker has its own process group: the terminal's Ctrl-C goes to the
    # parent, which ends the workers itself, without tracebacks from each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = serve_to_the_end(rfd, wfd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
