"""Reaching a running system from your own program: ``dispatch_async`` from asyncio, and
``Application.attach(port=...)`` used from many threads at once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import DispatchTimeout, SystemNotRunning

from .conftest import free_port, wait_until
from .dispatch_domain import Add, Stall, make_app, stored


async def ticking(gaps: list[float], stop: asyncio.Event) -> None:
    """Tick every 5 ms until ``stop``; record the time between ticks."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


def test_100_concurrent_dispatches_complete_while_the_loop_keeps_ticking(
    start_app: Any, base: str
) -> None:
    system = start_app(make_app())
    counters = [f"c{n}" for n in range(10)]
    system.dispatch_many([Add(counter, 0) for counter in counters])

    async def main() -> tuple[list[Any], list[float], float]:
        await system.dispatch_async(Add("warm-up", 0))  # the pool's threads start here
        gaps: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(ticking(gaps, stop))
        started = time.perf_counter()
        # Among them, commands that take 1.2 s each: a call that blocked the loop for its
        # command would stop the ticker for at least that long.
        stalls = [system.dispatch_async(Stall(f"s{n}", 1.2), timeout=60.0) for n in range(3)]
        results = await asyncio.gather(
            *(system.dispatch_async(Add(counters[n % 10], 1), timeout=60.0) for n in range(100)),
            *stalls,
        )
        elapsed = time.perf_counter() - started
        stop.set()
        await ticker
        return results[:100], gaps, elapsed

    results, gaps, elapsed = asyncio.run(main())
    assert len(results) == 100
    for counter in counters:
        versions = sorted(r.version for r in results if r.stream_id == f"Counter-{counter}")
        assert versions == list(range(2, 12))  # ten each, none lost, none twice
    # The loop was free throughout: it ticked all along, never stalled for as long as a command
    # took (1.2 s; the bound leaves a loaded machine's scheduler 0.6 s).
    assert elapsed >= 1.2
    assert sum(gaps) >= elapsed * 0.8
    assert max(gaps) < 0.6, (max(gaps), elapsed)


def test_a_cancelled_call_raises_in_the_caller_and_may_still_run(start_app: Any, base: str) -> None:
    system = start_app(make_app())
    system.dispatch(Add("slow", 0))

    async def cancel_it() -> None:
        task = asyncio.create_task(
            system.dispatch_async(Stall("slow", 2.0), metadata={"command_id": "stall-1"})
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.perf_counter()
    asyncio.run(cancel_it())
    # The caller did not wait for the command (2 s; the rest is a loaded machine's margin).
    assert time.perf_counter() - started < 1.5
    # It had been sent: it runs to its end. Sent again under its name, it is not run twice.
    wait_until(lambda: len(stored(system, "Counter-slow")) == 2, what="the stalled command")
    again = asyncio.run(
        system.dispatch_async(Stall("slow", 2.0), metadata={"command_id": "stall-1"})
    )
    assert again.version == 2
    assert len(stored(system, "Counter-slow")) == 2


def test_timeouts_behave_like_asyncio(start_app: Any, base: str) -> None:
    system = start_app(make_app())
    system.dispatch(Add("slow", 0))

    async def both() -> None:
        with pytest.raises(TimeoutError):  # asyncio's own, by cancellation
            await asyncio.wait_for(system.dispatch_async(Stall("slow", 0.3)), 0.05)
        with pytest.raises(DispatchTimeout):  # the dispatch's own
            await system.dispatch_async(Stall("slow", 1.0), timeout=0.2)

    asyncio.run(both())


def test_dispatch_many_async(start_app: Any, base: str) -> None:
    system = start_app(make_app())
    results = asyncio.run(system.dispatch_many_async([Add("m", 1), Add("m", 2), Add("n", 3)]))
    assert [r.version for r in results] == [1, 2, 1]  # type: ignore[union-attr]


@pytest.mark.process
def test_attach_by_port_is_a_thread_safe_client(start_app: Any, base: str) -> None:
    if base != "multiproc":
        pytest.skip("attach(port=...) reaches a multiproc admin")
    port = free_port()
    app = make_app()
    start_app(app, port=port)
    with app.attach(port=port) as attached:
        errors: list[BaseException] = []
        per_thread = 20

        def work(n: int) -> None:
            try:
                for _ in range(per_thread):
                    attached.dispatch(Add(f"own-{n}", 1), timeout=30.0)
                    attached.dispatch(Add("shared", 1), timeout=30.0)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors
        assert len(stored(attached, "Counter-shared")) == 8 * per_thread
        for n in range(8):
            assert len(stored(attached, f"Counter-own-{n}")) == per_thread
    # Letting go of it leaves the system running for everyone else.
    with app.attach(port=port) as again:
        assert again.dispatch(Add("shared", 1)).version == 8 * per_thread + 1


def test_attach_to_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemNotRunning, match="no actor system"):
        make_app().attach(port=free_port())
