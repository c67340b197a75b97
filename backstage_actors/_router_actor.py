"""The router actor: the supervisor of the shards, a fixed pool that hosts every aggregate.

Each command goes to the shard its stream id hashes to (:func:`~._shard.shard_of`); the shard
finds or makes the aggregate (see ``_shard`` and ``_cells``). Shards start with the router
and are restarted when they crash or are killed; a command sent to a shard whose
process just died comes back as a dead letter and is routed again. Which aggregate a command
goes to is the :class:`~backstage_actors.router.Router`'s answer.

In a cluster (``settings.member`` set), the member that owns a stream is first chosen by
rendezvous hashing over the live members that host aggregates (a :class:`~._placement.Placement`
from this member's membership actor, see ``_cluster``): the router sends a command for a stream
another member owns to that member's router, marked ``forwarded`` (served there, never sent on
again, so members that disagree cost a conflict, not a loop), and the owner's shard answers the
caller directly. It tells its shards each new placement: they passivate what they no longer own.
"""

from __future__ import annotations

import logging
from typing import Any

from thespian.actors import DeadEnvelope

from supervisors import Child, ChildAddress, ChildSpec, Envelope, Supervisor, WatchChildren

from . import telemetry
from ._cluster import MEMBERSHIP_NAME, MemberInfo, MemberInfoQuery, MembershipActor, Watch
from ._lease import leases_held
from ._names import EVENTS
from ._placement import Placement
from ._protocol import CommandStats, Execute, Executed, Listeners, Settings, ShardLoad
from ._shard import ShardActor, shard_name, shard_of
from .command import CommandItem
from .errors import AggregateFailed, InvalidCommand, UnregisteredCommand
from .router import Router

__all__ = ["RouterActor"]


