"""Operations benchmarks: the web layer's cost, and ``backstage top``'s own CPU use.

* HTTP commands/s through ``examples/bank_http`` (uvicorn in its own process, attached to the
  daemon) from 8 concurrent clients, against 8 threads dispatching directly to the same daemon,
  in the same run.
* CPU of a ``backstage top`` process (in a pseudo-terminal, refreshing every second) watching a
  daemon with 300 live aggregates: target at most 5% of one core.

Run as ``python -m bench.bench_ops [--quick]``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from backstage_actors import _daemon, _thespian
from examples import bank
from examples.bank.domain import Deposit, OpenAccount

from ._common import check, tempdir
from ._report import Row, main
from .bench_cli import _backstage, _home, _run

__all__ = ["rows"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 8
LIVE = 300


def _direct(system: Any, seconds: float) -> float:
    """commands/s of CLIENTS threads each dispatching deposits to its own account."""
    done = [0] * CLIENTS
    deadline = time.perf_counter() + seconds

    def work(n: int) -> None:
        while time.perf_counter() < deadline:
            system.dispatch(Deposit(f"w{n}", 1), timeout=30)
            done[n] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


async def _http(url: str, seconds: float) -> float:
    """commands/s of CLIENTS concurrent HTTP clients POSTing deposits to their own account."""
    import httpx

    done = [0] * CLIENTS
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def work(n: int) -> None:
            while time.perf_counter() < deadline:
                response = await client.post(f"/accounts/h{n}/deposits", json={"amount": 1})
                response.raise_for_status()
                done[n] += 1

        started = time.perf_counter()
        await asyncio.gather(*(work(n) for n in range(CLIENTS)))
        return sum(done) / (time.perf_counter() - started)


def _wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {process.returncode}")
        try:
            httpx.get(f"{url}/accounts", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the HTTP server did not come up")


def _web_figures(directory: Path, seconds: float) -> tuple[float, float]:
    port, http_port = _thespian.free_port(), _thespian.free_port()
    app = bank.make_app(str(directory / "http.db"))
    with app.start(base="multiproc", port=port) as system:
        check(system.dispatch_many([OpenAccount(f"{p}{n}", "x") for p in "wh" for n in range(8)]))
        serve = ["-m", "examples.bank_http", "--attach", str(port), "--http-port", str(http_port)]
        server = subprocess.Popen(
            [sys.executable, *serve],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{http_port}"
            _wait_for_http(url, server)
            direct = _direct(system, seconds)
            log.info("direct: %.0f commands/s", direct)
            http = asyncio.run(_http(url, seconds))
            log.info("http: %.0f commands/s", http)
        finally:
            server.terminate()
            server.wait(30)
    return http, direct


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _top_cpu(directory: Path, env: dict[str, str], seconds: float) -> float:
    """Share of one core a ``backstage top`` uses against a daemon with LIVE aggregates."""
    port = _thespian.free_port()
    lines = directory / "open.jsonl"
    lines.write_text(
        "".join(
            json.dumps({"command": "OpenAccount", "data": {"account_id": f"t{n}", "owner": "x"}})
            + "\n"
            for n in range(LIVE)
        )
    )
    database = str(directory / "top.db")
    try:
        _run(
            ["start", "examples.bank:app", "--port", str(port), "--db", database],
            env,
            120,
            directory,
        )
        _run(["send", "--file", str(lines), "--port", str(port)], env, 600, directory)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        top = subprocess.Popen(
            [*_backstage(), "top", "--port", str(port)],
            cwd=REPO,
            env=env | {"TERM": "xterm-256color"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        drain = threading.Thread(target=_drain, args=(master,), daemon=True)
        drain.start()
        try:
            time.sleep(3)  # start-up (imports, attaching) is not the steady state
            cpu, wall = _cpu_seconds(top.pid), time.perf_counter()
            time.sleep(seconds)
            share = (_cpu_seconds(top.pid) - cpu) / (time.perf_counter() - wall)
            os.write(master, b"q")
            top.wait(10)
        finally:
            if top.poll() is None:
                os.killpg(top.pid, signal.SIGKILL)
                top.wait(10)
            drain.join(5)
            os.close(master)
        tree = json.loads(_run(["tree", "--json", "--port", str(port)], env, 60, directory)[0])
        log.info("live aggregates: %s", tree["children"][1].get("live"))
    finally:
        try:
            _run(["stop", "--port", str(port)], env, 90, directory)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.warning("backstage stop failed: %s", exc)
        _daemon.kill_leftovers(port)
    return share


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def rows(quick: bool = False) -> list[Row]:
    """Both figures; ``quick`` measures for shorter."""
    seconds = 3.0 if quick else 8.0
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    with tempdir() as directory, _home(directory / "home") as env:
        http, direct = _web_figures(directory, seconds)
        share = _top_cpu(directory, env, 10.0 if quick else 20.0)
    return [
        Row(
            f"HTTP (examples/bank_http, uvicorn) deposits, {CLIENTS} concurrent clients",
            http,
            "commands/s",
            f"direct dispatch, {CLIENTS} threads, same daemon",
            direct,
        ),
        Row(
            f"backstage top's CPU, daemon with {LIVE} live aggregates",
            share * 100,
            "% of a core",
            target="<= 5",
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    main(rows, __doc__)
