"""Primitives that match their owner's backend: ``g.Lock()``, ``pool.Channel()``...

A TaskGroup or Pool knows where its tasks run; a primitive its tasks share must
work there (a thread lock is useless to a process task, and a process lock to a
Dask task). So each owner hands out primitives built by its own backend, and
users never name the backend twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core.channel import Channel
    from ._core.primitives import (
        Barrier,
        BoundedSemaphore,
        Condition,
        Event,
        Lock,
        RLock,
        Semaphore,
    )
    from .backends import Backend

__all__ = ["PrimitiveFactory"]


def _named(name: str | None) -> dict[str, str]:
    # Only the backends that report lock order take a name: pass it only when given.
    return {} if name is None else {"name": name}


class PrimitiveFactory:
    """Mixin: one method per primitive, each built by ``self._backend``."""

    __slots__ = ()
    _backend: Backend

    def Lock(self, *, name: str | None = None) -> Lock:
        """A lock its tasks can share (a process lock for ``"process"``)."""
        return self._backend.primitive("Lock", **_named(name))  # type: ignore[no-any-return]

    def RLock(self, *, name: str | None = None) -> RLock:
        """A re-entrant lock its tasks can share."""
        return self._backend.primitive("RLock", **_named(name))  # type: ignore[no-any-return]

    def Event(self) -> Event:
        """An event its tasks can share."""
        return self._backend.primitive("Event")  # type: ignore[no-any-return]

    def Condition(self, lock: Any = None) -> Condition:
        """A condition variable its tasks can share (over ``lock``, or a new one)."""
        return self._backend.primitive("Condition", lock)  # type: ignore[no-any-return]

    def Semaphore(self, value: int = 1) -> Semaphore:
        """A semaphore its tasks can share."""
        return self._backend.primitive("Semaphore", value)  # type: ignore[no-any-return]

    def BoundedSemaphore(self, value: int = 1) -> BoundedSemaphore:
        """A bounded semaphore its tasks can share."""
        return self._backend.primitive("BoundedSemaphore", value)  # type: ignore[no-any-return]

    def Barrier(self, parties: int, **options: Any) -> Barrier:
        """A barrier for ``parties`` of its tasks (``action=``, ``timeout=`` as threading's)."""
        return self._backend.primitive("Barrier", parties, **options)  # type: ignore[no-any-return]

    def Channel(self, maxsize: int = 0) -> Channel[Any]:
        """A channel its tasks can share (shared memory for ``"process"``)."""
        return self._backend.primitive("Channel", maxsize)  # type: ignore[no-any-return]
