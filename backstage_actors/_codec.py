"""Turning events into rows and rows back into events, fast on the hot paths.

Writing validates: a payload is unstructured, and structured back once so that what is stored can
always be read. Reading takes a shortcut where it is safe: a class whose fields are all plain JSON
types is built with ``cls(**data)``, which is several times faster than a validating cattrs pass
(the data was validated when it was written).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs

from . import _serialization as ser
from .errors import SerializationError, StoredEventError
from .event import event_topic, event_type, event_version, registry

__all__ = ["EncodedEvent", "decode_event", "encode_event", "fast_structure"]

_PLAIN = (int, str, float, bool, type(None))
MAX_EVENT_BYTES = 4 * 1024 * 1024


@attrs.frozen
class EncodedEvent:
    type: str
    schema_version: int
    topic: str
    data: str
    event: Any = attrs.field(default=None, eq=False, repr=False)


_encoders: dict[type, tuple[str, int, str]] = {}


def encode_event(event: Any, validate: bool = True) -> EncodedEvent:
    """The row fields of ``event``; :class:`SerializationError` names what does not fit."""
    if isinstance(event, EncodedEvent):
        return event
    cls = type(event)
    known = _encoders.get(cls)
    if known is None:
        registry.register(cls)
        known = (event_type(cls), event_version(cls), event_topic(cls))
        _encoders[cls] = known
    name, version, topic = known
    data = ser.unstructure(event)
    text = ser.dumps(data, name)
    if len(text) > MAX_EVENT_BYTES:
        raise SerializationError(
            f"{name} is {len(text):,} bytes of JSON; an event may hold at most {MAX_EVENT_BYTES:,} "
            "(keep large blobs outside the event store and record a reference)"
        )
    if validate:
        ser.structure(json.loads(text), cls, name)
    return EncodedEvent(name, version, topic, text, event)


def _is_plain(tp: Any) -> bool:
    if tp in _PLAIN or tp is Any:
        return tp is not Any
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_is_plain(arg) for arg in typing.get_args(tp))
    return False


def fast_structure(cls: type) -> Callable[[dict[str, Any]], Any]:
    """A builder for ``cls`` from trusted data: ``cls(**data)`` when every field is a JSON scalar."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    if attrs.has(cls):
        fields = [(f.name, f.alias or f.name, f.init) for f in attrs.fields(cls)]
    elif dataclasses.is_dataclass(cls):
        fields = [(f.name, f.name, f.init) for f in dataclasses.fields(cls)]
    else:
        fields = []
    if (
        fields
        and all(init and name in hints and _is_plain(hints[name]) for name, _, init in fields)
        and all(name == alias for name, alias, _ in fields)
    ):
        return lambda data: cls(**data)
    return lambda data: ser.converter.structure(data, cls)


_builders: dict[type, Callable[[dict[str, Any]], Any]] = {}


def decode_event(
    type_name: str, schema_version: int, topic: str | None, data: str, position: int
) -> Any:
    """The event object stored at ``position``; :class:`StoredEventError` says what is wrong."""
    cls = registry.resolve(type_name, topic, position)
    try:
        payload = json.loads(data)
    except (ValueError, TypeError) as exc:
        raise StoredEventError(
            f"event at position {position} ({type_name}): its JSON data is broken: {exc}", position
        ) from None
    target = event_version(cls)
    if schema_version != target:
        payload = registry.upcast(type_name, schema_version, payload, target, position)
        return _structure_checked(payload, cls, type_name, position)
    builder = _builders.get(cls)
    if builder is None:
        builder = _builders[cls] = fast_structure(cls)
    try:
        return builder(payload)
    except Exception:
        return _structure_checked(payload, cls, type_name, position)


def _structure_checked(payload: Any, cls: type, type_name: str, position: int) -> Any:
    try:
        return ser.structure(payload, cls, type_name)
    except SerializationError as exc:
        raise StoredEventError(f"event at position {position}: {exc}", position) from None
