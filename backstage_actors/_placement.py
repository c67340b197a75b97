"""Which member owns an aggregate: rendezvous (highest random weight) hashing of its stream id.

Every member computes the owner alone, from the stream id and the members it knows to be alive
with the ``aggregates`` role; no agreement is needed. When a member joins or leaves, only the
streams whose highest-weighted member changed move (about ``1/n`` of them), which is why HRW is
used rather than ``hash % n``. Two members with different views may both think they own a
stream for a while: the store's expected versions keep that safe (a stale owner's append fails
and is retried), so placement is about locality, never about correctness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["Placement", "owner", "weight"]


def weight(stream_id: str, member: str) -> int:
    """The rendezvous weight of ``member`` for ``stream_id`` (a stable 64-bit integer)."""
    digest = hashlib.blake2b(
        f"{member}\x00{stream_id}".encode(), digest_size=8, person=b"backstage-hrw"
    ).digest()
    return int.from_bytes(digest, "big")


def owner(stream_id: str, members: Iterable[str]) -> str | None:
    """The member that owns ``stream_id`` among ``members`` (None if there are none).

    Ties (astronomically rare) go to the greatest member name, so every caller agrees.
    """
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(stream_id, member), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


@attrs.frozen
class Placement:
    """Who hosts aggregates, as this member sees it now: ``me``, and the live members with the
    ``aggregates`` role (``routers``: each one's router address). Sent by the membership actor
    to its router when it changes, and by the router to its shards.

    With no member known yet (a view still coming), every stream is this member's own.
    ``cut_off``: this member has lost the leader while the leader lives (a partition): it owns
    nothing, so it keeps no cell past a round (no cache that others' writes could make stale),
    and serves what reaches it itself, from the store, rather than forward into the void.
    """

    me: str
    routers: dict[str, Any] = attrs.field(factory=dict)
    cut_off: bool = False
    # How many times this member lost its own lease and took it back: others may have owned
    # (and written) its streams meanwhile, so a new epoch makes its shards drop every cell.
    epoch: int = 0
    # When it was sent (monotonic, host-wide): a shard ignores one older than what it has
    # (messages sent to an actor still starting may overtake each other).
    sent_at: int = attrs.field(default=0, eq=False)

    def owner(self, stream_id: str) -> str:
        """The member to send ``stream_id``'s commands to (``me`` when none is known)."""
        if self.cut_off or not self.routers:
            return self.me
        return owner(stream_id, self.routers) or self.me

    def owns(self, stream_id: str) -> bool:
        """Whether this member may keep ``stream_id``'s aggregate live (cached) now."""
        if self.cut_off:
            return False
        return not self.routers or owner(stream_id, self.routers) == self.me
