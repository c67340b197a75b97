"""A Backstage cluster: members of one application on several hosts, joined by Thespian.

Membership is Thespian's: each member's admin joins the leader's convention (see
``_thespian/convention.py``), and the :class:`ClusterRegistry`, an actor that runs only where
the ``Backstage Registry`` capability is (the leader), learns who is in from Thespian's
``ActorSystemConventionUpdate`` notifications. There is no membership protocol of our own: a
client or member that wants the view finds the registry the Thespian way, by asking its own
admin for the actor named :data:`REGISTRY_NAME` that needs that capability (the convention
forwards the request to the leader, whose admin answers with the one registry it holds), and
asks it.

The view is advisory. Who owns an aggregate follows from it (``_placement``), but no correctness
rests on members agreeing: the store's expected versions refuse a stale owner's append, and a
subscriber runs only under its lease (``_lease``).

Each member's :class:`MembershipActor` turns the view into the :class:`~._placement.Placement`
its router routes by: the members the convention knows, whose router said where it is, and
whose member lease (a PostgreSQL session advisory lock) is held. The lease is the fast signal of
a death (it goes with the dead member's connection, read every :data:`POLL_EVERY`); Thespian's
three missed registrations (6 s) would miss a 3 s failover. The convention is the signal of a
partition from the leader (a member that still reaches the store keeps its lease).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs
from thespian.actors import Actor, ActorSystemConventionUpdate, WakeupMessage

from . import _thespian
from ._lease import MEMBER_LEASE, Lease, member_lease
from ._placement import Placement
from ._thespian.convention import (
    REGISTRY,
    ROLE_CAPABILITY,
    STARTED,
    member_capabilities,
    shorten_registration_period,
)
from .errors import BackstageError
from .store import is_postgres

__all__ = [
    "POLL_EVERY",
    "REGISTRY_NAME",
    "ClusterRegistry",
    "Freeze",
    "Introduce",
    "Member",
    "MemberInfo",
    "MemberInfoQuery",
    "MembersQuery",
    "MembersView",
    "MembershipActor",
    "RouterAt",
    "Watch",
    "cluster_capabilities",
    "cluster_status",
    "find_registry",
    "freeze",
    "introduce",
    "member_key",
    "members_of",
    "parse_join",
]

REGISTRY_NAME = "backstage-cluster-registry"
MEMBERSHIP_NAME = "backstage-membership"
POLL_EVERY = 0.25  # seconds between two looks at the view and the members' leases
# No view from the registry for this long while the leader's lease is held: this member is
# cut off from the leader (a partition), not the leader dead (see Placement.cut_off).
CUT_OFF_AFTER = 2.0


def member_key(address: Any) -> str:
    """``"host:port"`` of a member from its admin's address (``ActorAddr-(T|host:port)``)."""
    return str(address).split("|")[-1].rstrip(")")


def log() -> logging.Logger:
    return logging.getLogger("backstage.cluster")


@attrs.frozen
class Member:
    """One member as the convention knows it: its admin's address, roles and start time."""

    address: str
    roles: tuple[str, ...]
    started: float
    leader: bool = False
    router: Any = None  # its router's address, once its router said where it is

    @property
    def key(self) -> str:
        return member_key(self.address)

    @classmethod
    def from_capabilities(cls, address: str, capabilities: dict[str, Any]) -> Member:
        roles = tuple(role for role, name in ROLE_CAPABILITY.items() if capabilities.get(name))
        return cls(
            address=address,
            roles=roles,
            started=float(capabilities.get(STARTED, 0.0)),
            leader=bool(capabilities.get(REGISTRY)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "roles": list(self.roles),
            "uptime": round(max(0.0, time.time() - self.started), 1) if self.started else None,
            "leader": self.leader,
            "member": self.key,
        }


@attrs.frozen
class Introduce:
    """The leader's application tells the registry about its own system (the convention only
    tells a leader about the others)."""

    address: str
    capabilities: dict[str, Any]


@attrs.frozen
class RouterAt:
    """A member's router says where it is (through its membership actor, to the registry)."""

    member: str
    router: Any


@attrs.frozen
class Watch:
    """From a member's router to its membership actor: keep me told of the placement, hold
    this member's lease."""

    member: str
    router: Any
    database: str
    app_name: str


@attrs.frozen
class Freeze:
    """Test-only: stop (or resume) telling the router of placement changes, so that its view
    stays as it is while the others' move (two members owning one aggregate at once)."""

    frozen: bool = True


@attrs.frozen
class MemberInfoQuery:
    """Ask a member's router (its address: :attr:`Member.router`) what it hosts now; it answers
    a :class:`MemberInfo`. ``subscribers``: the names whose leases to look for."""

    subscribers: tuple[str, ...] = ()


@attrs.frozen
class MemberInfo:
    """What one member hosts now: live aggregates, the members it routes to, what it forwarded,
    and the leases its connections hold (its subscribers', and its own ``member:`` lease)."""

    member: str
    live: int
    placement: tuple[str, ...]
    forwarded: int
    leases: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "live_aggregates": self.live,
            "placement": list(self.placement),
            "forwarded": self.forwarded,
            "leases": list(self.leases),
        }


