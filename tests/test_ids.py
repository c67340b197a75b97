"""Time-ordered ids (``backstage_actors._ids``): the layout, and event ids derived from commands."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import pytest

from backstage_actors._ids import event_id, new_id, request_id


def uuid_module_event_id(command_id: str, index: int) -> str:
    """The derivation spelled with the uuid module, as earlier versions computed it."""
    base = uuid.UUID(command_id)
    return str(uuid.UUID(int=(base.int & ~0xFFFF) | ((base.int + index + 1) & 0xFFFF)))


def test_new_ids_are_version_7_uuids_in_time_order() -> None:
    ids = [new_id() for _ in range(2000)]

    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [str(u) for u in parsed] == ids
    assert len(set(ids)) == len(ids)
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)


@pytest.mark.parametrize("index", [0, 1, 7, 0xFFFF, 0x1_0000 + 3])
def test_event_ids_are_those_earlier_versions_derived(index: int) -> None:
    """An event id must not change between versions: a command retried across an upgrade
    would otherwise store its events twice."""
    for command_id in [new_id() for _ in range(200)] + [str(uuid.uuid4()).upper()]:
        assert event_id(command_id, index) == uuid_module_event_id(command_id, index)


def test_a_command_id_that_is_no_uuid_gets_name_based_event_ids() -> None:
    first = event_id("order-17", 0)

    assert uuid.UUID(first).version == 5
    assert event_id("order-17", 0) == first
    assert event_id("order-17", 1) != first


def test_request_ids_do_not_repeat() -> None:
    ids = [request_id() for _ in range(10_000)]

    assert len(set(ids)) == len(ids)


def _request_ids_after_fork(queue: Any) -> None:
    queue.put([request_id() for _ in range(3)])


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    """Actor processes are forked: they must not repeat the ids of the process they came from."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_request_ids_after_fork, args=(queue,))
    child.start()
    theirs = queue.get(timeout=30)
    child.join(30)

    ours = [request_id() for _ in range(3)]
    assert not set(theirs) & set(ours)
    assert theirs[0].split("-")[:2] != ours[0].split("-")[:2]
