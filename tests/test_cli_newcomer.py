"""What a newcomer met on a first trial of the CLI (issue 21): ``--version``, ``--json`` on every
verb with errors as JSON, ``start --db`` into a missing directory, and the shell's manners (``stop
--help``, Ctrl-C, no daemon). Real daemons of the bank, as in test_cli.py.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backstage_actors import SerializationError
from backstage_actors.cli import cli
from backstage_actors.command import command_from_data
from examples.bank.domain import Deposit

from .conftest import wait_until
from .test_cli import APP, Backstage, one_error_line, running, shut_down

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backstage]:
    with running(tmp_path_factory.mktemp("home")) as backstage:
        yield backstage


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    error = json.loads(lines[0])
    assert set(error) == {"error", "code"}
    assert error["code"] == result.returncode
    return dict(error)


# -- without a daemon ---------------------------------------------------------------------------


def test_version_names_backstage_python_and_thespian(tmp_path: Path) -> None:
    result = Backstage(tmp_path).run("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backstage 0.1.0 (Python 3."), result.stdout
    assert "Thespian 4." in result.stdout


def test_every_verb_has_json() -> None:
    lacking = [
        name
        for name, verb in cli.commands.items()
        if not any("--json" in getattr(param, "opts", ()) for param in verb.params)
    ]
    assert lacking == []


def test_every_verb_that_reaches_a_daemon_has_host() -> None:
    def options(verb: object) -> set[str]:
        return {opt for param in getattr(verb, "params", ()) for opt in getattr(param, "opts", ())}

    daemon_verbs = [name for name, verb in cli.commands.items() if "--port" in options(verb)]
    lacking = [name for name in daemon_verbs if "--host" not in options(cli.commands[name])]

    assert lacking == []
    assert {"members", "send", "status", "stop", "top", "tree", "events", "shell"} <= set(
        daemon_verbs
    )


def test_errors_under_json_are_json_on_stderr(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    not_running, usage, plain = backstage.run_all(
        [["tree", "--json"], ["send", "--json", "--batch", "0", "--file", "x"], ["tree"]]
    )

    assert not_running.returncode == 3 and not_running.stdout == ""
    error = json_error(not_running)
    assert error["error"] == (
        f"no backstage daemon runs on port {backstage.port} (start one with `backstage start APP`)"
    )
    assert usage.returncode == 2
    assert "--batch" in str(json_error(usage)["error"])
    # Without --json: the usual line.
    assert one_error_line(plain).startswith("error: no backstage daemon runs on port")


def test_shell_without_a_daemon_exits_3_with_one_line(tmp_path: Path) -> None:
    result = Backstage(tmp_path).run("shell", input="status\nexit\n")

    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "no backstage daemon runs on port" in one_error_line(result)
    assert result.stdout == ""  # no banner, no prompt


def test_two_bad_fields_are_named_in_one_error() -> None:
    with pytest.raises(SerializationError) as caught:
        command_from_data(Deposit, {"amount": "lots", "colour": "red"})

    assert str(caught.value) == (
        "Deposit: required field missing at $.account_id; "
        "invalid value for type, expected int at $.amount; extra fields found (colour) at $"
    )
    assert caught.value.path == "$.account_id"


def test_field_errors_stay_one_line_whatever_the_keys() -> None:
    with pytest.raises(SerializationError) as caught:
        command_from_data(Deposit, {"amount": "x", "line\nbreak\x85": 1})

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "extra fields found (line\\nbreak\\x85) at $" in message


# -- start and stop -----------------------------------------------------------------------------


def test_start_creates_the_database_directory_and_both_speak_json(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path / "home")
    database = tmp_path / "not" / "yet" / "bank.db"
    try:
        started = backstage.run("start", APP, "--db", str(database), "--json")
        assert started.returncode == 0, started.stderr
        state = json.loads(started.stdout)
        assert (state["database"], state["port"], state["name"]) == (
            str(database),
            backstage.port,
            "bank",
        )
        assert database.exists()
        assert (database.parent.stat().st_mode & 0o777) == 0o700

        stopped = backstage.run("stop", "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout)["stopped"] is True
    finally:
        shut_down(backstage)


def test_start_says_why_it_cannot_make_the_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    backstage = Backstage(tmp_path / "home")

    result = backstage.run("start", APP, "--db", str(blocker / "bank.db"))

    assert result.returncode == 5
    assert one_error_line(result) == (
        f"error: cannot create the directory {blocker}: a file of that name is in the way"
    )


# -- with a daemon ------------------------------------------------------------------------------


def test_rebuild_and_retry_speak_json(bank: Backstage) -> None:
    bank.send("OpenAccount", {"account_id": "jay", "owner": "Jay"}, "--strong")

    assert bank.json("rebuild", "balances") == {"projection": "balances", "events": 1}
    retried = bank.run("dead-letters", "retry", "99", "--json")
    assert retried.returncode == 1
    assert json.loads(retried.stdout) == {"99": "failed: no such parked dead letter"}


def test_shell_stop_help_does_not_end_the_shell(bank: Backstage) -> None:
    result = bank.run("shell", input="stop --help\nstatus\nexit\n")

    assert result.returncode == 0, result.stderr
    assert "Usage: backstage stop" in result.stdout
    assert "bank: running" in result.stdout  # status ran after it
    assert bank.run("status").returncode == 0  # and the daemon still runs


def test_shell_json_gives_every_verb_json(bank: Backstage) -> None:
    result = bank.run("shell", "--json", input='status\nsend Deposit {"amount": 1}\nexit\n')

    assert result.returncode == 0, result.stderr
    assert not result.stdout.startswith("backstage shell:")  # no banner among the JSON
    status_line = next(line for line in result.stdout.splitlines() if '"application"' in line)
    assert '"backstage:bank"' in status_line
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error == {"error": "Deposit: required field missing at $.account_id", "code": 2}


class Reader:
    """What a process writes on a pipe, gathered without blocking."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.text = ""

    def until(self, wanted: str, count: int = 1) -> None:
        def seen() -> bool:
            while select.select([self.fd], [], [], 0)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.text += chunk.decode()
            return self.text.count(wanted) >= count

        wait_until(seen, timeout=30, what=f"{wanted!r} x{count} in {self.text!r}")


def test_ctrl_c_in_the_shell_abandons_the_line_not_the_shell(bank: Backstage) -> None:
    process = bank.popen("shell", stdin=subprocess.PIPE)
    try:
        reader = Reader(process)
        reader.until("backstage> ")
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        reader.until("backstage> ", count=2)  # a fresh prompt
        assert process.poll() is None, "the shell ended on Ctrl-C"
        assert process.stdin is not None
        process.stdin.write("status\nexit\n")
        process.stdin.flush()
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        reader.until("bank: running")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert "^C" in reader.text
