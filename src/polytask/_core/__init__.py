"""The bottom layer: what every other part of polytask shares, and no I/O policy.

- ``task``: Task (a concurrent.futures Future) and CurrentTask; ``errors``: the
  one exception hierarchy; ``timeouts``: the one ``timeout=`` validator;
  ``timer``: one thread for every deadline; ``debug``: the lock-order checker.
- ``backend``: the Backend base class and the static table of backend names.
  A backend *owns* its primitives (``Backend.primitives``), as anyio's backend
  makes its Event: no registry is filled at import time, so nothing here imports
  a backend (``load()`` imports one by name, on first use).
- ``primitives`` and ``channel``: the public classes (``pt.Lock``, ``pt.Channel``)
  that dispatch to the backend's own class.

Nothing in ``_core`` imports from a layer above it (tests/test_layering.py).
"""
