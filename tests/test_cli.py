"""The ``backstage`` command line, run as real subprocesses against real daemons of the bank.

Every daemon lives in a temporary ``BACKSTAGE_HOME`` on a free port and is stopped, then killed by
pid if anything of it is left, even when a test fails half-way. Tests that only read or add to the
bank share one daemon; stopping and crashing get daemons of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from backstage_actors import _daemon
from backstage_actors._shell import Shell
from backstage_actors.cli import Session, cli, run
from supervisors import walk

from .conftest import free_port, process_alive, wait_until

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
# The console script installed next to this interpreter (the venv's bin/).
BACKSTAGE = str(Path(sys.executable).with_name("backstage"))
APP = "examples.bank:app"
VERBS = sorted(cli.commands)


@dataclass
class Backstage:
    """The ``backstage`` command bound to one home directory and one admin port."""

    home: Path
    port: int = field(default_factory=free_port)
    started: subprocess.CompletedProcess[str] | None = None

    @property
    def database(self) -> Path:
        return self.home / "bank.db"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "BACKSTAGE_PORT"}
        env["BACKSTAGE_HOME"] = str(self.home)
        env["THESPLOG_FILE"] = str(self.home / "thespian.log")  # not the shared /tmp/thespian.log
        return env

    def popen(self, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        # From the repository root, so that `examples.bank` imports; stdin is not handed down to
        # the daemons this may start.
        port = ["--port", str(self.port)] if args and args[0] in VERBS else []
        return subprocess.Popen(
            [BACKSTAGE, *args, *port],
            cwd=ROOT,
            env=self.env(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        process = self.popen(*args, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE)
        return finish(process, input)

    def run_all(self, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
        """Independent invocations at once (each is a Python start-up, most of their cost)."""
        processes = [self.popen(*command) for command in commands]
        try:
            return [finish(process) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("start", APP, "--db", str(self.database), *extra)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def send(self, name: str, data: dict[str, Any], *options: str) -> dict[str, Any]:
        return dict(self.json("send", name, json.dumps(data), *options))

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.home / f"daemon-{self.port}.json").read_text()))

    def processes(self) -> list[int]:
        """The daemon's live processes, as ``daemon_processes`` finds them for this home."""
        with mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(self.home)}):
            return _daemon.daemon_processes(self.port)


def finish(
    process: subprocess.Popen[str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        out, err = process.communicate(input, timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        # Bounded: a daemon it forked may hold its pipes open.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=5)
        pytest.fail(f"{process.args} did not finish in 60s")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid``, whether or not a state file still names it."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if session_of(pid) == sid and process_alive(pid)]


def shut_down(backstage: Backstage) -> None:
    """``backstage stop``, then SIGKILL by pid whatever of the daemon is still alive."""
    state = backstage.home / f"daemon-{backstage.port}.json"
    sid = json.loads(state.read_text()).get("sid") if state.exists() else None
    with contextlib.suppress(Exception):
        backstage.run("stop", "--timeout", "10")

    def all_gone() -> bool:
        # `stop` removes the state file that `processes()` reads: the session finds the rest.
        left = set(backstage.processes()) | set(session_processes(sid) if sid else [])
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not left

    wait_until(all_gone, what=f"the end of the daemon on port {backstage.port}")


@contextlib.contextmanager
def attached_bank(tmp_path: Path) -> Iterator[tuple[Backstage, Any]]:
    """A bank daemon started by the CLI in a home of its own (``BACKSTAGE_HOME`` meanwhile),
    and a handle attached to it; the handle is let go and the daemon ended afterwards, whatever
    the test did to either."""
    from examples.bank import app

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    system = None
    try:
        assert backstage.start().returncode == 0
        with mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(home)}):
            system = app.attach(port=backstage.port)
            yield backstage, system
    finally:
        if system is not None:
            system.stop()
        shut_down(backstage)


@contextlib.contextmanager
def running(home: Path) -> Iterator[Backstage]:
    backstage = Backstage(home)
    try:
        backstage.started = backstage.start()
        assert backstage.started.returncode == 0, backstage.started.stderr
        yield backstage
    finally:
        shut_down(backstage)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backstage]:
    """One bank daemon for the tests that only read it or add accounts of their own."""
    with running(tmp_path_factory.mktemp("home")) as backstage:
        yield backstage


