"""``backstage trace`` over rows that cannot be read (text that is not UTF-8, written into a SQLite
store by another program): each such row is left out of the tree with a warning naming it, as
``backstage events`` does, never shown with its text escaped as if it had been read, and never a
traceback. ``history.trace`` without ``on_unreadable`` raises the row's error."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from backstage_actors import history
from backstage_actors.errors import StoredEventError
from backstage_actors.store import EventStore

from .not_utf8_domain import Nu8Jotted

BACKSTAGE = str(Path(sys.executable).with_name("backstage"))


def _request(db: Path) -> None:
    """Request ``nu8-req``: four commands on pad a, one event each (positions 1-4), and a refused
    command on pad r."""
    with EventStore(str(db)) as store:
        for n in range(1, 5):
            store.append(
                "Nu8Pad-a",
                [Nu8Jotted("a", f"t{n}")],
                metadata={"command_id": f"nu8-c{n}", "correlation_id": "nu8-req", "user": "ada"},
            )
        store.record_rejection(
            "Nu8Pad-r", {"command_id": "nu8-c9", "correlation_id": "nu8-req"}, ValueError("no")
        )


def _sql(db: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(statement)


def _trace(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BACKSTAGE, "trace", "nu8-req", "--db", str(db), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _positions(node: dict) -> list[int]:  # type: ignore[type-arg]
    own = [node["position"]] if node["kind"] == "event" else []
    return own + [p for child in node["children"] for p in _positions(child)]


@pytest.mark.parametrize(
    ("column", "text", "what"),
    [
        ("type", "4e7538ff", "its type is not UTF-8 (b'Nu8\\xff')"),
        ("data", "7bff7d", "its data is not UTF-8 (b'{\\xff}')"),
        # (escaped, this metadata was no JSON: the trace failed with a traceback)
        ("metadata", "7b22636f6d6d616e645f6964223a20226e75382d6332222c202278223a2022ff227d", ""),
    ],
)
def test_trace_leaves_out_an_event_it_cannot_read_naming_it(
    tmp_path: Path, column: str, text: str, what: str
) -> None:
    db = tmp_path / "bad.db"
    _request(db)
    _sql(db, f"UPDATE events SET {column} = CAST(x'{text}' AS TEXT) WHERE position = 2")
    if column == "metadata":  # (the index finds the row by its correlation id all the same)
        _sql(db, "UPDATE events SET metadata = json_set(metadata, '$.correlation_id', 'nu8-req')")
    done = _trace(db)
    assert done.returncode == 0, done.stderr
    [warning] = done.stderr.splitlines()
    assert warning.startswith(
        "warning: skipped the event at position 2: events (position 2, stream_id 'Nu8Pad-a',"
        f" version 2): its {column} is not UTF-8 (b'"
    ), warning
    assert what in warning
    assert "\\x" not in done.stdout and "#2" not in done.stdout
    assert done.stdout.splitlines()[0] == "request nu8-req: 4 commands, 3 events, 1 refusals"

    done = _trace(db, "--json")
    assert done.returncode == 0 and done.stderr.count("\n") == 1, done.stderr
    tree = json.loads(done.stdout)
    assert [p for root in tree["roots"] for p in _positions(root)] == [1, 3, 4]

    with EventStore(str(db)) as store, pytest.raises(StoredEventError) as caught:
        history.trace(store, "nu8-req")
    assert caught.value.position == 2


def test_trace_names_a_refusal_it_cannot_read_and_shows_the_events(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    _request(db)
    _sql(db, "UPDATE rejections SET error = CAST(x'6e6fff' AS TEXT)")
    for ident in ("nu8-req", "nu8-c9"):  # (the refused command's id finds no request then)
        done = subprocess.run(
            [BACKSTAGE, "trace", ident, "--db", str(db)], capture_output=True, text=True, timeout=60
        )
        warning = (
            "warning: skipped the request's refusals: rejections (id 1, command_id 'nu8-c9',"
            " stream_id 'Nu8Pad-r'): its error is not UTF-8 (b'no\\xff')"
        )
        if ident == "nu8-req":
            assert done.returncode == 0, done.stderr
            assert done.stderr.splitlines() == [warning]
            assert (
                done.stdout.splitlines()[0] == "request nu8-req: 4 commands, 4 events, 0 refusals"
            )
        else:
            assert done.returncode == 2
            assert done.stderr.splitlines() == [
                warning,
                "error: no event, command or request has the id 'nu8-c9'",
            ]