class RouterActor(Supervisor):
    """Supervises the shards; ``self.args`` holds the router and settings."""

    kind = "router"

    def on_start(self) -> None:
        super().on_start()
        self.router: Router = self.args["router"]
        self.settings: Settings = self.args["settings"]
        self.listeners = Listeners([])
        self.loads: dict[str, ShardLoad] = {}  # shard name -> its last report
        self.held: dict[str, list[Execute]] = {}  # shard name -> commands for it, not running
        self.meters: dict[str, telemetry.CommandMeter] = {}  # aggregate type -> its counts
        self.placement: Placement | None = None  # a cluster member's view (see _cluster)
        self.forwarded = 0  # commands sent on to the members that own their streams
        self.routed = 0  # commands this router sent to its shards (callers that knew none)
        if self.settings.member is not None:
            membership = self.createActor(MembershipActor, globalName=MEMBERSHIP_NAME)
            watch = Watch(
                self.settings.member, self.myAddress, self.settings.database, self.settings.app_name
            )
            self.send(membership, watch)
        if self.supervisor is not None:
            self.send(self.supervisor, WatchChildren())
        # A command forwarded to a shard whose process just died (before the router heard of
        # it) comes back as a dead letter: route it again instead of losing it.
        self.handleDeadLetters(startHandling=True)
        for index in range(self.settings.shards):  # a fixed pool, started at once
            self._ensure(index)

    def describe(self) -> dict[str, Any]:
        return {
            "shards": self.settings.shards,
            "live": sum(load.live for load in self.loads.values()),
            "max_live": self.settings.max_live,
            "passivated": sum(load.passivated for load in self.loads.values()),
            "aggregate_restarts": sum(load.restarts for load in self.loads.values()),
            "shard_restarts": sum(c.restarts for c in self.children.values()),
            "routed": self.routed,
            "commands": {name: meter.summary() for name, meter in self.meters.items()},
            **self._cluster_node(),
        }

    def _cluster_node(self) -> dict[str, Any]:
        """A cluster member's router says who it is and which members it routes to."""
        if self.settings.member is None:
            return {}
        placement = self.placement
        return {
            "member": self.settings.member,
            "placement": sorted(placement.routers) if placement is not None else None,
            "cut_off": placement.cut_off if placement is not None else False,
            "forwarded": self.forwarded,
        }

    # -- messages ---------------------------------------------------------------------------

    def handle(self, message: Any, sender: Any) -> None:
        if isinstance(message, Execute):
            self._execute(
                message
                if message.reply_to is not None
                else Execute(message.items, sender, message.grouped)
            )
        elif isinstance(message, CommandStats):
            self.meters.setdefault(message.aggregate, telemetry.CommandMeter()).add(message.delta)
        elif isinstance(message, ShardLoad):
            self.loads[message.shard] = message
        elif isinstance(message, Placement):
            self._placed(message)
        elif isinstance(message, MemberInfoQuery) and self.settings.member is not None:
            self.send(sender, self._member_info(message))
        elif isinstance(message, ChildAddress):
            self._sibling_moved(message)
        elif isinstance(message, DeadEnvelope):
            self._dead_letter(message.deadMessage)
        else:
            super().handle(message, sender)

    def _on_description(self, reply: Any) -> None:
        """A shard's node for ``tree``: its counts are the newest there are (the router's own
        node, made once every shard answered, sums them)."""
        node, request = getattr(reply, "node", None), getattr(reply, "request_id", None)
        if isinstance(node, dict) and "shard" in node and isinstance(request, tuple):
            self.loads[request[1]] = ShardLoad(
                request[1], node["live"], node["passivated"], node["aggregate_restarts"]
            )
        super()._on_description(reply)

    def lost(self, message: Any, sender: Any) -> None:
        """Handed back by a shard that is gone: route it again."""
        again = _commands_of(message, sender)
        if again is not None:
            self._dead_letter(again)
        else:
            super().lost(message, sender)

    def _dead_letter(self, message: Any) -> None:
        if self._mode not in ("running", "starting"):
            return  # stopping: no shard is started again
        again = _commands_of(message.message if isinstance(message, Envelope) else message)
        if again is not None and all(
            type(item.command) in self.router.routes for item in again.items
        ):
            self._execute(again)

    def _execute(self, execute: Execute) -> None:
        """Split the commands by shard (those that name no stream are answered here)."""
        groups: dict[int, list[CommandItem]] = {}
        errors: list[tuple[str, Any]] = []
        shards = self.settings.shards
        placement = None if execute.forwarded else self.placement
        away: dict[str, list[CommandItem]] = {}  # member -> its commands (a cluster only)
        for item in execute.items:
            try:
                _, stream_id, _ = self.router.stream_of(item.command, self.settings.limits)
            except (UnregisteredCommand, InvalidCommand) as exc:
                errors.append((item.request_id, exc))
                continue
            if placement is not None:
                member = placement.owner(stream_id)
                if member != placement.me:
                    away.setdefault(member, []).append(item)
                    continue
            groups.setdefault(shard_of(stream_id, shards), []).append(item)
        if errors:
            self.send(execute.reply_to, Executed(errors))
        if away:
            self._forward(away, execute)
        for index, items in groups.items():
            self.routed += len(items)
            name = shard_name(index)
            child = self._ensure(index)
            message = Execute(items, execute.reply_to, execute.grouped or len(items) > 1)
            if child.status == "running":
                self.send(child.address, message)  # the hot path: no envelope, nothing held
            else:
                # Held until it runs, then sent before anything newer: Thespian may deliver
                # what was sent to an actor still starting after what is sent once it runs.
                self.held.setdefault(name, []).append(message)

    def _member_info(self, query: MemberInfoQuery) -> MemberInfo:
        """What this member hosts, for ``backstage members`` (one query of the leases)."""
        member = self.settings.member or ""
        try:
            names = list(query.subscribers)
            held = leases_held(self.settings.database, self.settings.app_name, names)
        except Exception as exc:  # the store cannot be asked now: say none are known
            logging.getLogger(__name__).warning("leases of %s unknown: %s", member, exc)
            held = {}
        placement = self.placement
        return MemberInfo(
            member,
            sum(load.live for load in self.loads.values()),
            tuple(sorted(placement.routers)) if placement is not None else (),
            self.forwarded,
            tuple(held.get(member, [])),
        )

    def _forward(self, away: dict[str, list[CommandItem]], execute: Execute) -> None:
        """Send commands to the routers of the members that own their streams."""
        assert self.placement is not None
        for member, items in away.items():
            grouped = execute.grouped or len(items) > 1
            message = Execute(items, execute.reply_to, grouped, forwarded=True)
            self.send(self.placement.routers[member], message)
            self.forwarded += len(items)

    def _placed(self, placement: Placement) -> None:
        """A new view of the cluster: route by it, and tell the shards (they passivate the
        aggregates this member no longer owns)."""
        self.placement = placement
        for child in self.children.values():
            if child.status in ("starting", "running"):
                self.send(child.address, placement)

    def _ensure(self, index: int) -> Child:
        name = shard_name(index)
        child = self.children.get(name)
        if child is not None and child.status != "stopped":
            return child
        spec = ChildSpec(
            name,
            ShardActor,
            restart="permanent",
            args={
                "settings": self.settings,
                "router": self.router,
                "index": index,
                "listeners": self.listeners.listeners,
            },
        )
        return self.start_child(spec)

    # -- lifecycle of shards ----------------------------------------------------------------

    def child_started(self, child: Child) -> None:
        if self.listeners.listeners:
            self.send(child.address, self.listeners)
        if self.placement is not None:
            self.send(child.address, self.placement)
        for message in self.held.pop(child.name, []):
            self.send(child.address, message)

    def child_ended(self, child: Child) -> None:
        """A shard stopped for good: commands that were waiting for it start a fresh one
        instead of being lost."""
        waiting = child.bounced + child.pending
        waiting += [(message, None) for message in self.held.pop(child.name, [])]
        child.bounced, child.pending = [], []
        if child.gave_up:
            # It crashed in its start twice in a row: its commands fail, rather than start it
            # again and again (a later command tries once more).
            failure = child.last_failure
            error = AggregateFailed(
                f"{child.name} cannot start: "
                + (f"{failure.error_type}: {failure.message}" if failure else "it crashed")
            )
            for message, sender in waiting:
                failed = _commands_of(message, sender)
                if failed is not None and failed.reply_to is not None:
                    self.send(
                        failed.reply_to, Executed([(i.request_id, error) for i in failed.items])
                    )
            return
        if waiting and self._mode in ("running", "starting"):
            for message, sender in waiting:
                again = _commands_of(message, sender)
                if again is not None:
                    self._execute(again)

    def _sibling_moved(self, message: ChildAddress) -> None:
        if message.name != EVENTS:
            return
        self.listeners = Listeners([message.address] if message.address else [])
        for child in self.children.values():
            if child.status in ("starting", "running"):
                self.send(child.address, self.listeners)


def _commands_of(message: Any, sender: Any = None) -> Execute | None:
    """The commands a message for a shard that is gone carries, to be routed again."""
    if isinstance(message, Execute):
        # (A command forwarded to a member that is gone keeps its mark: it is served here,
        # expected versions keeping a second owner safe, rather than sent on until the view
        # catches up.)
        return Execute(
            message.items, message.reply_to or sender, message.grouped, forwarded=message.forwarded
        )
    return None
