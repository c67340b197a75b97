"""The PostgreSQL store under faults and odd input (found by helper-29's review; each test
failed before its fix): connections killed while idle or at a commit whose outcome is lost,
waits for events, truncation beside a writer, text PostgreSQL cannot hold, a copy's positions,
a cancelled statement, and opening a store while a writer holds its lock."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import attrs
import psycopg
import pytest

from backstage_actors import Application, EventHandler, EventStore, Metadata
from backstage_actors._copy import copy_store
from backstage_actors.errors import BackstageError, StorageError, WrongExpectedVersion
from backstage_actors.store.postgres import PostgresRecorder
from backstage_actors.store.records import AppendRequest
from examples.bank import router as bank_router

from .conftest import wait_until
from .pg_fixture import PrivateServer

STORES = ["postgres"]  # (start_app's database: a schema of pg_dsn's)


@attrs.frozen
class RvhzDeposited:
    n: int


def _terminate_others(dsn: str) -> int:
    """pg_terminate_backend every other client connection of the server (a private one),
    waiting until each is gone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchall()
    return len(rows)


def test_an_unstorable_event_id_fails_its_append_alone_on_postgres(pg_dsn: str) -> None:
    """An event id PostgreSQL cannot hold (NUL, a lone surrogate) fails that append alone, with
    a Backstage error naming it, as on SQLite; the appends beside it in the group are stored."""
    store = EventStore(pg_dsn)
    try:
        results: list[Any] = store.append_batches(
            [
                AppendRequest("rv-good", [RvhzDeposited(1)]),
                AppendRequest("rv-nul", [RvhzDeposited(2)], event_ids=["a\x00b"]),
                AppendRequest("rv-sur", [RvhzDeposited(3)], event_ids=["\ud800"]),
            ]
        )
        assert [e.version for e in results[0]] == [1], results
        for bad in results[1:]:
            assert isinstance(bad, BackstageError), results
            assert "event id" in str(bad), bad
        assert store.stream_version("rv-nul") == 0 and store.stream_version("rv-sur") == 0
        assert store.append("rv-good", [RvhzDeposited(4)], expected_version=1)[0].version == 2
    finally:
        store.close()


def test_an_append_after_an_idle_connection_was_killed_is_retried_not_uncertain(
    pg_dsn: str, pg_server: PrivateServer
) -> None:
    """The group commit's connection killed while idle (pg_terminate_backend, or a server
    restart between two appends): nothing of the next append reached a server, so the append
    is made on a new connection, not failed as "may or may not have happened"."""
    store = EventStore(pg_dsn)
    try:
        store.append("rv-idle", [RvhzDeposited(1)])
        assert _terminate_others(pg_dsn) >= 1
        recorded = store.append("rv-idle", [RvhzDeposited(2)], expected_version=1)
        assert recorded[0].version == 2
        pg_server.restart()
        recorded = store.append("rv-idle", [RvhzDeposited(3)], expected_version=2)
        assert recorded[0].version == 3
        assert [e.data.n for e in store.read_stream("rv-idle")] == [1, 2, 3]
    finally:
        store.close()


def test_a_transaction_or_read_snapshot_after_the_connections_were_killed_is_made_anew(
    pg_dsn: str, pg_server: PrivateServer
) -> None:
    """The pool's connections killed while idle (pg_terminate_backend, a server restart):
    ``store.snapshot()`` (a read), ``store.transaction()`` and ``truncate_stream`` begin on a
    new connection (nothing was done yet), instead of failing once per dead connection."""
    store = EventStore(pg_dsn)
    try:
        store.append("rv-tx", [RvhzDeposited(1), RvhzDeposited(2)], expected_version=0)
        for round_ in range(2):
            assert store.last_position() == 2  # (a pooled connection, idle from now on)
            if round_ == 0:
                assert _terminate_others(pg_dsn) >= 1
            else:
                pg_server.restart()
            with store.snapshot():
                assert store.last_position() == 2
            if round_ == 0:
                _terminate_others(pg_dsn)
            else:
                pg_server.restart()
            with store.transaction():
                store.save_checkpoint("rv-tx", round_ + 1)
            assert store.checkpoint("rv-tx") == round_ + 1
            _terminate_others(pg_dsn)
            assert store.truncate_stream("rv-tx", 2) == (1 if round_ == 0 else 0)
        assert store.stream_version("rv-tx") == 2
    finally:
        store.close()


