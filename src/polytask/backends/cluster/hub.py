"""The state behind cluster primitives: one asyncio object per primitive, no I/O.

A :class:`SyncHub` lives in one event loop on the cluster (Dask: the
scheduler's, through a scheduler plugin; Ray: an async actor's) and holds
every Lock, RLock, Event, Condition, Semaphore, BoundedSemaphore, Barrier and
Channel by key. Callers anywhere send ``call(key, kind, init, op, args)`` and
get back ``["ok", value]`` or ``[error type name, message]`` (plain lists,
so any transport can carry them). Channel items arrive already pickled.

Waits are "until a predicate holds or the timeout passes": every change to an
object wakes its waiters, which re-check; one loop, so no locking is needed.

Two operations are the hub's own, not an object's: ``forget`` drops the
object under ``key`` (its creator dropped its last handle; see
``_cluster_sync``), ``count`` says how many objects the hub holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

#: The name of the Dask scheduler handler that serves the hub (see ``plugin``).
HANDLER = "polytask_sync"

__all__ = ["HANDLER", "SyncHub"]

Reply = list[Any]


class _HubError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Obj:
    def __init__(self) -> None:
        self._ev = asyncio.Event()

    def _changed(self) -> None:
        self._ev.set()
        self._ev = asyncio.Event()

    async def _until(self, pred: Any, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not pred():
            ev = self._ev
            if deadline is None:
                await ev.wait()
                continue
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(ev.wait(), left)
            except TimeoutError:
                return bool(pred())
        return True


class _Lock(_Obj):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.owner: str | None = None
        self.count = 0

    async def acquire(self, owner: str, timeout: float | None) -> bool:
        if self.reentrant and self.owner == owner:
            self.count += 1
            return True
        if not await self._until(lambda: self.owner is None, timeout):
            return False
        self.owner, self.count = owner, 1
        return True

    async def release(self, owner: str) -> None:
        if self.owner is None:
            raise _HubError("RuntimeError", "release of an unlocked lock")
        if self.reentrant and self.owner != owner:
            raise _HubError("RuntimeError", "cannot release an RLock held by another owner")
        self.count -= 1
        if self.count <= 0:
            self.owner, self.count = None, 0
            self._changed()

    async def locked(self) -> bool:
        return self.owner is not None

    def held_by(self, owner: str) -> bool:
        # A plain Lock has no owner identity (anyone may release it): held is enough.
        return self.owner == owner if self.reentrant else self.owner is not None


class _Event(_Obj):
    def __init__(self) -> None:
        super().__init__()
        self.flag = False

    async def set(self) -> None:
        self.flag = True
        self._changed()

    async def clear(self) -> None:
        self.flag = False

    async def is_set(self) -> bool:
        return self.flag

    async def wait(self, timeout: float | None) -> bool:
        return await self._until(lambda: self.flag, timeout)


class _Semaphore(_Obj):
    def __init__(self, value: int, bounded: bool) -> None:
        super().__init__()
        self.value = value
        self.bound = value if bounded else None

    async def acquire(self, timeout: float | None) -> bool:
        if not await self._until(lambda: self.value > 0, timeout):
            return False
        self.value -= 1
        return True

    async def release(self, n: int) -> None:
        if n < 1:
            raise _HubError("ValueError", f"release(n) needs n >= 1, got {n}")
        if self.bound is not None and self.value + n > self.bound:
            raise _HubError("ValueError", "BoundedSemaphore released too many times")
        self.value += n
        self._changed()


class _Condition(_Obj):
    def __init__(self, hub: SyncHub, lock_key: str, lock_kind: str) -> None:
        super().__init__()
        self.lock: _Lock = hub.get(lock_key, lock_kind, 0)
        self.waiters: deque[asyncio.Future[bool]] = deque()

    def _check(self, owner: str, what: str) -> None:
        if not self.lock.held_by(owner):
            raise _HubError("RuntimeError", f"cannot {what} on un-acquired lock")

    async def wait(self, owner: str, timeout: float | None) -> bool:
        self._check(owner, "wait")
        lock = self.lock
        saved = lock.count
        lock.owner, lock.count = None, 0
        lock._changed()
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            notified = bool(await asyncio.wait_for(asyncio.shield(fut), timeout))
        except TimeoutError:
            notified = False
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)
            # Like threading.Condition: get the lock back, however long it takes.
            await lock._until(lambda: lock.owner is None, None)
            lock.owner, lock.count = owner, saved
        return notified

    async def notify(self, owner: str, n: int) -> None:
        self._check(owner, "notify")
        while self.waiters and n > 0:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                n -= 1


class _Barrier(_Obj):
    def __init__(self, parties: int) -> None:
        super().__init__()
        self.parties = parties
        self.count = 0
        self.gen = 0
        self.broken = False
        self.broken_gen = -1

    def _break(self) -> None:
        self.broken = True
        self.broken_gen = self.gen
        self.count = 0
        self._changed()

    async def wait(self, timeout: float | None) -> int:
        if self.broken:
            raise _HubError("BrokenBarrierError", "the barrier is broken")
        gen, index = self.gen, self.count
        self.count += 1
        if self.count == self.parties:
            self.count = 0
            self.gen += 1
            self._changed()
            return index
        ok = await self._until(lambda: self.gen != gen or self.broken, timeout)
        if not ok and self.gen == gen and not self.broken:
            self._break()
        if self.broken_gen == gen or (self.gen == gen and self.broken):
            raise _HubError("BrokenBarrierError", "the barrier is broken")
        return index

    async def reset(self) -> None:
        if self.count > 0:
            self.broken_gen = self.gen
            self.gen += 1
            self.count = 0
        self.broken = False
        self._changed()

    async def abort(self) -> None:
        self._break()

    async def state(self) -> list[Any]:
        return [self.parties, self.count, self.broken]


class _Channel(_Obj):
    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.items: deque[bytes] = deque()
        self.closed = False

    async def put(self, item: bytes, timeout: float | None) -> str:
        def room() -> bool:
            return self.closed or not self.maxsize or len(self.items) < self.maxsize

        if self.closed:
            return "closed"
        if not await self._until(room, timeout):
            return "full"
        if self.closed:
            return "closed"
        self.items.append(item)
        self._changed()
        return "ok"

    async def get(self, timeout: float | None) -> list[Any]:
        await self._until(lambda: self.items or self.closed, timeout)
        if self.items:
            item = self.items.popleft()
            self._changed()
            return ["ok", item]
        return ["closed" if self.closed else "empty", None]

    async def close(self) -> None:
        self.closed = True
        self._changed()

    async def is_closed(self) -> bool:
        return self.closed

    async def size(self) -> int:
        return len(self.items)


class SyncHub:
    """Every primitive of one cluster, by key (see the module docstring)."""

    def __init__(self) -> None:
        self._objs: dict[str, Any] = {}
        # Keys forgotten (their creator dropped them): a copy still in use somewhere
        # gets a clear error, not a new empty object (an unlocked lock, a reopened
        # channel). Keys are unique per primitive, so a key is never reused.
        self._forgotten: set[str] = set()

    def get(self, key: str, kind: str, init: Any) -> Any:
        obj = self._objs.get(key)
        if obj is None:
            if key in self._forgotten:
                raise _HubError(
                    "RuntimeError",
                    f"this cluster {kind} ({key}) was dropped: the process that created it "
                    "let go of its last handle. Keep a reference to it there for as long "
                    "as tasks use it",
                )
            if kind in ("Lock", "RLock"):
                obj = _Lock(kind == "RLock")
            elif kind == "Event":
                obj = _Event()
            elif kind in ("Semaphore", "BoundedSemaphore"):
                obj = _Semaphore(int(init), kind == "BoundedSemaphore")
            elif kind == "Condition":
                obj = _Condition(self, init[0], init[1])
            elif kind == "Barrier":
                obj = _Barrier(int(init))
            elif kind == "Channel":
                obj = _Channel(int(init))
            else:
                raise _HubError("ValueError", f"unknown primitive kind {kind!r}")
            self._objs[key] = obj
        return obj

    async def call(self, key: str, kind: str, init: Any, op: str, args: list[Any]) -> Reply:
        if op == "forget":
            self.forget(key)
            return ["ok", None]
        if op == "count":
            return ["ok", len(self._objs)]
        try:
            obj = self.get(key, kind, init)
            method = getattr(obj, op, None)
            if method is None or op.startswith("_"):
                raise _HubError("ValueError", f"{kind} has no operation {op!r}")
            return ["ok", await method(*args)]
        except _HubError as exc:
            return [exc.kind, str(exc)]

    def forget(self, key: str) -> None:
        """Drop the object under ``key``, and what it holds (a channel's unread items)."""
        self._objs.pop(key, None)
        self._forgotten.add(key)
