"""The examples run: in-process as scripts, and as daemons driven through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import _daemon
from backstage_actors.testing import given
from examples.bank.domain import Account, DepositForTransfer, TransferDepositRefused

from .conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
BACKSTAGE = str(Path(sys.executable).with_name("backstage"))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("base", ["simple", "multiproc"])
def test_the_bank_story(tmp_path: Any, base: str) -> None:
    result = run(
        sys.executable, "-m", "examples.bank", "--db", str(tmp_path / "bank.db"), "--base", base
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Bob cannot withdraw: Withdraw rejected: ValueError: insufficient funds" in out
    # Alice: 100 - 30 - 20 (t-1) - 10 (t-2, refunded) + 10 = 50; Bob got 20, spent 20, closed.
    assert "alice  Alice     50.00  open" in out
    assert "bob    Bob        0.00  closed" in out
    assert "10.00 refunded to alice (transfer t-2)" in out  # money as the balances show it
    assert "Transfer t-2 failed: account bob is closed" in out
    assert "transfers [process_manager] running restarts=0" in out


def test_the_theatre_race(tmp_path: Any) -> None:
    result = run(
        sys.executable, "-m", "examples.theatre", "--db", str(tmp_path / "t.db"), "--buyers", "10"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Two pairs of seats, ten buyers racing: exactly two win, and the show is sold out.
    assert out.count(": bought ") == 2
    assert out.count(": lost: seats taken") == 8
    assert "Hamilton: 4 of 4 seats sold, sold out: True" in out


@pytest.mark.process
@pytest.mark.parametrize("app", ["examples.bank:app", "examples.theatre:app"])
def test_examples_as_daemons_through_the_cli(tmp_path: Any, app: str, monkeypatch: Any) -> None:
    port = free_port()
    monkeypatch.setenv("BACKSTAGE_HOME", str(tmp_path / "home"))  # ours and the subprocesses'
    env = dict(os.environ)
    started = run(
        BACKSTAGE, "start", app, "--db", str(tmp_path / "app.db"), "--port", str(port), env=env
    )
    try:
        assert started.returncode == 0, started.stderr
        if app.startswith("examples.bank"):
            commands = [
                ("OpenAccount", {"account_id": "ada", "owner": "Ada"}),
                ("OpenAccount", {"account_id": "bob", "owner": "Bob"}),
                ("Deposit", {"account_id": "ada", "amount": 100}),
                (
                    "TransferMoney",
                    {"transfer_id": "t-1", "source": "ada", "target": "bob", "amount": 40},
                ),
            ]
        else:
            commands = [
                (
                    "SchedulePerformance",
                    {"performance_id": "p-1", "show": "Cats", "seats": ["A1", "A2"]},
                ),
                (
                    "HoldSeats",
                    {
                        "performance_id": "p-1",
                        "hold_id": "h-1",
                        "buyer": "Ann",
                        "seats": ["A1", "A2"],
                    },
                ),
                ("Purchase", {"performance_id": "p-1", "hold_id": "h-1"}),
            ]
        for name, data in commands:
            sent = run(
                BACKSTAGE, "send", name, json.dumps(data), "--strong", "--port", str(port), env=env
            )
            assert sent.returncode == 0, sent.stderr
        tree = run(BACKSTAGE, "tree", "--json", "--port", str(port), env=env)
        node = json.loads(tree.stdout)
        assert node["status"] == "running"
        kinds = {c["kind"] for c in node["children"]}
        assert {"store", "router", "events"} <= kinds
        if app.startswith("examples.bank"):
            # The saga moved the money through the daemon's process manager: --strong waited
            # for it to take TransferRequested, not for the deposit it dispatches a step later.
            def deposited() -> list[dict[str, Any]]:
                events = json.loads(
                    run(
                        BACKSTAGE, "events", "Account-bob", "--json", "--port", str(port), env=env
                    ).stdout
                )
                return [e for e in events if e["type"] == "MoneyDeposited"]

            found = wait_until(deposited, interval=0.5, what="the saga's deposit to bob")
            assert found[-1]["data"]["balance"] == 40
        else:
            events = json.loads(
                run(BACKSTAGE, "events", "--json", "--port", str(port), env=env).stdout
            )
            assert [e["type"] for e in events][-2:] == ["SeatsPurchased", "PerformanceSoldOut"]
    finally:
        run(BACKSTAGE, "stop", "--port", str(port), env=env)
        _daemon.kill_leftovers(port)


@pytest.mark.parametrize("example", ["bank", "theatre"])
def test_the_examples_leave_no_temporary_directory(tmp_path: Any, example: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    environment = {**os.environ, "TMPDIR": str(scratch)}
    result = run(sys.executable, "-m", f"examples.{example}", env=environment)
    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == []


def test_a_transfer_to_a_missing_account_fails_saying_so() -> None:
    given([], aggregate=Account).when(DepositForTransfer("bob", 5, "t-9")).then(
        TransferDepositRefused("bob", "t-9", "there is no account bob")
    )
