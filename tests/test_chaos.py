"""Chaos under load: SIGKILL actor processes while clients send money around; lose nothing."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from examples.bank import chaos, make_app
from supervisors import walk

from .conftest import free_port, thespian_log_defs

pytestmark = [pytest.mark.process, pytest.mark.slow]

CLIENTS = 3
COMMANDS = 600  # a round: about two seconds of load on 2 cores, five kills or more
ACCOUNTS = 12
KILLS = 5  # the load goes on, a round of clients at a time, until the killer made this many
ROUNDS = 6  # at most, and no round begins after LOAD_SECONDS (the test's own timeout is 300 s)
LOAD_SECONDS = 120


# The drill runs on SQLite and on the private PostgreSQL server (app_database).
STORES = ["sqlite", "postgres"]


def test_killing_actors_under_load_loses_and_duplicates_nothing(
    tmp_path: Any, app_database: str
) -> None:
    database = app_database
    # A small cap: passivation churns under the load too. A kill every 0.2 s is far more than the
    # default 10 restarts in 10 s that make the root supervisor give up.
    app = make_app(database, max_live=8, restart_intensity=(1000, 10.0))
    system = app.start(
        base="multiproc", port=free_port(), log_defs=thespian_log_defs(str(tmp_path / "actors.log"))
    )
    killer = chaos.Killer(system, interval=0.2, seed=7)
    clients: list[Any] = []
    try:
        chaos.open_accounts(system, ACCOUNTS)
        port = system.actor_system.capabilities["Admin Port"]
        context = multiprocessing.get_context("spawn")
        paths: list[str] = []
        killer.start()
        # Kills come on a timer and the load's length depends on the machine's speed: rounds of
        # clients (new seeds, so new command ids) until the drill has seen its kills.
        deadline = time.monotonic() + LOAD_SECONDS
        while (
            len(killer.kills) < KILLS
            and len(paths) < ROUNDS * CLIENTS
            and time.monotonic() < deadline
        ):
            seeds = range(len(paths), len(paths) + CLIENTS)
            paths += [str(tmp_path / f"client-{seed}.json") for seed in seeds]
            batch = [
                context.Process(
                    target=chaos.run_client,
                    args=(port, database, seed, COMMANDS, ACCOUNTS, paths[seed]),
                )
                for seed in seeds
            ]
            clients += batch
            for client in batch:
                client.start()
            for client in batch:
                client.join(timeout=150)
            assert all(c.exitcode == 0 for c in batch), [c.exitcode for c in batch]
        killer.stop()
        sent = len(paths) * COMMANDS
        system.settle(timeout=60)
        outcomes = [o for path in paths for o in _load(path)]
        subscribers = [s.subscriber_name() for s in app.subscribers]
        report = chaos.verify(database, outcomes, sent, subscribers)
        tree = system.tree()
    finally:
        killer.stop()
        for client in clients:  # a client still retrying must not outlive the test
            if client.is_alive():
                client.kill()
                client.join(timeout=10)
        system.stop()

    assert report["problems"] == [], report
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["acknowledged"] > sent // 2
    assert len(killer.kills) >= KILLS, killer.kills
    assert sum(n.get("restarts", 0) for n in walk(tree)) > 0  # the tree shows the restarts


def _load(path: str) -> list[dict[str, Any]]:
    import json

    with open(path) as source:
        return list(json.load(source))
