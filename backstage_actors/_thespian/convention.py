"""Thespian's multi-system convention, as a Backstage cluster uses it (Thespian 4.0.1).

A member's admin joins the convention of a leader through the ``Convention Address.IPv4``
capability (``"host:port"`` of the leader's admin; the leader names itself). The convention is
a star: the leader hears of every member (``ActorSystemConventionUpdate`` to actors that called
``notifyOnSystemRegistrationChanges``), each member hears of the leader only. A member re-registers
every ``CONVENTION_REREGISTRATION_PERIOD`` and the leader declares it gone after
``CONVENTION_REGISTRATION_MISS_MAX`` missed registrations; Thespian's 7 min 22 s default would
keep a dead member "alive" for 22 minutes, so a cluster shortens the period to
:data:`REGISTRATION_PERIOD` (read by the admin at call time, so setting the module's name before
the admin is forked is enough; the environment variable covers a spawned admin).

Roles are capabilities (``Backstage Aggregates``, ``Backstage Subscribers``), and the member
that keeps the cluster's registry declares ``Backstage Registry``: an actor class says where it
may run with ``actorSystemCapabilityCheck``, as Thespian intends.
"""

from __future__ import annotations

import ipaddress
import os
import time
from datetime import timedelta
from typing import Any

from thespian.system.admin import convention as _convention

__all__ = [
    "CONVENTION",
    "REGISTRATION_PERIOD",
    "REGISTRY",
    "ROLE_CAPABILITY",
    "STARTED",
    "is_loopback",
    "member_capabilities",
    "shorten_registration_period",
]

CONVENTION = "Convention Address.IPv4"  # Thespian's own capability name
REGISTRY = "Backstage Registry"
STARTED = "Backstage Started"
ROLE_CAPABILITY = {"aggregates": "Backstage Aggregates", "subscribers": "Backstage Subscribers"}
REGISTRATION_PERIOD = timedelta(seconds=2)  # a dead member is declared gone after 3 of these


def shorten_registration_period(period: timedelta = REGISTRATION_PERIOD) -> None:
    """Make this process's admins (forked after this call) re-register every ``period``."""
    _convention.CONVENTION_REREGISTRATION_PERIOD = period
    # A member's admin waits this long before its first check when it has not yet heard from
    # the leader (3 min 22 s by default): it would not re-register, and the leader would drop it.
    _convention.CONVENTION_RESTART_PERIOD = period
    seconds = int(period.total_seconds())
    for name in ("CONVENTION_REREGISTRATION_PERIOD", "CONVENTION_RESTART_PERIOD"):
        os.environ.setdefault(name, f"{seconds // 60}:{seconds % 60}")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` stay on this machine: binding there is not remote."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def member_capabilities(host: str, port: int, join: str, roles: tuple[str, ...]) -> dict[str, Any]:
    """The capabilities of a member on ``host:port`` joining the leader at ``join``."""
    unknown = sorted(set(roles) - set(ROLE_CAPABILITY))
    if unknown or not roles:
        raise ValueError(
            f"unknown role {', '.join(unknown)}: roles are {', '.join(ROLE_CAPABILITY)}"
            if unknown
            else "a member needs at least one role"
        )
    leader = join == f"{host}:{port}"
    capabilities: dict[str, Any] = {CONVENTION: join, STARTED: time.time(), REGISTRY: leader}
    for role, name in ROLE_CAPABILITY.items():
        capabilities[name] = role in roles
    return capabilities
