"""The routes, and how Backstage's errors become HTTP statuses."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backstage_actors import (
    BackstageError,
    CommandRejected,
    ConsistencyTimeout,
    DispatchTimeout,
    InvalidCommand,
    SerializationError,
    SystemNotRunning,
    WrongExpectedVersion,
)
from backstage_actors.command import command_from_data
from examples.bank.domain import CloseAccount, Deposit, OpenAccount, Withdraw
from examples.bank.transfers import TransferMoney

__all__ = ["create_app", "status_for"]

Handler = Callable[[Request], Awaitable[JSONResponse]]


def status_for(error: BaseException) -> int:
    """The HTTP status of a failed command."""
    if isinstance(error, (SerializationError, InvalidCommand)):
        return 422  # bad input: a field, an empty identity, a reused Idempotency-Key
    if isinstance(error, (CommandRejected, WrongExpectedVersion)):
        return 409
    if isinstance(error, (DispatchTimeout, ConsistencyTimeout)):
        return 504
    if isinstance(error, SystemNotRunning):
        return 503
    return 500


def error_body(error: BaseException) -> dict[str, Any]:
    body: dict[str, Any] = {"error": type(error).__name__, "detail": str(error)}
    if isinstance(error, SerializationError):
        body["field"] = error.path
    return body


def result_body(result: Any) -> dict[str, Any]:
    from backstage_actors._serialization import unstructure

    return {
        "stream_id": result.stream_id,
        "version": result.version,
        "command_id": result.command_id,
        "events": [
            {"type": e.type, "version": e.version, "data": unstructure(e.data)}
            for e in result.events
        ],
    }


def create_app(system: Any, timeout: float = 5.0) -> Starlette:
    """A Starlette app sending the bank's commands to ``system`` (a ``RunningSystem``)."""

    def command_route(
        command_class: type, from_path: tuple[str, ...] = (), created: bool = False
    ) -> Handler:
        """POST: the JSON body (plus ``from_path``'s path parameters) is the command."""

        async def endpoint(request: Request) -> JSONResponse:
            try:
                data = json.loads(await request.body() or b"{}")
            except ValueError as exc:
                return JSONResponse({"error": "InvalidJSON", "detail": str(exc)}, 422)
            if not isinstance(data, dict):
                body = {"error": "InvalidJSON", "detail": "expected a JSON object", "field": "$"}
                return JSONResponse(body, 422)
            data.update({name: request.path_params[name] for name in from_path})
            metadata = {}
            if key := request.headers.get("idempotency-key"):
                metadata["command_id"] = key
            strong = request.query_params.get("consistency") == "strong"
            try:
                command = command_from_data(command_class, data)
                result = await system.dispatch_async(
                    command,
                    consistency="strong" if strong else "eventual",
                    metadata=metadata,
                    timeout=timeout,
                )
            except BackstageError as exc:
                return JSONResponse(error_body(exc), status_for(exc))
            return JSONResponse(result_body(result), 201 if created else 200)

        return endpoint

    def balances() -> sqlite3.Connection:
        # Read-only, one connection per request (Starlette runs sync routes in threads).
        database = system.settings.database
        return sqlite3.connect(f"file:{database}?mode=ro", uri=True)

    def read(query: str, *args: Any) -> list[dict[str, Any]]:
        with balances() as connection:
            connection.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in connection.execute(query, args)]
            except sqlite3.OperationalError:  # no balances table yet: nothing projected
                return []

    def list_accounts(request: Request) -> JSONResponse:
        return JSONResponse(read("SELECT * FROM balances ORDER BY account_id"))

    def get_account(request: Request) -> JSONResponse:
        rows = read(
            "SELECT * FROM balances WHERE account_id = ?", request.path_params["account_id"]
        )
        if not rows:
            return JSONResponse({"error": "NotFound", "detail": "no such account"}, 404)
        return JSONResponse(rows[0])

    return Starlette(
        routes=[
            Route("/accounts", command_route(OpenAccount, created=True), methods=["POST"]),
            Route("/accounts", list_accounts, methods=["GET"]),
            Route("/accounts/{account_id}", get_account, methods=["GET"]),
            Route(
                "/accounts/{account_id}/deposits",
                command_route(Deposit, ("account_id",)),
                methods=["POST"],
            ),
            Route(
                "/accounts/{account_id}/withdrawals",
                command_route(Withdraw, ("account_id",)),
                methods=["POST"],
            ),
            Route(
                "/accounts/{account_id}/close",
                command_route(CloseAccount, ("account_id",)),
                methods=["POST"],
            ),
            Route("/transfers", command_route(TransferMoney, created=True), methods=["POST"]),
        ]
    )
