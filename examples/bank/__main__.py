"""The bank's story, in-process: ``python -m examples.bank [--db PATH] [--base simple|multiproc]``.

Without ``--db`` it runs on a database in a temporary directory, removed when the story ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator

import sqlite_utils

from backstage_actors import CommandRejected

from . import make_app
from .domain import CloseAccount, Deposit, OpenAccount, Withdraw
from .transfers import TransferMoney


def render(node: dict, depth: int = 0) -> str:
    extra = []
    for key in ("live", "position", "lag", "parked"):
        if key in node:
            extra.append(f"{key}={node[key]}")
    line = f"{'  ' * depth}{node['name']} [{node['kind']}] {node['status']} restarts={node['restarts']}"
    line += f" {' '.join(extra)}" if extra else ""
    return "\n".join([line, *(render(child, depth + 1) for child in node.get("children", []))])


@contextlib.contextmanager
def database(path: str | None) -> Iterator[str]:
    """``path``, or a database in a temporary directory that is removed afterwards."""
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bank-") as directory:
        yield os.path.join(directory, "bank.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", help="keep the bank in this SQLite file (default: a temporary one)")
    parser.add_argument("--base", choices=["simple", "multiproc"], default="simple")
    options = parser.parse_args()
    with database(options.db) as path:
        story(path, options.base)


def story(path: str, base: str) -> None:
    """Accounts, a withdrawal refused, a transfer, and one refunded to a closed account."""
    app = make_app(path)
    print(f"Bank on {path} ({base})\n")
    with app.start(base=base) as system:
        system.dispatch(OpenAccount("alice", "Alice"))
        system.dispatch(OpenAccount("bob", "Bob"))
        system.dispatch(Deposit("alice", 100_00))
        result = system.dispatch(Withdraw("alice", 30_00), consistency="strong")
        print(f"Alice withdrew 30.00: stream {result.stream_id} is at version {result.version}")
        try:
            system.dispatch(Withdraw("bob", 5_00))
        except CommandRejected as rejected:
            print(f"Bob cannot withdraw: {rejected}")
        system.dispatch(TransferMoney("t-1", "alice", "bob", 20_00), consistency="strong")
        system.dispatch(Withdraw("bob", 20_00))
        system.dispatch(CloseAccount("bob"))
        system.dispatch(TransferMoney("t-2", "alice", "bob", 10_00), consistency="strong")
        # The saga refunds t-2 asynchronously: wait until every handler saw everything.
        system.settle()
        db = sqlite_utils.Database(path)
        print("\nBalances (the projection):")
        for row in db["balances"].rows:
            print(
                f"  {row['account_id']:<6} {row['owner']:<6} {row['balance'] / 100:>8.2f}  {row['status']}"
            )
        print("\nNotifications (the handler):")
        for row in db["notifications"].rows:
            print(f"  {row['text']}")
        print("\nThe supervision tree:")
        print(render(system.tree()))


if __name__ == "__main__":
    main()
