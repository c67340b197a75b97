"""Hostile input and operational faults: a clear error at once for what cannot be stored, the
valid commands beside it stored, no crash loop, nothing applied twice, one writer per database."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
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
    Limits,
    SerializationError,
    StorageError,
)
from backstage_actors import limits as limits_module
from supervisors import walk

from .conftest import wait_until
from .hostile_domain import Garble, Overflow, Poke, Write, Written, make_app
from .test_cli import BACKSTAGE, Backstage, frozen_shards, one_error_line, port_open, shut_down

EXIT_INPUT, EXIT_TIMEOUT, EXIT_STORAGE = 2, 4, 5

# -- what a hostile client sends --------------------------------------------------------------

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
mixed_scripts = st.text(st.sampled_from('aZ9 éß寿司🙂שלוםمرحبا\u200f\u202e\n\t"\\'), max_size=30)
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
        # At once: not after a crash and restart of the aggregate (a stored one is a round trip
        # to a shard's process, which a loaded machine may hold up for a second).
        assert time.monotonic() - started < 2.5
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
        hostile = (
            (command, True) in cases
            or isinstance(command, (Garble, Overflow))
            or (command.pad_id == "s\ud800")
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
    with pytest.raises(
        SerializationError, match=r"\$\.number: 1180591620717411303424 is out of range"
    ):
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


def test_a_store_that_is_no_file_takes_no_lock_file(
    start_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-writer lock guards SQLite files: a memory store leaves no ``memory:X.owner``
    file in the working directory (PostgreSQL orders its writers itself)."""
    monkeypatch.chdir(tmp_path)
    start_app(make_app(), database="memory:hostile").dispatch(Write("w", "ok"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".owner")) == []


# -- the command line, against real daemons -------------------------------------------------

HOSTILE_APP = "tests.hostile_domain:app"


class HostileDaemon(Backstage):
    @property
    def database(self) -> Path:
        return self.home / "hostile.db"

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("start", HOSTILE_APP, "--db", str(self.database), *extra)

    def restarts(self) -> int:
        tree = self.json("tree")
        return sum(int(node.get("restarts", 0)) for node in walk(tree))

    def versions(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT stream_id, max(version) FROM events GROUP BY 1"))


@contextlib.contextmanager
def hostile_daemon(home: Path) -> Iterator[HostileDaemon]:
    daemon = HostileDaemon(home)
    try:
        daemon.started = daemon.start()
        assert daemon.started.returncode == 0, daemon.started.stderr
        yield daemon
    finally:
        shut_down(daemon)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileDaemon]:
    with hostile_daemon(tmp_path_factory.mktemp("home")) as running_daemon:
        yield running_daemon


def as_line(command: Write) -> str:
    data = {"pad_id": command.pad_id, "text": command.text, "number": command.number}
    data["ratio"] = command.ratio  # type: ignore[assignment]
    # allow_nan: JSON has no NaN, but Python's parser takes it: the edge must refuse it.
    digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # (10**5000 has more digits than Python prints by default)
    try:
        return json.dumps({"command": "Write", "data": data}, allow_nan=True)
    finally:
        sys.set_int_max_str_digits(digits)


@pytest.mark.process
def test_the_cli_names_hostile_fields_in_one_line(daemon: HostileDaemon) -> None:
    before = daemon.restarts()
    cases = {
        '{"pad_id": "c", "text": "\\ud800"}': r"\$\.text: a lone surrogate U\+D800",
        '{"pad_id": "c\\u0000", "text": "x"}': r"\$\.pad_id: a NUL character",
        '{"pad_id": "c", "text": "x", "ratio": NaN}': r"\$\.ratio: nan is not a finite number",
        '{"pad_id": "c", "text": "x", "number": 1' + "0" * 5000 + "}": "bad JSON: Exceeds",
        '{"pad_id": "c", "text": "x", "number": 1' + "0" * 30 + "}": r"\$\.number: .* range",
    }
    results = daemon.run_all([("send", "Write", data) for data in cases])
    for (data, expected), result in zip(cases.items(), results, strict=True):
        assert result.returncode == EXIT_INPUT, (data[:60], result.stderr)
        assert re.search(expected, one_error_line(result)), result.stderr
    assert daemon.send("Write", {"pad_id": "c", "text": "fine"})["version"] == 1
    assert daemon.restarts() == before


@pytest.mark.process
def test_send_file_reports_hostile_lines_and_stores_the_rest(
    daemon: HostileDaemon, tmp_path: Path
) -> None:
    cases = examples(writes("f"), 25)
    lines = [as_line(Write(f"fv{i}", "valid")) for i in range(20)]
    lines += [as_line(command) for command, _ in cases]
    lines += ['{"command": "Garble", "data": {"pad_id": "fg"}}']
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    before = daemon.restarts()

    result = daemon.run("send", "--file", str(path), "--json")

    report = json.loads(result.stdout)
    invalid = {entry["line"] for entry in report["invalid"]}
    expected = {21 + i for i, (_, bad) in enumerate(cases) if bad} | {len(lines)}
    assert invalid == expected, report["invalid"]
    assert all(entry["reason"] for entry in report["invalid"])
    assert report["accepted"] == len(lines) - len(expected) and not report["unknown"]
    versions = daemon.versions()
    assert all(versions[f"Pad-fv{i}"] == 1 for i in range(20))
    assert versions.get("Pad-f", 0) == sum(1 for _, bad in cases if not bad)
    assert daemon.restarts() == before


