"""The HTTP example (examples/bank_http) through httpx's ASGI transport, on both bases and
attached to a real daemon: every status mapping, and retries under an Idempotency-Key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.bank import make_app
from examples.bank_http import create_app

from .conftest import free_port
from .test_cli import Backstage, shut_down

Call = Callable[..., Awaitable[httpx.Response]]


def run(system: Any, body: Callable[[Call], Awaitable[None]], **options: Any) -> None:
    """Run ``body(call)`` where ``call(method, url, **kwargs)`` requests the app for ``system``."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=create_app(system, **options))
        async with httpx.AsyncClient(transport=transport, base_url="http://bank") as client:
            await body(client.request)

    asyncio.run(main())


@pytest.fixture
def bank(start_app: Any, tmp_path: Path) -> Any:
    return start_app(make_app(str(tmp_path / "bank.db")))


def test_post_sends_commands_and_get_reads_the_balances(bank: Any) -> None:
    async def body(call: Call) -> None:
        opened = await call("POST", "/accounts", json={"account_id": "ada", "owner": "Ada"})
        assert opened.status_code == 201
        assert opened.json()["stream_id"] == "Account-ada"
        deposit = await call(
            "POST", "/accounts/ada/deposits?consistency=strong", json={"amount": 500}
        )
        assert deposit.status_code == 200
        assert deposit.json()["events"][0]["type"] == "MoneyDeposited"
        account = await call("GET", "/accounts/ada")
        assert account.json() == {
            "account_id": "ada",
            "owner": "Ada",
            "balance": 500,
            "status": "open",
        }
        assert [a["account_id"] for a in (await call("GET", "/accounts")).json()] == ["ada"]
        assert (await call("GET", "/accounts/nobody")).status_code == 404

    run(bank, body)


def test_invalid_input_is_422_with_the_field_path(bank: Any) -> None:
    async def body(call: Call) -> None:
        wrong = await call("POST", "/accounts/ada/deposits", json={"amount": "lots"})
        assert wrong.status_code == 422
        assert wrong.json()["field"] == "$.amount"
        missing = await call("POST", "/accounts", json={"account_id": "ada"})
        assert missing.status_code == 422
        assert missing.json()["field"] == "$.owner"
        garbled = await call("POST", "/accounts", content=b"{not json")
        assert garbled.status_code == 422
        not_an_object = await call("POST", "/accounts", json=[1, 2])
        assert (not_an_object.status_code, not_an_object.json()["field"]) == (422, "$")

    run(bank, body)


def test_a_rejection_is_409(bank: Any) -> None:
    async def body(call: Call) -> None:
        await call("POST", "/accounts", json={"account_id": "bo", "owner": "Bo"})
        refused = await call("POST", "/accounts/bo/withdrawals", json={"amount": 10})
        assert refused.status_code == 409
        assert refused.json()["error"] == "CommandRejected"
        assert "insufficient funds" in refused.json()["detail"]
        again = await call("POST", "/accounts", json={"account_id": "bo", "owner": "Bo"})
        assert again.status_code == 409

    run(bank, body)


def test_no_answer_in_time_is_504(bank: Any) -> None:
    async def body(call: Call) -> None:
        late = await call("POST", "/accounts", json={"account_id": "cy", "owner": "Cy"})
        assert late.status_code == 504
        assert late.json()["error"] == "DispatchTimeout"

    run(bank, body, timeout=0.0)


def test_a_stopped_system_is_503(bank: Any) -> None:
    bank.stop()

    async def body(call: Call) -> None:
        down = await call("POST", "/accounts", json={"account_id": "di", "owner": "Di"})
        assert down.status_code == 503
        assert down.json()["error"] == "SystemNotRunning"

    run(bank, body)


def test_a_retry_with_the_same_idempotency_key_runs_once(bank: Any) -> None:
    async def body(call: Call) -> None:
        await call("POST", "/accounts", json={"account_id": "ed", "owner": "Ed"})
        key = {"Idempotency-Key": "deposit-ed-1"}
        first = await call(
            "POST", "/accounts/ed/deposits?consistency=strong", json={"amount": 70}, headers=key
        )
        retry = await call(
            "POST", "/accounts/ed/deposits?consistency=strong", json={"amount": 70}, headers=key
        )
        assert first.status_code == retry.status_code == 200
        assert first.json() == retry.json()
        assert first.json()["command_id"] == "deposit-ed-1"
        other = await call("POST", "/accounts/ed/deposits?consistency=strong", json={"amount": 70})
        assert other.json()["version"] == first.json()["version"] + 1
        assert (await call("GET", "/accounts/ed")).json()["balance"] == 140

    run(bank, body)


@pytest.mark.process
def test_attached_to_a_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backstage = Backstage(tmp_path, port=free_port())
    try:
        started = backstage.start()
        assert started.returncode == 0, started.stderr
        monkeypatch.setenv("BACKSTAGE_HOME", str(backstage.home))  # the daemon's secret
        system = make_app().attach(port=backstage.port)

        async def body(call: Call) -> None:
            opened = await call(
                "POST", "/accounts?consistency=strong", json={"account_id": "fi", "owner": "Fi"}
            )
            assert opened.status_code == 201
            assert (await call("GET", "/accounts/fi")).json()["owner"] == "Fi"

        with system:
            run(system, body)
    finally:
        shut_down(backstage)
