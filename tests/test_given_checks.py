"""``testing.given`` holds a scenario to what the real system could store: a history event the
store would refuse is refused by ``given`` (every one named), and a command or produced event
the application would refuse is the scenario's error, as ``dispatch`` would raise it. Before, a
test could start from a history no store could ever hold (a dict, a NUL in a text, an integer
past 64 bits) and pass ``then`` with an event the store refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from backstage_actors import Aggregate, EventStore, Router
from backstage_actors.errors import InvalidCommand, SerializationError
from backstage_actors.limits import Limits
from backstage_actors.testing import given


@attrs.frozen
class GvNote:
    pad_id: str
    text: str


@attrs.frozen
class GvNoted:
    pad_id: str
    text: str
    count: int


class GvPad(Aggregate):
    """Echoes what it is told into its event, unchecked: the store is what checks it."""

    def __init__(self) -> None:
        self.count = 0

    def execute(self, command: Any) -> Any:
        return GvNoted(command.pad_id, command.text, self.count + 1)

    def apply(self, event: Any) -> None:
        self.count = getattr(event, "count", self.count + 1)


class GvPlain:
    """Not an attrs class or dataclass: the store refuses it."""

    def __init__(self, pad_id: str) -> None:
        self.pad_id = pad_id


def test_a_history_the_store_would_refuse_is_refused_naming_every_event(
    tmp_path: Path,
) -> None:
    history: list[Any] = [
        GvNoted("p", "fine", 1),
        GvPlain("p"),
        GvNoted("p", "nul\x00", 2),
        {"pad_id": "p"},
        GvNoted("p", "fine", 2**63),
    ]
    with pytest.raises(SerializationError) as caught:
        given(history, aggregate=GvPad)
    message = str(caught.value)
    assert message.startswith("given(...): a history the store would refuse: events[1] (GvPlain)")
    assert "events[2] (GvNoted): GvNoted: $.text: a NUL character at index 3" in message
    assert "events[3] (dict): 'dict' is not an attrs class or dataclass" in message
    assert "events[4] (GvNoted): GvNoted: $.count: 9223372036854775808 is out of range" in message
    assert caught.value.paths == ["events[1]", "events[2].text", "events[3]", "events[4].count"]
    # The same events are what the real store refuses.
    with EventStore(str(tmp_path / "pad.db")) as store:
        for event in history[1:]:
            with pytest.raises(SerializationError):
                store.append("GvPad-p", [event])
        assert store.last_position() == 0


def test_a_history_is_held_to_the_application_s_limits() -> None:
    given([GvNoted("p", "short", 1)], aggregate=GvPad, limits=Limits(max_string_length=5))
    with pytest.raises(SerializationError, match=r"events\[0\] .*\$\.text: a string of 6"):
        given([GvNoted("p", "longer", 1)], aggregate=GvPad, limits=Limits(max_string_length=5))


def test_a_produced_event_the_store_would_refuse_is_the_scenario_s_error() -> None:
    scenario = given([GvNoted("p", "a", 1)], aggregate=GvPad).when(GvNote("p", "b\ud800"))
    scenario.then_raises(SerializationError, r"\$\.text: a lone surrogate")
    with pytest.raises(AssertionError, match="GvNote was rejected: SerializationError"):
        scenario.then(GvNoted("p", "b\ud800", 2))
    assert scenario.state is not None and scenario.state.count == 1  # nothing was applied


def test_a_command_the_application_would_refuse_is_the_scenario_s_error() -> None:
    router = Router()
    router.dispatch([GvNote], to=GvPad, identity="pad_id")
    given(aggregate=GvPad).when(GvNote("p", "x" * 20)).then(GvNoted("p", "x" * 20, 1))
    given(aggregate=GvPad, limits=Limits(max_string_length=10)).when(
        GvNote("p", "x" * 20)
    ).then_raises(SerializationError, r"\$\.text: a string of 20")
    given(router=router).when(GvNote("p", "nul\x00")).then_raises(SerializationError, r"\$\.text")
    given(aggregate=GvPad).when(GvPlain("p")).then_raises(InvalidCommand, "attrs class")


def test_given_does_not_claim_an_event_name_for_the_process() -> None:
    """Two applications tested in one process may each have an event of the same name."""
    first = attrs.make_class("GvOpened", {"pad_id": attrs.field(type=str)}, frozen=True)
    second = attrs.make_class("GvOpened", {"pad_id": attrs.field(type=str)}, frozen=True)
    first.__module__, second.__module__ = "gv_one", "gv_two"
    given([first("p")], aggregate=GvPad)
    given([second("p")], aggregate=GvPad)


def test_a_command_s_bad_identity_is_the_scenario_s_error_too() -> None:
    """The identity is checked as every other field: a refusal kept for ``then_raises``, with
    every bad field named (before, the router's check raised out of ``when`` at once)."""
    router = Router()
    router.dispatch([GvNote], to=GvPad, identity="pad_id")
    given(router=router).when(GvNote("p" * 300, "x")).then_raises(
        InvalidCommand, r"\$\.pad_id: an identity of 300 characters"
    )
    given(router=router).when(GvNote(" ", "x")).then_raises(InvalidCommand, "missing or empty")
    both = given(router=router).when(GvNote("p" * 300, "nul\x00"))
    both.then_raises(SerializationError, r"\$\.text: a NUL")
    assert "$.pad_id: an identity of 300" in str(both.error)
