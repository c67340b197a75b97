"""The domain of the hostile-input tests: notes whose aggregate can be made to produce events no
database stores, and an aggregate that cannot start.

Module-level on purpose: on multiprocTCPBase the actor processes unpickle these by reference.
"""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router


@attrs.frozen
class Write:
    """Records ``text`` (and ``number``) as given: the edge must refuse what cannot be stored."""

    pad_id: str
    text: str
    number: int = 0
    ratio: float = 0.0


@attrs.frozen
class Garble:
    """The aggregate itself produces an event with a lone surrogate: checked before the store."""

    pad_id: str


@attrs.frozen
class Overflow:
    """The aggregate itself produces an event with a 70-bit integer."""

    pad_id: str


@attrs.frozen
class Written:
    pad_id: str
    text: str
    number: int = 0
    ratio: float = 0.0


@attrs.frozen
class Poke:
    fragile_id: str


class Pad(Aggregate):
    def __init__(self) -> None:
        self.count = 0

    def execute(self, command: Any) -> Any:
        if isinstance(command, Write):
            return Written(command.pad_id, command.text, command.number, command.ratio)
        if isinstance(command, Garble):
            return Written(command.pad_id, "bad \ud800 text")
        if isinstance(command, Overflow):
            return Written(command.pad_id, "big", 2**70)
        return []

    def apply(self, event: Any) -> None:
        self.count += 1


class Fragile(Aggregate):
    """Crashes in its start, whatever the command: it must not crash-loop."""

    def __init__(self) -> None:
        raise RuntimeError("this aggregate cannot start")

    def execute(self, command: Any) -> Any:  # pragma: no cover - never reached
        return []


router = Router()
router.dispatch([Write, Garble, Overflow], to=Pad, identity="pad_id")
router.dispatch(Poke, to=Fragile, identity="fragile_id")


def make_app(**options: Any) -> Application:
    return Application("hostile", router=router, **options)


app = make_app(database="hostile.db")
