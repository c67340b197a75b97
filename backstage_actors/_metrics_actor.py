"""The ``metrics`` actor: the Prometheus endpoint of an application on multiproc.

It lives in the supervision tree, so the endpoint lives as long as the actor system does (a
``backstage start`` daemon included, whose starting command has long returned). Its HTTP thread
asks the tree on each scrape through a client of its own, attached to the admin like any other
program (see :mod:`backstage_actors.metrics`). A port it cannot bind is logged and shown in the
tree, not a crash: restarting would not free the port, and the application must keep serving.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import supervisors
from supervisors import SupervisedActor, Supervisor

from . import _thespian
from .metrics import MetricsServer, TreeCollector, owner_lookup

__all__ = ["MetricsActor"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


class MetricsActor(SupervisedActor):
    """``self.args``: ``port``/``host`` of the admin, ``root_name``, ``router``, and
    ``metrics_port``/``metrics_host`` to serve on."""

    kind = "metrics"

    def on_start(self) -> None:
        self.server: MetricsServer | None = None
        self.error: str | None = None
        self._client: Any = None
        self._root: Any = None
        self._lock = threading.Lock()
        collector = TreeCollector(self._tree, owner_lookup(self.args["router"]))
        try:
            self.server = MetricsServer(
                collector, self.args["metrics_port"], self.args["metrics_host"]
            )
        except OSError as exc:
            self.error = f"cannot serve metrics on {self.args['metrics_host']}:{self.args['metrics_port']}: {exc}"
            log().error("%s", self.error)

    def _tree(self) -> dict[str, Any]:
        """The whole tree, asked from the HTTP thread through this process's own client."""
        with self._lock:
            if self._client is None:
                self._client = _thespian.attach(self.args["port"], self.args["host"])
                self._root = self._client.createActor(Supervisor, globalName=self.args["root_name"])
            return supervisors.tree(self._client, self._root, timeout=5.0)

    def describe(self) -> dict[str, Any]:
        if self.server is None:
            return {"error": self.error}
        return {"url": self.server.url}

    def receive(self, message: Any, sender: Any) -> None:
        pass

    def on_exit(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
