"""Prometheus metrics: ``/metrics`` over HTTP, read from the live supervision tree on each scrape.

On multiproc the numbers live in many processes (every aggregate, subscriber and the store is
one), so no single process holds them in ``prometheus_client`` metrics of its own. Instead a
:class:`TreeCollector` asks the tree when Prometheus scrapes and turns what the actors report
(the router's per-type command counts, each subscriber's position, lag, failures and parked
events, every supervisor's restart counts) into metric families. A scrape costs one tree walk,
like ``backstage status``; the numbers are as fresh as the scrape (command counts reach the
router within a second), and nothing is kept twice.

Where the endpoint runs: on multiproc, in a ``metrics`` actor of the application's tree (it
lives as long as the actor system, daemon included, and attaches to its own admin to ask the
tree); in-process, in a thread of the process that started the application. Either way it
binds 127.0.0.1 unless told otherwise. Timeouts are a client's view (the aggregate never learns
that its caller gave up): the endpoint counts those of the clients in its own process.

Series (see the README for the table)::

    backstage_up                                   1 when the tree answered this scrape
    backstage_commands_total{aggregate,command,outcome}   ok | rejected | failed | timeout
    backstage_command_duration_seconds{aggregate,command} histogram, in the aggregate actor
    backstage_appends_total, backstage_events_appended_total
    backstage_commit_batch_size                    histogram: appends per commit
    backstage_subscriber_position / _lag_events / _failures / _parked_events {subscriber,kind}
    backstage_restarts_total{kind}
    backstage_aggregates_live, backstage_aggregates_passivated_total
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import supervisors

from . import telemetry
from ._security import RefusalLog

__all__ = [
    "MAX_CONNECTIONS",
    "READ_TIMEOUT",
    "MetricsServer",
    "TimeoutCounter",
    "TreeCollector",
    "owner_lookup",
    "serve",
]

SUBSCRIBER_KINDS = ("handler", "projection", "process_manager")


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class TimeoutCounter:
    """Counts the :class:`DispatchTimeout` answers of the clients in this process, by command
    (a telemetry handler: the ``timeout`` event)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(
        self, event: str, measurements: dict[str, float], metadata: dict[str, Any]
    ) -> None:
        if event == "timeout":
            with self._lock:
                name = str(metadata.get("command"))
                self.counts[name] = self.counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    histogram: dict[str, Any],
    bounds: tuple[float, ...],
) -> None:
    """Add one histogram (non-cumulative bucket counts, as the actors keep them)."""
    cumulative, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), histogram["buckets"], strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    family.add_metric(labels, buckets, histogram["sum"])


class TreeCollector(Collector):
    """Metric families from ``tree()`` (a callable returning the supervision tree as nested
    dicts), asked on every scrape; ``command_owner`` names the aggregate type of a command class
    name (for client timeouts); ``timeouts`` counts this process's client timeouts."""

    def __init__(
        self,
        tree: Callable[[], dict[str, Any]],
        command_owner: Callable[[str], str] = lambda name: "",
        timeouts: TimeoutCounter | None = None,
    ) -> None:
        self.tree = tree
        self.command_owner = command_owner
        self.timeouts = timeouts
        self._lock = threading.Lock()  # one tree walk at a time (the client is shared)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("backstage_up", "1 when the supervision tree answered this scrape")
        try:
            with self._lock:
                root = self.tree()
        except Exception as exc:  # the system is gone or does not answer: say so, not 500
            log().warning("metrics: the tree does not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        nodes = list(supervisors.walk(root))
        yield from self._commands(nodes)
        yield from self._subscribers(nodes)
        yield from self._supervision(nodes)

    def _commands(self, nodes: list[dict[str, Any]]) -> Iterator[Metric]:
        commands = CounterMetricFamily(
            "backstage_commands",
            "Commands answered, by aggregate type, command type and outcome",
            labels=["aggregate", "command", "outcome"],
        )
        durations = HistogramMetricFamily(
            "backstage_command_duration_seconds",
            "Time from an aggregate taking a command to its answer leaving",
            labels=["aggregate", "command"],
        )
        appends = CounterMetricFamily("backstage_appends", "Appends committed (one per command)")
        events = CounterMetricFamily("backstage_events_appended", "Events appended")
        batches = HistogramMetricFamily(
            "backstage_commit_batch_size", "Appends per commit (group commit when more than one)"
        )
        total = telemetry.CommandMeter()
        for node in nodes:
            if node.get("kind") == "router":
                for aggregate, summary in sorted(node.get("commands", {}).items()):
                    total.add(summary)
                    for command, entry in sorted(summary["commands"].items()):
                        for outcome, count in sorted(entry["outcomes"].items()):
                            commands.add_metric([aggregate, command, outcome], count)
                        _histogram(
                            durations,
                            [aggregate, command],
                            entry["latency"],
                            telemetry.LATENCY_BUCKETS,
                        )
            elif node.get("kind") == "shard" and "writer" in node:
                total.add({"batch_sizes": node["writer"]["batch_sizes"]})
        for command, count in sorted((self.timeouts.snapshot() if self.timeouts else {}).items()):
            commands.add_metric([self.command_owner(command), command, "timeout"], count)
        appends.add_metric([], total.appends)
        events.add_metric([], total.events)
        _histogram(batches, [], total.batches, telemetry.BATCH_BUCKETS)
        yield from (commands, durations, appends, events, batches)

    def _subscribers(self, nodes: list[dict[str, Any]]) -> Iterator[Metric]:
        labels = ["subscriber", "kind"]
        families = {
            "position": GaugeMetricFamily(
                "backstage_subscriber_position", "Last position processed", labels=labels
            ),
            "lag": GaugeMetricFamily(
                "backstage_subscriber_lag_events",
                "Events stored but not yet processed",
                labels=labels,
            ),
            "failures": GaugeMetricFamily(
                "backstage_subscriber_failures",
                "Failures of the event the subscriber is on (retries so far)",
                labels=labels,
            ),
            "parked": GaugeMetricFamily(
                "backstage_subscriber_parked_events", "Events parked as dead letters", labels=labels
            ),
        }
        for node in nodes:
            if node.get("kind") in SUBSCRIBER_KINDS:
                for key, family in families.items():
                    value = node.get(key)
                    if isinstance(value, (int, float)):
                        family.add_metric([node["name"], node["kind"]], value)
        yield from families.values()

    def _supervision(self, nodes: list[dict[str, Any]]) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "backstage_restarts",
            "Restarts by the kind of actor restarted (aggregates: all the router knows)",
            labels=["kind"],
        )
        by_kind: dict[str, int] = {}
        live = GaugeMetricFamily("backstage_aggregates_live", "Live aggregates (all shards)")
        passivated = CounterMetricFamily(
            "backstage_aggregates_passivated", "Aggregates dropped for idleness or the cap"
        )
        for node in nodes:
            kind = str(node.get("kind", "?"))
            if kind == "router":
                by_kind["aggregate"] = by_kind.get("aggregate", 0) + int(
                    node.get("aggregate_restarts", 0)
                )
                live.add_metric([], node.get("live", 0))
                passivated.add_metric([], node.get("passivated", 0))
            if kind != "aggregate":  # (the shards' windows of them: counted above)
                by_kind[kind] = by_kind.get(kind, 0) + int(node.get("restarts", 0))
        for kind, count in sorted(by_kind.items()):
            restarts.add_metric([kind], count)
        yield from (restarts, live, passivated)


