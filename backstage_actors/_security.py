"""Secrets, private files and bounded logging of refused peers: no Thespian in here.

* :func:`secret` finds the shared secret that authenticates every connection to a Backstage
  actor system (see ``_thespian``): the ``BACKSTAGE_SECRET`` environment variable (hex), else the
  file named by ``BACKSTAGE_SECRET_FILE``, else ``$BACKSTAGE_HOME/secret``, created at first use
  with 32 random bytes. A secret file that others can read is refused, as ssh refuses such a key.
* :func:`create_private` and :func:`open_private` create files only their owner can read, and
  never through a symbolic link someone else could have planted.
* :class:`RefusalLog` logs refused peers at a bounded rate: a flood of them costs a counter
  increment each, not a log line (on multiproc a log line is a message to the logger process).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from .errors import BackstageError, StorageError

__all__ = [
    "SECRET_BYTES",
    "RefusalLog",
    "create_database_files",
    "create_if_missing",
    "create_private",
    "home",
    "open_private",
    "secret",
]

SECRET_BYTES = 32
SECRET_ENV = "BACKSTAGE_SECRET"
SECRET_FILE_ENV = "BACKSTAGE_SECRET_FILE"


def home() -> Path:
    """Where state, pid, log and secret files live: ``$BACKSTAGE_HOME`` or ``~/.backstage``,
    created 0700."""
    path = Path(os.environ.get("BACKSTAGE_HOME") or Path.home() / ".backstage")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A directory that was already there (made by someone else, in /tmp say) holds the state
    # files that name the processes to kill, the files to remove and the module to import.
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise BackstageError(
            f"{path} must belong to this user and be writable by it alone "
            f"(mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}): "
            "set BACKSTAGE_HOME to a directory of your own"
        )
    return path


def safe_import_directory(path: str | os.PathLike[str]) -> bool:
    """Whether modules may be imported from ``path``: a directory of this user's (or root's)
    that not everyone can write to (not ``/tmp``, not another user's; a group this user shares
    a project directory with is trusted, as Python and git trust it)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid in (os.geteuid(), 0)
        and not info.st_mode & stat.S_IWOTH
    )


def secret() -> bytes:
    """The secret of the actor systems this process starts or attaches to (see the module)."""
    text = os.environ.get(SECRET_ENV)
    if text:
        return _parse(text, f"${SECRET_ENV}")
    named = os.environ.get(SECRET_FILE_ENV)
    path = Path(named) if named else home() / "secret"
    if not named and not os.path.lexists(path):
        _create_secret_file(path)
    return _read_secret_file(path)


def _create_secret_file(path: Path) -> None:
    """Write a new secret beside ``path`` and link it there whole: a process starting at the
    same moment reads either no file or the complete secret, never an empty one; if another
    linked its secret first, that one stays."""
    spare = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_bytes(SECRET_BYTES).hex() + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(spare, path)
    finally:
        os.unlink(spare)


def _read_secret_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BackstageError(f"cannot read the secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as file:
        info = os.fstat(file.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise BackstageError(
                f"the secret file {path} must belong to this user and be readable by it alone "
                f"(mode {stat.filemode(info.st_mode)}): chmod 600 {path}"
            )
        return _parse(file.read(), str(path))


def _parse(text: str, where: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise BackstageError(f"the secret in {where} is not hexadecimal") from None
    if len(value) < SECRET_BYTES:
        raise BackstageError(
            f"the secret in {where} has {len(value)} bytes; it needs at least {SECRET_BYTES}"
        )
    return value


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open ``path`` (created 0600 if missing) without following a symbolic link; a descriptor.

    A file already there that another user owns is refused (``PermissionError``): planted in a
    shared directory (``--log-file /tmp/app.log``, an export), it would receive what is written,
    and its owner keeps reading it. Root's files are accepted (``/dev/null``). The open does
    not wait for a reader of a FIFO (one planted there would hang the caller)."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, f"{os.fspath(path)} is a FIFO that nothing reads") from None
        raise
    try:
        owner = os.fstat(fd).st_uid
        if owner not in (os.geteuid(), 0):
            raise PermissionError(
                errno.EPERM,
                f"{os.fspath(path)} belongs to another user (uid {owner}): remove it, or write "
                "somewhere else",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty and 0600 unless it exists (then leave it as it is), so that what
    opens it next (SQLite, readline, Thespian's log) finds it there and keeps its mode whatever
    the umask. A symbolic link there is an error (``OSError``, ELOOP), never followed."""
    os.close(open_private(path, os.O_WRONLY))


def create_if_missing(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty and 0600 if nothing is there (a link there is left alone: a
    database may be one); errors are left to whoever opens it next."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


SQLITE_COMPANIONS = ("-wal", "-shm")  # what SQLite opens beside a database in WAL mode


def create_database_files(path: str) -> None:
    """Before SQLite opens the database ``path``: create it 0600 if it is missing and, in a
    directory that others can write to (``/tmp``, a shared project directory), make sure it and
    its ``-wal`` and ``-shm`` are this user's, creating those two first (empty, 0600).

    SQLite creates them with ``O_CREAT`` alone: a ``-wal`` that another user planted there (and
    keeps open) received every event written, as did a planted database; a planted ``-shm`` is
    the index SQLite trusts to read the ``-wal``. Ours, in a sticky directory, nobody else can
    replace them. :class:`StorageError` naming every file that is not this user's."""
    create_if_missing(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        shared = os.stat(directory).st_mode & 0o022
    except OSError:
        return  # (SQLite says what is wrong with the path)
    if not shared:
        return  # (nobody else can put anything there)
    foreign = []
    for name in (path, *(path + suffix for suffix in SQLITE_COMPANIONS)):
        if name != path:
            create_if_missing(name)
        try:
            info = os.lstat(name)
        except OSError:
            continue
        link = stat.S_ISLNK(info.st_mode) and name == path  # (a database may be a link)
        if info.st_uid != os.geteuid() or not (stat.S_ISREG(info.st_mode) or link):
            foreign.append(f"{name} ({stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
    if foreign:
        raise StorageError(
            f"refusing the database {path}: others can write to {directory}, and "
            f"{', '.join(foreign)} is not a plain file of this user's (planted there, it "
            "would receive the events written): "
            "remove it, or keep the database in a directory of your own"
        )


class RefusalLog:
    """Log refused peers at most ``burst`` times per ``period`` seconds; the next line after a
    quiet spell says how many went unlogged. Thread-safe; cheap when it does not log."""

    def __init__(self, logger: str, burst: int = 5, period: float = 60.0) -> None:
        self.logger = logger  # a name: Thespian replaces the logging tree in each actor process
        self.burst = burst
        self.period = period
        self.window = 0.0
        self.logged = 0
        self.suppressed = 0
        self._lock = threading.Lock()

    def refused(self, what: str, peer: object) -> None:
        """Note that ``peer`` was refused for ``what`` (never the peer's data: it is hostile)."""
        now = time.monotonic()
        with self._lock:
            if now - self.window >= self.period:
                self.window, self.logged = now, 0
            if self.logged >= self.burst:
                self.suppressed += 1
                return
            self.logged += 1
            suppressed, self.suppressed = self.suppressed, 0
        more = f" ({suppressed} more refused since, not logged)" if suppressed else ""
        logging.getLogger(self.logger).warning("refused %s: %s%s", peer, what, more)
