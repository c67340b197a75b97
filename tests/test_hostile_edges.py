"""Hostile input through the public API (found by helper-32's review; each test failed before
its fix): exceptions whose str() raises, middleware that raises, upcasters that raise, classes
one side cannot load, commands that cannot travel or are too big for one message, fields of
sets, int-keyed dicts and scalar unions, dispatch_async after a fork, short-lived threads, and
one handler named as a string."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import (
    AggregateFailed,
    Application,
    CommandRejected,
    EventStore,
    Middleware,
    Router,
    SerializationError,
    StoredEventError,
    UnregisteredCommand,
)
from backstage_actors.command import DispatchResult, command_from_data

from .conftest import free_port, wait_until
from .hostile_edges_domain import (
    RvqBox,
    RvqLabelled,
    RvqLoose,
    RvqNewer,
    RvqOdd,
    RvqPut,
    RvqPutted,
    RvqRecorder,
    RvqRenamed,
    RvqRich,
    RvqScored,
    RvqTagged,
    make_app,
    make_handled_app,
)
from .test_cli import BACKSTAGE
from .test_client_edges import _report


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


class RvqMiddleware(RvqRecorder, Middleware):
    pass


def test_a_middleware_raising_after_one_command_of_a_batch_loses_no_other_answer(
    start_app: Any, base: str
) -> None:
    recorder = RvqMiddleware()
    system = start_app(make_app(middleware=[recorder]))
    answers = system.dispatch_many(
        [RvqPut("mw-1", 1), RvqPut("boom-after-1", 2), RvqPut("mw-2", 3)]
    )
    assert [type(answer).__name__ for answer in answers] == [
        "DispatchResult",
        "RuntimeError",
        "DispatchResult",
    ]
    assert answers[0].version == 1 and answers[2].version == 1  # type: ignore[union-attr]
    assert ("after", "mw-2") in recorder.calls  # its own hooks still ran
    assert system.dispatch(RvqPut("mw-1", 4)).version == 2


def test_a_middleware_raising_before_dispatch_is_heard_by_after_failure(start_app: Any) -> None:
    recorder = RvqMiddleware()
    system = start_app(make_app(middleware=[recorder]))
    with pytest.raises(RuntimeError, match="before_dispatch failed"):
        system.dispatch(RvqPut("boom-before-1", 1))
    # As in dispatch_many, and as for a halt: the failure hooks hear of it.
    assert recorder.calls[-1] == ("failure", "boom-before-1")
    assert system.dispatch_many([RvqPut("boom-before-2", 1)])[0].args == ("before_dispatch failed",)
    assert recorder.calls[-1] == ("failure", "boom-before-2")
    assert system.dispatch(RvqPut("mw-3", 1)).version == 1


@pytest.mark.process
def test_an_upcaster_that_fails_on_a_stored_payload_makes_that_row_unreadable(
    tmp_path: Path,
) -> None:
    database = tmp_path / "events.db"
    with contextlib.closing(EventStore(str(database))) as store:
        store.append("RvqBox-u1", [RvqPutted("u1", 1), RvqRenamed("u1", "a"), RvqPutted("u1", 2)])
    # The middle row as an older release wrote it: version 1, without the field its upcaster reads.
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE events SET schema_version = 1 WHERE position = 2")

    with contextlib.closing(EventStore(str(database))) as store:
        with pytest.raises(StoredEventError, match=r"position 2.*upcaster.*KeyError") as caught:
            list(store.read_stream("RvqBox-u1"))
        assert caught.value.position == 2
        skipped: list[StoredEventError] = []
        shown = list(store.read_all(on_unreadable=skipped.append))
        assert [event.position for event in shown] == [1, 3]
        assert [error.position for error in skipped] == [2]

    result = subprocess.run(
        [BACKSTAGE, "events", "--db", str(database)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: skipped the event at position 2")
    assert [int(line.split()[0]) for line in result.stdout.splitlines()] == [1, 3]


CLIENT_ONLY = """
import attrs


@attrs.frozen
class RvqClientOnly:
    box_id: str
    amount: int
