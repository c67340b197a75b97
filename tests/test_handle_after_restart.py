"""A program attached to a daemon that is stopped and started again on the same port with the
same secret (a deploy): its first call after the restart waited its whole timeout (and then
failed) because the handle still asked the old root and router; it must find the new ones
promptly. Real daemons of the bank, a real attached handle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backstage_actors.command import DispatchResult
from examples.bank.domain import Deposit, OpenAccount

from .test_cli import attached_bank

pytestmark = pytest.mark.process

PROMPT = 3.0  # seconds, on a loaded 2-core machine (the timeouts asked are 10 s)


def test_the_first_dispatch_after_a_restart_finds_the_new_router(tmp_path: Path) -> None:
    """The handle knew the old router (a batch went through it) and the stream's lane; the
    lane's old connection fails, and the command went to the old router: no answer within
    its timeout (5 s asked: a DispatchTimeout after 5 s)."""
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("ar1", "A"), "strong", timeout=30).version == 1
        batch = system.dispatch_many([OpenAccount("ar2", "A"), OpenAccount("ar3", "A")])
        assert all(isinstance(answer, DispatchResult) for answer in batch), batch
        assert backstage.run("stop").returncode == 0
        assert backstage.start().returncode == 0

        began = time.monotonic()
        result = system.dispatch(Deposit("ar1", 5), "strong", timeout=10)
        assert time.monotonic() - began < PROMPT
        assert result.version == 2


def test_the_first_batch_after_a_restart_asks_the_new_root(tmp_path: Path) -> None:
    """The handle had never needed the router (its commands went by lane): a batch after the
    restart asked the old root where the router is, and waited its whole timeout for it."""
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("ar4", "A"), timeout=30).version == 1
        assert backstage.run("stop").returncode == 0
        assert backstage.start().returncode == 0

        began = time.monotonic()
        batch = system.dispatch_many([OpenAccount("ar5", "A"), OpenAccount("ar6", "A")], timeout=10)
        assert time.monotonic() - began < PROMPT
        assert all(isinstance(answer, DispatchResult) for answer in batch), batch
