"""The event-store actor: the application's store in the tree (``tree``, ``status``, ``top``).

Appends no longer go through it: each shard commits its aggregates' appends itself, in one
transaction per round (see ``_shard`` and ``_writer``). It says where the events are and how
far they go.
"""

from __future__ import annotations

from typing import Any

from supervisors import SupervisedActor

from ._protocol import Settings
from ._shared import shared_store
from .store import EventStore

__all__ = ["StoreActor"]


class StoreActor(SupervisedActor):
    kind = "store"

    def on_start(self) -> None:
        self.settings: Settings = self.args["settings"]
        self.store: EventStore = shared_store(self.settings)

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.settings.database,
            "synchronous": self.settings.synchronous,
            "last_position": self.store.last_position(),
        }
