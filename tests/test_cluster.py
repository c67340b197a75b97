"""A cluster on one machine: members on 127.0.0.2-127.0.0.4 sharing the private PostgreSQL.

Every member runs in a PID namespace of its own (``cluster_members``): a kill is a kill of every
process of it, and no process is left after a test. Membership comes from Thespian's convention
(the leader's registry hears of each member); a member that stops leaves the view and comes back
when it starts again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from backstage_actors._cluster import cluster_status, freeze, members_of
from backstage_actors._placement import owner
from backstage_actors._thespian import free_port
from backstage_actors._thespian.convention import is_loopback
from backstage_actors.errors import (
    BackstageError,
    DispatchTimeout,
    SystemNotRunning,
    WrongExpectedVersion,
)
from examples.bank import make_app as make_bank
from examples.bank.domain import Account, Deposit, OpenAccount, Withdraw

from .cluster_members import REPO, Members, Partition
from .conftest import wait_until

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture
def cluster(pg_dsn: str, tmp_path: Any) -> Iterator[Members]:
    """Members on ``HOSTS`` (member 0 leads); every process of each is gone at teardown."""
    members = Members(HOSTS, pg_dsn, tmp_path, free_port)
    clients: list[Any] = []

    def client(index: int) -> Any:
        system = make_bank().attach(port=members.ports[index], host=HOSTS[index], database=pg_dsn)
        clients.append(system)
        return system

    members.client = client  # type: ignore[attr-defined]
    try:
        yield members
    finally:
        for system in clients:
            system.stop()
        members.close()


def addresses(system: Any) -> set[str]:
    return {member.address for member in members_of(system.actor_system)}


def hosts(system: Any) -> set[str]:
    return {address.split("|")[-1].split(":")[0] for address in addresses(system)}


def test_members_join_see_each_other_leave_and_rejoin(cluster: Any) -> None:
    cluster.start(0)
    cluster.start(1)
    cluster.start(2, roles=["aggregates"])
    clients = [cluster.client(i) for i in range(3)]
    for system in clients:
        wait_until(lambda system=system: hosts(system) == set(HOSTS), what="three members")
    view = {m.address.split("|")[-1].rstrip(")"): m for m in members_of(clients[1].actor_system)}
    address = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    assert view[address[0]].leader and not view[address[1]].leader
    assert view[address[2]].roles == ("aggregates",)
    assert view[address[1]].roles == ("aggregates", "subscribers")

    wait_until(lambda: converged(clients, address), timeout=20, what="every placement")
    clients[0].dispatch(OpenAccount("ada", "Ada"))  # what `backstage members` shows
    clients[0].settle(timeout=20)

    def status_now() -> dict[str, Any]:
        rows = cluster_status(clients[2].actor_system, ("balances",))
        return {row["member"]: row for row in rows}

    status = wait_until(  # (shards report their live aggregates within a second)
        lambda: (
            (s := status_now()) and sum(r.get("live_aggregates", 0) for r in s.values()) == 1 and s
        ),
        what="the live aggregate reported",
    )
    assert set(status) == set(address) and all(row["answered"] for row in status.values())
    assert status[address[0]]["placement"] == sorted(address)
    assert {name for row in status.values() for name in row["leases"]} == {
        "balances",
        *(f"member:{a}" for a in address),
    }

    cluster.stop(2)
    wait_until(lambda: hosts(clients[0]) == set(HOSTS[:2]), what="the member to leave")
    cluster.start(2)
    wait_until(lambda: hosts(clients[1]) == set(HOSTS), what="the member to rejoin")


def test_a_member_needs_multiproc_and_postgresql_and_known_roles(tmp_path: Any) -> None:
    with pytest.raises(BackstageError) as caught:
        make_bank().start(
            base="simple", database=str(tmp_path / "x.db"), join="127.0.0.2:1", roles=("web",)
        )
    text = str(caught.value)
    assert "multiproc" in text and "PostgreSQL" in text and "unknown role web" in text


def test_a_killed_members_subscribers_resume_on_a_survivor_exactly_once(cluster: Any) -> None:
    cluster.start(0, roles=["aggregates"])  # no subscribers here: member 1 takes them
    member = cluster.start(1)
    cluster.start(2)
    survivor = cluster.client(2)
    wait_until(lambda: hosts(survivor) == set(HOSTS), what="3 members")
    survivor.dispatch(OpenAccount("ada", "Ada"))
    survivor.dispatch(Deposit("ada", 10))
    last = survivor.store.last_position()
    wait_until(lambda: survivor.store.checkpoint("balances") == last, what="member 1")
    assert member.pids()

    cluster.kill(1)
    killed = time.monotonic()
    assert not member.pids()  # every process of it, at once
    survivor.dispatch(Deposit("ada", 5), timeout=10)
    last = survivor.settle(timeout=20)
    takeover = time.monotonic() - killed
    assert survivor.store.checkpoint("balances") == last
    rows = list(survivor.store.handle.query("SELECT account_id, balance FROM balances"))
    assert rows == [("ada", 15)]  # exactly once across the takeover
    assert takeover < 5, f"the subscribers took {takeover:.1f}s to resume"


def test_a_loopback_address_other_than_127_0_0_1_is_not_remote() -> None:
    assert is_loopback("127.0.0.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("0.0.0.0")


def aggregates_by_member(client: Any) -> dict[str, str]:
    """stream id -> the member whose shard hosts it now, from the member's tree."""
    tree = client.tree()
    found = {}
    router = next(n for n in walk(tree) if n.get("kind") == "router")
    for node in walk(tree):
        if node.get("kind") == "aggregate":
            found[node["name"]] = router["member"]
    return found


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from walk(child)


