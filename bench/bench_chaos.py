"""The chaos drill at scale: the bank under load while actor processes are SIGKILLed.

Reports commands acknowledged, lost (must be 0), duplicated (must be 0), kills survived and the
recovery time after each kill (until the killed actor runs again in a new process). The peer is
the same drill without the killer: what the load achieves when nothing is killed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from backstage_actors import _thespian
from bench._common import tempdir
from bench._report import Row, main
from examples.bank import chaos, make_app

log = logging.getLogger("bench.chaos")


def drill(
    clients: int, commands: int, accounts: int, kill_interval: float | None
) -> dict[str, Any]:
    """One run of the drill; ``kill_interval=None`` runs it without the killer."""
    with tempdir() as tmp:
        database = str(tmp / "bank.db")
        app = make_app(database, max_live=50, restart_intensity=(1000, 10.0))
        system = app.start(base="multiproc", port=_thespian.free_port())
        killer = chaos.Killer(system, kill_interval, seed=11) if kill_interval else None
        try:
            chaos.open_accounts(system, accounts)
            port = system.actor_system.capabilities["Admin Port"]
            context = multiprocessing.get_context("spawn")
            ready = context.Barrier(clients + 1)  # the clients attached, and this process
            paths = [str(tmp / f"client-{n}.json") for n in range(clients)]
            processes = [
                context.Process(
                    target=chaos.run_client,
                    args=(port, database, 100 + n, commands, accounts, path, ready),
                )
                for n, path in enumerate(paths)
            ]
            for process in processes:
                process.start()
            ready.wait(120)  # timed from here: the processes' start is not the drill's
            started = time.perf_counter()
            if killer:
                killer.start()
            for process in processes:
                process.join()
            elapsed = time.perf_counter() - started
            if killer:
                killer.stop()
            settling = time.perf_counter()
            system.settle(timeout=120)
            settled = time.perf_counter() - settling
            outcomes = [o for path in paths for o in json.loads(Path(path).read_text())]
            names = [s.subscriber_name() for s in app.subscribers]
            report = chaos.verify(database, outcomes, clients * commands, names)
        finally:
            if killer:
                killer.stop()
            system.stop()
    kills = killer.kills if killer else []
    recoveries = [k["recovery_ms"] for k in kills if k["recovery_ms"] is not None]
    report.update(
        seconds=elapsed,
        settle_seconds=settled,
        kills=len(kills),
        recovery_median_ms=statistics.median(recoveries) if recoveries else None,
        recovery_max_ms=max(recoveries) if recoveries else None,
        killed_kinds=sorted({k["kind"] for k in kills}),
    )
    log.info("drill (killer every %ss): %s", kill_interval, report)
    return report


def rows(quick: bool = False) -> list[Row]:
    clients, commands = (3, 100) if quick else (6, 500)
    calm = drill(clients, commands, 20, None)
    storm = drill(clients, commands, 20, 0.25)
    if storm["problems"]:
        log.error("chaos drill found problems: %s", storm["problems"])
    return [
        Row(
            "chaos: commands acknowledged under SIGKILLs",
            storm["acknowledged"],
            "commands",
            "no kills",
            calm["acknowledged"],
        ),
        Row(
            "chaos: acknowledged commands lost",
            storm["lost"],
            "commands",
            target="0",
            higher_is_better=False,
        ),
        Row(
            "chaos: commands stored twice",
            storm["duplicated"],
            "commands",
            target="0",
            higher_is_better=False,
        ),
        Row(
            f"chaos: kills survived ({', '.join(storm['killed_kinds'])})",
            storm["kills"],
            "kills",
            target="invariants hold" if not storm["problems"] else "; ".join(storm["problems"]),
        ),
        Row(
            "chaos: recovery after a kill (median / max)",
            storm["recovery_median_ms"] or 0.0,
            "ms",
            "max",
            storm["recovery_max_ms"],
            higher_is_better=False,
        ),
        Row(
            "chaos: subscribers settled after the load (calm / under kills)",
            calm["settle_seconds"],
            "s",
            "under kills",
            storm["settle_seconds"],
            higher_is_better=False,
        ),
        Row(
            "chaos: throughput under kills",
            storm["commands"] / storm["seconds"],
            "commands/s",
            "no kills",
            calm["commands"] / calm["seconds"],
        ),
    ]


if __name__ == "__main__":
    main(rows, __doc__)
