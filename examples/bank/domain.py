"""Bank accounts: commands, events and the Account aggregate (amounts are in cents)."""

from __future__ import annotations

import attrs

from backstage_actors import Aggregate

__all__ = [
    "Account",
    "AccountClosed",
    "AccountOpened",
    "CloseAccount",
    "Deposit",
    "DepositForTransfer",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "OpenAccount",
    "RefundTransfer",
    "TransferDepositRefused",
    "TransferRefunded",
    "TransferWithdrawalRefused",
    "Withdraw",
    "WithdrawForTransfer",
]


# -- commands: what someone asks the bank to do ------------------------------------------------


@attrs.frozen
class OpenAccount:
    account_id: str
    owner: str


@attrs.frozen
class Deposit:
    account_id: str
    amount: int


@attrs.frozen
class Withdraw:
    account_id: str
    amount: int


@attrs.frozen
class CloseAccount:
    account_id: str


@attrs.frozen
class WithdrawForTransfer:
    account_id: str
    amount: int
    transfer_id: str


@attrs.frozen
class DepositForTransfer:
    account_id: str
    amount: int
    transfer_id: str


@attrs.frozen
class RefundTransfer:
    account_id: str
    amount: int
    transfer_id: str


# -- events: what happened ------------------------------------------------------------------


@attrs.frozen
class AccountOpened:
    account_id: str
    owner: str


@attrs.frozen
class MoneyDeposited:
    account_id: str
    amount: int
    balance: int
    transfer_id: str | None = None


@attrs.frozen
class MoneyWithdrawn:
    account_id: str
    amount: int
    balance: int
    transfer_id: str | None = None


@attrs.frozen
class AccountClosed:
    account_id: str


@attrs.frozen
class TransferWithdrawalRefused:
    account_id: str
    transfer_id: str
    reason: str


@attrs.frozen
class TransferDepositRefused:
    account_id: str
    transfer_id: str
    reason: str


@attrs.frozen
class TransferRefunded:
    account_id: str
    amount: int
    balance: int
    transfer_id: str


class Account(Aggregate):
    """One bank account. Business rules: open once, positive amounts, no overdraft, close at zero."""

    snapshot_every = 100

    def __init__(self) -> None:
        self.owner = ""
        self.balance = 0
        self.status = "new"

    def execute(self, command: object) -> object:
        match command:
            case OpenAccount(account_id, owner):
                if self.status != "new":
                    raise ValueError(f"account {account_id} already exists")
                if not owner.strip():
                    raise ValueError("an account needs an owner")
                return AccountOpened(account_id, owner)
            case Deposit(account_id, amount):
                self._require_open(account_id)
                _positive(amount)
                return MoneyDeposited(account_id, amount, self.balance + amount)
            case Withdraw(account_id, amount):
                self._require_open(account_id)
                _positive(amount)
                if amount > self.balance:
                    raise ValueError(f"insufficient funds: balance {self.balance}, asked {amount}")
                return MoneyWithdrawn(account_id, amount, self.balance - amount)
            case CloseAccount(account_id):
                self._require_open(account_id)
                if self.balance != 0:
                    raise ValueError(f"cannot close an account holding {self.balance}")
                return AccountClosed(account_id)
            case WithdrawForTransfer(account_id, amount, transfer_id):
                if self.status != "open" or amount <= 0 or amount > self.balance:
                    reason = (
                        self._not_open(account_id)
                        if self.status != "open"
                        else "insufficient funds"
                    )
                    return TransferWithdrawalRefused(account_id, transfer_id, reason)
                return MoneyWithdrawn(account_id, amount, self.balance - amount, transfer_id)
            case DepositForTransfer(account_id, amount, transfer_id):
                if self.status != "open":
                    return TransferDepositRefused(
                        account_id, transfer_id, self._not_open(account_id)
                    )
                return MoneyDeposited(account_id, amount, self.balance + amount, transfer_id)
            case RefundTransfer(account_id, amount, transfer_id):
                return TransferRefunded(account_id, amount, self.balance + amount, transfer_id)
        raise TypeError(f"Account cannot handle {type(command).__name__}")

    def apply(self, event: object) -> None:
        match event:
            case AccountOpened(owner=owner):
                self.owner, self.status = owner, "open"
            case MoneyDeposited(balance=balance) | MoneyWithdrawn(balance=balance):
                self.balance = balance
            case TransferRefunded(balance=balance):
                self.balance = balance
            case AccountClosed():
                self.status = "closed"

    def _require_open(self, account_id: str) -> None:
        if self.status != "open":
            raise ValueError(self._not_open(account_id))

    def _not_open(self, account_id: str) -> str:
        """Why this account takes no money, in words its customer understands."""
        if self.status == "new":
            return f"there is no account {account_id}"
        return f"account {account_id} is {self.status}"


def _positive(amount: int) -> None:
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")
