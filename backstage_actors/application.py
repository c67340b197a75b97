"""The application: what runs (router, handlers, projections, process managers) and where.

``Application`` is a description; ``app.start()`` brings up an actor system and the supervision
tree and returns a :class:`RunningSystem`, the handle you dispatch commands through::

    with app.start(base="simple") as system:
        result = system.dispatch(OpenAccount("a-1", "Ada"))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import attrs

from supervisors import ChildSpec, Supervisor, SupervisorSpec, start_supervisor

from . import _thespian
from ._admin_watch import with_admin_watch
from ._client import RunningSystem
from ._owner import check_free
from ._protocol import Settings
from ._store_actor import StoreActor
from .limits import DEFAULT_LIMITS, Limits
from .middleware import Middleware
from .router import Router, RouterActor

__all__ = ["Application", "RunningSystem"]

#: Live aggregate actors per base: each one is a process on multiproc (4-6 MiB each).
DEFAULT_MAX_LIVE = {"simple": 2_000, "multiproc": 300}


class Application:
    """An event-sourced application.

    ``database`` is the SQLite file of the event store (and, by default, of the projections).
    ``synchronous`` is ``"FULL"`` (every commit fsynced) or ``"NORMAL"``. ``lifespan`` is how long
    an idle aggregate actor lives by default (None: until the cap pushes it out); ``max_live``
    caps live aggregate actors (default: 2,000 in-process, 300 on multiproc).
    ``restart_intensity`` is the root supervisor's ``(max_restarts, within)``: more crashes of the
    store, the router or the events supervisor than that within ``within`` seconds stop the
    application (aggregates and subscribers crash under their own, more tolerant supervisors).
    ``limits`` bounds what commands, events and metadata may hold (:class:`Limits`): checked at
    every way in, before any actor sees a command. ``exclusive`` (default) refuses to start
    while another application runs on the same database on this host (its side effects would
    run twice); False lets several share it (members of one cluster).
    """

    def __init__(
        self,
        name: str,
        router: Router,
        handlers: Sequence[type] = (),
        projections: Sequence[type] = (),
        process_managers: Sequence[type] = (),
        database: str = "backstage.db",
        synchronous: str = "FULL",
        middleware: Sequence[Middleware] = (),
        lifespan: float | None = 300.0,
        max_live: int | None = None,
        max_retries: int = 3,
        restart_intensity: tuple[int, float] = (10, 10.0),
        limits: Limits = DEFAULT_LIMITS,
        exclusive: bool = True,
    ) -> None:
        self.name = name
        self.router = router
        self.handlers = list(handlers)
        self.projections = list(projections)
        self.process_managers = list(process_managers)
        self.database = database
        self.synchronous = synchronous
        self.middleware = list(middleware)
        self.lifespan = lifespan
        self.max_live = max_live
        self.max_retries = max_retries
        self.restart_intensity = restart_intensity
        self.limits = limits
        self.exclusive = exclusive

    @property
    def subscribers(self) -> list[type]:
        return [*self.handlers, *self.projections, *self.process_managers]

    def settings(self, base: str, database: str | None = None) -> Settings:
        return Settings(
            database=os.path.abspath(database or self.database),
            synchronous=self.synchronous,
            base=base,
            max_retries=self.max_retries,
            lifespan=self.lifespan,
            max_live=self.max_live or DEFAULT_MAX_LIVE[base],
            limits=self.limits,
            exclusive=self.exclusive,
            app_name=self.name,
        )

    def supervisor_spec(self, settings: Settings) -> SupervisorSpec:
        """The application's supervision tree."""
        children = [
            ChildSpec("store", StoreActor, args={"settings": settings}),
            ChildSpec(
                "router",
                RouterActor,
                args={
                    # Aggregates crash independently: many restarts must not take the router down.
                    "spec": SupervisorSpec(max_restarts=10_000, within=1.0, kind="router"),
                    "router": self.router,
                    "settings": settings,
                },
            ),
        ]
        events = self._events_child(settings)
        if events is not None:
            children.append(events)
        max_restarts, within = self.restart_intensity
        return SupervisorSpec(
            strategy="one_for_one",
            max_restarts=max_restarts,
            within=within,
            kind="application",
            children=children,
        )

    def _events_child(self, settings: Settings) -> ChildSpec | None:
        if not self.subscribers:
            return None
        from ._events import events_supervisor_spec

        return events_supervisor_spec(self, settings)

    def start(
        self,
        base: str = "simple",
        port: int | None = None,
        database: str | None = None,
        host: str = "127.0.0.1",
        log_defs: Any = None,
        timeout: float = 60.0,
    ) -> RunningSystem:
        """Start an actor system and this application's tree; use the result as a context manager.

        ``base="multiproc"`` runs every actor in its own process with the admin on
        ``host:port`` (127.0.0.1 and a free port by default).
        """
        settings = self.settings(base, database)
        if settings.exclusive:
            check_free(settings.database)  # (the store actor takes the lock itself)
        if base != "simple":
            port = port or _thespian.free_port(host)
            settings = attrs.evolve(settings, admin_port=port)
            log_defs = with_admin_watch(log_defs)  # its logger process dies with the admin
        actor_system = _thespian.start_actor_system(base, port, host, log_defs)
        try:
            root = start_supervisor(
                actor_system, self.supervisor_spec(settings), name=self.root_name, timeout=timeout
            )
        except BaseException:
            actor_system.shutdown()
            raise
        return RunningSystem(self, actor_system, root, base, settings, owns_system=True)

    @property
    def root_name(self) -> str:
        return f"backstage:{self.name}"

    def attach(
        self, actor_system: Any, base: str = "multiproc", database: str | None = None
    ) -> RunningSystem:
        """A handle on this application already running in ``actor_system`` (started elsewhere)."""
        root = actor_system.createActor(Supervisor, globalName=self.root_name)
        return RunningSystem(
            self, actor_system, root, base, self.settings(base, database), owns_system=False
        )
