"""The metadata indexes a trace relies on: used by the queries, and created in a store made before
they existed (SQLite and PostgreSQL); and the history verbs against a running daemon."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backstage_actors import EventStore
from backstage_actors.store._queries import where
from backstage_actors.store.records import EventQuery

from .store_conformance import ConfDeposited
from .test_cli import Backstage, running


def _plan(conn: sqlite3.Connection, field: str) -> str:
    conditions, params = where("sqlite", EventQuery(metadata=((field, "r1"),)))
    rows = conn.execute(
        f"EXPLAIN QUERY PLAN SELECT * FROM events WHERE position > 0{conditions}", params
    ).fetchall()
    return " ".join(str(r[-1]) for r in rows)


def test_sqlite_filters_on_correlation_and_causation_use_their_index(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    with EventStore(path) as store:
        store.append("s", [ConfDeposited("a", 1)], metadata={"correlation_id": "r1"})
    # A store made before the history indexes existed: they are created when it is opened.
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX events_correlation; DROP INDEX events_causation; DROP TABLE rejections;"
    )
    assert "events_correlation" not in _plan(conn, "correlation_id")
    conn.close()
    with EventStore(path) as store:
        assert "USING INDEX events_correlation" in _plan(store.conn, "correlation_id")
        assert "USING INDEX events_causation" in _plan(store.conn, "causation_id")
        assert store.recorder.rejections("correlation_id", "r1") == []
        found = store.recorder.query_page(0, 10, EventQuery(metadata=(("correlation_id", "r1"),)))
        assert len(found) == 1


def test_postgres_filters_on_correlation_use_their_index(pg_dsn: str) -> None:
    with EventStore(pg_dsn) as store:
        store.append("s", [ConfDeposited("a", 1)], metadata={"correlation_id": "r1"})
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX events_correlation")
    with EventStore(pg_dsn) as store:  # opened again: the index is back
        conditions, params = where("postgres", EventQuery(metadata=(("correlation_id", "r1"),)))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            plan = conn.execute(
                f"EXPLAIN SELECT * FROM events WHERE position > 0{conditions}", params
            ).fetchall()
        assert "events_correlation" in " ".join(r[0] for r in plan)
        assert (
            len(store.recorder.query_page(0, 10, EventQuery(metadata=(("correlation_id", "r1"),))))
            == 1
        )


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backstage]:
    with running(tmp_path_factory.mktemp("home")) as backstage:
        yield backstage


@pytest.mark.process
def test_history_verbs_find_the_daemons_app_and_database(bank: Backstage) -> None:
    bank.send("OpenAccount", {"account_id": "hx", "owner": "Hex"})
    sent = bank.send("Deposit", {"account_id": "hx", "amount": 70})
    state = bank.json("state", "Account-hx")  # no --app, no --db: the daemon's
    assert (state["version"], state["state"]["balance"]) == (2, 70)
    assert bank.json("state", "Account-hx", "--version", "1")["state"]["balance"] == 0
    position = sent["events"][0]["position"]
    [event] = [
        e for e in bank.json("events", "--since", str(position)) if e["position"] == position
    ]
    tree = bank.json("trace", bank.json("events", "Account-hx")[1]["metadata"]["command_id"])
    assert [r["command"] for r in tree["roots"]] == ["Deposit"]
    refused = bank.run("send", "Deposit", json.dumps({"account_id": "nobody-hx", "amount": 1}))
    assert refused.returncode == 1
    assert event["type"] == "MoneyDeposited"
    # The refusal was recorded by the daemon's aggregate (multiproc), and its trace shows it.
    with sqlite3.connect(bank.database) as conn:
        [(command_id,)] = conn.execute(
            "SELECT command_id FROM rejections WHERE stream_id = 'Account-nobody-hx'"
        ).fetchall()
    [root] = bank.json("trace", command_id)["roots"]
    assert (root["command"], root["outcome"]) == ("Deposit", "rejected")
    assert "there is no account nobody-hx" in root["error"]
