"""Where two of 2026-12-05's fixes met (found by helper-34's review of their merge; each test
failed before its fix): a named command holding a set sent again, unions whose members are
stored as the same JSON scalar, and a batch that fits by its commands but not with their
metadata."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import EventStore, SerializationError

from .integration_edges_domain import (
    RvzBook,
    RvzFelt,
    RvzLoose,
    RvzMood,
    RvzSeat,
    RvzStamped,
    make_app,
)


def _same_set_in_two_orders() -> tuple[frozenset[RvzSeat], frozenset[RvzSeat]]:
    """Two equal sets of seats that iterate in different orders (as the same set does in two
    processes: an attrs instance's hash starts from a string's, which each process salts)."""
    seats = [RvzSeat(row, col) for row in range(4) for col in range(4)]
    for a, b in itertools.combinations(seats, 2):
        one, two = frozenset([a, b]), frozenset([b, a])
        if list(one) != list(two):
            return one, two
    raise AssertionError("no two seats share a slot")  # (1 in 8 pairs does)


def test_a_named_command_with_a_set_is_answered_when_sent_again(tmp_path: Path) -> None:
    """A set's items that do not sort (attrs values, unstructured to dicts) were written in
    iteration order: the digest of a named command then depends on the order the set happens
    to iterate in, and the same command sent again under its name (a retry, from another
    process) is refused as 'another command' instead of being answered from the store."""
    one, two = _same_set_in_two_orders()
    assert one == two
    system = make_app().start(base="simple", database=str(tmp_path / "shows.db"))
    try:
        first = system.dispatch(RvzBook("s-1", one), metadata={"command_id": "book-1"})
        again = system.dispatch(RvzBook("s-1", two), metadata={"command_id": "book-1"})
        assert (again.version, again.command_id) == (first.version, "book-1")
        assert [e.version for e in system.store.read_stream("RvzShow-s-1")] == [1]
    finally:
        system.stop()


@pytest.mark.parametrize(
    "event",
    [
        RvzFelt("f-1", RvzMood.CALM),
        RvzStamped("t-1", datetime(2026, 12, 5, 3, 0, tzinfo=UTC)),
    ],
    ids=["enum-or-str", "datetime-or-str"],
)
def test_an_event_is_never_read_back_as_another_value(tmp_path: Path, event: Any) -> None:
    """A union of a scalar and a type stored as that scalar (an enum, a datetime, stored as a
    string) was refused at append; the union passthrough took it, and read the value back as
    the string: the event re-read (an aggregate's replay, a handler) is not the one appended."""
    with contextlib.closing(EventStore(str(tmp_path / "moods.db"))) as store:
        try:
            store.append("RvzBox-x", [event])
        except SerializationError:
            return  # refused, as it was: nothing is stored that reads back as something else
        read = [e.data for e in store.read_stream("RvzBox-x")]
        assert read == [event], f"stored, and read back as {read}"


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("base", ["multiproc"])
def test_commands_that_fit_one_message_but_not_with_their_metadata(
    start_app: Any, base: str
) -> None:
    """dispatch_many splits its messages by the commands' pickled sizes alone: commands that
    together just fit, with the metadata each may carry (up to 64 KiB of JSON), make a message
    past what the receiving transport takes: it is refused unread, and every command in it
    times out as 'may or may not have been executed'."""
    from backstage_actors.command import MAX_SENDABLE, check_sendable

    system = start_app(make_app())
    count = 40
    each = MAX_SENDABLE // count - 1000  # characters of payload per command
    commands = [RvzLoose(f"fit-{n}", _strings(f"{n:02d}", each)) for n in range(count)]
    assert sum(check_sendable(command) for command in commands) <= MAX_SENDABLE  # one message
    notes = [{"note": f"{n:02d}" + "m" * 60_000} for n in range(count)]  # (distinct strings)
    answers = system.dispatch_many(commands, metadata=notes, timeout=90.0)
    assert [type(answer).__name__ for answer in answers] == ["DispatchResult"] * count


def _strings(tag: str, characters: int) -> list[str]:
    """Distinct strings (pickle would share equal ones) of ``characters`` in all, none longer
    than a command's string may be."""
    chunk = 900_000
    sizes = [chunk] * (characters // chunk) + [characters % chunk]
    return [f"{tag}-{i:03d}" + "x" * (size - 7) for i, size in enumerate(sizes) if size > 7]
