"""A shard decides ahead: an aggregate runs every command in its mailbox on the state the ones
before it made, and the round's appends are committed together (see _cells). Whatever reaches
it, in whatever order (single commands and batches, straight to the shard, named repeats,
another writer in between, a crash), nothing is stored on a state that was never stored,
no answer is given from one, and every caller gets an answer.

simpleSystemBase: the senders are actors of the test's own process (the shard's address is the
one the client learnt from its first answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from thespian.actors import Actor

from backstage_actors import (
    Aggregate,
    Application,
    DispatchResult,
    EventStore,
    Router,
    WrongExpectedVersion,
)
from backstage_actors._protocol import Execute, Executed
from backstage_actors.command import new_item

pytestmark = pytest.mark.parametrize("base", ["simple"])


@attrs.frozen
class Put:
    tank_id: str
    amount: int


@attrs.frozen
class Take:
    tank_id: str
    amount: int


@attrs.frozen
class Moved:
    tank_id: str
    amount: int
    level: int  # the level the command was decided on, plus the amount


class Tank(Aggregate):
    # Set by a test: another writer appends to the stream while this command is decided.
    interloper: str | None = None

    def __init__(self) -> None:
        self.level = 0

    def execute(self, command: Any) -> Any:
        if isinstance(command, Take):
            if self.level < command.amount:
                raise ValueError(f"only {self.level} in the tank")
            return Moved(command.tank_id, -command.amount, self.level - command.amount)
        if Tank.interloper is not None:
            database, Tank.interloper = Tank.interloper, None
            with EventStore(database) as other:
                stream_id = f"Tank-{command.tank_id}"
                version = other.stream_version(stream_id)
                other.append(stream_id, [Moved(command.tank_id, 10, -1)], expected_version=version)
        return Moved(command.tank_id, command.amount, self.level + command.amount)

    def apply(self, event: Any) -> None:
        if event.amount == 13:
            raise RuntimeError("13 cannot be applied")
        self.level += event.amount


def tank_app(**options: Any) -> Application:
    router = Router().dispatch([Put, Take], to=Tank, identity="tank_id")
    return Application("tanks", router=router, **options)


def assert_decided_on_stored_states(system: Any, stream_id: str) -> None:
    """Each stored event's level is the sum of the amounts before it plus its own (the other
    writer's events say -1: they were decided on nothing)."""
    level = 0
    for event in system.store.read_stream(stream_id):
        level += event.data.amount
        assert event.data.level in (level, -1), f"version {event.version} decided on {event.data}"


class Sender(Actor):  # type: ignore[misc]
    """Stands for process managers dispatching to one aggregate at once: some several commands
    in one message, some one. Sends the next single command once the first answer is in."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's name
        if isinstance(message, tuple):
            self.requester, self.answers = sender, []
            self.aggregate, first, single, second, self.last = message
            stream_id = "Tank-t"
            self.send(self.aggregate, Execute(first, self.myAddress, True, stream_id))
            self.send(self.aggregate, Execute(single, self.myAddress, False, stream_id))
            self.send(self.aggregate, Execute(second, self.myAddress, True, stream_id))
        elif isinstance(message, Executed):
            if not self.answers:
                self.send(self.aggregate, Execute(self.last, self.myAddress, False, "Tank-t"))
            self.answers.extend(message.results)
            if len(self.answers) == 4:
                self.send(self.requester, self.answers)


def test_single_and_batched_commands_in_flight_together_decide_on_stored_states(
    start_app: Any,
) -> None:
    """A single command arriving while the aggregate's batch is not yet committed is decided on
    the batch's state: it must be stored after it, never around it."""
    system = start_app(tank_app())
    system.dispatch(Put("t", 1))
    aggregate = system._courier.aggregates["Tank-t"][0]
    sender = system.actor_system.createActor(Sender)
    commands = ([new_item(Put("t", 5))], [new_item(Take("t", 6))], [new_item(Put("t", 7))])

    answers = system.actor_system.ask(sender, (aggregate, *commands, [new_item(Put("t", 100))]), 10)

    assert all(isinstance(answer, DispatchResult) for _, answer in answers), answers
    assert_decided_on_stored_states(system, "Tank-t")
    assert [e.data.level for e in system.store.read_stream("Tank-t")] == [1, 6, 0, 7, 107]


def test_a_failed_append_of_a_passivated_aggregate_is_run_again(
    start_app: Any, tmp_path: Path
) -> None:
    """Routing the second command stops the first one's aggregate (at most one live) after it
    sent its append, which then fails (another writer got there first): the command is run
    again by a new instance, not left unanswered."""
    database = str(tmp_path / "app.db")
    system = start_app(tank_app(max_live=1), database=database)
    system.dispatch(Put("a", 1))
    Tank.interloper = database

    first, second = system.dispatch_many([Put("a", 5), Put("b", 1)], timeout=5)

    assert isinstance(first, DispatchResult), first
    assert (first.version, first.events[0].data.level) == (3, 16)
    assert isinstance(second, DispatchResult), second
    assert_decided_on_stored_states(system, "Tank-a")


