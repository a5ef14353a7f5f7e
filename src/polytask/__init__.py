"""polytask: one toolkit for multitasking.

Threads, processes, programs and clusters behind one small API, where nothing
outlives its owner, every failure is reported and nothing hangs.

    import polytask as pt

    with pt.TaskGroup(backend="process") as g:
        left = g.spawn(work, 1)
        right = g.spawn(work, 2)
    print(left.result(), right.result())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Public name -> the private module that defines it. Imported on first use, so
# that `import polytask` (and so every `polytask` command) starts fast and a
# user of threads never pays for shared memory, asyncio or the supervisor.
_LAZY: dict[str, str] = {
    "BackendUnavailable": "._errors",
    "background": "._task",
    "Barrier": "._sync",
    "AsyncResult": "._pool",
    "BoundedSemaphore": "._sync",
    "Cancelled": "._errors",
    "Channel": "._channel",
    "ChannelClosed": "._errors",
    "CommandFailed": "._errors",
    "CommandResult": "._commands",
    "CommandTimeout": "._errors",
    "checkpoint": "._task",
    "Condition": "._sync",
    "current_task": "._task",
    "CurrentTask": "._task",
    "debug": ".",
    "DEVNULL": "._commands",
    "Event": "._sync",
    "Executor": "._pool",
    "Fifo": "._fifo",
    "FileLock": "._sync",
    "INHERIT": "._commands",
    "Lock": "._sync",
    "MapIterator": "._pool",
    "OutputLine": "._commands",
    "pipeline": "._pipeline",
    "PolytaskError": "._errors",
    "Pool": "._pool",
    "PotentialDeadlock": "._errors",
    "ProcessStatus": "._supervisor",
    "ProcfileError": "._errors",
    "ProgramNotFound": "._errors",
    "RemoteError": "._errors",
    "RLock": "._sync",
    "run": "._commands",
    "run_many": "._commands",
    "Semaphore": "._sync",
    "SerializationError": "._errors",
    "SharedArray": "._shm",
    "sleep": "._task",
    "spawn": "._task",
    "stage": "._pipeline",
    "Stream": "._commands",
    "stream": "._commands",
    "Supervisor": "._supervisor",
    "Task": "._task",
    "TaskGroup": "._group",
    "TaskTimeout": "._errors",
    "WorkerCrashed": "._errors",
}

__all__ = (
    "DEVNULL",
    "INHERIT",
    "AsyncResult",
    "BackendUnavailable",
    "Barrier",
    "BoundedSemaphore",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "Condition",
    "CurrentTask",
    "Event",
    "Executor",
    "Fifo",
    "FileLock",
    "Lock",
    "MapIterator",
    "OutputLine",
    "PolytaskError",
    "Pool",
    "PotentialDeadlock",
    "ProcessStatus",
    "ProcfileError",
    "ProgramNotFound",
    "RLock",
    "RemoteError",
    "Semaphore",
    "SerializationError",
    "SharedArray",
    "Stream",
    "Supervisor",
    "Task",
    "TaskGroup",
    "TaskTimeout",
    "WorkerCrashed",
    "background",
    "checkpoint",
    "current_task",
    "debug",
    "pipeline",
    "run",
    "run_many",
    "sleep",
    "spawn",
    "stage",
    "stream",
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polytask' has no attribute {name!r}")
    from importlib import import_module

    if module == ".":
        value: Any = import_module(f"{__name__}.{name}")
    else:
        value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see: the real imports
    from . import debug as debug
    from ._channel import Channel as Channel
    from ._commands import DEVNULL as DEVNULL
    from ._commands import INHERIT as INHERIT
    from ._commands import CommandResult as CommandResult
    from ._commands import OutputLine as OutputLine
    from ._commands import Stream as Stream
    from ._commands import run as run
    from ._commands import run_many as run_many
    from ._commands import stream as stream
    from ._errors import BackendUnavailable as BackendUnavailable
    from ._errors import Cancelled as Cancelled
    from ._errors import ChannelClosed as ChannelClosed
    from ._errors import CommandFailed as CommandFailed
    from ._errors import CommandTimeout as CommandTimeout
    from ._errors import PolytaskError as PolytaskError
    from ._errors import PotentialDeadlock as PotentialDeadlock
    from ._errors import ProcfileError as ProcfileError
    from ._errors import ProgramNotFound as ProgramNotFound
    from ._errors import RemoteError as RemoteError
    from ._errors import SerializationError as SerializationError
    from ._errors import TaskTimeout as TaskTimeout
    from ._errors import WorkerCrashed as WorkerCrashed
    from ._fifo import Fifo as Fifo
    from ._group import TaskGroup as TaskGroup
    from ._pipeline import pipeline as pipeline
    from ._pipeline import stage as stage
    from ._pool import AsyncResult as AsyncResult
    from ._pool import Executor as Executor
    from ._pool import MapIterator as MapIterator
    from ._pool import Pool as Pool
    from ._shm import SharedArray as SharedArray
    from ._supervisor import ProcessStatus as ProcessStatus
    from ._supervisor import Supervisor as Supervisor
    from ._sync import Barrier as Barrier
    from ._sync import BoundedSemaphore as BoundedSemaphore
    from ._sync import Condition as Condition
    from ._sync import Event as Event
    from ._sync import FileLock as FileLock
    from ._sync import Lock as Lock
    from ._sync import RLock as RLock
    from ._sync import Semaphore as Semaphore
    from ._task import CurrentTask as CurrentTask
    from ._task import Task as Task
    from ._task import background as background
    from ._task import checkpoint as checkpoint
    from ._task import current_task as current_task
    from ._task import sleep as sleep
    from ._task import spawn as spawn
