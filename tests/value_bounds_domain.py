"""Domain of tests/test_decimal_bounds.py and tests/test_float_unions.py (module-level:
multiproc actors import it by module path)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router


@attrs.frozen
class VbCredit:
    """A command with a Decimal field (and one nested in a list)."""

    till_id: str
    amount: Decimal
    tips: list[Decimal] = attrs.Factory(list)


@attrs.frozen
class VbCredited:
    till_id: str
    amount: Decimal
    tips: list[Decimal] = attrs.Factory(list)


class VbTill(Aggregate):
    """Adds what it is credited: its ``apply`` does Decimal arithmetic on the stored amount."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def execute(self, command: Any) -> Any:
        match command:
            case VbCredit(till_id, amount, tips):
                return VbCredited(till_id, amount, tips)

    def apply(self, event: Any) -> None:
        match event:
            case VbCredited(_, amount, tips):
                self.total = self.total + amount + sum(tips, Decimal(0))


@attrs.frozen
class VbSetReading:
    """A command with a field that is a number or a text (``"n/a"``)."""

    meter_id: str
    reading: float | str


@attrs.frozen
class VbReadingSet:
    meter_id: str
    reading: float | str
    total: float


class VbMeter(Aggregate):
    def __init__(self) -> None:
        self.total = 0.0

    def execute(self, command: Any) -> Any:
        match command:
            case VbSetReading(meter_id, reading):
                added = 0.0 if isinstance(reading, str) else reading
                return VbReadingSet(meter_id, reading, self.total + added)

    def apply(self, event: Any) -> None:
        match event:
            case VbReadingSet(_, _, total):
                self.total = total


router = Router()
router.dispatch([VbCredit], to=VbTill, identity="till_id")
router.dispatch([VbSetReading], to=VbMeter, identity="meter_id")


def make_app(**options: Any) -> Application:
    return Application("value_bounds", router=router, **options)
