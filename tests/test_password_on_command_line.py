"""A daemon's processes keep the command line of the ``backstage start`` they were forked from,
and /proc/PID/cmdline is readable by every user of the host: a PostgreSQL password given in
``--db`` is there for the daemon's whole life. ``start`` says so, and where to put it instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_cli import Backstage

pytestmark = pytest.mark.process

PASSWORD = "pw-in-argv-7f3a"


def test_start_warns_of_a_password_in_the_database_url(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path / "home")
    # (port 1 refuses at once: the start fails after the warning, and nothing keeps running)
    started = backstage.run(
        "start", "examples.bank:app", "--db", f"postgresql://bank:{PASSWORD}@127.0.0.1:1/bank"
    )
    assert started.returncode != 0
    assert "warning: the password in --db stays in the command line" in started.stderr
    assert "~/.pgpass or PGPASSWORD" in started.stderr
    assert PASSWORD not in started.stderr + started.stdout


def test_start_does_not_warn_without_a_password(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path / "home")
    started = backstage.run(
        "start", "examples.bank:app", "--db", "postgresql://bank@127.0.0.1:1/bank"
    )
    assert started.returncode != 0
    assert "password" not in started.stderr.split("error:")[0]
