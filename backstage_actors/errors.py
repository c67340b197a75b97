"""Everything Backstage raises derives from :class:`BackstageError`.

Each error says what happened in words a user can act on: the command, the stream, the field path.
None of them leaves the system in a broken state: after any of them it keeps serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AggregateFailed",
    "BackstageError",
    "CommandRejected",
    "ConsistencyTimeout",
    "DispatchTimeout",
    "InvalidCommand",
    "SerializationError",
    "StorageError",
    "StoredEventError",
    "SystemNotRunning",
    "UnhandledCommand",
    "UnregisteredCommand",
    "WrongExpectedVersion",
]


class BackstageError(Exception):
    """Base class of every error Backstage raises on purpose."""


class CommandRejected(BackstageError):
    """The aggregate refused the command: its ``execute`` raised ``error_type: message``."""

    def __init__(self, command: str, error_type: str, message: str) -> None:
        super().__init__(f"{command} rejected: {error_type}: {message}")
        self.command = command
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> Any:
        return (type(self), (self.command, self.error_type, self.message))


class UnregisteredCommand(BackstageError, LookupError):
    """No router entry dispatches this command type."""


class UnhandledCommand(BackstageError):
    """The aggregate's ``execute`` returned None for this command: it has no ``case`` for it.

    Return ``[]`` from ``execute`` to mean "no events" on purpose; None is taken for a command
    the aggregate forgot to handle, which would otherwise succeed silently.
    """

    def __init__(self, aggregate: str, command: str, stream_id: str = "") -> None:
        where = f" (stream {stream_id})" if stream_id else ""
        super().__init__(
            f"{aggregate} does not handle {command}{where}: its execute returned None "
            "(return [] for no events)"
        )
        self.aggregate = aggregate
        self.command = command
        self.stream_id = stream_id

    def __reduce__(self) -> Any:
        return (type(self), (self.aggregate, self.command, self.stream_id))


class InvalidCommand(BackstageError, ValueError):
    """The command cannot be routed: its identity field is missing or empty, or it is not a command."""


class WrongExpectedVersion(BackstageError):
    """An append expected a stream version that the stream no longer has (another writer won).

    ``actual`` is the stream's version, or -1 where the append was refused for counting on an
    earlier append that failed (``why`` says so).
    """

    def __init__(self, stream_id: str, expected: Any, actual: int, why: str = "") -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {_describe_expected(expected)}, "
            + (why or f"but it is at version {actual}")
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        self.why = why

    def __reduce__(self) -> Any:
        return (type(self), (self.stream_id, self.expected, self.actual, self.why))

    @classmethod
    def refusal(cls, stream_id: str, expected: Any, why: str) -> WrongExpectedVersion:
        """An append refused without being tried: it counted on an append that failed."""
        return cls(stream_id, expected, -1, why)

    @property
    def refused(self) -> bool:
        """Refused for counting on another append, not for a conflict of its own."""
        return self.actual == -1


class DispatchTimeout(BackstageError, TimeoutError):
    """No answer to a command in time; it may or may not have been executed."""


class ConsistencyTimeout(BackstageError, TimeoutError):
    """The events were stored, but the awaited handlers did not process them in time."""


class SerializationError(BackstageError, TypeError):
    """A command, event or snapshot does not fit its class, or holds what no database stores
    (see :class:`~backstage_actors.limits.Limits`); ``path`` names the (first) field (``$.a.b``),
    ``paths`` every field found wrong."""

    def __init__(self, message: str, path: str = "$", paths: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.paths = list(paths) or [path]

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0], self.path, self.paths))


class StoredEventError(BackstageError):
    """An event at rest cannot be read (broken JSON, unknown type); ``position`` says which."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0], self.position))


class StorageError(BackstageError):
    """The database cannot be opened or written (read-only, locked, full disk)."""


class AggregateFailed(BackstageError):
    """The aggregate crashed (its ``apply`` or the runtime raised); it restarts from the store."""


class SystemNotRunning(BackstageError):
    """No actor system answers (not started, stopped, or the port is wrong)."""


def error_text(exc: BaseException) -> str:
    """``str(exc)``, or what can be said of it when its ``__str__`` itself raises (user code's
    exceptions are described in answers, logs and dead letters: that must not crash)."""
    try:
        return str(exc)
    except Exception as error:
        return f"<its str() raised {type(error).__name__}>"


def _describe_expected(expected: Any) -> str:
    return str(getattr(expected, "name", expected))
