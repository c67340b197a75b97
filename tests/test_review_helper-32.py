"""helper-32's review: hostile input through the public API, each test failing without its fix."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors import AggregateFailed, CommandRejected, SerializationError
from backstage_actors.command import DispatchResult, command_from_data

from .review32_domain import RvqOdd, RvqPut, RvqRich, make_app


def amounts(system: Any, stream_id: str) -> list[int]:
    return [event.data.amount for event in system.store.read_stream(stream_id)]


def test_an_exception_whose_str_fails_is_a_rejection_of_that_command_alone(
    start_app: Any, base: str
) -> None:
    system = start_app(make_app())
    system.dispatch(RvqPut("ns-1", 1))
    answers = system.dispatch_many(
        [RvqPut("ns-2", 2), RvqOdd("ns-1", "nostr"), RvqPut("ns-3", 3)], timeout=8.0
    )
    assert isinstance(answers[0], DispatchResult), answers[0]
    assert isinstance(answers[1], CommandRejected), answers[1]
    assert answers[1].error_type == "RvqNoStr"
    assert isinstance(answers[2], DispatchResult), answers[2]
    with pytest.raises(AggregateFailed, match="RvqNoStr"):
        system.dispatch(RvqOdd("ns-1", "applynostr"), timeout=8.0)
    assert system.dispatch(RvqPut("ns-1", 4), timeout=8.0).version == 2
    assert amounts(system, "RvqBox-ns-1") == [1, 4]


def test_a_command_built_from_json_names_every_bad_field_in_paths() -> None:
    with pytest.raises(SerializationError) as caught:
        command_from_data(
            RvqRich,
            {"box_id": 5, "count": "x", "lines": [{"sku": 1, "qty": 1}], "colour": "green"},
        )
    error = caught.value
    assert error.paths == ["$.box_id", "$.count", "$.lines[0].sku", "$.colour"], error.paths
    for path in error.paths:
        assert path in str(error)
