"""Actors for the supervision tests; a module of its own so that Thespian can import them by name."""

from __future__ import annotations

import os
import time
from typing import Any

from thespian.actors import Actor

from supervisors import SupervisedActor


class Probe(Actor):
    """Records what the workers report, in arrival order; ``"dump"`` returns the record."""

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if not hasattr(self, "events"):
            self.events: list[Any] = []
        if message == "dump":
            self.send(sender, list(self.events))
        elif isinstance(message, tuple):
            self.events.append(message)


class Worker(SupervisedActor):
    """A counter that reports its lifecycle to ``args["probe"]``."""

    def report(self, *event: Any) -> None:
        probe = self.args.get("probe") if isinstance(self.args, dict) else None
        if probe is not None:
            self.send(probe, (*event, self.name, time.monotonic()))

    def on_start(self) -> None:
        self.count = 0
        if self.args.get("fail_start"):
            self.report("attempt")
            raise RuntimeError("cannot start")
        self.report("start")

    def on_stop(self) -> None:
        self.report("stop")

    def describe(self) -> dict[str, Any]:
        return {"count": self.count}

    def receive(self, message: Any, sender: Any) -> None:
        if message == "inc":
            self.count += 1
            self.send(sender, self.count)
        elif message == "inc-silently":
            self.count += 1
        elif message == "get":
            self.send(sender, self.count)
        elif message == "boom":
            # Half-change the state, then crash: the next instance must not see this.
            self.count += 100
            self.report("boom")
            raise ValueError("boom on purpose")
        elif message == "pid":
            self.send(sender, os.getpid())
        elif message == "quit":
            self.send(sender, "bye")
            self.stop()
        elif message == "hang":
            self.send(sender, "hanging")
            time.sleep(3600)
