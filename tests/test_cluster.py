"""A cluster on one machine: members on 127.0.0.2-127.0.0.4 sharing the private PostgreSQL.

Every member runs in a PID namespace of its own (``cluster_members``): a kill is a kill of every
process of it, and no process is left after a test. Membership comes from Thespian's convention
(the leader's registry hears of each member); a member that stops leaves the view and comes back
when it starts again. Commands given to any member reach the owner (HRW over the members); only
moved aggregates move. Failures (kills, a partition, two owners, the leader): in
``test_cluster_failures.py``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from backstage_actors._cluster import cluster_status, members_of
from backstage_actors._placement import owner
from backstage_actors._thespian.convention import is_loopback
from backstage_actors.errors import BackstageError
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount, Withdraw

from .cluster_members import (  # noqa: F401 (cluster_fixture: the ``cluster`` fixture)
    HOSTS,
    aggregates_by_member,
    cluster_fixture,
    converged,
    hosts,
    three_members,
)
from .conftest import wait_until


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
    clients, members, accounts = three_members(cluster, 24)
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


def test_a_member_that_lost_its_lease_keeps_no_cell_from_before(cluster: Any, pg_dsn: str) -> None:
    clients, members, accounts = three_members(cluster, 12)
    for account in accounts:
        clients[0].dispatch(OpenAccount(account, "x"))
    mine = {s for s in accounts.values() if owner(s, members) == members[1]}
    assert mine
    wait_until(lambda: mine <= set(aggregates_by_member(clients[1])), what="member 1's cells")

    # Its connection to the store dies (a blip): its lease goes, and it takes it back at its next
    # poll with the same view. Others may have owned and written its streams meanwhile, so no
    # cell of before may answer (a refusal from a stale state would pass the store unseen).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"backstage {members[1]}",),
        ).fetchall()
    assert ended
    wait_until(
        lambda: not mine & set(aggregates_by_member(clients[1])),
        timeout=15,
        what="member 1 to drop the cells it had before it lost its lease",
    )
