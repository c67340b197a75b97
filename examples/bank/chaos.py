"""A chaos drill for the bank: clients send money around while a killer SIGKILLs actor processes.

Clients name every command (``command_id``) and retry it under the same name when the outcome
is unknown (a timeout, a crashed aggregate): the runtime answers a repeat from the store instead
of executing it twice. Afterwards :func:`verify` checks what users must be able to trust: nothing
acknowledged is lost or duplicated, the balances read model equals a recomputation from the
events, money is conserved across transfers, every subscriber caught up, and every command got
an answer. The drill runs in the test suite (small) and in ``bench/`` (large).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any

from backstage_actors import (
    AggregateFailed,
    CommandRejected,
    DispatchTimeout,
    SystemNotRunning,
)
from backstage_actors.store import EventStore
from supervisors import walk

from . import make_app
from .domain import Deposit, OpenAccount, Withdraw
from .transfers import TransferMoney

__all__ = ["Killer", "open_accounts", "run_client", "verify"]

#: Kinds of actors the killer may SIGKILL. The root supervisor and Thespian's admin are the
#: system's guardians: without them nothing is left to restart anything.
KILLABLE = ("aggregate", "handler", "projection", "process_manager", "store", "router", "events")
RETRYABLE = (DispatchTimeout, AggregateFailed, SystemNotRunning)


def accounts(count: int) -> list[str]:
    return [f"acct-{n}" for n in range(count)]


def open_accounts(system: Any, count: int, initial: int = 1000) -> None:
    for account in accounts(count):
        system.dispatch(OpenAccount(account, account.upper()), timeout=30)
        system.dispatch(Deposit(account, initial), timeout=30)


def run_client(
    port: int,
    database: str,
    seed: int,
    count: int,
    n_accounts: int,
    out_path: str,
    ready: Any = None,
) -> None:
    """One client process: ``count`` random commands, each retried under its own id until it has
    a definite outcome; the outcomes go to ``out_path`` as JSON. With ``ready`` (a
    ``multiprocessing`` barrier) it starts once every party has attached: a measurement then
    leaves out the processes' start."""
    from backstage_actors import _thespian

    system = make_app(database).attach(_thespian.attach(port), database=database)
    if ready is not None:
        ready.wait(120)
    rng = random.Random(seed)
    names = accounts(n_accounts)
    outcomes = []
    for index in range(count):
        kind = rng.choice(("deposit", "withdraw", "transfer", "transfer"))
        amount = rng.randint(1, 50)
        source, target = rng.sample(names, 2)
        command: Any
        if kind == "deposit":
            command = Deposit(source, amount)
        elif kind == "withdraw":
            command = Withdraw(source, amount)
        else:
            command = TransferMoney(f"t-{seed}-{index}", source, target, amount)
        command_id = f"chaos-{seed}-{index}"
        outcome: dict[str, Any] = {
            "command_id": command_id,
            "kind": kind,
            "ok": False,
            "attempts": 0,
        }
        for attempt in range(20):
            outcome["attempts"] = attempt + 1
            try:
                result = system.dispatch(command, metadata={"command_id": command_id}, timeout=10)
            except CommandRejected as exc:
                outcome["error"] = str(exc)
                break
            except RETRYABLE as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"
                time.sleep(min(1.0, 0.05 * 2**attempt))
                continue
            outcome.update(ok=True, error="", event_ids=[e.event_id for e in result.events])
            break
        outcomes.append(outcome)
    with open(out_path, "w") as out:
        json.dump(outcomes, out)


