"""What the actors and clients of one process share: one event store connection per database,
and the lookup of the application's named actors (:func:`locate`).

On simpleSystemBase every actor runs in one thread of one process, so thousands of aggregates
share a single connection instead of holding one each. After a fork (every actor process on the
multiproc bases) the inherited connection is never used: the key includes the process id.
"""

from __future__ import annotations

import os
from typing import Any

import supervisors

from ._protocol import Settings
from .errors import SystemNotRunning
from .store import EventStore

__all__ = ["locate", "shared_store"]

_stores: dict[tuple[int, str, str], EventStore] = {}


def shared_store(settings: Settings) -> EventStore:
    key = (os.getpid(), settings.database, settings.synchronous)
    store = _stores.get(key)
    if store is None:
        # Shards (processes on multiproc, callers' threads in-process) share their flushes.
        store = EventStore(
            settings.database,
            settings.synchronous,
            page_size=settings.page_size,
            shared_flush=True,
        )
        _stores[key] = store
    return store


def close_shared(database: str) -> None:
    """Close this process's connections to ``database`` (when its application stops)."""
    for key in [k for k in _stores if k[0] == os.getpid() and k[1] == database]:
        _stores.pop(key).close()


def locate(endpoint: Any, root: Any, name: str, timeout: float, missing: str) -> Any:
    """The address of the application's child ``name``; :class:`SystemNotRunning` (with
    ``missing`` when it is not running) if the application cannot give it."""
    try:
        address = supervisors.whereis(endpoint, root, name, timeout=timeout)
    except supervisors.SupervisionError as exc:
        raise SystemNotRunning(f"the application does not answer: {exc}") from None
    if address is None:
        raise SystemNotRunning(missing)
    return address
