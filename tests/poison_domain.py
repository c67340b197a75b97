"""Domain of tests/test_poison_commands.py (module-level: multiproc actors unpickle by
reference): aggregate and subscriber code that raises what is not an ``Exception``."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import (
    Aggregate,
    Application,
    EventHandler,
    ProcessManager,
    Projection,
    Router,
)


class PsnOwnBase(BaseException):
    """A BaseException of user code (not an Exception)."""


RAISED: set[str] = set()  # "once" modes that have raised in this process


def raise_for(mode: str, who: str = "") -> None:
    if mode == "base":
        raise PsnOwnBase("user code's own BaseException")
    if mode == "sysexit":
        raise SystemExit(3)
    if mode == f"{who}-once" and mode not in RAISED:
        RAISED.add(mode)
        raise SystemExit(4)  # (as a signal handler's sys.exit() lands in whatever code runs)


@attrs.frozen
class PsnDo:
    box_id: str
    amount: int
    decide: str = ""  # raise_for's mode in execute
    apply: str = ""  # ... in apply
    handle: str = ""  # ... in the handler


@attrs.frozen
class PsnPickled:
    """A command whose pickling runs ``raise_for(mode)``: a Ctrl-C (``"ctrl-c"``) that lands while
    a caller builds a batch, or a BaseException of its own."""

    box_id: str
    mode: str

    def __reduce__(self) -> Any:
        if self.mode == "ctrl-c":
            raise KeyboardInterrupt
        raise_for(self.mode)
        return (PsnPickled, (self.box_id, self.mode))


@attrs.frozen
class PsnDone:
    box_id: str
    amount: int
    apply: str
    handle: str


class PsnBox(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    def execute(self, command: Any) -> Any:
        raise_for(command.decide)
        return PsnDone(command.box_id, command.amount, command.apply, command.handle)

    def apply(self, event: Any) -> None:
        raise_for(event.apply)
        self.total += event.amount


class PsnHandler(EventHandler):
    """Raises per its event's ``handle`` mode; after ``max_failures`` it parks the event."""

    name = "psn-handler"
    retry_base = 0.01
    consistency = "eventual"

    def handle(self, event: Any, metadata: Any) -> None:
        raise_for(event.handle, self.name)


class PsnProjection(Projection):
    """Raises per its event's ``handle`` mode; records the others."""

    name = "psn-projection"
    tables = ("psn_seen",)
    retry_base = 0.01
    consistency = "eventual"

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS psn_seen (position BIGINT PRIMARY KEY)")

    def project(self, event: Any, metadata: Any, db: Any) -> None:
        raise_for(event.handle, self.name)
        db.execute("INSERT INTO psn_seen (position) VALUES (?)", (metadata.position,))


class PsnManager(ProcessManager):
    """One process per box; its step raises per its event's ``handle`` mode."""

    name = "psn-manager"
    retry_base = 0.01
    consistency = "eventual"

    def __init__(self) -> None:
        self.seen = 0

    def interested(self, event: Any) -> tuple[str, str] | None:
        return ("continue", event.box_id) if isinstance(event, PsnDone) else None

    def handle(self, event: Any) -> Any:
        raise_for(event.handle, self.name)
        return None

    def apply(self, event: Any) -> None:
        self.seen += 1


SUBSCRIBERS = {
    "psn-handler": PsnHandler,
    "psn-projection": PsnProjection,
    "psn-manager": PsnManager,
}

router = Router()
router.dispatch(PsnDo, to=PsnBox, identity="box_id")
router.dispatch(PsnPickled, to=PsnBox, identity="box_id")


def make_app(**options: Any) -> Application:
    return Application("poison", router=router, handlers=list(SUBSCRIBERS.values()), **options)
