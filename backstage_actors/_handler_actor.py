"""The runtime of an :class:`~backstage_actors.handler.EventHandler`: at-least-once.

Each event of a page goes to ``handle``; the checkpoint moves after the page (or as much of it as
fit in :data:`PAGE_TIME`), so a crash in between hands the same events over again.
"""

from __future__ import annotations

import time
from typing import Any

from ._subscriber import SubscriberActor
from .handler import EventHandler, Metadata
from .store import RecordedEvent

__all__ = ["PAGE_TIME", "HandlerActor"]

#: A handler's page ends after this many seconds even if events are left in it (they come next).
PAGE_TIME = 0.2


class HandlerActor(SubscriberActor):
    """Runs one :class:`EventHandler`."""

    kind = "handler"
    subscriber: EventHandler

    def open(self) -> None:
        # A handler may keep a little state of its own in the application's database.
        self.subscriber.db = self.store.handle

    def process_page(self, rows: list[tuple[Any, ...]]) -> tuple[bool, bool]:
        """Handle a page, or as much of it as fits in :data:`PAGE_TIME`; (still running, cut short).

        A slow handler thus gets back to its mailbox (tree requests, stops) every so often."""
        position = self.position
        cut_at = time.monotonic() + PAGE_TIME
        cut_short = False
        for index, row in enumerate(rows):
            if not self._give(row, self.subscriber.handle):
                break
            position = row[0]
            if index + 1 < len(rows) and time.monotonic() >= cut_at:
                cut_short = True
                break
        if position != self.position:
            self.position = position
            self.store.save_checkpoint(self.name, position)
        return self.state == "running", cut_short

    def redeliver(self, recorded: RecordedEvent, meta: Metadata, letter_id: int = 0) -> None:
        self.subscriber.handle(recorded.data, meta)
