"""What the ``backstage`` verbs share: errors and exit codes, the attached daemons, parsing,
and rendering (``cli.py`` holds the verbs themselves)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import click

import supervisors

from . import _daemon, _serialization
from .command import command_from_data
from .errors import (
    BackstageError,
    ConsistencyTimeout,
    DispatchTimeout,
    InvalidCommand,
    SerializationError,
    StorageError,
    SystemNotRunning,
    UnregisteredCommand,
)
from .store import EventStore, store_kind

EXIT_FAILED, EXIT_INPUT, EXIT_NOT_RUNNING, EXIT_TIMEOUT, EXIT_STORAGE = 1, 2, 3, 4, 5


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr when it is a terminal (nothing otherwise); yields
    ``progress(done, total)`` for the long verbs (copy, export)."""
    show = sys.stderr.isatty()
    with click.progressbar(
        length=1, label=label, file=sys.stderr if show else None, hidden=not show
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield progress


class CliError(click.ClickException):
    """One line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code)


def ensure_directory(path: str) -> None:
    """Create directory ``path`` (and its parents, 0700) if it is missing, or fail saying why."""
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"cannot create the directory {path}: a file of that name is in the way", EXIT_STORAGE)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the directory {path}: {exc.strerror}", EXIT_STORAGE)


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, (DispatchTimeout, ConsistencyTimeout, TimeoutError)):
        return EXIT_TIMEOUT
    if isinstance(error, _daemon.AdminNotAnswering):  # (it runs: it does not answer in time)
        return EXIT_TIMEOUT
    if isinstance(error, SystemNotRunning):
        return EXIT_NOT_RUNNING
    if isinstance(error, StorageError):
        return EXIT_STORAGE
    if isinstance(error, (SerializationError, InvalidCommand, UnregisteredCommand)):
        return EXIT_INPUT  # the input cannot be a command: nothing was sent
    return EXIT_FAILED


host_option = click.option(
    "--host",
    default=_daemon.LOCAL,
    show_default=True,
    help="Address of the daemon's admin (any member's, in a cluster).",
)


class Session:
    """What one invocation (or one shell) keeps: the attached daemons."""

    def __init__(self) -> None:
        self.attached: dict[tuple[str, int], tuple[Any, Any]] = {}
        # (host, port) -> the daemon attached to there, as its state file named it
        self.daemons: dict[tuple[str, int], Any] = {}

    def system(
        self, port: int, need_app: bool = True, host: str = _daemon.LOCAL
    ) -> tuple[Any, Any]:
        """The daemon on ``host:port``; without ``need_app`` its module need not import here.
        A daemon stopped and started again since (a shell outlives it) is attached afresh."""
        try:
            return self.connect(port, need_app, host)
        except BackstageError as exc:
            fail(str(exc), exit_code_for(exc))

    def connect(
        self, port: int, need_app: bool = True, host: str = _daemon.LOCAL, patience: float = 5.0
    ) -> tuple[Any, Any]:
        """:meth:`system`, raising what ``_daemon.attach`` raises (its admin is given
        ``patience`` seconds to answer) instead of failing the verb."""
        known = self.attached.get((host, port))
        now = _identity(_daemon.read_state(port, host))
        if known is not None and self.daemons.get((host, port)) != now:
            self.forget(port, host)
            known = None
        if known is None or (need_app and getattr(known[0], "stand_in", False)):
            self.attached[host, port] = _daemon.attach(port, need_app, host, patience)
            self.daemons[host, port] = now
        return self.attached[host, port]

    def forget(self, port: int, host: str = _daemon.LOCAL) -> None:
        known = self.attached.pop((host, port), None)
        self.daemons.pop((host, port), None)
        if known is not None:
            with contextlib.suppress(Exception):
                known[1].stop()  # (an attached handle only lets go)


def _identity(state: Any) -> Any:
    """Which daemon a state file names: its admin and when it started (None: no state)."""
    return (state.get("admin_pid"), state.get("started_at")) if state else None


def resolve_command(app: Any, name: str) -> type:
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = __import__(module_name, fromlist=[class_name])
            cls = getattr(module, class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            fail(f"unknown command {name}: {exc}", EXIT_INPUT)
        if not isinstance(cls, type):
            fail(f"command {name} is not a class", EXIT_INPUT)
        if app.router.command_class(f"{cls.__module__}:{cls.__qualname__}") is None:
            fail(f"command {name} is not routed by {app.name}", EXIT_INPUT)
        return cls
    cls = app.router.command_class(name)
    if cls is None:
        known = ", ".join(sorted(c.__name__ for c in app.router.routes))
        fail(f"unknown command {name!r}; {app.name} knows: {known}", EXIT_INPUT)
    return cls


def parse_json(text: str, where: str = "JSON") -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        fail(f"bad {where}: nested too deeply", EXIT_INPUT)
    except json.JSONDecodeError as exc:
        fail(
            f"bad {where}: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            EXIT_INPUT,
        )
    except ValueError as exc:  # an integer of more than 4,300 digits
        fail(f"bad {where}: {exc}", EXIT_INPUT)


def event_line(recorded: Any) -> str:
    data = json.dumps(_serialization.unstructure(recorded.data), ensure_ascii=False)
    return f"  v{recorded.version} @{recorded.position} {recorded.type} {data}"


def _read_lines(app: Any, path: str) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """``(line number, command or None, its command id or None, error or None)`` for each
    non-empty line."""
    # Bytes, decoded line by line: a text stream decodes ahead in blocks, so one bad byte would
    # lose the good lines before it and be reported on the wrong line.
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")  # a JSON error's column is on this line
            except UnicodeDecodeError as exc:
                yield number, None, None, f"invalid UTF-8: {exc.reason} at byte {exc.start + 1}"
                continue
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or "command" not in entry:
                    raise ValueError('expected {"command": NAME, "data": {...}}')
                cls = app.router.command_class(str(entry["command"]))
                if cls is None:
                    raise ValueError(f"unknown command {entry['command']!r}")
                given = entry.get("command_id")
                if given is not None and (not isinstance(given, str) or not given.strip()):
                    raise ValueError("command_id must be a non-empty string")
                yield number, command_from_data(cls, entry.get("data", {})), given, None
            except json.JSONDecodeError as exc:
                yield number, None, None, f"bad JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                yield number, None, None, "bad JSON: nested too deeply"
            except (ValueError, BackstageError) as exc:
                yield number, None, None, str(exc)


def file_key(path: str) -> str:
    """What names a file's commands: a hash of its content. The same file sent again (after a
    timeout, say) names the same commands, so nothing of it is applied twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


