"""The race for seats: ``python -m examples.theatre [--buyers N] [--base simple|multiproc]``.

Every buyer tries to hold the same front-row seats at once, from its own thread. The performance
actor's mailbox takes their commands one at a time: each seat is held exactly once, the others
are told it is taken, and nobody buys a seat twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
from collections import Counter

import sqlite_utils

from backstage_actors import CommandRejected

from . import make_app
from .domain import HoldSeats, Purchase, SchedulePerformance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", help="the SQLite file (default: one in a new temporary directory)")
    parser.add_argument("--base", choices=["simple", "multiproc"], default="simple")
    parser.add_argument("--buyers", type=int, default=8)
    options = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        if options.db is None:  # a temporary directory, removed when the race is over
            directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="theatre-"))
            options.db = os.path.join(directory, "theatre.db")
        race(options)


def race(options: argparse.Namespace) -> None:
    """The buyers' race on ``options.db``; prints who got which seats."""
    seats = [f"A{n}" for n in range(1, 5)]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    with make_app(options.db).start(base=options.base) as system:
        system.dispatch(SchedulePerformance("hamilton-fri", "Hamilton", seats))

        def buyer(number: int) -> None:
            # Everyone wants two seats side by side in the front row, starting from seat 1 or 3.
            wanted = seats[(number % 2) * 2 : (number % 2) * 2 + 2]
            hold_id = f"hold-{number}"
            try:
                system.dispatch(HoldSeats("hamilton-fri", hold_id, f"buyer-{number}", wanted))
                system.dispatch(Purchase("hamilton-fri", hold_id), consistency="strong")
                outcome = f"bought {'+'.join(wanted)}"
            except CommandRejected as rejected:
                outcome = f"lost: {rejected.message}"
            with lock:
                outcomes[outcome] += 1
                print(f"buyer-{number}: {outcome}")

        threads = [threading.Thread(target=buyer, args=(n,)) for n in range(options.buyers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        system.settle()
        row = sqlite_utils.Database(options.db)["performances"].get("hamilton-fri")
        print(
            f"\n{row['show']}: {row['sold']} of {row['seats']} seats sold, sold out: {bool(row['sold_out'])}"
        )
        for outcome, count in sorted(outcomes.items()):
            print(f"  {count} x {outcome}")


if __name__ == "__main__":
    main()
