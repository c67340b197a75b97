"""Testing helpers, also a pytest plugin (installed with the package, entry point ``backstage``).

Aggregates are tested as plain objects, given/when/then, without any actor::

    given([AccountOpened("a-1", "Ada")], aggregate=Account) \\
        .when(Deposit("a-1", 10)) \\
        .then([MoneyDeposited("a-1", 10, 10)])

Applications are tested running: define a ``backstage_app`` fixture returning your
:class:`~backstage_actors.Application`; the ``backstage_system`` fixture starts it on a fresh
database in the test's temporary directory (on ``backstage_base``, "simple" unless you override
that fixture) and stops it afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest

from .aggregate import Aggregate, events_of
from .router import Router

__all__ = ["Scenario", "backstage_base", "backstage_system", "given"]


@attrs.define
class Scenario:
    """An aggregate's history (``given``), one command (``when``) and what should follow."""

    history: list[Any]
    aggregate: type[Aggregate] | None = None
    router: Router | None = None
    command: Any = None
    produced: list[Any] | None = None
    error: BaseException | None = None
    state: Aggregate | None = None

    def when(self, command: Any) -> Scenario:
        cls = self.aggregate
        if cls is None:
            if self.router is None:
                raise TypeError(
                    "given(...) needs aggregate= or router= to know who handles commands"
                )
            cls = self.router.route(command).aggregate
        state = cls()
        state.id = ""
        state.version = 0
        for event in self.history:
            state.apply(event)
            state.version += 1
        self.command, self.state = command, state
        try:
            self.produced = events_of(state.execute(command))
        except Exception as exc:
            self.error = exc
            return self
        for event in self.produced:
            state.apply(event)  # the new events must apply cleanly, as the runtime will apply them
            state.version += 1
        return self

    def then(self, expected: Any) -> Scenario:
        """Assert the command produced ``expected`` (an event, a list of events, or None)."""
        if self.error is not None:
            raise AssertionError(
                f"{type(self.command).__name__} was rejected: {type(self.error).__name__}: {self.error}"
            )
        assert self.produced == events_of(expected), (
            f"{type(self.command).__name__} produced {self.produced!r}, expected {events_of(expected)!r}"
        )
        return self

    def then_raises(self, error: type[BaseException], match: str | None = None) -> Scenario:
        """Assert the command was rejected with ``error`` (and a message matching ``match``)."""
        if self.error is None:
            raise AssertionError(
                f"{type(self.command).__name__} was not rejected; it produced {self.produced!r}"
            )
        assert isinstance(self.error, error), (
            f"rejected with {type(self.error).__name__}, not {error.__name__}"
        )
        if match is not None:
            assert re.search(match, str(self.error)), (
                f"{str(self.error)!r} does not match {match!r}"
            )
        return self


def given(
    events: Sequence[Any] = (),
    *,
    aggregate: type[Aggregate] | None = None,
    router: Router | None = None,
) -> Scenario:
    return Scenario(list(events), aggregate, router)


@pytest.fixture
def backstage_base() -> str:
    """The Thespian base ``backstage_system`` runs on; override to run on "multiproc"."""
    return "simple"


@pytest.fixture
def backstage_system(
    request: pytest.FixtureRequest, backstage_base: str, tmp_path: Any
) -> Iterator[Any]:
    """The ``backstage_app`` fixture's application, running on a database of the test's own."""
    app = request.getfixturevalue("backstage_app")
    system = app.start(base=backstage_base, database=str(tmp_path / f"{app.name}.db"))
    try:
        yield system
    finally:
        system.stop()
