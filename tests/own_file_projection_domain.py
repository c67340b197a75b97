"""Domain of ``test_own_file_projection``: a projection whose tables and checkpoint live in a
SQLite file of its own, named by ``$OFP_PROJECTION_FILE`` (read in the actor's process; module
level: multiproc imports them by path). Names start with ``Ofp``."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import attrs

from backstage_actors import Application, Router, register_event
from backstage_actors.handler import PARK, Metadata
from backstage_actors.projection import Projection


@register_event
@attrs.frozen
class OfpNoted:
    text: str


class OfpRows(Projection):
    """A row per event; "poison" fails until ``ofp_fixed`` holds a row (the fix deployed)."""

    name = "ofp-rows"
    tables: ClassVar = ("ofp_rows", "ofp_fixed")

    @property  # type: ignore[override]
    def database(self) -> str:
        return os.environ["OFP_PROJECTION_FILE"]

    def init(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS ofp_rows (position INTEGER, text TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS ofp_fixed (fixed INTEGER)")

    def project(self, event: Any, metadata: Metadata, db: Any) -> None:
        fixed = db.execute("SELECT count(*) FROM ofp_fixed").fetchone()[0]
        if event.text == "poison" and not fixed:
            raise RuntimeError("poison")
        db.execute("INSERT INTO ofp_rows VALUES (?, ?)", (metadata.position, event.text))

    def error(self, exc: BaseException, event: Any, metadata: Metadata, failures: int) -> Any:
        return PARK


def make_app(database: str) -> Application:
    return Application(
        "ofp-test", router=Router(), projections=[OfpRows], database=database, synchronous="NORMAL"
    )
