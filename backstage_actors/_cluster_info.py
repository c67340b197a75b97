"""What the CLI shows of a cluster: each member's roles, uptime, tree, live aggregates, leases.

The member list is the registry's (``_cluster.members_of``, asked through whichever member the
CLI attached to); what each member hosts is read from that member's own supervision tree, asked
of its own admin. A lease shows as a subscriber that is not standing by: the lease gate of
``_subscriber`` keeps a subscriber in ``standby`` on every member but the one holding its lease.
A member that is in the view but does not answer (dying, or cut off) is listed with the reason.
"""

from __future__ import annotations

import re
import time
from typing import Any

import attrs

import supervisors

from . import _thespian
from ._cluster import Member, members_of
from ._thespian.convention import CONVENTION
from .errors import BackstageError, SystemNotRunning

__all__ = ["MemberShown", "cluster_view", "endpoint_of", "is_member"]

SUBSCRIBER_KINDS = ("handler", "projection", "process_manager")
_ENDPOINT = re.compile(r"([0-9A-Za-z.:\-]+?):(\d+)\)?$")


def endpoint_of(address: str) -> tuple[str, int]:
    """``(host, port)`` of a member's admin from its Thespian address text
    (``ActorAddr-(T|127.0.0.3:1900)``) or from ``host:port``."""
    found = _ENDPOINT.search(address.rsplit("|", 1)[-1])
    if found is None:
        raise ValueError(f"not a member's address: {address!r}")
    return found.group(1), int(found.group(2))


def is_member(system: Any) -> bool:
    """Whether the attached system is a member of a cluster (its admin joined a convention)."""
    status = _thespian.admin_status(system.actor_system)
    return bool(status is not None and status.capabilities.get(CONVENTION))


@attrs.frozen
class MemberShown:
    """One member as ``backstage members``, ``tree`` and ``status`` show it."""

    host: str
    port: int
    roles: tuple[str, ...]
    leader: bool
    started: float
    tree: dict[str, Any] | None = None
    problem: str | None = None  # why its tree is missing

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def uptime(self) -> float | None:
        return max(0.0, time.time() - self.started) if self.started else None

    def live_aggregates(self) -> int | None:
        """The aggregates in memory on this member (its router's count), None if unknown."""
        for node in supervisors.walk(self.tree) if self.tree else ():
            if node.get("kind") == "router":
                return int(node.get("live") or 0)
        return None

    def leases(self) -> list[str]:
        """The subscribers that run here: those whose lease this member holds."""
        return sorted(
            str(node["name"])
            for node in (supervisors.walk(self.tree) if self.tree else ())
            if node.get("kind") in SUBSCRIBER_KINDS and node.get("state") != "standby"
        )

    def to_json(self) -> dict[str, Any]:
        uptime = self.uptime
        return {
            "address": self.address,
            "roles": list(self.roles),
            "leader": self.leader,
            "uptime": None if uptime is None else round(uptime, 1),
            "live_aggregates": self.live_aggregates(),
            "leases": self.leases(),
            "problem": self.problem,
        }


def cluster_view(app: Any, system: Any, timeout: float = 5.0) -> list[MemberShown]:
    """Every live member with its tree, asked through ``system`` (any member, attached)."""
    here = _thespian.system_key(system.actor_system)
    infos = []
    for member in members_of(system.actor_system, timeout):
        host, port = endpoint_of(member.address)
        try:
            if member.address == here:
                tree, problem = system.tree(timeout=timeout), None
            else:
                tree, problem = member_tree(app, host, port, timeout), None
        except (BackstageError, OSError, supervisors.SupervisionError) as exc:
            tree, problem = None, str(exc)
        infos.append(_info(member, host, port, tree, problem))
    return infos


def _info(
    member: Member, host: str, port: int, tree: dict[str, Any] | None, problem: str | None
) -> MemberShown:
    return MemberShown(host, port, member.roles, member.leader, member.started, tree, problem)


def member_tree(app: Any, host: str, port: int, timeout: float) -> dict[str, Any]:
    """The supervision tree of ``app`` on the member whose admin is ``host:port``."""
    endpoint = _thespian.attach(port, host)  # (a client's handle: letting go leaves it running)
    # Looked up, never created: createActor(Supervisor, globalName=...) would start an empty
    # root supervisor on a member whose application ended (or never started there).
    root = _thespian.global_address(endpoint, app.root_name, timeout)
    if root is _thespian.NOT_TOLD:
        raise SystemNotRunning(
            f"{host}:{port} does not answer: its admin said nothing in {timeout}s"
        )
    if root is None:
        raise SystemNotRunning(
            f"{host}:{port} does not run {app.name}: its admin knows no root supervisor "
            f"{app.root_name!r} (it ended, or was never started there)"
        )
    try:
        return supervisors.tree(endpoint, root, timeout=timeout)
    except supervisors.SupervisionError as exc:
        raise SystemNotRunning(f"{host}:{port} does not answer: {exc}") from None
