"""The converter: whatever a message holds comes back exactly, and wrong data is refused by path.

Round trips go all the way through JSON text, as stored: ``structure(loads(dumps(unstructure(x))))``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstage_actors._serialization import dumps, restore_attributes, structure, unstructure
from backstage_actors.errors import SerializationError
from backstage_actors.limits import problems
from backstage_actors.store._codec import decode_event, encode_event

# -- message classes -------------------------------------------------------------------------


class SerColor(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class SerPriority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class SerSize(enum.StrEnum):
    SMALL = "s"
    LARGE = "l"


@attrs.frozen
class SerLine:
    sku: str
    qty: int
    price: Decimal


@attrs.frozen
class SerOrder:
    amount: int
    name: str
    ratio: float
    paid: bool
    total: Decimal
    order_id: uuid.UUID
    placed_at: datetime
    due: datetime
    color: SerColor
    priority: SerPriority
    size: SerSize
    lines: list[SerLine]
    note: str | None
    gift: SerLine | None
    tags: list[str]
    scores: list[float | None]


@dataclasses.dataclass(frozen=True)
class SerShipment:
    order: SerOrder
    carrier: str
    parcels: list[uuid.UUID]
    delivered_at: datetime | None = None
    weight: Decimal | None = None


@attrs.frozen
class SerPlain:
    """Only JSON scalars: the store reads these back through its ``cls(**data)`` fast path."""

    count: int
    label: str
    share: float
    on: bool
    maybe: int | None


@attrs.frozen
class SerHolder:
    amount: int
    lines: list[SerLine]
    note: str | None = None


@attrs.frozen
class SerTagged:
    tags: list[str]


# -- strategies ------------------------------------------------------------------------------

# Text with non-ASCII letters, accents, CJK, emoji and controls (hypothesis never makes surrogates).
texts = st.text(st.one_of(st.characters(), st.sampled_from('éüßø寿司€🙂\u0000\n"\\')), max_size=20)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
decimals = st.decimals(allow_nan=False, allow_infinity=False)
offsets = st.one_of(
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)
naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=offsets)
lines = st.builds(SerLine, sku=texts, qty=st.integers(), price=decimals)
orders = st.builds(
    SerOrder,
    amount=st.integers(),
    name=texts,
    ratio=finite_floats,
    paid=st.booleans(),
    total=decimals,
    order_id=st.uuids(),
    placed_at=aware_datetimes,
    due=naive_datetimes,
    color=st.sampled_from(SerColor),
    priority=st.sampled_from(SerPriority),
    size=st.sampled_from(SerSize),
    lines=st.lists(lines, max_size=4),
    note=st.none() | texts,
    gift=st.none() | lines,
    tags=st.lists(texts, max_size=4),
    scores=st.lists(st.none() | finite_floats, max_size=4),
)
shipments = st.builds(
    SerShipment,
    order=orders,
    carrier=texts,
    parcels=st.lists(st.uuids(), max_size=3),
    delivered_at=st.none() | aware_datetimes | naive_datetimes,
    weight=st.none() | decimals,
)
plains = st.builds(
    SerPlain,
    count=st.integers(),
    label=texts,
    share=finite_floats,
    on=st.booleans(),
    maybe=st.none() | st.integers(),
)


def through_json(value: Any) -> Any:
    """``value`` unstructured and serialized as the store does, then parsed back."""
    return json.loads(dumps(unstructure(value)))


def exact(value: Any) -> Any:
    """A form where == means identical: Decimal exponents and datetime offsets included."""
    if isinstance(value, Decimal):
        return ("decimal", value.as_tuple())
    if isinstance(value, datetime):
        return ("datetime", value.isoformat())
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.value)
    if attrs.has(type(value)) or dataclasses.is_dataclass(value):
        names = [
            f.name
            for f in (
                attrs.fields(type(value)) if attrs.has(type(value)) else dataclasses.fields(value)
            )
        ]
        return (type(value).__name__, {name: exact(getattr(value, name)) for name in names})
    if isinstance(value, list):
        return [exact(item) for item in value]
    return value


def is_json_data(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_json_data(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


# -- round trips -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(orders)
def test_attrs_round_trip(order: SerOrder) -> None:
    data = unstructure(order)

    assert is_json_data(data)
    back = structure(through_json(order), SerOrder)
    assert back == order
    assert exact(back) == exact(order)


@settings(max_examples=60, deadline=None)
@given(shipments)
def test_dataclass_round_trip_with_nested_attrs(shipment: SerShipment) -> None:
    back = structure(through_json(shipment), SerShipment)

    assert back == shipment
    assert exact(back) == exact(shipment)


@settings(max_examples=100, deadline=None)
@given(plains | orders)
def test_store_codec_round_trip(event: SerPlain | SerOrder) -> None:
    """What the store writes it reads back, on the fast path (plain fields) and the checked one;
    what no database stores (a NUL, a lone surrogate, a 65-bit integer) is refused by name."""
    try:
        encoded = encode_event(event)
    except SerializationError as exc:
        assert problems(unstructure(event)), exc
        assert exc.path.startswith("$")
        return

    decoded = decode_event(encoded.type, encoded.schema_version, encoded.topic, encoded.data, 1)

    assert type(decoded) is type(event)
    assert exact(decoded) == exact(event)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.integers().map(str),  # "5": the lenient default would take it
        texts,
        finite_floats,  # 5.0 and 5.7 alike
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_int_field_accepts_nothing_but_integers(value: Any) -> None:
    """Lenient coercion (``int("5")``, ``int(5.7)``, ``True``) would corrupt money silently."""
    with pytest.raises(SerializationError) as caught:
        structure({"amount": value, "lines": []}, SerHolder)

    assert caught.value.path == "$.amount"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"count": True}, "$.count"),
        ({"count": 1.0}, "$.count"),
        ({"label": 5}, "$.label"),
        ({"share": "0.5"}, "$.share"),
        ({"on": 1}, "$.on"),
        ({"maybe": "3"}, "$.maybe"),
    ],
)
def test_writing_an_event_of_json_scalars_checks_every_field(
    fields: dict[str, Any], path: str
) -> None:
    """Such events take a quick check instead of a cattrs round trip; it refuses the same."""
    good = {"count": 1, "label": "a", "share": 0.5, "on": True, "maybe": None}
    encode_event(SerPlain(**good))
    encode_event(SerPlain(**{**good, "share": 1, "maybe": 2}))  # an int is a number

    with pytest.raises(SerializationError) as caught:
        encode_event(SerPlain(**{**good, **fields}))

    assert caught.value.path == path


@attrs.frozen
class SerEither:
    value: list[int] | dict[str, int]  # cattrs has no hook for a union of two containers


@attrs.frozen
class SerPositive:
    amount: int = attrs.field(validator=attrs.validators.gt(0))


@dataclasses.dataclass
class SerChecked:
    amount: int

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError("amount must be positive")


@dataclasses.dataclass
class SerRatio:
    ratio: float


def _mutated(event: Any, **values: Any) -> Any:
    for name, value in values.items():
        object.__setattr__(event, name, value)
    return event


@pytest.mark.parametrize(
    "event",
    [
        SerEither([1]),
        _mutated(SerPositive(1), amount=-3),  # the validator runs when it is built back
        _mutated(SerChecked(1), amount=-3),  # and so does __post_init__
        SerRatio(10**400),  # an int too large for a float field
    ],
    ids=["union", "validator", "post-init", "huge-int"],
)
def test_writing_refuses_what_reading_could_not_build(event: Any) -> None:
    """The quick check of scalar events must never let through what cattrs would refuse."""
    with pytest.raises(SerializationError):
        encode_event(event)


# -- refusals name the path ------------------------------------------------------------------

LINE = {"sku": "a", "qty": 1, "price": "1.50"}


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"amount": "5", "lines": []}, "$.amount", "int"),
        ({"amount": 5.7, "lines": []}, "$.amount", "int"),
        ({"amount": 5.0, "lines": []}, "$.amount", "int"),
        ({"amount": True, "lines": []}, "$.amount", "int"),
        ({"amount": None, "lines": []}, "$.amount", "int"),
        ({"lines": []}, "$.amount", "missing"),
        ({"amount": 5, "lines": [], "extra": 1}, "$", "extra"),
        ({"amount": 5, "lines": [LINE, {**LINE, "qty": "2"}]}, "$.lines[1].qty", "int"),
        ({"amount": 5, "lines": [LINE, {**LINE, "price": "NaN"}]}, "$.lines[1].price", ""),
        ({"amount": 5, "lines": [LINE, {**LINE, "price": "ten"}]}, "$.lines[1].price", ""),
        ({"amount": 5, "lines": [{"sku": "a", "qty": 1}]}, "$.lines[0].price", "missing"),
        ({"amount": 5, "lines": [LINE], "note": 3}, "$.note", "str"),
        ({"amount": 5, "lines": 7}, "$.lines", "list"),
        ({"amount": 5, "lines": None}, "$.lines", "list"),
    ],
    ids=[
        "str-for-int",
        "float-for-int",
        "integral-float-for-int",
        "bool-for-int",
        "null-for-int",
        "missing-field",
        "extra-field",
        "nested-list",
        "nan-decimal",
        "bad-decimal",
        "nested-missing",
        "optional-str",
        "int-for-list",
        "null-for-list",
    ],
)
def test_structure_refuses_wrong_data_by_path(data: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SerializationError) as caught:
        structure(data, SerHolder)

    assert caught.value.path == path
    assert path in str(caught.value)
    assert words in str(caught.value)
    assert "SerHolder" in str(caught.value)


@pytest.mark.parametrize("value", ["vip", {"sku": "a"}], ids=["str-for-list", "object-for-list"])
def test_structure_refuses_a_non_array_for_a_list_field(value: Any) -> None:
    """A JSON string or object is not an array; taking its characters or keys corrupts data."""
    with pytest.raises(SerializationError) as caught:
        structure({"tags": value}, SerTagged)

    assert caught.value.path == "$.tags"


def test_structure_refuses_wrong_enum_uuid_and_datetime() -> None:
    order = unstructure(
        SerOrder(
            1,
            "n",
            0.5,
            True,
            Decimal(1),
            uuid.uuid4(),
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 1, 1),
            SerColor.RED,
            SerPriority.LOW,
            SerSize.SMALL,
            [],
            None,
            None,
            [],
            [],
        )
    )
    for field, bad in [
        ("color", "purple"),
        ("priority", 3),  # IntEnum and StrEnum fields are checked like any enum
        ("priority", "1"),
        ("size", "m"),
        ("order_id", "not-a-uuid"),
        ("placed_at", "yesterday"),
        ("paid", "true"),
        ("ratio", "0.5"),
    ]:
        with pytest.raises(SerializationError) as caught:
            structure({**order, field: bad}, SerOrder)
        assert caught.value.path == f"$.{field}"


def test_values_json_cannot_hold_are_named_by_path() -> None:
    with pytest.raises(SerializationError) as caught:
        dumps(unstructure(SerPlain(1, "x", float("inf"), True, None)), "SerPlain")
    assert caught.value.path == "$.share"
    assert "SerPlain" in str(caught.value)

    with pytest.raises(SerializationError) as caught:
        dumps({"lines": [{"ok": 1}, {"when": object()}]})
    assert caught.value.path == "$.lines[1].when"


def test_serialization_error_is_a_type_error_and_pickles() -> None:
    """It crosses actor (process) boundaries and is caught as a TypeError by generic code."""
    import pickle

    with pytest.raises(SerializationError) as caught:
        structure({"amount": "5", "lines": []}, SerHolder)

    assert isinstance(caught.value, TypeError)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.path) == (str(caught.value), "$.amount")


class _Later:
    """A state whose annotation names a class defined after it (and, here, only later)."""

    due: _Deadline  # noqa: F821 (bound by the test)


def test_state_annotations_that_resolve_only_later_are_used_once_they_do() -> None:
    state = {"due": {"at": "2026-12-03T10:00:00+00:00"}}
    early = _Later()
    restore_attributes(early, state)
    assert early.due == state["due"]  # not resolvable yet: taken as it is

    @attrs.frozen
    class _Deadline:
        at: datetime

    globals()["_Deadline"] = _Deadline
    try:
        late = _Later()
        restore_attributes(late, state)
        assert late.due == _Deadline(datetime(2026, 12, 3, 10, tzinfo=UTC))
    finally:
        del globals()["_Deadline"]