"""


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_command_class_the_daemon_cannot_load_is_unregistered_at_once(
    start_app: Any, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    system = start_app(make_app(), port=port)
    system.dispatch(RvqPut("cl-1", 1))
    # A newer client: a command class of a module the running system's processes cannot import.
    (tmp_path / "rvq_client_only_module.py").write_text(CLIENT_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rvq_client_only_module", raising=False)
    from rvq_client_only_module import RvqClientOnly  # type: ignore[import-not-found]

    newer = Router()
    newer.dispatch([RvqPut, RvqClientOnly], to=RvqBox, identity="box_id")
    with Application("review32", router=newer).attach(port=port) as client:
        started = time.monotonic()
        with pytest.raises(UnregisteredCommand, match=r"RvqClientOnly.*cannot load"):
            client.dispatch(RvqClientOnly("cl-1", 5), timeout=8.0)
        answers = client.dispatch_many(
            [RvqPut("cl-2", 1), RvqClientOnly("cl-2", 5), RvqPut("cl-3", 1)], timeout=8.0
        )
        assert time.monotonic() - started < 8.0  # answered, not timed out
        assert [type(answer).__name__ for answer in answers] == [
            "DispatchResult",
            "UnregisteredCommand",
            "DispatchResult",
        ]
        assert client.dispatch(RvqPut("cl-1", 2)).version == 2
        # Such a value in a command's metadata travels as the JSON it is stored as.
        result = client.dispatch(
            RvqPut("cl-1", 3), metadata={"by": RvqClientOnly("me", 1)}, timeout=8.0
        )
        assert result.version == 3
        assert result.events[0].metadata["by"] == {"box_id": "me", "amount": 1}
    sys.modules.pop("rvq_client_only_module", None)


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_command_that_cannot_travel_fails_alone_with_a_serialization_error(
    start_app: Any, base: str
) -> None:
    system = start_app(make_app())
    with pytest.raises(SerializationError, match=r"\$\.payload.*cannot pickle") as caught:
        system.dispatch(RvqLoose("lo-1", threading.Lock()))
    assert caught.value.paths == ["$.payload"]
    answers = system.dispatch_many(
        [RvqPut("lo-2", 1), RvqLoose("lo-1", threading.Lock()), RvqPut("lo-3", 1)], batch_size=1
    )
    assert [type(answer).__name__ for answer in answers] == [
        "DispatchResult",
        "SerializationError",
        "DispatchResult",
    ]
    assert system.dispatch(RvqLoose("lo-1", [1, 2])).version == 1


SERVER_ONLY = """
import attrs


@attrs.frozen
class RvqServerOnlyEvent:
    box_id: str
    amount: int