@pytest.fixture
def own_bank(tmp_path: Path) -> Iterator[Backstage]:
    """A bank daemon for one test that stops, crashes or parks events in it."""
    with running(tmp_path) as backstage:
        yield backstage


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def balances(database: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute("SELECT * FROM balances ORDER BY account_id").fetchall()


def balance_of(database: Path, account: str) -> int | None:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT balance FROM balances WHERE account_id = ?", [account]).fetchone()
    return None if row is None else int(row[0])


def write_lines(path: Path, *lines: str | bytes) -> str:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return str(path)


def line(command: str, **data: Any) -> str:
    return json.dumps({"command": command, "data": data})


# -- without a daemon --------------------------------------------------------------------------


def test_help_works_on_every_verb(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    top, *verbs = backstage.run_all([["--help"], *([verb, "--help"] for verb in VERBS)])

    assert top.returncode == 0, top.stderr
    for verb in VERBS:
        assert verb in top.stdout
    for verb, result in zip(VERBS, verbs, strict=True):
        assert result.returncode == 0, (verb, result.stderr)
        assert result.stdout.startswith(f"Usage: backstage {verb} "), result.stdout
        assert result.stderr == ""


def test_every_verb_says_no_system_runs(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    commands = write_lines(tmp_path / "commands.jsonl", line("Deposit", account_id="a", amount=1))
    invocations = [
        ["send", "Deposit", '{"account_id": "a", "amount": 1}'],
        ["send", "--file", commands],
        ["tree"],
        ["status"],
        ["events"],
        ["dead-letters"],
        ["dead-letters", "retry", "1"],
        ["rebuild", "balances"],
        ["stop"],
        ["stop", "--force"],
    ]

    for args, result in zip(invocations, backstage.run_all(invocations), strict=True):
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert f"no backstage daemon runs on port {backstage.port}" in one_error_line(result)
        assert result.stdout == ""


def test_remote_host_needs_allow_remote(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    result = backstage.start("--host", "0.0.0.0")

    assert result.returncode == 2
    assert "--allow-remote" in one_error_line(result)
    assert not (tmp_path / f"daemon-{backstage.port}.json").exists()
    assert not port_open(backstage.port)


# (A missing directory is created: test_cli_newcomer.py.)
@pytest.mark.parametrize("where", ["directory"])
def test_database_that_cannot_be_opened_is_a_storage_error(tmp_path: Path, where: str) -> None:
    backstage = Backstage(tmp_path)
    database = tmp_path / "no" / "such" / "bank.db" if where == "missing directory" else tmp_path
    result = backstage.run("start", APP, "--db", str(database))

    assert result.returncode == 5, result.stderr
    assert f"cannot open the database {database}" in one_error_line(result)
    # Nothing was started: no state file, nothing on the port.
    assert not (tmp_path / f"daemon-{backstage.port}.json").exists()
    assert not port_open(backstage.port)


def test_send_file_batch_must_be_positive(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    commands = write_lines(tmp_path / "commands.jsonl", line("Deposit", account_id="a", amount=1))

    result = backstage.run("send", "--file", commands, "--batch", "0")

    assert result.returncode == 2, result.stderr  # a usage error, before any daemon is asked
    assert "--batch" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("body", ["app = (", "raise RuntimeError('no config')"])
def test_an_app_module_that_fails_to_import_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    (tmp_path / "broken_app.py").write_text(body + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    backstage = Backstage(tmp_path)

    result = backstage.run("start", "broken_app:app", "--db", str(backstage.database))

    assert result.returncode != 0
    assert "cannot import 'broken_app'" in one_error_line(result)
    assert "Traceback" not in result.stderr
    assert not port_open(backstage.port)


# -- start --------------------------------------------------------------------------------------


def test_start_says_where_it_runs(bank: Backstage) -> None:
    assert bank.started is not None
    state = bank.state()
    assert bank.started.stdout.splitlines() == [
        f"bank running on 127.0.0.1:{bank.port} (admin pid {state['admin_pid']})",
        f"  database {bank.database}",
        f"  log      {bank.home / f'daemon-{bank.port}.log'}",
    ]
    assert (bank.home / f"daemon-{bank.port}.pid").read_text() == f"{state['admin_pid']}\n"
    assert state["admin_pid"] in bank.processes()


def test_start_shards_sets_how_many_shard_processes_host_the_aggregates(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    try:
        started = backstage.start("--shards", "3")
        assert started.returncode == 0, started.stderr
        router = next(n for n in backstage.json("tree")["children"] if n["kind"] == "router")
        shards = [c for c in router["children"] if c["kind"] == "shard"]
        assert len(shards) == 3 and len({c["pid"] for c in shards}) == 3
    finally:
        shut_down(backstage)


def test_second_start_on_the_same_port_is_refused(bank: Backstage) -> None:
    admin = bank.state()["admin_pid"]
    result = bank.start()

    assert result.returncode == 3
    assert f"already runs on port {bank.port} (admin pid {admin})" in one_error_line(result)
    assert bank.state()["admin_pid"] == admin
    assert process_alive(admin)


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """``(host, port)`` of every TCP socket these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            # The kernel prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(
                bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
            )
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_daemon_listens_on_loopback_only(bank: Backstage) -> None:
    # Thespian's transport carries pickles: no socket of any daemon process may face the network.
    addresses = listening_addresses(bank.processes())

    assert ("127.0.0.1", bank.port) in addresses
    assert {host for host, _ in addresses} == {"127.0.0.1"}, addresses


def test_state_log_pid_and_database_files_are_private(bank: Backstage) -> None:
    for name in (f"daemon-{bank.port}.json", f"daemon-{bank.port}.pid", f"daemon-{bank.port}.log"):
        mode = (bank.home / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
    for path in bank.home.glob("bank.db*"):  # the database, its WAL and shared memory
        mode = path.stat().st_mode & 0o777
        assert mode & 0o027 == 0, f"{path.name} is {oct(mode)}"


# -- send ---------------------------------------------------------------------------------------


def test_send_prints_the_stored_events_and_the_new_version(bank: Backstage) -> None:
    opened = bank.run("send", "OpenAccount", '{"account_id": "alice", "owner": "Alice"}')
    assert opened.returncode == 0, opened.stderr
    first, event = opened.stdout.splitlines()
    assert first == "Account-alice is at version 1"
    assert event.startswith("  v1 @") and event.endswith(
        'AccountOpened {"account_id": "alice", "owner": "Alice"}'
    )

    deposited = bank.send("Deposit", {"account_id": "alice", "amount": 250})
    assert deposited["stream_id"] == "Account-alice"
    assert deposited["version"] == 2
    [recorded] = deposited["events"]
    assert (recorded["type"], recorded["version"]) == ("MoneyDeposited", 2)
    assert recorded["data"] == {
        "account_id": "alice",
        "amount": 250,
        "balance": 250,
        "transfer_id": None,
    }
    assert recorded["position"] > 0

    # module:Class names the command class itself; --strong returns once the projection has it.
    strong = bank.run(
        "send", "examples.bank.domain:Deposit", '{"account_id": "alice", "amount": 50}', "--strong"
    )
    assert strong.returncode == 0, strong.stderr
    assert strong.stdout.startswith("Account-alice is at version 3\n")
    assert balance_of(bank.database, "alice") == 300


SEND_ERRORS = {
    "bad JSON": (["send", "Deposit", '{"account_id": "erin",'], 2, "at line 1 column 23 (char 22)"),
    "not an object": (["send", "Deposit", "[1]"], 2, "expected a JSON object"),
    "unknown command": (["send", "Deposet", "{}"], 2, "unknown command 'Deposet'; bank knows: "),
    "unknown class": (["send", "examples.bank.domain:Nope", "{}"], 2, "has no attribute 'Nope'"),
    "not routed": (["send", "examples.bank.domain:Account", "{}"], 2, "not routed by bank"),
    "no command": (["send"], 2, "send needs COMMAND and DATA, or --file"),
    "missing field": (
        ["send", "Deposit", '{"account_id": "erin"}'],
        2,
        "Deposit: required field missing at $.amount",
    ),
    "extra field": (
        ["send", "Deposit", '{"account_id": "erin", "amount": 1, "memo": "hi"}'],
        2,
        "Deposit: extra fields found (memo) at $",
    ),
    "wrong type": (
        ["send", "Deposit", '{"account_id": "erin", "amount": "lots"}'],
        2,
        "Deposit: invalid value for type, expected int at $.amount",
    ),
    "rejected": (
        ["send", "Withdraw", '{"account_id": "nobody", "amount": 5}'],
        1,
        "Withdraw rejected: ValueError: there is no account nobody",
    ),
    "no such file": (["send", "--file", "/no/such/commands.jsonl"], 2, "no such file"),
}


@pytest.mark.parametrize("case", SEND_ERRORS)
def test_send_errors_are_one_line_with_an_exit_code(bank: Backstage, case: str) -> None:
    args, code, message = SEND_ERRORS[case]
    result = bank.run(*args)

    assert result.returncode == code, result.stderr
    assert message in one_error_line(result)
    assert result.stdout == ""


@contextlib.contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """``pids`` stopped (SIGSTOP) for the block, then continued (if they still live)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def frozen_shards(backstage: Backstage) -> contextlib.AbstractContextManager[None]:
    """The daemon's shard processes stopped (SIGSTOP) for the block, then continued."""
    return frozen(*(n["pid"] for n in walk(backstage.json("tree")) if n["kind"] == "shard"))


def test_send_times_out(bank: Backstage) -> None:
    # The shards are stopped (SIGSTOP) while the command waits: no answer can come. The account
    # does not exist: when the command runs late it is rejected, so it changes nothing.
    with frozen_shards(bank):
        result = bank.run(
            "send", "Deposit", '{"account_id": "tim", "amount": 1}', "--timeout", "0.5"
        )

    assert result.returncode == 4, result.stderr
    assert "no answer within 0.5s; it may or may not have been executed" in one_error_line(result)


def test_daemon_serves_after_every_error(bank: Backstage) -> None:
    # Bad input, a rejection and a timeout (the tests above make more) leave no scar: nothing
    # restarted and a command goes through.
    errors = [
        bank.run("send", "Deposit", '{"account_id": 5}'),
        bank.run("send", "Withdraw", '{"account_id": "nobody", "amount": 5}'),
        bank.run("send", "Deposit", '{"account_id": "tim", "amount": 1}', "--timeout", "0.001"),
    ]
    assert all(result.returncode != 0 for result in errors), [r.stderr for r in errors]
    assert bank.send("OpenAccount", {"account_id": "erin", "owner": "Erin"})["version"] == 1
    tree = bank.json("tree")
    assert all(n["status"] == "running" and n["restarts"] == 0 for n in walk(tree)), tree


def test_send_file_reports_every_bad_line_and_stores_the_good_ones(
    bank: Backstage, tmp_path: Path
) -> None:
    truncated = '{"command": "Deposit", "data": {"account_id": "frank", "amount": '
    commands = write_lines(
        tmp_path / "commands.jsonl",
        line("OpenAccount", account_id="frank", owner="Frank"),
        line("Deposit", account_id="frank", amount=100),
        truncated,
        line("Deposet", account_id="frank", amount=1),
        "",
        line("Deposit", account_id="frank"),
        line("Deposit", account_id="frank", amount="x"),
        line("Withdraw", account_id="frank", amount=1000),
        line("Deposit", account_id="frank", amount=20),
        '["Deposit"]',
        line("Withdraw", account_id="frank", amount=30),
        line("Deposit", account_id="frank", amount=1, memo="hi"),
    )
    result = bank.run("send", "--file", commands)

    assert result.returncode == 1, result.stderr  # some lines were refused
    summary, *rejected = result.stdout.splitlines()
    assert summary.startswith("accepted 4, rejected 1, invalid 6, unknown 0 in ")
    assert rejected == [
        "  line 8: rejected: Withdraw rejected: ValueError: insufficient funds: balance 100, "
        "asked 1000",
        f"  line 3: invalid: bad JSON: Expecting value at column {len(truncated) + 1}",
        "  line 4: invalid: unknown command 'Deposet'",
        "  line 6: invalid: Deposit: required field missing at $.amount",
        "  line 7: invalid: Deposit: invalid value for type, expected int at $.amount",
        '  line 10: invalid: expected {"command": NAME, "data": {...}}',
        "  line 12: invalid: Deposit: extra fields found (memo) at $",
    ]
    assert "sending" in result.stderr  # the progress bar, off stdout

    stored = bank.json("events", "Account-frank")
    assert [(e["type"], e["data"]["balance"]) for e in stored[1:]] == [
        ("MoneyDeposited", 100),
        ("MoneyDeposited", 120),
        ("MoneyWithdrawn", 90),
    ]
    assert stored[0]["type"] == "AccountOpened"


def test_send_file_names_the_line_with_invalid_utf8(bank: Backstage, tmp_path: Path) -> None:
    bad = b'{"command": "Deposit", "data": {"account_id": "gina\xff", "amount": 5}}'
    commands = write_lines(
        tmp_path / "commands.jsonl",
        line("OpenAccount", account_id="gina", owner="Gina"),
        bad,
        line("Deposit", account_id="gina", amount=7),
    )
    result = bank.run("send", "--file", commands, "--json")

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["accepted"] == 2
    assert report["invalid"] == [
        {"line": 2, "reason": f"invalid UTF-8: invalid start byte at byte {bad.index(0xFF) + 1}"}
    ]
    # The lines around the bad one still went through.
    assert [e["type"] for e in bank.json("events", "Account-gina")] == [
        "AccountOpened",
        "MoneyDeposited",
    ]


# -- looking inside -----------------------------------------------------------------------------


def test_tree_shows_the_live_supervision_tree(bank: Backstage) -> None:
    bank.send("OpenAccount", {"account_id": "tina", "owner": "Tina"})
    tree = bank.json("tree")

    assert (tree["name"], tree["kind"], tree["status"]) == (
        "backstage:bank",
        "application",
        "running",
    )
    for node in walk(tree):
        assert {"name", "kind", "status", "restarts"} <= node.keys(), node
    assert [c["name"] for c in tree["children"]] == ["store", "router", "events"]
    _, router, events = tree["children"]
    assert {c["name"]: c["kind"] for c in events["children"]} == {
        "notifier": "handler",
        "balances": "projection",
        "transfers": "process_manager",
    }
    assert {c["kind"] for c in router["children"]} == {"shard"}
    aggregates = {c["name"]: c for shard in router["children"] for c in shard["children"]}
    assert aggregates["Account-tina"]["kind"] == "aggregate"
    assert router["live"] == len(aggregates) >= 1

    human = bank.run("tree")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "backstage:bank [application] running"
    assert f"  router [router] running live={router['live']} " in human.stdout
    assert any(x.startswith("    shard-") and "[shard] running" in x for x in lines)
    assert "      Account-tina [aggregate] running" in lines
    assert any(x.startswith("    balances [projection] running position=") for x in lines)


def test_status_shows_positions_and_lag(bank: Backstage) -> None:
    # --strong: every subscriber has the event when send returns, and nothing else is sent.
    sent = bank.send("OpenAccount", {"account_id": "stan", "owner": "Stan"}, "--strong")
    position = sent["events"][0]["position"]
    report = bank.json("status")

    assert report["application"] == "backstage:bank"
    assert report["last_position"] == position
    assert report["aggregates"]["live"] >= 1
    assert report["dead_letters"] == 0
    assert {s["name"]: (s["position"], s["lag"]) for s in report["subscribers"]} == {
        "notifier": (position, 0),
        "balances": (position, 0),
        "transfers": (position, 0),
    }

    human = bank.run("status")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"backstage:bank: running, {position} events stored\n")
    for name in ("notifier", "balances", "transfers"):
        assert any(
            x.split()[0] == name and f"position {position} lag 0" in x
            for x in human.stdout.splitlines()
        ), human.stdout


def test_events_all_by_stream_from_and_json(bank: Backstage, tmp_path: Path) -> None:
    commands = write_lines(
        tmp_path / "commands.jsonl",
        line("OpenAccount", account_id="evan", owner="Evan"),
        line("Deposit", account_id="evan", amount=10),
        line("Deposit", account_id="evan", amount=20),
    )
    assert bank.run("send", "--file", commands).returncode == 0

    stream = bank.json("events", "Account-evan")
    assert [(e["stream_id"], e["version"], e["type"]) for e in stream] == [
        ("Account-evan", 1, "AccountOpened"),
        ("Account-evan", 2, "MoneyDeposited"),
        ("Account-evan", 3, "MoneyDeposited"),
    ]
    assert stream[2]["data"]["balance"] == 30
    assert stream[1]["metadata"]["command"] == "Deposit"

    # With a STREAM, --from is a version ...
    later = bank.run("events", "Account-evan", "--from", "2")
    assert later.returncode == 0, later.stderr
    assert [x.split()[1:3] for x in later.stdout.splitlines()] == [
        ["Account-evan@2", "MoneyDeposited"],
        ["Account-evan@3", "MoneyDeposited"],
    ]
    # ... without, a position in the whole store.
    start = stream[1]["position"]
    after = bank.json("events", "--from", str(start))
    positions = [e["position"] for e in after]
    assert positions[0] == start and positions == sorted(positions)
    assert stream[2] in after

    everything = bank.run("events")
    assert everything.returncode == 0, everything.stderr
    rows = everything.stdout.splitlines()
    assert [int(x.split()[0]) for x in rows] == list(range(1, len(rows) + 1))

    none = bank.run("events", "Account-nobody")
    assert (none.returncode, none.stdout) == (0, "no events\n")


def test_dead_letters_none_and_retry_of_an_unknown_id(bank: Backstage) -> None:
    listed, as_json, retried = bank.run_all(
        [["dead-letters"], ["dead-letters", "--json"], ["dead-letters", "retry", "4242"]]
    )

    assert (listed.returncode, listed.stdout) == (0, "no dead letters\n")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    assert retried.returncode == 1
    assert retried.stderr == "4242: failed: no such parked dead letter\n"


def test_rebuild_replays_the_projection_to_the_same_table(bank: Backstage) -> None:
    sent = bank.send("OpenAccount", {"account_id": "rita", "owner": "Rita"}, "--strong")
    before = balances(bank.database)

    result = bank.run("rebuild", "balances")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"balances rebuilt from {sent['events'][0]['position']} events\n"
    assert "rebuilding balances" in result.stderr  # the progress bar
    assert balances(bank.database) == before
    # The rebuilt projection goes on following new events.
    bank.send("Deposit", {"account_id": "rita", "amount": 9}, "--strong")
    assert balance_of(bank.database, "rita") == 9

    unknown = bank.run("rebuild", "nope")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: unknown projection 'nope'; bank has: balances\n",
    )


def test_dead_letter_is_listed_and_retried_once_its_cause_is_fixed(own_bank: Backstage) -> None:
    # A refund to an account that was never opened: the balances projection has no row to update,
    # fails three times and parks the event.
    own_bank.send("RefundTransfer", {"account_id": "ghost", "amount": 7, "transfer_id": "t-9"})
    [letter] = wait_until(lambda: own_bank.json("dead-letters"), what="a parked event")
    assert (letter["subscriber"], letter["type"], letter["status"]) == (
        "balances",
        "TransferRefunded",
        "parked",
    )
    assert (letter["error_type"], letter["failures"]) == ("NotFoundError", 3)
    listed = own_bank.run("dead-letters")
    assert f"balances         @{letter['position']} TransferRefunded NotFoundError" in listed.stdout

    # Retrying before the cause is fixed fails again; once the account is open it goes through.
    again = own_bank.run("dead-letters", "retry", str(letter["id"]))
    assert again.returncode == 1
    assert again.stderr.startswith(f"{letter['id']}: failed: NotFoundError")
    own_bank.send("OpenAccount", {"account_id": "ghost", "owner": "Ghost"}, "--strong")
    retried = own_bank.run("dead-letters", "retry", str(letter["id"]))
    assert (retried.returncode, retried.stdout) == (0, f"{letter['id']}: retried\n")

    assert own_bank.run("dead-letters").stdout == "no dead letters\n"
    assert balance_of(own_bank.database, "ghost") == 7


# -- the shell ----------------------------------------------------------------------------------


def test_shell_runs_verbs_from_stdin(bank: Backstage) -> None:
    script = "\n".join(
        [
            "tree",
            'send OpenAccount {"account_id": "shelly", "owner": "Shelly"}',
            'send Deposit {"account_id": "shelly", "amount": 1}',  # JSON typed without quotes
            "status",
            "frobnicate",
            'send Deposit {"account_id": "shelly", "amount": 2}',  # the error did not end it
            "exit",
            'send Deposit {"account_id": "shelly", "amount": 100}',  # after exit: never runs
        ]
    )
    result = bank.run("shell", input=script + "\n")

    assert result.returncode == 0, result.stderr
    assert "backstage:bank [application] running" in result.stdout
    assert "Account-shelly is at version 2" in result.stdout
    assert '"amount": 1, "balance": 1,' in result.stdout
    assert "backstage:bank: running," in result.stdout
    assert "Account-shelly is at version 3" in result.stdout
    assert result.stderr.splitlines() == ["error: No such command 'frobnicate'."]
    assert [e["data"].get("balance") for e in bank.json("events", "Account-shelly")] == [
        None,
        1,
        3,
    ]


def test_shell_completes_verbs_and_command_names(
    bank: Backstage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKSTAGE_HOME", str(bank.home))
    # Attaching sets this for the processes Thespian forks; give it back afterwards.
    monkeypatch.delenv("THESPIAN_BASE_IPADDR", raising=False)
    shell = Shell(run, cli, Session(), bank.port)

    assert shell.completenames("st") == ["start", "state", "status", "stop"]
    assert shell.completenames("") == sorted([*VERBS, "exit", "help"])
    assert shell.completedefault("Dep", "send Dep", 5, 8) == ["Deposit", "DepositForTransfer"]
    routed = ["OpenAccount", "Deposit", "Withdraw", "CloseAccount", "WithdrawForTransfer"]
    routed += ["DepositForTransfer", "RefundTransfer", "TransferMoney", "CompleteTransfer"]
    routed += ["FailTransfer"]
    assert shell.completedefault("", "send ", 5, 5) == sorted(routed)
    assert shell.completedefault("", "send Deposit ", 13, 13) == []
    assert shell.completedefault("bal", "rebuild bal", 8, 11) == ["balances"]

    # Without a daemon there is nothing to complete, and no error either.
    lonely = Shell(run, cli, Session(), free_port())
    assert lonely.completedefault("Dep", "send Dep", 5, 8) == []


# -- stopping and crashing ----------------------------------------------------------------------


def test_stop_drains_and_leaves_nothing(own_bank: Backstage) -> None:
    sid = own_bank.state()["sid"]
    assert own_bank.processes()

    result = own_bank.run("stop")

    assert (result.returncode, result.stdout) == (0, "stopped\n"), result.stderr  # none killed
    assert session_processes(sid) == []
    assert not port_open(own_bank.port)
    assert not (own_bank.home / f"daemon-{own_bank.port}.json").exists()
    assert not (own_bank.home / f"daemon-{own_bank.port}.pid").exists()
    again = own_bank.run("stop")
    assert again.returncode == 3
    assert "no backstage daemon runs" in one_error_line(again)


def test_stop_force_kills_every_process(own_bank: Backstage) -> None:
    sid = own_bank.state()["sid"]
    pids = own_bank.processes()

    result = own_bank.run("stop", "--force")

    assert result.returncode == 0, result.stderr
    killed = re.fullmatch(r"stopped \(killed (\d+) processes\)\n", result.stdout)
    assert killed and int(killed[1]) >= len(pids), result.stdout
    # Including any replacement a supervisor forked while its children were dying.
    assert session_processes(sid) == []
    assert not port_open(own_bank.port)
    again = own_bank.run("stop", "--force")
    assert again.returncode == 3
    assert "no backstage daemon runs" in one_error_line(again)


def test_start_after_the_admin_was_killed_cleans_up_and_continues(own_bank: Backstage) -> None:
    own_bank.send("OpenAccount", {"account_id": "kim", "owner": "Kim"})
    own_bank.send("Deposit", {"account_id": "kim", "amount": 100})
    stored = own_bank.json("events")
    crashed_session = own_bank.state()["sid"]
    admin = int((own_bank.home / f"daemon-{own_bank.port}.pid").read_text())

    os.kill(admin, signal.SIGKILL)
    wait_until(lambda: not process_alive(admin), what="the admin's end")

    crashed = own_bank.run("tree")
    assert crashed.returncode == 3
    assert f"crashed (its admin, pid {admin}, is gone)" in one_error_line(crashed)
    # Every process of the daemon dies with its admin (actors and Thespian's logger, which
    # kept the admin's port open before): nothing is left for the next start to clean up.
    wait_until(
        lambda: not own_bank.processes(), timeout=15, what="the daemon to die with its admin"
    )
    assert not port_open(own_bank.port)

    restarted = own_bank.start()

    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stderr == ""
    assert session_processes(crashed_session) == []
    assert own_bank.state()["admin_pid"] != admin
    assert own_bank.json("events") == stored
    # The aggregate's state continues from its events, the projection from its checkpoint.
    deposited = own_bank.send("Deposit", {"account_id": "kim", "amount": 5}, "--strong")
    assert deposited["version"] == 3
    assert deposited["events"][0]["data"]["balance"] == 105
    assert balance_of(own_bank.database, "kim") == 105
