"""A projection whose tables live in a file of their own: a parked event retried is projected
once, even when its process dies between the rows' commit (in its file) and the letter's
(in the application's database)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import EventStore
from backstage_actors._event_bus import retry_dead_letters
from supervisors import walk

from .conftest import thespian_log_defs, wait_until
from .own_file_projection_domain import OfpNoted, OfpRows, make_app

pytestmark = pytest.mark.process


def _rows(path: Path, text: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return int(
                db.execute("SELECT count(*) FROM ofp_rows WHERE text = ?", (text,)).fetchone()[0]
            )
        except sqlite3.OperationalError:  # (not created yet)
            return 0


def _pid(system: Any) -> int:
    try:
        tree = system.tree(timeout=1.0)
    except Exception:
        return 0
    node = next((n for n in walk(tree) if n.get("name") == OfpRows.name), {})
    return int(node.get("pid") or 0) if node.get("status") == "running" else 0


def test_a_retried_letter_is_projected_once_when_the_projection_dies_before_closing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "read-model.db"
    monkeypatch.setenv("OFP_PROJECTION_FILE", str(local))
    database = str(tmp_path / "ofp.db")
    system = make_app(database).start(
        base="multiproc", log_defs=thespian_log_defs(str(tmp_path / "a.log"))
    )
    store = EventStore(database)
    try:
        store.append("ofp-1", [OfpNoted("a"), OfpNoted("poison"), OfpNoted("b")])
        wait_until(lambda: store.dead_letters(OfpRows.name), what="the parked event")
        wait_until(lambda: _rows(local, "b") == 1, what="the event after it")
        [letter] = store.dead_letters(OfpRows.name)
        with contextlib.closing(sqlite3.connect(local)) as db, db:
            db.execute("INSERT INTO ofp_fixed VALUES (1)")  # the fix deployed
        projection = _pid(system)

        # Another writer holds the application's database: the retry commits the event's row
        # in the projection's file, then waits to close the letter, and is killed there.
        writer = sqlite3.connect(database, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        outcome: list[Any] = []

        def retry() -> None:
            with system._endpoint() as endpoint:
                outcome.append(
                    retry_dead_letters(endpoint, system.root, store, [letter.id], timeout=5)
                )

        first = threading.Thread(target=retry)
        first.start()
        try:
            wait_until(lambda: _rows(local, "poison") == 1, what="the retried event's row")
            os.kill(projection, signal.SIGKILL)
        finally:
            writer.rollback()
            writer.close()
        first.join(30)
        assert outcome == [{letter.id: "failed: no answer in time"}]

        wait_until(lambda: _pid(system) not in (0, projection), what="the projection's restart")
        assert system.retry_dead_letters([letter.id]) == {letter.id: "retried"}
        assert _rows(local, "poison") == 1
        [closed] = store.dead_letters(OfpRows.name, None)
        assert closed.status == "retried"
    finally:
        store.close()
        system.stop()
