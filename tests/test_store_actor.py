"""The event-store actor's group commit: appends that arrive together share one transaction, and
each appender still gets its own answer."""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs
from thespian.actors import Actor

from backstage_actors import WrongExpectedVersion
from backstage_actors._protocol import AppendBatch, AppendFailed, AppendResults, Executed, Settings
from backstage_actors._store_actor import StoreActor
from backstage_actors.command import CommandItem
from backstage_actors.store import NO_STREAM, AppendRequest, EventStore
from supervisors import TreeNode
from supervisors._messages import _Describe, _Init


@attrs.frozen
class GcNoted:
    n: int


def start_store_actor(actor_system: Any, database: str) -> Any:
    store = actor_system.createActor(StoreActor)
    init = _Init("store", {"settings": Settings(database=database)}, None, None, "init")
    actor_system.ask(store, init, 10)
    return store


def describe(actor_system: Any, store: Any) -> dict[str, Any]:
    reply = actor_system.ask(store, _Describe("d", 5), 5)
    assert isinstance(reply, TreeNode)
    return reply.node


class Appenders(Actor):
    """Stands for many aggregates: sends every batch it is given to the store actor at once and
    hands the answers back when all are in."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's name
        if isinstance(message, tuple) and message[0] == "append":
            _, store, batches = message
            self.requester, self.answers, self.expected = sender, {}, len(batches)
            for tag, batch in enumerate(batches):
                self.send(store, AppendBatch(batch, tag))
        elif isinstance(message, AppendResults):
            self.answers[message.tag] = message.results
            if len(self.answers) == self.expected:
                self.send(self.requester, self.answers)


class Pipeliner(Actor):
    """Stands for a pipelining aggregate: sends one batch with itself as the caller, and hands
    back the first answer, whether to the caller (``Executed``) or to the aggregate."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's name
        if isinstance(message, tuple) and message[0] == "pipeline":
            _, store, request, epoch, label = message
            self.requester = sender
            item = CommandItem(f"r-{label}", None, {"command_id": f"c-{label}"})
            self.send(store, AppendBatch([request], epoch, self.myAddress, [(item, 0)]))
        elif isinstance(message, (AppendFailed, Executed)):
            self.send(self.requester, message)


def pipeline_one(actor_system: Any, store: Any, expected: int, epoch: int, label: int) -> Any:
    """What a pipelined append of ``GcNoted(label)`` to stream ``p`` is answered with."""
    aggregate = actor_system.createActor(Pipeliner)
    request = AppendRequest("p", [GcNoted(label)], expected, event_ids=[f"e-{label}"])
    return actor_system.ask(aggregate, ("pipeline", store, request, epoch, label), 10)


def test_a_failed_pipelined_append_supersedes_what_its_epoch_sends_after_it(
    actor_system: Any, tmp_path: Any
) -> None:
    """A pipelining aggregate decided its later commands on the state its failed append was to
    make: until it sends from a newer epoch (it rebuilt), they are not stored, even when
    another writer brought the stream to the version they expect."""
    database = str(tmp_path / "gc.db")
    store = start_store_actor(actor_system, database)
    EventStore(database).append("p", [GcNoted(1), GcNoted(2)])  # another writer's events
    epoch = time.monotonic_ns()  # epochs are times (of one clock)

    lost = pipeline_one(actor_system, store, 1, epoch, 5)  # it believed the stream at 1
    assert isinstance(lost, AppendFailed) and lost.epoch == epoch
    [(item, attempt, error)] = lost.failures
    assert (item.request_id, attempt, type(error)) == ("r-5", 0, WrongExpectedVersion)

    # Decided on the state of the lost one: the version matches, but it is not stored.
    after = pipeline_one(actor_system, store, 2, epoch, 6)
    assert isinstance(after, AppendFailed)
    assert "counting on an earlier append, which failed" in str(after.failures[0][2])

    rebuilt = pipeline_one(actor_system, store, 2, epoch + 1, 7)
    assert isinstance(rebuilt, Executed)
    [(request_id, result)] = rebuilt.results
    assert (request_id, result.version, result.command_id) == ("r-7", 3, "c-7")
    assert rebuilt.source is not None and rebuilt.source[0] == "p"  # who decided it
    assert [e.data for e in EventStore(database).read_stream("p")] == [
        GcNoted(1),
        GcNoted(2),
        GcNoted(7),
    ]


