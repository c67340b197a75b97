"""A ``Decimal`` field holds a finite number with the digits a PostgreSQL ``numeric`` holds (131,072
before the point, 16,383 after); anything else is refused where it comes in, naming every bad
field. Before, ``Decimal("1e999999999")`` went through: the aggregate's arithmetic raised
``decimal.Overflow`` (a crash, with a restart), ``int()`` of it holds a process for minutes, and
NaN reached ``execute`` and was refused only as an unclear error about the event."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import EventStore
from backstage_actors.command import command_from_data
from backstage_actors.errors import SerializationError
from backstage_actors.store._codec import encode_event

from .value_bounds_domain import VbCredit, VbCredited, make_app

HUGE = Decimal("1e999999999")


def test_a_decimal_no_column_holds_is_refused_at_dispatch_naming_every_field(
    start_app: Any,
) -> None:
    system = start_app(make_app())
    system.dispatch(VbCredit("t-1", Decimal("5.25")))
    with pytest.raises(SerializationError) as caught:
        system.dispatch(VbCredit("t-1", HUGE))
    assert caught.value.paths == ["$.amount"]
    assert "$.amount: the decimal 1E+999999999 has 1,000,000,000 digits before the point" in str(
        caught.value
    )
    with pytest.raises(SerializationError) as caught:
        system.dispatch(VbCredit("t-1", Decimal("NaN"), [Decimal(1), Decimal("-Infinity")]))
    assert caught.value.paths == ["$.amount", "$.tips[1]"]
    assert "$.tips[1]: the decimal -Infinity is not a finite number" in str(caught.value)
    with pytest.raises(SerializationError, match=r"\$\.amount: .* 999,999,999 digits after"):
        system.dispatch(VbCredit("t-1", Decimal("1e-999999999")))
    # Nothing crashed, nothing was stored: the aggregate goes on from 5.25.
    result = system.dispatch(VbCredit("t-1", Decimal("0.75")), consistency="strong")
    assert result.version == 2
    assert _restarts(system.tree()) == 0


def _restarts(node: dict[str, Any]) -> int:
    return int(node.get("restarts") or 0) + sum(_restarts(c) for c in node.get("children", []))


def test_json_from_the_command_line_is_held_to_the_same_bounds(start_app: Any) -> None:
    system = start_app(make_app())
    command = command_from_data(VbCredit, {"till_id": "t-2", "amount": "-1E+999999999"})
    with pytest.raises(SerializationError, match=r"\$\.amount: the decimal -1E\+999999999"):
        system.dispatch(command)


def test_the_bounds_are_a_postgres_numeric_s() -> None:
    widest = Decimal("9" * 131_072)
    finest = Decimal("0." + "0" * 16_382 + "1")
    for fits in (
        widest,
        Decimal("-" + "9" * 131_072),
        finest,
        Decimal("1E+131071"),
        Decimal("1E-16383"),
    ):
        encode_event(VbCredited("t", fits))
    for past in (widest * 10, Decimal("1E+131072"), finest / 10, Decimal("0E-16384")):
        with pytest.raises(SerializationError, match=r"\$\.amount: the decimal"):
            encode_event(VbCredited("t", past))


def test_an_event_holding_one_is_refused_with_its_field(tmp_path: Path) -> None:
    with EventStore(str(tmp_path / "e.db")) as store:
        # (an int given for a Decimal field is written as its text, as before)
        store.append("VbTill-t", [VbCredited("t", 10**30)])  # type: ignore[arg-type]
        assert store.last_position() == 1
        with pytest.raises(SerializationError) as caught:
            store.append("VbTill-t", [VbCredited("t", HUGE, [Decimal("sNaN")])])
        assert caught.value.paths == ["$.amount", "$.tips[0]"]
        assert store.last_position() == 1


def test_an_event_stored_before_the_bound_still_reads_back(tmp_path: Path) -> None:
    """Refused on the way in only: a stream holding one stays readable."""
    with EventStore(str(tmp_path / "old.db")) as store:
        [event] = store.append("VbTill-t", [VbCredited("t", Decimal(1))])
        store.recorder.conn.execute(  # type: ignore[attr-defined]
            "UPDATE events SET data = ? WHERE position = ?",
            ('{"till_id": "t", "amount": "1E+999999999", "tips": []}', event.position),
        )
        store.recorder.conn.commit()  # type: ignore[attr-defined]
        [read] = store.read_stream("VbTill-t")
        assert read.data == VbCredited("t", HUGE)
