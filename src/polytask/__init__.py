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
    "BackendUnavailable": "._core.errors",
    "background": "._spawn",
    "Barrier": "._core.primitives",
    "BoundedSemaphore": "._core.primitives",
    "Cancelled": "._core.errors",
    "Channel": "._core.channel",
    "ChannelClosed": "._core.errors",
    "ChannelEmpty": "._core.errors",
    "ChannelFull": "._core.errors",
    "CommandFailed": "._core.errors",
    "AsyncResult": "._pool",
    "CommandResult": "._commands",
    "CommandTimeout": "._core.errors",
    "checkpoint": "._core.task",
    "Condition": "._core.primitives",
    "current_task": "._core.task",
    "CurrentTask": "._core.task",
    "debug": ".",
    "DEVNULL": "._commands",
    "Event": "._core.primitives",
    "Executor": "._pool",
    "Fifo": "._ipc.fifo",
    "FileLock": "._ipc.filelock",
    "INHERIT": "._commands",
    "Lock": "._core.primitives",
    "MapIterator": "._pool",
    "OutputLine": "._commands",
    "pipeline": "._pipeline",
    "PolytaskError": "._core.errors",
    "Pool": "._pool",
    "PotentialDeadlock": "._core.errors",
    "ProcessStatus": "._supervisor",
    "ProcfileError": "._core.errors",
    "ProgramNotFound": "._core.errors",
    "RemoteError": "._core.errors",
    "RLock": "._core.primitives",
    "run": "._commands",
    "run_many": "._commands",
    "Semaphore": "._core.primitives",
    "SerializationError": "._core.errors",
    "SharedArray": "._ipc.shm",
    "sleep": "._core.task",
    "spawn": "._spawn",
    "stage": "._pipeline",
    "Stream": "._commands",
    "stream": "._commands",
    "Supervisor": "._supervisor",
    "Task": "._core.task",
    "TaskGroup": "._group",
    "TaskTimeout": "._core.errors",
    "WaitTimeout": "._core.errors",
    "WorkerCrashed": "._core.errors",
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
    "ChannelEmpty",
    "ChannelFull",
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
    "WaitTimeout",
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
    from ._commands import DEVNULL as DEVNULL
    from ._commands import INHERIT as INHERIT
    from ._commands import CommandResult as CommandResult
    from ._commands import OutputLine as OutputLine
    from ._commands import Stream as Stream
    from ._commands import run as run
    from ._commands import run_many as run_many
    from ._commands import stream as stream
    from ._core.channel import Channel as Channel
    from ._core.errors import BackendUnavailable as BackendUnavailable
    from ._core.errors import Cancelled as Cancelled
    from ._core.errors import ChannelClosed as ChannelClosed
    from ._core.errors import ChannelEmpty as ChannelEmpty
    from ._core.errors import ChannelFull as ChannelFull
    from ._core.errors import CommandFailed as CommandFailed
    from ._core.errors import CommandTimeout as CommandTimeout
    from ._core.errors import PolytaskError as PolytaskError
    from ._core.errors import PotentialDeadlock as PotentialDeadlock
    from ._core.errors import ProcfileError as ProcfileError
    from ._core.errors import ProgramNotFound as ProgramNotFound
    from ._core.errors import RemoteError as RemoteError
    from ._core.errors import SerializationError as SerializationError
    from ._core.errors import TaskTimeout as TaskTimeout
    from ._core.errors import WaitTimeout as WaitTimeout
    from ._core.errors import WorkerCrashed as WorkerCrashed
    from ._core.primitives import Barrier as Barrier
    from ._core.primitives import BoundedSemaphore as BoundedSemaphore
    from ._core.primitives import Condition as Condition
    from ._core.primitives import Event as Event
    from ._core.primitives import Lock as Lock
    from ._core.primitives import RLock as RLock
    from ._core.primitives import Semaphore as Semaphore
    from ._core.task import CurrentTask as CurrentTask
    from ._core.task import Task as Task
    from ._core.task import checkpoint as checkpoint
    from ._core.task import current_task as current_task
    from ._core.task import sleep as sleep
    from ._group import TaskGroup as TaskGroup
    from ._ipc.fifo import Fifo as Fifo
    from ._ipc.filelock import FileLock as FileLock
    from ._ipc.shm import SharedArray as SharedArray
    from ._pipeline import pipeline as pipeline
    from ._pipeline import stage as stage
    from ._pool import AsyncResult as AsyncResult
    from ._pool import Executor as Executor
    from ._pool import MapIterator as MapIterator
    from ._pool import Pool as Pool
    from ._spawn import background as background
    from ._spawn import spawn as spawn
    from ._supervisor import ProcessStatus as ProcessStatus
    from ._supervisor import Supervisor as Supervisor
