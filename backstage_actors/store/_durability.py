"""How commits reach the disk when many processes append: turns on a lock file, shared flushes.

Every appending process takes its turn on an flock(2) of the lock file beside the database
before it asks SQLite for the write lock (:meth:`Turns.begin_turn`): SQLite makes a writer that
finds the database busy sleep and retry (1 ms, 2 ms, 5 ms, ...), while a waiter on flock is woken
the moment the lock is free.

With ``shared_flush`` the store runs SQLite at ``synchronous=NORMAL`` (a commit writes its WAL
frames but does not flush them) and flushes the WAL itself once it has let go of its turn
(:class:`WalSync`): other processes commit meanwhile. Two counters in the lock file make this a
group commit: ``committed`` counts commits whose frames are written, ``flushed`` how many of them
an fdatasync(2) has made durable. A process whose commit is already covered skips its own
flush; otherwise it takes the flush lock (a POSIX record lock on the counters' bytes), and one
fdatasync covers every commit written before it. No process acknowledges a commit before a
flush that started after it has ended, as under ``synchronous=FULL``.

Both locks are taken inside the ``try`` whose ``finally`` lets go of them (letting go of a lock
not held does nothing): an interruption (Ctrl-C) landing as one is taken never leaves this
process holding it, every other process's appends or flushes waiting for it for good.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Callable

__all__ = ["Turns", "WalSync"]

_COUNTERS = struct.Struct("<QQ")  # committed, flushed
_COUNTER = struct.Struct("<Q")
_FLUSHED_AT = _COUNTER.size  # where ``flushed`` lives
_FLUSH_LOCK_AT, _FLUSH_LOCK_LENGTH = _COUNTERS.size, 8  # the bytes locked (lockf) for a flush
_DELETED = " (deleted)"  # how /proc/self/fd names an open file that no longer has a name
_PROC_NAMES_FILES = os.path.isdir("/proc/self/fd")


class WalSync:
    """fdatasync(2) of a database's write-ahead log, opened once and again if it was replaced.

    SQLite deletes a WAL when its last connection closes, and when a connection leaves WAL mode
    (``PRAGMA journal_mode``); going back to WAL makes a new file. So before each flush the open
    log is checked not to be deleted, by the name the kernel gives its descriptor
    (``/proc/self/fd``, which ends in " (deleted)" once the file has no name; a file renamed with
    its directory is still the one SQLite writes). Not by a stat: on ext4 (Linux 6.18 here)
    asking a file's timestamps between two writes to it made the next fdatasync ~60 µs slower
    (137 → 202 µs for a small write; a P1 dispatch is ~430 µs); asking only its name, or only its
    link count (``statx``), does not. Without ``/proc`` the link count comes from a stat. SQLite
    keeps the WAL beside the database's real file, so a symlinked path is resolved.
    """

    def __init__(self, database: str) -> None:
        self.path = os.path.realpath(database) + "-wal"
        self.fd: int | None = None

    def __call__(self) -> None:
        if self.fd is None or not self._still_there(self.fd):
            self._open()
        assert self.fd is not None
        os.fdatasync(self.fd)

    @staticmethod
    def _still_there(fd: int) -> bool:
        if _PROC_NAMES_FILES:
            return not os.readlink(f"/proc/self/fd/{fd}").endswith(_DELETED)
        return os.fstat(fd).st_nlink > 0

    def _open(self) -> None:
        self.close()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        # The log's directory entry must survive a power cut too.
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Turns:
    """The lock file beside a database (``<database>.lock``): append turns and flush counters.

    Beside its real file, as SQLite keeps the ``-wal`` and ``-shm``: processes that open the
    database through a symlink and by its own path take turns on one lock and share flushes.
    """

    def __init__(self, database: str) -> None:
        self.path = None if database == ":memory:" else os.path.realpath(database) + ".lock"
        self.fd: int | None = None
        self.counters: mmap.mmap | None = None
        # Commits this process knows to be on disk: those a flush it made or saw covered.
        self.known_flushed = 0

    def open(self) -> int | None:
        """Open (and if need be create) the lock file; None for an in-memory database."""
        if self.fd is None and self.path is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            if os.fstat(fd).st_uid != os.geteuid():  # its counters decide what is flushed
                os.close(fd)
                raise PermissionError(f"the lock file {self.path} belongs to another user")
            if os.fstat(fd).st_size < _COUNTERS.size:
                os.ftruncate(fd, _COUNTERS.size)  # zeros; a larger file is left as it is
            self.counters = mmap.mmap(fd, _COUNTERS.size)
            self.fd = fd
        return self.fd

    def begin_turn(self) -> None:
        """Wait for this process's turn to append (an exclusive flock of the lock file);
        :meth:`end_turn` gives it up (call it in a ``finally`` around this call)."""
        fd = self.open()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)

    def end_turn(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def committed(self) -> int:
        """Count a commit whose frames are written; call it during the turn. Its number."""
        assert self.counters is not None
        committed = int(_COUNTER.unpack_from(self.counters, 0)[0]) + 1
        _COUNTER.pack_into(self.counters, 0, committed)
        return committed

    def flush(self, commit: int, sync: Callable[[], None]) -> bool:
        """Return once commit number ``commit`` is on disk; True if this call flushed."""
        assert self.fd is not None and self.counters is not None
        try:  # (taken inside: see the module's docstring)
            fcntl.lockf(self.fd, fcntl.LOCK_EX, _FLUSH_LOCK_LENGTH, _FLUSH_LOCK_AT)
            written, flushed = _COUNTERS.unpack_from(self.counters)
            if flushed >= commit:
                self.known_flushed = max(self.known_flushed, flushed)
                return False  # a flush that started after our commit has ended
            sync()
            _COUNTER.pack_into(self.counters, _FLUSHED_AT, written)
            self.known_flushed = max(self.known_flushed, written)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, _FLUSH_LOCK_LENGTH, _FLUSH_LOCK_AT)

    def close(self) -> None:
        if self.counters is not None:
            self.counters.close()
            self.counters = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
