"""What a program or a user calls, at its edges (found by helper-28's review; each test failed
before its fix): a command_id reused for another command, one command_id for a whole
dispatch_many, timeouts that are not numbers or that a strong dispatch outlived, a handle used
after os.fork() (a pre-forking web server), the HTTP example's statuses, hostile `send`
arguments, and an attached program across a daemon restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import BackstageError, InvalidCommand

from .conftest import wait_until
from .dispatch_domain import Add, make_app, stored
from .test_bank_http import Call, bank, run  # noqa: F401  (bank: a fixture)
from .test_cli import Backstage, running


@pytest.fixture
def store_kind() -> str:
    return "sqlite"


def test_command_id_reused_for_another_command_on_the_same_stream(start_app: Any) -> None:
    """A command_id reused for a different command must not be answered with the first
    command's events as if the second had run."""
    system = start_app(make_app())
    first = system.dispatch(Add("c1", 5), metadata={"command_id": "k-1"})
    with pytest.raises(InvalidCommand, match="command_id 'k-1' already names another command"):
        system.dispatch(Add("c1", 700), metadata={"command_id": "k-1"})
    assert [e.data.amount for e in stored(system, "Counter-c1")] == [first.events[0].data.amount]
    again = system.dispatch(Add("c1", 5), metadata={"command_id": "k-1"})  # the same command
    assert again.events == first.events


def test_command_id_reused_on_another_stream(start_app: Any) -> None:
    system = start_app(make_app())
    system.dispatch(Add("c1", 5), metadata={"command_id": "k-2"})
    with pytest.raises(BackstageError, match="command_id 'k-2' already names a command"):
        system.dispatch(Add("c2", 7), metadata={"command_id": "k-2"})


@pytest.mark.parametrize("given", [0, "", 1, 2.5, ["k"]])
def test_command_id_must_be_a_non_empty_string(start_app: Any, given: Any) -> None:
    """A command_id of 0 or "" was taken as no name (a retry ran the command again), and 1 was
    the same name as "1": a name that is not a non-empty string is refused, with what it was
    (None is no name)."""
    system = start_app(make_app())
    with pytest.raises(InvalidCommand, match=r"command_id must be a non-empty string, not "):
        system.dispatch(Add("ci", 5), metadata={"command_id": given})
    assert stored(system, "Counter-ci") == []
    assert system.dispatch(Add("ci", 5), metadata={"command_id": "1"}).events  # still serving


def test_dispatch_many_refuses_one_command_id_for_many(start_app: Any) -> None:
    system = start_app(make_app())
    with pytest.raises(ValueError, match="one command_id for many commands"):
        system.dispatch_many([Add("m2", 1), Add("m2", 2)], metadata={"command_id": "b-2"})
    assert stored(system, "Counter-m2") == []


@pytest.mark.parametrize("timeout", [float("nan"), float("inf")])
def test_dispatch_with_a_non_finite_timeout_returns(start_app: Any, timeout: float) -> None:
    """timeout=nan (e.g. ``backstage send ... --timeout nan``) must not wait forever."""
    import threading

    system = start_app(make_app())
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["r"] = system.dispatch(Add("t1", 1), timeout=timeout)
        except BaseException as exc:
            outcome["r"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(8)
    assert not thread.is_alive(), f"dispatch(timeout={timeout}) still waiting after 8 s"


@pytest.mark.parametrize("base", ["multiproc"])
def test_strong_dispatch_is_bounded_by_its_timeout(start_app: Any) -> None:
    import time

    from backstage_actors import ConsistencyTimeout, DispatchTimeout

    from . import client_edges_domain
    from .dispatch_domain import Stall

    system = start_app(client_edges_domain.make_app())
    system.dispatch(Add("warm", 1), consistency="strong", timeout=10)
    started = time.monotonic()
    try:
        outcome: Any = system.dispatch(Stall("s", 1.5), consistency="strong", timeout=2.0)
    except (ConsistencyTimeout, DispatchTimeout) as exc:
        outcome = exc
    took = time.monotonic() - started
    assert isinstance(outcome, ConsistencyTimeout), outcome
    assert took < 2.9, f"dispatch(timeout=2.0, strong) returned after {took:.2f}s"


def _fork_worker(client: Any, prefix: str) -> tuple[int, int]:
    """Fork a worker (a pre-forking web server's) that dispatches through ``client``: its pid,
    and the pipe on which it reports what it got (one JSON object)."""
    import json
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    try:  # the worker
        os.close(read)
        out: dict[str, Any] = {}
        try:
            res = client.dispatch_many([Add(f"{prefix}{i}", 1) for i in range(5)], timeout=8)
            out["many"] = [type(r).__name__ for r in res]
            out["one"] = client.dispatch(Add(f"{prefix}new", 1), timeout=8).stream_id
            out["tree"] = client.tree()["name"]
        except BaseException as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write, json.dumps(out).encode())
    finally:
        os._exit(0)


def _report(pid: int, read: int) -> dict[str, Any]:
    """What the worker ``pid`` reported; a worker still busy after 25 s is killed (a hang)."""
    import json
    import os
    import signal

    try:
        wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0], 25, what=f"worker {pid}")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    try:
        return dict(json.loads(os.read(read, 65536) or b"{}"))
    finally:
        os.close(read)


