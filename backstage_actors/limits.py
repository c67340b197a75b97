"""What a command, an event or metadata may hold: text both SQLite and PostgreSQL store, numbers a
64-bit column holds, bounded sizes and nesting.

Every way in (``dispatch``, ``dispatch_many``, the CLI's ``send`` and ``send --file``, the shell)
checks a command here, once, before any actor sees it; an aggregate's events are checked the same
way before they reach the store. A violation is a :class:`SerializationError` (a field's content:
a lone surrogate, a NUL, a string, number or nesting out of bounds, a ``Decimal`` that is not
finite or has more digits than a PostgreSQL ``numeric`` holds) or an
:class:`InvalidCommand` (the identity), naming every bad field path at once::

    app = Application("bank", router=router, limits=Limits(max_string_length=10_000))

The checks walk the data without recursion, so a value nested 50,000 deep is named, not a
``RecursionError``.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from typing import Any

import attrs

from . import _serialization as ser
from .errors import BackstageError, InvalidCommand, SerializationError, StorageError

__all__ = ["DEFAULT_LIMITS", "Limits", "check_command", "check_data", "flat_fits", "problems"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Limits.{attribute.name} must be a positive integer, not {value!r}")


@attrs.frozen
class Limits:
    """Bounds on what commands, events and metadata may hold (defaults suit most applications).

    ``max_identity_length``: characters of an aggregate's identity (its stream id is the class
    name, a dash and the identity). ``max_string_length``: characters of any one string.
    ``min_integer``/``max_integer``: the integer range (a signed 64-bit column's by default: a
    projection writes the number to SQLite or PostgreSQL). ``max_depth``: nesting of lists and
    objects. ``max_metadata_bytes`` and ``max_event_bytes``: JSON size of a command's metadata
    and of one event's data.
    """

    max_identity_length: int = attrs.field(default=256, validator=_positive)
    max_string_length: int = attrs.field(default=1_000_000, validator=_positive)
    min_integer: int = -(2**63)
    max_integer: int = 2**63 - 1
    max_depth: int = attrs.field(default=32, validator=_positive)
    max_metadata_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    max_event_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)


DEFAULT_LIMITS = Limits()
_MAX_REPORTED = 10  # problems named in one error; the rest are counted


def _text_problem(text: str, limits: Limits | None) -> str | None:
    """What makes ``text`` unstorable (or longer than ``limits`` allow), or None; the common
    case costs two C-level scans."""
    if limits is not None and len(text) > limits.max_string_length:
        return f"a string of {len(text):,} characters (at most {limits.max_string_length:,})"
    if "\x00" in text:
        return f"a NUL character at index {text.index(chr(0))} (PostgreSQL text cannot hold it)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"a lone surrogate U+{ord(text[exc.start]):04X} at index {exc.start} "
                "(not valid Unicode: no database stores it)"
            )
    return None


def problems(value: Any, limits: Limits = DEFAULT_LIMITS, path: str = "$") -> list[str]:
    """Every ``"path: what"`` that makes ``value`` (unstructured: dicts, lists, scalars)
    unstorable; empty when all is well. Values of other types are left to the serializer."""
    if type(value) is dict and flat_fits(value, limits):
        return []
    found: list[str] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        kind = type(item)
        if kind is str:
            problem = _text_problem(item, limits)
            if problem:
                found.append(f"{where}: {problem}")
        elif kind is int:
            if not limits.min_integer <= item <= limits.max_integer:
                found.append(f"{where}: {_describe_int(item)} is out of range {_range(limits)}")
        elif kind is float:
            if not math.isfinite(item):
                found.append(f"{where}: {item} is not a finite number")
        elif kind is dict or kind is list or kind is tuple or isinstance(item, (Mapping, list)):
            if depth >= limits.max_depth:
                found.append(f"{where}: nested deeper than {limits.max_depth} levels")
                continue
            if isinstance(item, Mapping):
                children = []
                for key, child in item.items():
                    if type(key) is str:
                        problem = _text_problem(key, None)
                        if problem:
                            found.append(f"{where}[{key!r:.40}]: a key holds {problem}")
                            continue
                    children.append((child, f"{where}.{key}", depth + 1))
                stack.extend(reversed(children))
            else:
                stack.extend(
                    (child, f"{where}[{index}]", depth + 1)
                    for index, child in reversed(list(enumerate(item)))
                )
        elif kind is ser.UnstorableDecimal:
            found.append(f"{where}: {item.problem}")
        elif isinstance(item, int) and not isinstance(item, bool):  # an IntEnum, say
            stack.append((int(item), where, depth))
        elif isinstance(item, str):  # a StrEnum, say
            stack.append((str(item), where, depth))
        elif isinstance(item, float):
            stack.append((float(item), where, depth))
        if len(found) > 1000:
            break
    return found


def flat_fits(value: dict[Any, Any], limits: Limits = DEFAULT_LIMITS) -> bool:
    """True when ``value`` holds only scalars under text keys and the walk below would find
    nothing (most commands, events and metadata): every text checked in one joined string."""
    texts: list[str] = []
    for item in value.values():
        kind = type(item)
        if kind is str:
            texts.append(item)
        elif kind is int:
            if not limits.min_integer <= item <= limits.max_integer:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif item is not None and kind is not bool:
            return False
    if texts and max(map(len, texts)) > limits.max_string_length:
        return False
    try:
        joined = "".join(value) + "".join(texts)  # (a key that is not text: the walk says)
    except TypeError:
        return False
    return joined.isascii() and "\x00" not in joined


def _describe_int(value: int) -> str:
    digits = len(str(abs(value))) if abs(value) < 10**4000 else None
    if digits is None or digits > 30:
        return f"an integer of {value.bit_length():,} bits"
    return str(value)


def _range(limits: Limits) -> str:
    if limits.min_integer == -(2**63) and limits.max_integer == 2**63 - 1:
        return "(signed 64-bit)"
    return f"[{limits.min_integer}, {limits.max_integer}]"


def _error(what: str, found: list[str]) -> SerializationError:
    shown = "; ".join(found[:_MAX_REPORTED])
    more = f"; and {len(found) - _MAX_REPORTED} more" if len(found) > _MAX_REPORTED else ""
    paths = [problem.partition(": ")[0] for problem in found]
    return SerializationError(f"{what}: {shown}{more}", paths[0], paths)


def check_data(value: Any, what: str, limits: Limits = DEFAULT_LIMITS, path: str = "$") -> None:
    """Raise a :class:`SerializationError` naming every bad path of ``value``, if any."""
    found = problems(value, limits, path)
    if found:
        raise _error(what, found)


def check_command(command: Any, identity: str | None, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check a command's fields (unstructured) and its identity field ``identity``.

    A field's content is a :class:`SerializationError`; an identity that is empty or too long
    (with every field fine) an :class:`InvalidCommand`. Either names every bad field.
    """
    name = type(command).__name__
    try:
        data = ser.unstructure(command)
    except SerializationError as exc:
        if "recursion" in str(exc):
            raise SerializationError(f"{name}: nested too deeply to store") from None
        raise
    found = problems(data, limits)
    if identity is not None:
        value = getattr(command, identity, None)
        text = value if isinstance(value, str) else None if value is None else str(value)
        if text is None or not text.strip():
            found.append(f"$.{identity}: the identity is missing or empty")
        elif len(text) > limits.max_identity_length:
            found.append(
                f"$.{identity}: an identity of {len(text):,} characters "
                f"(at most {limits.max_identity_length:,})"
            )
        elif not isinstance(value, str) and _text_problem(text, limits):
            found.append(f"$.{identity}: {_text_problem(text, limits)}")
    if not found:
        return
    error = _error(name, found)
    if all(problem.startswith(f"$.{identity}: ") for problem in found):
        raise InvalidCommand(str(error)) from None
    raise error


