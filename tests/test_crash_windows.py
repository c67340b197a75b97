"""A round, a shard or a process interrupted between a commit and its answers: no answer from a
state that was never stored, none before the commits it counts on are on disk, and no command
decided twice (found by helper-23's review of the in-process write path)."""

from __future__ import annotations

import errno
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
    StorageError,
    _shared,
)
from backstage_actors._shared import shared_store
from backstage_actors.store import _durability

from .dispatch_domain import aggregate_nodes


class Interrupted(KeyboardInterrupt):
    """Stands for a KeyboardInterrupt (Ctrl-C) reaching the serving thread (the only
    exception of user code that interrupts a round: see test_poison_commands)."""


@attrs.frozen
class CwOpen:
    account_id: str


@attrs.frozen
class CwBoom:
    account_id: str


@attrs.frozen
class CwEnsure:
    """Nothing to record if the account is open: its answer counts on the stored CwOpened."""

    account_id: str


@attrs.frozen
class CwOpened:
    account_id: str


class CwAccount(Aggregate):
    def __init__(self) -> None:
        self.open = False

    def execute(self, command: Any) -> Any:
        if isinstance(command, CwBoom):
            raise Interrupted
        if isinstance(command, CwEnsure):
            if not self.open:
                raise ValueError("not open")
            return []
        if self.open:
            raise ValueError("already open")
        return CwOpened(command.account_id)

    def apply(self, event: Any) -> None:
        self.open = True


class CwFragile(CwAccount):
    """Its snapshot fails for account "a" (a bug in user code, an Exception): the shard crashes
    after the round's commit, while it answers."""

    snapshot_every = 1

    def snapshot_state(self) -> dict[str, Any]:
        if self.id == "a":
            raise RuntimeError("cannot snapshot a")
        return super().snapshot_state()


def app(aggregate: type[Aggregate] = CwAccount) -> Application:
    router = Router().dispatch([CwOpen, CwBoom, CwEnsure], to=aggregate, identity="account_id")
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
    """CwOpen(a) is decided (and applied to a's cell) in the round of CwBoom(b), whose decision is
    interrupted before the round's commit: nothing of a is stored, so opening a again succeeds
    instead of being refused on the lost state."""
    system = start_app(app())
    system.dispatch(CwOpen("warm-up"))  # (the one shard is known: the batch goes to it)
    with pytest.raises(Interrupted):
        system.dispatch_many([CwOpen("a"), CwBoom("b")])
    assert list(system.store.read_stream("CwAccount-a")) == []
    try:
        result = system.dispatch(CwOpen("a"))
    except CommandRejected as exc:
        pytest.fail(f"answered from a state that was never stored: {exc}")
    assert result.version == 1


@pytest.mark.parametrize("base", ["simple"])
def test_a_command_whose_shard_crashed_after_its_commit_is_not_decided_again(
    start_app: Any,
) -> None:
    """CwOpen(a) is committed, then the shard crashes while it answers. The caller's detour
    through the router sent it again unnamed, the restarted shard decided it a second time on
    the stored CwOpened, and the caller heard "already open" of its own stored command."""
    system = start_app(app(CwFragile))
    system.dispatch(CwOpen("warm-up"))
    try:
        outcome: Any = system.dispatch(CwOpen("a"), metadata={"correlation_id": "mine"})
    except (CommandRejected, DispatchTimeout) as exc:
        outcome = exc
    [stored] = system.store.read_stream("CwFragile-a")
    assert stored.metadata["correlation_id"] == "mine"
    assert not isinstance(outcome, CommandRejected), f"stored, yet the caller heard: {outcome}"


