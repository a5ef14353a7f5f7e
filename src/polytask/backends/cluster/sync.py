"""Lock, RLock, Event, Condition, Semaphore, Barrier and Channel on a cluster.

::

    caller / task anywhere on the cluster              one place on the cluster
    ─────────────────────────────────────              ────────────────────────
    pt.Lock(backend="dask").acquire(timeout=1)
      └─ link.call(key, kind, init, op, args) ──────> Dask: a handler on the scheduler
                                                        (scheduler plugin "polytask-sync")
                                                      Ray: the async actor "polytask-sync"
                                                        (namespace "polytask", num_cpus=0)
                                                        └─ SyncHub (_hub.py): asyncio state
      <─ ["ok", value] | [error type, message] ──────┘

Every primitive is a key in the hub, so it pickles as (link, key) and works
from any task of the cluster, and from the caller. Channel items travel
pickled. Ownership (RLock, Condition) is by host, process and thread.

Lifetime: the process that creates a primitive owns its hub object. Its
handles there share one :class:`_Owner` token (a copy unpickled back into the
creator gets the same token); when the last of them is dropped, the token's
finalizer tells the hub to ``forget`` the key, so a long-lived scheduler or
actor does not keep every Lock, Event or Channel (and a closed channel's unread
items) ever made. Copies in other processes (tasks on workers) never forget,
and a primitive made inside a task (which may return it) is never forgotten.
A task holds a stake too: pickling a primitive into a task's call pins the
token until that task ends, so ``spawn(work, pt.Event(backend="dask"))`` does
not lose the event while ``work`` runs even if the caller keeps no handle.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from threading import BrokenBarrierError
from typing import Any

from ..._core.channel import Channel, check_maxsize
from ..._core.errors import ChannelClosed, ChannelEmpty, ChannelFull
from ..._core.primitives import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
    check_value,
)
from ..._core.timeouts import acquire_timeout, check_timeout
from ..._ipc.codec import dumps
from .hub import HANDLER, SyncHub

__all__ = ["HANDLER", "DaskLink", "RayLink", "make_cluster_primitive", "pinning"]

_HOST = socket.gethostname()


def _owner() -> str:
    return f"{_HOST}:{os.getpid()}:{threading.get_ident()}"


_ERRORS: dict[str, type[Exception]] = {
    "RuntimeError": RuntimeError,
    "ValueError": ValueError,
    "BrokenBarrierError": BrokenBarrierError,
}


# --------------------------------------------------------------------------- transports


class DaskLink:
    """Calls the hub on the Dask scheduler (a handler added by a scheduler plugin)."""

    engine = "dask"

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def __reduce__(self) -> Any:
        return (DaskLink, ())  # on a worker: the worker's client

    def _get_client(self) -> Any:
        if self._client is None:
            # The shared dask backend's client: the default client, a worker's own,
            # or else a LocalCluster polytask starts (as pt.spawn(backend="dask") does).
            from .. import get_backend

            self._client = get_backend("dask").client  # type: ignore[attr-defined]
        return self._client

    def setup(self) -> None:
        client = self._get_client()
        if not client.run_on_scheduler(_has_hub):
            from .plugin import HubPlugin

            client.register_plugin(HubPlugin(), name="polytask-sync")

    def call(self, key: str, kind: str, init: Any, op: str, args: list[Any]) -> Any:
        client = self._get_client()
        handler = getattr(client.scheduler, HANDLER)
        reply = client.sync(handler, pkey=key, pkind=kind, pinit=init, action=op, pargs=args)
        return _unwrap(reply)

    def on_worker(self) -> bool:
        """True inside a task on a Dask worker."""
        try:
            import distributed

            distributed.get_worker()
        except (ImportError, ValueError):
            return False
        return True

    def forget(self, key: str) -> None:
        """Tell the hub to drop ``key``, without waiting (called from a finalizer)."""
        client = self._client
        if client is None or client.status in ("closing", "closed"):
            return
        handler = getattr(client.scheduler, HANDLER)

        async def send() -> None:
            try:
                await handler(pkey=key, pkind="", pinit=None, action="forget", pargs=[])
            except Exception:  # the scheduler went away: so did the object
                pass

        client.loop.add_callback(send)


def _has_hub(dask_scheduler: Any = None) -> bool:
    return HANDLER in dask_scheduler.handlers


class _RayHub:
    """The Ray actor around a :class:`SyncHub`."""

    def __init__(self) -> None:
        self._hub = SyncHub()

    async def call(self, key: str, kind: str, init: Any, op: str, args: list[Any]) -> Any:
        return await self._hub.call(key, kind, init, op, args)


#: This process's hub handle, by Ray session and job, and the handle's pickled form.
_ray_handles: dict[tuple[str, str], tuple[Any, bytes]] = {}


def _ray_job() -> tuple[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    # The session too: a later local Ray in this process reuses the job ids.
    return (ctx.get_session_name(), ctx.get_job_id())


def _remember_hub(
    job: tuple[str, str], handle: Any, blob: bytes | None = None
) -> tuple[Any, bytes]:
    """Keep ``handle`` (and its pickle) as this process's hub for ``job``; the entry.

    Returned, not read back: another thread may replace the entry meanwhile."""
    entry = (handle, pickle.dumps(handle) if blob is None else blob)
    _ray_handles.clear()
    _ray_handles[job] = entry
    return entry


def _ray_link(job: tuple[str, str], blob: bytes) -> RayLink:
    """Unpickle a :class:`RayLink`: the handle this process already has for the job,
    else the pickled one. Unpickling an actor handle fetches its class from Ray's GCS,
    which the creating process never needs to do.

    A link pickled in another Ray session (this process's Ray was shut down and
    started again since) raises: its hub, and the object's state, went with that
    session (Ray failed on its handle with an AssertionError from its insides)."""
    import ray

    if not ray.is_initialized():
        from .. import get_backend

        get_backend("ray")
    _check_session(job)
    known = _ray_handles.get(job)
    if known is not None:
        return RayLink(known[0], job)
    handle = pickle.loads(blob)
    _remember_hub(job, handle, blob)
    return RayLink(handle, job)


def _check_session(job: tuple[str, str]) -> None:
    """Raise if ``job`` (the session and job of a hub handle) is not of the Ray this
    process is connected to now."""
    import ray

    now = _ray_job()[0] if ray.is_initialized() else None
    if job[0] != now:
        raise RuntimeError(
            f"this polytask primitive was made in Ray session {job[0]!r}, not in this "
            f"process's Ray now ({now!r}): a Ray shut down (ray.shutdown()) keeps none "
            "of its objects. Make a new one in this session."
        )


class RayLink:
    """Calls the hub actor (one per Ray job, created on first use)."""

    engine = "ray"

    def __init__(self, handle: Any = None, job: tuple[str, str] | None = None) -> None:
        self._handle = handle
        self._job = job  # the Ray session and job of ``handle``

    def __reduce__(self) -> Any:
        self._get_handle()
        from ray.util.client import ray as client

        if client.is_connected():  # type: ignore[no-untyped-call]
            # A Ray Client's actor handle does not unpickle in a worker: the worker
            # finds the hub by its name instead.
            return (RayLink, (None,))
        job = _ray_job()
        known = _ray_handles.get(job)
        if known is None:
            known = _remember_hub(job, self._handle)
        blob = known[1] if known[0] is self._handle else pickle.dumps(self._handle)
        return (_ray_link, (job, blob))

    def _get_handle(self) -> Any:
        if self._handle is not None:
            if self._job is not None:
                # A handle of an ended session: calling it failed with Ray's "Can't
                # find actor", pickling it aborted the process (a failed check in
                # Ray's C++ core), and remembering it gave new primitives a dead hub.
                _check_session(self._job)
            return self._handle
        import ray

        if not ray.is_initialized():
            # Let polytask start (and guard) the local Ray rather than Ray's auto-init.
            from .. import get_backend

            get_backend("ray")
        job = _ray_job()
        known = _ray_handles.get(job)
        if known is None:
            actor = ray.remote(_RayHub).options(
                name="polytask-sync",
                namespace="polytask",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=10_000,
            )
            known = _remember_hub(job, actor.remote())
        self._handle, self._job = known[0], job
        return self._handle

    def setup(self) -> None:
        self._get_handle()

    def call(self, key: str, kind: str, init: Any, op: str, args: list[Any]) -> Any:
        import ray

        ref = self._get_handle().call.remote(key, kind, init, op, args)
        return _unwrap(ray.get(ref))

    def on_worker(self) -> bool:
        """True inside a task on a Ray worker."""
        import ray

        return bool(ray.get_runtime_context().worker.mode == ray.WORKER_MODE)

    def forget(self, key: str) -> None:
        """Tell the hub to drop ``key``, without waiting (called from a finalizer)."""
        import ray

        if self._handle is None or not ray.is_initialized():
            return
        if self._job is not None and self._job[0] != _ray_job()[0]:
            return  # its session's hub ended with it
        self._handle.call.remote(key, "", None, "forget", [])


def _unwrap(reply: Any) -> Any:
    status, value = reply
    if status == "ok":
        return value
    raise _ERRORS.get(status, RuntimeError)(value)


# --------------------------------------------------------------------------- lifetime


class _Owner:
    """The creating process's stake in one hub object (see the module docstring)."""

    __slots__ = ("__weakref__",)


