"""Lock-order checking: find deadlocks that did not happen (yet).

When on (``POLYTASK_DEBUG_LOCKS=1`` in the environment, or
``pt.debug.lock_order_checking()``), every polytask lock (Lock, RLock, the
lock of a Condition, FileLock) reports its acquisitions here. For each
thread we keep the locks it holds; taking lock B while holding A records the
edge A -> B in one graph for the process, with where it was first seen. If a
thread then takes A while holding B (or, transitively, closes any cycle), the
acquisition raises :class:`PotentialDeadlock` before it blocks, naming both
locks and both places, even though this run never deadlocked.

Off, the cost is one module attribute check per acquire and release
(``_debug.enabled``). Non-blocking acquisitions cannot deadlock and are not
checked, but the lock they take counts as held. The graph is per process.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .errors import PotentialDeadlock

__all__ = ["LockOrderChecking", "enabled", "lock_order_checking"]

enabled: bool = os.environ.get("POLYTASK_DEBUG_LOCKS", "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
)

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THREADING_FILE = getattr(threading, "__file__", "") or ""
_counter = itertools.count(1)


@dataclass(frozen=True)
class _Edge:
    site: str  # where the second lock was taken
    held_site: str  # where the first one had been taken
    thread: str


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # a plain lock: never checked itself
        self.graph: dict[object, dict[object, _Edge]] = {}
        self.names: dict[object, str] = {}


_state = _State()
_local = threading.local()


def _held() -> list[tuple[object, str]]:
    try:
        return _local.held  # type: ignore[no-any-return]
    except AttributeError:
        held: list[tuple[object, str]] = []
        _local.held = held
        return held


def new_key() -> int:
    """A unique key for a lock of this process."""
    return next(_counter)


def call_site() -> str:
    """``file:line`` of the first frame outside polytask and threading."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not fn.startswith(_PKG_DIR) and fn != _THREADING_FILE:
            return f"{fn}:{f.f_lineno}"
        f = f.f_back  # type: ignore[assignment]
    return "<unknown>"


def _path(src: object, dst: object) -> list[object] | None:
    """A path src -> ... -> dst in the order graph (caller holds _state.lock)."""
    graph = _state.graph
    if src not in graph:
        return None
    prev: dict[object, object] = {src: src}
    todo = [src]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt in prev:
                continue
            prev[nxt] = node
            if nxt == dst:
                out = [dst]
                while out[-1] != src:
                    out.append(prev[out[-1]])
                return out[::-1]
            todo.append(nxt)
    return None


def before_acquire(key: object, name: str, blocking: bool) -> None:
    """Check taking lock ``key`` against the held locks; record the new edges."""
    held = _held()
    if not held:
        return
    site = call_site()
    me = threading.current_thread().name
    with _state.lock:
        _state.names.setdefault(key, name)
        for hkey, _ in held:
            if hkey == key:
                return  # re-entering an RLock (or a self-deadlock a timeout will report)
        if blocking:
            for hkey, hsite in held:
                path = _path(key, hkey)
                if path is not None:
                    raise _report(key, name, site, hkey, hsite, path, me)
        for hkey, hsite in held:
            _state.graph.setdefault(hkey, {}).setdefault(key, _Edge(site, hsite, me))


def after_acquire(key: object) -> None:
    """Count lock ``key`` as held by this thread (it was acquired)."""
    _held().append((key, call_site()))


def on_release(key: object) -> None:
    """Lock ``key`` was released by this thread (or handed to another: then forget it)."""
    held = _held()
    for i in range(len(held) - 1, -1, -1):
        if held[i][0] == key:
            del held[i]
            return


def _report(
    key: object, name: str, site: str, hkey: object, hsite: str, path: list[object], me: str
) -> PotentialDeadlock:
    names = _state.names
    hname = names.get(hkey, repr(hkey))
    first = _state.graph[path[0]][path[1]]
    if len(path) == 2:
        how = (
            f"but thread {first.thread!r} took {name} first and then {hname}: "
            f"{name} at {first.held_site}, then {hname} at {first.site}"
        )
    else:
        steps = []
        for a, b in itertools.pairwise(path):
            e = _state.graph[a][b]
            steps.append(
                f"{names.get(b, b)} while holding {names.get(a, a)} at {e.site} (thread {e.thread!r})"
            )
        how = "but elsewhere the opposite order was seen: " + "; ".join(steps)
    return PotentialDeadlock(
        f"lock order inversion: thread {me!r} holds {hname} (taken at {hsite}) and is taking "
        f"{name} at {site}, {how}. Two threads doing this at once would deadlock; "
        "take these locks in one order everywhere."
    )


class LockOrderChecking:
    """Turns lock-order checking on when created; a context manager restores the previous state.

    ``pt.debug.lock_order_checking()`` on its own turns checking on for the
    rest of the program; ``with pt.debug.lock_order_checking(): ...`` only
    inside the block, with a fresh order graph (so blocks do not see each
    other's history).
    """

    def __init__(self, on: bool = True) -> None:
        global enabled
        self._previous = enabled
        self._saved: tuple[Any, Any] | None = None
        enabled = bool(on)

    def __enter__(self) -> LockOrderChecking:
        with _state.lock:
            self._saved = (_state.graph, _state.names)
            _state.graph, _state.names = {}, {}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global enabled
        enabled = self._previous
        if self._saved is not None:
            with _state.lock:
                _state.graph, _state.names = self._saved


def lock_order_checking(on: bool = True) -> LockOrderChecking:
    """Check the order in which threads take polytask locks (see the module docstring).

    Example::

        with pt.debug.lock_order_checking():
            a, b = pt.Lock(name="a"), pt.Lock(name="b")
            with a, b:
                pass
            with b:
                with a:  # raises PotentialDeadlock: a then b was seen before
                    pass
    """
    return LockOrderChecking(on)
