"""Testing an aggregate's decisions as a plain object, given/when/then, without any actor::

    from backstage_actors.testing import given

    given([AccountOpened("a-1", "Ada")], aggregate=Account) \\
        .when(Deposit("a-1", 10)) \\
        .then([MoneyDeposited("a-1", 10, 10)])

It needs neither pytest nor the runtime (importing it starts and imports no actor system), so it
runs in any test framework or a plain script. Applications are tested running, with the pytest
plugin's ``backstage_system`` fixture (:mod:`backstage_actors.pytest_plugin`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from .aggregate import Aggregate, decide, events_of
from .router import Router

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

    def when(self, command: Any) -> Scenario:
        """Execute ``command`` on a fresh aggregate that applied the history, as the runtime
        would: a rejection is kept for :meth:`then_raises`, the events produced are applied.
        ``execute`` returning None is :class:`~backstage_actors.errors.UnhandledCommand`."""
        cls, identity = self.aggregate, ""
        if cls is None:
            if self.router is None:
                raise TypeError(
                    "given(...) needs aggregate= or router= to know who handles commands"
                )
            route, _, identity = self.router.stream_of(command)
            cls = route.aggregate
        state = cls()
        state.id = identity  # as the runtime sets it (known from the router's identity field)
        state.version = 0
        for event in self.history:
            state.apply(event)
            state.version += 1
        self.command, self.state = command, state
        try:
            self.produced = decide(state, command)
        except Exception as exc:
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
) -> Scenario:
    """Start a scenario from ``events`` already applied to an aggregate of class ``aggregate``
    (or of the class ``router`` routes the command to). Use it to test business rules without
    starting an application."""
    return Scenario(list(events), aggregate, router)
