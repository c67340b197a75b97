"""Cluster figures (issue 19): failover, subscriber takeover, and the cost of forwarding.

Three members on one machine (127.0.0.2-4, each in a PID namespace of its own, see
``tests/cluster_members.py``) share a private PostgreSQL server:

- **failover**: from the SIGKILL of every process of a member to a command for one of its
  aggregates answered from a survivor (a client retrying it by name every 0.2 s);
- **subscriber takeover**, over the same span: from the kill to the projection, now run by a
  survivor, holding that command's event;
- **forwarding**: the same client processes, spread over 3 members (each command for a stream
  another member owns is forwarded there) against one member (no cluster), commands/s. Two
  cores cannot show scaling: the per-member rows (commands each served and forwarded) are what
  to extrapolate to real hosts from.

Run as ``python -m bench.bench_cluster [--quick]`` (root: PID namespaces need it).
"""

from __future__ import annotations

import logging
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from backstage_actors._lease import leases_held
from backstage_actors._placement import owner
from backstage_actors._thespian import free_port

from ._common import tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
RETRY_EVERY = 0.2  # a client's patience per attempt while the owner is dead


def _bank() -> Any:
    from examples.bank import make_app

    return make_app()


def _deposit(account: str, amount: int = 1) -> Any:
    from examples.bank.domain import Deposit

    return Deposit(account, amount)


