"""The CLI of a cluster: ``start --join/--role`` checks, ``backstage members``, and ``tree`` /
``status`` with one section per member (``cli.py`` calls these when the daemon is a member).

Asked of any member, each shows the whole cluster: the member list is the leader registry's,
and each member's part is read from that member itself (``_cluster_info``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import _daemon, _security, _thespian
from ._cli_support import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_NOT_RUNNING,
    EXIT_TIMEOUT,
    Session,
    collect_status,
    exit_code_for,
    fail,
    host_option,
    not_answering,
    render_tree,
    status_lines,
)
from ._cluster import parse_join
from ._cluster_info import MemberShown, cluster_view, is_member
from ._thespian.convention import ROLE_CAPABILITY
from .errors import BackstageError
from .store import is_postgres, normalise, redact

__all__ = ["ROLES", "check_join", "is_member", "joined", "register", "show_status", "show_trees"]

ROLES: tuple[str, ...] = tuple(ROLE_CAPABILITY)
PROBE_TIMEOUT = 3.0  # seconds to wait for a leader's admin before saying it is not there


def register(cli: click.Group) -> None:
    """Add ``members`` to the command line ``cli``."""
    cli.add_command(members)


# -- start --join -----------------------------------------------------------------------------


def check_join(app: Any, database: str | None, host: str, port: int, join: str) -> None:
    """Every reason ``start --join`` cannot work, before anything starts: a malformed
    ``HOST:PORT``, a store the other members cannot share, a leader that does not answer (one
    probe of a few seconds, no retries) or holds another secret."""
    try:
        leader_host, leader_port = parse_join(join)
    except BackstageError as exc:
        fail(str(exc), EXIT_INPUT)
    store = normalise(database or app.database)
    if not is_postgres(store):
        fail(
            "--join needs a PostgreSQL store that every member reaches (--db postgresql://...), "
            f"not {redact(store)}",
            EXIT_INPUT,
        )
    if (leader_host, leader_port) == (host, port):
        return  # the leader names itself
    try:
        verdict = _thespian.probe(leader_host, leader_port, _security.secret(), PROBE_TIMEOUT)
    except _thespian.NotAnswering:
        fail(
            f"what listens at {join} does not answer as a Backstage system: it accepted the "
            f"connection and said nothing within {PROBE_TIMEOUT}s (a leader that is stopped "
            "or overloaded, or another program)",
            EXIT_NOT_RUNNING,
        )
    if verdict is None:
        fail(
            f"no leader answers at {join}: start the leader first (its --join names itself: "
            f"--host {leader_host} --port {leader_port} --join {join}), or correct --join",
            EXIT_NOT_RUNNING,
        )
    if not verdict:
        fail(
            f"what listens at {join} does not answer as a Backstage system with this member's "
            "secret (every member needs the leader's: BACKSTAGE_SECRET, BACKSTAGE_SECRET_FILE "
            "or $BACKSTAGE_HOME/secret)",
            EXIT_NOT_RUNNING,
        )


def joined(host: str, port: int, join: str, state: dict[str, Any]) -> str:
    """``start``'s line about the cluster."""
    roles = ", ".join(state.get("roles") or ROLES)
    if join == f"{host}:{port}":
        return f"leader ({roles}); members join with --join {join}"
    return f"member of {join} ({roles}); see `backstage members`"


