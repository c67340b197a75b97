"""Prometheus metrics: scraped over HTTP from real systems and parsed with prometheus_client's
own parser; the values follow the commands sent."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backstage_actors import BackstageError, CommandRejected, DispatchTimeout
from examples.bank import make_app
from examples.bank.domain import Deposit, OpenAccount, Withdraw

from .conftest import free_port, wait_until
from .test_cli import Backstage, shut_down

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` on ``port``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def commands(samples: Samples, command: str, outcome: str) -> float | None:
    return value(
        samples, "backstage_commands_total", aggregate="Account", command=command, outcome=outcome
    )


def test_metrics_follow_the_commands(start_app: Any, base: str, tmp_path: Path) -> None:
    port = free_port()
    system = start_app(make_app(str(tmp_path / "bank.db")), metrics_port=port)
    system.dispatch(OpenAccount("ada", "Ada"))
    system.dispatch_many([Deposit("ada", 10), Deposit("ada", 20), Deposit("ada", 30)])
    with pytest.raises(CommandRejected):
        system.dispatch(Withdraw("ada", 1_000))
    system.settle()

    # Aggregates report their counts within a second, in deltas that may split the five
    # commands: poll until the last one (the rejection) is there, and with it the others.
    samples = wait_until(
        lambda: (s := scrape(port)) and commands(s, "Withdraw", "rejected") == 1 and s,
        what="the rejection in the metrics",
    )
    assert commands(samples, "Deposit", "ok") == 3
    assert value(samples, "backstage_up") == 1
    assert commands(samples, "OpenAccount", "ok") == 1
    assert commands(samples, "Withdraw", "rejected") == 1
    assert commands(samples, "Withdraw", "ok") is None
    histogram = {"aggregate": "Account", "command": "Deposit"}
    assert value(samples, "backstage_command_duration_seconds_count", **histogram) == 3
    assert value(samples, "backstage_command_duration_seconds_bucket", le="+Inf", **histogram) == 3
    assert value(samples, "backstage_command_duration_seconds_sum", **histogram) > 0
    assert value(samples, "backstage_appends_total") == 4  # the rejection appended nothing
    assert value(samples, "backstage_events_appended_total") == 4
    assert value(samples, "backstage_commit_batch_size_sum") == 4
    assert value(samples, "backstage_aggregates_live") == 1
    assert value(samples, "backstage_aggregates_passivated_total") == 0
    for name, kind in (("balances", "projection"), ("notifier", "handler")):
        labels = {"subscriber": name, "kind": kind}
        assert value(samples, "backstage_subscriber_position", **labels) == 4
        assert value(samples, "backstage_subscriber_lag_events", **labels) == 0
        assert value(samples, "backstage_subscriber_parked_events", **labels) == 0
    assert value(samples, "backstage_restarts_total", kind="aggregate") == 0


def test_client_timeouts_are_counted_where_the_client_runs(
    start_app: Any, base: str, tmp_path: Path
) -> None:
    if base != "simple":
        pytest.skip("the endpoint of a multiproc system runs in the tree, beside no client")
    port = free_port()
    system = start_app(make_app(str(tmp_path / "bank.db")), metrics_port=port)
    with pytest.raises(DispatchTimeout):
        system.dispatch(OpenAccount("ada", "Ada"), timeout=0.0)
    samples = scrape(port)
    assert commands(samples, "OpenAccount", "timeout") == 1


def test_a_taken_metrics_port_is_refused_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BackstageError, match="metrics port"):
            make_app(str(tmp_path / "bank.db")).start(metrics_port=port)


def test_stopping_the_system_closes_the_endpoint(tmp_path: Path) -> None:
    port = free_port()
    with make_app(str(tmp_path / "bank.db")).start(metrics_port=port):
        assert value(scrape(port), "backstage_up") == 1
    with pytest.raises(urllib.error.URLError):
        scrape(port)


@pytest.mark.process
def test_daemon_serves_metrics_until_it_stops(tmp_path: Path) -> None:
    port = free_port()
    backstage = Backstage(tmp_path)
    try:
        started = backstage.start("--metrics-port", str(port))
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}/metrics" in started.stdout
        backstage.send("OpenAccount", {"account_id": "bo", "owner": "Bo"})
        backstage.send("Deposit", {"account_id": "bo", "amount": 5})
        rejected = backstage.run("send", "Withdraw", '{"account_id": "bo", "amount": 50}')
        assert rejected.returncode == 1
        samples = wait_until(
            lambda: (s := scrape(port)) and commands(s, "Withdraw", "rejected") == 1 and s,
            what="the rejection in the daemon's metrics",
        )
        assert commands(samples, "OpenAccount", "ok") == 1
        assert commands(samples, "Deposit", "ok") == 1
        assert value(samples, "backstage_restarts_total", kind="metrics") == 0
    finally:
        shut_down(backstage)
    with pytest.raises(urllib.error.URLError):
        scrape(port)
