"""A command the aggregate does not handle fails (``UnhandledCommand``); ``[]`` means no events.

Before, ``execute`` returning None (a ``match`` without a ``case`` for the command) succeeded
silently with no events.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest

from backstage_actors import (
    Aggregate,
    Application,
    BackstageError,
    DispatchResult,
    Router,
    UnhandledCommand,
)
from backstage_actors.testing import given


@attrs.frozen
class SwitchOn:
    lamp_id: str


@attrs.frozen
class SwitchOff:
    lamp_id: str


@attrs.frozen
class Check:
    lamp_id: str


@attrs.frozen
class SwitchedOn:
    lamp_id: str


class Lamp(Aggregate):
    def __init__(self) -> None:
        self.on = False

    def execute(self, command: Any) -> Any:
        match command:
            case SwitchOn(lamp_id):
                return SwitchedOn(lamp_id)
            case Check():
                return []  # explicitly: no events
        # SwitchOff is routed here but has no case: execute returns None.

    def apply(self, event: Any) -> None:
        self.on = True


class Mute(Aggregate):
    """Overrides nothing: the default execute handles no command."""


def make_app() -> Application:
    router = Router().dispatch([SwitchOn, SwitchOff, Check], to=Lamp, identity="lamp_id")
    return Application("lamps", router=router)


def test_an_unhandled_command_fails_naming_aggregate_command_and_stream(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(SwitchOn("hall"))

    with pytest.raises(UnhandledCommand) as caught:
        system.dispatch(SwitchOff("hall"))

    error = caught.value
    assert isinstance(error, BackstageError)
    assert (error.aggregate, error.command, error.stream_id) == ("Lamp", "SwitchOff", "Lamp-hall")
    assert str(error) == (
        "Lamp does not handle SwitchOff (stream Lamp-hall): its execute returned None "
        "(return [] for no events)"
    )
    # Nothing stored, and the aggregate keeps serving.
    assert [e.type for e in system.store.read_stream("Lamp-hall")] == ["SwitchedOn"]
    assert system.dispatch(SwitchOn("hall")).version == 2


def test_an_empty_list_is_explicitly_no_events(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(SwitchOn("desk"))

    result = system.dispatch(Check("desk"))

    assert isinstance(result, DispatchResult)
    assert (result.version, result.events) == (1, [])


def test_dispatch_many_answers_the_unhandled_one_alone(start_app: Any) -> None:
    system = start_app(make_app())

    results = system.dispatch_many([SwitchOn("a"), SwitchOff("a"), Check("a"), SwitchOn("b")])

    assert isinstance(results[0], DispatchResult) and results[0].version == 1
    assert isinstance(results[1], UnhandledCommand)
    assert isinstance(results[2], DispatchResult) and results[2].events == []
    assert isinstance(results[3], DispatchResult) and results[3].stream_id == "Lamp-b"


def test_given_reports_an_unhandled_command() -> None:
    given([], aggregate=Lamp).when(SwitchOff("x")).then_raises(UnhandledCommand, "SwitchOff")
    given([], aggregate=Lamp).when(Check("x")).then([])
    given([], aggregate=Mute).when(SwitchOn("x")).then_raises(UnhandledCommand, "Mute")


def test_given_with_a_router_names_the_stream_as_the_runtime_does() -> None:
    router = make_app().router
    given([], router=router).when(SwitchOff("hall")).then_raises(
        UnhandledCommand, r"does not handle SwitchOff \(stream Lamp-hall\)"
    )


def test_unhandled_command_survives_pickling() -> None:
    # It crosses process boundaries on multiproc.
    error = pickle.loads(pickle.dumps(UnhandledCommand("Lamp", "SwitchOff", "Lamp-hall")))
    assert (error.aggregate, error.command, error.stream_id) == ("Lamp", "SwitchOff", "Lamp-hall")
