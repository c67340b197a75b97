"""A supervision tree you can watch: ``python -m supervisors.demo [--base simple|multiproc]``.

It starts a small tree, crashes one worker with an exception, SIGKILLs another's process (on the
multiproc base), and prints the tree with its restart counts after each step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import tempfile
import time
from typing import Any

from thespian.actors import ActorSystem

from supervisors import (
    ChildSpec,
    Failure,
    SupervisedActor,
    SupervisorSpec,
    start_supervisor,
    stop_supervisor,
    tree,
    whereis,
)

__all__ = ["Greeter", "main"]


class Greeter(SupervisedActor):
    """Counts greetings; ``"crash"`` makes it raise, ``"pid"`` tells its process id."""

    kind = "greeter"

    def on_start(self) -> None:
        self.greeted = 0

    def describe(self) -> dict[str, Any]:
        return {"greeted": self.greeted}

    def receive(self, message: Any, sender: Any) -> None:
        if message == "crash":
            raise RuntimeError("asked to crash")
        if message == "pid":
            self.send(sender, os.getpid())
        else:
            self.greeted += 1
            self.send(sender, f"hello {message}")


def render(node: dict[str, Any], depth: int = 0) -> str:
    """The tree as indented lines: name, kind, status and restart count."""
    line = f"{'  ' * depth}{node['name']} [{node['kind']}] {node['status']} restarts={node['restarts']}"
    return "\n".join([line, *(render(c, depth + 1) for c in node.get("children", []))])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _restarted(system: Any, supervisor: Any, name: str, old: Any) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        address = whereis(system, supervisor, name)
        if address is not None and address != old:
            return address
        time.sleep(0.01)
    raise RuntimeError(f"{name} was not restarted")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", choices=["simple", "multiproc"], default="multiproc")
    parser.add_argument("--json", action="store_true", help="print the final tree as JSON")
    options = parser.parse_args(argv)
    # A directory of this run's own (0700): nothing of it is readable by other users, and
    # Thespian's internal log goes there too instead of the shared /tmp/thespian.log.
    logs = tempfile.mkdtemp(prefix="supervisors-demo-")
    log_file = os.path.join(logs, "actors.log")
    os.environ.setdefault("THESPLOG_FILE", os.path.join(logs, "thespian.log"))
    log_defs = {
        "version": 1,
        "handlers": {"file": {"class": "logging.FileHandler", "filename": log_file}},
        "root": {"handlers": ["file"], "level": "INFO"},
    }
    if options.base == "simple":
        logging.basicConfig(filename=log_file, level=logging.INFO)
        system = ActorSystem("simpleSystemBase", transientUnique=True)
    else:
        system = ActorSystem(
            "multiprocTCPBase", {"Admin Port": _free_port()}, log_defs, transientUnique=True
        )
    print(f"(actor logs go to {log_file})")
    try:
        workers = SupervisorSpec(
            strategy="one_for_one",
            children=[ChildSpec("alice", Greeter), ChildSpec("bob", Greeter)],
        )
        spec = SupervisorSpec(
            children=[ChildSpec("front", Greeter), ChildSpec("workers", workers)],
        )
        root = start_supervisor(system, spec, name="demo")
        workers_address = whereis(system, root, "workers")
        alice = whereis(system, workers_address, "alice")
        print(system.ask(alice, "world", 5))
        print(render(tree(system, root)), end="\n\n")

        reply = system.ask(alice, "crash", 5)
        assert isinstance(reply, Failure)
        print(f"alice crashed: {reply}")
        _restarted(system, workers_address, "alice", alice)
        print(render(tree(system, root)), end="\n\n")

        if options.base == "multiproc":
            bob = whereis(system, workers_address, "bob")
            pid = system.ask(bob, "pid", 5)
            os.kill(pid, signal.SIGKILL)
            print(f"bob's process {pid} killed with SIGKILL")
            _restarted(system, workers_address, "bob", bob)
        final = tree(system, root)
        print(json.dumps(final, indent=2) if options.json else render(final))
        stop_supervisor(system, root)
    finally:
        system.shutdown()


if __name__ == "__main__":
    main()