class OneByOne(Actor):  # type: ignore[misc]
    """Sends each command in a message of its own straight to the aggregate (as process managers
    do), all at once, and hands back every answer once there is one per command. Commands named
    by a ``(command, command_id)`` pair are sent as named (a repeat is answered, not re-run)."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's name
        if isinstance(message, tuple):
            self.requester, self.answers = sender, []
            aggregate, stream_id, commands = message
            self.expected = len(commands)
            for command in commands:
                if isinstance(command, tuple):
                    item = new_item(command[0], {"command_id": command[1]})
                else:
                    item = new_item(command)
                self.send(aggregate, Execute([item], self.myAddress, True, stream_id))
        elif isinstance(message, Executed):
            self.answers.extend(answer for _, answer in message.results)
            if len(self.answers) == self.expected:
                self.send(self.requester, self.answers)


def one_by_one(system: Any, stream_id: str, commands: list[Any]) -> list[Any]:
    sender = system.actor_system.createActor(OneByOne)
    aggregate = system._courier.aggregates[stream_id][0]
    answers = system.actor_system.ask(sender, (aggregate, stream_id, commands), 10)
    assert answers is not None, "not every command was answered"
    return list(answers)


def test_a_crash_while_earlier_appends_fail_leaves_no_command_unanswered(
    start_app: Any, tmp_path: Path
) -> None:
    """The first append fails (another writer) after the aggregate crashed on the third
    command: the failure reaches an aggregate that is gone, and its commands run again."""
    database = str(tmp_path / "app.db")
    system = start_app(tank_app(), database=database)
    system.dispatch(Put("t", 1))
    Tank.interloper = database

    answers = one_by_one(system, "Tank-t", [Put("t", 5), Put("t", 2), Put("t", 13), Put("t", 7)])

    kinds = sorted(type(answer).__name__ for answer in answers)
    assert kinds == ["AggregateFailed", "DispatchResult", "DispatchResult", "DispatchResult"]
    assert sorted(e.data.amount for e in system.store.read_stream("Tank-t")) == [1, 2, 5, 7, 10]
    assert_decided_on_stored_states(system, "Tank-t")


def test_a_named_command_sent_twice_at_once_is_stored_and_answered_once(
    start_app: Any,
) -> None:
    """The repeat reaches the aggregate while the first attempt is not yet committed: it is
    answered with the first attempt's events, and the aggregate's state holds it once."""
    system = start_app(tank_app())
    system.dispatch(Put("t", 10))

    first, again = one_by_one(
        system, "Tank-t", [(Take("t", 4), "take-4"), (Take("t", 4), "take-4")]
    )

    assert isinstance(first, DispatchResult) and isinstance(again, DispatchResult), (first, again)
    assert first.events == again.events and first.version == 2
    assert system.dispatch(Take("t", 5)).events[0].data.level == 1  # 10 - 4 - 5
    assert_decided_on_stored_states(system, "Tank-t")


def test_a_command_behind_a_conflicting_one_is_not_charged_its_retry(start_app: Any) -> None:
    """No retries: the command that meets another writer fails; one sent after it by another
    caller was only refused for counting on it, and runs again on the stored state."""
    system = start_app(tank_app(max_retries=0))
    system.dispatch(Put("t", 1))
    Tank.interloper = system.store.path

    conflicting, behind = one_by_one(system, "Tank-t", [Put("t", 5), Put("t", 1)])

    assert isinstance(conflicting, WrongExpectedVersion), conflicting
    assert isinstance(behind, DispatchResult), behind
    assert behind.events[0].data.level == 12  # 1 + 10 (the other writer) + 1


def test_a_repeat_of_a_refused_named_command_is_not_stored_on_its_state(
    start_app: Any, tmp_path: Path
) -> None:
    """The first command fails (another writer), the named one after it is refused for counting
    on it, and the repeat of the named one is only looked up: it never writes, so nothing is
    stored on the state of the failed first command."""
    database = str(tmp_path / "app.db")
    system = start_app(tank_app(), database=database)
    system.dispatch(Put("t", 10))
    Tank.interloper = database

    answers = one_by_one(system, "Tank-t", [Put("t", 5), (Take("t", 4), "k"), (Take("t", 4), "k")])

    assert all(isinstance(answer, DispatchResult) for answer in answers), answers
    assert answers[1].events == answers[2].events
    assert_decided_on_stored_states(system, "Tank-t")
    assert [e.data.amount for e in system.store.read_stream("Tank-t")] == [10, 10, 5, -4]


class OneExecute(Actor):  # type: ignore[misc]
    """Sends all its items in one Execute straight to the aggregate; hands back the answers."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's name
        if isinstance(message, tuple):
            self.requester, (aggregate, items) = sender, message
            self.answers, self.expected = [], len(items)
            self.send(aggregate, Execute(items, self.myAddress, True, "Tank-t"))
        elif isinstance(message, Executed):
            self.answers.extend(message.results)
            if len(self.answers) == self.expected:
                self.send(self.requester, dict(self.answers))


def test_a_named_command_twice_in_one_message_is_run_once(start_app: Any) -> None:
    system = start_app(tank_app(max_retries=0))
    system.dispatch(Put("t", 10))
    items = [
        new_item(Take("t", 4), {"command_id": "k"}),
        new_item(Take("t", 4), {"command_id": "k"}),
        new_item(Put("t", 1)),
    ]
    sender = system.actor_system.createActor(OneExecute)

    answers = system.actor_system.ask(sender, (system._courier.aggregates["Tank-t"][0], items), 10)

    first, again, put = (answers[item.request_id] for item in items)
    assert isinstance(put, DispatchResult), put
    assert first.events == again.events and put.events[0].data.level == 7  # 10 - 4 + 1
    assert_decided_on_stored_states(system, "Tank-t")
