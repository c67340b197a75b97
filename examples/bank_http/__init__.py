"""The bank behind HTTP, on Starlette: POST routes send commands, GET routes read the balances.

``create_app(system)`` wraps a :class:`RunningSystem`, embedded (``bank.start()``) or attached
to a daemon (``bank.attach(port=...)``); ``python -m examples.bank_http`` serves it with uvicorn.

Errors map to HTTP: 422 invalid input (with the field's path), 409 a rejection or a conflict,
504 no answer in time (the command may or may not have run), 503 the system is not running. An
``Idempotency-Key`` header becomes the command's id: a retry with the same key is answered
from the store, never run twice.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
