"""The PostgreSQL recorder on the session's private server: the conformance suite as it is, plus
what only a server shows (several connections, restarts, timeouts, bad credentials)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backstage_actors.store import EventStore

from .pg_fixture import PrivateServer
from .store_conformance import EventStoreConformance


class TestPostgresEventStore(EventStoreConformance):
    @pytest.fixture(autouse=True)
    def _server(self, pg_server: PrivateServer) -> None:
        self.server = pg_server

    def make_store(self, path: Path, *, page_size: int | None = None) -> EventStore:
        return EventStore(self.server.dsn(self.server.new_schema()), page_size=page_size or 1000)