def check_identity(identity: str, what: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """An identity (or stream id) that is not storable is an :class:`InvalidCommand`."""
    problem = _text_problem(identity, limits)
    if problem is None and len(identity) > limits.max_identity_length:
        problem = (
            f"an identity of {len(identity):,} characters (at most {limits.max_identity_length:,})"
        )
    if problem is not None:
        raise InvalidCommand(f"{what}: {problem}")


# Only what no database stores (the application's limits were checked at the way in).
_STORABLE = Limits(
    max_identity_length=2**62,
    max_string_length=2**62,
    min_integer=-(10**4000),
    max_integer=10**4000,
    max_depth=10_000,
    max_metadata_bytes=2**62,
    max_event_bytes=2**62,
)


def check_request(
    stream_id: str, metadata: Mapping[str, Any] | None, event_ids: Any = None
) -> None:
    """What the store checks of every append before writing: a storable stream id, event ids
    and metadata (events are checked as they are encoded)."""
    problem = _text_problem(stream_id, _STORABLE) if type(stream_id) is str else None
    if type(stream_id) is not str:
        problem = f"a stream id must be a string, not {type(stream_id).__name__}"
    if problem is not None:
        raise InvalidCommand(f"stream id {stream_id!r:.80}: {problem}")
    for given in event_ids or ():
        problem = _text_problem(given, _STORABLE) if type(given) is str else None
        if type(given) is not str:
            problem = f"an event id must be a string, not {type(given).__name__}"
        if problem is not None:
            raise InvalidCommand(f"stream {stream_id!r:.80}: event id {given!r:.80}: {problem}")
    if metadata:
        check_data(metadata, f"{stream_id}: metadata", _STORABLE)


def unstorable(stream_id: str, error: Exception) -> BackstageError:
    """``error`` as the Backstage error an append that could not be written fails with."""
    if isinstance(error, BackstageError):
        return error
    if isinstance(error, sqlite3.Error):
        return StorageError(f"stream {stream_id!r:.80}: cannot be stored: {error}")
    return SerializationError(
        f"stream {stream_id!r:.80}: cannot be stored: {type(error).__name__}: {error}"
    )
