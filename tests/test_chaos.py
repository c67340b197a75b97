"""Chaos under load: SIGKILL actor processes while clients send money around; lose nothing."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from examples.bank import chaos, make_app
from supervisors import walk

from .conftest import free_port, thespian_log_defs

pytestmark = [pytest.mark.process, pytest.mark.slow]

CLIENTS = 3
COMMANDS = 600  # about two seconds of load on 2 cores: room for five kills or more
ACCOUNTS = 12


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
        paths = [str(tmp_path / f"client-{n}.json") for n in range(CLIENTS)]
        clients = [
            context.Process(
                target=chaos.run_client, args=(port, database, seed, COMMANDS, ACCOUNTS, path)
            )
            for seed, path in enumerate(paths)
        ]
        killer.start()
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=150)
        killer.stop()
        assert all(c.exitcode == 0 for c in clients), [c.exitcode for c in clients]
        system.settle(timeout=60)
        outcomes = [o for path in paths for o in _load(path)]
        subscribers = [s.subscriber_name() for s in app.subscribers]
        report = chaos.verify(database, outcomes, CLIENTS * COMMANDS, subscribers)
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
    assert report["acknowledged"] > CLIENTS * COMMANDS // 2
    assert len(killer.kills) >= 5, killer.kills
    assert sum(n.get("restarts", 0) for n in walk(tree)) > 0  # the tree shows the restarts


def _load(path: str) -> list[dict[str, Any]]:
    import json

    with open(path) as source:
        return list(json.load(source))
