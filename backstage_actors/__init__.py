"""Backstage: CQRS & Event Sourcing on Thespian actors."""

__all__: list[str] = []