def test_a_pipelined_append_older_than_the_store_actor_is_not_stored(
    actor_system: Any, tmp_path: Any
) -> None:
    """An append from before this store actor started was handed on from a predecessor, which
    may have seen its epoch fail: it is refused, and its aggregate rebuilds and retries."""
    database = str(tmp_path / "gc.db")
    before = time.monotonic_ns()
    store = start_store_actor(actor_system, database)

    old = pipeline_one(actor_system, store, 0, before, 1)

    assert isinstance(old, AppendFailed)
    assert "counting on an earlier append, which failed" in str(old.failures[0][2])
    assert EventStore(database).stream_version("p") == 0
    fresh = pipeline_one(actor_system, store, 0, time.monotonic_ns(), 2)
    assert isinstance(fresh, Executed)


def test_a_pipelined_repeat_decided_on_its_first_attempt_restarts_the_aggregate(
    actor_system: Any, tmp_path: Any
) -> None:
    """A command run again on a state that already held its first attempt: the store answers
    with what the first attempt stored, and tells the aggregate to rebuild (its state holds the
    command twice)."""
    database = str(tmp_path / "gc.db")
    store = start_store_actor(actor_system, database)
    epoch = time.monotonic_ns()
    first = pipeline_one(actor_system, store, 0, epoch, 1)
    assert isinstance(first, Executed)

    again = pipeline_one(actor_system, store, 1, epoch, 1)  # same event id, decided after it

    assert isinstance(again, AppendFailed) and again.failures == [] and again.epoch == epoch
    assert EventStore(database).stream_version("p") == 1


def test_appends_that_arrive_together_share_one_commit(
    actor_system: Any, base: str, tmp_path: Any
) -> None:
    database = str(tmp_path / "gc.db")
    store = start_store_actor(actor_system, database)
    EventStore(database).append("gc-2", [GcNoted(0)])
    # Twenty appenders' batches reach the actor together; the third expects a stream that exists.
    batches = [[AppendRequest(f"gc-{n}", [GcNoted(n)], NO_STREAM)] for n in range(20)]
    answers = actor_system.ask(actor_system.createActor(Appenders), ("append", store, batches), 30)

    # Each appender got its own answer: one conflict, nineteen stored events.
    assert isinstance(answers[2][0], WrongExpectedVersion)
    assert all(answers[t][0][0].data == GcNoted(t) for t in range(20) if t != 2)
    stats = describe(actor_system, store)
    assert stats["appends"] == 20
    if base == "simple":
        # In-process every batch is in the mailbox before the first flush: one transaction.
        assert stats["commits"] == 1
    # Across processes Thespian hands over one message per acknowledgement, so a single sender's
    # batches trickle in one by one; only concurrent senders share commits there (the multiproc
    # runtime has each aggregate commit its own appends for that reason).
    reader = EventStore(database)
    assert reader.last_position() == 20  # the conflicting batch stored nothing
    assert reader.stream_version("gc-2") == 1


def test_concurrent_appenders_from_threads(multiproc_system: Any, tmp_path: Any) -> None:
    """Eight threads, each with its own endpoint, append to their own streams at once."""
    database = str(tmp_path / "gc.db")
    store = start_store_actor(multiproc_system, database)
    errors: list[BaseException] = []

    def appender(number: int) -> None:
        from thespian.actors import ExternalContext

        context = ExternalContext(multiproc_system._systemBase.external_clone())
        try:
            for index in range(25):
                request = AppendRequest(f"t-{number}", [GcNoted(index)], index)
                context.tell(store, AppendBatch([request], (number, index)))
                reply = context.listen(10)
                assert isinstance(reply, AppendResults) and reply.tag == (number, index)
                assert isinstance(reply.results[0], list), reply.results[0]
        except BaseException as exc:
            errors.append(exc)
        finally:
            context.exit_clone()

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert describe(multiproc_system, store)["appends"] == 200
    reader = EventStore(database)
    assert [reader.stream_version(f"t-{n}") for n in range(8)] == [25] * 8
    assert [e.version for e in reader.read_stream("t-3")] == list(range(1, 26))
