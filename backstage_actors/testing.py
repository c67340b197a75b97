"""Testing an aggregate's decisions as a plain object, given/when/then, without any actor::

    from backstage_actors.testing import given

    given([AccountOpened("a-1", "Ada")], aggregate=Account) \\
        .when(Deposit("a-1", 10)) \\
        .then([MoneyDeposited("a-1", 10, 10)])

It needs neither pytest nor the runtime (importing it starts and imports no actor system), so it
runs in any test framework or a plain script. What the store would refuse is refused here too:
a history event that could never have been stored (not an attrs class or dataclass, a field that
does not fit its type, a value past the :class:`~backstage_actors.limits.Limits`) is a
:class:`~backstage_actors.errors.SerializationError` from ``given``, naming every one; a command
the application would not accept, or events it could not store, are the scenario's error (as
``dispatch`` would raise it). Applications are tested running, with the pytest
plugin's ``backstage_system`` fixture (:mod:`backstage_actors.pytest_plugin`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from . import _serialization as ser
from .aggregate import Aggregate, decide, events_of
from .errors import BackstageError, InvalidCommand, SerializationError
from .limits import DEFAULT_LIMITS, Limits, check_command
from .router import Router
from .store._codec import check_event

__all__ = ["Scenario", "given"]


@attrs.define
class Scenario:
    """An aggregate's history (``given``), one command (``when``) and what should follow.

    Made by :func:`given`; chain :meth:`when`, then :meth:`then` or :meth:`then_raises`.
    """

    history: list[Any]
    aggregate: type[Aggregate] | None = None
    router: Router | None = None
    command: Any = None
    produced: list[Any] | None = None
    error: BaseException | None = None
    state: Aggregate | None = None
    limits: Limits = DEFAULT_LIMITS

    def when(self, command: Any) -> Scenario:
        """Execute ``command`` on a fresh aggregate that applied the history, as the runtime
        would: a rejection is kept for :meth:`then_raises`, the events produced are applied.
        ``execute`` returning None is :class:`~backstage_actors.errors.UnhandledCommand`."""
        cls, identity, field = self.aggregate, "", None
        if cls is None:
            if self.router is None:
                raise TypeError(
                    "given(...) needs aggregate= or router= to know who handles commands"
                )
            route = self.router.route(command)
            cls, field = route.aggregate, route.identity
            value = getattr(command, field, None)
            identity = "" if value is None else str(value)  # (as the router's stream_of)
        state = cls()
        state.id = identity  # as the runtime sets it (known from the router's identity field)
        state.version = 0
        for event in self.history:
            state.apply(event)
            state.version += 1
        self.command, self.state = command, state
        try:  # what every way in checks before the aggregate sees the command
            if not ser.is_message_class(type(command)):
                raise InvalidCommand(
                    "a command must be an attrs class or dataclass instance, not"
                    f" {type(command).__name__}"
                )
            check_command(command, field, self.limits)  # (the identity too: every bad field)
        except BackstageError as exc:
            self.error = exc
            return self
        try:
            self.produced = decide(state, command)
        except Exception as exc:
            self.error = exc
            return self
        try:  # what the store checks before it writes them: dispatch fails the same way
            for event in self.produced:
                check_event(event, self.limits)
        except BackstageError as exc:
            self.error = exc
            return self
        for event in self.produced:
            state.apply(event)  # the new events must apply cleanly, as the runtime will apply them
            state.version += 1
        return self

    def then(self, expected: Any) -> Scenario:
        """Assert the command produced ``expected``: an event, or a list of events (``[]``:
        none)."""
        if self.error is not None:
            raise AssertionError(
                f"{type(self.command).__name__} was rejected: {type(self.error).__name__}: {self.error}"
            )
        # Raised, not asserted: the checks hold under ``python -O`` and outside pytest too.
        if self.produced != events_of(expected):
            raise AssertionError(
                f"{type(self.command).__name__} produced {self.produced!r}, "
                f"expected {events_of(expected)!r}"
            )
        return self

    def then_raises(self, error: type[BaseException], match: str | None = None) -> Scenario:
        """Assert the command was rejected with ``error`` (and a message matching ``match``)."""
        if self.error is None:
            raise AssertionError(
                f"{type(self.command).__name__} was not rejected; it produced {self.produced!r}"
            )
        if not isinstance(self.error, error):
            raise AssertionError(f"rejected with {type(self.error).__name__}, not {error.__name__}")
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(f"{str(self.error)!r} does not match {match!r}")
        return self


def given(
    events: Sequence[Any] = (),
    *,
    aggregate: type[Aggregate] | None = None,
    router: Router | None = None,
    limits: Limits | None = None,
) -> Scenario:
    """Start a scenario from ``events`` already applied to an aggregate of class ``aggregate``
    (or of the class ``router`` routes the command to). Use it to test business rules without
    starting an application.

    Every event must be one the store would have written (checked as it checks them, against
    ``limits``: the application's, or the defaults); a :class:`SerializationError` names each
    one that is not, by its index in ``events``, and what is wrong with it."""
    history = list(events)
    chosen = DEFAULT_LIMITS if limits is None else limits
    found: list[str] = []
    paths: list[str] = []
    for index, event in enumerate(history):
        try:
            check_event(event, chosen)
        except SerializationError as exc:
            found.append(f"events[{index}] ({type(event).__name__}): {exc}")
            paths.extend(f"events[{index}]{path.removeprefix('$')}" for path in exc.paths)
    if found:
        raise SerializationError(
            f"given(...): a history the store would refuse: {'; '.join(found)}", paths[0], paths
        )
    return Scenario(history, aggregate, router, limits=chosen)
