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

# --- channels and synchronisation (issue 5)
from . import debug as debug
from ._channel import Channel as Channel

# --- commands (issue 4)
from ._commands import CommandResult as CommandResult
from ._commands import OutputLine as OutputLine
from ._commands import Stream as Stream
from ._commands import run as run
from ._commands import run_many as run_many
from ._commands import stream as stream

# --- core (issue 2)
from ._errors import BackendUnavailable as BackendUnavailable
from ._errors import Cancelled as Cancelled
from ._errors import ChannelClosed as ChannelClosed
from ._errors import CommandFailed as CommandFailed
from ._errors import CommandTimeout as CommandTimeout
from ._errors import PolytaskError as PolytaskError
from ._errors import PotentialDeadlock as PotentialDeadlock

# --- supervisor (issue 6)
from ._errors import ProcfileError as ProcfileError
from ._errors import ProgramNotFound as ProgramNotFound
from ._errors import RemoteError as RemoteError
from ._errors import SerializationError as SerializationError
from ._errors import TaskTimeout as TaskTimeout
from ._errors import WorkerCrashed as WorkerCrashed
from ._group import TaskGroup as TaskGroup
from ._pipeline import pipeline as pipeline
from ._pipeline import stage as stage

# --- pool (issue 3)
from ._pool import Executor as Executor
from ._pool import Pool as Pool
from ._shm import SharedArray as SharedArray
from ._supervisor import ProcessStatus as ProcessStatus
from ._supervisor import Supervisor as Supervisor
from ._sync import Barrier as Barrier
from ._sync import BoundedSemaphore as BoundedSemaphore
from ._sync import Condition as Condition
from ._sync import Event as Event
from ._sync import Fifo as Fifo
from ._sync import FileLock as FileLock
from ._sync import Lock as Lock
from ._sync import RLock as RLock
from ._sync import Semaphore as Semaphore
from ._task import CurrentTask as CurrentTask
from ._task import Task as Task
from ._task import background as background
from ._task import current_task as current_task
from ._task import spawn as spawn

__all__ = (
    "BackendUnavailable",
    # channels and synchronisation (issue 5)
    "Barrier",
    "BoundedSemaphore",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "CommandFailed",
    # commands (issue 4)
    "CommandResult",
    "CommandTimeout",
    "Condition",
    "CurrentTask",
    "Event",
    # pool (issue 3)
    "Executor",
    "Fifo",
    "FileLock",
    "Lock",
    "OutputLine",
    "PolytaskError",
    "Pool",
    "PotentialDeadlock",
    # supervisor (issue 6)
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
    "current_task",
    "debug",
    "pipeline",
    "run",
    "run_many",
    "spawn",
    "stage",
    "stream",
)
