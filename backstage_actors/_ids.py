"""Identifiers that sort by time, so that the event store's unique index on event ids grows at
its end instead of being written at random places (what makes appends slower as the store grows).

``new_id()`` is a UUID in the version 7 layout: 48 bits of Unix milliseconds, then random bits.
An event's id is derived from its command's id (``event_id(command_id, index)``), so a command
named again after an uncertain outcome produces the same event ids, and the store notices.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid

__all__ = ["event_id", "new_id", "request_id"]

_NAMESPACE = uuid.UUID("6f1d3c1e-8a52-4a8e-9b67-3f0d8f0b7a11")
_VERSION_7 = 0x7 << 76
_VARIANT = 0x2 << 62
_KEEP = ~(0xF << 76) & ~(0x3 << 62) & ((1 << 128) - 1)
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _text(value: int) -> str:
    """``str(uuid.UUID(int=value))`` without building the UUID."""
    hex = f"{value:032x}"
    return f"{hex[:8]}-{hex[8:12]}-{hex[12:16]}-{hex[16:20]}-{hex[20:]}"


def new_id() -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return _text(value & _KEEP | _VERSION_7 | _VARIANT)


def event_id(command_id: str, index: int) -> str:
    """The id of a command's ``index``-th event: next to the command's id when that is a UUID
    (only the last 16 bits differ), a name-based UUID otherwise."""
    if _CANONICAL.match(command_id):  # what new_id() makes: its last 4 digits are those 16 bits
        return f"{command_id[:32]}{(int(command_id[32:], 16) + index + 1) & 0xFFFF:04x}"
    try:
        number = uuid.UUID(command_id).int
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, f"{command_id}/{index}"))
    return _text((number & ~0xFFFF) | ((number + index + 1) & 0xFFFF))


def _prefix() -> str:
    return f"{os.getpid():x}-{int.from_bytes(os.urandom(4), 'big'):08x}-"


_PROCESS = _prefix()
_counter = itertools.count(1)


def _forked() -> None:
    """A forked child (every actor process on multiproc) takes its own prefix."""
    global _PROCESS
    _PROCESS = _prefix()


os.register_at_fork(after_in_child=_forked)


def request_id() -> str:
    """An id that pairs an answer with its request: unique in this process (and beyond it)."""
    return f"{_PROCESS}{next(_counter)}"
