"""Process-level helpers: tying a child's life to its parent's, and killing a stuck child."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

__all__ = ["die_with_parent", "is_child_process", "kill_process", "process_gone"]


def log() -> logging.Logger:
    # Looked up at each use: Thespian replaces the logging root in every actor process it forks,
    # so a logger bound at import time would bypass its forwarding to the log process.
    return logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent process dies.

    Thespian forks a child actor from its parent actor's process, so a SIGKILLed supervisor takes
    its subtree with it instead of leaving orphans running. Elsewhere this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            log().warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:
        # The parent died before the request took effect.
        os.kill(os.getpid(), sig)


def kill_process(pid: int | None) -> bool:
    """SIGKILL ``pid`` unless it is this very process (simpleSystemBase runs every actor here)."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def is_child_process(pid: int | None) -> bool:
    """Whether ``pid`` is a child process of this one (Linux; False elsewhere)."""
    if not pid or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False


def process_gone(pid: int | None) -> bool:
    """Whether ``pid`` (another process) no longer exists: it exited and was reaped."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
