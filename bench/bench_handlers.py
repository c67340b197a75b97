"""Handler benchmarks: projection rebuild throughput (P4) against raw sqlite-utils, and handler lag
under a sustained command load against the commands' own round trip, in the same run.

Run as ``python -m bench.bench_handlers [--quick]``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from backstage_actors import Application, EventStore, _thespian
from backstage_actors._daemon import log_defs
from examples.bank import router as bank_router
from examples.bank.domain import AccountOpened, MoneyDeposited
from examples.bank.read_models import Balances
from supervisors import walk

from . import _domain
from ._common import tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)

PAGE = 1000  # the subscribers' page: one transaction per page, as the projection commits


# -- P4: projection rebuild ---------------------------------------------------------------------


def _history(events: int, accounts: int) -> Iterator[tuple[str, list[Any]]]:
    """``(account, its events)``: an opening and deposits, ``events`` in all."""
    per_account = events // accounts
    for a in range(accounts):
        account = f"a{a}"
        yield (
            account,
            [AccountOpened(account, f"owner {a}")]
            + [MoneyDeposited(account, 1, i) for i in range(1, per_account)],
        )


def _rebuild(directory: Path, events: int, accounts: int) -> Row:
    database = str(directory / "p4.db")
    with EventStore(database) as store:
        for account, history in _history(events, accounts):
            for first in range(0, len(history), PAGE):
                store.append(
                    f"Account-{account}", history[first : first + PAGE], expected_version=first
                )
    app = Application("bench-p4", router=bank_router, projections=[Balances], database=database)
    with app.start(base="simple") as system:
        system.settle(timeout=600)  # the first catch-up, from the origin
        start = time.perf_counter()
        replayed = system.rebuild("balances")
        elapsed = time.perf_counter() - start
        with sqlite3.connect(database) as conn:
            total = conn.execute("SELECT sum(balance) FROM balances").fetchone()[0]
    expected = accounts * (events // accounts - 1)  # each account ends at its last balance
    if replayed != events or total != expected:
        raise RuntimeError(f"rebuild replayed {replayed} events, balances sum to {total}")
    return Row(
        f"P4 projection rebuild over {events:,} events",
        replayed / elapsed,
        "events/s",
        f"raw sqlite-utils insert/update, {PAGE} per transaction",
        _raw_projection(directory, events, accounts),
        target="≥ 0.5x",
    )


def _raw_projection(directory: Path, events: int, accounts: int) -> float:
    """The rows the projection writes, written by sqlite-utils from events already in memory."""
    conn = sqlite3.connect(str(directory / "p4-raw.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    db = sqlite_utils.Database(conn)
    db["balances"].create(
        {"account_id": str, "owner": str, "balance": int, "status": str}, pk="account_id"
    )
    flat = [event for _, history in _history(events, accounts) for event in history]
    table = db["balances"]
    start = time.perf_counter()
    for first in range(0, len(flat), PAGE):
        with db.atomic():
            for event in flat[first : first + PAGE]:
                if isinstance(event, AccountOpened):
                    table.insert(
                        {
                            "account_id": event.account_id,
                            "owner": event.owner,
                            "balance": 0,
                            "status": "open",
                        }
                    )
                else:
                    table.update(event.account_id, {"balance": event.balance})
    elapsed = time.perf_counter() - start
    conn.close()
    return len(flat) / elapsed


# -- handler lag under load ---------------------------------------------------------------------


class _Load(threading.Thread):
    """Dispatches at ``rate`` commands/s for ``seconds``, recording each round trip (ms)."""

    def __init__(self, system: Any, rate: float, seconds: float, wallets: int) -> None:
        super().__init__(daemon=True)
        self.system, self.rate, self.seconds, self.wallets = system, rate, seconds, wallets
        self.round_trips: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.perf_counter()
            count = int(self.rate * self.seconds)
            for i in range(count):
                delay = start + i / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                self.system.dispatch(_domain.Credit(f"l{i % self.wallets}", 1), timeout=30.0)
                self.round_trips.append((time.perf_counter() - sent) * 1000)
        except BaseException as exc:
            self.error = exc


def _lag(directory: Path, rate: float, seconds: float, wallets: int) -> list[Row]:
    lag_file = directory / "lag.txt"
    lag_file.touch()
    os.environ[_domain.LAG_FILE_ENV] = str(lag_file)  # inherited by every actor process
    app = _domain.make_app(str(directory / "lag.db"), handlers=[_domain.LagProbe])
    system = app.start(
        base="multiproc",
        port=_thespian.free_port(),
        log_defs=log_defs(str(directory / "lag.log")),
    )
    samples: list[int] = []
    try:
        opened = system.dispatch_many([_domain.OpenWallet(f"l{i}") for i in range(wallets)])
        after_opening = max(r.position for r in opened if not isinstance(r, BaseException))
        system.settle(timeout=60)
        load = _Load(system, rate, seconds, wallets)
        load.start()
        while load.is_alive():
            nodes = [n for n in walk(system.tree()) if n.get("name") == _domain.LagProbe.name]
            if nodes and "lag" in nodes[0]:
                samples.append(int(nodes[0]["lag"]))
            time.sleep(0.05)
        load.join()
        if load.error is not None:
            raise RuntimeError(f"the load failed: {load.error!r}")
        system.settle(timeout=60)
    finally:
        system.stop()
        os.environ.pop(_domain.LAG_FILE_ENV, None)
    lags_ms = []
    for line in lag_file.read_text().splitlines():
        position, recorded, handled = line.split()
        if int(position) > after_opening:
            lags_ms.append((float(handled) - float(recorded)) * 1000)
    trips = load.round_trips
    log.info(
        "lag: %d events handled, %d tree samples, %d round trips",
        len(lags_ms),
        len(samples),
        len(trips),
    )
    load_name = f"{rate:.0f} commands/s for {seconds:.0f}s, multiproc"
    trip_peer = "the command's dispatch round trip"
    return [
        Row(f"handler lag at {load_name}, median", statistics.median(samples), "events"),
        Row(f"handler lag at {load_name}, max", max(samples), "events"),
        Row(
            f"handler lag at {load_name}, median (recorded → handled)",
            statistics.median(lags_ms),
            "ms",
            f"{trip_peer}, median",
            statistics.median(trips),
            higher_is_better=False,
        ),
        Row(
            f"handler lag at {load_name}, max (recorded → handled)",
            max(lags_ms),
            "ms",
            f"{trip_peer}, max",
            max(trips),
            higher_is_better=False,
        ),
    ]


def rows(quick: bool = False) -> list[Row]:
    """Every handler figure; ``quick`` runs smaller sizes for less time."""
    with tempdir() as directory:
        result = [_rebuild(directory, 10_000 if quick else 100_000, 100 if quick else 1000)]
        result += _lag(directory, 100.0, 3.0 if quick else 10.0, 20)
    return result


if __name__ == "__main__":
    main(rows, __doc__)