@attrs.frozen
class MembersQuery:
    """Ask the registry for the live members."""


@attrs.frozen
class MembersView:
    members: tuple[Member, ...]


class ClusterRegistry(Actor):
    """The live members, kept from Thespian's convention notifications; runs on the leader."""

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: Any) -> bool:
        return bool(capabilities.get(REGISTRY))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.members: dict[str, Member] = {}
        self.routers: dict[str, Any] = {}  # member key -> its router's address
        self.notified = False

    def _joined(self, member: Member) -> None:
        """A member (re)joined: a member started anew (another start time) has a new router,
        so the old router's address is forgotten until the new router says where it is."""
        known = self.members.get(member.address)
        if known is not None and known.started != member.started:
            self.routers.pop(member.key, None)
        self.members[member.address] = member

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if not self.notified:
            self.notifyOnSystemRegistrationChanges(True)  # Thespian replays the members it knows
            self.notified = True
        if isinstance(message, ActorSystemConventionUpdate):
            address = str(message.remoteAdminAddress)
            if message.remoteAdded:
                self._joined(
                    Member.from_capabilities(address, dict(message.remoteCapabilities or {}))
                )
                log().info("member %s joined", address)
            else:
                gone = self.members.pop(address, None)
                if gone is not None:
                    self.routers.pop(gone.key, None)
                log().warning("member %s left (or was declared dead)", address)
        elif isinstance(message, Introduce):
            self._joined(Member.from_capabilities(message.address, message.capabilities))
        elif isinstance(message, RouterAt):
            self.routers[message.member] = message.router
        elif isinstance(message, MembersQuery):
            view = tuple(
                attrs.evolve(member, router=self.routers.get(member.key))
                for member in sorted(self.members.values(), key=lambda m: m.address)
            )
            self.send(sender, MembersView(view))


class MembershipActor(Actor):
    """This member's way to the registry (one per member, a local global name), and its
    router's source of :class:`Placement`.

    Why not ask the registry from outside: Thespian answers a global-name lookup forwarded by
    a member's admin to that admin, not to an external asker, so a client would wait in vain.
    Asked from inside an actor, the answer reaches the actor; this one relays the views.

    Once the router sends :class:`Watch`, it holds this member's lease (a session advisory
    lock, see ``_lease``) and every :data:`POLL_EVERY` asks the registry for the view and reads
    which members' leases are held: a member is live when the convention knows it, its router
    said where it is, and its lease is held. A killed member's lease goes with its connection
    at once, where the convention needs three missed registrations (6 s); a partitioned
    member that still reaches the store is dropped by the convention. Without the leader (its
    lease gone), the last view stands, less the members whose leases went. Without answers
    from a leader that lives (this member is partitioned from it), the placement is
    ``cut_off``: every cell is passivated and none is kept until the view comes back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry: Any = None
        self.waiting: list[Any] = []
        self.watch: Watch | None = None
        self.lease: Lease | None = None
        self.view: tuple[Member, ...] = ()
        self.placement: Placement | None = None
        self.frozen = False
        self.view_at: float | None = None  # time.monotonic() of the last view
        self.asked_at = 0.0  # when the registry was last looked up again
        self.lease_taken = False  # its own lease was held once (a later take is after a loss)
        self.epoch = 0  # see Placement.epoch

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, (MembersQuery, Introduce, RouterAt)):
            if isinstance(message, MembersQuery):
                self.waiting.append(sender)
            self._to_registry(message)
        elif isinstance(message, MembersView):
            self.view = message.members
            self.view_at = time.monotonic()
            if self.waiting:
                self.send(self.waiting.pop(0), message)
        elif isinstance(message, Watch):
            self._watch(message)
        elif isinstance(message, Freeze):
            self.frozen = message.frozen
        elif isinstance(message, WakeupMessage) and self.watch is not None:
            self._to_registry(MembersQuery())  # its answer is the view of the next look
            self._look()
            self.wakeupAfter(POLL_EVERY)

    def _to_registry(self, message: Any) -> None:
        if self.registry is None:
            self.registry = self.createActor(
                ClusterRegistry,
                targetActorRequirements={REGISTRY: True},
                globalName=REGISTRY_NAME,
            )
        self.send(self.registry, message)

    def _watch(self, watch: Watch) -> None:
        first = self.watch is None
        self.watch = watch
        if self.lease is None:
            self.lease = member_lease(watch.database, watch.app_name, watch.member)
        self.lease.try_acquire()
        self._to_registry(RouterAt(watch.member, watch.router))
        self.placement = None  # a (re)started router is told the placement at once
        self._to_registry(MembersQuery())
        self._look()
        if first:
            self.wakeupAfter(POLL_EVERY)

    def _look(self) -> None:
        """Tell the router the placement if it changed: the live members with the
        ``aggregates`` role (and a router), this one always counted while it holds its lease."""
        assert self.watch is not None and self.lease is not None
        if not self.lease.held and self.lease.try_acquire() and self.lease_taken:
            self.epoch += 1  # taken back after a loss: see Placement.epoch
        self.lease_taken = self.lease_taken or self.lease.held
        mine = next((m for m in self.view if m.key == self.watch.member), None)
        if mine is not None and mine.router != self.watch.router:
            # The registry has not heard of this router yet (or forgot it: a member started
            # anew on this address counts as a new member there): say again where it is.
            self._to_registry(RouterAt(self.watch.member, self.watch.router))
        held = self.lease.held_among([MEMBER_LEASE + m.key for m in self.view])
        if held is None:
            return  # the store cannot be asked: keep the placement as it is
        routers = {
            m.key: m.router
            for m in self.view
            if "aggregates" in m.roles and m.router is not None and MEMBER_LEASE + m.key in held
        }
        stale = self.view_at is not None and time.monotonic() - self.view_at > CUT_OFF_AFTER
        leader_lives = any(m.leader and MEMBER_LEASE + m.key in held for m in self.view)
        if stale and not leader_lives and time.monotonic() - self.asked_at > CUT_OFF_AFTER:
            # The registry went with its leader, and a leader started again makes a new one:
            # look it up again by its global name. (Not while the leader lives: cut off from
            # it, a lookup cannot succeed, and the address known will work again after a heal.)
            self.registry = None
            self.asked_at = time.monotonic()
        placement = Placement(
            self.watch.member, routers, cut_off=stale and leader_lives, epoch=self.epoch
        )
        if placement != self.placement and not self.frozen:
            placement = attrs.evolve(placement, sent_at=time.monotonic_ns())
            self.placement = placement
            log().info(
                "placement: %s%s",
                ", ".join(sorted(routers)) or "(this member alone)",
                " (cut off from the leader)" if placement.cut_off else "",
            )
            self.send(self.watch.router, placement)


def find_registry(endpoint: Any) -> Any:
    """This member's :class:`MembershipActor`, the way to the registry, from ``endpoint``."""
    return endpoint.createActor(MembershipActor, globalName=MEMBERSHIP_NAME)


