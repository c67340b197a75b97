"""Cluster members for tests: each one a process tree in a PID namespace of its own.

Why a namespace: a member is many processes (Thespian's admin double-forks, every actor is a
process), and a process group does not hold them (one outlived ``killpg`` in an earlier version
of these tests). The first process of a new PID namespace is its PID 1; when it dies the kernel
SIGKILLs every other process of the namespace, and no process can leave it. So "kill every
process of a member" is one ``SIGKILL`` to that PID 1, correct by construction.

``unshare --pid --fork --kill-child`` (root) makes the namespace: its child, the member's Python,
is PID 1 there; ``--kill-child`` kills it if ``unshare`` itself dies (the test's teardown).
Every member's argv carries a tag of its fixture, so a teardown can show no process is left.

Below the members: the fixtures (``cluster``, ``partition``) and helpers the cluster tests share.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from backstage_actors._cluster import members_of
from backstage_actors._placement import owner
from backstage_actors._thespian import free_port
from backstage_actors.errors import DispatchTimeout, SystemNotRunning, WrongExpectedVersion
from examples.bank import make_app as make_bank
from examples.bank.domain import Deposit, OpenAccount

from .conftest import wait_until

REPO = Path(__file__).resolve().parent.parent

UNSHARE = ["unshare", "--pid", "--fork", "--kill-child"]

# The member's own program. PID 1 of its namespace: signals without a handler do nothing to
# it, so it handles SIGTERM (an orderly stop) itself.
MEMBER = """
import json, logging, signal, sys, threading
options = json.loads(sys.argv[1])
log = options.pop("log")
logging.basicConfig(filename=log, level=logging.INFO)
options["log_defs"] = {  # the actors' logs (through Thespian's logger) in the same file
    "version": 1,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": log, "formatter": "plain"}},
    "root": {"handlers": ["file"], "level": logging.INFO},
}
from importlib import import_module
module, _, factory = options.pop("app").partition(":")
app = getattr(import_module(module), factory)()
app.shards = options.pop("shards", None)
if options.get("roles"):
    options["roles"] = tuple(options["roles"])
