"""The ``backstage`` command: start an application, send it commands, look inside it.

Exit codes: 0 success; 1 the command was refused or failed (rejection, aggregate failure);
2 bad input (usage, JSON, unknown command, fields); 3 no system running (or already running);
4 timeout; 5 storage (the database cannot be opened).

Every verb takes ``--json``: its output is then JSON on stdout, and an error is one JSON object
``{"error": MESSAGE, "code": EXIT_CODE}`` on stderr (instead of the ``error: ...`` line).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from importlib import metadata

import click

from . import _cli_cluster, _cli_history, _copy, _daemon, _serialization, _thespian, _top
from ._cli_support import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_NOT_RUNNING,
    EXIT_STORAGE,
    EXIT_TIMEOUT,
    CliError,
    Session,
    collect_status,
    ensure_directory,
    event_line,
    exit_code_for,
    fail,
    host_option,
    letter_fields,
    not_answering,
    open_store,
    parse_json,
    render_tree,
    resolve_command,
    send_file,
    status_lines,
)
from ._shell import Shell
from ._thespian.convention import is_loopback
from .command import command_from_data
from .errors import (
    AggregateFailed,
    BackstageError,
    CommandRejected,
    StorageError,
    SystemNotRunning,
)
from .store import redact

__all__ = [
    "EXIT_FAILED",
    "EXIT_INPUT",
    "EXIT_NOT_RUNNING",
    "EXIT_STORAGE",
    "EXIT_TIMEOUT",
    "Session",
    "cli",
    "main",
    "run",
]

port_option = click.option(
    "--port",
    type=int,
    default=_daemon.default_port,
    show_default="$BACKSTAGE_PORT or 1900",
    help="Admin port.",
)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="JSON output; errors as JSON on stderr."
)


def version() -> str:
    """``backstage X (Python Y, Thespian Z)``: what a bug report needs."""

    def of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "unknown"

    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"{of('backstage-actors')} (Python {python}, Thespian {of('thespian')})"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version(), "--version", prog_name="backstage", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Backstage: start an event-sourced application, send it commands, inspect its tree."""
    if ctx.obj is None:
        ctx.obj = Session()
    # Like `python -m`: the app's modules are found from here (unless others can write here).
    _daemon.add_import_directory()


# -- start / stop -------------------------------------------------------------------------------


