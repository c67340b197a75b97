"""Domain of ``test_process_manager_state``: counters, and a process manager that keeps every
count of a counter in its state (module level: multiproc imports them by path). Names start
with ``Pst``."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router
from backstage_actors.handler import PARK, Metadata
from backstage_actors.process_manager import ProcessManager

#: The count a process manager's state cannot hold: ``apply`` puts an ``object()`` in it.
UNSTORABLE = 13


@attrs.frozen
class PstCount:
    counter_id: str
    n: int


@attrs.frozen
class PstCounted:
    counter_id: str
    n: int


class PstCounter(Aggregate):
    def execute(self, command: Any) -> Any:
        match command:
            case PstCount(counter_id, n):
                return PstCounted(counter_id, n)

    def apply(self, event: Any) -> None:
        pass


class PstTally(ProcessManager):
    """One process per counter; its state is every count it saw (no commands)."""

    name = "pst-tally"

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.odd: Any = None

    def interested(self, event: Any) -> tuple[str, str] | None:
        if isinstance(event, PstCounted):
            return ("continue", event.counter_id)
        return None

    def handle(self, event: Any) -> Any:
        return []

    def apply(self, event: Any) -> None:
        self.counts.append(event.n)
        self.odd = object() if event.n == UNSTORABLE else None

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return PARK


router = Router()
router.dispatch([PstCount], to=PstCounter, identity="counter_id")


def make_app() -> Application:
    return Application("pst-test", router=router, process_managers=[PstTally], synchronous="NORMAL")
