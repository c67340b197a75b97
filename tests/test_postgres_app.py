"""Applications on PostgreSQL (the session's private server): the bank's aggregates, projection,
handler and process manager; a read model kept in a local SQLite file; a server restarted under
load; the faults a server brings (bad credentials, no server, lock timeouts); the CLI."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backstage_actors import Application, EventStore, _subscriber
from backstage_actors.errors import StorageError
from backstage_actors.store.postgres import PostgresRecorder
from examples.bank import make_app as make_bank
from examples.bank import router as bank_router
from examples.bank.domain import CloseAccount, Deposit, MoneyDeposited, OpenAccount
from examples.bank.read_models import Balances
from examples.bank.transfers import TransferMoney

from .pg_fixture import PrivateServer
from .test_cli import Backstage, shut_down

STORES = ["postgres"]
Start = Any


def rows(system: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return list(system.store.handle.query(sql, params))


def test_bank_on_postgres_projects_and_runs_sagas_exactly_once(start_app: Start) -> None:
    bank = make_bank()
    system = start_app(bank)
    assert system.store.kind == "postgres"
    for account in ("ada", "bob", "cyd"):
        system.dispatch(OpenAccount(account, account.title()))
    system.dispatch(Deposit("ada", 100))
    system.dispatch(CloseAccount("cyd"))
    system.dispatch(TransferMoney("t-1", "ada", "bob", 30))
    system.dispatch(TransferMoney("t-2", "ada", "cyd", 20))
    last = system.settle()

    assert rows(system, "SELECT account_id, balance, status FROM balances ORDER BY 1") == [
        ("ada", 70, "open"),
        ("bob", 30, "open"),
        ("cyd", 0, "closed"),
    ]
    assert rows(system, "SELECT count(*) FROM process_managers") == [(0,)]
    notes = [text for (text,) in rows(system, "SELECT text FROM notifications ORDER BY text")]
    assert "0.20 refunded to ada (transfer t-2)" in notes and len(notes) == 5
    for name in ("balances", "notifier", "transfers"):
        assert system.store.checkpoint(name) == last
    system.stop()

    # The saga's checkpoint lost: it sees every event again, dispatches every command again with
    # the same ids, and the aggregates answer without storing anything new.
    with EventStore(system.settings.database) as store:
        store.delete_checkpoint("transfers")
    again = start_app(bank)
    assert again.settle() == last
    assert again.store.checkpoint("transfers") == last


class LocalBalances(Balances):
    """The bank's balances in a local SQLite file, while the events come from PostgreSQL."""

    name = "local-balances"


def test_a_projection_keeps_its_tables_and_checkpoint_in_a_local_sqlite_file(
    start_app: Start, tmp_path: Path, base: str
) -> None:
    if base != "simple":
        pytest.skip("the class attribute set here reaches actors in this process only")
    LocalBalances.database = str(tmp_path / "read-model.db")
    try:
        system = start_app(Application("bank", router=bank_router, projections=[LocalBalances]))
        system.dispatch(OpenAccount("ada", "Ada"))
        system.dispatch(Deposit("ada", 42))
        last = system.settle()
    finally:
        LocalBalances.database = None

    with contextlib.closing(sqlite3.connect(tmp_path / "read-model.db")) as local:
        assert local.execute("SELECT account_id, balance FROM balances").fetchall() == [("ada", 42)]
        assert local.execute("SELECT position FROM checkpoints").fetchall() == [(last,)]
    assert system.store.checkpoint("local-balances") == 0  # not in PostgreSQL


