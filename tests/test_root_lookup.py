"""Finding an application's root supervisor in a running admin never starts one: a handle
whose daemon's application ended (its root supervisor gave up or was killed, the admin lives
on) looked the root up again with ``createActor(Supervisor, globalName=...)``, which starts an
empty root supervisor, a process of its own, when the name is free; ``app.attach`` did the
same. Real daemon of the bank, real processes counted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from backstage_actors import SystemNotRunning
from examples.bank import app
from examples.bank.domain import OpenAccount

from .conftest import process_alive, wait_until
from .test_cli import attached_bank

pytestmark = pytest.mark.process


def test_a_root_that_ended_is_not_started_again_empty_by_a_client(tmp_path: Path) -> None:
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("rl1", "R"), timeout=30).version == 1
        root = int(system.tree()["pid"])
        os.kill(root, signal.SIGKILL)
        wait_until(lambda: not process_alive(root), what="the root's end")
        left = set(backstage.processes())

        with pytest.raises(SystemNotRunning):
            system.tree(timeout=2)
        assert set(backstage.processes()) <= left, "tree() started a process in the admin"
        with pytest.raises(SystemNotRunning, match="does not run"):
            app.attach(port=backstage.port)
        assert set(backstage.processes()) <= left, "attach() started a process in the admin"


def test_tree_says_at_once_that_the_root_ended(tmp_path: Path) -> None:
    """``tree()`` asked the root that had ended, and said so only after its whole timeout and
    one second more (tree(timeout=10): 11 s)."""
    with attached_bank(tmp_path) as (_, system):
        assert system.dispatch(OpenAccount("rl2", "R"), timeout=30).version == 1
        root = int(system.tree()["pid"])
        os.kill(root, signal.SIGKILL)
        wait_until(lambda: not process_alive(root), what="the root's end")

        began = time.monotonic()
        with pytest.raises(SystemNotRunning, match="root supervisor ended"):
            system.tree(timeout=10)
        assert time.monotonic() - began < 3.0
