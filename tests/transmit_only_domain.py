"""Domain of ``test_transmit_only``: an event appended straight to the store and a handler that
ignores it, run with pages of one event, so that catching up on a backlog sends the event bus
one progress report per event (module level: multiproc imports them by path). Names start with
``Txo``."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Application, Router, register_event
from backstage_actors._protocol import Settings
from backstage_actors.handler import EventHandler, Metadata


@register_event
@attrs.frozen
class TxoTicked:
    n: int


class TxoTicks(EventHandler):
    name = "txo-ticks"

    def handle(self, event: Any, metadata: Metadata) -> None:
        pass


class OneEventPages(Application):
    """An application whose subscribers read one event per page (a test's knob: the default
    is 1,000, and a handler's page also ends after 0.2 s of its work)."""

    def settings(self, base: str, database: str | None = None) -> Settings:
        return attrs.evolve(super().settings(base, database), page_size=1)


def make_app(database: str) -> Application:
    return OneEventPages(
        "transmit-only-test",
        router=Router(),
        handlers=[TxoTicks],
        database=database,
        synchronous="NORMAL",
    )