def placement_of(client: Any) -> list[str] | None:
    router = next(n for n in walk(client.tree()) if n.get("kind") == "router")
    return router.get("placement")


def converged(clients: list[Any], members: list[str]) -> bool:
    return all(placement_of(client) == sorted(members) for client in clients)


def test_commands_given_to_any_member_reach_the_owner(cluster: Any) -> None:
    for index in range(3):
        cluster.start(index, shards=2)
    clients = [cluster.client(i) for i in range(3)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members), timeout=20, what="every member's placement")
    accounts = [f"acct-{n}" for n in range(30)]
    for n, account in enumerate(accounts):  # each through another member, and by dispatch_many
        clients[n % 3].dispatch(OpenAccount(account, "x"))
    results = clients[1].dispatch_many([Deposit(account, 1) for account in accounts])
    assert all(not isinstance(result, BaseException) for result in results), results
    for n, account in enumerate(accounts):  # again through another member: it knows the way
        clients[(n + 1) % 3].dispatch(Deposit(account, 1))
    hosted: dict[str, str] = {}
    for client in clients:
        for stream, member in aggregates_by_member(client).items():
            assert stream not in hosted, f"{stream} is live on {hosted[stream]} and {member}"
            hosted[stream] = member
    streams = {
        account: make_bank().router.stream_of(OpenAccount(account, "x"))[1] for account in accounts
    }
    assert set(hosted) == set(streams.values())
    for stream, member in hosted.items():
        assert member == owner(stream, members), stream
    assert len(set(hosted.values())) == 3  # (30 streams: each member owns some)
    assert clients[0].store.last_position() == 90


def test_only_moved_aggregates_move_and_a_returning_owner_never_serves_a_stale_state(
    cluster: Any,
) -> None:
    for index in range(3):
        cluster.start(index, shards=1)
    clients = [cluster.client(i) for i in range(3)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members), timeout=20, what="3 members placed")
    bank = make_bank().router
    accounts = {f"acct-{n}": bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1] for n in range(24)}
    for account in accounts:
        clients[0].dispatch(OpenAccount(account, "x"))
        clients[0].dispatch(Deposit(account, 10))
    before = {**aggregates_by_member(clients[0]), **aggregates_by_member(clients[1])}
    before.update(aggregates_by_member(clients[2]))
    moving = [a for a, s in accounts.items() if before[s] == members[2]]
    assert moving and len(moving) < len(accounts)

    cluster.stop(2)  # its aggregates, and only they, move to 0 and 1
    wait_until(lambda: converged(clients[:2], members[:2]), timeout=20, what="2 members")
    after = {**aggregates_by_member(clients[0]), **aggregates_by_member(clients[1])}
    assert {s: m for s, m in before.items() if m != members[2]} == after  # none moved, none lost
    for account in moving:
        clients[0].dispatch(Deposit(account, 5))  # their new owners rebuild them: 15
    hosted = {**aggregates_by_member(clients[0]), **aggregates_by_member(clients[1])}
    for account in moving:
        assert hosted[accounts[account]] == owner(accounts[account], members[:2])

    cluster.start(2, shards=1)  # they move back: their interim owners passivate them at once
    clients[2] = cluster.client(2)
    wait_until(lambda: converged(clients, members), timeout=20, what="3 members again")
    for client in clients[:2]:
        assert not {accounts[a] for a in moving} & set(aggregates_by_member(client))
    for account in moving:
        clients[1].dispatch(Deposit(account, 100))  # served by member 2: 115

    cluster.stop(2)  # back to the interim owners, which must not answer from their 15
    wait_until(lambda: converged(clients[:2], members[:2]), timeout=20, what="2 members again")
    for account in moving:
        result = clients[0].dispatch(Withdraw(account, 50))  # refused on a stale 15
        assert result.events[0].data.amount == 50
    assert clients[0].store.last_position() == 48 + 3 * len(moving)


