"""What a worker runs: a chunk of a Pool's items, and the Pool's worker initializer.

A process worker unpickles :func:`_run_chunk` by reference, so importing this
module is the whole cost a Pool adds to a worker's start: it imports nothing
of the Pool itself (no scheduling, progress bars, primitive factories), only
the core's task and error types and the codec that ships exceptions back.
``tests/test_pool_layout.py`` checks that.

The result of a chunk, in either runner, is ``(values, errors, seconds)``: the
values in order (None where an item failed), the failures by position (None
when every item succeeded, the common case), and the seconds of work, which
the Pool's chunk sizer learns from. Fewer values than items means the chunk
stopped early; the Pool sends the rest again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from itertools import starmap
from typing import TYPE_CHECKING, Any

from .._core.backend import fn_name
from .._core.errors import Cancelled
from .._core.task import CurrentTask, Task, _set_current, current_task
from .._ipc.codec import dumps_exception

if TYPE_CHECKING:
    from .schedule import Item

__all__ = ["Results", "_run_chunk", "_run_items"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


#: A chunk's results: the values in order (None where an item failed) and the
#: failures by position (None when every item succeeded, the common case).
Results = tuple[list[Any], "dict[int, Any] | None"]


def _run_chunk(
    fn: Callable[..., Any] | None,
    calls: list[Any] | range,
    remote: bool,
    max_memory: int | None,
    star: bool = True,
) -> tuple[list[Any], dict[int, Any] | None, float]:
    """Run a chunk in a worker: ``(values, errors by position or None, seconds of work)``.

    ``calls`` holds argument tuples for ``fn`` (single arguments if not ``star``),
    or ``(fn, args, kwargs)`` triples when ``fn`` is None. Errors are caught per item so they do not fail the
    chunk-mates; from another process they travel pickled with their traceback
    (:func:`dumps_exception`). Fewer values than calls means the worker stopped
    early (over its memory limit, or the chunk was cancelled): the Pool re-queues
    the rest.
    """
    values: list[Any] = []
    append = values.append
    errors: dict[int, Any] | None = None
    me = current_task()
    flagged = me._task is not None  # thread tasks can be flagged cancelled; stop early then
    simple = fn is not None and max_memory is None and not flagged
    start = last_check = time.perf_counter()
    n = len(calls)
    rest = iter(calls)
    stop = False
    while not stop:
        try:
            if simple:
                assert fn is not None
                # The hot loop, in C: list.extend appends each value as map makes
                # it, so when an item raises, the values before it are kept and
                # ``rest`` resumes after it (map took it).
                values.extend(starmap(fn, rest) if star else map(fn, rest))
                if len(values) < n:
                    # An item's call raised StopIteration, which extend took for the
                    # end of map, and dropped: that item fails with a StopIteration
                    # all the same (its value is lost), and the items after it go on.
                    raise StopIteration(f"{fn_name(fn)} raised StopIteration")
                break
            for call in rest:
                if flagged and me.cancelled:
                    stop = True
                    break
                if fn is None:
                    append(call[0](*call[1], **call[2]))
                else:
                    append(fn(*call) if star else fn(call))
                if max_memory is not None:
                    # Reading /proc costs ~10 us: at most every 5 ms, and after the last item.
                    now = time.perf_counter()
                    if now - last_check > 0.005 or len(values) == n:
                        last_check = now
                        if _rss() > max_memory:
                            from ..backends.process.worker import retire_after_task

                            retire_after_task()
                            stop = True
                            break
            break
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = dumps_exception(exc) if remote else exc
            append(None)
            del exc
    if remote and type(calls) is list:
        # The worker keeps its task's arguments until its next task: empty the
        # chunk (our own copy in this process), so that the items' arguments are
        # freed now, as the caller's are (a range holds nothing per item).
        calls.clear()
    return values, errors, time.perf_counter() - start


class _ItemTask(CurrentTask):
    """``pt.current_task()`` of a submitted task that runs in a thread Pool's chunk.

    Cancelled when the task is (its own ``cancel()``) or when its chunk is (the
    chunk's timeout, ``terminate()``: they reach the chunk, the backend's task).
    While it runs, the chunk's slot points at it, so that the backend's wake-up
    of the chunk wakes this task's ``pt.sleep``; ``Pool._cancel_task`` finds it
    there for the task's own cancel.
    """

    __slots__ = ("_chunk",)

    def __init__(self, name: str, task: Task[Any], chunk: Task[Any] | None) -> None:
        # CurrentTask.__init__'s three slots, set here: one call less per task.
        self.name = name
        self._task = task
        self._waker = None
        self._chunk = chunk

    @property
    def cancelled(self) -> bool:
        task, chunk = self._task, self._chunk
        return (task is not None and task._cancel_requested) or (
            chunk is not None and chunk._cancel_requested
        )


def _run_items(items: list[Item]) -> tuple[list[Any], dict[int, Any] | None, float]:
    """Run a chunk of submitted tasks on a thread of this process (the thread backend).

    A task turns running only when this thread reaches it: until then ``cancel()``
    stops it for good (it is skipped here), and once it runs ``cancel()`` flags it
    (``pt.current_task()`` is the task's :class:`_ItemTask`): its cancellation
    points raise :class:`Cancelled`, which fails that task alone. The format of
    the result is :func:`_run_chunk`'s; fewer values than items means the chunk
    was cancelled or timed out, and the pool re-queues the rest.
    """
    values: list[Any] = []
    errors: dict[int, Any] | None = None
    me = current_task()
    chunk = me._task
    start = time.perf_counter()
    try:
        for it in items:
            if chunk is not None and chunk._cancel_requested:
                break
            task = it.task
            if task is not None:
                if not task._set_running():
                    if errors is None:
                        errors = {}
                    errors[len(values)] = Cancelled(
                        f"task {task.name!r} was cancelled before it started"
                    )
                    values.append(None)
                    continue
                task._mark_started()
                info = _ItemTask(task.name, task, chunk)
                if chunk is not None:
                    # Before the function runs, as ThreadBackend._run does: a cancel
                    # of the chunk either wakes this info or came before its first
                    # look at the flags.
                    chunk._slot = info
                _set_current(info)
            elif chunk is not None:
                chunk._slot = me  # a map's item run alone: the chunk's own flag
                _set_current(me)
            try:
                values.append(it.fn(*it.args, **it.kwargs))
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                if errors is None:
                    errors = {}
                errors[len(values)] = exc
                values.append(None)
                del exc
    finally:
        if chunk is not None:
            chunk._slot = me
        _set_current(me if chunk is not None else None)
    return values, errors, time.perf_counter() - start