"""


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_an_answer_whose_event_class_the_caller_cannot_load_still_arrives(
    start_app: Any, base: str, tmp_path: Path
) -> None:
    # The running system records an event of a module its client cannot import (the client
    # runs an older release): the command is stored, and its caller must hear so.
    (tmp_path / "rvq_server_only.py").write_text(SERVER_ONLY)
    assert "rvq_server_only" not in sys.modules
    system = start_app(make_app())
    started = time.monotonic()
    result = system.dispatch(RvqNewer("nw-1", str(tmp_path)), timeout=8.0)
    assert time.monotonic() - started < 8.0
    assert (result.stream_id, result.version) == ("RvqNewerBox-nw-1", 1)
    [event] = result.events
    assert event.type == "RvqServerOnlyEvent"
    assert type(event.data).__name__ == "UnloadedEvent"  # (store.records)
    assert "rvq_server_only" in event.data.error
    assert "rvq_server_only" not in sys.modules
    assert system.dispatch(RvqPut("nw-1", 1)).version == 1


def megabytes(tag: str, count: int) -> list[str]:
    """``count`` distinct strings of about 1 MB (pickle would share equal ones)."""
    return [f"{tag}-{index:06d}" + "x" * 999_000 for index in range(count)]


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("base", ["multiproc"])
def test_commands_past_what_one_message_holds(start_app: Any, base: str) -> None:
    system = start_app(make_app())
    # One command larger than a message between processes may be: refused at once, unsent.
    started = time.monotonic()
    with pytest.raises(SerializationError, match="bytes pickled, more than a message"):
        system.dispatch(RvqLoose("big-0", megabytes("0", 300)), timeout=60.0)
    assert time.monotonic() - started < 30.0
    # Three that each fit, and together would not: sent in several messages, all answered.
    commands = [RvqLoose(f"big-{n}", megabytes(str(n), 95)) for n in (1, 2, 3)]
    answers = system.dispatch_many(commands, timeout=200.0)
    assert [type(answer).__name__ for answer in answers] == ["DispatchResult"] * 3
    assert system.dispatch(RvqPut("big-0", 1)).version == 1


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_a_command_of_two_hundred_megabytes_travels_in_linear_time(
    start_app: Any, base: str
) -> None:
    """Thespian's transport copied all that was left of a frame after each partial send, and all
    that had come after each read (bytes: 80 s each way for a frame of 250 MB, quadratic): the
    frame now goes out through a view and comes in to a buffer that grows in place."""
    system = start_app(make_app())
    command = RvqLoose("lin-1", megabytes("lin", 200))
    started = time.monotonic()
    assert system.dispatch(command, timeout=120.0).version == 1
    took = time.monotonic() - started
    assert took < 10.0, f"a command of 200 MB took {took:.1f} s to travel"


def test_a_handler_raising_an_exception_whose_str_fails_parks_the_event(
    start_app: Any, base: str
) -> None:
    system = start_app(make_handled_app())
    system.dispatch(RvqPut("hs-1", 13))  # its handler raises RvqNoStr
    last = system.dispatch(RvqPut("hs-1", 1)).position
    # The default policy: a few retries, then the event is parked and the handler goes on.
    assert system.settle(timeout=25.0) >= last
    [letter] = system.store.dead_letters()
    assert (letter.subscriber, letter.position, letter.error_type) == ("rvq-fussy", 1, "RvqNoStr")
    assert system.dispatch(RvqPut("hs-1", 2)).version == 3


def test_an_event_with_integer_keys_is_stored_and_read_back(tmp_path: Path) -> None:
    event = RvqScored("sc-1", {1: 10, -2: 20})
    with contextlib.closing(EventStore(str(tmp_path / "scores.db"))) as store:
        [recorded] = store.append("RvqBox-sc-1", [event])
        assert recorded.data == event
        assert [e.data for e in store.read_stream("RvqBox-sc-1")] == [event]
    # From JSON too, where every key is a string: an integer written out is taken as one.
    assert (
        command_from_data(RvqScored, {"box_id": "sc-1", "by_level": {"1": 10, "-2": 20}}) == event
    )
    with pytest.raises(SerializationError, match=r"by_level\['x'\]"):
        command_from_data(RvqScored, {"box_id": "sc-1", "by_level": {"x": 1}})


def test_an_event_with_a_set_field_is_stored_and_read_back(tmp_path: Path) -> None:
    event = RvqTagged("tg-1", frozenset({"vip", "new"}))
    with contextlib.closing(EventStore(str(tmp_path / "tags.db"))) as store:
        [recorded] = store.append("RvqBox-tg-1", [event])
        assert recorded.data == event
        assert [e.data for e in store.read_stream("RvqBox-tg-1")] == [event]
    assert command_from_data(RvqTagged, {"box_id": "tg-1", "tags": ["new", "vip"]}) == event
    with pytest.raises(SerializationError, match=r"\$\.tags"):  # a string is no array of tags
        command_from_data(RvqTagged, {"box_id": "tg-1", "tags": "vip"})


def test_an_event_with_a_union_of_json_types_is_stored_and_read_back(tmp_path: Path) -> None:
    events = [RvqLabelled("lb-1", 7), RvqLabelled("lb-1", "seven")]
    with contextlib.closing(EventStore(str(tmp_path / "labels.db"))) as store:
        store.append("RvqBox-lb-1", events)
        assert [e.data for e in store.read_stream("RvqBox-lb-1")] == events
    assert command_from_data(RvqLabelled, {"box_id": "lb-1", "label": "seven"}) == events[1]
    with pytest.raises(SerializationError, match=r"\$\.label"):
        command_from_data(RvqLabelled, {"box_id": "lb-1", "label": [7]})


def _forked_async_dispatch(client: Any, box_id: str) -> tuple[int, int]:
    """Fork a worker that awaits ``client.dispatch_async`` (bounded by asyncio at 10 s, as the
    call's own timeout only runs once a thread takes it); its pid and the read end of its pipe."""
    import asyncio
    import json
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    try:
        out: dict[str, Any] = {}
        try:

            async def main() -> Any:
                call = client.dispatch_async(RvqPut(box_id, 1), timeout=5.0)
                return await asyncio.wait_for(call, 10.0)

            out["version"] = asyncio.run(main()).version
        except BaseException as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write, json.dumps(out).encode())
    finally:
        os._exit(0)


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_dispatch_async_in_a_forked_worker(start_app: Any, base: str) -> None:
    """A pre-forking server's master used dispatch_async (its pool has a thread, idle), then
    forked: a worker's dispatch_async must run, not wait in a pool with no thread."""
    import asyncio

    port = free_port()
    app = make_app()
    start_app(app, port=port)
    client = app.attach(port=port)
    try:
        assert asyncio.run(client.dispatch_async(RvqPut("fk-0", 1))).version == 1
        report = _report(*_forked_async_dispatch(client, "fk-1"))
        assert report == {"version": 1}, report
        assert asyncio.run(client.dispatch_async(RvqPut("fk-0", 1))).version == 2
    finally:
        client.stop()


def test_a_strong_dispatch_naming_one_handler_as_a_string_waits_for_it(start_app: Any) -> None:
    system = start_app(make_handled_app())
    result = system.dispatch(RvqPut("hn-1", 1), consistency="strong", handlers="rvq-fussy")
    assert result.version == 1
    system.wait_for(result.position, handlers="rvq-fussy")


@pytest.mark.process
@pytest.mark.parametrize("base", ["multiproc"])
def test_an_attached_handle_used_from_short_lived_threads_keeps_no_sockets(
    start_app: Any, base: str
) -> None:
    """A server running each request in a thread of its own (socketserver.ThreadingMixIn):
    what a finished thread opened to reach the system is let go."""
    import os

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    port = free_port()
    app = make_app()
    start_app(app, port=port)
    with app.attach(port=port) as client:
        client.dispatch_many([RvqPut("th-0", 1), RvqPut("th-1", 1)])
        before = open_files()
        answers: list[Any] = []
        for n in range(60):  # each a request of its own, in a new thread
            request = threading.Thread(
                target=lambda n=n: answers.append(
                    client.dispatch_many([RvqPut(f"th-{n % 2}", 1), RvqPut("th-2", 1)])
                )
            )
            request.start()
            request.join()
        assert len(answers) == 60
        assert all(type(a).__name__ == "DispatchResult" for many in answers for a in many)
        wait_until(lambda: open_files() < before + 10, 10, what=f"open files back near {before}")
