"""Subscribers for ``test_subscriber_edges`` (module level: multiproc imports them by path)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from backstage_actors.handler import PARK, Metadata
from backstage_actors.projection import Projection

from .handler_domain import HdNoted


class ReProj(Projection):
    """One row per projection of an event; an HdNoted "poison" fails until re_control holds a
    row (the "fix" deployed)."""

    name = "re-proj"
    tables: ClassVar = ("re_applied",)
    delay: ClassVar[float] = 0.0

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS re_applied (position INTEGER, data TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS re_control (fixed INTEGER)")

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        if self.delay:
            time.sleep(self.delay)
        poison = isinstance(event, HdNoted) and event.text == "poison"
        if poison and not db.execute("SELECT count(*) FROM re_control").fetchone()[0]:
            raise RuntimeError("poison")
        db.execute(
            "INSERT INTO re_applied VALUES (?, ?)", (metadata.position, type(event).__name__)
        )

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return PARK


class ReSlowProj(ReProj):
    name = "re-slow-proj"
    tables: ClassVar = ("re_applied",)
    delay: ClassVar[float] = 0.002


from .handler_domain import HdOrderPlaced, HdOrderSaga  # noqa: E402


class ReBadApplySaga(HdOrderSaga):
    """The order saga whose ``apply`` fails for an order of amount 13."""

    name = "re-bad-apply"

    def apply(self, event: Any) -> None:
        if isinstance(event, HdOrderPlaced) and event.amount == 13:
            raise ValueError("unlucky")
        super().apply(event)


from backstage_actors.handler import Retry  # noqa: E402

from .handler_domain import HdRecorder  # noqa: E402


class ReCurrentRecorder(HdRecorder):
    """A "current" handler that cannot take "poison" until a table re_fixed exists."""

    name = "re-current"
    start_from = "current"

    def fails(self, event: Any, attempt: int) -> bool:
        fixed = self.db.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 're_fixed'"
        ).fetchone()[0]
        return event.text == "poison" and not fixed

    def policy(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return Retry(0.2)


class ReCurrentProj(ReProj):
    """A "current" projection that fails on "poison" while a table re_broken exists."""

    name = "re-current-proj"
    start_from = "current"

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        broken = db.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 're_broken'"
        ).fetchone()[0]
        if isinstance(event, HdNoted) and event.text == "poison" and broken:
            raise RuntimeError("poison")
        db.execute(
            "INSERT INTO re_applied VALUES (?, ?)", (metadata.position, type(event).__name__)
        )

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return Retry(0.2)


import os  # noqa: E402


class ReOwnProj(Projection):
    """Keeps its table in a file of its own (RE_OWN_DB); while the file RE_FLAG exists "poison"
    fails (parked at once) and "slow" says it is there (the file RE_FLAG + "-at") and waits
    until that file is gone or a minute has passed."""

    name = "re-own"
    tables: ClassVar = ("re_applied",)

    @property
    def database(self) -> str:  # type: ignore[override]
        return os.environ["RE_OWN_DB"]

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS re_applied (position INTEGER, data TEXT)")

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        broken = os.path.exists(os.environ["RE_FLAG"])
        if isinstance(event, HdNoted) and broken:
            if event.text == "poison":
                raise RuntimeError("poison")
            if event.text == "slow":
                at = os.environ["RE_FLAG"] + "-at"
                open(at, "w").close()
                deadline = time.monotonic() + 60
                while os.path.exists(at) and time.monotonic() < deadline:
                    time.sleep(0.01)
        db.execute(
            "INSERT INTO re_applied VALUES (?, ?)", (metadata.position, type(event).__name__)
        )

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return PARK