@pytest.mark.process
def test_the_same_file_sent_twice_after_timeouts_is_stored_once(
    daemon: HostileDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "bulk.jsonl"
    lines = [as_line(Write(f"t{i % 10}", f"line {i}")) for i in range(300)]
    lines.append(
        '{"command": "Write", "command_id": "mine", "data": {"pad_id": "t0", "text": "x"}}'
    )
    path.write_text("\n".join(lines) + "\n")

    with frozen_shards(daemon):  # no answer can come in time
        first = daemon.run(
            "send", "--file", str(path), "--timeout", "0.5", "--batch", "50", "--json"
        )
    assert first.returncode == EXIT_TIMEOUT, first.stderr  # some answers did not come in time
    assert json.loads(first.stdout)["unknown"]
    second = daemon.run("send", "--file", str(path), "--json")
    third = daemon.run("send", "--file", str(path), "--json")

    for again in (second, third):
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["accepted"] == len(lines)
    versions = daemon.versions()
    assert sum(versions[f"Pad-t{i}"] for i in range(10)) == len(lines)  # each line once


@pytest.mark.process
def test_a_second_daemon_on_the_same_database_refuses_to_start(daemon: HostileDaemon) -> None:
    other = HostileDaemon(daemon.home)
    result = other.start()
    try:
        assert result.returncode == EXIT_STORAGE, result.stderr
        line = one_error_line(result)
        assert "application 'hostile' (multiproc on port " + str(daemon.port) in line
    finally:
        if result.returncode == 0:
            shut_down(other)


@pytest.mark.process
def test_verbs_that_only_look_inside_need_no_app_module(
    daemon: HostileDaemon, tmp_path: Path
) -> None:
    elsewhere = subprocess.run(
        [BACKSTAGE, "status", "--json", "--port", str(daemon.port)],
        cwd=tmp_path,  # tests.hostile_domain does not import from here
        env=daemon.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout)["application"] == "backstage:hostile"
    for verb in (["tree"], ["events", "--limit", "1"]):
        result = subprocess.run(
            [BACKSTAGE, *verb, "--port", str(daemon.port)],
            cwd=tmp_path,
            env=daemon.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (verb, result.stderr)


@pytest.mark.process
def test_events_skips_a_corrupt_row_and_shows_the_rest(start_app: Any, tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    system = start_app(make_app(), database=str(database))
    for i in range(5):
        system.dispatch(Write("e", f"event {i}"))
    system.stop()
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE events SET data = '{broken' WHERE position = 3")

    for extra in ([], ["--json"], ["Pad-e"]):
        result = subprocess.run(
            [BACKSTAGE, "events", *extra, "--db", str(database)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        warnings = result.stderr.splitlines()
        assert len(warnings) == 1 and warnings[0].startswith("warning: skipped the event at")
        assert "position 3" in warnings[0]
        if extra == ["--json"]:
            assert [e["position"] for e in json.loads(result.stdout)] == [1, 2, 4, 5]
        else:
            assert [int(line.split()[0]) for line in result.stdout.splitlines()] == [1, 2, 4, 5]


@pytest.mark.process
def test_after_an_admin_sigkill_its_port_is_refused_at_once(tmp_path: Path) -> None:
    with hostile_daemon(tmp_path) as own:
        admin = own.state()["admin_pid"]
        os.kill(admin, signal.SIGKILL)
        wait_until(lambda: not port_open(own.port), timeout=5.0, what="the admin's port to close")


# -- the store: what cannot be written fails alone --------------------------------------------


def test_an_append_that_cannot_be_written_fails_alone_in_its_group_commit(tmp_path: Path) -> None:
    from backstage_actors.store import AppendRequest, EventStore
    from backstage_actors.store._codec import EncodedEvent

    store = EventStore(str(tmp_path / "store.db"))
    try:
        good = [Written("p", "fine")]
        # Encoded by hand, past every check: only the database can refuse it.
        smuggled = [EncodedEvent("Written", 1, "", '{"text": "\ud800"}')]
        requests = [
            AppendRequest("Pad-a", good),
            AppendRequest("Pad-b", smuggled),
            AppendRequest("Pad-c\ud800", good),
            AppendRequest("Pad-d", good, metadata={"note": "x\x00"}),
            AppendRequest("Pad-e", good * 2),
        ]
        results = store.append_batches(requests)
        assert [type(r).__name__ for r in results] == [
            "list",
            "SerializationError",
            "InvalidCommand",
            "SerializationError",
            "list",
        ]
        assert "cannot be stored" in str(results[1])
        assert [e.stream_id for e in store.read_all()] == ["Pad-a", "Pad-e", "Pad-e"]
    finally:
        store.close()


# Mostly plain ASCII (the quick check's case), sometimes what it must leave to the walk.
_TEXTS = st.text("ab", max_size=7) | st.text(st.sampled_from("ab\x00é\ud800"), max_size=7)
_SCALARS = (
    _TEXTS
    | st.integers(min_value=-1500, max_value=1500)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(_TEXTS, _SCALARS, max_size=6))
def test_the_quick_check_of_flat_data_passes_only_what_the_full_walk_passes(
    data: dict[str, Any],
) -> None:
    """``limits.flat_fits`` (commands, events and metadata of scalars, checked in one pass)
    never lets through what the walk names, and ``problems`` names the same things either way."""
    limits = Limits(max_string_length=5, min_integer=-1000, max_integer=1000)
    walked = limits_module.problems({"x": data}, limits)  # nested: always the walk
    if limits_module.flat_fits(data, limits):
        assert walked == []
    assert (limits_module.problems(data, limits) == []) == (walked == [])
