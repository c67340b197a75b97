"""Domain of ``test_transmit_only``: an event appended straight to the store and a handler that
ignores it, run with pages of one event, so that catching up on a backlog sends the event bus
one progress report per event (module level: multiproc imports them by path). Names start with
``Txo``.

And two plain actors for a wakeup armed by a handler that then enters transmit-only mode."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import attrs
from thespian.actors import Actor, WakeupMessage

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


class TxoSink(Actor):  # type: ignore[misc]
    """Takes anything; answers "pid" with its process id (the test stops the process)."""

    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "pid":
            self.send(sender, os.getpid())


class TxoFlooder(Actor):  # type: ignore[misc]
    """On ``("flood", sink, count)``: a wakeup 0.2 s away, then ``count`` messages to ``sink``
    from the same handler (enough, to a stopped sink, to enter transmit-only mode inside it).
    Tells the sender "woke" when the wakeup comes, and answers "pid" with its process id."""

    def receiveMessage(self, message: object, sender: object) -> None:
        if message == "pid":
            self.send(sender, os.getpid())
        elif isinstance(message, tuple) and message[0] == "flood":
            _, sink, count = message
            self.tester = sender
            self.wakeupAfter(timedelta(seconds=0.2), "due")
            for n in range(count):
                self.send(sink, n)
        elif isinstance(message, WakeupMessage):
            self.send(self.tester, "woke")