# The endpoint answers anyone who reaches it (unauthenticated by design: bound to 127.0.0.1
# unless told otherwise). Each connection costs a descriptor and a thread while it is open: at
# most MAX_CONNECTIONS are served at once (the next ones are closed at once, refusals logged at
# a bounded rate), and a client has READ_TIMEOUT seconds in all to send its request, then
# WRITE_TIMEOUT seconds per send of the answer. Before, a flood of idle connections held a
# descriptor and a thread each, for ever: the process hosting the endpoint (the metrics actor's,
# or in-process the application's own) ran out of descriptors. A scrape is one short request.
MAX_CONNECTIONS = 16
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, read before a deadline: a client sending a byte now and then
    cannot hold its connection (a timeout per read would let it)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {READ_TIMEOUT}s")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _LogStream(io.TextIOBase):
    """Where wsgiref writes a failed answer's traceback: the log (at debug), not stderr."""

    def write(self, text: str) -> int:
        if text.strip():
            log().debug("metrics: %s", text.rstrip())
        return len(text)


class _Handler(WSGIRequestHandler):
    """One request per connection, read within READ_TIMEOUT; no access log."""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # (socketserver's reader, which knows no deadline)
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, time.monotonic() + READ_TIMEOUT)
        )

    def parse_request(self) -> bool:
        complete = bool(super().parse_request())
        self.connection.settimeout(WRITE_TIMEOUT)  # (the request is in: now the answer)
        return complete

    def get_stderr(self) -> Any:
        return _LogStream()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``max_connections`` of them at once."""

    daemon_threads = True
    block_on_close = False  # (close() does not wait for a slow client)
    request_queue_size = 64  # (a burst of scrapes is not dropped by the kernel)

    def __init__(self, *args: Any, max_connections: int = MAX_CONNECTIONS, **kwargs: Any) -> None:
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refusals = RefusalLog(__name__)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refusals.refused(
                f"a connection to the metrics endpoint beyond {self.max_connections} at once",
                client_address,
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread for it (the process is out of them): let it go
            self.slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.refusals.refused("a connection that failed or sent no request in time", client_address)


def _server_class(host: str, port: int) -> tuple[type[_Server], str]:
    """The server class for ``host``'s address family (IPv6 too), and the address to bind."""
    family, *_, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return type("MetricsHTTPServer", (_Server,), {"address_family": family}), str(address[0])


class MetricsServer:
    """``/metrics`` on ``host:port`` in a daemon thread, for ``collector`` alone."""

    def __init__(
        self,
        collector: Collector,
        port: int,
        host: str = "127.0.0.1",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        server_class, address = _server_class(host, port)
        self._server = make_server(
            address, port, make_wsgi_app(self.registry), server_class, handler_class=_Handler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="backstage-metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = host, int(self._server.server_address[1])
        self._on_close = on_close

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(system: Any, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``/metrics`` for a :class:`RunningSystem` from this process (its client is
    thread-safe); the server also counts this process's client timeouts."""
    counter = TimeoutCounter()
    collector = TreeCollector(system.tree, owner_lookup(system.app.router), counter)
    server = MetricsServer(collector, port, host, on_close=lambda: telemetry.detach(counter))
    telemetry.attach(counter)
    return server


def owner_lookup(router: Any) -> Callable[[str], str]:
    """Command class name -> the name of the aggregate type it is routed to."""
    owners = {cls.__name__: route.aggregate.__name__ for cls, route in router.routes.items()}
    return lambda name: owners.get(name, "")
