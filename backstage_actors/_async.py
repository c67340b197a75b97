"""Dispatching from asyncio without blocking the event loop.

A Thespian client blocks while it waits for an answer, so the coroutines here run the ordinary
(thread-safe) :class:`RunningSystem` calls in a small pool of threads of the system's own and
await them: the event loop only ever waits on a future. Each pool thread talks to the actor
system through an endpoint of its own (on simpleSystemBase the threads take turns, as every
caller does there).

Timeouts count from the call, queueing for a thread included: a call that could not even start
before its ``timeout`` raises :class:`DispatchTimeout` without sending anything.

Cancellation behaves as asyncio's: the awaiting task gets ``CancelledError`` at once (and
``asyncio.wait_for`` / ``asyncio.timeout`` turn that into ``TimeoutError``). A call not yet
started is dropped; one already sent cannot be called back, and the command may still run. Name
it (``metadata={"command_id": ...}``) and send it again to learn its outcome: a repeat of a
stored command is answered from the store, not run twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import DispatchTimeout

if TYPE_CHECKING:
    from .application import RunningSystem
    from .command import DispatchResult

__all__ = ["MAX_THREADS", "close_pool", "dispatch_async", "dispatch_many_async"]

#: Calls in flight at once per system; more wait for a thread (their timeout runs meanwhile).
MAX_THREADS = 16

T = TypeVar("T")

_pools_lock = threading.Lock()


def _new_lock_in_child() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()  # (another thread of the parent may have held it)


os.register_at_fork(after_in_child=_new_lock_in_child)


def _pool(system: RunningSystem) -> concurrent.futures.ThreadPoolExecutor:
    """The system's pool in this process. A forked child (a pre-forking web server's worker)
    makes its own: its parent's pool has no threads here, and a call queued there never ran."""
    pool: concurrent.futures.ThreadPoolExecutor | None = system.async_pool
    pid = os.getpid()
    if pool is None or getattr(pool, "backstage_pid", pid) != pid:
        with _pools_lock:
            system._check_running()
            pool = system.async_pool
            if pool is None or getattr(pool, "backstage_pid", pid) != pid:
                pool = concurrent.futures.ThreadPoolExecutor(
                    MAX_THREADS, thread_name_prefix=f"backstage-{system.app.name}"
                )
                pool.backstage_pid = pid  # type: ignore[attr-defined]
                system.async_pool = pool
    return pool


def close_pool(system: RunningSystem) -> None:
    """Let the pool's threads go once their calls return (when the system stops)."""
    with _pools_lock:
        pool, system.async_pool = system.async_pool, None
    if pool is not None:
        pool.shutdown(wait=False)  # queued calls still run: they raise SystemNotRunning


async def _in_thread(system: RunningSystem, call: Callable[[], T]) -> T:
    future = _pool(system).submit(call)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()  # dropped if it has not started; a started call runs to its end
        raise


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DispatchTimeout(f"{what}: no thread free before the timeout; it was not sent")
    return left


async def dispatch_async(
    system: RunningSystem,
    command: Any,
    consistency: str = "eventual",
    metadata: Mapping[str, Any] | None = None,
    timeout: float = 5.0,
    handlers: Sequence[str] | None = None,
) -> DispatchResult:
    """``system.dispatch(...)`` as a coroutine (see the module's docstring)."""
    deadline = time.monotonic() + timeout
    name = type(command).__name__

    def call() -> DispatchResult:
        return system.dispatch(command, consistency, metadata, _remaining(deadline, name), handlers)

    return await _in_thread(system, call)


async def dispatch_many_async(
    system: RunningSystem,
    commands: Sequence[Any],
    metadata: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    batch_size: int = 1000,
) -> list[DispatchResult | BaseException]:
    """``system.dispatch_many(...)`` as a coroutine: one result or error per command."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def call() -> list[DispatchResult | BaseException]:
        left = None if deadline is None else _remaining(deadline, f"{len(commands)} commands")
        return system.dispatch_many(commands, metadata, left, batch_size)

    return await _in_thread(system, call)
