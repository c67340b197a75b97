"""The router: which aggregate handles which command, identified by which field.

``Router`` is the one-line DSL of Commanded: ``router.dispatch([OpenAccount, Deposit], to=Account,
identity="account_id")``. It is a plain description with no actor behind it, so domain code and
``backstage_actors.testing.given`` use it without starting (or importing) the runtime; the actor
that carries commands to their aggregates is :mod:`backstage_actors._router_actor`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import attrs

from .aggregate import Aggregate
from .errors import InvalidCommand, UnregisteredCommand
from .limits import DEFAULT_LIMITS, Limits, check_identity

__all__ = ["Route", "Router"]


@attrs.frozen
class Route:
    """One command type's route: to which aggregate class, identified by which field."""

    command: type
    aggregate: type[Aggregate]
    identity: str
    lifespan: float | None = None


class UnknownCommand:
    """Stands for a command whose class this process cannot load; routed nowhere."""

    __slots__ = ("error", "name")

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self.error = error

    def __reduce__(self) -> Any:
        return (UnknownCommand, (self.name, self.error))

    def refusal(self) -> UnregisteredCommand:
        return UnregisteredCommand(
            f"{self.name}: the running system cannot load this command's class ({self.error}); "
            "is it routed by the application it runs?"
        )


def _field_names(cls: type) -> list[str]:
    if attrs.has(cls):
        return [f.name for f in attrs.fields(cls)]
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    raise TypeError(f"{cls.__name__} is not a command: use an attrs class or a dataclass")


class Router:
    """Command type → aggregate class and identity field."""

    def __init__(self) -> None:
        self.routes: dict[type, Route] = {}

    def dispatch(
        self,
        commands: type | Iterable[type],
        to: type[Aggregate],
        identity: str,
        lifespan: float | None = None,
    ) -> Router:
        """Route ``commands`` to aggregates of class ``to``, one per value of field ``identity``.

        ``lifespan`` is how many idle seconds an aggregate actor lives before it is stopped
        (passivated); None takes the application's default.
        """
        if not (isinstance(to, type) and issubclass(to, Aggregate)):
            raise TypeError(f"to= must be an Aggregate subclass, not {to!r}")
        for command in [commands] if isinstance(commands, type) else list(commands):
            if identity not in _field_names(command):
                raise ValueError(
                    f"{command.__name__} has no field {identity!r} to identify its {to.__name__}"
                )
            if command in self.routes:
                raise ValueError(
                    f"{command.__name__} is already routed to {self.routes[command].aggregate.__name__}"
                )
            self.routes[command] = Route(command, to, identity, lifespan)
        return self

    def route(self, command: Any) -> Route:
        """The route of ``command``'s type; :class:`UnregisteredCommand` if it has none."""
        route = self.routes.get(type(command))
        if route is None:
            if isinstance(command, UnknownCommand):
                raise command.refusal()
            raise UnregisteredCommand(f"no route for command {type(command).__name__}")
        return route

    def stream_of(self, command: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[Route, str, str]:
        """``(route, stream_id, identity)`` for ``command``; errors name the field (an identity
        no database can store, or too long for ``limits``, is an :class:`InvalidCommand`)."""
        route = self.route(command)
        value = getattr(command, route.identity, None)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidCommand(
                f"{type(command).__name__}: identity field {route.identity!r} is missing or empty"
            )
        identity = str(value)
        check_identity(identity, f"{type(command).__name__}: $.{route.identity}", limits)
        return route, f"{route.aggregate.__name__}-{identity}", identity

    def command_class(self, name: str) -> type | None:
        """The routed command class called ``name`` (``Class`` or ``module:Class``), if any."""
        for command in self.routes:
            if name in (command.__name__, f"{command.__module__}:{command.__qualname__}"):
                return command
        return None

    @property
    def aggregates(self) -> list[type[Aggregate]]:
        """The aggregate classes commands are routed to, each once."""
        return list(dict.fromkeys(route.aggregate for route in self.routes.values()))