RETRIED: list[str] = []  # what clients retried, for a failing test's message


def named(client: Any, command: Any, command_id: str, deadline: float = 60) -> Any:
    """Dispatch ``command`` named ``command_id`` until it is answered (a client's retries)."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            return client.dispatch(command, metadata={"command_id": command_id}, timeout=5)
        except (WrongExpectedVersion, DispatchTimeout, SystemNotRunning) as exc:
            RETRIED.append(type(exc).__name__)
            if time.monotonic() > give_up:
                raise
            time.sleep(0.05)


def test_two_members_hosting_one_aggregate_at_once_store_no_wrong_or_doubled_event(
    cluster: Any,
) -> None:
    cluster.start(0, shards=1)
    cluster.start(1, shards=1)
    clients = [cluster.client(0), cluster.client(1)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members[:2]), timeout=20, what="2 members")
    bank = make_bank().router
    # An account member 0 owns among {0, 1} and member 2 among {0, 1, 2}.
    account = next(
        f"acct-{n}"
        for n in range(1000)
        if owner(bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1], members[:2]) == members[0]
        and owner(bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1], members) == members[2]
    )
    stream = bank.stream_of(OpenAccount(account, "x"))[1]
    clients[0].dispatch(OpenAccount(account, "x"))
    freeze(clients[0].actor_system)  # member 0 keeps its view: it still owns the account
    cluster.start(2, shards=1)
    clients.append(cluster.client(2))
    wait_until(lambda: converged(clients[1:], members), timeout=20, what="members 1 and 2")
    assert placement_of(clients[0]) == sorted(members[:2])

    acknowledged: dict[str, int] = {}

    def deposit(index: int) -> None:
        for n in range(25):
            command_id = f"c{index}-{n}"
            named(clients[index], Deposit(account, 1), command_id)
            acknowledged[command_id] = 1

    threads = [threading.Thread(target=deposit, args=(i,)) for i in (0, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    hosts_of = [stream in aggregates_by_member(clients[i]) for i in (0, 2)]
    assert hosts_of == [True, True]  # both hosted it at once
    events = list(clients[0].store.read_stream(stream))
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    ids = [e.metadata["command_id"] for e in events[1:]]
    assert sorted(ids) == sorted(acknowledged)  # every acknowledged one, none twice
    assert clients[0].state_of(Account, account).balance == 50

    freeze(clients[0].actor_system, False)  # member 0 catches up and lets the account go
    wait_until(lambda: converged(clients, members), timeout=20, what="member 0's view")
    assert stream not in aggregates_by_member(clients[0])


def test_sigkill_of_a_member_under_load_loses_nothing_and_its_work_resumes_on_survivors(
    cluster: Any,
) -> None:
    cluster.start(0, shards=1, roles=["aggregates"])  # the leader hosts no subscribers
    cluster.start(1, shards=1)  # member 1 takes every subscriber's lease...
    clients = [cluster.client(0), cluster.client(1)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members[:2]), timeout=20, what="2 members")
    bank = make_bank().router
    accounts = {f"acct-{n}": bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1] for n in range(30)}
    for account in accounts:
        clients[0].dispatch(OpenAccount(account, "x"))
    clients[1].settle(timeout=20)
    cluster.start(2, shards=1)  # ...before member 2 stands by for them
    clients.append(cluster.client(2))
    wait_until(lambda: converged(clients, members), timeout=20, what="3 members")
    doomed = [a for a, s in accounts.items() if owner(s, members) == members[1]]
    assert doomed

    acknowledged: list[str] = []
    stop = threading.Event()

    def load(index: int) -> None:  # named deposits through a member that survives
        n = 0
        while not stop.is_set():
            for account in accounts:
                command_id = f"c{index}-{n}-{account}"
                named(clients[index], Deposit(account, 1), command_id)
                acknowledged.append(command_id)
            n += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in (0, 2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) > 60, timeout=30, what="load")
    killed = cluster.kill(1)  # every process of member 1, its subscribers' leases with them
    named(clients[0], Deposit(doomed[0], 1), "after-the-kill")
    acknowledged.append("after-the-kill")
    failover = time.monotonic() - killed
    survivors = [members[0], members[2]]
    wait_until(lambda: converged([clients[0], clients[2]], survivors), what="2 survivors")
    count = len(acknowledged)
    wait_until(lambda: len(acknowledged) > count + 60, timeout=30, what="load after the kill")
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)

    events = [e for e in clients[0].store.read_all() if type(e.data).__name__ == "MoneyDeposited"]
    stored = [e.metadata["command_id"] for e in events]
    assert len(stored) == len(set(stored)), "a command stored twice"
    assert set(acknowledged) <= set(stored), "an acknowledged command lost"
    hosted = {**aggregates_by_member(clients[0]), **aggregates_by_member(clients[2])}
    for account in doomed:  # member 1's aggregates answer from their new owners
        assert hosted[accounts[account]] == owner(accounts[account], survivors)
    clients[2].settle(timeout=30)  # member 2 took the subscribers over
    expected = Counter(e.stream_id.split("-", 1)[1] for e in events)
    rows = dict(clients[2].store.handle.query("SELECT account_id, balance FROM balances"))
    assert rows == {account: expected[account] for account in accounts}
    assert failover < 10, f"member 1's aggregates answered again after {failover:.1f}s"

    cluster.start(1, shards=1)  # it restarts and rejoins: its aggregates move back
    clients[1] = cluster.client(1)
    wait_until(lambda: converged(clients, members), timeout=20, what="member 1 back")
    for account in doomed:
        clients[0].dispatch(Deposit(account, 1))
    assert {accounts[a] for a in doomed} <= set(aggregates_by_member(clients[1]))


INSIDE = """
import json, sys
from examples.bank import make_app
from supervisors import walk
system = make_app().attach(port=int(sys.argv[2]), host=sys.argv[1], database=sys.argv[3])
node = next(n for n in walk(system.tree(timeout=5)) if n.get("kind") == "router")
print(json.dumps({k: node.get(k) for k in ("cut_off", "live", "placement")}))
system.stop()
"""


def router_inside(partition: Partition, host: str, port: int, dsn: str) -> Any:
    """The router node of the member in the namespace, asked from inside it (None: no answer)."""
    done = subprocess.run(
        ["ip", "netns", "exec", partition.name, sys.executable, "-c", INSIDE, host, str(port), dsn],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


@pytest.fixture
def partition() -> Iterator[Partition]:
    """A network namespace and a veth pair (see ``cluster_members.Partition``), removed after
    the test whatever happens."""
    made = Partition()
    try:
        made.create()
    except subprocess.CalledProcessError as exc:
        made.remove()
        pytest.skip(f"no network namespaces here: {exc.stderr!r}")
    try:
        yield made
    finally:
        made.remove()
        assert not Partition.leftovers(made.name)


def test_a_member_cut_off_stores_no_wrong_event_and_service_resumes_after_the_heal(
    partition: Partition, pg_dsn: str, tmp_path: Any
) -> None:
    hosts = partition.hosts  # member 1 runs in the namespace, behind the link that is cut
    members = Members(hosts, pg_dsn, tmp_path, lambda _: free_port(hosts[0]), {1: partition.name})
    clients: list[Any] = []
    stop = threading.Event()
    try:
        for index in range(3):
            members.start(index, shards=1)
        for index in (0, 2):
            clients.append(make_bank().attach(port=members.ports[index], host=hosts[index]))
        keys = [f"{hosts[i]}:{members.ports[i]}" for i in range(3)]
        wait_until(lambda: converged(clients, keys), timeout=30, what="3 members placed")
        bank = make_bank().router
        accounts = {
            f"acct-{n}": bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1] for n in range(30)
        }
        for account in accounts:
            clients[0].dispatch(OpenAccount(account, "x"))
        behind = [a for a, s in accounts.items() if owner(s, keys) == keys[1]]
        assert behind
        acknowledged: list[str] = []

        def load(index: int) -> None:
            n = 0
            while not stop.is_set():
                for account in accounts:
                    command_id = f"c{index}-{n}-{account}"
                    named(clients[index], Deposit(account, 1), command_id, deadline=120)
                    acknowledged.append(command_id)
                n += 1

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in (0, 1)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) > 60, timeout=30, what="load")

        partition.cut()
        wait_until(lambda: converged(clients, [keys[0], keys[2]]), timeout=30, what="the cut")
        # Member 1 knows it is cut off: it keeps no aggregate live (none could go stale).
        node = wait_until(
            lambda: (
                (n := router_inside(partition, hosts[1], members.ports[1], pg_dsn))
                and n["cut_off"]
                and n["live"] == 0
                and n
            ),
            timeout=30,
            what="member 1 cut off",
        )
        assert node["placement"] == sorted(keys)  # (its view stays as it was)
        named(clients[0], Deposit(behind[0], 1), "during-the-cut")  # served by a survivor
        acknowledged.append("during-the-cut")
        count = len(acknowledged)
        wait_until(lambda: len(acknowledged) > count + 60, timeout=60, what="load while cut")

        partition.heal()
        wait_until(lambda: converged(clients, keys), timeout=30, what="the heal")
        named(clients[0], Deposit(behind[0], 1), "after-the-heal")  # its owner is back
        acknowledged.append("after-the-heal")
        count = len(acknowledged)
        wait_until(lambda: len(acknowledged) > count + 60, timeout=60, what="load after")
        stop.set()
        for thread in threads:
            thread.join(150)
        assert not any(thread.is_alive() for thread in threads)

        store = clients[0].store
        events = [e for e in store.read_all() if type(e.data).__name__ == "MoneyDeposited"]
        stored = [e.metadata["command_id"] for e in events]
        assert len(stored) == len(set(stored)), "a command stored twice"
        assert set(acknowledged) <= set(stored), "an acknowledged command lost"
        for stream in accounts.values():
            versions = [e.version for e in store.read_stream(stream)]
            assert versions == list(range(1, len(versions) + 1))
        last = store.last_position()
        wait_until(lambda: store.checkpoint("balances") == last, timeout=30, what="balances")
        expected = Counter(e.stream_id.split("-", 1)[1] for e in events)
        rows = dict(store.handle.query("SELECT account_id, balance FROM balances"))
        assert rows == {account: expected[account] for account in accounts}
    finally:
        stop.set()
        for system in clients:
            system.stop()
        members.close()


def test_the_leaders_death_leaves_the_others_serving_every_aggregate(
    cluster: Any,
) -> None:
    for index in range(3):
        cluster.start(index, shards=1)
    clients = [cluster.client(i) for i in range(3)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members), timeout=20, what="3 members placed")
    bank = make_bank().router
    accounts = {f"acct-{n}": bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1] for n in range(12)}
    for account in accounts:
        clients[1].dispatch(OpenAccount(account, "x"))
    leaders = [a for a, s in accounts.items() if owner(s, members) == members[0]]
    assert leaders

    cluster.kill(0)  # the leader, and the registry with it
    clients[0].stop()
    survivors = [clients[1], clients[2]]
    wait_until(lambda: converged(survivors, members[1:]), timeout=20, what="the last view less 0")
    for n, account in enumerate(accounts):  # every aggregate answers, the leader's too
        named(survivors[n % 2], Deposit(account, 1), f"without-a-leader-{account}")
    hosted = {**aggregates_by_member(clients[1]), **aggregates_by_member(clients[2])}
    for account in leaders:
        assert hosted[accounts[account]] == owner(accounts[account], members[1:])
    # Not asserted: that a leader started again gathers the others (Thespian's members did not
    # register with it within 150 s here; see the README's cluster section).