system = app.start(base="multiproc", **options)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
print("ready", flush=True)
done.wait()
system.stop()
"""


class Member:
    """One member process tree in its own PID namespace (see the module's docstring)."""

    def __init__(
        self, tag: str, host: str, port: int, log: str, netns: str | None = None, **options: Any
    ) -> None:
        self.tag = tag
        self.netns = netns  # a network namespace to run in (``ip netns exec``), if any
        self.host = host
        self.port = port
        self.log = log
        self.options = options
        self.process: subprocess.Popen[str] | None = None
        self.killed_at: float | None = None  # time.monotonic() of the last SIGKILL

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Member:
        options = {
            "app": "examples.bank:make_app",
            **self.options,
            "host": self.host,
            "port": self.port,
            "log": self.log,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        stderr = open(f"{self.log}.err", "a")  # noqa: SIM115 (the member's for its life)
        self.process = subprocess.Popen(
            [
                *(["ip", "netns", "exec", self.netns] if self.netns else []),
                *UNSHARE,
                sys.executable,
                "-c",
                MEMBER,
                json.dumps(options),
                f"--member-tag={self.tag}",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=env,
        )
        stderr.close()  # (the member has its own copy)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.process.poll() is None:
            line = self.process.stdout.readline().strip()
            if line == "ready":
                return self
        self.kill()
        raise RuntimeError(f"member {self.address} did not start (see {self.log}): {line!r}")

    def init_pid(self) -> int | None:
        """The host's pid of the namespace's PID 1 (the member's Python), if it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children()
            if children:
                return int(children[0].pid)
        return None

    def pids(self) -> list[int]:
        """Every live (not zombie) process of this member, found by its tag."""
        return tagged(self.tag)

    def kill(self) -> None:
        """SIGKILL every process of the member: its namespace's PID 1 (the kernel does the rest)."""
        pid = self.init_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.killed_at = time.monotonic()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()  # unshare (its --kill-child kills PID 1 if still there)
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
        deadline = time.monotonic() + 10  # the kernel ends the namespace's other processes
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        """An orderly stop (SIGTERM to PID 1: the member stops its tree), then :meth:`kill`."""
        pid = self.init_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self.process is not None
                self.process.wait(timeout=timeout)
        self.kill()


class Partition:
    """A network namespace for one member, joined to this one by a veth pair.

    The other members bind ``hosts[0]`` and ``hosts[2]`` on this loopback, the member
    in the namespace ``hosts[1]`` on its loopback: addresses on interfaces that stay up, so a
    cut (this side of the link down) separates the member from the others and never from
    itself (its actors talk to each other through its address). ``heal()`` sets the link up and
    routes again. PostgreSQL's Unix socket stays reachable through the filesystem.
    :meth:`remove` deletes the links and the namespace (call it in a ``finally``).
    """

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.name = f"bs-{suffix}"
        self.outside, self.inside = f"bso{suffix}", f"bsi{suffix}"
        net = f"10.{77 + int(suffix[:2], 16) % 100}.{int(suffix[2:4], 16)}"
        self.net = net
        self.hosts = [f"{net}.1", f"{net}.2", f"{net}.3"]

    def create(self) -> Partition:
        inside = ["ip", "netns", "exec", self.name, "ip"]
        one, two, three = self.hosts
        for command in (
            ["ip", "netns", "add", self.name],
            ["ip", "addr", "add", f"{one}/32", "dev", "lo"],
            ["ip", "addr", "add", f"{three}/32", "dev", "lo"],
            ["ip", "link", "add", self.outside, "type", "veth", "peer", "name", self.inside],
            ["ip", "link", "set", self.inside, "netns", self.name],
            [*inside, "link", "set", "lo", "up"],
            [*inside, "addr", "add", f"{two}/32", "dev", "lo"],
            [*inside, "link", "set", self.inside, "up"],
            [*inside, "route", "add", f"{self.net}.0/24", "dev", self.inside, "src", two],
        ):
            subprocess.run(command, check=True, capture_output=True)
        self.heal()
        return self

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.outside, "down"], check=True, capture_output=True)

    def heal(self) -> None:
        route = [f"{self.hosts[1]}/32", "dev", self.outside, "src", self.hosts[0]]
        for command in (
            ["ip", "link", "set", self.outside, "up"],
            ["ip", "route", "replace", *route],
        ):
            subprocess.run(command, check=True, capture_output=True)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True)
        for host in (self.hosts[0], self.hosts[2]):
            subprocess.run(["ip", "addr", "del", f"{host}/32", "dev", "lo"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    @staticmethod
    def leftovers(name: str) -> bool:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return name in listed


def tagged(tag: str) -> list[int]:
    """Live processes whose argv carries ``--member-tag=`` ``tag`` (a prefix of it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info.get("cmdline") or []
        if process.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if any(arg.startswith(f"--member-tag={tag}") for arg in cmdline):
            found.append(int(process.pid))
    return found


class Members:
    """Members of one test's cluster on ``hosts``; the first leads. Every process of every
    member is gone when :meth:`close` returns (checked)."""

    def __init__(
        self,
        hosts: list[str],
        dsn: str,
        logs: Path,
        free_port: Any,
        netns: dict[int, str] | None = None,
    ) -> None:
        self.tag = uuid.uuid4().hex[:12]
        self.hosts = hosts
        self.dsn = dsn
        self.logs = logs
        self.netns = netns or {}  # member index -> the network namespace it runs in
        self.ports = [free_port(host) for host in hosts]
        self.running: dict[int, Member] = {}

    @property
    def leader(self) -> str:
        return f"{self.hosts[0]}:{self.ports[0]}"

    def start(self, index: int, **options: Any) -> Member:
        """Member ``index`` (``join=None``: a plain application, no cluster)."""
        options = {"database": self.dsn, "join": self.leader, **options}
        member = Member(
            f"{self.tag}-{self.ports[index]}",
            self.hosts[index],
            self.ports[index],
            str(self.logs / f"member-{index}.log"),
            self.netns.get(index),
            **options,
        )
        self.running[index] = member
        return member.start()

    def kill(self, index: int) -> float:
        """SIGKILL every process of member ``index``; when (``time.monotonic()``) it was sent."""
        member = self.running.pop(index)
        member.kill()
        return member.killed_at or time.monotonic()

    def stop(self, index: int) -> None:
        self.running.pop(index).stop()

    def close(self) -> None:
        for index in sorted(self.running, reverse=True):
            self.running.pop(index).kill()
        deadline = time.monotonic() + 10
        while tagged(self.tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = tagged(self.tag)
        assert not left, f"processes of members left behind: {left}"


# -- fixtures and helpers of the cluster tests (test_cluster.py, test_cluster_failures.py) -----

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture(name="cluster")
def cluster_fixture(pg_dsn: str, tmp_path: Any) -> Iterator[Members]:
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


@pytest.fixture(name="partition")
def partition_fixture() -> Iterator[Partition]:
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


def three_members(cluster: Any, accounts: int) -> tuple[list[Any], list[str], dict[str, str]]:
    """Three members of one shard each, placed: their clients, their keys, and ``accounts``
    bank account ids (at least 3) with their stream ids, of which every member owns some.

    Owners are a hash over the members' keys, whose ports change from run to run: 12 accounts
    taken as they come left a given member none of them in 146 of 20,000 draws of ports."""
    for index in range(3):
        cluster.start(index, shards=1)
    clients = [cluster.client(i) for i in range(3)]
    members = [f"{HOSTS[i]}:{cluster.ports[i]}" for i in range(3)]
    wait_until(lambda: converged(clients, members), timeout=20, what="3 members placed")
    bank = make_bank().router
    ids: dict[str, str] = {}
    unowned = set(members)  # members that own none of ``ids`` yet
    for n in itertools.count():
        if len(ids) == accounts:
            break
        stream = bank.stream_of(OpenAccount(f"acct-{n}", "x"))[1]
        member = owner(stream, members)
        # Taken if its owner has none yet, or if enough places are left for those that do not.
        if member in unowned or accounts - len(ids) > len(unowned):
            ids[f"acct-{n}"] = stream
            unowned.discard(member)
    return clients, members, ids


class NamedLoad:
    """Named deposits to every account, in a thread per client, until stopped: what clients that
    retry their named commands do under a failure. ``acknowledged``: the ids answered."""

    def __init__(self, clients: list[Any], accounts: Any, deadline: float = 60) -> None:
        self.acknowledged: list[str] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i, c, accounts, deadline), daemon=True)
            for i, c in enumerate(clients)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int, client: Any, accounts: Any, deadline: float) -> None:
        n = 0
        while not self.stopping.is_set():
            for account in accounts:
                command_id = f"c{index}-{n}-{account}"
                named(client, Deposit(account, 1), command_id, deadline=deadline)
                self.acknowledged.append(command_id)
            n += 1

    def more(self, count: int, timeout: float) -> None:
        """Wait until ``count`` more commands are acknowledged."""
        target = len(self.acknowledged) + count
        wait_until(lambda: len(self.acknowledged) > target, timeout=timeout, what="load")

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self.threads)