# -- members ------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--port",
    type=int,
    default=_daemon.default_port,
    show_default="$BACKSTAGE_PORT or 1900",
    help="Admin port of any member.",
)
@host_option
@click.option("--json", "as_json", is_flag=True, help="JSON output; errors as JSON on stderr.")
@click.pass_obj
def members(session: Session, port: int, host: str, as_json: bool) -> None:
    """The cluster's members: address, roles, uptime, live aggregates, leases held."""
    app, system = session.system(port, need_app=False, host=host)
    infos = _view(app, system, port, host)
    if as_json:
        click.echo(json.dumps({"application": app.name, "members": [m.to_json() for m in infos]}))
        return
    leader = next((m.address for m in infos if m.leader), "unknown")
    click.echo(f"{app.name}: {len(infos)} members, leader {leader}")
    rows = [("MEMBER", "ROLES", "UP", "LIVE", "LEASES")]
    for m in infos:
        live = m.live_aggregates()
        rows.append(
            (
                m.address,
                ",".join(m.roles) or "-",
                _duration(m.uptime),
                "?" if live is None else str(live),
                (", ".join(m.leases()) or "-") if m.problem is None else f"({m.problem})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


def _view(app: Any, system: Any, port: int, host: str) -> list[MemberShown]:
    try:
        if not is_member(system):
            fail(
                f"the daemon on {host}:{port} is not a cluster member (start it with --join)",
                EXIT_FAILED,
            )
        return cluster_view(app, system)
    except TimeoutError as exc:
        fail(f"{exc}: {NO_LEADER}", EXIT_TIMEOUT)
    except BackstageError as exc:
        fail(str(exc), exit_code_for(exc))


NO_LEADER = "the member list is the leader's; is the leader running?"


def _view_or_none(app: Any, system: Any) -> list[MemberShown] | None:
    """The cluster's members, or None (with a warning) when the leader does not answer: a
    member keeps serving without its leader, and ``tree``/``status`` then show it alone."""
    try:
        return cluster_view(app, system)
    except TimeoutError as exc:
        click.echo(f"warning: {exc}: {NO_LEADER} Showing this member only.", err=True)
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def heading(member: MemberShown) -> str:
    """A member's heading in ``tree`` and ``status``."""
    what = ", ".join(member.roles) or "no roles"
    return f"member {member.address} ({'leader; ' if member.leader else ''}{what})"


# -- tree and status of a cluster -----------------------------------------------------------------


def show_trees(app: Any, system: Any, as_json: bool) -> bool:
    """``tree`` of a cluster: one subtree per member, its address as the heading; False if
    the leader does not answer (the caller shows this member's own tree)."""
    infos = _view_or_none(app, system)
    if infos is None:
        return False
    if as_json:
        click.echo(
            json.dumps({"members": [{**m.to_json(), "tree": m.tree} for m in infos]}, indent=2)
        )
        return True
    for member in infos:
        click.echo(click.style(heading(member), bold=True))
        if member.tree is None:
            click.echo(f"  (no answer: {member.problem})")
            continue
        for line in render_tree(member.tree, depth=1):
            click.echo(line)
    return True


def show_status(app: Any, system: Any, as_json: bool) -> list[str] | None:
    """``status`` of a cluster: the store's lines once, each member's own under its address;
    what is unwell (a member that does not answer, or one degraded; empty: nothing), or None if
    the leader does not answer (the caller shows this member's own status)."""
    infos = _view_or_none(app, system)
    if infos is None:
        return None
    report = collect_status(system)  # the store's figures, the same from every member
    sections = [
        (member, None if member.tree is None else collect_status(system, member.tree))
        for member in infos
    ]
    unwell = [
        f"{member.host}:{member.port} "
        + (f"does not answer ({member.problem})" if own is None else not_answering(own))
        for member, own in sections
        if own is None or own["status"] == "degraded"
    ]
    if as_json:
        shared = {k: report[k] for k in ("application", "last_position", "dead_letters")}
        members = [{**m.to_json(), **({} if own is None else _own(own))} for m, own in sections]
        click.echo(json.dumps({**shared, "members": members}, indent=2))
        return unwell
    head, _, tail = status_lines(report)
    for line in head:
        click.echo(line)
    for member, own in sections:
        click.echo(heading(member))
        if own is None:
            click.echo(f"  (no answer: {member.problem})")
            continue
        for line in status_lines(own)[1]:
            click.echo(f"  {line}")
    for line in tail:
        click.echo(line)
    return unwell


def _own(report: dict[str, Any]) -> dict[str, Any]:
    return {
        k: report[k] for k in ("status", "not_answering", "aggregates", "restarts", "subscribers")
    }
