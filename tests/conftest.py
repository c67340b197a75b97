"""Fixtures shared by every test: one real Thespian actor system per test, on each base."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from thespian.actors import ActorSystem

BASES = ["simple", "multiproc"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thespian_log_defs(path: str) -> dict[str, Any]:
    """Route actor logs (forwarded to Thespian's logger process) to a file of the test's own."""
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": path, "formatter": "plain"}
        },
        "root": {"handlers": ["file"], "level": logging.INFO},
    }


def start_actor_system(base: str, log_path: str) -> Any:
    if base == "simple":
        return ActorSystem("simpleSystemBase", transientUnique=True)
    capabilities = {"Admin Port": free_port()}
    return ActorSystem(
        "multiprocTCPBase",
        capabilities,
        logDefs=thespian_log_defs(log_path),
        transientUnique=True,
    )


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Backstage's home (its secret, Thespian's log) and Thespian's own log in a private
    directory of the session: not the user's ~/.backstage, nothing in the shared /tmp."""
    home = tmp_path_factory.mktemp("backstage-home")
    saved = {name: os.environ.get(name) for name in ("BACKSTAGE_HOME", "THESPLOG_FILE")}
    os.environ["BACKSTAGE_HOME"] = str(home)
    os.environ["THESPLOG_FILE"] = str(home / "thespian-tests.log")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    """The Thespian base a test runs on; every test using it runs once per base."""
    return str(request.param)


@pytest.fixture
def actor_system(base: str, tmp_path: Any) -> Iterator[Any]:
    """A fresh actor system of ``base``: its own admin port, shut down when the test ends."""
    system = start_actor_system(base, str(tmp_path / "actors.log"))
    try:
        yield system
    finally:
        system.shutdown()


@pytest.fixture
def multiproc_system(tmp_path: Any) -> Iterator[Any]:
    system = start_actor_system("multiproc", str(tmp_path / "actors.log"))
    try:
        yield system
    finally:
        system.shutdown()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module whose ``STORES`` names several stores runs its store-using tests on each."""
    if "store_kind" in metafunc.fixturenames:
        kinds = getattr(metafunc.module, "STORES", ["sqlite"])
        metafunc.parametrize("store_kind", kinds, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store an application test runs on: ``sqlite`` unless its module sets ``STORES``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def app_database(store_kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    """The test's own database on ``store_kind``: ``tmp_path/app.db``, or a fresh schema on the
    session's private PostgreSQL server."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    return str(tmp_path / "app.db")


@pytest.fixture
def start_app(base: str, tmp_path: Any, app_database: str) -> Iterator[Callable[..., Any]]:
    """``start_app(app, **options)``: run ``app`` on ``base`` with a database of the test's own
    (``app_database`` unless ``database=`` is given); every system is stopped at teardown."""
    systems: list[Any] = []

    def start(app: Any, **options: Any) -> Any:
        options.setdefault("database", app_database)
        if base == "multiproc":
            options.setdefault("log_defs", thespian_log_defs(str(tmp_path / "actors.log")))
        system = app.start(base=base, **options)
        systems.append(system)
        return system

    try:
        yield start
    finally:
        for system in reversed(systems):
            system.stop()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline.

    The default deadline is for a loaded CI machine (2 cores, a dozen actor processes): a
    test that means "soon" passes its own, shorter ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_at_once(target: Callable[..., None], argsets: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in a spawned process per ``args``, all released
    together by ``barrier``; return what each put on ``results`` once all exited cleanly."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(argsets))
    results = context.Queue()
    workers = [
        context.Process(target=target, args=(*args, barrier, results), daemon=True)
        for args in argsets
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    return reports


# The private PostgreSQL server of the session, and a fresh schema on it per test.
from .pg_fixture import pg_dsn, pg_server  # noqa: E402, F401  (fixtures)
