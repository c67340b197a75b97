"""The programme the audience reads: seats sold per performance, and which ones are sold out."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from backstage_actors import Metadata, Projection

from .domain import PerformanceScheduled, PerformanceSoldOut, SeatsPurchased

__all__ = ["SoldOut"]


class SoldOut(Projection):
    name = "sold_out"
    tables = ("performances",)

    def init(self, db: sqlite_utils.Database) -> None:
        db["performances"].create(
            {"performance_id": str, "show": str, "seats": int, "sold": int, "sold_out": bool},
            pk="performance_id",
            if_not_exists=True,
        )

    def project(self, event: Any, metadata: Metadata, db: sqlite_utils.Database) -> None:
        table = db["performances"]
        match event:
            case PerformanceScheduled(performance_id, show, seats):
                table.insert(
                    {
                        "performance_id": performance_id,
                        "show": show,
                        "seats": len(seats),
                        "sold": 0,
                        "sold_out": False,
                    }
                )
            case SeatsPurchased(performance_id, _, _, seats):
                row = table.get(performance_id)
                table.update(performance_id, {"sold": row["sold"] + len(seats)})
            case PerformanceSoldOut(performance_id):
                table.update(performance_id, {"sold_out": True})