#: key -> the token shared by this process's handles, for keys this process created.
_owners: weakref.WeakValueDictionary[str, _Owner] = weakref.WeakValueDictionary()
_pins = threading.local()


#: Keys to forget, sent by one thread. A finalizer runs wherever the garbage
#: collector does, maybe inside the engine's own code while it holds its locks:
#: SimpleQueue.put is the one thing safe to do there (it is reentrant).
_to_forget: queue.SimpleQueue[tuple[Any, str]] = queue.SimpleQueue()
_forgetter_pid = 0
_forgetter_lock = threading.Lock()


def _forget(link: Any, key: str, pid: int) -> None:
    if os.getpid() == pid:  # not a forked child dropping its inherited copy
        _to_forget.put((link, key))


def _forget_loop() -> None:
    while True:
        link, key = _to_forget.get()
        try:
            link.forget(key)
        except Exception:  # pragma: no cover - the engine is going away
            pass
        del link


def _start_forgetter() -> None:
    global _forgetter_pid
    if _forgetter_pid == os.getpid():
        return
    with _forgetter_lock:
        if _forgetter_pid != os.getpid():  # first use here, or a forked child
            threading.Thread(target=_forget_loop, name="polytask-forget", daemon=True).start()
            _forgetter_pid = os.getpid()


