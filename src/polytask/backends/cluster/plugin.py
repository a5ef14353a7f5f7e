"""The Dask scheduler plugin that hosts the cluster primitives' hub (see backends.cluster.sync)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .hub import HANDLER, SyncHub

__all__ = ["HubPlugin"]


class HubPlugin(SchedulerPlugin):
    """Adds the ``polytask_sync`` handler to the scheduler (kept if already there)."""

    name = "polytask-sync"
    idempotent = True

    async def start(self, scheduler: Any) -> None:
        if HANDLER in scheduler.handlers:
            return
        hub = SyncHub()

        async def handle(
            comm: Any = None,
            pkey: str = "",
            pkind: str = "",
            pinit: Any = None,
            action: str = "",
            pargs: Any = (),
        ) -> list[Any]:
            # Not "op"/"key": distributed's rpc uses those names itself.
            return await hub.call(pkey, pkind, pinit, action, list(pargs))

        scheduler.handlers[HANDLER] = handle
