"""A field typed ``float | str`` takes an int as a ``float`` field does (5 is 5.0), on dispatch and
on replay; before, the union refused it (``invalid value for type, expected float | str``), so an
event with such a field and an int could not be stored at all."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors import EventStore
from backstage_actors.command import command_from_data
from backstage_actors.errors import SerializationError

from .value_bounds_domain import VbReadingSet, VbSetReading, make_app


def test_an_int_for_a_float_or_str_field_is_a_float_from_json() -> None:
    command = command_from_data(VbSetReading, {"meter_id": "m", "reading": 5})
    assert command == VbSetReading("m", 5.0) and type(command.reading) is float
    assert command_from_data(VbSetReading, {"meter_id": "m", "reading": "n/a"}).reading == "n/a"
    # What a float field refuses, this one refuses too, naming the field.
    for bad in (True, None, [5], 10**400):
        with pytest.raises(SerializationError, match=r"\$\.reading"):
            command_from_data(VbSetReading, {"meter_id": "m", "reading": bad})


def test_an_int_for_a_float_or_str_field_is_dispatched_and_replayed(
    start_app: Any, app_database: str
) -> None:
    app = make_app()
    system = start_app(app)
    [first] = system.dispatch(VbSetReading("m-1", 5)).events
    assert first.data == VbReadingSet("m-1", 5, 5.0)
    system.dispatch(VbSetReading("m-1", "n/a"))
    system.stop()  # the next command rebuilds the meter from the store
    system = start_app(app)
    [event] = system.dispatch(VbSetReading("m-1", 2.5)).events
    assert event.data == VbReadingSet("m-1", 2.5, 7.5)
    system.stop()
    with EventStore(app_database) as store:
        readings = [e.data.reading for e in store.read_stream("VbMeter-m-1")]
    assert readings == [5.0, "n/a", 2.5]
