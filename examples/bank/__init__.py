"""The bank: accounts, transfers with refunds, a balances read model and a notifier.

``python -m examples.bank`` runs a short story in-process; ``backstage start examples.bank:app``
runs it as a daemon.
"""

from __future__ import annotations

from backstage_actors import Application, Router

from .domain import (
    Account,
    CloseAccount,
    Deposit,
    DepositForTransfer,
    OpenAccount,
    RefundTransfer,
    Withdraw,
    WithdrawForTransfer,
)
from .read_models import Balances, Notifier
from .transfers import CompleteTransfer, FailTransfer, Transfer, TransferMoney, TransferSaga

__all__ = ["app", "make_app", "router"]

router = Router()
router.dispatch(
    [
        OpenAccount,
        Deposit,
        Withdraw,
        CloseAccount,
        WithdrawForTransfer,
        DepositForTransfer,
        RefundTransfer,
    ],
    to=Account,
    identity="account_id",
)
router.dispatch(
    [TransferMoney, CompleteTransfer, FailTransfer], to=Transfer, identity="transfer_id"
)


def make_app(database: str = "bank.db", **options: object) -> Application:
    return Application(
        "bank",
        router=router,
        handlers=[Notifier],
        projections=[Balances],
        process_managers=[TransferSaga],
        database=database,
        **options,  # type: ignore[arg-type]
    )


app = make_app()
