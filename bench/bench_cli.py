"""CLI benchmarks: ``backstage send --file`` against a daemon, and ``backstage tree`` latency with
300 live aggregates, each against the same work done in-process, in the same run.

Run as ``python -m bench.bench_cli [--quick]``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backstage_actors import _daemon, _thespian
from backstage_actors.command import command_from_data
from examples import bank
from supervisors import walk

from ._common import check, tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS = 300  # live aggregates on the daemon: its default cap on multiproc
SEND_BATCH = 1000  # `backstage send --batch`'s default


def _backstage() -> list[str]:
    script = Path(sys.executable).with_name("backstage")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from backstage_actors.cli import main; main()"]


def _commands(count: int) -> list[dict[str, Any]]:
    """``ACCOUNTS`` openings, then deposits round-robin: ``count`` lines in all."""
    lines = [
        {"command": "OpenAccount", "data": {"account_id": f"c{i}", "owner": f"Owner {i}"}}
        for i in range(ACCOUNTS)
    ]
    lines += [
        {"command": "Deposit", "data": {"account_id": f"c{i % ACCOUNTS}", "amount": 1}}
        for i in range(count - ACCOUNTS)
    ]
    return lines


@contextmanager
def _home(path: Path) -> Iterator[dict[str, str]]:
    """``BACKSTAGE_HOME`` set here (for ``_daemon``) and in the environment of the CLI."""
    saved = os.environ.get("BACKSTAGE_HOME")
    os.environ["BACKSTAGE_HOME"] = str(path)
    try:
        yield dict(os.environ)
    finally:
        if saved is None:
            os.environ.pop("BACKSTAGE_HOME", None)
        else:
            os.environ["BACKSTAGE_HOME"] = saved


def _run(
    args: list[str], env: dict[str, str], timeout: float, directory: Path
) -> tuple[str, float]:
    """The CLI's stdout and its wall time (s); a failure raises with its stderr.

    Output goes to files, not pipes: the processes of a daemon that ``start`` forks keep
    copies of its original stdout and stderr, so a pipe would never reach end-of-file.
    """
    out_path, err_path = directory / "cli.out", directory / "cli.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        start = time.perf_counter()
        done = subprocess.run(
            [*_backstage(), *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            timeout=timeout,
            check=False,
        )
        elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"backstage {' '.join(args)} exited {done.returncode}: {err_path.read_text()}"
        )
    return out_path.read_text(), elapsed


def _in_process(directory: Path, lines: list[dict[str, Any]]) -> float:
    """commands/s of the same commands through ``dispatch_many``, in-process."""
    app = bank.make_app(str(directory / "in-process.db"))
    commands = [
        command_from_data(app.router.command_class(line["command"]), line["data"]) for line in lines
    ]
    notifier = logging.getLogger("examples.bank.notifier")
    level = notifier.level
    notifier.setLevel(logging.WARNING)  # not a line per account opened
    try:
        return _dispatch_many(app, commands)
    finally:
        notifier.setLevel(level)


def _dispatch_many(app: Any, commands: list[Any]) -> float:
    with app.start(base="simple") as system:
        start = time.perf_counter()
        for first in range(0, len(commands), SEND_BATCH * 4):  # the chunks `send --file` sends
            chunk = commands[first : first + SEND_BATCH * 4]
            check(system.dispatch_many(chunk, batch_size=SEND_BATCH, timeout=600))
        return len(commands) / (time.perf_counter() - start)


def _daemon_figures(
    directory: Path, env: dict[str, str], lines: list[dict[str, Any]], tree_runs: int
) -> tuple[float, list[float], list[float]]:
    """commands/s of ``send --file``, then ms of each ``tree --json`` and ``system.tree()``."""
    port = _thespian.free_port()
    database = str(directory / "daemon.db")
    path = directory / "commands.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    try:
        _, took = _run(
            ["start", "examples.bank:app", "--port", str(port), "--db", database],
            env,
            120,
            directory,
        )
        log.info("daemon up on port %d in %.1fs", port, took)
        out, took = _run(
            ["send", "--file", str(path), "--port", str(port), "--json"], env, 1800, directory
        )
        report = json.loads(out)
        if report["accepted"] != len(lines):
            raise RuntimeError(f"send --file: {report['rejected'][:3]}")
        log.info("send --file: %.0f commands/s by its own clock", report["commands_per_second"])
        rate = len(lines) / took
        cli_ms = []
        for _ in range(tree_runs):
            out, took = _run(["tree", "--json", "--port", str(port)], env, 60, directory)
            cli_ms.append(took * 1000)
        router = next(n for n in walk(json.loads(out)) if n.get("kind") == "router")
        log.info("tree: %s live aggregates on the daemon", router.get("live"))
        _, system = _daemon.attach(port)
        system.tree()
        in_process_ms = []
        for _ in range(tree_runs):
            start = time.perf_counter()
            system.tree()
            in_process_ms.append((time.perf_counter() - start) * 1000)
    finally:
        try:
            _run(["stop", "--port", str(port)], env, 90, directory)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.warning("backstage stop failed: %s", exc)
        leftovers = _daemon.kill_leftovers(port)
        if leftovers:
            log.warning("killed %d leftover daemon processes: %s", len(leftovers), leftovers)
    return rate, cli_ms, in_process_ms


def rows(quick: bool = False) -> list[Row]:
    """Both CLI figures; ``quick`` sends fewer commands."""
    lines = _commands(10_000 if quick else 100_000)
    with tempdir() as directory, _home(directory / "home") as env:
        rate, cli_ms, in_process_ms = _daemon_figures(directory, env, lines, 20)
        peer_rate = _in_process(directory, lines)
    median = statistics.median
    return [
        Row(
            f"backstage send --file, {len(lines):,} commands ({ACCOUNTS} accounts)",
            rate,
            "commands/s",
            "the same through dispatch_many, in-process",
            peer_rate,
        ),
        Row(
            f"backstage tree --json, {ACCOUNTS} live aggregates (median of {len(cli_ms)})",
            median(cli_ms),
            "ms",
            "system.tree() attached to the same daemon",
            median(in_process_ms),
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    main(rows, __doc__)
