"""The domain of the tests of text that is not UTF-8 in a SQLite store: a note pad whose events a
handler counts. Module-level: actor processes unpickle these by reference."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, Application, EventHandler, Router
from backstage_actors.handler import PARK


@attrs.frozen
class Nu8Jot:
    pad_id: str
    text: str


@attrs.frozen
class Nu8Jotted:
    pad_id: str
    text: str


class Nu8Pad(Aggregate):
    def __init__(self) -> None:
        self.texts: list[str] = []

    def execute(self, command: Any) -> Any:
        return Nu8Jotted(command.pad_id, command.text)

    def apply(self, event: Any) -> None:
        self.texts.append(event.text)


class Nu8Counter(EventHandler):
    """Handles every event (parks what it cannot read: the default policy)."""

    name = "nu8-counter"

    def handle(self, event: Any, metadata: Any) -> None:
        pass

    def error(self, exc: BaseException, event: Any, metadata: Any, failures: int) -> Any:
        return PARK


router = Router().dispatch([Nu8Jot], to=Nu8Pad, identity="pad_id")


def make_app(**options: Any) -> Application:
    return Application("nu8", router=router, handlers=[Nu8Counter], **options)


app = make_app()
