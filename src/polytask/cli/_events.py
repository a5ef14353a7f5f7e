"""``--events FILE``: one JSON object a line, shared by ``polytask up`` and ``polytask parallel``.

Both commands write the same envelope, so that one reader follows either:
``{"time": <epoch seconds>, "event": <kind>, "process": <name>, ...}``, the
facts of the event after it (``pid``, ``code``, ``description``,
``attempt``, ...). ``up`` builds its records in the Supervisor (its
``on_event``); ``parallel`` builds them with :meth:`EventLog.emit`. Each
line is flushed at once: a reader tailing the file sees an event as it
happens, and a run that is killed loses none it wrote.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["EventLog"]


class EventLog:
    """Where the events go: a file opened for appending, or stderr for ``-``.

    ``on_error``: called once with a message when a write fails (a full disk,
    a closed stderr), after which events are dropped: an event log that cannot
    be written must not stop the jobs. Without it, the OSError propagates
    (``up``'s Supervisor reports a failing ``on_event`` itself).
    """

    def __init__(
        self, file: IO[str], *, owned: bool, on_error: Callable[[str], None] | None = None
    ) -> None:
        self._file: IO[str] | None = file
        self._owned = owned
        self._on_error = on_error

    @classmethod
    def open(cls, target: str, *, on_error: Callable[[str], None] | None = None) -> EventLog:
        """The log for ``--events TARGET`` (``-``: stderr); raises OSError if it cannot be opened."""
        if target == "-":
            return cls(sys.stderr, owned=False, on_error=on_error)
        f = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return cls(f, owned=True, on_error=on_error)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line and flush it."""
        f = self._file
        if f is None:
            return
        try:
            f.write(json.dumps(record) + "\n")
            f.flush()
        except (OSError, ValueError) as exc:  # ValueError: the file was closed
            if self._on_error is None:
                raise
            self._file = None
            self._on_error(f"cannot write events: {exc}; no more events are written")

    def emit(
        self, kind: str, process: str | None = None, *, at: float | None = None, **fields: Any
    ) -> None:
        """Write one event of ``kind`` about ``process`` (``at``: its epoch time, default now)."""
        record: dict[str, Any] = {
            "time": round(time.time() if at is None else at, 6),
            "event": kind,
        }
        if process is not None:
            record["process"] = process
        record.update(fields)
        self.write(record)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None and self._owned:
            f.close()
