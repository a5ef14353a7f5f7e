"""Lock, Event, Semaphore and Channel on a cluster: what Dask and Ray offer, behind pt's API.

::

    Dask                                         Ray
    ────                                         ───
    task ─ Lock/Semaphore ─> distributed.Semaphore (leases, scheduler)
    task ─ Event ─────────> distributed.Event     task ─ any primitive ─> one async "hub" actor
    task ─ Channel ───────> distributed.Queue     (named "polytask-sync", num_cpus=0), holding
                            + distributed.Variable   asyncio Lock / Event / Semaphore / Queue
                              (the closed flag)      objects by key

Every primitive pickles by name (Dask) or by actor handle and key (Ray), so it
can be passed to tasks as an argument; each side talks to the scheduler or the
actor itself. Waits take ``timeout=``; a channel ``get`` waits in slices so a
close made elsewhere is seen. A Dask lease whose holder died is freed after
``distributed.scheduler.locks.lease-timeout`` (30 s by default).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
import uuid
from typing import Any

from .._channel import Channel
from .._errors import ChannelClosed
from .._sync import Event, Lock, Semaphore

__all__ = ["dask_primitive", "ray_primitive"]

#: Seconds a channel ``get`` waits on the engine before it re-checks the closed flag.
_SLICE = 0.5


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
    return float(timeout)


def _acquire_timeout(blocking: bool, timeout: float | None) -> float | None:
    timeout = _check_timeout(timeout)
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    return timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# --------------------------------------------------------------------------- Dask


def _distributed() -> Any:
    import distributed

    return distributed


def _ray() -> Any:
    import ray

    return ray


def _dask_sem(name: str, leases: int, client: Any) -> Any:
    distributed = _distributed()

    if client is None:
        return distributed.Semaphore(max_leases=leases, name=name)
    return distributed.Semaphore(
        max_leases=leases, name=name, scheduler_rpc=client.scheduler, loop=client.loop
    )


class _DaskLeases:
    """A ``distributed.Semaphore`` with pt's ``acquire(blocking, timeout)`` (Lock: 1 lease)."""

    name: str | None
    _value: int | None

    def _setup(self, name: str | None, value: int, client: Any) -> None:
        self.name = name or f"polytask-{type(self).__name__[5:].lower()}-{uuid.uuid4().hex}"
        self._sem = _dask_sem(self.name, value, client)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._sem.acquire(timeout=_acquire_timeout(blocking, timeout)))

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._sem.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> Any:
        return (_rebuild_dask, (type(self), self.name, self._value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__[5:]} backend='dask' name={self.name!r}>"


class _DaskSemaphore(_DaskLeases, Semaphore):
    def __init__(
        self, value: int = 1, *, name: str | None = None, client: Any = None, backend: str = "dask"
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"a dask Semaphore needs a value >= 1, got {value!r}")
        self._value = value
        self._setup(name, value, client)


class _DaskLock(_DaskLeases, Lock):
    """A lock: a ``distributed.Semaphore`` of one lease (what ``distributed.Lock`` is)."""

    def __init__(self, *, name: str | None = None, client: Any = None, backend: str = "dask"):
        self._value = None
        self._setup(name, 1, client)

    def release(self, n: int = 1) -> None:
        if n != 1:
            raise TypeError("Lock.release() takes no argument")
        _DaskLeases.release(self)

    def locked(self) -> bool:
        got = self._sem.acquire(timeout=0)
        if got:
            self._sem.release()
        return not got


def _rebuild_dask(cls: type[Any], name: str, value: int | None) -> Any:
    if value is None:
        return cls(name=name)
    return cls(value, name=name)


class _DaskEvent(Event):
    """A ``distributed.Event``."""

    def __init__(self, *, name: str | None = None, client: Any = None, backend: str = "dask"):
        distributed = _distributed()
        self.name = name or f"polytask-event-{uuid.uuid4().hex}"
        self._ev = distributed.Event(self.name, client=client)

    def set(self) -> None:
        self._ev.set()

    def clear(self) -> None:
        self._ev.clear()

    def is_set(self) -> bool:
        return bool(self._ev.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._ev.wait(_check_timeout(timeout)))

    def __reduce__(self) -> Any:
        return (_rebuild_dask, (_DaskEvent, self.name, None))


class _DaskChannel(Channel[Any]):
    """A ``distributed.Queue`` plus a ``distributed.Variable`` saying it is closed."""

    def __init__(
        self,
        maxsize: int = 0,
        *,
        backend: str = "dask",
        capacity: int | None = None,
        name: str | None = None,
        client: Any = None,
    ) -> None:
        distributed = _distributed()
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0, got {maxsize!r}")
        self.backend = "dask"
        self.maxsize = maxsize
        self.name = name or f"polytask-channel-{uuid.uuid4().hex}"
        self._q = distributed.Queue(self.name, client=client, maxsize=maxsize)
        self._closed_var = distributed.Variable(self.name + "-closed", client=client)
        self._closed_seen = False
        if name is None:  # a new channel (not one unpickled in a task)
            self._closed_var.set(False)
        _quiet_scheduler_timeouts()

    def __reduce__(self) -> Any:
        return (_rebuild_channel, (self.name, self.maxsize))

    @property
    def closed(self) -> bool:
        if not self._closed_seen:
            try:
                self._closed_seen = bool(self._closed_var.get(timeout=0))
            except Exception:  # not set yet: the Variable raises a timeout
                return False
        return self._closed_seen

    def close(self) -> None:
        self._closed_var.set(True)
        self._closed_seen = True

    def put(self, item: Any, timeout: float | None = None) -> None:
        timeout = _check_timeout(timeout)
        if self.closed:
            raise ChannelClosed(f"put() on closed channel {self.name!r}")
        try:
            self._q.put(item, timeout=timeout)
        except TimeoutError:
            raise queue.Full(f"channel {self.name!r} stayed full for {timeout} s") from None

    def get(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + _check_timeout(timeout)  # type: ignore[operator]
        while True:
            closed = self.closed  # read before the get: an item put before close is not lost
            left = _remaining(deadline)
            wait = _SLICE if left is None else min(_SLICE, left)
            if closed:
                wait = 0.0
            try:
                return self._q.get(timeout=wait if wait > 0 else 0.001)
            except TimeoutError:
                pass
            if closed:
                raise ChannelClosed(f"channel {self.name!r} is closed and drained")
            if deadline is not None and time.monotonic() >= deadline:
                raise queue.Empty(f"channel {self.name!r} stayed empty for {timeout} s")

    def __len__(self) -> int:
        return int(self._q.qsize())


def _rebuild_channel(name: str, maxsize: int) -> _DaskChannel:
    ch = object.__new__(_DaskChannel)
    ch.__init__(maxsize, name=name)  # type: ignore[misc]
    return ch


class _DropWaitTimeouts(logging.Filter):
    """Drop the scheduler's error log for a queue/variable wait that timed out (normal here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Exception while handling op" not in msg or not record.exc_info:
            return True
        return not isinstance(record.exc_info[1], TimeoutError)


_quiet_installed = False


def _quiet_scheduler_timeouts() -> None:
    global _quiet_installed
    if not _quiet_installed:
        _quiet_installed = True
        logging.getLogger("distributed.core").addFilter(_DropWaitTimeouts())


_DASK = {"Lock": _DaskLock, "Event": _DaskEvent, "Semaphore": _DaskSemaphore}


def dask_primitive(kind: str, client: Any, *args: Any, **kwargs: Any) -> Any:
    """Primitive ``kind`` on the cluster ``client`` talks to (for ``DaskBackend.primitive``)."""
    if kind == "Channel":
        return _DaskChannel(*args, client=client, **kwargs)
    cls = _DASK.get(kind)
    if cls is None:
        raise ValueError(
            f"backend 'dask' offers {sorted([*_DASK, 'Channel'])} as primitives, not {kind!r}"
        )
    return cls(*args, client=client, **kwargs)


def register_dask() -> None:
    """Make ``pt.Lock(backend="dask")`` etc. build these (on the default client)."""
    from .._channel import register_channel_backend
    from .._sync import register_primitive

    for kind, cls in _DASK.items():
        register_primitive(kind, "dask", cls)
    register_channel_backend("dask", _DaskChannel)


# --------------------------------------------------------------------------- Ray


class _Hub:
    """The Ray actor holding every primitive (asyncio objects, one event loop)."""

    def __init__(self) -> None:
        self._objs: dict[str, Any] = {}

    def _get(self, key: str, kind: str, init: int) -> Any:
        obj = self._objs.get(key)
        if obj is None:
            if kind == "Lock":
                obj = asyncio.Lock()
            elif kind == "Event":
                obj = asyncio.Event()
            elif kind == "Semaphore":
                obj = asyncio.Semaphore(init)
            else:
                obj = [asyncio.Queue(init), False]  # the queue, closed?
            self._objs[key] = obj
        return obj

    async def acquire(self, key: str, kind: str, init: int, timeout: float | None) -> bool:
        obj = self._get(key, kind, init)
        if timeout == 0.0:
            if obj.locked():
                return False
            await obj.acquire()
            return True
        try:
            await asyncio.wait_for(obj.acquire(), timeout)
        except TimeoutError:
            return False
        return True

    async def release(self, key: str, kind: str, init: int, n: int) -> None:
        obj = self._get(key, kind, init)
        for _ in range(n):
            obj.release()

    async def locked(self, key: str, kind: str, init: int) -> bool:
        return bool(self._get(key, kind, init).locked())

    async def event(self, key: str, op: str, timeout: float | None) -> bool:
        ev = self._get(key, "Event", 0)
        if op == "set":
            ev.set()
        elif op == "clear":
            ev.clear()
        elif op == "wait" and not ev.is_set():
            try:
                await asyncio.wait_for(ev.wait(), timeout)
            except TimeoutError:
                return False
        return bool(ev.is_set())

    async def put(self, key: str, maxsize: int, item: Any, timeout: float | None) -> str:
        ch = self._get(key, "Channel", maxsize)
        if ch[1]:
            return "closed"
        try:
            if timeout == 0.0:
                ch[0].put_nowait(item)
            else:
                await asyncio.wait_for(ch[0].put(item), timeout)
        except (TimeoutError, asyncio.QueueFull):
            return "full"
        return "ok"

    async def get(self, key: str, maxsize: int, timeout: float | None) -> tuple[str, Any]:
        ch = self._get(key, "Channel", maxsize)
        q: asyncio.Queue[Any] = ch[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not q.empty():
                return "ok", q.get_nowait()
            if ch[1]:
                return "closed", None
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                return "empty", None
            try:
                # In slices, so that a close() wakes every waiting getter soon.
                return "ok", await asyncio.wait_for(q.get(), left)
            except TimeoutError:
                pass

    async def channel(self, key: str, maxsize: int, op: str) -> int:
        ch = self._get(key, "Channel", maxsize)
        if op == "close":
            ch[1] = True
        return int(ch[0].qsize()) if op == "len" else int(ch[1])


_hub_cache: dict[str, Any] = {}


def _hub() -> Any:
    ray = _ray()
    job = ray.get_runtime_context().get_job_id()
    handle = _hub_cache.get(job)
    if handle is None:
        actor = ray.remote(num_cpus=0, max_concurrency=1000)(_Hub)
        handle = actor.options(
            name="polytask-sync", namespace="polytask", get_if_exists=True
        ).remote()
        _hub_cache.clear()
        _hub_cache[job] = handle
    return handle


def _call(method: Any, *args: Any) -> Any:
    return _ray().get(method.remote(*args))


class _RayPrim:
    """What every Ray primitive is: the hub's handle and a key."""

    _kind = ""
    name: str | None

    def _setup(self, name: str | None, init: int) -> None:
        self.name = name or f"polytask-{self._kind.lower()}-{uuid.uuid4().hex}"
        self._init = init
        self._hub = _hub()

    def __reduce__(self) -> Any:
        return (_rebuild_ray, (type(self), self.name, self._init, self._hub))

    def __repr__(self) -> str:
        return f"<{self._kind} backend='ray' name={self.name!r}>"


def _rebuild_ray(cls: type[Any], name: str, init: int, hub: Any) -> Any:
    obj = object.__new__(cls)
    obj.name, obj._init, obj._hub = name, init, hub
    if cls is _RayChannel:
        obj.backend, obj.maxsize = "ray", init
    return obj


class _RayLeases(_RayPrim):
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        t = _acquire_timeout(blocking, timeout)
        return bool(_call(self._hub.acquire, self.name, self._kind, self._init, t))

    def release(self, n: int = 1) -> None:
        try:
            _call(self._hub.release, self.name, self._kind, self._init, n)
        except Exception as exc:
            if isinstance(getattr(exc, "cause", None), (RuntimeError, ValueError)):
                raise RuntimeError(f"release() of {self!r}: {exc.cause}") from None  # type: ignore[attr-defined]
            raise

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _RaySemaphore(_RayLeases, Semaphore):
    _kind = "Semaphore"

    def __init__(self, value: int = 1, *, name: str | None = None, backend: str = "ray") -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"a Semaphore needs a value >= 0, got {value!r}")
        self._setup(name, value)


class _RayLock(_RayLeases, Lock):
    _kind = "Lock"

    def __init__(self, *, name: str | None = None, backend: str = "ray") -> None:
        self._setup(name, 1)

    def release(self, n: int = 1) -> None:
        if n != 1:
            raise TypeError("Lock.release() takes no argument")
        _RayLeases.release(self)

    def locked(self) -> bool:
        return bool(_call(self._hub.locked, self.name, self._kind, self._init))


class _RayEvent(_RayPrim, Event):
    _kind = "Event"

    def __init__(self, *, name: str | None = None, backend: str = "ray") -> None:
        self._setup(name, 0)

    def set(self) -> None:
        _call(self._hub.event, self.name, "set", None)

    def clear(self) -> None:
        _call(self._hub.event, self.name, "clear", None)

    def is_set(self) -> bool:
        return bool(_call(self._hub.event, self.name, "is_set", None))

    def wait(self, timeout: float | None = None) -> bool:
        return bool(_call(self._hub.event, self.name, "wait", _check_timeout(timeout)))


class _RayChannel(_RayPrim, Channel[Any]):
    _kind = "Channel"

    def __init__(
        self,
        maxsize: int = 0,
        *,
        backend: str = "ray",
        capacity: int | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0, got {maxsize!r}")
        self.backend = "ray"
        self.maxsize = maxsize
        self._setup(name, maxsize)

    def put(self, item: Any, timeout: float | None = None) -> None:
        t = _check_timeout(timeout)
        state = _call(self._hub.put, self.name, self._init, item, t)
        if state == "closed":
            raise ChannelClosed(f"put() on closed channel {self.name!r}")
        if state == "full":
            raise queue.Full(f"channel {self.name!r} stayed full for {timeout} s")

    def get(self, timeout: float | None = None) -> Any:
        state, item = _call(self._hub.get, self.name, self._init, _check_timeout(timeout))
        if state == "closed":
            raise ChannelClosed(f"channel {self.name!r} is closed and drained")
        if state == "empty":
            raise queue.Empty(f"channel {self.name!r} stayed empty for {timeout} s")
        return item

    def close(self) -> None:
        _call(self._hub.channel, self.name, self._init, "close")

    @property
    def closed(self) -> bool:
        return bool(_call(self._hub.channel, self.name, self._init, "closed"))

    def __len__(self) -> int:
        return int(_call(self._hub.channel, self.name, self._init, "len"))


_RAY = {"Lock": _RayLock, "Event": _RayEvent, "Semaphore": _RaySemaphore}


def ray_primitive(kind: str, *args: Any, **kwargs: Any) -> Any:
    """Primitive ``kind`` held by the hub actor (for ``RayBackend.primitive``)."""
    if kind == "Channel":
        return _RayChannel(*args, **kwargs)
    cls = _RAY.get(kind)
    if cls is None:
        raise ValueError(
            f"backend 'ray' offers {sorted([*_RAY, 'Channel'])} as primitives, not {kind!r}"
        )
    return cls(*args, **kwargs)


def register_ray() -> None:
    """Make ``pt.Lock(backend="ray")`` etc. build these."""
    from .._channel import register_channel_backend
    from .._sync import register_primitive

    for kind, cls in _RAY.items():
        register_primitive(kind, "ray", cls)
    register_channel_backend("ray", _RayChannel)
