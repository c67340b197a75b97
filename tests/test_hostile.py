"""Hostile input and operational faults: a clear error at once for what cannot be stored, the
valid commands beside it stored, no crash loop, nothing applied twice, one writer per database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstage_actors import (
    AggregateFailed,
    DispatchResult,
    InvalidCommand,
    SerializationError,
    StorageError,
)
from backstage_actors.limits import Limits
from supervisors import walk

from .hostile_domain import Garble, Overflow, Poke, Write, make_app

# -- what a hostile client sends --------------------------------------------------------------

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
mixed_scripts = st.text(st.sampled_from("aZ9 éß寿司🙂שלוםمرحبا\u200f\u202e\n\t\"\\"), max_size=30)
storable_text = st.one_of(mixed_scripts, st.text(max_size=20).filter(lambda t: "\x00" not in t))
hostile_text = st.one_of(
    st.tuples(mixed_scripts, surrogates, mixed_scripts).map("".join),  # a lone surrogate inside
    st.tuples(mixed_scripts, mixed_scripts).map(lambda p: f"{p[0]}\x00{p[1]}"),  # a NUL
    st.integers(1_000_001, 1_000_100).map(lambda n: "x" * n),  # longer than the default limit
)
storable_int = st.integers(-(2**63), 2**63 - 1)
hostile_int = st.one_of(
    st.integers(min_value=2**63, max_value=2**200),
    st.integers(max_value=-(2**63) - 1, min_value=-(2**200)),
    st.sampled_from([10**30, 10**5000]),
)
hostile_float = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@st.composite
def writes(draw: st.DrawFn, pad_id: str) -> tuple[Write, bool]:
    """A ``Write`` and whether it must be refused (one hostile field or more, or none)."""
    bad = draw(st.sets(st.sampled_from(["text", "number", "ratio"]), max_size=3))
    text = draw(hostile_text if "text" in bad else storable_text)
    number = draw(hostile_int if "number" in bad else storable_int)
    ratio = draw(hostile_float if "ratio" in bad else st.floats(-1e9, 1e9))
    return Write(pad_id, text, number, ratio), bool(bad)


def examples(strategy: Any, count: int) -> list[Any]:
    found: list[Any] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        found.append(data.draw(strategy))

    draw()
    return found


def restarts(system: Any) -> int:
    return sum(int(node.get("restarts", 0)) for node in walk(system.tree()))


@pytest.fixture
def pads(start_app: Any) -> Any:
    return start_app(make_app())


def count(system: Any, stream_id: str) -> int:
    return system.store.stream_version(stream_id)


# -- one way in at a time -------------------------------------------------------------------


def test_hostile_fields_through_dispatch_are_named_at_once(pads: Any, base: str) -> None:
    before = restarts(pads)
    cases = examples(writes("p"), 30 if base == "simple" else 12)
    stored = 0
    for command, bad in cases:
        started = time.monotonic()
        if bad:
            with pytest.raises((SerializationError, InvalidCommand)) as caught:
                pads.dispatch(command, timeout=5)
            assert caught.value.path.startswith("$.")  # names the field
        else:
            pads.dispatch(command, timeout=5)
            stored += 1
        assert time.monotonic() - started < 1.0
    assert count(pads, "Pad-p") == stored
    assert restarts(pads) == before


def test_every_bad_field_is_named_in_one_error(pads: Any) -> None:
    with pytest.raises(SerializationError) as caught:
        pads.dispatch(Write("p", "a\ud800", 10**30, float("nan")))
    assert caught.value.paths == ["$.text", "$.number", "$.ratio"]
    assert "lone surrogate U+D800" in str(caught.value)


@pytest.mark.parametrize(
    "identity", ["g1\ud800", "a\x00b", "x" * 257, "\udcff"], ids=["surrogate", "nul", "long", "s"]
)
def test_a_hostile_identity_is_refused_before_any_actor(pads: Any, identity: str) -> None:
    before = restarts(pads)
    started = time.monotonic()
    with pytest.raises(InvalidCommand, match=r"\$\.pad_id"):
        pads.dispatch(Write(identity, "ok"), timeout=5)
    assert time.monotonic() - started < 1.0
    assert pads.dispatch(Write("fine", "ok")).version == 1
    assert restarts(pads) == before


def test_hostile_commands_in_a_batch_fail_alone(pads: Any, base: str) -> None:
    cases = examples(writes("b"), 30 if base == "simple" else 12)
    commands = [Write(f"v{i}", "valid") for i in range(50)]
    commands += [command for command, _ in cases]
    commands += [Write("s\ud800", "x"), Garble("g"), Overflow("o")]
    before = restarts(pads)

    results = pads.dispatch_many(commands, timeout=30)

    for command, result in zip(commands, results, strict=True):
        hostile = (command, True) in cases or isinstance(command, (Garble, Overflow)) or (
            command.pad_id == "s\ud800"
        )
        if hostile:
            assert isinstance(result, (SerializationError, InvalidCommand)), (command, result)
        else:
            assert isinstance(result, DispatchResult), (command, result)
    assert all(count(pads, f"Pad-v{i}") == 1 for i in range(50))
    assert count(pads, "Pad-b") == sum(1 for _, bad in cases if not bad)
    assert count(pads, "Pad-g") == count(pads, "Pad-o") == 0
    assert restarts(pads) == before


def test_an_aggregate_producing_an_unstorable_event_fails_that_command_alone(pads: Any) -> None:
    with pytest.raises(SerializationError, match=r"Written: \$\.text: a lone surrogate"):
        pads.dispatch(Garble("q"))
    with pytest.raises(SerializationError, match=r"\$\.number: 1180591620717411303424 is out of range"):
        pads.dispatch(Overflow("q"))
    assert pads.dispatch(Write("q", "fine")).version == 1


def test_metadata_is_bounded(pads: Any) -> None:
    with pytest.raises(SerializationError, match="at most 65,536"):
        pads.dispatch(Write("m", "x"), metadata={"blob": "y" * 70_000})
    deep: Any = []
    for _ in range(50_000):
        deep = [deep]
    with pytest.raises(SerializationError, match="nested deeper than 32"):
        pads.dispatch(Write("m", "x"), metadata={"deep": deep})
    assert pads.dispatch(Write("m", "x"), metadata={"user": "ada"}).version == 1


def test_limits_are_configurable(start_app: Any) -> None:
    system = start_app(make_app(limits=Limits(max_string_length=5, max_integer=100)))
    with pytest.raises(SerializationError) as caught:
        system.dispatch(Write("c", "too long", 101))
    assert caught.value.paths == ["$.text", "$.number"]
    assert "at most 5" in str(caught.value) and "[-9223372036854775808, 100]" in str(caught.value)
    assert system.dispatch(Write("c", "short", 100)).version == 1
    with pytest.raises(ValueError, match="positive"):
        Limits(max_depth=0)


def test_an_aggregate_that_cannot_start_does_not_crash_loop(pads: Any) -> None:
    """It fails in its start twice in a row: its command fails, and no restart follows."""
    before = restarts(pads)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(AggregateFailed, match="cannot start: RuntimeError"):
            pads.dispatch(Poke("f"), timeout=10)
        assert time.monotonic() - started < 5.0
    time.sleep(0.5)  # (no crash loop in the background: the count stays put)
    assert restarts(pads) == before
    assert pads.dispatch(Write("after", "ok")).version == 1


# -- one writer per database ------------------------------------------------------------------


def test_a_second_application_on_the_same_database_refuses_to_start(
    start_app: Any, base: str, tmp_path: Path
) -> None:
    first = start_app(make_app())
    with pytest.raises(StorageError, match=r"in use: application 'hostile' \(" + base):
        start_app(make_app())
    lock = Path(first.settings.database + ".owner")
    assert lock.stat().st_mode & 0o777 == 0o600
    # A reader is no writer: the store opens alongside.
    assert first.store.last_position() == 0
    first.stop()
    start_app(make_app()).dispatch(Write("after", "ok"))


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    yield
