"""Another process appends to a stream a shard serves: no answer counts on its commit before that
commit is on disk (found by helper-45's review of the write path).

With shared flushes (every running application's store) a commit is visible to readers once its
frames are written, before the fdatasync its writer makes after its turn. A shard that reads such
a commit (a cell rebuilt from the store, a named command found stored) and answers from it
without committing anything of its own must still wait for a flush that covers it."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from typing import Any

import pytest

from backstage_actors import CommandRejected
from backstage_actors._shared import shared_store

from .competing_writer_domain import CwrEnsure, CwrOpen, app

# A writer between its commit and its flush (its fdatasync is slow, or it was killed there):
# the commit is written and numbered, its flush left for later, and the process ends first.
_COMMITS_AND_DIES_BEFORE_ITS_FLUSH = """
import os, sys
from backstage_actors._ids import event_id
from backstage_actors.store import EventStore
from tests.competing_writer_domain import CwrOpened
store = EventStore(sys.argv[1], shared_flush=True)
store.recorder.defer_flush = True
store.append(
    "CwrAccount-" + sys.argv[2],
    [CwrOpened(sys.argv[2])],
    expected_version=0,
    metadata={"command": "CwrOpen", "command_id": sys.argv[3]},
    event_ids=[event_id(sys.argv[3], 0)],
)
os._exit(0)
"""


def lock_counters(database: str) -> tuple[int, int]:
    """(committed, flushed) from the lock file beside ``database``."""
    with open(os.path.realpath(database) + ".lock", "rb") as lock:
        committed, flushed = struct.unpack("<QQ", lock.read(16))
    return committed, flushed


def rival_commits(database: str, account: str, command_id: str) -> None:
    """Another process commits CwrOpened(account), named ``command_id``, and no flush follows."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-c", _COMMITS_AND_DIES_BEFORE_ITS_FLUSH, database, account, command_id],
        cwd=root,
        check=True,
        timeout=60,
    )
    committed, flushed = lock_counters(database)
    assert committed > flushed  # (the set-up: a commit not flushed)


@pytest.mark.parametrize("base", ["simple", "multiproc"])
@pytest.mark.parametrize("how", ["nothing to record", "named repeat"])
def test_no_answer_counts_on_another_processs_commit_before_it_is_flushed(
    start_app: Any, app_database: str, how: str
) -> None:
    """The rival's CwrOpened(a) is committed, not flushed. CwrEnsure(a) (the cell rebuilt from
    it: nothing to record) or CwrOpen(a) named as the rival named it (found stored: a repeat) is
    answered as done only once a flush covers that commit."""
    system = start_app(app())
    system.dispatch(CwrOpen("warm-up"))  # (the shard is running: its start flushed what was)
    rival_commits(app_database, "a", "open-a")
    if how == "nothing to record":
        answer = system.dispatch(CwrEnsure("a"))
        assert answer.version == 1 and answer.events == []
    else:
        answer = system.dispatch(CwrOpen("a"), metadata={"command_id": "open-a"})
        assert [e.version for e in answer.events] == [1]
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed, f"answered on commit {committed}, flushed through {flushed}"


def test_a_rejection_counts_on_what_it_read_too(start_app: Any, app_database: str) -> None:
    """A refusal is decided on the state too: CwrOpen(b) refused as "already open" on the
    rival's unflushed CwrOpened(b) waits for its flush."""
    system = start_app(app())
    system.dispatch(CwrOpen("warm-up"))
    rival_commits(app_database, "b", "rival-b")
    with pytest.raises(CommandRejected, match="already open"):
        system.dispatch(CwrOpen("b"))
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed, f"refused on commit {committed}, flushed through {flushed}"


@pytest.mark.parametrize("base", ["simple"])
def test_with_no_other_writer_a_rebuilt_cell_costs_no_flush(
    start_app: Any, app_database: str
) -> None:
    """No other connection committed since the last barrier: CwrEnsure(a) on a cell rebuilt
    from the store counts on what is already covered, and makes no flush of its own."""
    application = app()
    application.max_live = 1  # (each command's cell is rebuilt from the store)
    system = start_app(application)
    system.dispatch(CwrOpen("a"))
    system.dispatch(CwrOpen("b"))
    system.dispatch(CwrEnsure("a"))  # (the first barrier since the start)
    recorder: Any = shared_store(system.settings).recorder
    before = (recorder.flushes, lock_counters(app_database))
    for account in ["b", "a", "b"]:
        system.dispatch(CwrEnsure(account))
    assert (recorder.flushes, lock_counters(app_database)) == before


@pytest.mark.parametrize("base", ["simple"])
def test_another_connection_of_the_same_process_counts_as_another_writer(
    start_app: Any, app_database: str
) -> None:
    """The skip of the barrier (no other connection committed since the last one, SQLite's
    ``data_version``) holds for a second connection in the shard's own process: its unflushed
    commit of CwrOpened(c), read by a rebuilt cell after a barrier, is flushed before the
    answer."""
    from backstage_actors._ids import event_id
    from backstage_actors.store import EventStore

    from .competing_writer_domain import CwrOpened

    application = app()
    application.max_live = 1  # (each command's cell is rebuilt from the store)
    system = start_app(application)
    system.dispatch(CwrOpen("warm-up"))
    system.dispatch(CwrOpen("b"))
    system.dispatch(CwrEnsure("warm-up"))  # (rebuilt: a barrier, data_version noted)
    with EventStore(app_database, shared_flush=True) as other:
        other.recorder.defer_flush = True  # type: ignore[attr-defined]
        other.append(
            "CwrAccount-c",
            [CwrOpened("c")],
            expected_version=0,
            metadata={"command": "CwrOpen", "command_id": "open-c"},
            event_ids=[event_id("open-c", 0)],
        )
        committed, flushed = lock_counters(app_database)
        assert committed > flushed  # (the set-up: a commit not flushed)
        answer = system.dispatch(CwrEnsure("c"))
        assert answer.version == 1 and answer.events == []
        committed, flushed = lock_counters(app_database)
        assert flushed >= committed, f"answered on commit {committed}, flushed through {flushed}"
