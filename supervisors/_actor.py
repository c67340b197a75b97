"""``SupervisedActor``: a Thespian actor that crashes the OTP way.

Thespian retries a message whose handler raised and then keeps the same instance running with
whatever the failed attempts left in its state. A ``SupervisedActor`` instead catches the exception,
answers the sender with a :class:`Failure`, asks its supervisor to end it, and from then on hands
every message it still receives back to the supervisor, which delivers them to a fresh instance.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

from thespian.actors import (
    Actor,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from ._messages import (
    Envelope,
    Failure,
    TreeNode,
    _Describe,
    _Exiting,
    _Init,
    _Started,
    _Undelivered,
)
from ._process import die_with_parent
from ._thespian_compat import in_own_process

__all__ = ["SupervisedActor"]


def log() -> logging.Logger:
    # Looked up at each use: Thespian replaces the logging root in every actor process it forks,
    # so a logger bound at import time would bypass its forwarding to the log process.
    return logging.getLogger(__name__)


class SupervisedActor(Actor):
    """Base class of every supervised worker.

    Override :meth:`on_start` (fresh state after every start and restart), :meth:`receive`, and
    optionally :meth:`on_stop` and :meth:`describe`. An exception escaping ``receive`` or
    ``on_start`` is a crash: this instance is discarded and the supervisor starts a new one.
    """

    kind = "worker"

    def __init__(self) -> None:
        super().__init__()
        if in_own_process():
            # Die with the parent's process from the first instant: a supervisor killed between
            # creating a child and initialising it must not leave the child behind as an orphan.
            die_with_parent()
        self.name: str = ""
        self.args: Any = {}
        self.supervisor: Any = None
        self._phase = "new"  # new -> running -> exiting
        self._early: list[tuple[Any, Any]] = []

    # -- hooks ------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Build fresh state. Called once per instance, before any message reaches ``receive``."""

    def receive(self, message: Any, sender: Any) -> None:
        """Handle one message. Raise to crash."""

    def on_stop(self) -> None:
        """Release resources; called when the instance is stopped in an orderly way."""

    def on_exit(self) -> None:
        """Called once when this instance leaves service by crashing or :meth:`stop` (its process
        may live on until the supervisor ends it): close what others could still reach."""

    def describe(self) -> dict[str, Any]:
        """Extra fields for this actor's node in :func:`~supervisors.tree`."""
        return {}

    def watched(self) -> list[int]:
        """File descriptors to watch while this instance runs (multiproc bases only): when some
        are ready, ``receive`` gets a ``WatchMessage`` naming them, in turn with the mailbox."""
        return []

    # -- helpers for subclasses -------------------------------------------------------------

    def stop(self) -> None:
        """Exit normally: a ``transient`` or ``temporary`` child is then not restarted."""
        self._exit(None)

    def hand_back(self, message: Any, sender: Any) -> None:
        """Return a message this instance accepted but will not handle (it is about to crash or
        stop): the supervisor gives it to the next instance, with ``sender`` as its sender."""
        self._bounce(message, sender)

    def crash(self, failure: Failure) -> None:
        """Exit as crashed without an exception in hand (e.g. a resource was found broken)."""
        self._exit(failure)

    # -- Thespian entry point ---------------------------------------------------------------

    def receiveMessage(self, message: Any, sender: Any) -> ThespianWatch | None:  # Thespian's
        self._receive_message(message, sender)
        if self._phase == "running":
            watched = self.watched()
            if watched:
                return ThespianWatch(watched)
        return None

    def _receive_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, Envelope):
            message, sender = message.message, message.reply_to
        if isinstance(message, ActorExitRequest):
            self._stopping()
            return
        if self._phase == "exiting":
            self._bounce(message, sender)
            return
        if isinstance(message, _Init):
            self._init(message, sender)
            return
        if isinstance(message, _Describe):
            self._on_describe(message, sender)
            return
        if self._phase == "new" and not isinstance(message, (ChildActorExited, PoisonMessage)):
            self._early.append((message, sender))
            return
        self._deliver(message, sender)

    # -- internals --------------------------------------------------------------------------

    def _init(self, init: _Init, sender: Any) -> None:
        self.name = init.name
        self.args = init.args
        self.supervisor = init.supervisor
        if init.kind:
            self.kind = init.kind
        try:
            self.on_start()
        except Exception as exc:
            # A root has no supervisor to restart it: its starter hears of the failure.
            self._crash_with(exc, init, sender if self.supervisor is None else None)
            return
        self._phase = "running"
        self._announce(init, sender)
        early, self._early = self._early, []
        for message, original_sender in early:
            if self._phase != "running":
                self._bounce(message, original_sender)
            else:
                self._deliver(message, original_sender)

    def _announce(self, init: _Init, sender: Any) -> None:
        self.send(sender, _Started(self.name, os.getpid(), init.request_id))

    def _deliver(self, message: Any, sender: Any) -> None:
        if isinstance(message, (WakeupMessage, WatchMessage)) and self._phase != "running":
            return
        try:
            self.receive(message, sender)
        except Exception as exc:
            self._crash_with(exc, message, sender)

    def _crash_with(self, exc: BaseException, message: Any, sender: Any) -> None:
        failure = Failure(
            actor=self.name,
            error_type=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        log().error(
            "%s crashed on %s: %s", self.name, type(message).__name__, failure, exc_info=exc
        )
        if sender is not None and sender != self.supervisor and not _is_system(message):
            self.send(sender, Failure(self.name, failure.error_type, failure.message, "", message))
        self._exit(failure)

    def _exit(self, failure: Failure | None) -> None:
        if self._phase == "exiting":
            return
        self._phase = "exiting"
        try:
            self.on_exit()
        except Exception:
            log().exception("%s: on_exit failed", self.name)
        if self.supervisor is None:
            self.send(self.myAddress, ActorExitRequest())
            return
        # The supervisor ends us: its ActorExitRequest arrives after everything it sent before,
        # and whatever we receive until then goes back to it (see _bounce).
        self.send(self.supervisor, _Exiting(self.name, failure))
        for message, original_sender in self._early:
            self._bounce(message, original_sender)
        self._early = []

    def _bounce(self, message: Any, sender: Any) -> None:
        if _is_system(message) or isinstance(message, (_Describe, _Init)):
            return
        if self.supervisor is not None:
            self.send(self.supervisor, _Undelivered(message, sender, self.name))

    def _stopping(self) -> None:
        if self._phase == "running":
            try:
                self.on_stop()
            except Exception:
                log().exception("%s: on_stop failed", self.name)
        self._phase = "exiting"

    def _on_describe(self, request: _Describe, sender: Any) -> None:
        try:
            extra = self.describe()
        except Exception as exc:
            extra = {"describe_error": f"{type(exc).__name__}: {exc}"}
        self.send(sender, TreeNode(extra, request.request_id))


def _is_system(message: Any) -> bool:
    return isinstance(
        message, (WakeupMessage, WatchMessage, ChildActorExited, PoisonMessage, ActorExitRequest)
    )