@cli.command()
@click.argument("app")
@click.option(
    "--db",
    "database",
    help="SQLite file of the event store (default: the app's); a missing directory is created.",
)
@port_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface the admin binds to."
)
@click.option("--allow-remote", is_flag=True, help="Required to bind anything but 127.0.0.1.")
@click.option("--log-file", help="Daemon log (default: $BACKSTAGE_HOME/daemon-PORT.log).")
@click.option("--pid-file", help="Admin pid file (default: $BACKSTAGE_HOME/daemon-PORT.pid).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on http://METRICS_HOST:PORT/metrics.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--shards",
    type=click.IntRange(1, 256),
    help="Shard processes hosting the aggregates [default: the app's, else one per core but one].",
)
@click.option(
    "--join",
    metavar="HOST:PORT",
    help="Be a member of the cluster whose leader's admin is there (the leader names itself); "
    "needs a PostgreSQL --db every member reaches.",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(_cli_cluster.ROLES),
    help="What this member hosts, with --join (repeat for both) [default: both].",
)
@json_option
def start(
    app: str,
    database: str | None,
    port: int,
    host: str,
    allow_remote: bool,
    log_file: str | None,
    pid_file: str | None,
    timeout: float,
    metrics_port: int | None,
    metrics_host: str,
    shards: int | None,
    join: str | None,
    roles: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start APP (module:attribute naming an Application) as a daemon; return once it is ready.
    With --join, as a member of a cluster (see ``backstage members``)."""
    if not is_loopback(host) and not allow_remote:  # 127.0.0.0/8 and ::1 stay on this machine
        fail(
            f"binding to {host} exposes the actor system: add --allow-remote if you mean it",
            EXIT_INPUT,
        )
    if not is_loopback(host):
        click.echo(
            f"warning: connections to {host}:{port} are authenticated (the secret in "
            "$BACKSTAGE_HOME) but not encrypted: keep the port on a private network",
            err=True,
        )
    if database and redact(database) != database:  # (its processes keep this command line)
        click.echo(
            "warning: the password in --db stays in the command line of every process of the "
            "daemon, which any user of this host can read (ps): put it in ~/.pgpass or "
            "PGPASSWORD instead",
            err=True,
        )
    try:
        application = _daemon.load_app(app)
    except BackstageError as exc:
        fail(str(exc), EXIT_INPUT)
    if roles and not join:
        fail("--role is for a cluster member: add --join HOST:PORT", EXIT_INPUT)
    with contextlib.ExitStack() as held:
        try:  # one start of this daemon at a time
            held.enter_context(_daemon.start_lock(port, host, timeout))
        except SystemNotRunning as exc:
            fail(str(exc), EXIT_NOT_RUNNING)
        state = _daemon.read_state(port, host)
        if state is not None and _daemon.running(state):
            fail(
                f"{state['app']} already runs on port {port} (admin pid {state['admin_pid']})",
                EXIT_NOT_RUNNING,
            )
        if join:  # before anything starts: a bad store, a leader that is not there
            _cli_cluster.check_join(application, database, host, port, join)
        leftovers = _daemon.kill_leftovers(port, host=host)  # a crashed daemon's orphans
        if leftovers:
            click.echo(
                f"cleaned up {len(leftovers)} leftover processes of a crashed daemon: {leftovers}",
                err=True,
            )
        if _thespian.port_in_use(port, host):
            fail(f"port {port} is already in use by another program", EXIT_NOT_RUNNING)
        if database and "://" not in database:
            ensure_directory(os.path.dirname(os.path.abspath(database)))
        try:
            state = _daemon.start_daemon(
                app,
                port,
                database,
                host,
                log_file,
                pid_file,
                timeout,
                metrics_port,
                metrics_host,
                join=join,
                roles=roles or _cli_cluster.ROLES,
                shards=shards,
            )
        except BackstageError as exc:
            _daemon.kill_leftovers(port, host=host)
            fail(
                str(exc), exit_code_for(exc) if not isinstance(exc, StorageError) else EXIT_STORAGE
            )
        except Exception as exc:
            _daemon.kill_leftovers(port, host=host)
            fail(f"cannot start {app}: {type(exc).__name__}: {exc}")
    if as_json:
        click.echo(json.dumps(dict(state)))
        return
    click.echo(
        f"{state['name']} running on {host}:{port} (admin pid {state['admin_pid']})\n"
        f"  database {redact(state['database'])}\n  log      {state['log_file']}"
        + (f"\n  metrics  http://{metrics_host}:{metrics_port}/metrics" if metrics_port else "")
        + (f"\n  cluster  {_cli_cluster.joined(host, port, join, state)}" if join else "")
    )


# How `backstage stop --timeout T` spends T (a deadline for the whole stop): the last quarter
# of it (at most KILL_RESERVE seconds) is kept to end by signals whatever is left; of the rest,
# DRAIN_SHARE goes to the orderly stop of the tree, and what the drain leaves to Thespian's
# shutdown of the actor system and then to waiting for its processes to exit. SIGKILL is sent
# to whatever outlives all that, even past T: no process of a stopped daemon survives it.
KILL_RESERVE = 5.0
DRAIN_SHARE = 0.7
# Seconds the admin has to answer stop's probe (at most the drain's share of the deadline): one
# that does not (stopped by a signal, or wedged) cannot drain anything, and its processes are
# killed by pid instead, as with --force.
ATTACH_PATIENCE = 5.0


@cli.command()
@port_option
@host_option
@click.option("--force", is_flag=True, help="Kill every process of the daemon instead of draining.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds for the whole stop: the tree drains, the actor system stops, and whatever is "
    "left is killed within them.",
)
@json_option
@click.pass_obj
def stop(
    session: Session, port: int, host: str, force: bool, timeout: float, as_json: bool
) -> None:
    """Stop the daemon: drain, stop the tree in reverse order, then the actor system."""
    if not timeout > 0:  # (NaN too)
        fail(f"--timeout must be a positive number of seconds, not {timeout}", EXIT_INPUT)
    deadline = time.monotonic() + timeout
    reserve = min(KILL_RESERVE, timeout / 4)
    orderly_until = deadline - reserve

    def left(until: float) -> float:
        return max(0.0, until - time.monotonic())

    def drain_budget() -> float:
        return max(0.05, left(orderly_until) * DRAIN_SHARE)

    state = _daemon.read_state(port, host)
    if state is not None and _daemon.admin_alive(state) and not _daemon.root_alive(state):
        force = True  # its application is gone: nothing is left to drain, only processes
    unanswered = ""
    if not force:
        try:  # (the admin answers its probe in milliseconds; a frozen one never does)
            _, system = session.connect(
                port, need_app=False, host=host, patience=min(ATTACH_PATIENCE, drain_budget())
            )
        except _daemon.AdminNotAnswering as exc:
            # Nothing can be drained through it: its processes are ended by pid, as --force does.
            unanswered, force = exc.reason, True
        except BackstageError as exc:
            fail(str(exc), exit_code_for(exc))
    if not force:
        system.owns_system = True  # this stop is meant to end the actor system
        system.shutdown(timeout=drain_budget(), system_deadline=orderly_until)
        session.forget(port, host)
        while _daemon.daemon_processes(port, host) and time.monotonic() < orderly_until:
            time.sleep(0.05)
    killed = _daemon.kill_leftovers(
        port, timeout=max(0.2, min(left(deadline), KILL_RESERVE)), host=host
    )
    if unanswered and not killed:  # (another machine's daemon: its processes are not ours)
        fail(f"{unanswered}: nothing was stopped", EXIT_TIMEOUT)
    if force and not killed and not _daemon.read_state(port, host):
        fail(f"no backstage daemon runs on port {port}", EXIT_NOT_RUNNING)
    _daemon.remove_state(port, host)
    if unanswered:
        click.echo(f"warning: {unanswered}: its processes were killed, not drained", err=True)
    if as_json:
        click.echo(json.dumps({"stopped": True, "killed": killed}))
        return
    click.echo(f"stopped{' (killed ' + str(len(killed)) + ' processes)' if killed else ''}")


# -- send -----------------------------------------------------------------------------------


@cli.command()
@click.argument("command", required=False)
@click.argument("data", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False),
    help='JSON lines: {"command": ..., "data": {...}} (optionally "command_id": ...). Each '
    "command is named after the file's content and its line (or its command_id): sending the "
    "same file again applies nothing twice.",
)
@click.option("--strong", is_flag=True, help="Return once the handlers processed the events.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait for answers [default: 10; with --file, per batch: 10, or 1 per 100].",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Commands per batch with --file.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@port_option
@host_option
@click.pass_obj
def send(
    session: Session,
    command: str | None,
    data: str | None,
    path: str | None,
    strong: bool,
    timeout: float | None,
    batch: int,
    as_json: bool,
    port: int,
    host: str,
) -> None:
    """Send COMMAND (a routed name or module:Class) with DATA (a JSON object)."""
    if timeout is not None and not timeout > 0:  # (NaN too)
        fail(f"--timeout must be a positive number of seconds, not {timeout}", EXIT_INPUT)
    if path:
        send_file(session, path, port, batch, timeout, as_json, host)
        return
    if not command:
        fail("send needs COMMAND and DATA, or --file", EXIT_INPUT)
    app, system = session.system(port, host=host)
    cls = resolve_command(app, command)
    try:
        message = command_from_data(cls, parse_json(data or "{}"))
        result = system.dispatch(
            message, consistency="strong" if strong else "eventual", timeout=timeout or 10.0
        )
    except (CommandRejected, AggregateFailed) as exc:
        fail(str(exc), EXIT_FAILED)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "stream_id": result.stream_id,
                    "version": result.version,
                    "events": [
                        {
                            "type": e.type,
                            "version": e.version,
                            "position": e.position,
                            "data": _serialization.unstructure(e.data),
                        }
                        for e in result.events
                    ],
                }
            )
        )
        return
    click.echo(f"{result.stream_id} is at version {result.version}")
    for recorded in result.events:
        click.echo(event_line(recorded))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@port_option
@host_option
@click.pass_obj
def tree(session: Session, as_json: bool, port: int, host: str) -> None:
    """The live supervision tree (in a cluster: one per member)."""
    app, system = session.system(port, need_app=False, host=host)
    try:
        if _cli_cluster.is_member(system) and _cli_cluster.show_trees(app, system, as_json):
            return
        node = system.tree()
    except BackstageError as exc:
        session.forget(port, host)
        fail(str(exc), exit_code_for(exc))
    if as_json:
        click.echo(json.dumps(node, indent=2))
    else:
        for line in render_tree(node):
            click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@port_option
@host_option
@click.pass_obj
def status(session: Session, as_json: bool, port: int, host: str) -> None:
    """Live aggregates, handler positions and lag, restarts (in a cluster: per member)."""
    app, system = session.system(port, need_app=False, host=host)
    try:
        if _cli_cluster.is_member(system):
            unwell = _cli_cluster.show_status(app, system, as_json)
            if unwell is not None:
                if unwell:
                    fail(f"the cluster is degraded: {'; '.join(unwell)}", EXIT_TIMEOUT)
                return
        report = collect_status(system)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        head, body, tail = status_lines(report)
        for line in [*head, *body, *tail]:
            click.echo(line)
    if report["status"] == "degraded":  # (a health check's exit code: 4, as for an admin)
        fail(f"{report['application']} is degraded: {not_answering(report)}", EXIT_TIMEOUT)


@cli.command("dead-letters")
@click.argument("action", type=click.Choice(["list", "retry"]), default="list")
@click.argument("ids", type=int, nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@port_option
@host_option
@click.pass_obj
def dead_letters(
    session: Session, action: str, ids: tuple[int, ...], as_json: bool, port: int, host: str
) -> None:
    """Parked events: list them, or retry some (IDS) or all of them."""
    if action == "list":
        store = open_store(port, None, host)
        letters = store.dead_letters()
        store.close()
        if as_json:
            click.echo(json.dumps([letter_fields(d) for d in letters], indent=2))
        elif not letters:
            click.echo("no dead letters")
        for d in [] if as_json else letters:
            click.echo(
                f"{d.id:>4} {d.subscriber:<16} @{d.position} {d.type} {d.error_type}: {d.error} (x{d.failures})"
            )
        return
    _, system = session.system(port, need_app=False, host=host)
    try:
        outcome = system.retry_dead_letters(list(ids) or None)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))
    if as_json:
        click.echo(json.dumps({str(letter_id): result for letter_id, result in outcome.items()}))
    for letter_id, result in [] if as_json else outcome.items():
        click.echo(f"{letter_id}: {result}", err=result != "retried")
    if any(result != "retried" for result in outcome.values()):
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("projection")
@port_option
@host_option
@json_option
@click.pass_obj
def rebuild(session: Session, projection: str, port: int, host: str, as_json: bool) -> None:
    """Drop PROJECTION's tables and replay every event into them."""
    app, system = session.system(port, host=host)
    known = [p.subscriber_name() for p in app.projections]
    if projection not in known:
        fail(
            f"unknown projection {projection!r}; {app.name} has: {', '.join(known) or 'none'}",
            EXIT_INPUT,
        )
    with click.progressbar(length=1, label=f"rebuilding {projection}", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        try:
            count = system.rebuild(projection, progress=progress)
        except BackstageError as exc:
            fail(str(exc), exit_code_for(exc))
    if as_json:
        click.echo(json.dumps({"projection": projection, "events": count}))
    else:
        click.echo(f"{projection} rebuilt from {count} events")


@cli.command()
@port_option
@host_option
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
@json_option
def top(port: int, host: str, interval: float, as_json: bool) -> None:
    """A live full-screen view: tree, restarts, commands/s and latency, subscribers (q quits).
    Without a terminal, or with --json, one snapshot (two samples ``interval`` apart)."""
    try:
        _top.run(port, interval, as_json, host)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))


