"""Events: their stored type names, the registry that finds their classes, and upcasters.

An event is a plain attrs class or dataclass. Its stored type name is its class name unless it sets
``__event_type__``; ``__event_version__`` (default 1) is the schema version written with it. A
stored payload of an older version is passed through registered upcasters, v1 → v2 → v3, before it
is structured, so handlers and aggregates only ever see the current shape.

The registry needs no ceremony: a class is registered the first time it is written, and a reader
in another process that has never seen the name imports the class from the module path stored
beside it (``topic``). Register explicitly (:func:`register_event`) only for renamed classes.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from ._serialization import is_message_class
from .errors import SerializationError, StoredEventError

__all__ = [
    "EventRegistry",
    "check_event_class",
    "event_topic",
    "event_type",
    "event_version",
    "register_event",
    "registry",
    "upcaster",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def event_type(cls_or_event: Any) -> str:
    """The stored type name: ``__event_type__`` or the class name."""
    cls = cls_or_event if isinstance(cls_or_event, type) else type(cls_or_event)
    return str(
        cls.__dict__.get("__event_type__") or getattr(cls, "__event_type__", None) or cls.__name__
    )


def event_version(cls_or_event: Any) -> int:
    cls = cls_or_event if isinstance(cls_or_event, type) else type(cls_or_event)
    return int(getattr(cls, "__event_version__", 1))


def event_topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def check_event_class(cls: Any) -> None:
    """Raise :class:`SerializationError` unless ``cls`` can be an event's class."""
    if not is_message_class(cls):
        raise SerializationError(
            f"{getattr(cls, '__name__', cls)!r} is not an attrs class or dataclass; "
            "events must be one of those"
        )


class EventRegistry:
    """Type name → class, and (type name, from version) → upcaster."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._lock = threading.Lock()

    def register(self, cls: type) -> type:
        check_event_class(cls)
        name = event_type(cls)
        with self._lock:
            known = self._classes.get(name)
            if known is not None and known is not cls and event_topic(known) != event_topic(cls):
                raise SerializationError(
                    f"event type {name!r} is already registered for {event_topic(known)}; "
                    f"set __event_type__ on {event_topic(cls)} to tell them apart"
                )
            self._classes[name] = cls
        return cls

    def add_upcaster(self, type_name: str, from_version: int, function: Upcaster) -> None:
        self._upcasters[(type_name, from_version)] = function

    def resolve(self, type_name: str, topic: str | None, position: int | None = None) -> type:
        """The class for a stored ``type_name``, importing it from ``topic`` if needed."""
        cls = self._classes.get(type_name)
        if cls is not None:
            return cls
        if topic:
            module_name, _, qualname = topic.partition(":")
            try:
                found: Any = importlib.import_module(module_name)
                for part in qualname.split("."):
                    found = getattr(found, part)
            except (ImportError, AttributeError):
                found = None
            cls = self._classes.get(type_name)  # importing may have registered it
            if cls is not None:
                return cls
            if isinstance(found, type) and event_type(found) == type_name:
                return self.register(found)
        raise StoredEventError(
            f"event at position {position}: unknown event type {type_name!r} "
            f"(module path {topic or 'not stored'}); import or register its class",
            position,
        )

    def upcast(
        self, type_name: str, version: int, data: dict[str, Any], target: int, position: int | None
    ) -> dict[str, Any]:
        """Chain the upcasters from ``version`` up to ``target``."""
        while version < target:
            function = self._upcasters.get((type_name, version))
            if function is None:
                raise StoredEventError(
                    f"event at position {position}: {type_name} is stored as version {version} "
                    f"but the class is version {target} and no upcaster from {version} is registered",
                    position,
                )
            try:
                data = function(data)
            except Exception as exc:  # a payload its upcaster cannot read: an unreadable event
                raise StoredEventError(
                    f"event at position {position}: {type_name} version {version}: its upcaster"
                    f" failed: {type(exc).__name__}: {exc}",
                    position,
                ) from exc
            version += 1
        if version > target:
            raise StoredEventError(
                f"event at position {position}: {type_name} is stored as version {version}, "
                f"newer than the class (version {target})",
                position,
            )
        return data


registry = EventRegistry()


def register_event(cls: type) -> type:
    """Register an event class (usable as a decorator)."""
    return registry.register(cls)


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: ``fn(data) -> data`` migrates a stored payload from ``from_version`` to the next."""

    def decorate(function: Upcaster) -> Upcaster:
        registry.add_upcaster(type_name, from_version, function)
        return function

    return decorate