def freeze(endpoint: Any, frozen: bool = True) -> None:
    """Test-only: freeze (or thaw) the placement this member's router is told."""
    endpoint.tell(find_registry(endpoint), Freeze(frozen))


def members_of(endpoint: Any, timeout: float = 5.0) -> list[Member]:
    """The live members, as the registry knows them."""
    registry = find_registry(endpoint)
    reply = endpoint.ask(registry, MembersQuery(), timeout)
    if not isinstance(reply, MembersView):
        raise TimeoutError(f"the cluster registry did not answer within {timeout}s")
    return list(reply.members)


def cluster_status(
    endpoint: Any, subscribers: tuple[str, ...] = (), timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Every live member as the registry knows it (address, roles, uptime, leader) with what it
    hosts (:class:`MemberInfo`: live aggregates, leases held...), one dict per member; a member
    whose router does not answer in ``timeout`` says so (``"answered": False``)."""
    rows = []
    for member in members_of(endpoint, timeout):
        row = member.to_json()
        reply = None
        if member.router is not None:
            reply = endpoint.ask(member.router, MemberInfoQuery(tuple(subscribers)), timeout)
        row["answered"] = isinstance(reply, MemberInfo)
        if isinstance(reply, MemberInfo):
            row.update(reply.to_json())
        rows.append(row)
    return rows


def parse_join(join: str) -> tuple[str, int]:
    """``"HOST:PORT"`` of the leader's admin; a clear error otherwise."""
    host, _, port = join.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackstageError(f"--join wants HOST:PORT of the leader's admin, not {join!r}")
    return host, int(port)


def cluster_capabilities(
    base: str, database: str, host: str, port: int | None, join: str, roles: Any
) -> dict[str, Any]:
    """The admin capabilities of a member on ``host:port`` joining ``join``; every reason it
    cannot be a member at once."""
    problems = []
    if base != "multiproc":
        problems.append("a cluster member runs on base='multiproc'")
    if not is_postgres(database):
        problems.append("a cluster member needs a PostgreSQL store every member reaches")
    if port is None:
        problems.append("a cluster member needs its admin port")
    try:
        parse_join(join)
    except BackstageError as exc:
        problems.append(str(exc))
    try:
        capabilities = member_capabilities(host, port or 0, join, tuple(roles))
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise BackstageError("; ".join(problems))
    shorten_registration_period()
    return capabilities


def introduce(endpoint: Any, capabilities: dict[str, Any]) -> None:
    """On the leader, tell the registry about this very system (Thespian tells it only of the
    others); on a member, nothing to do: the convention carries its capabilities."""
    if capabilities.get(REGISTRY):
        address = _thespian.system_key(endpoint) or ""
        endpoint.tell(find_registry(endpoint), Introduce(address, capabilities))
