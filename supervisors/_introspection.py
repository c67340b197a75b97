"""Introspection: a supervisor's part of ``tree()``, gathered by messages.

Each live child is asked for its own description (a nested supervisor gathers its subtree the
same way) and the answers are merged with what the supervisor knows: name, kind, status,
restarts. A child that does not answer in time is shown as ``unresponsive``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._child import LIVE, Child
from ._messages import TreeNode, _Describe, _GatherDue

__all__ = ["TreeGathering"]


@attrs.define
class _Gather:
    reply_to: Any
    request_id: Any
    waiting: set[str]
    extras: dict[str, dict[str, Any]] = attrs.Factory(dict)


class TreeGathering:
    """Mixed into :class:`~supervisors.Supervisor`."""

    # Provided by the supervisor and by Thespian's Actor (annotations only: nothing shadowed).
    children: dict[str, Child]
    _gathers: dict[int, Any]
    _ids: Iterator[int]
    _mode: str
    name: str
    kind: str
    myAddress: Any  # Thespian's name
    send: Callable[[Any, Any], None]
    wakeupAfter: Callable[..., None]  # Thespian's name
    describe: Callable[[], dict[str, Any]]

    def describe_child(self, child: Child) -> bool:
        """Whether ``tree`` asks this child for its own description (default: every live child)."""
        return True

    def tree_children(self) -> list[Child]:
        """The children that appear in ``tree`` (default: all; a router may show a window)."""
        return list(self.children.values())

    def _gather(self, reply_to: Any, request_id: Any, timeout: float) -> None:
        rid = next(self._ids)
        gather = _Gather(reply_to, request_id, set())
        self._gathers[rid] = gather
        for child in self.tree_children():
            if child.status in LIVE and self.describe_child(child):
                gather.waiting.add(child.name)
                self.send(child.address, _Describe((rid, child.name), timeout * 0.8))
        if not gather.waiting:
            self._finish_gather(rid, gather)
        else:
            self.wakeupAfter(timeout, _GatherDue(rid))

    def _on_description(self, reply: TreeNode) -> None:
        if not isinstance(reply.request_id, tuple):
            return
        rid, name = reply.request_id
        gather = self._gathers.get(rid)
        if gather is None or name not in gather.waiting:
            return
        gather.waiting.discard(name)
        gather.extras[name] = reply.node
        if not gather.waiting:
            self._finish_gather(rid, gather)

    def _gathers_drop(self, name: str) -> None:
        """Child ``name`` ended: it will not answer the descriptions asked of it. A tree
        waiting for it is answered without it (showing what the supervisor knows: restarting,
        stopped), instead of waiting out its timeout (5 s) to call it ``unresponsive``."""
        for rid, gather in list(self._gathers.items()):
            if name in gather.waiting:
                gather.waiting.discard(name)
                if not gather.waiting:
                    self._finish_gather(rid, gather)

    def _finish_gather(self, rid: int, gather: _Gather) -> None:
        del self._gathers[rid]
        children = []
        for child in self.tree_children():
            extra = dict(gather.extras.get(child.name, {}))
            node = {
                "name": child.name,
                "kind": child.kind,
                "address": str(child.address) if child.address is not None else None,
                "status": "unresponsive" if child.name in gather.waiting else child.status,
                "restarts": child.restarts,
                "children": extra.pop("children", []),
            }
            if child.pid:
                node["pid"] = child.pid
            if child.last_failure is not None:
                node["last_failure"] = str(child.last_failure)
            node.update({k: v for k, v in extra.items() if k not in node})
            children.append(node)
        me = {
            "name": self.name,
            "kind": self.kind,
            "address": str(self.myAddress),
            "status": "running" if self._mode in ("running", "starting") else self._mode,
            "restarts": 0,
            "pid": os.getpid(),
            **self.describe(),
            "children": children,
        }
        self.send(gather.reply_to, TreeNode(me, gather.request_id))
