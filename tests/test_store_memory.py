"""The in-memory recorder passes the store conformance suite as it is."""

from __future__ import annotations

from pathlib import Path

from backstage_actors.store import EventStore

from .store_conformance import EventStoreConformance


class TestMemoryEventStore(EventStoreConformance):
    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        return EventStore(f"memory:{path}", page_size=page_size or 1000)


def test_stores_on_one_name_share_events_until_the_last_is_closed(tmp_path: Path) -> None:
    first, second = EventStore("memory:shared"), EventStore("memory:shared")
    first.append("s", [])
    assert second.last_position() == first.last_position()
    first.close()
    second.close()
    assert EventStore("memory:shared").last_position() == 0
