"""``backstage members``/``tree`` read each other member's tree from that member's admin
(``_cluster_info.member_tree``): on a member whose application's root supervisor is gone it
looked the root up with ``createActor(Supervisor, globalName=...)``, which starts an empty root
supervisor there, a process of its own. It must look it up only, and report the member's
problem. A real daemon of the bank (the member), its root killed, its processes counted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from backstage_actors import SystemNotRunning
from backstage_actors._cluster_info import member_tree
from examples.bank import app
from examples.bank.domain import OpenAccount

from .conftest import process_alive, wait_until
from .test_cli import attached_bank

pytestmark = pytest.mark.process


def test_a_member_without_its_root_is_reported_not_given_an_empty_one(tmp_path: Path) -> None:
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("mt1", "M"), timeout=30).version == 1
        tree = member_tree(app, "127.0.0.1", backstage.port, timeout=5)
        assert tree["kind"] == "application" and tree["status"] == "running", tree
        root = int(tree["pid"])
        os.kill(root, signal.SIGKILL)
        wait_until(lambda: not process_alive(root), what="the root's end")
        left = set(backstage.processes())

        began = time.monotonic()
        with pytest.raises(SystemNotRunning) as raised:
            member_tree(app, "127.0.0.1", backstage.port, timeout=5)
        took = time.monotonic() - began
        assert set(backstage.processes()) <= left, "member_tree started a process in the member"
        assert f"127.0.0.1:{backstage.port}" in str(raised.value)
        assert "root supervisor" in str(raised.value)
        assert took < 3.0, f"{took:.1f}s (before: its whole timeout, and one second more)"
