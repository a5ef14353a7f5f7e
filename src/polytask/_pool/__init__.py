"""The Pool (``multiprocessing.Pool``'s surface) and the Executor over it.

Design decisions, one module each:

* ``pool.py``: :class:`Pool` drives everything under one lock, with no thread of
  its own: pumping happens in whichever thread made room (see its diagram).
* ``schedule.py``: what is pure (items, map runs cut into blocks, which chunk
  goes next, chunk timeouts) is apart, with no I/O, threads nor locks, and is
  tested without a Pool; ``chunking.py`` sizes the chunks.
* ``batch.py``: what a worker runs. A process worker unpickles ``_run_chunk``
  by reference, so this module imports nothing of the Pool, and this package
  imports its parts lazily (below): a worker that runs a chunk never loads the
  Pool, its progress bar or its factories.
* ``results.py``: what the caller holds (:class:`AsyncResult`,
  :class:`MapIterator`); ``executor.py``: the ``concurrent.futures`` layer,
  which uses the Pool only through methods named for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executor import Executor as Executor
    from .pool import DEFAULT as DEFAULT
    from .pool import Pool as Pool
    from .results import AsyncResult as AsyncResult
    from .results import MapIterator as MapIterator

__all__ = ["DEFAULT", "AsyncResult", "Executor", "MapIterator", "Pool"]

_LAZY = {
    "AsyncResult": ".results",
    "DEFAULT": ".pool",
    "Executor": ".executor",
    "MapIterator": ".results",
    "Pool": ".pool",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
