"""Domain of tests/test_competing_writers.py (imported by the shard processes on multiproc)."""

from __future__ import annotations

from typing import Any

import attrs

from backstage_actors import Aggregate, Application, Router


@attrs.frozen
class CwrOpen:
    account_id: str


@attrs.frozen
class CwrEnsure:
    """Nothing to record if the account is open: its answer counts on the stored CwrOpened."""

    account_id: str


@attrs.frozen
class CwrOpened:
    account_id: str


class CwrAccount(Aggregate):
    def __init__(self) -> None:
        self.open = False

    def execute(self, command: Any) -> Any:
        if isinstance(command, CwrEnsure):
            if not self.open:
                raise ValueError("not open")
            return []
        if self.open:
            raise ValueError("already open")
        return CwrOpened(command.account_id)

    def apply(self, event: Any) -> None:
        self.open = True


def app() -> Application:
    router = Router().dispatch([CwrOpen, CwrEnsure], to=CwrAccount, identity="account_id")
    return Application("rivals", router=router)
