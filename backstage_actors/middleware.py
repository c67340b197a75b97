"""Middleware: code that runs around every dispatch, in the dispatching process.

Like Commanded's middleware, each one gets a :class:`Pipeline` before the command is sent, after
it succeeded, and after it failed. ``before_dispatch`` may call ``pipeline.halt(...)`` to stop the
command (validation, authorization); the caller then gets the halt's error and nothing is sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs

from .errors import BackstageError, CommandRejected

__all__ = ["LoggingMiddleware", "Middleware", "Pipeline"]


@attrs.define
class Pipeline:
    """One command on its way through the middleware: what each hook sees and may change.

    ``metadata`` may be amended in ``before_dispatch``; ``result`` or ``error`` is set before the
    after-hooks; ``assigns`` carries a middleware's own values from one hook to the next.
    """

    command: Any
    metadata: dict[str, Any]
    consistency: str
    result: Any = None
    error: BaseException | None = None
    halted: bool = False
    assigns: dict[str, Any] = attrs.Factory(dict)

    def halt(self, reason: str | BackstageError = "halted by middleware") -> None:
        """Stop this command; ``reason`` becomes the caller's error (a CommandRejected by default)."""
        self.halted = True
        if isinstance(reason, BackstageError):
            self.error = reason
        else:
            self.error = CommandRejected(type(self.command).__name__, "Halted", str(reason))


class Middleware:
    """Override any of the three hooks; the defaults do nothing."""

    def before_dispatch(self, pipeline: Pipeline) -> None:
        """Before the command is sent: validate, authorize, add metadata, or ``halt`` it."""

    def after_dispatch(self, pipeline: Pipeline) -> None:
        """After the command succeeded (``pipeline.result`` is set): log, measure, notify."""

    def after_failure(self, pipeline: Pipeline) -> None:
        """After the command failed or was halted (``pipeline.error`` is set)."""


class LoggingMiddleware(Middleware):
    """Logs each command with its outcome and duration."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("backstage_actors.dispatch")

    def before_dispatch(self, pipeline: Pipeline) -> None:
        pipeline.assigns["started"] = time.perf_counter()

    def after_dispatch(self, pipeline: Pipeline) -> None:
        elapsed = (
            time.perf_counter() - pipeline.assigns.get("started", time.perf_counter())
        ) * 1000
        self.logger.info("%s succeeded in %.1f ms", type(pipeline.command).__name__, elapsed)

    def after_failure(self, pipeline: Pipeline) -> None:
        self.logger.warning("%s failed: %s", type(pipeline.command).__name__, pipeline.error)