def test_wait_for_events_waits_out_its_timeout_past_notices_of_earlier_commits(
    pg_dsn: str,
) -> None:
    """``wait_for_events(last, timeout)`` with nothing new: False after ``timeout`` seconds,
    not at once because notices of commits made before the call were still queued."""
    store = EventStore(pg_dsn)
    try:
        assert not store.wait_for_events(0, 0.05)  # (listening from now on)
        for n in range(3):
            store.append("rv-wait", [RvhzDeposited(n)])
        last = store.last_position()
        started = time.monotonic()
        assert not store.wait_for_events(last, 1.0)
        assert time.monotonic() - started >= 0.9
        assert store.wait_for_events(last - 1, 1.0)
    finally:
        store.close()


def test_truncating_while_another_store_appends_keeps_the_stream_version(pg_dsn: str) -> None:
    """``truncate_stream`` and an append by another store at the same time: the stream's version
    stays where the append left it ("its version stays"), as on SQLite, so an append that
    expects the old version is refused. (The other store's append is made, for real, right
    after the truncation read the stream's version: the one window that matters.)"""
    store, other = EventStore(pg_dsn), EventStore(pg_dsn)
    try:
        store.append("rv-tr", [RvhzDeposited(1), RvhzDeposited(2)], expected_version=0)
        recorder = store.recorder
        read_version = recorder.stream_version
        outcome: list[Any] = []

        def append_elsewhere() -> None:
            try:
                outcome.append(other.append("rv-tr", [RvhzDeposited(3)], expected_version=2))
            except Exception as exc:
                outcome.append(exc)

        def blocked() -> bool:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'events'::regclass"
                ).fetchone()
            return bool(row and row[0])

        appender = threading.Thread(target=append_elsewhere)

        def version_then_append(stream_id: str) -> int:
            version = read_version(stream_id)
            if not appender.is_alive() and not outcome:
                appender.start()
                wait_until(lambda: outcome or blocked(), 30, what="the other append")
            return version

        recorder.stream_version = version_then_append  # type: ignore[method-assign]
        try:
            store.truncate_stream("rv-tr", 100)
        finally:
            del recorder.stream_version
            appender.join(timeout=60)
        [recorded] = outcome[0]
        assert recorded.version == 3
        assert store.stream_version("rv-tr") == 3
        with pytest.raises(WrongExpectedVersion):
            store.append("rv-tr", [RvhzDeposited(4)], expected_version=2)
    finally:
        store.close()
        other.close()


class RvhzFussy(EventHandler):
    """Gives up at once on an event whose ``n`` is 1 or 2, with an error message holding a NUL
    or a lone surrogate (a message quoting outside input, say)."""

    name = "rvhz-fussy"
    max_failures = 1
    messages = {1: "bad input 'a\x00b'", 2: "bad input '\udcff'"}

    def handle(self, event: Any, metadata: Metadata) -> None:
        if isinstance(event, RvhzDeposited) and event.n in self.messages:
            raise ValueError(self.messages[event.n])


def test_a_handler_error_message_postgres_cannot_hold_is_parked_not_stuck(
    start_app: Any, base: str, pg_dsn: str
) -> None:
    """A subscriber's error whose text holds a NUL or a lone surrogate is parked (its text
    made storable) and the subscriber goes on, as on SQLite; it did not stay stuck on the
    event for good, failing to record the dead letter."""
    system = start_app(Application("rvhz", router=bank_router, handlers=[RvhzFussy]))
    with EventStore(pg_dsn) as outsider:
        [*_, last] = outsider.append("rv-fussy", [RvhzDeposited(n) for n in (1, 2, 3)])
        wait_until(lambda: outsider.checkpoint("rvhz-fussy") == last.position, 30)
        letters = outsider.dead_letters("rvhz-fussy")
        assert [letter.version for letter in letters] == [1, 2]
        assert "bad input 'a" in letters[0].error and "bad input '" in letters[1].error
    system.stop()


