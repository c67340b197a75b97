"""A slow handler beside dispatch_domain's counters (importable: multiproc unpickles it)."""

from __future__ import annotations

import time
from typing import Any

from backstage_actors import Application, EventHandler

from .dispatch_domain import make_router


class CeSlow(EventHandler):
    name = "ce-slow"

    def handle(self, event: Any, metadata: Any) -> None:
        time.sleep(1.5)  # (a handler that takes its time: what a strong dispatch waits for)


def make_app() -> Application:
    return Application("ce", router=make_router(None), handlers=[CeSlow])
