"""The supervisor actor: starts children, restarts them by strategy, escalates, stops in order.

A supervisor is itself a :class:`SupervisedActor`, so supervisors nest. Its children ask it to end
them (:class:`_Exiting`) rather than exiting on their own: the supervisor's ``ActorExitRequest``
then arrives after every message the supervisor sent before it, and anything the child received
after asking is handed back (:class:`_Undelivered`) and given to the next instance. A child whose
process simply dies is seen through Thespian's ``ChildActorExited``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from typing import Any

import attrs
from thespian.actors import ActorExitRequest, ChildActorExited, PoisonMessage, WakeupMessage

from ._actor import SupervisedActor
from ._child import LIVE, Child
from ._introspection import TreeGathering
from ._messages import (
    ChildAddress,
    ChildStarted,
    ChildTerminated,
    Envelope,
    Failure,
    Forward,
    GetTree,
    StartChild,
    Stop,
    Stopped,
    TerminateChild,
    TreeNode,
    WatchChildren,
    WhereIs,
    _Describe,
    _Exiting,
    _GatherDue,
    _Init,
    _RestartDue,
    _Started,
    _StopDue,
    _Undelivered,
)
from ._process import is_child_process, kill_process, process_gone
from ._spec import ChildSpec, SupervisorSpec

__all__ = ["Child", "Supervisor"]

MAX_FAILED_STARTS = 2  # a dynamic child crashing this often in a row in its start is given up
MAX_HISTORY = 1000  # dynamic children whose recent crashes are remembered after they end


def log() -> logging.Logger:
    # Looked up at each use: Thespian replaces the logging root in every actor process it forks,
    # so a logger bound at import time would bypass its forwarding to the log process.
    return logging.getLogger(__name__)


class _LivenessDue:
    """Time to look for children whose death Thespian did not report."""


class Supervisor(TreeGathering, SupervisedActor):
    """A supervisor; ``self.args`` is its :class:`SupervisorSpec`.

    Subclasses (a router hosting dynamic children, say) extend :meth:`handle` for their own
    messages and may override :meth:`child_started`, :meth:`child_ended` and :meth:`undelivered`.
    """

    kind = "supervisor"
    supervises = True  # (read by Child.is_supervisor)

    def on_start(self) -> None:
        # A plain supervisor gets its spec as args; a subclass may get {"spec": ..., ...}.
        self.spec: SupervisorSpec = (
            self.args if isinstance(self.args, SupervisorSpec) else self.args["spec"]
        )
        self.children: dict[str, Child] = {}
        self._by_address: dict[str, Child] = {}
        self._restart_times: deque[float] = deque()
        self._watchers: list[Any] = []
        self._gathers: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._mode = "starting"  # starting running escalating shutdown
        self._stop_queue: list[str] = []
        self._stopping_names: set[str] = set()
        self._start_set: list[str] = []
        self._plan_delay = 0.0
        self._plan_delay_due = False
        self._ready_to: tuple[Any, Any] | None = None
        self._stop_reply: list[tuple[Any, Any]] = []
        self._shutdown_reason: Failure | None = None
        self._start_queue: list[str] = []
        self._liveness_due = False
        # name -> (when, recent restarts, failed starts) of dynamic children that ended crashed
        self._history: dict[str, tuple[float, deque[float], int]] = {}
        for spec in self.spec.children:
            self.children[spec.name] = Child(spec)
        self._start_in_order(list(self.children))

    # -- SupervisedActor plumbing -----------------------------------------------------------

    def _announce(self, init: _Init, sender: Any) -> None:
        # Ready only once every static child reports started.
        self._ready_to = (sender, init.request_id)
        self._check_ready()

    def _check_ready(self) -> None:
        if self._ready_to is None or self._mode != "starting":
            return
        if all(c.status == "running" for c in self.children.values() if not c.dynamic):
            to, request_id = self._ready_to
            self._ready_to = None
            self._mode = "running"
            self.send(to, _Started(self.name, os.getpid(), request_id))

    def _on_describe(self, request: _Describe, sender: Any) -> None:
        self._gather(sender, request.request_id, request.timeout)

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.spec.strategy}

    # -- message dispatch -------------------------------------------------------------------

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, ChildActorExited):
            self._on_exited(message.childAddress)
        elif isinstance(message, _Started):
            self._on_started(message, sender)
        elif isinstance(message, _Exiting):
            self._on_exiting(message, sender)
        elif isinstance(message, _Undelivered):
            # By the time it arrives, the instance that handed it back may be gone: its name
            # still finds the child, and its next instance.
            child = self._child_at(sender) or self.children.get(message.name)
            if child is not None:
                self.undelivered(child, message.message, message.sender)
            else:
                self.lost(message.message, message.sender)
        elif isinstance(message, TreeNode):
            self._on_description(message)
        elif isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, Forward):
            self.forward(message.name, message.message, sender)
        elif isinstance(message, WhereIs):
            self._on_whereis(message, sender)
        elif isinstance(message, WatchChildren):
            self._watchers.append(sender)
            for child in self.children.values():
                if child.status in LIVE:
                    self.send(sender, ChildAddress(child.name, child.address))
        elif isinstance(message, StartChild):
            self._on_start_child(message, sender)
        elif isinstance(message, TerminateChild):
            self._on_terminate_child(message, sender)
        elif isinstance(message, GetTree):
            self._gather(sender, message.request_id, message.timeout)
        elif isinstance(message, Stop):
            self._stop_reply.append((sender, message.request_id))
            self._begin_shutdown(None)
        elif isinstance(message, Stopped):
            pass  # a nested supervisor finished stopping; its exit follows
        elif isinstance(message, PoisonMessage):
            log().warning("%s: a message it sent failed: %s", self.name, message.details)
        else:
            self.handle(message, sender)

    def handle(self, message: Any, sender: Any) -> None:
        """Messages that are not part of the supervision protocol; subclasses extend this."""
        log().warning("%s: unexpected message %r", self.name, message)

    # -- hooks for subclasses ---------------------------------------------------------------

    def child_started(self, child: Child) -> None:
        """``child`` has just (re)started at ``child.address``."""

    def child_ended(self, child: Child) -> None:
        """``child`` ended and will not be restarted; its undelivered messages get failures."""
        for message, sender in child.bounced + child.pending:
            if sender is not None:
                reason = child.last_failure.message if child.last_failure else "stopped"
                self.send(sender, Failure(child.name, "ChildStopped", reason, "", message))
        child.pending.clear()
        child.bounced.clear()

    def undelivered(self, child: Child, message: Any, sender: Any) -> None:
        """A message reached ``child`` after it asked to exit; by default the next instance gets it.

        Such messages were sent to the old instance before anything the supervisor held back
        while it was exiting, so the next instance gets them first.
        """
        if child.status in LIVE:
            self.send(child.address, Envelope(message, sender))
            return
        child.bounced.append((message, sender))
        if child.status == "stopped":
            self.child_ended(child)

    def lost(self, message: Any, sender: Any) -> None:
        """A message handed back by a child that no longer exists: its sender hears of it."""
        if sender is not None:
            self.send(sender, Failure(self.name, "ChildStopped", "the child is gone", "", message))

    # -- public operations, also usable by subclasses ---------------------------------------

    def forward(self, name: str, message: Any, sender: Any) -> None:
        child = self.children.get(name)
        if child is None:
            self.send(
                sender, Failure(self.name, "NoSuchChild", f"no child named {name!r}", "", message)
            )
        elif child.status in LIVE:
            self.send(child.address, Envelope(message, sender))
        elif child.status == "stopped":
            self.send(sender, Failure(name, "ChildStopped", "the child is stopped", "", message))
        else:
            child.pending.append((message, sender))

    def start_child(self, spec: ChildSpec) -> Child:
        """Start a dynamic child now (idempotent for a name that is already live)."""
        child = self.children.get(spec.name)
        if child is not None and child.status != "stopped":
            return child
        child = Child(spec, dynamic=True)
        before = self._history.pop(spec.name, None)
        if before is not None and before[0] > time.monotonic() - max(self.spec.within, 60.0):
            # Started again on demand: its recent crashes still count (backoff, failed starts).
            child.recent, child.failed_starts = before[1], before[2]
        self.children[spec.name] = child
        self._start(child)
        return child

    def terminate_child(self, name: str) -> None:
        child = self.children.get(name)
        if child is not None:
            self._stop_child(child)

    # -- starting ---------------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        child.generation += 1
        child.failure = None
        nested = isinstance(child.spec.actor, SupervisorSpec)
        actor = Supervisor if nested else child.spec.actor
        args = child.spec.actor if nested else child.spec.args
        try:
            address = self.createActor(actor)
        except Exception as exc:
            log().exception("%s: cannot create child %s", self.name, child.name)
            self._ended(child, Failure(child.name, type(exc).__name__, str(exc)))
            return
        child.address = address
        child.status = "starting"
        self._by_address[str(address)] = child
        self.send(
            address,
            _Init(child.name, args, self.myAddress, child.kind, child.generation),
        )
        pending, child.pending, child.bounced = child.bounced + child.pending, [], []
        for message, sender in pending:
            self.send(address, Envelope(message, sender))

    def _on_started(self, started: _Started, sender: Any) -> None:
        child = self.children.get(started.name)
        if child is None or started.request_id != child.generation or child.status != "starting":
            return
        child.status = "running"
        child.failed_starts = 0
        child.pid = started.pid
        child.forked = is_child_process(started.pid)
        child.address = sender
        self._by_address[str(sender)] = child
        for watcher in self._watchers:
            self.send(watcher, ChildAddress(child.name, child.address))
        for who, request_id, what in child.waiters:
            if what == "start":
                self.send(who, ChildStarted(child.name, child.address, request_id))
            elif what == "whereis":
                self.send(who, ChildAddress(child.name, child.address, request_id))
        child.waiters = [w for w in child.waiters if w[2] == "terminate"]
        self.child_started(child)
        if self._start_queue and self._start_queue[0] == child.name:
            self._start_queue.pop(0)
            self._start_next()
        self._check_ready()

    # -- exits ------------------------------------------------------------------------------

    def _child_at(self, address: Any) -> Child | None:
        child = self._by_address.get(str(address))
        if child is not None and child.address == address:
            return child
        for candidate in self.children.values():
            if candidate.address is not None and candidate.address == address:
                return candidate
        return None

    def _on_exiting(self, exiting: _Exiting, sender: Any) -> None:
        child = self._child_at(sender)
        if child is None:
            return
        if child.status == "starting" and exiting.crash is not None:
            child.failed_starts += 1
        if child.status in LIVE:
            child.status = "exiting"
        child.failure = exiting.crash
        self.send(sender, ActorExitRequest())

    def _on_exited(self, address: Any) -> None:
        child = self._child_at(address)
        if child is None:
            return
        if child.forked and not self._liveness_due:
            # Thespian reports only one of two child processes that die at nearly the same time:
            # handling the first exit, it reaps any other dead child without a word
            # (multiprocCommon's _childExited). Look for such siblings once that is done.
            self._liveness_due = True
            self.wakeupAfter(0.05, _LivenessDue())
        self._by_address.pop(str(child.address), None)
        self._by_address.pop(str(address), None)
        was = child.status
        child.address = None
        child.pid = None
        if was == "stopping":
            self._stopping_names.discard(child.name)
            child.status = "stopped"
            self._stopped(child)
        else:
            failure = child.failure
            if was != "exiting":
                failure = Failure(child.name, "Killed", "the actor's process died")
                if was == "starting":
                    child.failed_starts += 1
            self._ended(child, failure)
        self._gathers_drop(child.name)

    def _ended(self, child: Child, failure: Failure | None) -> None:
        """``child`` ended on its own (crash when ``failure`` is set); restart it or not."""
        child.last_failure = failure or child.last_failure
        if failure is not None:
            log().warning("%s: child %s crashed: %s", self.name, child.name, failure)
        restart = child.spec.restart == "permanent" or (
            child.spec.restart == "transient" and failure is not None
        )
        if self._mode in ("shutdown", "escalating") or not restart:
            child.status = "stopped"
            self._stopped(child)
            return
        if child.dynamic and child.failed_starts >= MAX_FAILED_STARTS:
            # Started on demand and crashing in its start: the same input would crash it again.
            log().error(
                "%s: child %s failed to start %d times in a row; not restarted: %s",
                self.name,
                child.name,
                child.failed_starts,
                failure,
            )
            child.gave_up = True
            child.status = "stopped"
            self._stopped(child)
            return
        now = time.monotonic()
        window = now - self.spec.within
        while self._restart_times and self._restart_times[0] < window:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.spec.max_restarts:
            child.status = "stopped"
            self.child_ended(child)
            reason = Failure(
                self.name,
                "RestartIntensity",
                f"more than {self.spec.max_restarts} restarts within {self.spec.within}s; "
                f"last: {failure or 'exit of ' + child.name}",
            )
            self._begin_shutdown(reason)
            return
        self._restart_times.append(now)
        child.status = "restarting"
        while child.recent and child.recent[0] < window:
            child.recent.popleft()
        delay = self.spec.backoff.delay(len(child.recent) + 1) if self.spec.backoff else 0.0
        child.recent.append(now)
        affected = self._affected(child)
        for each in affected:
            each.restarts += 1
        if self.spec.strategy == "one_for_one":
            self._schedule_start(child, delay)
        else:
            self._plan(affected, delay)

    def _affected(self, child: Child) -> list[Child]:
        if self.spec.strategy == "one_for_all":
            return [c for c in self.children.values() if c.status != "stopped" or c is child]
        if self.spec.strategy == "rest_for_one":
            names = list(self.children)
            later = names[names.index(child.name) :]
            return [
                self.children[n]
                for n in later
                if self.children[n].status != "stopped" or n == child.name
            ]
        return [child]

    def _schedule_start(self, child: Child, delay: float) -> None:
        child.status = "restarting"
        if delay > 0:
            child.generation += 1
            self.wakeupAfter(delay, _RestartDue(child.name, child.generation))
        else:
            self._start(child)

    def _plan(self, affected: list[Child], delay: float) -> None:
        # Stop the live ones in reverse start order, then start all of them in start order.
        for child in reversed(affected):
            if child.status in (*LIVE, "exiting") and child.name not in self._stop_queue:
                self._stop_queue.append(child.name)
            elif child.status not in ("stopping",):
                child.status = "restarting"
        for child in affected:
            if child.name not in self._start_set:
                self._start_set.append(child.name)
        self._plan_delay = max(self._plan_delay, delay)
        self._advance()

    def _advance(self) -> None:
        """Next step of a restart plan or of a shutdown: one stop at a time, then the starts."""
        if self._stopping_names:
            return
        while self._stop_queue:
            child = self.children.get(self._stop_queue.pop(0))
            if child is not None and child.status in (*LIVE, "exiting"):
                self._stop_child(child)
                return
        if self._mode in ("shutdown", "escalating"):
            self._finish_shutdown()
            return
        if self._start_set:
            delay, self._plan_delay = self._plan_delay, 0.0
            if delay > 0 and not self._plan_delay_due:
                self._plan_delay_due = True
                self.wakeupAfter(delay, _RestartDue("", -1))
                return
            self._plan_delay_due = False
            order = [n for n in self.children if n in self._start_set]
            self._start_set = []
            for name in order:
                self.children[name].status = "restarting"
            self._start_in_order(order)

    def _start_in_order(self, names: list[str]) -> None:
        """Start static children one after the other, each once the previous one is running."""
        self._start_queue.extend(n for n in names if n not in self._start_queue)
        self._start_next()

    def _start_next(self) -> None:
        while self._start_queue:
            child = self.children.get(self._start_queue[0])
            if child is None or child.status == "running":
                self._start_queue.pop(0)
                continue
            if child.status != "starting" and self._mode not in ("shutdown", "escalating"):
                self._start(child)
            return

    def _stop_child(self, child: Child) -> None:
        if child.address is None or child.status in ("stopped", "stopping"):
            if child.status not in ("stopping",):
                child.status = "stopped"
                self._stopped(child)
            return
        child.status = "stopping"
        self._stopping_names.add(child.name)
        child.generation += 1
        self.send(child.address, Stop() if child.is_supervisor else ActorExitRequest())
        if child.is_supervisor or child.pid != os.getpid():
            # A worker in this very process (simpleSystemBase) stops before anything else runs,
            # and could not be killed anyway: no deadline, so thousands of passivations do not
            # pile up thousands of timers.
            self.wakeupAfter(child.spec.shutdown, _StopDue(child.name, child.generation))

    def _stopped(self, child: Child) -> None:
        """``child`` is down for good unless a plan starts it again."""
        if child.name not in self._start_set:
            for who, request_id, what in child.waiters:
                if what == "terminate":
                    self.send(who, ChildTerminated(child.name, request_id))
                elif what == "whereis":
                    self.send(who, ChildAddress(child.name, None, request_id))
                else:
                    why = str(child.last_failure) if child.gave_up else "stopped"
                    self.send(who, Failure(child.name, "ChildStopped", why, "", None, request_id))
            child.waiters = []
        if child.name not in self._start_set:
            if child.dynamic and (child.failed_starts or child.recent):
                self._remember_history(child)
            if child.dynamic or child.spec.restart == "temporary":
                self.children.pop(child.name, None)
            for watcher in self._watchers:
                self.send(watcher, ChildAddress(child.name, None))
            self.child_ended(child)
        self._advance()

    def _remember_history(self, child: Child) -> None:
        """Keep a dynamic child's recent crashes for its next start on demand (bounded)."""
        self._history[child.name] = (time.monotonic(), child.recent, child.failed_starts)
        while len(self._history) > MAX_HISTORY:
            del self._history[next(iter(self._history))]

    def _on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, _RestartDue):
            if payload.generation == -1:
                self._advance()
                return
            child = self.children.get(payload.name)
            if (
                child is not None
                and child.generation == payload.generation
                and child.status == "restarting"
                and self._mode not in ("shutdown", "escalating")
            ):
                self._start(child)
        elif isinstance(payload, _StopDue):
            child = self.children.get(payload.name)
            if child and child.generation == payload.generation and child.status == "stopping":
                log().warning(
                    "%s: child %s did not stop in %ss; killing it",
                    self.name,
                    child.name,
                    child.spec.shutdown,
                )
                if not kill_process(child.pid):
                    # Same process (simpleSystemBase): nothing to kill; consider it gone.
                    self._by_address.pop(str(child.address), None)
                    child.address = None
                    child.status = "stopped"
                    self._stopping_names.discard(child.name)
                    self._stopped(child)
        elif isinstance(payload, _LivenessDue):
            self._liveness_due = False
            for child in list(self.children.values()):
                if child.address is not None and child.forked and process_gone(child.pid):
                    log().warning("%s: child %s died unreported", self.name, child.name)
                    self._on_exited(child.address)
        elif isinstance(payload, _GatherDue):
            gather = self._gathers.get(payload.request_id)
            if gather is not None:
                self._finish_gather(payload.request_id, gather)
        else:
            self.handle(WakeupMessage(0, payload), None)

    # -- shutdown and escalation ------------------------------------------------------------

    def _begin_shutdown(self, reason: Failure | None) -> None:
        if self._mode in ("shutdown", "escalating"):
            return
        self._mode = "escalating" if reason is not None else "shutdown"
        self._shutdown_reason = reason
        self._start_set = []
        self._start_queue = []
        self._stop_queue = [
            n for n in reversed(self.children) if self.children[n].status != "stopped"
        ]
        self._advance()

    def _finish_shutdown(self) -> None:
        reason = self._shutdown_reason
        for who, request_id in self._stop_reply:
            self.send(who, Stopped(request_id))
        self._stop_reply = []
        if self._ready_to is not None:
            who, request_id = self._ready_to
            self._ready_to = None
            failure = reason or Failure(self.name, "Stopped", "stopped while starting")
            self.send(who, attrs.evolve(failure, request_id=request_id))
        if reason is None:
            self.stop()
        elif self.supervisor is None:
            log().error("%s: root supervisor gives up and stops: %s", self.name, reason)
            self.crash(reason)
        else:
            log().error("%s: escalating to its supervisor: %s", self.name, reason)
            self.crash(reason)

    # -- dynamic children -------------------------------------------------------------------

    def _on_start_child(self, request: StartChild, sender: Any) -> None:
        if self._mode in ("shutdown", "escalating"):
            self.send(
                sender, Failure(self.name, "ShuttingDown", "supervisor is stopping", "", request)
            )
            return
        child = self.start_child(request.spec)
        if child.status == "running":
            self.send(sender, ChildStarted(child.name, child.address, request.request_id))
        else:
            child.waiters.append((sender, request.request_id, "start"))

    def _on_whereis(self, request: WhereIs, sender: Any) -> None:
        # A child between instances is answered once its next instance is up.
        child = self.children.get(request.name)
        if child is None or child.status in LIVE or child.status == "stopped":
            address = child.address if child is not None and child.status in LIVE else None
            self.send(sender, ChildAddress(request.name, address, request.request_id))
        else:
            child.waiters.append((sender, request.request_id, "whereis"))

    def _on_terminate_child(self, request: TerminateChild, sender: Any) -> None:
        child = self.children.get(request.name)
        if child is None or child.status == "stopped":
            self.send(sender, ChildTerminated(request.name, request.request_id))
            return
        child.waiters.append((sender, request.request_id, "terminate"))
        # A terminated child is not restarted, whatever its restart type.
        child.spec = attrs.evolve(child.spec, restart="temporary")
        self._stop_child(child)
