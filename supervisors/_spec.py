"""Specifications of supervisors and their children: plain, frozen, picklable values."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "SupervisorSpec"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]

_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_RESTARTS = ("permanent", "transient", "temporary")


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}; got {value!r}")

    return check


@attrs.frozen
class Backoff:
    """Exponential delay before a restart: ``min(cap, base * 2**n)`` for the n-th recent restart.

    ``jitter`` is the fraction by which each delay is randomly shortened or lengthened, so that
    siblings crashing together do not restart in lock-step.
    """

    base: float = 0.05
    cap: float = 5.0
    jitter: float = 0.1

    def delay(self, recent_restarts: int) -> float:
        if recent_restarts <= 0 or self.base <= 0:
            return 0.0
        raw = min(self.cap, self.base * 2 ** (recent_restarts - 1))
        return max(0.0, raw * (1 + random.uniform(-self.jitter, self.jitter)))


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    ``actor`` is a :class:`~supervisors.SupervisedActor` subclass importable by module path (Thespian
    creates it by name in another process on the multiproc bases), or a :class:`SupervisorSpec`
    for a nested supervisor. ``args`` reaches the instance as ``self.args`` before ``on_start``.
    ``shutdown`` is how long an orderly stop waits before the child's process is killed.
    """

    name: str
    actor: Any
    restart: Restart = attrs.field(default="permanent", validator=_one_of(_RESTARTS))
    args: Mapping[str, Any] = attrs.field(factory=dict)
    shutdown: float = 5.0
    kind: str | None = None


def _child_list(children: Sequence[ChildSpec]) -> list[ChildSpec]:
    return list(children)


@attrs.frozen
class SupervisorSpec:
    """How a supervisor treats its children.

    More than ``max_restarts`` restarts inside ``within`` seconds and the supervisor gives up: it
    stops its children and itself and its own supervisor decides (OTP's restart intensity).
    """

    strategy: Strategy = attrs.field(default="one_for_one", validator=_one_of(_STRATEGIES))
    max_restarts: int = 3
    within: float = 5.0
    children: Sequence[ChildSpec] = attrs.field(factory=list, converter=_child_list)
    backoff: Backoff | None = None
    kind: str = "supervisor"

    def __attrs_post_init__(self) -> None:
        names = [child.name for child in self.children]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"child names must be unique; repeated: {', '.join(duplicates)}")
