"""The one skip table of the upstream conformance suites.

Key: ``suite::Class::test`` (``suite::test[params]`` for joblib), glob patterns
allowed; value: ``(category, reason)``. A test is listed only if it cannot pass
by design:

- INTERNAL: it reads a private attribute or CPython internals (``_processes``,
  ``_threads``, ``_pool``...) that polytask does not have.
- DIFFERENCE: a deliberate, documented difference (each explained in
  docs/compat.md, under the heading named in the reason).

Everything else must pass; a failure is a bug.
"""

from __future__ import annotations

INTERNAL = "reads a private attribute / CPython internals"
DIFFERENCE = "documented deliberate difference (docs/compat.md)"

SKIPS: dict[str, tuple[str, str]] = {}