def test_a_server_restart_under_load_loses_nothing_acknowledged(
    start_app: Start, pg_server: PrivateServer
) -> None:
    system = start_app(Application("bank", router=bank_router))
    system.dispatch(OpenAccount("ada", "Ada"))
    acknowledged: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def deposit() -> None:
        amount = 1
        while not stop.is_set():
            try:
                system.dispatch(Deposit("ada", amount), timeout=30)
            except Exception as exc:  # an outcome the caller cannot know: may or may not be stored
                failures.append(exc)
            else:
                acknowledged.append(amount)
            amount += 1

    worker = threading.Thread(target=deposit)
    worker.start()
    try:
        time.sleep(0.5)  # load before the restart (not a synchronisation)
        pg_server.restart()
        done = len(acknowledged)
        deadline = time.monotonic() + 30
        while len(acknowledged) < done + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=60)

    assert len(acknowledged) >= done + 20, (len(acknowledged), failures[:3])
    # Connections lost to the restart were replaced and the appends retried: no caller saw it.
    assert failures == []
    stored = [e.data.amount for e in system.store.read_stream("Account-ada") if e.version > 1]
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))  # nothing stored twice


def test_wrong_password_names_host_and_user_never_the_password(
    pg_server: PrivateServer,
) -> None:
    secret = "not-the-password-4242"
    with pytest.raises(StorageError) as caught:
        EventStore(pg_server.dsn(password=secret))
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "'postgres'" in message and str(pg_server.dir) in message
    assert secret not in message and pg_server.password not in message


def test_no_server_at_start_is_one_clear_error_at_once(tmp_path: Path) -> None:
    url = f"postgresql://someone:pw-9911@/db?host={tmp_path}&port=1"
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot connect to PostgreSQL as 'someone'"):
        EventStore(url)
    assert time.monotonic() - started < 5


def test_cli_start_without_a_server_exits_5_without_the_password(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    result = backstage.run(
        "start", "examples.bank:app", "--db", f"postgresql://u:pw-7788@/db?host={tmp_path}&port=1"
    )
    assert result.returncode == 5, result.stderr
    assert "cannot connect to PostgreSQL as 'u'" in result.stderr
    assert "pw-7788" not in result.stderr + result.stdout


def test_a_lock_timeout_is_a_storage_error_with_its_cause(pg_dsn: str) -> None:
    store = EventStore(pg_dsn, busy_timeout=0.2)
    store.append("s", [Deposit("a", 1)])
    with psycopg.connect(pg_dsn) as other:
        other.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StorageError, match="lock_timeout") as caught:
            store.append("s", [Deposit("a", 2)])
        assert isinstance(caught.value.__cause__, psycopg.errors.LockNotAvailable)
    assert [e.data.amount for e in store.read_stream("s")] == [1]
    store.close()


