"""One running application per database on a host: the writer's lock.

Two applications on one SQLite database would both run every handler's side effects and race
their projections. The store actor of a running application holds an exclusive ``flock`` on
``<database>.owner`` (0600), which records who holds it (pid, application, base, port); a second
application on the same database is refused at its start with an error naming the first. The
kernel drops the lock when the holder's process ends, however it ends: a stale file locks
nothing. Readers (``EventStore(...)``, ``backstage events --db``) take no lock.

A forked child (every actor process on multiproc) closes its inherited copy of the descriptor
at once: the lock stays with the store actor's process alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from typing import Any

from .errors import StorageError
from .store import store_kind

__all__ = ["OwnerLock", "check_free", "owner_path"]

_held: list[int] = []  # descriptors of this process's locks (closed in forked children)


def _close_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def owner_path(database: str) -> str | None:
    """The lock file of ``database`` (None for databases that are not files)."""
    if database == ":memory:" or "://" in database or store_kind(database) != "sqlite":
        return None  # (PostgreSQL takes its writers' turns itself; memory is one process's)
    return database + ".owner"


def _describe(fd: int, path: str) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return f"another process holds {path}"
    where = f" on port {info['port']}" if info.get("port") else ""
    return (
        f"application {info.get('app', '?')!r} ({info.get('base', '?')}{where}, pid "
        f"{info.get('pid', '?')}) runs on it"
    )


def _refusal(database: str, fd: int, path: str) -> StorageError:
    return StorageError(
        f"the database {database} is in use: {_describe(fd, path)}; stop it first "
        "(one running application per database and host)"
    )


def check_free(database: str) -> None:
    """Raise :class:`StorageError` naming the running application if ``database`` has one."""
    path = owner_path(database)
    if path is None or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(database, fd, path) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class OwnerLock:
    """The lock a running application's store actor holds on its database."""

    def __init__(self, database: str, owner: dict[str, Any]) -> None:
        self.fd: int | None = None
        path = owner_path(database)
        if path is None:
            return
        try:
            # Never through a link, nor a file someone else put there: it is truncated and
            # written as this user (the database may sit in a shared directory).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {path}: {exc}") from None
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise StorageError(f"the lock file {path} belongs to another user: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _refusal(database, fd, path)
            os.close(fd)
            raise error from None
        record = json.dumps({**owner, "pid": os.getpid(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd
        _held.append(fd)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(ValueError):
            _held.remove(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
