"""The cluster from the command line: ``backstage start --join/--role``, ``members``, ``--host``,
and ``tree``/``status`` with one section per member, against real daemons on 127.0.0.2-4 that
share the private PostgreSQL.

The three members are started with the README's own commands ("Running a cluster"), with the
private database and a free port per address put in; every process of every member is ended
at the end of the module, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from backstage_actors._thespian import free_port
from examples.bank import app as bank

from .conftest import wait_until
from .pg_fixture import PrivateServer
from .test_cli import BACKSTAGE, ROOT, session_processes

pytestmark = pytest.mark.process

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
README = (ROOT / "README.md").read_text()
SUBSCRIBERS = sorted(s.subscriber_name() for s in bank.subscribers)


def readme_commands() -> list[list[str]]:
    """The ``$ backstage ...`` lines of the README's "Running a cluster" block, as arguments."""
    section = README.split("\n## Running a cluster\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M)
    assert block is not None, "no walkthrough in the README's cluster section"
    return [shlex.split(line[2:]) for line in block.group(1).splitlines() if line.startswith("$ ")]


@dataclass
class Cluster:
    """The ``backstage`` command for three members sharing one home (and so one secret)."""

    home: Path
    dsn: str
    ports: dict[str, int] = field(default_factory=lambda: {h: free_port(h) for h in HOSTS})
    sessions: set[int] = field(default_factory=set)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "BACKSTAGE_PORT"}
        env["BACKSTAGE_HOME"] = str(self.home)
        env["THESPLOG_FILE"] = str(self.home / "thespian.log")
        return env

    def at(self, index: int) -> list[str]:
        return ["--host", HOSTS[index], "--port", str(self.ports[HOSTS[index]])]

    def address(self, index: int) -> str:
        return f"{HOSTS[index]}:{self.ports[HOSTS[index]]}"

    def localised(self, args: list[str]) -> list[str]:
        """A README command with this test's database and ports (1900 there on every host)."""
        out = list(args)
        for i, arg in enumerate(out[:-1]):
            value = out[i + 1]
            if arg == "--db":
                out[i + 1] = self.dsn
            elif arg == "--port":
                out[i + 1] = str(self.ports[out[out.index("--host") + 1]])
            elif arg == "--join":
                host = value.rpartition(":")[0]
                out[i + 1] = f"{host}:{self.ports[host]}"
        return out

    def run(
        self, *args: str, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [BACKSTAGE, *args],
            cwd=ROOT,
            env=self.env(),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return result

    def start(self, args: list[str]) -> dict[str, Any]:
        assert args[:2] == ["backstage", "start"], args
        result = self.run(*self.localised(args)[1:], "--json")
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        self.sessions.add(int(state["sid"]))
        return dict(state)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def members(self, index: int) -> list[dict[str, Any]]:
        return list(self.json("members", *self.at(index))["members"])

    def kill_all(self) -> None:
        def gone() -> bool:
            left = [pid for sid in self.sessions for pid in session_processes(sid)]
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return not left

        wait_until(gone, timeout=30, what="every process of every member to end")


@pytest.fixture(scope="module")
def cluster(
    pg_server: PrivateServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Three members, started with the README's commands (member 0 leads, member 2 hosts
    aggregates only)."""
    running = Cluster(tmp_path_factory.mktemp("home"), pg_server.dsn(pg_server.new_schema()))
    try:
        starts = [args for args in readme_commands() if args[1] == "start"]
        assert len(starts) == 3
        for args in starts:
            running.start(args)
        yield running
    finally:
        for index in range(len(HOSTS)):
            running.run("stop", *running.at(index), "--timeout", "10", timeout=60)
        running.kill_all()


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie; a process that ends between the two questions is not."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def addresses(view: list[dict[str, Any]]) -> list[str]:
    return sorted(member["address"] for member in view)


def settled_members(cluster: Cluster, index: int, count: int = 3) -> list[dict[str, Any]]:
    """``members`` asked of member ``index`` once it lists ``count`` members and every lease
    is held somewhere."""

    def view() -> list[dict[str, Any]] | None:
        seen = cluster.members(index)
        held = sorted(name for member in seen for name in member["leases"])
        return seen if len(seen) == count and held == SUBSCRIBERS else None

    return list(wait_until(view, timeout=60, interval=0.5, what=f"{count} members"))


# -- start --join: its errors, without any daemon -------------------------------------------------


def test_join_refuses_sqlite_an_absent_leader_and_unknown_roles(tmp_path: Path) -> None:
    cli = Cluster(tmp_path, "postgresql://nobody@127.0.0.1:1/nothing")
    start = ["start", "examples.bank:app", "--host", "127.0.0.3", "--port", "1"]

    sqlite = cli.run(*start, "--db", str(tmp_path / "bank.db"), "--join", "127.0.0.2:1")
    began = time.monotonic()
    absent = cli.run(*start, "--db", cli.dsn, "--join", f"127.0.0.2:{free_port('127.0.0.2')}")
    waited = time.monotonic() - began
    with socket.create_server(("127.0.0.2", 0)) as stranger:  # listens, never answers
        silent = f"127.0.0.2:{stranger.getsockname()[1]}"
        other = cli.run(*start, "--db", cli.dsn, "--join", silent)
    role = cli.run(*start, "--db", cli.dsn, "--join", "127.0.0.2:1", "--role", "web")
    alone = cli.run(*start, "--db", cli.dsn, "--role", "aggregates")

    assert sqlite.returncode == 2
    assert "--join needs a PostgreSQL store that every member reaches" in sqlite.stderr
    assert absent.returncode == 3 and "no leader answers at 127.0.0.2:" in absent.stderr
    assert waited < 10, f"an absent leader took {waited:.1f}s to report"
    assert other.returncode == 3 and "does not answer as a Backstage system" in other.stderr
    assert role.returncode == 2 and "'web' is not one of 'aggregates', 'subscribers'" in role.stderr
    assert alone.returncode == 2 and "--role is for a cluster member" in alone.stderr
    assert not list(tmp_path.glob("daemon-*.json"))  # nothing was started


# -- a cluster of three ---------------------------------------------------------------------------


def test_members_asked_of_each_member_shows_the_whole_cluster(cluster: Cluster) -> None:
    views = [settled_members(cluster, index) for index in range(3)]

    for view in views:
        assert addresses(view) == sorted(cluster.address(i) for i in range(3))
    by_address = {member["address"]: member for member in views[1]}
    leader, second, third = (by_address[cluster.address(i)] for i in range(3))
    assert leader["leader"] and not second["leader"] and not third["leader"]
    assert leader["roles"] == second["roles"] == ["aggregates", "subscribers"]
    assert third["roles"] == ["aggregates"]
    assert third["leases"] == []  # no subscribers on an aggregates-only member
    assert sorted(leader["leases"] + second["leases"]) == SUBSCRIBERS  # each held once
    assert all(m["uptime"] is not None and m["uptime"] >= 0 for m in views[0])

    text = cluster.run("members", *cluster.at(2))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"bank: 3 members, leader {cluster.address(0)}"
    assert lines[1].split() == ["MEMBER", "ROLES", "UP", "LIVE", "LEASES"]
    assert [line.split()[0] for line in lines[2:]] == [cluster.address(i) for i in range(3)]


def test_send_with_host_reaches_each_member(cluster: Cluster) -> None:
    for index in range(3):
        account = f"acct{index}"
        sent = cluster.json(
            "send",
            "OpenAccount",
            json.dumps({"account_id": account, "owner": "X"}),
            *cluster.at(index),
        )
        assert (sent["stream_id"], sent["version"]) == (f"Account-{account}", 1)
    deposit = cluster.json(
        "send", "Deposit", json.dumps({"account_id": "acct0", "amount": 5}), *cluster.at(2)
    )
    assert deposit["version"] == 2  # the stream the first member began, from the third

    live = sum(m["live_aggregates"] or 0 for m in cluster.members(1))
    assert live >= 3


def test_tree_and_status_show_one_section_per_member(cluster: Cluster) -> None:
    settled_members(cluster, 0)
    tree = cluster.run("tree", *cluster.at(1))
    status = cluster.run("status", *cluster.at(0))
    as_json = cluster.json("tree", *cluster.at(2))

    assert tree.returncode == 0, tree.stderr
    headings = [line for line in tree.stdout.splitlines() if line.startswith("member ")]
    assert headings == [
        f"member {cluster.address(0)} (leader; aggregates, subscribers)",
        f"member {cluster.address(1)} (aggregates, subscribers)",
        f"member {cluster.address(2)} (aggregates)",
    ]
    roots = [line for line in tree.stdout.splitlines() if line.startswith("  backstage:bank ")]
    assert len(roots) == 3
    assert [m["address"] for m in as_json["members"]] == [cluster.address(i) for i in range(3)]
    assert all(m["tree"]["name"] == "backstage:bank" for m in as_json["members"])

    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("backstage:bank: running, ")  # the store's line, once
    assert [line for line in lines if line.startswith("member ")] == headings
    assert sum(line.startswith("  aggregates: ") for line in lines) == 3
    standby = [line for line in lines if " standby " in line]
    assert len(standby) == len(SUBSCRIBERS)  # each subscriber runs on one of two members
    report = cluster.json("status", *cluster.at(2))
    assert [len(m["subscribers"]) for m in report["members"]] == [len(SUBSCRIBERS)] * 2 + [0]

    shell = cluster.run("shell", *cluster.at(2), input="members\nexit\n")  # --host goes along
    assert shell.returncode == 0, shell.stderr
    assert f"bank: 3 members, leader {cluster.address(0)}" in shell.stdout


def test_a_stopped_member_leaves_and_comes_back_when_started_again(cluster: Cluster) -> None:
    settled_members(cluster, 0)
    before = {m["address"]: m["uptime"] for m in cluster.members(0)}

    stopped = cluster.run("stop", *cluster.at(1), "--timeout", "20")
    assert stopped.returncode == 0, stopped.stderr
    after_stop = settled_members(cluster, 2, count=2)  # its leases moved to the leader
    assert addresses(after_stop) == sorted([cluster.address(0), cluster.address(2)])

    second = [args for args in readme_commands() if args[1] == "start"][1]
    cluster.start(second)
    back = settled_members(cluster, 0)
    assert addresses(back) == sorted(cluster.address(i) for i in range(3))
    uptime = next(m["uptime"] for m in back if m["address"] == cluster.address(1))
    assert uptime < before[cluster.address(1)] + 1  # a new start, not the old member


def readme_steps() -> list[tuple[list[str], str]]:
    """``(arguments, the first line the README shows after them)`` of each command but
    ``start`` in the cluster walkthrough."""
    section = README.split("\n## Running a cluster\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M)
    assert block is not None
    lines = block.group(1).splitlines()
    return [
        (shlex.split(line[2:]), lines[i + 1])
        for i, line in enumerate(lines)
        if line.startswith("$ ") and not line.startswith("$ backstage start")
    ]


def test_the_readme_walkthrough_shows_what_the_readme_says(cluster: Cluster) -> None:
    settled_members(cluster, 0)
    steps = readme_steps()
    assert [args[1] for args, _ in steps] == ["send", "members", "tree", "stop", "members"]
    for args, first in steps:

        def shown(args: list[str] = args) -> str:
            result = cluster.run(*cluster.localised(args)[1:])
            assert result.returncode == 0, (args, result.stderr)
            line = result.stdout.splitlines()[0]
            return re.sub(r"(127\.0\.0\.\d):\d+", r"\1:1900", line)

        # The member stopped leaves the leader's view at once, but not within the same instant.
        wait_until(
            lambda shown=shown, first=first: shown() == first,
            timeout=30,
            interval=0.5,
            what=f"{args[1]} to show {first!r}",
        )
    cluster.start([args for args in readme_commands() if args[1] == "start"][1])  # back to 3


def test_a_killed_member_leaves_members_and_leaves_nothing_behind(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A fourth member in a PID namespace of its own, SIGKILLed with everything in it: the
    leader drops it after its missed registrations; meanwhile `members` lists it without
    hanging, as not answering."""
    settled_members(cluster, 0)
    host, port = "127.0.0.5", free_port("127.0.0.5")
    cluster.ports[host] = port
    env = {
        **cluster.env(),
        "BACKSTAGE_HOME": str(tmp_path),  # its state holds the namespace's pids: its own
        "BACKSTAGE_SECRET_FILE": str(cluster.home / "secret"),  # the cluster's secret
    }
    start = [BACKSTAGE, "start", "examples.bank:app", "--db", cluster.dsn, "--host", host]
    start += ["--port", str(port), "--join", cluster.address(0), "--role", "subscribers"]
    member = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            f"{shlex.join(start)} --json && exec sleep 600",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    inside: list[psutil.Process] = []
    try:
        assert member.stdout is not None
        assert json.loads(member.stdout.readline())["host"] == host
        inside = psutil.Process(member.pid).children(recursive=True)
        wait_until(
            lambda: len(cluster.members(0)) == 4, timeout=30, interval=0.5, what="the fourth member"
        )

        # This home has no state file of it: each verb asks the daemon what it runs.
        there = ["--host", host, "--port", str(port)]
        opened = cluster.json("send", "OpenAccount", '{"account_id": "eve", "owner": "E"}', *there)
        assert opened["stream_id"] == "Account-eve"
        events = cluster.json("events", "Account-eve", *there)
        assert [e["type"] for e in events] == ["AccountOpened"]
        assert len(cluster.json("tree", *there)["members"]) == 4

        member.kill()  # unshare; --kill-child ends the namespace's init, and the kernel the rest
        killed = time.monotonic()
        wait_until(
            lambda: not [p for p in inside if _alive(p)],
            timeout=30,
            what="every process of the killed member to end",
        )
        listed = cluster.run("members", *cluster.at(1))  # it may still be listed: no hang
        assert listed.returncode == 0, listed.stderr
        gone = wait_until(
            lambda: len(cluster.members(1)) == 3,
            timeout=30,
            interval=0.5,
            what="the killed member to leave",
        )
        left_after = time.monotonic() - killed
        assert gone and left_after < 20, f"the killed member was listed for {left_after:.1f}s"
    finally:
        if member.poll() is None:
            member.kill()
        member.wait(timeout=10)
        assert member.stdout is not None
        member.stdout.close()
        for process in inside:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_without_its_leader_members_says_so_and_tree_shows_the_member_alone(
    cluster: Cluster,
) -> None:
    """Last: it stops the leader. The member list is the leader's registry: ``members`` says
    the leader does not answer (exit 4, in seconds); ``tree`` shows the member asked."""
    settled_members(cluster, 0)
    stopped = cluster.run("stop", *cluster.at(0), "--timeout", "20")
    assert stopped.returncode == 0, stopped.stderr

    began = time.monotonic()
    members = cluster.run("members", *cluster.at(1))
    waited = time.monotonic() - began
    tree = cluster.run("tree", *cluster.at(1))

    assert members.returncode == 4, (members.stdout, members.stderr)
    assert "is the leader running?" in members.stderr
    assert waited < 20, f"members took {waited:.1f}s without a leader"
    assert tree.returncode == 0, tree.stderr
    assert "Showing this member only" in tree.stderr
    assert tree.stdout.startswith("backstage:bank [application]")
