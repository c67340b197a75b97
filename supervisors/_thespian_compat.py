"""Every read of Thespian's internals in ``supervisors``, for the version it is written against.

| target (Thespian 4.0.1) | read | reason |
|---|---|---|
| the name ``multiprocCommon`` gives an actor's process: ``Actor_<Class>__<address>`` | whether this actor runs in a process of its own | only then may it ask Linux to end it with its parent (``die_with_parent``) |

Nothing here patches Thespian. Supervisors otherwise use Thespian's public API alone
(``thespian.actors``); with another version this read fails safe: an actor that cannot tell
assumes it shares its process and never asks to die with its parent.
"""

from __future__ import annotations

import multiprocessing

__all__ = ["THESPIAN_VERSION", "in_own_process"]

THESPIAN_VERSION = "4.0.1"


def in_own_process() -> bool:
    """Whether this actor runs in a process of its own (Thespian's multiproc bases name each
    actor process ``Actor_<Class>__<address>``; simpleSystemBase runs actors in the caller's)."""
    return multiprocessing.current_process().name.startswith("Actor_")
