"""The names of an application's sibling actors, under its root supervisor.

Siblings find each other by these names (``supervisors.whereis``, ``ChildAddress`` notices of a
restart at a new address), and clients find the router and the event bus by them: one place, so
a rename cannot leave a lookup behind.
"""

from __future__ import annotations

__all__ = ["EVENTS", "ROUTER", "STORE"]

#: The event-store actor (group commit in-process).
STORE = "store"
#: The router: the supervisor of the aggregate actors.
ROUTER = "router"
#: The event bus: the supervisor of the handlers, projections and process managers.
EVENTS = "events"
