"""Every process of a multiproc actor system dies with its admin.

Actor processes already do (``supervisors`` asks Linux for ``PR_SET_PDEATHSIG`` in each one, so
a killed supervisor takes its subtree along). Thespian's logger process is no actor: forked by
the admin after it bound its port, it inherits the listening socket, and after a SIGKILL of the
admin it lived on holding the port, so clients connected and hung. The logger applies the
``logDefs`` it is given with ``dictConfig``, which builds every filter named there: the filter
below, built in the logger's process, asks for the same signal.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from supervisors._process import die_with_parent

__all__ = ["DieWithAdmin", "with_admin_watch"]


class DieWithAdmin(logging.Filter):
    """Built by ``dictConfig`` in Thespian's logger process: it then dies with the admin."""

    def __init__(self) -> None:
        super().__init__()
        die_with_parent()


def with_admin_watch(log_defs: dict[str, Any] | None) -> dict[str, Any]:
    """``log_defs`` (or what Thespian does without any: warnings to stderr) with the filter."""
    if log_defs:
        defs = copy.deepcopy(log_defs)
    else:
        defs = {
            "version": 1,
            "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
            "root": {"handlers": ["stderr"], "level": "WARNING"},
        }
    defs.setdefault("filters", {})["backstage_die_with_admin"] = {"()": f"{__name__}.DieWithAdmin"}
    return defs