def _own(link: Any, key: str) -> _Owner:
    _start_forgetter()
    owner = _Owner()
    _owners[key] = owner
    # Not at exit: the engine may be gone by then, and so with it the hub.
    weakref.finalize(owner, _forget, link, key, os.getpid()).atexit = False
    return owner


@contextmanager
def pinning() -> Iterator[list[Any]]:
    """Collect the owner tokens of the primitives pickled in this block (a task's
    call): the caller keeps the list until the task ends."""
    pins: list[Any] = []
    outer = getattr(_pins, "pins", None)
    _pins.pins = pins
    try:
        yield pins
    finally:
        _pins.pins = outer
        if outer is not None:
            outer.extend(pins)


def _pin(owner: _Owner | None) -> None:
    pins = getattr(_pins, "pins", None)
    if pins is not None and owner is not None:
        pins.append(owner)


# --------------------------------------------------------------------------- primitives


class _HubPrim:
    """What every cluster primitive is: a link to the hub and a key."""

    _hub_kind = ""
    _link: Any
    _key: str
    _init: Any
    _owner: _Owner | None

    def _setup(self, link: Any, init: Any, name: str | None, backend: str = "") -> None:
        if link is None:  # built as pt.Lock(backend="dask"): the default client / Ray job
            link = _default_link(backend)
        self._link = link
        self._init = init
        self._key = f"{name or 'polytask'}-{self._hub_kind}-{uuid.uuid4().hex}"
        self.name = name
        self.backend = link.engine
        link.setup()
        # Made inside a task, it is often sent back to the caller, whose copy must not
        # lose it when the task's goes: such primitives live as long as the cluster.
        self._owner = None if link.on_worker() else _own(link, self._key)

    def _call(self, op: str, *args: Any) -> Any:
        return self._link.call(self._key, self._hub_kind, self._init, op, list(args))

    def __reduce__(self) -> Any:
        _pin(self._owner)
        return (_rebuild, (type(self), self._link, self._key, self._init, self.name))

    def __repr__(self) -> str:
        return f"<{self._hub_kind} backend={self.backend!r} key={self._key!r}>"


