"""Another user of the host plants a file where Backstage is told to write (a daemon's
``--log-file`` or ``--pid-file``, an export) in a shared directory (mode 1777, like /tmp), and
keeps it open: Backstage refuses it rather than write its logs or its events into that user's
file. The attacker runs as ``nobody``; we run as root."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import attrs
import pytest

from backstage_actors._export import export_events
from backstage_actors.errors import BackstageError
from backstage_actors.store import EventStore

from .test_cli import Backstage, shut_down
from .test_database_file_planting import keep_open_as_nobody, spy_read_the_secret
from .test_security import as_nobody, nobody, shared_tmp  # noqa: F401

pytestmark = pytest.mark.process

SECRET = "a-deposit-only-root-may-read"  # (what keep_open_as_nobody looks for)


@attrs.frozen
class PlantedExportSecretNoted:
    text: str


@as_nobody
def test_an_export_to_a_file_another_user_planted_is_refused(
    shared_tmp: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    target = shared_tmp / "events.jsonl"
    with EventStore(str(tmp_path / "app.db")) as store:
        store.append("planted-export-1", [PlantedExportSecretNoted(SECRET)])
        spy = keep_open_as_nobody(target)
        try:
            with pytest.raises(BackstageError, match="belongs to another user") as refused:
                export_events(store, str(target))
            assert str(target) in str(refused.value)
        finally:
            assert not spy_read_the_secret(spy), "nobody read the export"
        # A file of our own there is written as before.
        os.unlink(target)
        assert export_events(store, str(target)).count == 1
        assert SECRET in target.read_text()


@as_nobody
@pytest.mark.parametrize("option", ["--log-file", "--pid-file"])
def test_a_daemon_refuses_a_log_or_pid_file_another_user_planted(
    shared_tmp: Path,  # noqa: F811
    tmp_path: Path,
    option: str,
) -> None:
    planted = shared_tmp / "daemon.out"
    spy = keep_open_as_nobody(planted)
    backstage = Backstage(tmp_path / "home")
    try:
        started = backstage.start(option, str(planted))
        assert started.returncode != 0, "the daemon started with another user's file"
        assert "belongs to another user" in started.stderr, started.stderr
        assert not (backstage.home / f"daemon-{backstage.port}.json").exists()
    finally:
        shut_down(backstage)
        spy_read_the_secret(spy)
    assert os.stat(planted).st_size == 0, "the daemon wrote into another user's file"


@as_nobody
def test_an_export_to_a_fifo_another_user_planted_neither_hangs_nor_writes(
    shared_tmp: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    target = shared_tmp / "events.jsonl"
    planted = nobody("import os, sys; os.mkfifo(sys.argv[1], 0o666)", target)
    assert planted.returncode == 0, planted.stderr
    outcome: list[BaseException | None] = []

    def export() -> None:
        with EventStore(str(tmp_path / "app.db")) as store:
            store.append("planted-export-2", [PlantedExportSecretNoted(SECRET)])
            try:
                export_events(store, str(target))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

    exporting = threading.Thread(target=export)
    exporting.start()
    exporting.join(10)
    if exporting.is_alive():  # waiting for a reader of the FIFO: be that reader, and fail
        with open(target, "rb") as reader:
            reader.read()
        exporting.join()
        pytest.fail("the export waited for a reader of another user's FIFO")
    [error] = outcome
    assert isinstance(error, BackstageError), error
    assert f"{target} is a FIFO that nothing reads" in str(error)
