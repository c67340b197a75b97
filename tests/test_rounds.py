"""A shard's rounds without Thespian (``_cells``, ``_writer``): what arrives together is committed
together, each command gets its own answer, and none is given from a state that is not stored.

Replaces the store actor's tests (its group commit, its epochs and superseded appends): the shard's
writer is the one write path now, and a round holds its answers until its commit.
"""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors import CommandRejected, DispatchResult, StorageError
from backstage_actors._cells import Cells
from backstage_actors.command import new_item
from backstage_actors.store import EventStore

from .dispatch_domain import Add, make_router
from .shards_domain import Open, OpenRacing
from .shards_domain import make_app as make_accounts


def run(cells: Cells, commands: list[Any]) -> list[Any]:
    """Submit ``commands`` together and run rounds until each is answered; answers in order."""
    items = [new_item(command) for command in commands]
    cells.submit(items, "caller")
    answers: dict[str, Any] = {}
    while cells.ready:
        answers.update({request_id: answer for _, request_id, answer, _ in cells.run_round()})
    return [answers[item.request_id] for item in items]


@pytest.fixture
def database(tmp_path: Any) -> str:
    return str(tmp_path / "rounds.db")


def test_commands_that_arrive_together_share_one_commit(database: str) -> None:
    store = EventStore(database)
    cells = Cells(store, make_accounts().router)
    commands = [Open(f"acct-{n}") for n in range(20)]
    commands[2] = OpenRacing("acct-2", database)  # its append meets another writer

    answers = run(cells, commands)

    # One commit for the round; the racing command alone failed, and was decided again.
    assert (cells.writer.commits, cells.writer.appends) == (1, 20)
    assert isinstance(answers[2], CommandRejected) and "closed" in str(answers[2])
    assert all(
        isinstance(a, DispatchResult) and a.version == 1 for i, a in enumerate(answers) if i != 2
    )
    assert store.last_position() == 20  # 19 Opened, and the other writer's Closed


def test_a_failed_commit_answers_its_error_and_nothing_from_its_state(database: str) -> None:
    store = EventStore(database)
    cells = Cells(store, make_router())
    run(cells, [Add("c", 1)])  # the schema exists; the counter is at 1
    store.conn.execute("PRAGMA query_only = ON")  # every write of this connection fails

    answers = run(cells, [Add("c", 2), Add("c", 3)])

    # The second was decided on the state the first would have made: it is decided again on
    # the stored state, and meets the same fault; neither caller hears of a total of 3 or 6.
    assert all(isinstance(a, StorageError) for a in answers), answers
    assert [e.data.total for e in store.read_stream("Counter-c")] == [1]
    store.conn.execute("PRAGMA query_only = OFF")
    [after] = run(cells, [Add("c", 5)])
    assert (after.version, after.events[0].data.total) == (2, 6)


def test_a_new_aggregate_costs_the_same_with_many_live(database: str) -> None:
    """Passivation by recency is an ordered dict: the cap drops the least recently used, and
    the ones in use stay."""
    cells = Cells(EventStore(database), make_router(), max_live=3)
    run(cells, [Add(f"n-{i}", 1) for i in range(5)])
    assert list(cells.cells) == ["Counter-n-2", "Counter-n-3", "Counter-n-4"]
    run(cells, [Add("n-2", 1), Add("n-9", 1)])
    assert list(cells.cells) == ["Counter-n-4", "Counter-n-2", "Counter-n-9"]
    assert cells.passivated == 3
