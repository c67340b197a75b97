"""A Broadway box office: performances with seats, holds that expire, purchases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from backstage_actors import Aggregate

__all__ = [
    "HoldExpired",
    "HoldSeats",
    "Performance",
    "PerformanceScheduled",
    "PerformanceSoldOut",
    "Purchase",
    "SchedulePerformance",
    "SeatsHeld",
    "SeatsPurchased",
]


@attrs.frozen
class SchedulePerformance:
    performance_id: str
    show: str
    seats: list[str]


@attrs.frozen
class HoldSeats:
    performance_id: str
    hold_id: str
    buyer: str
    seats: list[str]
    minutes: float = 10.0


@attrs.frozen
class Purchase:
    performance_id: str
    hold_id: str


@attrs.frozen
class PerformanceScheduled:
    performance_id: str
    show: str
    seats: list[str]


@attrs.frozen
class SeatsHeld:
    performance_id: str
    hold_id: str
    buyer: str
    seats: list[str]
    expires_at: datetime


@attrs.frozen
class HoldExpired:
    performance_id: str
    hold_id: str
    seats: list[str]


@attrs.frozen
class SeatsPurchased:
    performance_id: str
    hold_id: str
    buyer: str
    seats: list[str]


@attrs.frozen
class PerformanceSoldOut:
    performance_id: str


class Performance(Aggregate):
    """One performance. Its mailbox serializes every buyer's commands: a seat is held once."""

    def __init__(self) -> None:
        self.show = ""
        self.seats: list[str] = []
        self.holds: dict[str, dict[str, Any]] = {}
        self.sold: list[str] = []

    def execute(self, command: Any) -> Any:
        now = datetime.now(UTC)
        match command:
            case SchedulePerformance(performance_id, show, seats):
                if self.show:
                    raise ValueError(f"{performance_id} is already scheduled")
                if not seats:
                    raise ValueError("a performance needs seats")
                return PerformanceScheduled(performance_id, show, list(seats))
            case HoldSeats(performance_id, hold_id, buyer, seats, minutes):
                expired = self._expired(now)
                busy = set(self.sold) | {
                    s for h, hold in self.holds.items() if h not in expired for s in hold["seats"]
                }
                unknown = [s for s in seats if s not in self.seats]
                if unknown:
                    raise ValueError(f"no such seats: {', '.join(unknown)}")
                taken = [s for s in seats if s in busy]
                if taken:
                    raise ValueError(f"seats taken: {', '.join(taken)}")
                releases = [HoldExpired(performance_id, h, self.holds[h]["seats"]) for h in expired]
                held = SeatsHeld(
                    performance_id, hold_id, buyer, list(seats), now + timedelta(minutes=minutes)
                )
                return [*releases, held]
            case Purchase(performance_id, hold_id):
                hold = self.holds.get(hold_id)
                if hold is None:
                    raise ValueError(f"no hold {hold_id}")
                if hold["expires_at"] <= now:
                    return HoldExpired(performance_id, hold_id, hold["seats"])
                bought = SeatsPurchased(performance_id, hold_id, hold["buyer"], hold["seats"])
                if len(self.sold) + len(hold["seats"]) == len(self.seats):
                    return [bought, PerformanceSoldOut(performance_id)]
                return bought
        raise TypeError(f"Performance cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        match event:
            case PerformanceScheduled(_, show, seats):
                self.show, self.seats = show, list(seats)
            case SeatsHeld(_, hold_id, buyer, seats, expires_at):
                self.holds[hold_id] = {
                    "buyer": buyer,
                    "seats": list(seats),
                    "expires_at": expires_at,
                }
            case HoldExpired(_, hold_id, _):
                self.holds.pop(hold_id, None)
            case SeatsPurchased(_, hold_id, _, seats):
                self.holds.pop(hold_id, None)
                self.sold.extend(seats)

    def _expired(self, now: datetime) -> list[str]:
        return [h for h, hold in self.holds.items() if hold["expires_at"] <= now]