class Killer(threading.Thread):
    """SIGKILLs a random killable actor every ``interval`` seconds and times its recovery."""

    def __init__(self, system: Any, interval: float, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.interval = interval
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.kills: list[dict[str, Any]] = []

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                victims = [
                    n
                    for n in walk(self.system.tree(timeout=5))
                    if n.get("kind") in KILLABLE and n.get("pid")
                ]
            except Exception:
                continue  # the tree is being rebuilt; try again at the next tick
            if not victims:
                continue
            victim = self.rng.choice(victims)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed_at = time.monotonic()
            kill = {"kind": victim["kind"], "name": victim["name"], "pid": victim["pid"]}
            kill["recovery_ms"] = self._recovery(victim, killed_at)
            self.kills.append(kill)

    def _recovery(self, victim: dict[str, Any], killed_at: float) -> float | None:
        """Milliseconds until the victim's name runs again in another process (None: not seen;
        an idle aggregate is only restarted by its next command)."""
        if victim["kind"] == "aggregate":
            return None
        deadline = killed_at + 15
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                # A short timeout: a busy subscriber shows as unresponsive, it is asked again.
                for node in walk(self.system.tree(timeout=0.3)):
                    if (
                        node["name"] == victim["name"]
                        and node.get("pid") not in (None, victim["pid"])
                        and node["status"] == "running"
                    ):
                        return round((time.monotonic() - killed_at) * 1000, 1)
            except Exception:
                pass
            time.sleep(0.05)  # between polls: the tree is gathered by messages, not free
        return None


def verify(
    database: str, outcomes: list[dict[str, Any]], expected_commands: int, subscribers: list[str]
) -> dict[str, Any]:
    """The drill's findings; the ``problems`` list is empty when every invariant holds."""
    store = EventStore(database)
    try:
        events = list(store.read_all())
        last = store.last_position()
        checkpoints = {name: store.checkpoint(name) for name in subscribers}
        # The projection's table through the store's handle: SQLite or PostgreSQL alike.
        rows = dict(store.handle.execute("SELECT account_id, balance FROM balances").fetchall())
    finally:
        store.close()
    problems: list[str] = []
    stored_ids = Counter(e.event_id for e in events)
    by_command: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_command[str(event.metadata.get("command_id"))].append(event)
    acknowledged = [o for o in outcomes if o["ok"]]
    lost = [o for o in acknowledged if any(stored_ids[i] != 1 for i in o["event_ids"])]
    duplicated = [
        o for o in acknowledged if len(by_command[o["command_id"]]) != len(o["event_ids"])
    ]
    if len(outcomes) != expected_commands:
        problems.append(f"{expected_commands - len(outcomes)} commands got no answer at all")
    if lost:
        problems.append(
            f"{len(lost)} acknowledged commands lost events, e.g. {lost[0]['command_id']}"
        )
    if duplicated:
        problems.append(
            f"{len(duplicated)} commands stored events twice, e.g. {duplicated[0]['command_id']}"
        )
    balances = _replayed_balances(events)
    if rows != balances:
        wrong = sorted(k for k in set(rows) | set(balances) if rows.get(k) != balances.get(k))
        problems.append(f"balances projection differs from the events for {wrong[:5]}")
    external = sum(
        e.data.amount if e.type == "MoneyDeposited" else -e.data.amount
        for e in events
        if e.type in ("MoneyDeposited", "MoneyWithdrawn") and e.data.transfer_id is None
    )
    if sum(balances.values()) != external:
        problems.append(
            f"money is not conserved: balances {sum(balances.values())} != deposits - withdrawals {external}"
        )
    behind = {name: position for name, position in checkpoints.items() if position != last}
    if behind:
        problems.append(f"subscribers not caught up with position {last}: {behind}")
    return {
        "commands": len(outcomes),
        "acknowledged": len(acknowledged),
        "rejected": sum(1 for o in outcomes if not o["ok"] and "rejected" in o.get("error", "")),
        "failed": sum(1 for o in outcomes if not o["ok"] and "rejected" not in o.get("error", "")),
        "retried": sum(1 for o in outcomes if o["attempts"] > 1),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "events": len(events),
        "problems": problems,
    }


def _replayed_balances(events: list[Any]) -> dict[str, int]:
    balances: dict[str, int] = {}
    for event in events:
        if event.type == "AccountOpened":
            balances[event.data.account_id] = 0
        elif event.type in ("MoneyDeposited", "MoneyWithdrawn", "TransferRefunded"):
            balances[event.data.account_id] = event.data.balance
    return balances
