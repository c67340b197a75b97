"""The pytest plugin installed with the package (entry point ``backstage``): running applications.

Define a ``backstage_app`` fixture returning your :class:`~backstage_actors.Application`; the
``backstage_system`` fixture starts it on a fresh database in the test's temporary directory (on
``backstage_base``: ``"simple"`` unless you override that fixture, e.g. with ``"multiproc"``) and
stops it afterwards::

    @pytest.fixture
    def backstage_app():
        return Application("todo", router=router, projections=[OpenTasks])

    def test_completing_a_task(backstage_system):
        backstage_system.dispatch(AddTask("home", "milk"))

It lives apart from :mod:`backstage_actors.testing` so that ``given`` works where pytest is not
installed: pytest loads this module, nobody else imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import RunningSystem

__all__ = ["backstage_base", "backstage_system"]


@pytest.fixture
def backstage_base() -> str:
    """The Thespian base ``backstage_system`` runs on; override it to return ``"multiproc"``."""
    return "simple"


@pytest.fixture
def backstage_system(
    request: pytest.FixtureRequest, backstage_base: str, tmp_path: Path
) -> Iterator[RunningSystem]:
    """The ``backstage_app`` fixture's application, running on a database of the test's own.

    Use it for tests that need the runtime (dispatch, handlers, projections); test an aggregate's
    decisions alone with :func:`backstage_actors.testing.given`, which needs no actor at all.
    """
    app = request.getfixturevalue("backstage_app")
    system = app.start(base=backstage_base, database=str(tmp_path / f"{app.name}.db"))
    try:
        yield system
    finally:
        system.stop()