# How send --file sorts each line's outcome (``unknown``: no answer in time; sending the same
# file again settles it: what was stored is answered, not applied again).
OUTCOMES = ("accepted", "rejected", "invalid", "unknown")


def outcome_of(result: Any) -> str:
    if not isinstance(result, BaseException):
        return "accepted"
    if isinstance(result, (DispatchTimeout, SystemNotRunning)):
        return "unknown"
    if isinstance(result, (SerializationError, InvalidCommand, UnregisteredCommand)):
        return "invalid"
    return "rejected"


def send_file(
    session: Session,
    path: str,
    port: int,
    batch: int,
    timeout: float | None,
    as_json: bool,
    host: str = _daemon.LOCAL,
) -> None:
    app, system = session.system(port, host=host)
    if not os.path.exists(path):
        fail(f"no such file: {path}", EXIT_INPUT)
    key = file_key(path)
    with open(path, "rb") as counting:
        total = sum(1 for line in counting if line.strip())
    found: dict[str, list[tuple[int, str]]] = {name: [] for name in OUTCOMES}
    accepted = 0
    started = time.perf_counter()
    pending: list[tuple[int, Any, str]] = []

    def flush() -> None:
        nonlocal accepted
        if not pending:
            return
        wait = timeout if timeout is not None else max(10.0, len(pending) / 100)
        results = system.dispatch_many(
            [c for _, c, _ in pending],
            metadata=[{"command_id": i} for _, _, i in pending],
            batch_size=batch,
            timeout=wait,
        )
        for (number, _, _), result in zip(pending, results, strict=True):
            outcome = outcome_of(result)
            if outcome == "accepted":
                accepted += 1
            else:
                found[outcome].append((number, str(result)))
        bar.update(len(pending))
        pending.clear()

    with click.progressbar(length=total, label="sending", file=sys.stderr) as bar:
        for number, command, command_id, error in _read_lines(app, path):
            if error is not None:
                found["invalid"].append((number, error))
                bar.update(1)
                continue
            pending.append((number, command, command_id or f"{key}:{number}"))
            if len(pending) >= batch * 4:
                flush()
        flush()
    elapsed = time.perf_counter() - started
    _report_file(found, accepted, elapsed, as_json)


