"""Transfers between accounts: a Transfer aggregate records the request, a process manager
moves the money, and refunds it when the receiving account cannot take it."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, ProcessManager

from .domain import (
    DepositForTransfer,
    MoneyDeposited,
    MoneyWithdrawn,
    RefundTransfer,
    TransferDepositRefused,
    TransferRefunded,
    TransferWithdrawalRefused,
    WithdrawForTransfer,
)

__all__ = [
    "CompleteTransfer",
    "FailTransfer",
    "Transfer",
    "TransferCompleted",
    "TransferFailed",
    "TransferMoney",
    "TransferRequested",
    "TransferSaga",
]


@attrs.frozen
class TransferMoney:
    transfer_id: str
    source: str
    target: str
    amount: int


@attrs.frozen
class CompleteTransfer:
    transfer_id: str


@attrs.frozen
class FailTransfer:
    transfer_id: str
    reason: str


@attrs.frozen
class TransferRequested:
    transfer_id: str
    source: str
    target: str
    amount: int


@attrs.frozen
class TransferCompleted:
    transfer_id: str


@attrs.frozen
class TransferFailed:
    transfer_id: str
    reason: str


class Transfer(Aggregate):
    def __init__(self) -> None:
        self.status = "new"

    def execute(self, command: Any) -> Any:
        match command:
            case TransferMoney(transfer_id, source, target, amount):
                if self.status != "new":
                    raise ValueError(f"transfer {transfer_id} already requested")
                if amount <= 0:
                    raise ValueError(f"amount must be positive, got {amount}")
                if source == target:
                    raise ValueError("cannot transfer to the same account")
                return TransferRequested(transfer_id, source, target, amount)
            case CompleteTransfer(transfer_id):
                return TransferCompleted(transfer_id) if self.status == "requested" else []
            case FailTransfer(transfer_id, reason):
                return TransferFailed(transfer_id, reason) if self.status == "requested" else []
        raise TypeError(f"Transfer cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        match event:
            case TransferRequested():
                self.status = "requested"
            case TransferCompleted():
                self.status = "completed"
            case TransferFailed():
                self.status = "failed"


class TransferSaga(ProcessManager):
    """Withdraw from the source, deposit to the target; refund the source if the target refuses."""

    name = "transfers"

    def __init__(self) -> None:
        self.source = ""
        self.target = ""
        self.amount = 0

    def interested(self, event: Any) -> tuple[str, str] | None:
        match event:
            case TransferRequested(transfer_id=tid):
                return ("start", tid)
            case MoneyWithdrawn(transfer_id=str(tid)) | TransferDepositRefused(transfer_id=tid):
                return ("continue", tid)
            case MoneyDeposited(transfer_id=str(tid)) | TransferRefunded(transfer_id=tid):
                return ("stop", tid)
            case TransferWithdrawalRefused(transfer_id=tid):
                return ("stop", tid)
        return None

    def handle(self, event: Any) -> Any:
        match event:
            case TransferRequested(transfer_id, source, _, amount):
                return WithdrawForTransfer(source, amount, transfer_id)
            case MoneyWithdrawn(transfer_id=str(tid), amount=amount):
                return DepositForTransfer(self.target, amount, tid)
            case TransferDepositRefused(transfer_id=tid, reason=reason):
                return [RefundTransfer(self.source, self.amount, tid), FailTransfer(tid, reason)]
            case MoneyDeposited(transfer_id=str(tid)):
                return CompleteTransfer(tid)
            case TransferWithdrawalRefused(transfer_id=tid, reason=reason):
                return FailTransfer(tid, reason)
        return None

    def apply(self, event: Any) -> None:
        if isinstance(event, TransferRequested):
            self.source, self.target, self.amount = event.source, event.target, event.amount
