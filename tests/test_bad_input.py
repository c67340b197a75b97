"""Bad input of every shape gets a clear BackstageError, and the system keeps serving."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstage_actors import BackstageError, CommandRejected, InvalidCommand, SerializationError
from backstage_actors.command import command_from_data
from examples.bank import make_app
from examples.bank.domain import Deposit, OpenAccount, Withdraw
from examples.bank.transfers import TransferMoney

COMMANDS = [OpenAccount, Deposit, Withdraw, TransferMoney]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def command_data(cls: type) -> Any:
    """Mostly the right field names with values of any JSON type, sometimes anything at all."""
    names = [a.name for a in cls.__attrs_attrs__]  # type: ignore[attr-defined]
    fields = {name: json_values | st.text(max_size=8) for name in names}
    return st.one_of(st.fixed_dictionaries({}, optional=fields), json_values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_for_a_known_command_builds_it_or_names_the_problem(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(COMMANDS))
    payload = data.draw(command_data(cls))
    try:
        command = command_from_data(cls, payload)
    except SerializationError as exc:
        assert cls.__name__ in str(exc)
        return
    assert isinstance(command, cls)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"account_id": "a", "amount": [[[[[[1]]]]]]}, id="nested-list-for-int"),
        pytest.param({"account_id": {"x": {"y": {"z": 1}}}, "amount": 1}, id="object-for-string"),
        pytest.param({"account_id": "a", "amount": 1.5}, id="float-for-int"),
        pytest.param({"account_id": "a", "amount": True}, id="bool-for-int"),
        pytest.param("not an object", id="string"),
    ],
)
def test_wrongly_shaped_payloads_name_the_field(payload: Any) -> None:
    with pytest.raises(SerializationError):
        command_from_data(Deposit, payload)


@pytest.fixture
def bank(start_app: Any) -> Any:
    system = start_app(make_app())
    system.dispatch(OpenAccount("a-1", "Ada"))
    return system


def test_fuzzed_commands_through_the_api_only_raise_backstage_errors(bank: Any, base: str) -> None:
    """Random payloads for real commands, dispatched: rejected, refused or stored; never a crash."""
    examples: list[Any] = []

    @settings(max_examples=40 if base == "simple" else 15, deadline=None, database=None)
    @given(data=st.data())
    def collect(data: st.DataObject) -> None:
        cls = data.draw(st.sampled_from(COMMANDS))
        examples.append((cls, data.draw(command_data(cls))))

    collect()
    for cls, payload in examples:
        # Any error of ours is fine: the point is that nothing else escapes.
        with contextlib.suppress(BackstageError):
            bank.dispatch(command_from_data(cls, payload), timeout=10)
    # Still serving, with the state intact.
    before = bank.store.stream_version("Account-a-1")
    assert bank.dispatch(Deposit("a-1", 5)).version == before + 1
    with pytest.raises(CommandRejected, match="insufficient funds"):
        bank.dispatch(Withdraw("a-1", 10**9))


def test_a_huge_event_is_refused_clearly_and_the_aggregate_serves_on(bank: Any) -> None:
    with pytest.raises(SerializationError, match="at most"):
        bank.dispatch(OpenAccount("big", "x" * (10 * 1024 * 1024)), timeout=60)
    assert bank.dispatch(OpenAccount("big", "Big")).version == 1


def test_things_that_are_not_commands(bank: Any) -> None:
    for bad in ({"account_id": "a-1"}, "Deposit", 42, None):
        with pytest.raises(InvalidCommand):
            bank.dispatch(bad)
    assert bank.dispatch(Deposit("a-1", 1)).events[0].data.amount == 1


@pytest.mark.process
def test_fuzzed_cli_input_gets_one_line_errors(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    """The CLI's parser and validation, in-process against a real daemon: exit codes, one line."""
    from backstage_actors import _daemon, cli

    from .conftest import free_port

    monkeypatch.setenv("BACKSTAGE_HOME", str(tmp_path / "home"))
    port = free_port()
    assert (
        cli.run(
            ["start", "examples.bank:app", "--db", str(tmp_path / "bank.db"), "--port", str(port)]
        )
        == 0
    )
    session = cli.Session()
    try:
        texts = [
            '{"account_id": "a", "amount": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "\udcff\udcfe",  # invalid UTF-8 as it reaches Python through argv (surrogateescape)
            '{"account_id": "x", "amount": 1',
            "[]",
            '{"account_id": null, "amount": 1}',
            '{"account_id": "", "amount": 1}',
            '{"account_id": "a", "amount": 1, "extra": 2}',
            "x" * 100_000,
        ]

        @settings(max_examples=25, deadline=None, database=None)
        @given(value=json_values)
        def more(value: Any) -> None:
            texts.append(json.dumps(value))

        more()
        capsys.readouterr()
        for text in texts:
            code = cli.run(["send", "Deposit", text, "--port", str(port)], session)
            assert code in (cli.EXIT_FAILED, cli.EXIT_INPUT), (text[:80], code)
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, (text[:80], err[:300])
        assert (
            cli.run(
                ["send", "OpenAccount", '{"account_id": "ok", "owner": "Ok"}', "--port", str(port)],
                session,
            )
            == 0
        )
    finally:
        cli.run(["stop", "--port", str(port)], session)
        _daemon.kill_leftovers(port)
