"""Rendezvous placement: deterministic, balanced, and only the streams of a changed member move."""

from __future__ import annotations

from collections import Counter

from backstage_actors._placement import owner

MEMBERS = ["127.0.0.2:1900", "127.0.0.3:1900", "127.0.0.4:1900"]
STREAMS = [f"account-{i}" for i in range(3000)]


def test_owner_is_the_same_whatever_order_members_are_listed_in() -> None:
    for stream in STREAMS[:200]:
        assert owner(stream, MEMBERS) == owner(stream, list(reversed(MEMBERS)))


def test_no_members_no_owner() -> None:
    assert owner("account-1", []) is None


def test_streams_spread_over_members() -> None:
    counts = Counter(owner(stream, MEMBERS) for stream in STREAMS)
    assert set(counts) == set(MEMBERS)
    assert min(counts.values()) > len(STREAMS) / len(MEMBERS) * 0.8


def test_a_member_leaving_moves_only_its_streams() -> None:
    before = {stream: owner(stream, MEMBERS) for stream in STREAMS}
    survivors = MEMBERS[:2]
    after = {stream: owner(stream, survivors) for stream in STREAMS}
    moved = {stream for stream in STREAMS if before[stream] != after[stream]}
    assert moved == {stream for stream in STREAMS if before[stream] == MEMBERS[2]}


def test_a_member_joining_takes_streams_only_for_itself() -> None:
    before = {stream: owner(stream, MEMBERS[:2]) for stream in STREAMS}
    after = {stream: owner(stream, MEMBERS) for stream in STREAMS}
    for stream in STREAMS:
        assert after[stream] in (before[stream], MEMBERS[2])
