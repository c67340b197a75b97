"""Projections: read models as plain SQLite tables, updated exactly once per event.

A projection's writes and its checkpoint are committed in one transaction, through the
``sqlite_utils.Database`` it is handed: after a crash it resumes exactly where its last commit
left it, with no event applied twice or lost. ``tables`` names the tables it owns, so a rebuild can
drop them and replay every event from the origin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import sqlite_utils

from .handler import Metadata, Subscriber

__all__ = ["Projection"]


class Projection(Subscriber):
    """Override :meth:`project` (and :meth:`init` to create tables with indexes or constraints).

    ``database`` is the SQLite file the tables live in; None means the application's database,
    next to the events.
    """

    kind: ClassVar[str] = "projection"
    tables: ClassVar[Sequence[str]] = ()
    database: ClassVar[str | None] = None

    def init(self, db: sqlite_utils.Database) -> None:
        """Create the tables if they do not exist (called at start and after a reset)."""

    def project(self, event: Any, metadata: Metadata, db: sqlite_utils.Database) -> None:
        """Write what ``event`` changes to the read model through ``db``, inside the transaction
        that also moves the checkpoint (ignore events you do not care about)."""
        raise NotImplementedError