def _report_file(
    found: dict[str, list[tuple[int, str]]], accepted: int, elapsed: float, as_json: bool
) -> None:
    done = accepted + sum(len(lines) for lines in found.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    for lines in found.values():
        lines.sort()  # refusals come back after the parse errors of later lines
    if as_json:
        report: dict[str, Any] = {"accepted": accepted}
        for name in OUTCOMES[1:]:
            report[name] = [{"line": n, "reason": r} for n, r in found[name]]
        report.update(seconds=round(elapsed, 3), commands_per_second=round(rate, 1))
        click.echo(json.dumps(report))
    else:
        counts = ", ".join(f"{name} {len(found[name])}" for name in OUTCOMES[1:])
        click.echo(f"accepted {accepted}, {counts} in {elapsed:.2f}s ({rate:,.0f} commands/s)")
        shown = 0
        for name in OUTCOMES[1:]:
            for number, reason in found[name]:
                if shown < 50:
                    click.echo(f"  line {number}: {name}: {reason}")
                shown += 1
        if shown > 50:
            click.echo(f"  ... and {shown - 50} more (use --json for all)")
        if found["unknown"]:
            click.echo(
                f"  {len(found['unknown'])} without an answer: send the same file again to "
                "settle them (what was stored is not applied twice)"
            )
    if found["unknown"]:
        sys.exit(EXIT_TIMEOUT)
    if found["rejected"] or found["invalid"]:
        sys.exit(EXIT_FAILED)


# -- looking inside -------------------------------------------------------------------------

STATUS_COLOURS = {
    "running": "green",
    "stopped": "red",
    "restarting": "yellow",
    "unresponsive": "red",
}


def render_tree(node: dict[str, Any], depth: int = 0) -> Iterator[str]:
    status = node.get("status", "?")
    state = node.get("state")
    if state and state != "running":
        status = f"{status}/{state}"
    details = []
    for key in ("live", "max_live", "passivated", "position", "lag", "failures", "parked"):
        if key in node and (key not in ("failures", "parked") or node[key]):
            details.append(f"{key}={node[key]}")
    if node.get("restarts"):
        details.append(click.style(f"restarts={node['restarts']}", fg="yellow"))
    colour = STATUS_COLOURS.get(str(node.get("status")), "white")
    yield (
        f"{'  ' * depth}{click.style(node['name'], bold=True)} "
        f"[{node.get('kind', '?')}] {click.style(status, fg=colour)}"
        f"{' ' + ' '.join(details) if details else ''}"
    )
    for child in node.get("children", []):
        yield from render_tree(child, depth + 1)


SUBSCRIBER_FIELDS = (
    "name",
    "kind",
    "status",
    "state",
    "position",
    "lag",
    "failures",
    "parked",
    "restarts",
)


def collect_status(system: Any, node: dict[str, Any] | None = None) -> dict[str, Any]:
    """``status``'s report of ``system`` (of the tree ``node``, a cluster member's, if given:
    the store's figures are the same from every member)."""
    node = system.tree() if node is None else node
    nodes = list(supervisors.walk(node))
    router = next((n for n in nodes if n.get("kind") == "router"), {})
    subscribers = [
        n for n in nodes if n.get("kind") in ("handler", "projection", "process_manager")
    ]
    silent = silent_parts(nodes)
    return {
        "application": node["name"],
        "status": overall_status(node["status"], silent),
        "not_answering": silent,
        "last_position": system.store.last_position(),
        "aggregates": {k: router.get(k) for k in ("live", "max_live", "passivated")},
        "restarts": sum(int(n.get("restarts", 0)) for n in nodes),
        "subscribers": [
            {
                **{key: n.get(key) for key in SUBSCRIBER_FIELDS},
                "handle": n.get("telemetry", {}).get("handle"),  # count, mean_ms, max_ms
            }
            for n in subscribers
        ],
        "dead_letters": len(system.store.dead_letters()),
    }


def silent_parts(nodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parts of a tree that do not answer: a process stopped by a signal or wedged shows as
    "unresponsive", without what is under it (``status``'s ``not_answering``, ``top``'s)."""
    return [
        {"name": n["name"], "kind": n.get("kind"), "pid": n.get("pid")}
        for n in nodes
        if n.get("status") == "unresponsive"
    ]


def overall_status(root_status: str, silent: list[dict[str, Any]]) -> str:
    """The root's status, or ``degraded`` while it runs and a part does not answer."""
    return "degraded" if silent and root_status == "running" else root_status


def silent_part(part: dict[str, Any], why: bool = False) -> str:
    """One part that does not answer, as the CLI names it (``why``: and what is not shown)."""
    return (
        f"{part['name']} [{part.get('kind') or '?'}]"
        + (f" pid {part['pid']}" if part.get("pid") else "")
        + (" (its subscribers are not shown)" if why and part.get("kind") == "events" else "")
    )


def not_answering(report: dict[str, Any]) -> str:
    """The parts of ``status``'s report that do not answer, on one line."""
    return "; ".join(map(silent_part, report.get("not_answering", ()))) + " not answering"


def status_lines(report: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """``status``'s lines for one system's report: the store's (first and last) and the
    system's own (between; a cluster shows them once per member)."""
    # (None, "?" here, while the router does not answer)
    aggregates = {k: "?" if v is None else v for k, v in report["aggregates"].items()}
    head = [f"{report['application']}: {report['status']}, {report['last_position']} events stored"]
    body = [f"not answering: {silent_part(n, why=True)}" for n in report.get("not_answering", ())]
    body.append(
        f"aggregates: {aggregates['live']} live (cap {aggregates['max_live']}), "
        f"{aggregates['passivated']} passivated; restarts in the tree: {report['restarts']}"
    )
    for sub in report["subscribers"]:
        state = sub["state"] or sub["status"]
        timing = f" handle {sub['handle']['mean_ms']} ms" if sub.get("handle") else ""
        body.append(
            f"  {sub['name']:<20} {sub['kind']:<16} {state:<10} position {sub['position']} "
            f"lag {sub['lag']} failures {sub['failures']} parked {sub['parked']}{timing}"
        )
    tail = []
    if report["dead_letters"]:
        tail.append(f"dead letters: {report['dead_letters']} (backstage dead-letters)")
    return head, body, tail


def open_store(port: int, database: str | None, host: str = _daemon.LOCAL) -> Any:
    if database is None:
        state = _daemon.read_state(port, host)
        if state is None and host != _daemon.LOCAL:  # another machine's: ask it
            state = _daemon.DaemonState(database=_running_database(port, host))
        if state is None:
            where = f"port {port}" if host == _daemon.LOCAL else f"{host}:{port}"
            fail(
                f"no backstage daemon runs on {where}; name the database with --db",
                EXIT_NOT_RUNNING,
            )
        database = state["database"]
    if store_kind(database) == "sqlite" and not os.path.exists(database):
        fail(f"no such database: {database}", EXIT_STORAGE)
    try:
        return EventStore(database)
    except StorageError as exc:
        fail(str(exc), EXIT_STORAGE)


def _running_database(port: int, host: str) -> str:
    """The database of the daemon on ``host:port``, as its running store says."""
    try:
        _, system = _daemon.attach(port, need_app=False, host=host)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))
    try:
        return str(system.settings.database)
    finally:
        system.stop()


def letter_fields(d: Any) -> dict[str, Any]:
    return {
        k: getattr(d, k)
        for k in (
            "id",
            "subscriber",
            "position",
            "stream_id",
            "type",
            "error_type",
            "error",
            "failures",
            "status",
            "parked_at",
        )
    }
