"""Identifiers that sort by time, so that the event store's unique index on event ids grows at
its end instead of being written at random places (what makes appends slower as the store grows).

``new_id()`` is a UUID in the version 7 layout: 48 bits of Unix milliseconds, then random bits.
An event's id is derived from its command's id (``event_id(command_id, index)``), so a command
named again after an uncertain outcome produces the same event ids, and the store notices.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["event_id", "new_id"]

_NAMESPACE = uuid.UUID("6f1d3c1e-8a52-4a8e-9b67-3f0d8f0b7a11")


def new_id() -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def event_id(command_id: str, index: int) -> str:
    """The id of a command's ``index``-th event: next to the command's id when that is a UUID
    (only the last 16 bits differ), a name-based UUID otherwise."""
    try:
        base = uuid.UUID(command_id)
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, f"{command_id}/{index}"))
    return str(uuid.UUID(int=(base.int & ~0xFFFF) | ((base.int + index + 1) & 0xFFFF)))
