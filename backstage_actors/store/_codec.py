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

from .. import _serialization as ser
from ..errors import SerializationError, StoredEventError
from ..event import check_event_class, event_topic, event_type, event_version, registry
from ..limits import DEFAULT_LIMITS, Limits, check_data

__all__ = ["EncodedEvent", "check_event", "decode_event", "encode_event", "fast_structure"]

_PLAIN = (int, str, float, bool, type(None))
MAX_EVENT_BYTES = DEFAULT_LIMITS.max_event_bytes


@attrs.frozen
class EncodedEvent:
    type: str
    schema_version: int
    topic: str
    data: str
    event: Any = attrs.field(default=None, eq=False, repr=False)


_encoders: dict[type, tuple[str, int, str]] = {}


def encode_event(
    event: Any, validate: bool = True, limits: Limits = DEFAULT_LIMITS
) -> EncodedEvent:
    """The row fields of ``event``; :class:`SerializationError` names what does not fit its
    class or ``limits`` (every bad field: text no database stores, numbers out of range...)."""
    if isinstance(event, EncodedEvent):
        return event
    cls = type(event)
    known = _encoders.get(cls)
    if known is None:
        registry.register(cls)
        known = (event_type(cls), event_version(cls), event_topic(cls))
        _encoders[cls] = known
    name, version, topic = known
    return EncodedEvent(name, version, topic, _text(event, cls, name, validate, limits), event)


def check_event(event: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """What :func:`encode_event` checks of ``event``, without registering its class (a test's
    ``given`` history: one test suite may hold two applications' classes of the same name)."""
    check_event_class(type(event))
    _text(event, type(event), event_type(event), True, limits)


def _text(event: Any, cls: type, name: str, validate: bool, limits: Limits) -> str:
    data = ser.unstructure(event)
    check = _checks.get(cls, _UNKNOWN)
    if check is _UNKNOWN:
        check = _checks[cls] = plain_check(cls)
    plain = check is not None and check(data)
    # Flat data passes in one pass (limits.flat_fits); anything else is walked, naming every
    # bad path. Before dumps: it names a value nested too deeply.
    check_data(data, name, limits)
    text = ser.dumps(data, name)
    if len(text) > limits.max_event_bytes:
        raise SerializationError(
            f"{name} is {len(text):,} bytes of JSON; an event may hold at most "
            f"{limits.max_event_bytes:,} (keep large blobs outside the event store and record "
            "a reference)"
        )
    if validate and not plain:
        ser.structure(json.loads(text), cls, name)  # the full check, naming what is wrong
    return text


_UNKNOWN: Any = object()
_checks: dict[type, Callable[[Any], bool] | None] = {}
_NONE = type(None)
# What a quick check takes for each field type: exactly the types the strict hooks in
# ``_serialization`` take without converting (an int for a float field goes to cattrs: it may be
# too large for a float).
_EXACT: dict[Any, type] = {int: int, float: float, str: str, bool: bool}


def plain_check(cls: type) -> Callable[[Any], bool] | None:
    """A quick test that an event's unstructured data would structure back, for the common
    class: JSON scalar fields (each one type, or that type or None), built by the generated
    ``__init__`` with no validators, converters or post-init, and structured by the hook cattrs
    generates. None for any other class (cattrs builds it back: that runs its validators).

    False from the test only means "ask cattrs", which names the problem. Hooks registered for a
    class after its first event was written are not noticed.
    """
    fields = _plain_fields(cls)
    if fields is None or not _generated(cls):
        return None
    kinds: list[tuple[str, tuple[type, ...]]] = []
    for name, hint in fields:
        accepted = _accepted(hint)
        if accepted is None:
            return None
        kinds.append((name, accepted))

    def check(data: Any) -> bool:
        if type(data) is not dict or len(data) != len(kinds):
            return False
        for name, accepted in kinds:
            if name not in data or type(data[name]) not in accepted:
                return False
        return True

    return check


def _accepted(hint: Any) -> tuple[type, ...] | None:
    """The value types a quick check takes for a field of type ``hint``; None: ask cattrs."""
    if hint in _EXACT:
        return (_EXACT[hint],)
    args = typing.get_args(hint)
    others = [arg for arg in args if arg is not _NONE]
    if len(args) == 2 and len(others) == 1 and others[0] in _EXACT:  # X | None
        return (_EXACT[others[0]], _NONE)
    return None


def _generated(cls: type) -> bool:
    """Whether ``cls`` is built by attrs' or dataclasses' own ``__init__`` with nothing run on
    the values, and structured by the hook cattrs generates for it."""
    init = getattr(vars(cls).get("__init__"), "__code__", None)
    source = init.co_filename if init is not None else ""
    if attrs.has(cls):
        if not source.startswith("<attrs generated") or hasattr(cls, "__attrs_post_init__"):
            return False
        if any(f.validator is not None or f.converter is not None for f in attrs.fields(cls)):
            return False
    elif source != "<string>" or hasattr(cls, "__post_init__"):  # dataclasses' generated code
        return False
    try:
        hook = ser.converter.get_structure_hook(cls)
    except Exception:
        return False
    code = getattr(hook, "__code__", None)
    return code is not None and code.co_filename.startswith("<cattrs generated")


def _is_plain(tp: Any) -> bool:
    if tp in _PLAIN or tp is Any:
        return tp is not Any
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_is_plain(arg) for arg in typing.get_args(tp))
    return False


def _plain_fields(cls: type) -> list[tuple[str, Any]] | None:
    """``cls``'s fields and their types when every one is a JSON scalar set by ``__init__``
    under its own name; None otherwise."""
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
        return [(name, hints[name]) for name, _, _ in fields]
    return None


def fast_structure(cls: type) -> Callable[[dict[str, Any]], Any]:
    """A builder for ``cls`` from trusted data: ``cls(**data)`` when every field is a JSON scalar."""
    if _plain_fields(cls) is not None:
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