def test_a_rejection_whose_text_postgres_cannot_hold_is_recorded(pg_dsn: str) -> None:
    """A refusal whose message holds a NUL (or a lone surrogate) is recorded with that text
    made storable, as a dead letter's is; the record was lost (PostgreSQL's text refuses it)."""
    with EventStore(pg_dsn) as store:
        meta = {"command_id": "rv-nul", "command": "RvhzCmd"}
        store.record_rejection("rv-nul", meta, ValueError("no\x00 \ud800 way"))
        [rejection] = store.recorder.rejections("command_id", "rv-nul")
        assert rejection.error == "no\\x00 \\ud800 way"


def _set_and_reload(pg_server: PrivateServer, name: str, value: str | None) -> None:
    """ALTER SYSTEM SET (or RESET, for None) ``name``, reloaded, and in force for new sessions."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        if value is None:
            conn.execute(f"ALTER SYSTEM RESET {name}")
        else:
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")

    def in_force() -> bool:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            row = conn.execute(f"SHOW {name}").fetchone()
        return bool(row) and row[0] == (value or "")

    wait_until(in_force, 30, what=f"{name} reloaded")


def test_a_rejection_whose_commit_outcome_was_lost_is_recorded_once(
    pg_dsn: str, pg_server: PrivateServer
) -> None:
    """The connection recording a rejection dies after the server committed it (killed while
    its commit waits for a synchronous standby: committed locally, the client hears only that
    the connection is gone). Retried on a new connection, the rejection must not be stored a
    second time (``backstage trace`` would show the command refused twice)."""
    store = EventStore(pg_dsn)
    outcome: list[BaseException | None] = []

    def record() -> None:
        try:
            store.record_rejection(
                "rv-rej", {"command_id": "rv-cmd-1", "command": "RvhzCmd"}, ValueError("no")
            )
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    recorder = threading.Thread(target=record)
    try:
        _set_and_reload(pg_server, "synchronous_standby_names", "rvhz_nobody")
        recorder.start()

        def waiting() -> list[Any]:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                return conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                    " AND query LIKE 'INSERT INTO rejections%%'"
                ).fetchall()

        [(pid,)] = wait_until(waiting, 30, what="the rejection's commit waiting")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    finally:
        _set_and_reload(pg_server, "synchronous_standby_names", None)
        if recorder.is_alive() or outcome:
            recorder.join(timeout=60)
    try:
        assert outcome and outcome[0] is None, outcome
        assert len(store.recorder.rejections("command_id", "rv-cmd-1")) == 1
    finally:
        store.close()


def test_a_copy_to_postgres_never_hands_out_a_position_a_checkpoint_has_passed(
    pg_dsn: str, tmp_path: Any
) -> None:
    """A SQLite store whose newest events were truncated, with a subscriber's checkpoint (and
    a dead letter) at them, copied to PostgreSQL: the next event appended there must come after
    that checkpoint (as it would on the source), or the subscriber never sees it."""
    source = str(tmp_path / "source.db")
    with EventStore(source) as src:
        src.append("rv-keep", [RvhzDeposited(n) for n in (1, 2, 3)])
        [*_, last] = src.append("rv-gone", [RvhzDeposited(4), RvhzDeposited(5)])
        src.save_checkpoint("rvhz-proj", last.position)
        src.park("rvhz-proj", last, "ValueError", "no", "", 3)
        assert src.truncate_stream("rv-gone", 3) == 2
    copy_store(source, pg_dsn)
    with EventStore(pg_dsn) as dst:
        assert dst.checkpoint("rvhz-proj") == last.position
        [new] = dst.append("rv-new", [RvhzDeposited(6)])
        assert new.position > last.position
        # (what a subscriber at its checkpoint reads next)
        assert [row[0] for row in dst.read_page(last.position + 1, 10)] == [new.position]


def _blocked_in_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked inside the recorder's wait (on the listening connection or
    behind another waiter), past its first look at the last position."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    in_wait = any(n == "wait" and f.endswith("postgres.py") for n, f in names)
    blocked = any(n == "notifies" or (n == "wait" and f.endswith("threading.py")) for n, f in names)
    return in_wait and blocked


def test_every_thread_waiting_for_events_on_one_store_wakes_on_a_commit(pg_dsn: str) -> None:
    """Threads of one process waiting with ``wait_for_events`` on a shared store (a web
    server's long polls, say) all return at the next commit, not only the one that read the
    NOTIFY (the others slept out their whole timeout)."""
    store, writer = EventStore(pg_dsn), EventStore(pg_dsn)
    try:
        assert not store.wait_for_events(0, 0.05)  # (listening from now on)
        returned: dict[int, tuple[bool, float]] = {}

        def waiter(index: int) -> None:
            returned[index] = (store.wait_for_events(0, 20.0), time.monotonic())

        threads = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(_blocked_in_wait(t) for t in threads), 30, what="all waiting")
        writer.append("rv-woken", [RvhzDeposited(1)])
        appended = time.monotonic()
        for thread in threads:
            thread.join(timeout=30)
        assert all(ok for ok, _ in returned.values()) and len(returned) == 3, returned
        assert max(at for _, at in returned.values()) - appended < 5.0, returned
    finally:
        store.close()
        writer.close()


def test_an_append_cancelled_by_an_administrator_is_not_blamed_on_statement_timeout(
    pg_dsn: str,
) -> None:
    """An append cancelled with pg_cancel_backend (an administrator, or a pooler) fails with an
    error that says so, not "a statement ran past statement_timeout" (a setting the user would
    then raise for nothing); nothing is stored and the store serves on."""
    store = EventStore(recorder=PostgresRecorder(pg_dsn, lock_timeout=60, statement_timeout=60))
    outcome: list[BaseException | None] = []

    def append() -> None:
        try:
            store.append("rv-cancel", [RvhzDeposited(1)])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    appender = threading.Thread(target=append)
    try:
        with psycopg.connect(pg_dsn) as other:
            other.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")

            def waiting() -> list[Any]:
                with psycopg.connect(pg_dsn, autocommit=True) as conn:
                    return conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchall()

            appender.start()
            [(pid,)] = wait_until(waiting, 30, what="the append waiting for the lock")
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
            appender.join(timeout=30)
        [error] = outcome
        assert isinstance(error, StorageError), outcome
        assert "statement_timeout" not in str(error), error
        assert "cancel" in str(error), error
        assert store.stream_version("rv-cancel") == 0
        assert store.append("rv-cancel", [RvhzDeposited(2)])[0].version == 1
    finally:
        appender.join(timeout=30)
        store.close()


def test_opening_a_store_does_not_wait_for_a_writer_transaction(pg_dsn: str) -> None:
    """A store opened (a new actor process, a CLI read) while another connection's append
    transaction holds the events lock opens at once: it wanted a lock only to create indexes
    that exist (and waited with no lock_timeout for as long as that transaction lasted)."""
    EventStore(pg_dsn).close()  # (the tables and indexes exist)
    opened: list[Any] = []

    def open_store() -> None:
        try:
            with EventStore(pg_dsn, busy_timeout=1) as store:
                opened.append(store.last_position())
        except Exception as exc:
            opened.append(exc)

    with psycopg.connect(pg_dsn) as writer:
        writer.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # (what every append takes)
        opener = threading.Thread(target=open_store, daemon=True)
        opener.start()
        wait_until(lambda: opened, 15, what="the store opened")
        writer.rollback()
    opener.join(timeout=30)
    assert opened == [0], opened
