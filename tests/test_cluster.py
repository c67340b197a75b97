"""A cluster on one machine: members on 127.0.0.2-127.0.0.4 sharing the private PostgreSQL.

Membership comes from Thespian's convention (the leader's registry hears of each member); a
member that stops leaves the view and comes back when it starts again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from backstage_actors import Application
from backstage_actors._cluster import members_of
from backstage_actors._thespian import free_port
from backstage_actors._thespian.convention import is_loopback
from backstage_actors.errors import BackstageError
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount

from .conftest import thespian_log_defs, wait_until

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture
def cluster(pg_dsn: str, tmp_path: Any) -> Iterator[Any]:
    """``cluster(i, roles=...)`` starts member ``i`` on ``HOSTS[i]``; member 0 leads."""
    ports = [free_port(host) for host in HOSTS]
    leader = f"{HOSTS[0]}:{ports[0]}"
    running: dict[int, Any] = {}

    def start(index: int, app: Application | None = None, **options: Any) -> Any:
        system = (app or make_bank()).start(
            base="multiproc",
            host=HOSTS[index],
            port=ports[index],
            database=pg_dsn,
            join=leader,
            log_defs=thespian_log_defs(str(tmp_path / f"member-{index}.log")),
            **options,
        )
        running[index] = system
        return system

    def stop(index: int) -> None:
        running.pop(index).stop()

    start.stop = stop  # type: ignore[attr-defined]
    start.address = lambda index: f"{HOSTS[index]}:{ports[index]}"  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for index in sorted(running, reverse=True):
            running[index].stop()


def addresses(system: Any) -> set[str]:
    return {member.address for member in members_of(system.actor_system)}


def hosts(system: Any) -> set[str]:
    return {address.split("|")[-1].split(":")[0] for address in addresses(system)}


def test_members_join_see_each_other_leave_and_rejoin(cluster: Any) -> None:
    members = [cluster(0), cluster(1), cluster(2, roles=("aggregates",))]
    for system in members:
        wait_until(lambda system=system: hosts(system) == set(HOSTS), what="three members")
    view = {m.address.split("|")[-1].rstrip(")"): m for m in members_of(members[1].actor_system)}
    assert view[cluster.address(0)].leader and not view[cluster.address(1)].leader
    assert view[cluster.address(2)].roles == ("aggregates",)
    assert view[cluster.address(1)].roles == ("aggregates", "subscribers")

    cluster.stop(2)
    wait_until(lambda: hosts(members[0]) == set(HOSTS[:2]), what="the member to leave")
    cluster(2)
    wait_until(lambda: hosts(members[1]) == set(HOSTS), what="the member to rejoin")


def test_a_member_needs_multiproc_and_postgresql_and_known_roles(tmp_path: Any) -> None:
    with pytest.raises(BackstageError) as caught:
        make_bank().start(
            base="simple", database=str(tmp_path / "x.db"), join="127.0.0.2:1", roles=("web",)
        )
    text = str(caught.value)
    assert "multiproc" in text and "PostgreSQL" in text and "unknown role web" in text


MEMBER = """
import sys, time
from examples.bank import make_app
system = make_app().start(
    base="multiproc", host=sys.argv[1], port=int(sys.argv[2]), database=sys.argv[3], join=sys.argv[4]
)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_members_subscribers_resume_on_a_survivor_exactly_once(
    cluster: Any, pg_dsn: str
) -> None:
    leader = cluster(0, roles=("aggregates",))  # no subscribers here: member 1 takes them
    port = free_port(HOSTS[1])
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER, HOSTS[1], str(port), pg_dsn, cluster.address(0)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its admin and actors share its process group
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        survivor = cluster(2)
        wait_until(lambda: hosts(leader) == {HOSTS[0], HOSTS[1], HOSTS[2]}, what="3 members")
        survivor.dispatch(OpenAccount("ada", "Ada"))
        survivor.dispatch(Deposit("ada", 10))
        last = survivor.store.last_position()
        wait_until(lambda: survivor.store.checkpoint("balances") == last, what="member 1")

        kill_member(process)
        killed = time.monotonic()
        survivor.dispatch(Deposit("ada", 5))
        last = survivor.settle(timeout=20)
        takeover = time.monotonic() - killed
        assert survivor.store.checkpoint("balances") == last
        rows = list(survivor.store.handle.query("SELECT account_id, balance FROM balances"))
        assert rows == [("ada", 15)]  # exactly once across the takeover
        assert takeover < 5, f"the subscribers took {takeover:.1f}s to resume"
        # Not asserted yet: the registry dropping the killed member (one of its processes
        # outlived the group kill in this test; see the branch's report).
    finally:
        kill_member(process)


def kill_member(process: subprocess.Popen[str]) -> None:
    """SIGKILL every process of a member: its group, and any descendant that left it."""
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == process.pid]
    for member in group:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_a_loopback_address_other_than_127_0_0_1_is_not_remote() -> None:
    assert is_loopback("127.0.0.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("0.0.0.0")