def _rebuild(cls: type[Any], link: Any, key: str, init: Any, name: str | None) -> Any:
    obj = object.__new__(cls)
    obj._link, obj._key, obj._init, obj.name, obj.backend = link, key, init, name, link.engine
    obj._owner = _owners.get(key)  # back in its creator: one more handle on the same stake
    if cls is HubChannel:
        obj.maxsize = init
    return obj


class _LockOps(_HubPrim):
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._call("acquire", _owner(), acquire_timeout(blocking, timeout)))

    def release(self) -> None:
        self._call("release", _owner())

    def locked(self) -> bool:
        return bool(self._call("locked"))

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class HubLock(_LockOps, Lock):
    _hub_kind = "Lock"

    def __init__(self, *, name: str | None = None, link: Any = None, backend: str = "") -> None:
        self._setup(link, 0, name, backend)


class HubRLock(_LockOps, RLock):
    _hub_kind = "RLock"

    def __init__(self, *, name: str | None = None, link: Any = None, backend: str = "") -> None:
        self._setup(link, 0, name, backend)


class HubEvent(_HubPrim, Event):
    _hub_kind = "Event"

    def __init__(self, *, name: str | None = None, link: Any = None, backend: str = "") -> None:
        self._setup(link, 0, name, backend)

    def set(self) -> None:
        self._call("set")

    def clear(self) -> None:
        self._call("clear")

    def is_set(self) -> bool:
        return bool(self._call("is_set"))

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._call("wait", check_timeout(timeout)))


class HubCondition(_HubPrim, Condition):
    _hub_kind = "Condition"

    def __init__(
        self, lock: Any = None, *, name: str | None = None, link: Any = None, backend: str = ""
    ) -> None:
        if link is None:
            link = _default_link(backend or getattr(lock, "backend", ""))
        if lock is None:
            lock = HubRLock(link=link)
        elif not isinstance(lock, _LockOps) or lock._link.engine != link.engine:
            raise TypeError(
                f"a {link.engine} Condition needs a Lock or RLock of the same backend, got {lock!r}"
            )
        self._lock = lock
        self._setup(link, [lock._key, lock._hub_kind], name, backend)

    def __reduce__(self) -> Any:
        _pin(self._owner)
        return (_rebuild_condition, (self._lock, self._key, self.name))

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._call("wait", _owner(), check_timeout(timeout)))

    def notify(self, n: int = 1) -> None:
        self._call("notify", _owner(), n)

    def notify_all(self) -> None:
        self._call("notify", _owner(), 1 << 30)


def _rebuild_condition(lock: _LockOps, key: str, name: str | None) -> HubCondition:
    obj = _rebuild(HubCondition, lock._link, key, [lock._key, lock._hub_kind], name)
    obj._lock = lock
    return obj  # type: ignore[no-any-return]


