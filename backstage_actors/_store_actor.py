"""The event-store actor: the application's hold on its database, and its store in the tree.

It takes the database's owner lock first (one running application per database and host, see
``_owner``), and says where the events are and how far they go (``tree``, ``status``, ``top``).
Appends do not go through it: each shard commits its aggregates' appends itself, in one
transaction per round (see ``_shard`` and ``_writer``).
"""

from __future__ import annotations

from typing import Any

from supervisors import SupervisedActor

from ._owner import OwnerLock
from ._protocol import Settings
from ._shared import shared_store
from .store import EventStore

__all__ = ["StoreActor"]


class StoreActor(SupervisedActor):
    kind = "store"

    def on_start(self) -> None:
        self.settings: Settings = self.args["settings"]
        self.owner: OwnerLock | None = None
        if self.settings.exclusive:  # taken first: a refused start touches nothing
            self.owner = OwnerLock(self.settings.database, self._who())
        self.store: EventStore = shared_store(self.settings)

    def _who(self) -> dict[str, Any]:
        settings = self.settings
        return {"app": settings.app_name, "base": settings.base, "port": settings.admin_port}

    def on_exit(self) -> None:
        if self.owner is not None:
            self.owner.release()

    def on_stop(self) -> None:
        self.on_exit()

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.settings.database,
            "synchronous": self.settings.synchronous,
            "last_position": self.store.last_position(),
        }