def _router_node(client: Any) -> dict[str, Any]:
    from supervisors import walk

    return next(n for n in walk(client.tree(timeout=10)) if n.get("kind") == "router")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _until_answered(client: Any, command: Any, command_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.dispatch(
                command, metadata={"command_id": command_id}, timeout=RETRY_EVERY
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# -- failover and takeover --------------------------------------------------------------------


def _failover(dsn: str, directory: Path, kills: int) -> tuple[list[float], list[float]]:
    from examples.bank.domain import OpenAccount
    from tests.cluster_members import Members

    members = Members(HOSTS, dsn, directory, free_port)
    bank = _bank()
    names = ["balances"]  # the projection whose lease says who runs the subscribers
    keys = [f"{HOSTS[i]}:{members.ports[i]}" for i in range(3)]
    client: Any = None
    failovers: list[float] = []
    takeovers: list[float] = []
    try:
        members.start(0, shards=1, roles=["aggregates"])  # the leader stays up
        members.start(1, shards=1)
        members.start(2, shards=1)
        client = bank.attach(port=members.ports[0], host=HOSTS[0], database=dsn)
        accounts = [f"acct-{n}" for n in range(60)]
        for account in accounts:
            client.dispatch(OpenAccount(account, "x"))
        for kill in range(kills):
            _wait(lambda: _router_node(client).get("placement") == sorted(keys), 30, "3 members")
            holder = _holder(dsn, names, keys)
            victim = keys.index(holder)
            account = next(
                a for a in accounts if owner(bank.router.stream_of(_deposit(a))[1], keys) == holder
            )
            client.dispatch(_deposit(account))  # warm: forwarded to its owner, the victim
            killed = members.kill(victim)
            result = _until_answered(client, _deposit(account), f"kill-{kill}")
            failovers.append(time.monotonic() - killed)
            _wait(
                lambda at=result.events[-1].position: client.store.checkpoint("balances") >= at,
                60,
                "the takeover",
            )
            takeovers.append(time.monotonic() - killed)
            log.info(
                "kill %d of %s: failover %.2fs, takeover %.2fs",
                kill,
                holder,
                failovers[-1],
                takeovers[-1],
            )
            members.start(victim, shards=1)
    finally:
        if client is not None:
            client.stop()
        members.close()
    return failovers, takeovers


def _holder(dsn: str, names: list[str], keys: list[str]) -> str:
    """The member that runs the ``balances`` projection now."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for member, held in leases_held(dsn, "bank", names).items():
            if "balances" in held and member in keys:
                return member
        time.sleep(0.1)
    raise RuntimeError("no member holds the balances projection's lease")


# -- the cost of forwarding -------------------------------------------------------------------


def _throughput(
    dsn: str, directory: Path, count: int, threads: int, seconds: float
) -> tuple[float, list[dict[str, Any]]]:
    """Commands/s of ``threads`` client processes spread over ``count`` members (1: no
    cluster), and each member's router figures."""
    from examples.bank.domain import OpenAccount
    from tests.cluster_members import Members

    members = Members(HOSTS[:count], dsn, directory / f"m{count}", free_port)
    (directory / f"m{count}").mkdir(exist_ok=True)
    bank = _bank()
    clients: list[Any] = []
    try:
        for index in range(count):
            options: dict[str, Any] = {"shards": 1} if count > 1 else {"join": None}
            members.start(index, **options)
            clients.append(bank.attach(port=members.ports[index], host=HOSTS[index], database=dsn))
        if count > 1:
            keys = sorted(f"{HOSTS[i]}:{members.ports[i]}" for i in range(count))
            for client in clients:
                _wait(
                    lambda client=client: _router_node(client).get("placement") == keys,
                    30,
                    "every placement",
                )
        accounts = [f"t{count}-{n}" for n in range(threads * 10)]
        clients[0].dispatch_many([OpenAccount(account, "x") for account in accounts])
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(threads + 1)
        results = context.Queue()
        workers = []
        for index in range(threads):
            where = (HOSTS[index % count], members.ports[index % count])
            mine = accounts[index::threads]
            worker = context.Process(
                target=_client, args=(where, dsn, mine, seconds, barrier, results)
            )
            worker.start()
            workers.append(worker)
        barrier.wait(timeout=120)
        done = [results.get(timeout=seconds + 120) for _ in workers]
        for worker in workers:
            worker.join(30)
        if any(isinstance(each, str) for each in done):
            raise RuntimeError(f"a client failed: {done}")
        rate = sum(n for n, _ in done) / max(elapsed for _, elapsed in done)
        figures = [_router_node(client) for client in clients]
    finally:
        for client in clients:
            client.stop()
        members.close()
    return rate, figures


def _client(
    where: tuple[str, int],
    dsn: str,
    accounts: list[str],
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    """A client process: deposits to its accounts through the member at ``where`` for
    ``seconds``; puts ``(commands, elapsed)`` (or the error's text) on ``results``."""
    try:
        system = _bank().attach(port=where[1], host=where[0], database=dsn)
        system.dispatch(_deposit(accounts[0]))  # (connected and warm)
        barrier.wait(timeout=120)
        began = time.perf_counter()
        n = 0
        while time.perf_counter() - began < seconds:
            system.dispatch(_deposit(accounts[n % len(accounts)]))
            n += 1
        results.put((n, time.perf_counter() - began))
        system.stop()
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def _served(node: dict[str, Any]) -> int:
    """Commands a member's shards executed (all aggregate types)."""
    total = 0
    for meter in node.get("commands", {}).values():
        for entry in meter.get("commands", {}).values():
            total += sum(entry.get("outcomes", {}).values())
    return total


def rows(quick: bool = False) -> list[Row]:
    from tests.pg_fixture import PrivateServer, _bindir

    bindir = _bindir()
    if bindir is None:
        log.warning("no PostgreSQL server binaries: no cluster figures")
        return []
    server = PrivateServer(bindir)
    server.start()
    result: list[Row] = []
    try:
        with tempdir() as directory:
            kills = 3 if quick else 5
            (directory / "failover").mkdir()
            failovers, takeovers = _failover(
                server.dsn(server.new_schema()), directory / "failover", kills
            )
            seconds, threads = (5.0, 6) if quick else (15.0, 6)
            one, _ = _throughput(server.dsn(server.new_schema()), directory, 1, threads, seconds)
            three, nodes = _throughput(
                server.dsn(server.new_schema()), directory, 3, threads, seconds
            )
    finally:
        server.remove()
    spread = f"max {max(failovers):.2f}s over {kills} kills"
    result.append(
        Row(
            f"failover: SIGKILL of a member to its aggregate answering from a survivor ({spread})",
            statistics.median(failovers),
            "s (median)",
            target="≤ 3 s",
            higher_is_better=False,
        )
    )
    result.append(
        Row(
            f"subscriber takeover, same span (max {max(takeovers):.2f}s)",
            statistics.median(takeovers),
            "s (median)",
            target="≤ 3 s",
            higher_is_better=False,
        )
    )
    result.append(
        Row(
            f"dispatch, {threads} client processes over 3 members on one machine",
            three,
            "commands/s",
            "the same clients on 1 member (no cluster)",
            one,
            target="≥ 0.7x",
        )
    )
    for index, node in enumerate(nodes):
        result.append(
            Row(
                f"member {index} of 3: commands its shards ran"
                f" (it forwarded {node.get('forwarded', 0)} to their owners)",
                _served(node),
                "commands",
            )
        )
    return result


if __name__ == "__main__":
    main(rows, __doc__)
