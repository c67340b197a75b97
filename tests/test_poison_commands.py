"""Aggregate and subscriber code that raises what is not an ``Exception`` (a ``BaseException``
of its own; ``SystemExit`` in a daemon's actor process) fails that command, or that event,
alone: the shard and every other aggregate in it keep serving, and so does the subscriber.
(Before, such a command took down its multiproc shard, and the shard restarted only to meet it
again.) In-process, ``SystemExit`` (a signal handler's ``sys.exit()``) and Ctrl-C stop the work
under way and reach the caller, as they would any other code of the process."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors import AggregateFailed, Middleware
from backstage_actors.command import DispatchResult

from .dispatch_domain import router_node
from .poison_domain import SUBSCRIBERS, PsnDo, PsnOwnBase, PsnPickled, make_app, raise_for


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
    batch = [PsnDo("px-2", 2), PsnDo("px-1", 5, **{where: mode}), PsnDo("px-3", 3)]

    if base == "simple" and mode == "sysexit":  # the process is told to stop: the caller hears
        with pytest.raises(SystemExit):
            system.dispatch_many(batch, timeout=20.0)
        assert system.dispatch(PsnDo("px-1", 4), timeout=20.0).version == 2  # nothing lost kept
        assert [e.data.amount for e in system.store.read_stream("PsnBox-px-1")] == [1, 4]
        return
    answers = system.dispatch_many(batch, timeout=20.0)

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
    if base == "simple" and mode == "sysexit":
        _a_signal_s_exit_reaches_the_caller_in_process(system, subscriber)
        return
    bad = system.dispatch(PsnDo("ph-1", 1, handle=mode)).position
    good = system.dispatch(PsnDo("ph-2", 2)).position
    system.wait_for(good, handlers=[subscriber], deadline_in=20.0)

    letters = system.store.dead_letters(subscriber)
    assert [(d.position, d.status) for d in letters] == [(bad, "parked")]
    assert ("PsnOwnBase" if mode == "base" else "SystemExit") in letters[0].error_type


def _a_signal_s_exit_reaches_the_caller_in_process(system: Any, subscriber: str) -> None:
    """SystemExit raised once in the subscriber's code (where a signal handler's sys.exit()
    lands): it reaches whoever called into the system, and the event is not parked but
    delivered again on the next call."""
    mode = f"{subscriber}-once"
    with pytest.raises(SystemExit):  # (the dispatch runs the subscribers in-process: or the wait)
        position = system.dispatch(PsnDo("ps-1", 1, handle=mode)).position
        system.wait_for(position, handlers=[subscriber], deadline_in=20.0)
    good = system.dispatch(PsnDo("ps-2", 2)).position
    system.wait_for(good, handlers=[subscriber], deadline_in=20.0)
    assert system.store.dead_letters(subscriber) == []


class _CtrlCBefore(Middleware):
    """Ctrl-C (or a BaseException of the application's own) as the caller's middleware runs
    for the command whose box is ``box_id``."""

    def __init__(self, box_id: str, mode: str) -> None:
        self.box_id, self.mode = box_id, mode

    def before_dispatch(self, pipeline: Any) -> None:
        if pipeline.command.box_id == self.box_id:
            if self.mode == "ctrl-c":
                raise KeyboardInterrupt
            raise_for(self.mode)


def _stored(system: Any, *boxes: str) -> list[int]:
    return [e.data.amount for box in boxes for e in system.store.read_stream(f"PsnBox-{box}")]


def test_ctrl_c_in_the_caller_s_middleware_stops_dispatch_many_and_sends_nothing(
    start_app: Any,
) -> None:
    """It was one entry of the answers, and the rest of the batch was sent."""
    system = start_app(make_app(middleware=[_CtrlCBefore("pc-2", "ctrl-c")]))
    batch = [PsnDo("pc-1", 1), PsnDo("pc-2", 2), PsnDo("pc-3", 3)]
    with pytest.raises(KeyboardInterrupt):
        system.dispatch_many(batch, timeout=20.0)
    assert _stored(system, "pc-1", "pc-2", "pc-3") == []
    assert system.dispatch(PsnDo("pc-1", 4), timeout=20.0).version == 1  # still serving


def test_a_base_exception_of_the_caller_s_middleware_is_its_command_s_answer(
    start_app: Any,
) -> None:
    system = start_app(make_app(middleware=[_CtrlCBefore("pb-2", "base")]))
    answers = system.dispatch_many([PsnDo("pb-1", 1), PsnDo("pb-2", 2)], timeout=20.0)
    assert isinstance(answers[0], DispatchResult) and isinstance(answers[1], PsnOwnBase)
    assert _stored(system, "pb-1", "pb-2") == [1]


def test_ctrl_c_while_a_batch_is_pickled_stops_dispatch_many(start_app: Any, base: str) -> None:
    """Without middleware: a Ctrl-C that lands as a command is pickled for its trip (multiproc)."""
    if base == "simple":
        pytest.skip("in-process commands are not pickled on their way")
    system = start_app(make_app())
    with pytest.raises(KeyboardInterrupt):
        system.dispatch_many([PsnDo("pk-1", 1), PsnPickled("pk-2", "ctrl-c")], timeout=20.0)
    answers = system.dispatch_many([PsnDo("pk-1", 1), PsnPickled("pk-2", "base")], timeout=20.0)
    assert isinstance(answers[0], DispatchResult) and isinstance(answers[1], PsnOwnBase)
    assert _stored(system, "pk-1") == [1]
