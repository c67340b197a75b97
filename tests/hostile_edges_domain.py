"""Domain of tests/test_hostile_edges.py (module-level: multiproc actors unpickle by reference)."""

from __future__ import annotations

import enum
import threading
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import attrs

from backstage_actors import Aggregate, Application, EventHandler, Router
from backstage_actors.event import upcaster


class RvqColour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class RvqLine:
    sku: str
    qty: int


@attrs.frozen
class RvqRich:
    box_id: str
    count: int
    maybe: int | None = None
    either: str | None = None
    lines: list[RvqLine] = attrs.Factory(list)
    tags: dict[str, int] = attrs.Factory(dict)
    when: datetime | None = None
    price: Decimal = Decimal("0")
    ref: UUID | None = None
    colour: RvqColour = RvqColour.RED


@attrs.frozen
class RvqPut:
    box_id: str
    amount: int


@attrs.frozen
class RvqOdd:
    box_id: str
    mode: str


@attrs.frozen
class RvqPutted:
    box_id: str
    amount: int


@attrs.frozen
class RvqBoomed:
    """Its apply raises an exception whose str() fails."""

    box_id: str


class RvqBase(BaseException):
    """A BaseException of user code (not Exception)."""


class RvqNoStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class RvqNoPickle(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class RvqBox(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    def execute(self, command: Any) -> Any:
        if isinstance(command, RvqPut):
            return RvqPutted(command.box_id, command.amount)
        if isinstance(command, RvqRich):
            return RvqPutted(command.box_id, command.count)
        if isinstance(command, RvqOdd):
            mode = command.mode
            if mode == "str":
                return "not an event"
            if mode == "dict":
                return {"box_id": command.box_id, "amount": 1}
            if mode == "gen":
                return (RvqPutted(command.box_id, n) for n in range(2))
            if mode == "type":
                return RvqPutted
            if mode == "nones":
                return [None]
            if mode == "base":
                raise RvqBase("user BaseException")
            if mode == "sysexit":
                raise SystemExit(3)
            if mode == "nostr":
                raise RvqNoStr()
            if mode == "nopickle":
                raise RvqNoPickle("holds a lock")
            if mode == "applynostr":
                return RvqBoomed(command.box_id)
            if mode == "recursion":
                raise RecursionError("deep")
        return []

    def apply(self, event: Any) -> None:
        if isinstance(event, RvqBoomed):
            raise RvqNoStr()
        self.total += event.amount


router = Router()
router.dispatch([RvqRich, RvqPut, RvqOdd], to=RvqBox, identity="box_id")


def make_app(**options: Any) -> Application:
    return Application("review32", router=router, **options)


app = make_app(database="review32.db")


class RvqRecorder:
    """Middleware that records each hook call; raises in a hook for box ids starting ``boom-``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def _box(self, pipeline: Any) -> str:
        return str(getattr(pipeline.command, "box_id", ""))

    def before_dispatch(self, pipeline: Any) -> None:
        self.calls.append(("before", self._box(pipeline)))
        if self._box(pipeline).startswith("boom-before"):
            raise RuntimeError("before_dispatch failed")

    def after_dispatch(self, pipeline: Any) -> None:
        self.calls.append(("after", self._box(pipeline)))
        if self._box(pipeline).startswith("boom-after"):
            raise RuntimeError("after_dispatch failed")

    def after_failure(self, pipeline: Any) -> None:
        self.calls.append(("failure", self._box(pipeline)))


@attrs.frozen
class RvqRenamed:
    """Version 2; its upcaster from version 1 fails on a payload without ``old_name``."""

    __event_version__ = 2
    box_id: str
    name: str


def _rvq_upcast_renamed(data: dict[str, Any]) -> dict[str, Any]:
    return {"box_id": data["box_id"], "name": data.pop("old_name")}  # KeyError without it


upcaster("RvqRenamed", 1)(_rvq_upcast_renamed)


@attrs.frozen
class RvqLoose:
    """A command with an untyped field: whatever the caller puts there."""

    box_id: str
    payload: Any = None


class RvqLooseBox(Aggregate):
    def execute(self, command: Any) -> Any:
        return RvqPutted(command.box_id, 1)


router.dispatch(RvqLoose, to=RvqLooseBox, identity="box_id")


@attrs.frozen
class RvqNewer:
    """Its aggregate records an event of a module only the running system's processes load
    (a daemon newer than its client): ``where`` is that module's directory."""

    box_id: str
    where: str


class RvqNewerBox(Aggregate):
    def execute(self, command: Any) -> Any:
        import importlib
        import sys

        if command.where not in sys.path:
            sys.path.insert(0, command.where)
        module = importlib.import_module("rvq_server_only")
        return module.RvqServerOnlyEvent(command.box_id, 1)


router.dispatch(RvqNewer, to=RvqNewerBox, identity="box_id")


@attrs.frozen
class RvqEcho:
    box_id: str
    text: str


@attrs.frozen
class RvqEchoed:
    box_id: str
    text: str


class RvqEchoBox(Aggregate):
    def execute(self, command: Any) -> Any:
        return RvqEchoed(command.box_id, command.text)


router.dispatch(RvqEcho, to=RvqEchoBox, identity="box_id")


class RvqFussyHandler(EventHandler):
    """Raises an exception whose str() fails for amounts of 13; records the others."""

    name = "rvq-fussy"
    retry_base = 0.01

    def handle(self, event: Any, metadata: Any) -> None:
        if getattr(event, "amount", None) == 13:
            raise RvqNoStr()


def make_handled_app(**options: Any) -> Application:
    return Application("review32h", router=router, handlers=[RvqFussyHandler], **options)


@attrs.frozen
class RvqScored:
    """An event keyed by integers (JSON keys are strings)."""

    box_id: str
    by_level: dict[int, int]


@attrs.frozen
class RvqTagged:
    """An event with a set field (frozen classes hold frozensets)."""

    box_id: str
    tags: frozenset[str]


@attrs.frozen
class RvqLabelled:
    """An event with a field of a union of JSON types."""

    box_id: str
    label: int | str