@pytest.mark.parametrize("base", ["simple"])
def test_an_answer_after_a_shard_restart_waits_for_the_flush_of_what_it_counted_on(
    start_app: Any, app_database: str
) -> None:
    """CwOpen(a), named, is committed (its flush left to its caller), then the shard crashes
    while it answers; the restarted shard answers the detour from the store: only once the
    commit is on disk."""
    system = start_app(app(CwFragile))
    system.dispatch(CwOpen("warm-up"))
    counting = counting_flushes(system)
    answer = system.dispatch(CwOpen("a"), metadata={"command_id": "open-a"}, timeout=5.0)
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
    system.dispatch(CwOpen("warm-up"))
    counting = counting_flushes(system)
    turns = shared_store(system.settings).recorder._turns  # type: ignore[attr-defined]
    real = turns.committed

    def interrupted() -> int:  # (where a signal could land)
        turns.committed = real
        raise Interrupted

    turns.committed = interrupted
    with pytest.raises(Interrupted):
        system.dispatch(CwOpen("b"))
    assert [e.version for e in system.store.read_stream("CwAccount-b")] == [1]  # committed
    answer = system.dispatch(CwEnsure("b"))  # decided on the stored CwOpened: nothing to record
    assert answer.version == 1 and answer.events == []
    assert counting.count > 0, "answered on a commit that no fdatasync has covered"


@pytest.mark.parametrize("base", ["simple"])
def test_a_flush_after_the_system_stopped_opens_no_store_again(start_app: Any) -> None:
    """stop() lands between a batch's round and its flush: the flush must not open the
    database again (a connection nobody closes, and a flush on it that failed)."""
    system = start_app(app())
    system.dispatch(CwOpen("warm-up"))
    combiner = system._courier.combiner
    real_hand_on = combiner._hand_on
    stopped = threading.Event()

    def hand_on(leaving: Any = None) -> None:
        real_hand_on(leaving)
        if leaving is not None:  # the server, between its batch and its flush
            threading.Thread(target=lambda: (system.stop(), stopped.set())).start()
            assert stopped.wait(30)

    combiner._hand_on = hand_on
    system.dispatch(CwOpen("c"))
    leaked = [key for key in _shared._stores if key[1] == system.settings.database]
    for key in leaked:
        _shared._stores.pop(key).close()
    assert not leaked, "the stopped system's database was opened again and left open"


# -- both bases ----------------------------------------------------------------------------------

_DIED_BEFORE_ITS_FLUSH = """
import os, sys
from backstage_actors.store import EventStore
from tests.test_crash_windows import CwOpened
store = EventStore(sys.argv[1], shared_flush=True)
store.recorder.defer_flush = True  # the commit's flush is left for later...
store.append("CwAccount-a", [CwOpened("a")], expected_version=0)
os._exit(0)  # ...and the process dies first
"""


def test_a_shard_flushes_what_it_rebuilds_from_before_it_answers(
    start_app: Any, app_database: str
) -> None:
    """A process (a shard before it was killed) committed CwOpened(a) and died before its flush.
    A new shard answers CwEnsure(a) from that state: only once it is on disk."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-c", _DIED_BEFORE_ITS_FLUSH, app_database], cwd=root, check=True
    )
    committed, flushed = lock_counters(app_database)
    assert committed > flushed  # (the set-up: a commit not flushed)
    system = start_app(app())
    answer = system.dispatch(CwEnsure("a"))
    assert answer.version == 1 and answer.events == []
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed, f"answered on commit {committed}, flushed through {flushed}"


# -- found by helper-26's review of the multiproc write path -------------------------------------


def armed(trigger: str) -> bool:
    """Whether this process is the one whose pid the file ``trigger`` holds (once: the file is
    removed)."""
    try:
        with open(trigger) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return False
    if pid != os.getpid():
        return False
    os.unlink(trigger)
    return True


def failing_flush_in(trigger: str) -> Any:
    """A WalSync.__call__ whose next call in the process named by ``trigger`` (a file holding
    its pid) fails as a write-back error would (EIO), once."""
    real = _durability.WalSync.__call__

    def call(self: Any) -> None:
        if armed(trigger):
            raise OSError(errno.EIO, "Input/output error")
        real(self)

    return call


@pytest.mark.parametrize("base", ["simple", "multiproc"])
def test_after_a_failed_flush_no_answer_counts_on_the_unflushed_commit(
    start_app: Any, base: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CwOpen(a) is committed, its fdatasync fails: its caller hears a StorageError. The commit's
    pages may be gone from the disk; neither a named repeat (answered from the store) nor a
    command with nothing to record (decided on the rebuilt state) may be answered as done."""
    trigger = str(tmp_path / "fail-flush")
    # (before the start: on multiproc every actor process is forked with it)
    monkeypatch.setattr(_durability.WalSync, "__call__", failing_flush_in(trigger))
    system = start_app(app())
    system.dispatch(CwOpen("warm-up"))
    pid = os.getpid() if base == "simple" else aggregate_nodes(system)["CwAccount-warm-up"]["pid"]
    with open(trigger, "w") as f:
        f.write(str(pid))

    with pytest.raises(StorageError):
        system.dispatch(CwOpen("a"), metadata={"command_id": "open-a"})
    assert not os.path.exists(trigger)  # (the set-up: the shard's flush failed)
    assert [e.version for e in system.store.read_stream("CwAccount-a")] == [1]  # committed

    outcomes: dict[str, Any] = {}
    for name, command, metadata in [
        ("named repeat", CwOpen("a"), {"command_id": "open-a"}),
        ("nothing to record", CwEnsure("a"), None),
    ]:
        try:
            outcomes[name] = system.dispatch(command, metadata=metadata)
        except StorageError as exc:
            outcomes[name] = exc
    acknowledged = {k: v for k, v in outcomes.items() if not isinstance(v, StorageError)}
    assert not acknowledged, f"answered on a commit whose flush failed: {acknowledged}"


