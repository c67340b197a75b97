"""An interruption (Ctrl-C: a KeyboardInterrupt) between a SQLite transaction's BEGIN and its
COMMIT rolls it back: no transaction is left open on the store's connection, for later writes to
join and be answered as stored while nothing commits them (found by helper-45's review of the
write path)."""

from __future__ import annotations

from typing import Any

import pytest

from backstage_actors._shared import shared_store
from backstage_actors.store import EventStore

from .competing_writer_domain import CwrOpen, CwrOpened, app


class TxInterrupted(KeyboardInterrupt):
    """Stands for Ctrl-C reaching the thread at that point."""


def interrupt_once(owner: Any, name: str) -> None:
    """``owner.name()`` raises TxInterrupted the next time it is called, before it runs."""
    real = getattr(owner, name)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        setattr(owner, name, real)
        raise TxInterrupted

    setattr(owner, name, interrupted)


def stored(database: str, stream_id: str) -> list[int]:
    """The versions of ``stream_id`` another connection reads."""
    with EventStore(database) as store:
        return [event.version for event in store.read_stream(stream_id)]


@pytest.mark.parametrize("base", ["simple"])
def test_a_round_interrupted_before_its_commit_leaves_no_transaction_for_the_next(
    start_app: Any, app_database: str
) -> None:
    """Ctrl-C lands on the serving thread after the round's rows are written, before COMMIT:
    that round's command may or may not have run; the next one, acknowledged, is stored."""
    system = start_app(app())
    system.dispatch(CwrOpen("warm-up"))
    interrupt_once(shared_store(system.settings).recorder, "_commit")
    with pytest.raises(TxInterrupted):
        system.dispatch(CwrOpen("b"))
    answer = system.dispatch(CwrOpen("c"))
    assert [e.version for e in answer.events] == [1]
    assert stored(app_database, "CwrAccount-c") == [1], "acknowledged, and never committed"
    system.stop()
    assert stored(app_database, "CwrAccount-c") == [1], "acknowledged, and lost at the stop"


@pytest.mark.parametrize("shared", [True, False])
def test_a_transaction_interrupted_before_its_commit_is_rolled_back(
    tmp_path: Any, shared: bool
) -> None:
    database = str(tmp_path / "events.db")
    with EventStore(database, shared_flush=shared) as store:
        interrupt_once(store.recorder, "_commit")
        with pytest.raises(TxInterrupted), store.transaction():
            store.append("CwrAccount-a", [CwrOpened("a")], expected_version=0)
        store.append("CwrAccount-b", [CwrOpened("b")], expected_version=0)
        assert stored(database, "CwrAccount-a") == []
        assert stored(database, "CwrAccount-b") == [1], "appended, and never committed"