@pytest.mark.parametrize("base", ["multiproc"])
@pytest.mark.parametrize("workers", [1, 2])
def test_an_attached_handle_serves_forked_workers(start_app: Any, workers: int) -> None:
    """gunicorn --preload: the master attaches (and uses the handle), then forks workers; each
    worker, and the master, dispatches and gets its own answers."""
    from .conftest import free_port

    port = free_port()
    app = make_app()
    start_app(app, port=port)
    client = app.attach(port=port)
    try:
        client.dispatch(Add("p0", 1))  # the handle has been used before the fork
        forked = [_fork_worker(client, f"w{n}-") for n in range(workers)]
        mine = [type(r).__name__ for r in client.dispatch_many([Add(f"m{i}", 1) for i in range(5)])]
        reports = [_report(pid, read) for pid, read in forked]
    finally:
        client.stop()
    assert mine == ["DispatchResult"] * 5
    for report in reports:
        assert report.get("many") == ["DispatchResult"] * 5, report
        assert "error" not in report and report["tree"] == f"backstage:{app.name}", report


# -- the HTTP example ----------------------------------------------------------------------


@pytest.mark.parametrize("base", ["simple"])
def test_idempotency_key_reused_by_another_request_on_the_same_account(bank: Any) -> None:  # noqa: F811
    """Two different deposits that happen to carry the same Idempotency-Key (two clients,
    a key generator reset): the second must not get 200 with the first's events."""
    seen: dict[str, Any] = {}

    async def body(call: Call) -> None:
        await call("POST", "/accounts", json={"account_id": "ada", "owner": "Ada"})
        h = {"Idempotency-Key": "1"}
        first = await call("POST", "/accounts/ada/deposits", json={"amount": 500}, headers=h)
        second = await call("POST", "/accounts/ada/deposits", json={"amount": 7000}, headers=h)
        seen["first"], seen["second"] = first, second

    run(bank, body)
    assert seen["first"].status_code == 200
    assert seen["second"].status_code == 422, seen["second"].json()


@pytest.mark.parametrize("base", ["simple"])
def test_empty_identity_is_a_client_error(bank: Any) -> None:  # noqa: F811
    seen: dict[str, Any] = {}

    async def body(call: Call) -> None:
        seen["r"] = await call("POST", "/accounts", json={"account_id": "", "owner": "X"})

    run(bank, body)
    assert 400 <= seen["r"].status_code < 500


# -- the CLI and an attached program against a daemon ----------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backstage]:
    with running(tmp_path_factory.mktemp("home")) as backstage:
        yield backstage


CASES = {
    "empty module": ["send", ":Deposit", "{}"],
    "not a class": ["send", "examples.bank.domain:__name__", "{}"],
    "nan timeout": ["send", "Deposit", '{"account_id": "zz", "amount": 1}', "--timeout", "nan"],
}


@pytest.mark.process
@pytest.mark.parametrize("case", list(CASES))
def test_send_hostile_is_one_line(daemon: Backstage, case: str) -> None:
    try:
        result = daemon.run(*CASES[case])
    except BaseException as exc:
        pytest.fail(f"{case}: {type(exc).__name__}: {exc}")
    assert "Traceback" not in result.stderr
    assert result.returncode in (2, 4)
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.process
def test_attached_handle_across_a_daemon_restart(tmp_path: Path) -> None:
    """A program attached to a daemon that is stopped and started again: each dispatch either
    works or says SystemNotRunning; never a silent hang or a misleading answer."""
    import os
    import time
    from unittest import mock

    from backstage_actors import BackstageError
    from examples.bank import app
    from examples.bank.domain import OpenAccount

    report: list[str] = []
    with (
        running(tmp_path) as backstage,
        mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(backstage.home)}),
    ):
        system = app.attach(port=backstage.port)
        try:
            system.dispatch(OpenAccount("r1", "R"), timeout=10)
            stop = backstage.run("stop")
            assert stop.returncode == 0, stop.stderr
            for phase in ("stopped", "restarted"):
                if phase == "restarted":
                    again = backstage.start()
                    assert again.returncode == 0, again.stderr
                for n in range(2):
                    started = time.monotonic()
                    try:
                        r = system.dispatch(OpenAccount(f"{phase}{n}", "R"), timeout=5)
                        outcome = f"ok v{r.version}"
                    except BackstageError as exc:
                        outcome = f"{type(exc).__name__}: {exc}"
                    except Exception as exc:
                        outcome = f"NOT A BackstageError {type(exc).__name__}: {exc}"
                    took = time.monotonic() - started
                    report.append(f"{phase}#{n}: {outcome[:160]} ({took:.1f}s)")
        finally:
            system.stop()
    for line in report:
        assert "NOT A BackstageError" not in line
        took = float(line.rsplit("(", 1)[1].rstrip("s)"))
        assert took <= 6.0, f"dispatch(timeout=5) took {took}s: {line}"
        if line.startswith("restarted"):
            assert "ok" in line, report
