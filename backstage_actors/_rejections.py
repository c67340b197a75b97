"""Recording refused and failed commands for ``backstage trace``: the one hook the aggregate
runtime calls when it answers (``note_refusals``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .command import CommandItem, DispatchResult
from .store import EventStore

__all__ = ["note_refusals"]

_log = logging.getLogger("backstage_actors.history")


def note_refusals(
    store: EventStore, stream_id: str, items: Iterable[CommandItem], answers: Mapping[str, Any]
) -> None:
    """Record every item of ``items`` whose answer is an error (a rejection, a failure), with its
    metadata. Recording is best effort: a store that cannot take it loses the record, never the
    answer (a warning is logged)."""
    for item in items:
        answer = answers.get(item.request_id)
        if answer is None or isinstance(answer, DispatchResult):
            continue
        if not isinstance(answer, BaseException):
            continue
        try:
            store.record_rejection(stream_id, item.metadata, answer)
        except Exception as exc:  # a read-only or full database, say: the answer still goes
            _log.warning(
                "%s: a refused command was not recorded: %s: %s", stream_id, type(exc).__name__, exc
            )