def killed_in(trigger: str, real: Any) -> Any:
    """``real`` (a method), except that the process named by ``trigger`` SIGKILLs itself at it."""

    def call(self: Any, *args: Any) -> Any:
        if armed(trigger):
            os.kill(os.getpid(), 9)
        return real(self, *args)

    return call


@pytest.mark.parametrize("base", ["multiproc"])
@pytest.mark.parametrize("where", ["between COMMIT and its number", "in the flush, holding lockf"])
def test_a_shard_killed_in_its_commit_window_loses_nothing_and_runs_nothing_twice(
    start_app: Any, where: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, app_database: str
) -> None:
    trigger = str(tmp_path / "kill")
    if where.startswith("between"):
        monkeypatch.setattr(
            _durability.Turns, "committed", killed_in(trigger, _durability.Turns.committed)
        )
    else:
        monkeypatch.setattr(
            _durability.WalSync, "__call__", killed_in(trigger, _durability.WalSync.__call__)
        )
    system = start_app(app())
    system.dispatch(CwOpen("warm-up"))
    pid = aggregate_nodes(system)["CwAccount-warm-up"]["pid"]
    with open(trigger, "w") as f:
        f.write(str(pid))

    answer = system.dispatch(CwOpen("b"), timeout=20)  # (by lane, named: the detour is safe)

    assert not os.path.exists(trigger)  # (the set-up: the shard died there)
    assert answer.version == 1
    assert [e.version for e in system.store.read_stream("CwAccount-b")] == [1]
    assert system.dispatch(CwEnsure("b")).version == 1
    committed, flushed = lock_counters(app_database)
    assert flushed >= committed, f"answered on commit {committed}, flushed through {flushed}"
    assert aggregate_nodes(system)["CwAccount-b"]["pid"] != pid


@pytest.mark.parametrize("base", ["multiproc"])
def test_a_late_lane_answer_never_reaches_the_next_call(start_app: Any) -> None:
    """A lane call gives up on a stalled command (its answer comes late); the thread's next
    commands, by lane again, each get their own answer, never the late one."""
    from .dispatch_domain import Add, Stall, make_app, stored

    system = start_app(make_app())
    system.dispatch(Add("s", 1))
    lanes = system._courier._lane_client()
    stalled = system.dispatch(Stall("s", 1.5), timeout=10)  # lane gives up after 1 s
    calls = lanes.calls
    answers = [system.dispatch(Add("s", amount)) for amount in (5, 7)]
    assert lanes.calls == calls + 2  # (both by lane)
    assert [a.version for a in answers] == [stalled.version + 1, stalled.version + 2]
    assert [a.events[0].data.amount for a in answers] == [5, 7]
    assert [e.version for e in stored(system, "Counter-s")] == [1, 2, 3, 4]
