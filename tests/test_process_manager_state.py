"""A process manager's state: encoded once per step, and a state JSON cannot hold fails its
step with an error naming where, while the process manager goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backstage_actors import _serialization as ser

from .handler_domain import query
from .process_state_domain import UNSTORABLE, PstCount, PstTally, make_app

Start = Any  # the start_app fixture: start_app(app, **options) -> RunningSystem


def _states(system: Any) -> dict[str, Any]:
    rows = query(
        system, "SELECT process_id, state FROM process_managers WHERE name = ?", PstTally.name
    )
    return {process_id: json.loads(state) for process_id, state in rows}


@pytest.mark.parametrize("base", ["simple"])  # the process manager runs in the test's process
def test_a_process_managers_state_is_encoded_once_per_step(
    start_app: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was encoded twice: once to fail early on a state JSON cannot hold, once to store it.
    encoded: list[str] = []
    dumps = ser.dumps

    def counted(data: Any, what: str = "value") -> str:
        if what == f"{PstTally.name} state":
            encoded.append(what)
        return dumps(data, what)

    monkeypatch.setattr(ser, "dumps", counted)
    system = start_app(make_app())
    system.dispatch_many([PstCount(f"c-{n % 3}", n) for n in range(30)])
    system.settle(timeout=30)

    assert _states(system)["c-0"] == {"counts": list(range(0, 30, 3)), "odd": None}
    assert len(encoded) == 30


def test_a_state_json_cannot_hold_fails_its_step_and_names_where(start_app: Start) -> None:
    system = start_app(make_app())
    system.dispatch_many([PstCount("c-1", n) for n in (12, UNSTORABLE, 14)])
    system.settle(timeout=30)

    [letter] = system.store.dead_letters(PstTally.name)
    assert letter.error_type == "SerializationError"
    assert letter.error.startswith(f"{PstTally.name} state: not JSON-serializable at $.odd"), (
        letter.error
    )
    # Nothing of the failed step was saved; the next one started from the state before it.
    assert _states(system) == {"c-1": {"counts": [12, 14], "odd": None}}
