"""Aggregate and subscriber code that raises what is not an ``Exception`` (a ``BaseException``
of its own, ``SystemExit``) fails that command, or that event, alone: the shard and every
other aggregate in it keep serving, and so does the subscriber, on both bases. (Before, such a
command took down its multiproc shard, and the shard restarted only to meet it again.)"""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors import AggregateFailed
from backstage_actors.command import DispatchResult

from .dispatch_domain import router_node
from .poison_domain import SUBSCRIBERS, PsnDo, make_app


def shards(system: Any) -> list[tuple[Any, ...]]:
    return [(s["name"], s.get("pid"), s["restarts"]) for s in router_node(system)["children"]]


@pytest.mark.parametrize("mode", ["base", "sysexit"])
@pytest.mark.parametrize("where", ["decide", "apply"])
def test_a_base_exception_of_aggregate_code_fails_its_command_alone(
    start_app: Any, base: str, mode: str, where: str
) -> None:
    system = start_app(make_app())
    system.dispatch(PsnDo("px-1", 1))
    before = shards(system)

    answers = system.dispatch_many(
        [PsnDo("px-2", 2), PsnDo("px-1", 5, **{where: mode}), PsnDo("px-3", 3)], timeout=20.0
    )

    assert isinstance(answers[0], DispatchResult), answers[0]
    assert isinstance(answers[1], AggregateFailed), answers[1]
    expected = "PsnOwnBase" if mode == "base" else "SystemExit"
    assert expected in str(answers[1])
    assert isinstance(answers[2], DispatchResult), answers[2]
    assert system.dispatch(PsnDo("px-1", 4), timeout=20.0).version == 2  # rebuilt, not stored
    assert [e.data.amount for e in system.store.read_stream("PsnBox-px-1")] == [1, 4]
    assert shards(system) == before  # no shard died or restarted


@pytest.mark.parametrize("mode", ["base", "sysexit"])
@pytest.mark.parametrize("subscriber", SUBSCRIBERS)
def test_a_base_exception_of_subscriber_code_parks_that_event_alone(
    start_app: Any, base: str, mode: str, subscriber: str
) -> None:
    system = start_app(make_app())
    bad = system.dispatch(PsnDo("ph-1", 1, handle=mode)).position
    good = system.dispatch(PsnDo("ph-2", 2)).position
    system.wait_for(good, handlers=[subscriber], deadline_in=20.0)

    letters = system.store.dead_letters(subscriber)
    assert [(d.position, d.status) for d in letters] == [(bad, "parked")]
    assert ("PsnOwnBase" if mode == "base" else "SystemExit") in letters[0].error_type
