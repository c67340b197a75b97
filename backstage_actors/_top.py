"""``backstage top``: a live full-screen view of a running daemon, on ``rich``.

Every second it asks the daemon for its supervision tree (one walk, as ``backstage tree`` does:
the router reports its aggregates without asking each of them) and draws:

* the tree, coloured by status, with restart counts; a node whose restarts went up is
  highlighted for :data:`HIGHLIGHT_FOR` seconds;
* live and passivated aggregates;
* commands per second and latency percentiles per aggregate type, from the differences between
  two samples of the router's counters and histograms (the percentiles are those of the last
  interval's commands, interpolated within histogram buckets as Prometheus does);
* each subscriber's position, lag, failures and parked events.

Keys are read with the terminal in cbreak mode (no echo, no line buffering, Ctrl-C still
works): ``q`` quits. No mouse, nothing but ANSI sequences: it works over ssh. When stdout is not
a terminal it prints one plain snapshot (two samples a second apart, for the rates). If the
daemon goes away the view says so and keeps trying to reach it again.

A part of the tree that does not answer (a process stopped by a signal, wedged) makes a sample
wait out the tree's timeout (5 s): the samples are taken by a thread of their own, so that the
view keeps being drawn (saying how long it has been asking) and ``q`` quits at once meanwhile;
the header then says ``degraded`` and names each part that does not answer, as ``status`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

import supervisors

from . import _daemon, telemetry
from ._cli_support import overall_status, silent_part, silent_parts
from .errors import BackstageError, SystemNotRunning

__all__ = ["HIGHLIGHT_FOR", "Sample", "TopView", "run"]

HIGHLIGHT_FOR = 15.0  # seconds a node stays highlighted after one of its restarts
MAX_AGGREGATES = 12  # aggregate nodes drawn under the router (recent restarts first)
STATUS_STYLES = {
    "running": "green",
    "starting": "cyan",
    "restarting": "yellow",
    "exiting": "yellow",
    "stopping": "yellow",
    "stopped": "red",
    "unresponsive": "bold red",
}
SUBSCRIBER_KINDS = ("handler", "projection", "process_manager")
QUANTILES = (0.5, 0.95, 0.99)


class Sample:
    """One tree, when it was taken, and what follows from it."""

    def __init__(self, tree: dict[str, Any], taken: float) -> None:
        self.tree = tree
        self.taken = taken
        self.nodes = list(supervisors.walk(tree))
        self.router = next((n for n in self.nodes if n.get("kind") == "router"), {})
        self.store = next((n for n in self.nodes if n.get("kind") == "store"), {})
        self.silent = silent_parts(self.nodes)  # (as `status` finds them)

    @property
    def status(self) -> str:
        return overall_status(str(self.tree.get("status")), self.silent)

    def per_aggregate(self) -> dict[str, telemetry.CommandMeter]:
        """Commands of every type merged per aggregate type (one row each in the view)."""
        merged: dict[str, telemetry.CommandMeter] = {}
        for aggregate, summary in self.router.get("commands", {}).items():
            meter = merged[aggregate] = telemetry.CommandMeter()
            for entry in summary.get("commands", {}).values():
                meter.add({"commands": {"all": entry}})
        return merged


def _paths(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    path = f"{prefix}/{node['name']}"
    yield path, node
    for child in node.get("children", []):
        yield from _paths(child, path)


class TopView:
    """What the view remembers between samples: the last one, and recent restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.previous: Sample | None = None
        self.current: Sample | None = None
        self.restarts: dict[str, int] = {}
        self.highlight_until: dict[str, float] = {}
        self.down_since: float | None = None
        self.problem = ""

    def update(self, tree: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.previous, self.current = self.current, Sample(tree, now)
        self.down_since = None
        for path, node in _paths(tree):
            count = int(node.get("restarts", 0))
            if count > self.restarts.get(path, count):
                self.highlight_until[path] = now + HIGHLIGHT_FOR
            self.restarts[path] = count
        for path, until in list(self.highlight_until.items()):
            if until < now:
                del self.highlight_until[path]

    def down(self, problem: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.down_since is None:
            self.down_since = now
        self.problem = problem

    # -- rendering --------------------------------------------------------------------------

    def render(self, now: float | None = None, asking_since: float | None = None) -> RenderableType:
        """The view; ``asking_since``: when the sample still awaited was asked for."""
        now = time.monotonic() if now is None else now
        if self.down_since is not None or self.current is None:
            if self.current is None and self.down_since is None:  # (the first sample)
                waited = now - (asking_since or now)
                return Text(f"asking the daemon on port {self.port} ({waited:.0f}s) - q quits")
            waited = now - (self.down_since or now)
            return Panel(
                Text.assemble(
                    (f"no daemon answers on port {self.port}", "bold red"),
                    f"\n{self.problem}\nwaiting for it to come back ({waited:.0f}s) - q quits",
                ),
                title="backstage top",
            )
        sample = self.current
        return Group(
            self._header(sample),
            *self._silent(sample, now, asking_since),
            self._tree(sample, now),
            self._commands(sample),
            self._subscribers(sample),
        )

    def _header(self, sample: Sample) -> RenderableType:
        root, router, store = sample.tree, sample.router, sample.store
        restarts = int(router.get("aggregate_restarts", 0)) + sum(
            int(n.get("restarts", 0)) for n in sample.nodes if n.get("kind") != "aggregate"
        )
        status = sample.status
        return Text.assemble(
            (f"{root['name']}", "bold"),
            " ",
            (status, "bold red" if status == "degraded" else STATUS_STYLES.get(status, "")),
            f"  port {self.port}  position {store.get('last_position', '?')}",
            "  aggregates: ",
            # ("?" while the router does not answer: not 0)
            (f"{router.get('live', '?')} live", "bold"),
            f" (cap {router.get('max_live', '?')}), {router.get('passivated', '?')} passivated",
            f"  restarts {restarts}",
            "   q quits",
        )

    def _silent(
        self, sample: Sample, now: float, asking_since: float | None
    ) -> list[RenderableType]:
        """A line per part that does not answer, and how long the sample under way has waited
        (when more than a refresh: a part that does not answer makes it wait the tree's 5 s)."""
        lines: list[RenderableType] = [
            Text(f"not answering: {silent_part(n, why=True)}", "bold red") for n in sample.silent
        ]
        if asking_since is not None and now - asking_since >= 1.0:
            lines.append(Text(f"asking the tree again ({now - asking_since:.0f}s)", "dim"))
        return lines

    def _label(self, node: dict[str, Any], path: str, now: float) -> Text:
        status = str(node.get("status", "?"))
        label = Text.assemble(
            (node["name"], "bold"),
            f" [{node.get('kind', '?')}] ",
            (status, STATUS_STYLES.get(status, "")),
        )
        details = [
            f"{key} {node[key]}"
            for key in ("live", "passivated", "position", "lag", "parked")
            if key in node
        ]
        if details:
            label.append("  " + "  ".join(details), "dim")
        restarts = int(node.get("restarts", 0))
        if path in self.highlight_until:
            label.append(f"  restarts {restarts} (restarted just now)", "bold black on yellow")
        elif restarts:
            label.append(f"  restarts {restarts}", "yellow")
        if node.get("last_failure") and path in self.highlight_until:
            label.append(f"  {str(node['last_failure'])[:80]}", "red")
        return label

    def _tree(self, sample: Sample, now: float) -> RenderableType:
        def grow(branch: Tree, node: dict[str, Any], path: str) -> None:
            children = node.get("children", [])
            if node.get("kind") == "shard":
                hot = [c for c in children if f"{path}/{c['name']}" in self.highlight_until]
                children = hot + [c for c in children if c not in hot][: MAX_AGGREGATES - len(hot)]
                hidden = int(node.get("live", 0)) - len(children)
            else:
                hidden = 0
            for child in children:
                child_path = f"{path}/{child['name']}"
                grow(branch.add(self._label(child, child_path, now)), child, child_path)
            if hidden > 0:
                branch.add(Text(f"... {hidden} more live aggregates", "dim"))

        root = sample.tree
        top = Tree(self._label(root, f"/{root['name']}", now))
        grow(top, root, f"/{root['name']}")
        return Panel(top, title="supervision tree")

    def command_rows(self, sample: Sample) -> list[dict[str, Any]]:
        """Per aggregate type: commands per second since the previous sample, outcomes, and
        latency quantiles (seconds) of the commands answered since then."""
        rows = []
        before = self.previous.per_aggregate() if self.previous else {}
        elapsed = sample.taken - self.previous.taken if self.previous else 0.0
        for aggregate, meter in sorted(sample.per_aggregate().items()):
            entry = meter.commands.get("all", {"outcomes": {}, "latency": {"buckets": []}})
            counts = list(entry["latency"]["buckets"])
            old = before.get(aggregate)
            old_entry = old.commands.get("all") if old else None
            if old_entry is not None:
                counts = [
                    a - b for a, b in zip(counts, old_entry["latency"]["buckets"], strict=True)
                ]
            rows.append(
                {
                    "aggregate": aggregate,
                    "per_second": sum(counts) / elapsed if elapsed > 0 else None,
                    "outcomes": dict(entry["outcomes"]),
                    "latency": {
                        f"p{q * 100:g}": telemetry.histogram_quantile(
                            q, counts, telemetry.LATENCY_BUCKETS
                        )
                        for q in QUANTILES
                    },
                }
            )
        return rows

    def snapshot(self) -> dict[str, Any]:
        """The last sample as plain data (``top --json``)."""
        sample = self.current
        if sample is None:
            return {"port": self.port, "up": False, "problem": self.problem}
        return {
            "port": self.port,
            "up": True,
            "status": sample.status,
            "not_answering": sample.silent,
            "tree": sample.tree,
            "commands": self.command_rows(sample),
        }

    def _commands(self, sample: Sample) -> RenderableType:
        table = Table(title="commands", expand=False, title_justify="left")
        for column in ("aggregate", "per s", "ok", "rejected", "failed"):
            table.add_column(column, justify="left" if column == "aggregate" else "right")
        for q in QUANTILES:
            table.add_column(f"p{q * 100:g} ms", justify="right")
        for row in self.command_rows(sample):
            outcomes = row["outcomes"]
            rate = row["per_second"]
            table.add_row(
                row["aggregate"],
                "-" if rate is None else f"{rate:,.1f}",
                str(outcomes.get("ok", 0)),
                str(outcomes.get("rejected", 0)),
                Text(str(outcomes.get("failed", 0)), "red" if outcomes.get("failed") else ""),
                *("-" if v is None else f"{v * 1000:.2f}" for v in row["latency"].values()),
            )
        if not table.row_count:
            table.add_row("(no commands yet)", *[""] * (len(table.columns) - 1))
        return table

    def _subscribers(self, sample: Sample) -> RenderableType:
        table = Table(title="subscribers", expand=False, title_justify="left")
        for column in ("name", "kind", "state", "position", "lag", "failures", "parked"):
            table.add_column(
                column, justify="left" if column in ("name", "kind", "state") else "right"
            )
        for node in sample.nodes:
            if node.get("kind") not in SUBSCRIBER_KINDS:
                continue
            state = str(node.get("state") or node.get("status"))
            lag, failures, parked = (node.get(k, 0) or 0 for k in ("lag", "failures", "parked"))
            table.add_row(
                node["name"],
                str(node["kind"]),
                Text(state, STATUS_STYLES.get(state, "")),
                str(node.get("position", "-")),
                Text(str(lag), "yellow" if lag else ""),
                Text(str(failures), "red" if failures else ""),
                Text(str(parked), "red" if parked else ""),
            )
        if not table.row_count:
            bus_silent = any(n.get("kind") == "events" for n in sample.silent)
            table.add_row(
                "(the event bus does not answer)" if bus_silent else "(no subscribers)",
                *[""] * 6,
            )
        return table


class _Daemon:
    """The attached daemon, attached again after it went away."""

    def __init__(self, port: int, host: str = _daemon.LOCAL) -> None:
        self.port = port
        self.host = host
        self.system: Any = None

    def fetch(self) -> dict[str, Any] | str:
        """The daemon's tree, or what went wrong (and it is attached afresh next time)."""
        try:
            if self.system is None:
                _, self.system = _daemon.attach(self.port, host=self.host)
            tree: dict[str, Any] = self.system.tree(timeout=5.0)
            return tree
        except BackstageError as exc:
            self.release()
            return str(exc)

    def sample(self, view: TopView) -> bool:
        """Ask the daemon for its tree; on failure note it."""
        return _note(view, self.fetch())

    def release(self) -> None:
        if self.system is not None:
            with contextlib.suppress(Exception):
                self.system.stop()  # (an attached handle only lets go)
            self.system = None


def _note(view: TopView, fetched: dict[str, Any] | str, now: float | None = None) -> bool:
    if isinstance(fetched, str):
        view.down(fetched, now)
        return False
    view.update(fetched, now)
    return True


class _Asking(threading.Thread):
    """One sample taken by a thread of its own (the view's thread keeps drawing and reading
    keys while a part that does not answer holds it for the tree's timeout)."""

    def __init__(self, daemon: _Daemon) -> None:
        super().__init__(name="backstage-top-sample", daemon=True)
        self.source = daemon
        self.since = time.monotonic()
        self.fetched: dict[str, Any] | str = ""
        self.taken = self.since
        self.start()

    def run(self) -> None:
        try:
            self.fetched = self.source.fetch()
        except Exception as exc:  # (a thread's traceback would be drawn over the view)
            self.source.release()
            self.fetched = f"{type(exc).__name__}: {exc}"
        self.taken = time.monotonic()


@contextlib.contextmanager
def _keys(fd: int) -> Iterator[None]:
    """The terminal in cbreak mode (keys arrive one at a time, unechoed) for the block."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int, wait: float) -> bool:
    """Wait up to ``wait`` seconds for a key; True when it is ``q``."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            return True
    return False


def run(port: int, interval: float = 1.0, as_json: bool = False, host: str = _daemon.LOCAL) -> None:
    """The ``top`` verb: live when stdin and stdout are terminals, else one plain snapshot
    (as JSON with ``as_json``; raises :class:`SystemNotRunning` then if no daemon answers)."""
    view = TopView(port)
    daemon = _Daemon(port, host)
    try:
        if as_json or not (sys.stdout.isatty() and sys.stdin.isatty()):
            if not daemon.sample(view):
                raise SystemNotRunning(view.problem)
            time.sleep(interval)  # a second sample: rates are differences between two
            daemon.sample(view)
            if as_json:
                print(json.dumps(view.snapshot(), default=str))
                return
            Console(no_color=True, highlight=False, width=120).print(view.render())
            return
        fd = sys.stdin.fileno()
        live = Live(console=Console(highlight=False), screen=True, auto_refresh=False)
        asking: _Asking | None = None
        try:
            with _keys(fd), live, contextlib.suppress(KeyboardInterrupt):
                asking = _Asking(daemon)
                next_sample, drawn = time.monotonic() + interval, None
                while True:
                    now = time.monotonic()
                    if asking is not None and not asking.is_alive():
                        _note(view, asking.fetched, asking.taken)
                        asking, drawn = None, None  # (a new sample: drawn at once)
                    if asking is None and now >= next_sample:
                        asking, next_sample = _Asking(daemon), now + interval
                    if drawn is None or now - drawn >= interval:
                        since = asking.since if asking is not None else None
                        live.update(view.render(now, since), refresh=True)
                        drawn = now
                    if _quit_pressed(fd, 0.1):
                        return
        finally:
            if asking is not None and asking.is_alive():
                # Its thread holds the handle, waiting on the tree: the handle is let go
                # with this process (an attached handle only lets go).
                daemon.system = None
    finally:
        daemon.release()