def test_every_cli_verb_on_a_postgres_daemon(pg_dsn: str, tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    try:
        started = backstage.run("start", "examples.bank:app", "--db", pg_dsn)
        assert started.returncode == 0, started.stderr
        sent = backstage.send("OpenAccount", {"account_id": "pat", "owner": "Pat"}, "--strong")
        position = sent["events"][0]["position"]
        backstage.send("Deposit", {"account_id": "pat", "amount": 5}, "--strong")

        report = backstage.json("status")
        assert report["last_position"] == position + 1 and report["dead_letters"] == 0
        events = backstage.json("events", "Account-pat")
        assert [e["type"] for e in events] == ["AccountOpened", "MoneyDeposited"]
        assert backstage.json("dead-letters") == []
        rebuilt = backstage.run("rebuild", "balances")
        assert rebuilt.returncode == 0, rebuilt.stderr
        tree = backstage.run("tree")
        assert tree.returncode == 0 and "balances [projection] running" in tree.stdout
        with EventStore(pg_dsn) as store:
            assert store.handle.query("SELECT balance FROM balances") == [(5,)]
        stopped = backstage.run("stop")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        shut_down(backstage)


def test_a_store_reconnects_after_a_server_restart_and_repeats_only_safe_appends(
    pg_dsn: str, pg_server: PrivateServer
) -> None:
    store = EventStore(pg_dsn)
    store.append("s", [Deposit("a", 1)], event_ids=["e-1"])
    pg_server.restart()  # every pooled connection is now broken

    recorded = store.append("s", [Deposit("a", 2)], expected_version=1, event_ids=["e-2"])
    assert recorded[0].version == 2
    assert store.last_position() == recorded[0].position
    # Appending again after an uncertain outcome returns what the first attempt stored.
    again = store.append("s", [Deposit("a", 2)], expected_version=1, event_ids=["e-2"])
    assert again == recorded
    assert [e.data.amount for e in store.read_stream("s")] == [1, 2]
    store.close()


def test_events_appended_by_another_host_wake_the_subscribers_at_once(
    start_app: Start, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOTIFY, not the subscribers' poll (made a minute long here): a projection follows an
    append made outside the application (as another host would) at once, on both bases (on the
    simple base nothing calls into the system meanwhile: only the waker thread can wake it)."""
    monkeypatch.setattr(_subscriber, "POLL_INTERVAL", 60.0)  # (multiproc forks it too)
    system = start_app(Application("bank", router=bank_router, projections=[Balances]))
    system.dispatch(OpenAccount("ada", "Ada"))
    system.settle()
    delays = []
    with EventStore(system.settings.database) as outsider:
        for n in range(1, 8):
            version = outsider.stream_version("Account-ada")
            [event] = outsider.append(
                "Account-ada", [MoneyDeposited("ada", n, n)], expected_version=version
            )
            appended = time.monotonic()
            while outsider.checkpoint("balances") < event.position:
                assert time.monotonic() - appended < 5, "the projection never caught up"
                time.sleep(0.001)
            delays.append(time.monotonic() - appended)
    # At once: the median well under a second, where the poll would take a minute.
    assert sorted(delays)[3] < 1.0, delays
    if base == "simple":
        waker = system.waker
        system.stop()
        assert not waker.thread.is_alive() and waker.listener is None


def test_threads_sharing_a_store_commit_together_and_each_keeps_its_outcome(pg_dsn: str) -> None:
    store = EventStore(pg_dsn)
    store.append("shared", [Deposit("x", 0)])
    outcomes: dict[int, list[Any]] = {}

    def caller(index: int) -> None:
        mine = outcomes.setdefault(index, [])
        for version in range(20):
            try:
                mine.append(store.append(f"t{index}", [Deposit("x", version)], version))
            except Exception as exc:
                mine.append(exc)
        # One append meant to fail (the stream is at version 1): it fails alone.
        try:
            store.append("shared", [Deposit("x", index)], expected_version=0)
        except Exception as exc:
            mine.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for mine in outcomes.values():
        assert [e[0].version for e in mine[:20]] == list(range(1, 21)), mine
        assert "expected version 0" in str(mine[20])
    positions = [e.position for e in store.read_all()]
    assert positions == sorted(positions) and len(positions) == 1 + 8 * 20
    # Fewer transactions than appends: appends that waited went in together, and the events
    # of one transaction share its timestamp.
    stamps = {e.recorded_at for e in store.read_all() if e.stream_id != "shared"}
    store.close()
    assert len(stamps) < 8 * 20, len(stamps)


def test_an_application_takes_a_store_object(pg_dsn: str) -> None:
    with EventStore(pg_dsn) as store:
        app = Application("bank", router=bank_router, database=store)
        assert app.database == pg_dsn  # each actor process opens its own connection
        with app.start(base="simple") as system:
            system.dispatch(OpenAccount("ada", "Ada"))
        assert store.stream_version("Account-ada") == 1


def test_a_statement_timeout_is_a_storage_error_with_its_cause(pg_dsn: str) -> None:
    store = EventStore(recorder=PostgresRecorder(pg_dsn, lock_timeout=30, statement_timeout=0.2))
    with psycopg.connect(pg_dsn) as other:
        other.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # even readers wait
        started = time.monotonic()
        with pytest.raises(StorageError, match="statement_timeout") as caught:
            store.last_position()
        assert time.monotonic() - started < 5
        assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)
    assert store.last_position() == 0  # and the store serves on
    store.close()