@cli.command()
@port_option
@host_option
@click.option("--json", "as_json", is_flag=True, help="Every verb in the shell answers in JSON.")
@click.pass_obj
def shell(session: Session, port: int, host: str, as_json: bool) -> None:
    """An interactive prompt with the same verbs, history and tab completion."""
    session.system(port, host=host)  # no daemon: the usual error and exit code, not a shell
    Shell(run, cli, session, port, as_json, host).cmdloop()


_copy.register(cli)  # backstage copy SRC DST (its body in _copy.py)
_cli_history.register(cli)  # events, state, diff, trace, export (in _cli_history.py)
_cli_cluster.register(cli)  # members (in _cli_cluster.py)


def run(args: list[str] | None = None, session: Session | None = None) -> int:
    """Run one command line and return its exit code; errors are one line on stderr (one JSON
    object there with ``--json``)."""
    as_json = "--json" in (sys.argv[1:] if args is None else args)
    try:
        cli.main(args=args, prog_name="backstage", standalone_mode=False, obj=session)
    except click.UsageError as exc:
        hint = f" (see backstage {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
        return _error(f"{exc.format_message()}{hint}", EXIT_INPUT, as_json)
    except CliError as exc:
        return _error(exc.format_message(), exc.code, as_json)
    except click.ClickException as exc:
        return _error(exc.format_message(), exc.exit_code, as_json)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        return _error("aborted", EXIT_FAILED, as_json)
    except SystemExit as exc:  # a verb's own exit code (some lines of --file refused, ...)
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return 0


def _error(message: str, code: int, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps({"error": message, "code": code}), err=True)
    else:
        click.echo(f"error: {message}", err=True)
    return code


def main(args: list[str] | None = None) -> None:
    """The console script."""
    sys.exit(run(args))
