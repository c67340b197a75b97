"""Commands: what a dispatch carries, what it returns, and how JSON becomes a command.

Commands are plain attrs classes or dataclasses, like events. The runtime wraps each one in a
:class:`CommandItem` with its metadata (command id, correlation and causation ids, user fields)
and answers each with a :class:`DispatchResult` or an error.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from typing import Any

import attrs

from . import _serialization as ser
from ._ids import new_id, request_id
from .errors import InvalidCommand, SerializationError
from .limits import DEFAULT_LIMITS, Limits, check_command, check_data
from .router import UnknownCommand, _field_names
from .store.records import RecordedEvent

__all__ = [
    "CommandItem",
    "DispatchResult",
    "check_sendable",
    "command_from_data",
    "new_item",
    "sendable",
]


@attrs.frozen
class DispatchResult:
    """What a dispatched command produced: the events it recorded and the stream's new version."""

    stream_id: str
    version: int
    events: list[RecordedEvent] = attrs.field(factory=list)
    command_id: str = ""
    correlation_id: str = ""

    @property
    def position(self) -> int:
        """Global position of the last event recorded (0 if none)."""
        return self.events[-1].position if self.events else 0


@attrs.frozen
class CommandItem:
    """One command in flight: ``request_id`` pairs it with its answer."""

    request_id: str
    command: Any
    metadata: dict[str, Any]
    idempotent: bool = False  # the caller named the command: a repeat is answered, not re-run
    size: int = attrs.field(default=0, eq=False)  # bytes pickled, where measured (multiproc)
    # The command as it travels (see __reduce__): pickled once, by the caller's check or on
    # arrival, and sent on as those bytes by every process it passes.
    pickled: bytes = attrs.field(default=b"", eq=False, repr=False)

    @property
    def command_id(self) -> str:
        return str(self.metadata["command_id"])

    def __reduce__(self) -> Any:
        # The command travels as a pickle of its own: a process that cannot load its class (a
        # daemon running another version of the app) still reads the item, and answers it with
        # an UnregisteredCommand, instead of dropping the whole message (every command in it).
        command = self.pickled or pickle.dumps(self.command, pickle.HIGHEST_PROTOCOL)
        return (_load_item, (self.request_id, command, self.metadata, self.idempotent))

    @property
    def correlation_id(self) -> str:
        return str(self.metadata.get("correlation_id", ""))


def _load_item(
    request_id: str, command: bytes, metadata: dict[str, Any], idempotent: bool
) -> CommandItem:
    try:
        loaded = pickle.loads(command)
    except Exception as exc:
        name = str(metadata.get("command", "a command"))
        loaded = UnknownCommand(name, f"{type(exc).__name__}: {exc}")
    return CommandItem(request_id, loaded, metadata, idempotent, pickled=command)


# What one command may take as a pickle: a message between processes is refused past 256 MiB
# (see _thespian.auth), and the message holds more than the command.
MAX_SENDABLE = (256 << 20) - (1 << 20)


def sendable(command: Any) -> bytes:
    """``command`` pickled, as it travels to other processes (multiproc), within
    :data:`MAX_SENDABLE` bytes: one that does not pickle (a function, a lock, a generator in a
    loosely typed field) or is too big is a :class:`SerializationError` naming its fields,
    before anything is sent."""
    name = type(command).__name__
    try:
        data = pickle.dumps(command, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        if len(data) <= MAX_SENDABLE:
            return data
        raise SerializationError(
            f"{name}: {len(data):,} bytes pickled, more than a message between the running "
            f"system's processes holds ({MAX_SENDABLE:,}); keep large blobs outside commands"
        )
    paths = []
    for field in _field_names(type(command)):
        try:
            pickle.dumps(getattr(command, field, None), pickle.HIGHEST_PROTOCOL)
        except Exception:
            paths.append(f"$.{field}")
    where = ", ".join(paths) or "$"
    raise SerializationError(
        f"{name}: cannot be sent to the running system's processes: {where}: {error}",
        paths[0] if paths else "$",
        paths,
    )


def check_sendable(command: Any) -> int:
    """:func:`sendable`'s size: what ``command`` takes of a message."""
    return len(sendable(command))


def new_item(
    command: Any,
    metadata: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    identity: str | None = None,
) -> CommandItem:
    """Wrap ``command``: generate its id, and correlation/causation ids unless given.

    With ``limits`` (every way in passes the application's), the command's fields (and its
    ``identity`` field, when named) and the metadata are checked: every bad field is named in
    one :class:`SerializationError` (or an :class:`InvalidCommand` for an identity), before
    anything is sent.
    """
    if not ser.is_message_class(type(command)):
        raise InvalidCommand(
            f"a command must be an attrs class or dataclass instance, not {type(command).__name__}"
        )
    if limits is not None:
        check_command(command, identity, limits)
    meta = dict(metadata or {})
    if meta:
        name = type(command).__name__
        check_data(meta, f"{name} metadata", limits or DEFAULT_LIMITS)
        try:  # what the caller gave must be storable with the events
            plain = ser.unstructure(meta)
            text = ser.dumps(plain, "metadata")
        except SerializationError as exc:
            raise SerializationError(f"{name} metadata: {exc}", exc.path) from None
        # Sent as the JSON data it is stored as: a process that cannot load a class of the
        # caller's (a value's) still reads the command.
        meta = dict(plain)
        size = len(text.encode("utf-8"))
        if size > (limits or DEFAULT_LIMITS).max_metadata_bytes:
            raise SerializationError(
                f"{name} metadata: {size:,} bytes of JSON "
                f"(at most {(limits or DEFAULT_LIMITS).max_metadata_bytes:,})"
            )
    given_id = meta.get("command_id")
    if given_id is not None and (not isinstance(given_id, str) or not given_id):
        # 0 or "" would pass for no name (a retry runs again), 1 for the name "1"
        raise InvalidCommand(
            f"{type(command).__name__} metadata: command_id must be a non-empty string, "
            f"not {given_id!r} ({type(given_id).__name__})"
        )
    command_id = given_id or new_id()
    meta["command_id"] = command_id
    meta.setdefault("correlation_id", command_id)
    meta.setdefault("causation_id", command_id)
    meta["command"] = type(command).__name__
    if given_id:  # a repeat under this name must be this very command (see _cells._already_done)
        meta["command_digest"] = command_digest(command)
    return CommandItem(request_id(), command, meta, bool(given_id))


def command_digest(command: Any) -> str:
    """A short digest of ``command``'s type and fields: what a named repeat must match."""
    text = ser.dumps(ser.unstructure(command), type(command).__name__)
    return hashlib.sha256(f"{type(command).__name__}:{text}".encode()).hexdigest()[:16]


def command_from_data(cls: type, data: Any) -> Any:
    """Build a ``cls`` command from JSON data; errors name the command and the field path."""
    if not isinstance(data, dict):
        raise SerializationError(
            f"{cls.__name__}: expected a JSON object with the command's fields, "
            f"got {type(data).__name__}"
        )
    return ser.structure(data, cls)