class _SemOps(_HubPrim):
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._call("acquire", acquire_timeout(blocking, timeout)))

    def release(self, n: int = 1) -> None:
        self._call("release", n)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_value(value: int) -> int:
    check_value(value)  # the same rule (and message) as every backend's
    return value


class HubSemaphore(_SemOps, Semaphore):
    _hub_kind = "Semaphore"

    def __init__(
        self, value: int = 1, *, name: str | None = None, link: Any = None, backend: str = ""
    ) -> None:
        self._setup(link, _check_value(value), name, backend)


class HubBoundedSemaphore(_SemOps, BoundedSemaphore):
    _hub_kind = "BoundedSemaphore"

    def __init__(
        self, value: int = 1, *, name: str | None = None, link: Any = None, backend: str = ""
    ) -> None:
        self._setup(link, _check_value(value), name, backend)


class HubBarrier(_HubPrim, Barrier):
    _hub_kind = "Barrier"

    def __init__(
        self, parties: int, *, name: str | None = None, link: Any = None, backend: str = ""
    ) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
            raise ValueError(f"a Barrier needs parties >= 1, got {parties!r}")
        self._setup(link, parties, name, backend)

    def wait(self, timeout: float | None = None) -> int:
        return int(self._call("wait", check_timeout(timeout)))

    def reset(self) -> None:
        self._call("reset")

    def abort(self) -> None:
        self._call("abort")

    @property
    def parties(self) -> int:
        return int(self._init)

    @property
    def n_waiting(self) -> int:
        return int(self._call("state")[1])

    @property
    def broken(self) -> bool:
        return bool(self._call("state")[2])


class HubChannel(_HubPrim, Channel[Any]):
    _hub_kind = "Channel"

    # Channel.__new__ knows only the public arguments; the factory also passes link=.
    def __new__(cls, *args: Any, **kwargs: Any) -> HubChannel:
        return object.__new__(cls)

    def __init__(
        self,
        maxsize: int = 0,
        *,
        backend: str = "",
        capacity: int | None = None,
        name: str | None = None,
        link: Any = None,
    ) -> None:
        check_maxsize(maxsize)
        self.maxsize = maxsize
        self._setup(link, maxsize, name, backend)

    def put(self, item: Any, timeout: float | None = None) -> None:
        state = self._call("put", dumps(item), check_timeout(timeout))
        if state == "closed":
            raise ChannelClosed(f"put() on a closed channel ({self._key})")
        if state == "full":
            raise ChannelFull(f"the channel stayed full for {timeout:g} s")

    def get(self, timeout: float | None = None) -> Any:
        state, item = self._call("get", check_timeout(timeout))
        if state == "closed":
            raise ChannelClosed(f"the channel is closed and drained ({self._key})")
        if state == "empty":
            raise ChannelEmpty(f"the channel stayed empty for {timeout:g} s")
        return pickle.loads(item)

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return bool(self._call("is_closed"))

    def __len__(self) -> int:
        return int(self._call("size"))


_KINDS: dict[str, type[Any]] = {
    "Lock": HubLock,
    "RLock": HubRLock,
    "Event": HubEvent,
    "Condition": HubCondition,
    "Semaphore": HubSemaphore,
    "BoundedSemaphore": HubBoundedSemaphore,
    "Barrier": HubBarrier,
    "Channel": HubChannel,
}


def _default_link(engine: str) -> Any:
    if engine not in ("dask", "ray"):
        raise ValueError(f"a cluster primitive needs backend 'dask' or 'ray', not {engine!r}")
    return DaskLink() if engine == "dask" else RayLink()


def make_cluster_primitive(kind: str, link: Any, *args: Any, **kwargs: Any) -> Any:
    """Primitive ``kind`` held by the hub ``link`` reaches (``Backend.primitive``)."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown primitive {kind!r}; choose one of {sorted(_KINDS)}")
    kwargs.pop("backend", None)
    return cls(*args, link=link, **kwargs)
