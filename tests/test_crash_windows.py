"""A round, a shard or a process interrupted between a commit and its answers: no answer from a
state that was never stored, none before the commits it counts on are on disk, and no command
decided twice (found by helper-23's review of the in-process write path)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from typing import Any

import attrs
import pytest

from backstage_actors import (
    Aggregate,
    Application,
    CommandRejected,
    DispatchTimeout,
    Router,
    _shared,
)
from backstage_actors._shared import shared_store


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt (Ctrl-C) reaching the serving thread."""


@attrs.frozen
class Open:
    account_id: str


@attrs.frozen
class Boom:
    account_id: str


@attrs.frozen
class Ensure:
    """Nothing to record if the account is open: its answer counts on the stored Opened."""

    account_id: str


@attrs.frozen
class Opened:
    account_id: str


class Account(Aggregate):
    def __init__(self) -> None:
        self.open = False

    def execute(self, command: Any) -> Any:
        if isinstance(command, Boom):
            raise Interrupted
        if isinstance(command, Ensure):
            if not self.open:
                raise ValueError("not open")
            return []
        if self.open:
            raise ValueError("already open")
        return Opened(command.account_id)

    def apply(self, event: Any) -> None:
        self.open = True


class Fragile(Account):
    """Its snapshot fails for account "a" (a bug in user code, an Exception): the shard crashes
    after the round's commit, while it answers."""

    snapshot_every = 1

    def snapshot_state(self) -> dict[str, Any]:
        if self.id == "a":
            raise RuntimeError("cannot snapshot a")
        return super().snapshot_state()


def app(aggregate: type[Aggregate] = Account) -> Application:
    router = Router().dispatch([Open, Boom, Ensure], to=aggregate, identity="account_id")
    return Application("accounts", router=router)


