"""The theatre: many buyers race for the same seats; each performance's mailbox decides.

``python -m examples.theatre`` runs the race in-process; ``backstage start examples.theatre:app``
runs it as a daemon.
"""

from __future__ import annotations

from backstage_actors import Application, Router

from .domain import HoldSeats, Performance, Purchase, SchedulePerformance
from .read_models import SoldOut

__all__ = ["app", "make_app", "router"]

router = Router().dispatch(
    [SchedulePerformance, HoldSeats, Purchase], to=Performance, identity="performance_id"
)


def make_app(database: str = "theatre.db", **options: object) -> Application:
    return Application(
        "theatre", router=router, projections=[SoldOut], database=database, **options
    )  # type: ignore[arg-type]


app = make_app()
