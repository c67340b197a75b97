"""The application: what runs (router, handlers, projections, process managers) and where.

``Application`` is a description; ``app.start()`` brings up an actor system and the supervision
tree and returns a :class:`RunningSystem`, the handle you dispatch commands through::

    with app.start(base="simple") as system:
        result = system.dispatch(OpenAccount("a-1", "Ada"))
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

import attrs

import supervisors
from supervisors import ChildSpec, Supervisor, SupervisorSpec, start_supervisor

from . import _thespian
from ._admin_watch import with_admin_watch
from ._bus_waker import BusWaker
from ._cluster import cluster_capabilities, introduce
from ._event_bus import events_supervisor_spec
from ._metrics_actor import MetricsActor
from ._names import EVENTS, ROUTER, STORE
from ._owner import check_free
from ._protocol import Settings
from ._router_actor import RouterActor
from ._store_actor import StoreActor
from .client import RunningSystem
from .errors import BackstageError, SystemNotRunning
from .limits import DEFAULT_LIMITS, Limits
from .metrics import serve
from .middleware import Middleware
from .router import Router
from .store import EventStore, is_postgres, normalise

__all__ = ["Application", "RunningSystem"]

#: Live aggregates, all shards together (a live aggregate is its state and a mailbox in a shard).
DEFAULT_MAX_LIVE = {"simple": 20_000, "multiproc": 20_000}


def default_shards(base: str) -> int:
    """Shards on ``base``: one in-process; on multiproc one per core but one, at least one.

    The core left over is for the rest of the application (router, event bus, subscribers) and
    its clients on the same host; and SQLite takes one writer at a time, so a second shard
    buys only parallel Python at the price of smaller group commits and of a page cache each
    writer loses at every commit of another. Measured on 2 cores (README, "Benchmarks"): one
    shard beat two at every daemon workload on SQLite (1 client +16 %, 8 clients +22-45 %, the
    bank's chaos drill +20-30 %) and matched it on PostgreSQL.
    """
    return 1 if base == "simple" else max(1, (os.cpu_count() or 1) - 1)


class Application:
    """An event-sourced application.

    ``database`` is the SQLite file of the event store (and, by default, of the projections).
    ``synchronous`` is ``"FULL"`` (every commit fsynced) or ``"NORMAL"``. ``lifespan`` is how long
    an idle aggregate stays live by default (None: until the cap pushes it out); ``max_live``
    caps live aggregates (default: 20,000). ``shards`` is how many shard actors host them
    (on multiproc each is a process; default: one per core but one there, one in-process).
    ``restart_intensity`` is the root supervisor's ``(max_restarts, within)``: more crashes of the
    store, the router or the events supervisor than that within ``within`` seconds stop the
    application (aggregates and subscribers crash under their own, more tolerant supervisors).
    ``metrics_port`` serves Prometheus metrics on ``http://metrics_host:metrics_port/metrics``
    (127.0.0.1 by default; see :mod:`backstage_actors.metrics`); ``start()`` takes it too.
    ``limits`` bounds what commands, events and metadata may hold (:class:`Limits`): checked at
    every way in, before any actor sees a command. ``exclusive`` (default) refuses to start
    while another application runs on the same SQLite database on this host (its side effects
    would run twice); False lets several share it.
    """

    def __init__(
        self,
        name: str,
        router: Router,
        handlers: Sequence[type] = (),
        projections: Sequence[type] = (),
        process_managers: Sequence[type] = (),
        database: str | EventStore = "backstage.db",
        synchronous: str = "FULL",
        middleware: Sequence[Middleware] = (),
        lifespan: float | None = 300.0,
        max_live: int | None = None,
        max_retries: int = 3,
        restart_intensity: tuple[int, float] = (10, 10.0),
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        limits: Limits = DEFAULT_LIMITS,
        exclusive: bool = True,
        shards: int | None = None,
    ) -> None:
        self.name = name
        self.router = router
        self.handlers = list(handlers)
        self.projections = list(projections)
        self.process_managers = list(process_managers)
        # A store object stands for where it is: every actor process opens its own connection.
        self.database = database.where if isinstance(database, EventStore) else database
        self.synchronous = synchronous
        self.middleware = list(middleware)
        self.lifespan = lifespan
        self.max_live = max_live
        self.max_retries = max_retries
        self.restart_intensity = restart_intensity
        if shards is not None and shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards!r}")
        self.shards = shards
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.limits = limits
        self.exclusive = exclusive

    @property
    def subscribers(self) -> list[type]:
        """Handlers, projections and process managers, in the order they start."""
        return [*self.handlers, *self.projections, *self.process_managers]

    def settings(self, base: str, database: str | None = None) -> Settings:
        """What every actor of this application is told when it starts on ``base`` (internal)."""
        return Settings(
            database=normalise(database or self.database),
            synchronous=self.synchronous,
            base=base,
            max_retries=self.max_retries,
            lifespan=self.lifespan,
            max_live=self.max_live or DEFAULT_MAX_LIVE[base],
            shards=1 if base == "simple" else (self.shards or default_shards(base)),
            limits=self.limits,
            exclusive=self.exclusive,
            app_name=self.name,
        )

    def supervisor_spec(self, settings: Settings) -> SupervisorSpec:
        """The application's supervision tree."""
        children = [
            ChildSpec(STORE, StoreActor, args={"settings": settings}),
            ChildSpec(
                ROUTER,
                RouterActor,
                args={
                    # Shards are restarted (killed, crashed) without taking the router down.
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
        return events_supervisor_spec(self, settings)

    def start(
        self,
        base: str = "simple",
        port: int | None = None,
        database: str | None = None,
        host: str = "127.0.0.1",
        log_defs: Any = None,
        timeout: float = 60.0,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        join: str | None = None,
        roles: Sequence[str] = ("aggregates", "subscribers"),
    ) -> RunningSystem:
        """Start an actor system and this application's tree; use the result as a context manager.

        ``join="HOST:PORT"`` (multiproc, a PostgreSQL store) makes this system a member of a
        cluster whose leader's admin is there (the leader joins itself); ``roles`` say what it
        hosts: ``aggregates``, ``subscribers`` or both (see ``_cluster``).

        ``base="multiproc"`` runs every actor in its own process with the admin on
        ``host:port`` (127.0.0.1 and a free port by default). ``metrics_port`` (default: the
        application's) serves Prometheus metrics: on multiproc from a ``metrics`` actor of the
        tree, in-process from a thread of this process.
        """
        settings = self.settings(base, database)
        if is_postgres(settings.database):  # an unreachable server is one clear error, now
            EventStore(settings.database).close()
        elif settings.exclusive:
            check_free(settings.database)  # (the store actor takes the lock itself)
        if base != "simple":
            port = port or _thespian.free_port(host)
            settings = attrs.evolve(settings, admin_port=port)
            log_defs = with_admin_watch(log_defs)  # its logger process dies with the admin
        spec = self.supervisor_spec(settings)
        capabilities = None
        if join is not None:  # -- cluster (issue 19)
            capabilities = cluster_capabilities(base, settings.database, host, port, join, roles)
            settings = attrs.evolve(settings, member=f"{host}:{port}")
            spec = self.supervisor_spec(settings)
            if "subscribers" not in roles:
                spec = attrs.evolve(spec, children=[c for c in spec.children if c.name != EVENTS])
        metrics_port = self.metrics_port if metrics_port is None else metrics_port
        metrics_host = metrics_host or self.metrics_host
        if metrics_port is not None:
            try:
                taken = bool(metrics_port) and _thespian.port_in_use(metrics_port, metrics_host)
            except socket.gaierror as exc:
                raise BackstageError(
                    f"the metrics host {metrics_host!r} cannot be used: {exc.strerror}"
                ) from None
            if taken:
                raise BackstageError(f"the metrics port {metrics_host}:{metrics_port} is in use")
            if base == "multiproc":
                assert port is not None  # (chosen above for every base but simple)
                child = self._metrics_child(port, host, metrics_port, metrics_host)
                spec = attrs.evolve(spec, children=[*spec.children, child])
        actor_system = _thespian.start_actor_system(
            base, port, host, log_defs, capabilities=capabilities
        )
        try:
            root = start_supervisor(actor_system, spec, name=self.root_name, timeout=timeout)
            if capabilities is not None:
                introduce(actor_system, capabilities)
        except BaseException:
            actor_system.shutdown()
            raise
        system = RunningSystem(self, actor_system, root, base, settings, owns_system=True)
        if base == "simple" and self.subscribers and is_postgres(settings.database):
            system.waker = BusWaker(system)  # other hosts' commits wake the subscribers
        if metrics_port is not None and base != "multiproc":
            try:
                system.metrics = serve(system, metrics_port, metrics_host)
            except BaseException:
                system.stop()
                raise
        return system

    def _metrics_child(
        self, port: int, host: str, metrics_port: int, metrics_host: str
    ) -> ChildSpec:
        args = {
            "port": port,
            "host": host,
            "root_name": self.root_name,
            "router": self.router,
            "metrics_port": metrics_port,
            "metrics_host": metrics_host,
        }
        return ChildSpec("metrics", MetricsActor, args=args)

    @property
    def root_name(self) -> str:
        """The global name of the application's root supervisor: how clients find it."""
        return f"backstage:{self.name}"

    def attach(
        self,
        actor_system: Any = None,
        base: str = "multiproc",
        database: str | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> RunningSystem:
        """A client of this application running elsewhere: ``app.attach(port=1900)``.

        It needs the admin's ``port`` (and ``host``, 127.0.0.1 by default) of a system this
        application runs in, a ``backstage start`` daemon or an ``app.start(base="multiproc",
        port=...)`` of another process, and the same ``Application`` (its router turns commands
        into streams). It never starts an actor system: nothing listening on the port raises
        :class:`SystemNotRunning`, and so does a system that does not run this application.
        The database is asked of the running store unless given.

        It returns a :class:`RunningSystem`: ``dispatch``, ``dispatch_many``,
        ``dispatch_async``, ``tree``, ``settle``... Use one from many threads at once: each
        thread talks to the system through an endpoint of its own. ``stop()`` (or leaving a
        ``with`` block) lets go of the system and leaves it running.

        ``actor_system`` instead of ``port``: an actor system handle you attached yourself (an
        int there is taken as the port). This process attaches with its secret
        (``BACKSTAGE_SECRET``, ``BACKSTAGE_SECRET_FILE`` or ``$BACKSTAGE_HOME/secret``), the one
        the system was started with; another is refused at once.
        """
        if isinstance(actor_system, int):
            actor_system, port = None, actor_system
        if actor_system is None:
            if port is None:
                raise TypeError("attach() needs port= (or an actor system)")
            try:
                actor_system = _thespian.attach(port, host)
            except _thespian.AuthenticationRefused:
                raise  # a system is there, with another secret: say so, not "nothing runs"
            except OSError as exc:
                raise SystemNotRunning(f"no actor system answers on {host}:{port}: {exc}") from None
        where = f"{host}:{port}" if port is not None else "that actor system"
        # Looked up, never created (an admin without this application would get an empty root).
        root = _thespian.global_address(actor_system, self.root_name)
        if root is None:
            raise SystemNotRunning(
                f"{self.name} does not run on {where}: its admin knows no {self.root_name!r} "
                "(it was never started there, or its root supervisor ended)"
            )
        if root is _thespian.NOT_TOLD:  # (an admin that does not answer, a simple system)
            root = actor_system.createActor(Supervisor, globalName=self.root_name)
        if database is None and port is not None:
            database = self._running_database(actor_system, root, f"{host}:{port}")
        return RunningSystem(
            self, actor_system, root, base, self.settings(base, database), owns_system=False
        )

    def _running_database(self, actor_system: Any, root: Any, where: str) -> str:
        """The database of this application's store, as the running tree describes it."""
        try:
            node = supervisors.tree(actor_system, root, timeout=10.0)
        except supervisors.SupervisionError as exc:
            raise SystemNotRunning(f"{self.name} does not answer on {where}: {exc}") from None
        for each in supervisors.walk(node):
            if each.get("kind") == "store" and each.get("database"):
                return str(each["database"])
        raise SystemNotRunning(f"{self.name} does not run on {where} (no event store found)")
