"""Domain of tests/test_integration_edges.py (module-level: multiproc actors unpickle by reference)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router


@attrs.frozen
class RvzSeat:
    row: int
    col: int


@attrs.frozen
class RvzBook:
    show_id: str
    seats: frozenset[RvzSeat]


@attrs.frozen
class RvzBooked:
    show_id: str
    seats: frozenset[RvzSeat]


class RvzShow(Aggregate):
    def __init__(self) -> None:
        self.taken: set[RvzSeat] = set()

    def execute(self, command: Any) -> Any:
        return RvzBooked(command.show_id, command.seats)

    def apply(self, event: Any) -> None:
        self.taken |= event.seats


class RvzMood(enum.Enum):
    CALM = "calm"
    ANGRY = "angry"


@attrs.frozen
class RvzFelt:
    """A field of a union of an enum and a string: both are stored as a JSON string."""

    box_id: str
    mood: RvzMood | str


@attrs.frozen
class RvzStamped:
    """A field of a union of a datetime and a string: both are stored as a JSON string."""

    box_id: str
    when: datetime | str


router = Router()
router.dispatch([RvzBook], to=RvzShow, identity="show_id")


def make_app(**options: Any) -> Application:
    return Application("review34", router=router, **options)


@attrs.frozen
class RvzLoose:
    """A command with an untyped field: whatever the caller puts there."""

    box_id: str
    payload: Any = None


@attrs.frozen
class RvzTook:
    box_id: str


class RvzLooseBox(Aggregate):
    def execute(self, command: Any) -> Any:
        return RvzTook(command.box_id)

    def apply(self, event: Any) -> None:
        pass


router.dispatch(RvzLoose, to=RvzLooseBox, identity="box_id")
