"""Which runtime inside a shard: Thespian's simpleSystemBase (an actor per aggregate) or the
cells of ``_cells`` (a mailbox and a state per aggregate, run in rounds)? Same aggregate work:
rebuild from the store, execute, apply, on a store in memory (no disk: the runtime's own cost).

``python -m bench.shard_inner [N]``: per new aggregate (first command: rebuild + decide + apply)
and per command to a live one, in microseconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from thespian.actors import Actor, ActorSystem

from backstage_actors._cells import Cells
from backstage_actors._ids import event_id
from backstage_actors.aggregate import decide
from backstage_actors.command import DispatchResult, new_item
from backstage_actors.store import AppendRequest, EventStore
from backstage_actors.store._codec import encode_event

from ._domain import Credit, router


class AggregateHost(Actor):  # the per-aggregate actor of the first candidate
    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, tuple):
            store, cls, stream_id = message
            self.store, self.stream_id = store, stream_id
            self.state = cls()
            self.state.version = 0
            for version, event in store.stream_events(stream_id, 0):
                self.state.apply(event)
                self.state.version = version
        else:
            events = decide(self.state, message.command)
            encoded = [encode_event(event) for event in events]  # as the cells do
            ids = [event_id(message.command_id, i) for i in range(len(encoded))]
            self.requests = [AppendRequest(self.stream_id, encoded, self.state.version, None, ids)]
            for event in events:
                self.state.apply(event)
            self.state.version += len(events)
            self.send(sender, DispatchResult(self.stream_id, self.state.version, [], "", ""))


def thespian_simple(n: int, rounds: int) -> tuple[float, float]:
    store = EventStore(":memory:")
    system = ActorSystem("simpleSystemBase", logDefs=False, transientUnique=True)
    try:
        commands = [Credit(f"acct-{i}", 1) for i in range(n)]
        started = time.perf_counter()
        actors = []
        for command in commands:
            route, stream_id, _ = router.stream_of(command)
            actor = system.createActor(AggregateHost)
            system.tell(actor, (store, route.aggregate, stream_id))
            system.ask(actor, new_item(command), 1)
            actors.append(actor)
        created = (time.perf_counter() - started) / n
        items = [[new_item(c) for c in commands] for _ in range(rounds)]
        started = time.perf_counter()
        for batch in items:
            for actor, item in zip(actors, batch, strict=True):
                system.ask(actor, item, 1)
        live = (time.perf_counter() - started) / (n * rounds)
        return created * 1e6, live * 1e6
    finally:
        system.shutdown()


class _NoWrite:
    """The cells' writer without the store's append (the runtime's cost, not SQLite's)."""

    commits = appends = 0

    def commit(self, requests: list[Any]) -> list[Any]:
        return [[] for _ in requests]

    def describe(self) -> dict[str, Any]:
        return {}


def cells(n: int, rounds: int) -> tuple[float, float]:
    runtime = Cells(EventStore(":memory:"), router, max_live=n + 1)
    runtime.writer = _NoWrite()  # type: ignore[assignment]
    commands = [Credit(f"acct-{i}", 1) for i in range(n)]
    started = time.perf_counter()
    for command in commands:
        runtime.submit([new_item(command)], None)
        runtime.run_round()
    created = (time.perf_counter() - started) / n
    items = [[new_item(c) for c in commands] for _ in range(rounds)]
    started = time.perf_counter()
    for batch in items:
        for item in batch:
            runtime.submit([item], None)
            runtime.run_round()
    live = (time.perf_counter() - started) / (n * rounds)
    return created * 1e6, live * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for name, run in (("simpleSystemBase", thespian_simple), ("cells", cells)):
        created, live = run(n, 5)
        print(f"{name:>17}: {created:8.1f} us per new aggregate, {live:6.1f} us per command")


if __name__ == "__main__":
    main()