class CountingSync:
    """Stands in for a store's WAL flush and counts its fdatasyncs."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.sync()

    def close(self) -> None:
        self.sync.close()


def counting_flushes(system: Any) -> CountingSync:
    recorder: Any = shared_store(system.settings).recorder
    counting = recorder._wal = CountingSync(recorder._wal)
    return counting


def lock_counters(database: str) -> tuple[int, int]:
    """(committed, flushed) from the lock file beside ``database``."""
    with open(os.path.realpath(database) + ".lock", "rb") as lock:
        committed, flushed = struct.unpack("<QQ", lock.read(16))
    return committed, flushed


# -- in-process ----------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["simple"])
def test_an_interrupted_round_leaves_no_state_that_was_never_stored(start_app: Any) -> None:
    """Open(a) is decided (and applied to a's cell) in the round of Boom(b), whose decision is
    interrupted before the round's commit: nothing of a is stored, so opening a again succeeds
    instead of being refused on the lost state."""
    system = start_app(app())
    system.dispatch(Open("warm-up"))  # (the one shard is known: the batch goes to it)
    with pytest.raises(Interrupted):
        system.dispatch_many([Open("a"), Boom("b")])
    assert list(system.store.read_stream("Account-a")) == []
    try:
        result = system.dispatch(Open("a"))
    except CommandRejected as exc:
        pytest.fail(f"answered from a state that was never stored: {exc}")
    assert result.version == 1


@pytest.mark.parametrize("base", ["simple"])
def test_a_command_whose_shard_crashed_after_its_commit_is_not_decided_again(
    start_app: Any,
) -> None:
    """Open(a) is committed, then the shard crashes while it answers. The caller's detour
    through the router sent it again unnamed, the restarted shard decided it a second time on
    the stored Opened, and the caller heard "already open" of its own stored command."""
    system = start_app(app(Fragile))
    system.dispatch(Open("warm-up"))
    try:
        outcome: Any = system.dispatch(Open("a"), metadata={"correlation_id": "mine"})
    except (CommandRejected, DispatchTimeout) as exc:
        outcome = exc
    [stored] = system.store.read_stream("Fragile-a")
    assert stored.metadata["correlation_id"] == "mine"
    assert not isinstance(outcome, CommandRejected), f"stored, yet the caller heard: {outcome}"


@pytest.mark.parametrize("base", ["simple"])
def test_an_answer_after_a_shard_restart_waits_for_the_flush_of_what_it_counted_on(
    start_app: Any, app_database: str
) -> None:
    """Open(a), named, is committed (its flush left to its caller), then the shard crashes
    while it answers; the restarted shard answers the detour from the store: only once the
    commit is on disk."""
    system = start_app(app(Fragile))
    system.dispatch(Open("warm-up"))
    counting = counting_flushes(system)
    answer = system.dispatch(Open("a"), metadata={"command_id": "open-a"}, timeout=5.0)
    assert [e.version for e in answer.events] == [1]
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed and counting.count > 0, (
        f"answered on commit {committed}; the flushes reached {flushed} ({counting.count} since)"
    )


@pytest.mark.parametrize("base", ["simple"])
def test_a_round_interrupted_after_its_commit_leaves_no_answer_before_that_commit_is_flushed(
    start_app: Any,
) -> None:
    """The interruption lands right after SQLite's COMMIT, before the store numbers the commit
    for its flush: the next answer that counts on it still waits for a flush."""
    system = start_app(app())
    system.dispatch(Open("warm-up"))
    counting = counting_flushes(system)
    turns = shared_store(system.settings).recorder._turns  # type: ignore[attr-defined]
    real = turns.committed

    def interrupted() -> int:  # (where a signal could land)
        turns.committed = real
        raise Interrupted

    turns.committed = interrupted
    with pytest.raises(Interrupted):
        system.dispatch(Open("b"))
    assert [e.version for e in system.store.read_stream("Account-b")] == [1]  # committed
    answer = system.dispatch(Ensure("b"))  # decided on the stored Opened: nothing to record
    assert answer.version == 1 and answer.events == []
    assert counting.count > 0, "answered on a commit that no fdatasync has covered"


@pytest.mark.parametrize("base", ["simple"])
def test_a_flush_after_the_system_stopped_opens_no_store_again(start_app: Any) -> None:
    """stop() lands between a batch's round and its flush: the flush must not open the
    database again (a connection nobody closes, and a flush on it that failed)."""
    system = start_app(app())
    system.dispatch(Open("warm-up"))
    combiner = system._courier.combiner
    real_hand_on = combiner._hand_on
    stopped = threading.Event()

    def hand_on(leaving: Any = None) -> None:
        real_hand_on(leaving)
        if leaving is not None:  # the server, between its batch and its flush
            threading.Thread(target=lambda: (system.stop(), stopped.set())).start()
            assert stopped.wait(30)

    combiner._hand_on = hand_on
    system.dispatch(Open("c"))
    leaked = [key for key in _shared._stores if key[1] == system.settings.database]
    for key in leaked:
        _shared._stores.pop(key).close()
    assert not leaked, "the stopped system's database was opened again and left open"


# -- both bases ----------------------------------------------------------------------------------

_DIED_BEFORE_ITS_FLUSH = """
import os, sys
from backstage_actors.store import EventStore
from tests.test_crash_windows import Opened
store = EventStore(sys.argv[1], shared_flush=True)
store.recorder.defer_flush = True  # the commit's flush is left for later...
store.append("Account-a", [Opened("a")], expected_version=0)
os._exit(0)  # ...and the process dies first
"""


def test_a_shard_flushes_what_it_rebuilds_from_before_it_answers(
    start_app: Any, app_database: str
) -> None:
    """A process (a shard before it was killed) committed Opened(a) and died before its flush.
    A new shard answers Ensure(a) from that state: only once it is on disk."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-c", _DIED_BEFORE_ITS_FLUSH, app_database], cwd=root, check=True
    )
    committed, flushed = lock_counters(app_database)
    assert committed > flushed  # (the set-up: a commit not flushed)
    system = start_app(app())
    answer = system.dispatch(Ensure("a"))
    assert answer.version == 1 and answer.events == []
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed, f"answered on commit {committed}, flushed through {flushed}"
