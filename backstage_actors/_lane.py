"""Lanes: a client's commands to an aggregate process it already knows, over a local socket.

On multiprocTCPBase every Thespian message is a TCP exchange with its own ACK, and each wait of
Thespian's transport walks every socket the process holds. A command sent straight to its
aggregate costs two such messages; the aggregate's answer is the second. A lane carries the
same two messages (an :class:`Execute` and its :class:`Executed`, pickled as Thespian would)
over a Unix socket the aggregate process listens on, without ACKs or the transport's loop:

* The aggregate opens a listening socket in Linux's abstract namespace (no file to clean up;
  reachable from the same host and network namespace, as Thespian's own TCP ports on
  127.0.0.1 are). Its name follows from the actor system, the database and the stream id
  (:func:`name_for`), so a client can try the lane of a live aggregate it never heard from; if
  that name is taken, the aggregate takes a random one. Either way it names its lane in its
  answers.
* Both ends accept only a peer running as the same user (``SO_PEERCRED``): Thespian's own
  ports take pickles from anyone who can reach them.
* Thespian watches the lane's sockets for the actor (``ThespianWatch``): a request arrives as a
  ``WatchMessage`` through the actor's mailbox, so commands arriving by lane and by message are
  still handled one at a time.
* A client keeps one connection per aggregate and thread (closed when the thread ends); an
  aggregate keeps its most recently used connections. Anything unexpected (the aggregate
  stopped, crashed or moved; a timeout; no lane on this platform) closes the connection and the
  command takes the router's way, named, so that it never runs twice.
* An aggregate never waits long for a client: one that takes nothing of its answer for
  ``SEND_PATIENCE`` is cut off (its command went by the router meanwhile).

Frames are a 4-byte big-endian length and a pickle.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pickle
import secrets
import select
import socket
import struct
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ._security import RefusalLog

__all__ = ["LaneClient", "LaneConnection", "LaneServer", "available"]

_HEADER = struct.Struct(">I")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_FRAME = 64 * 1024 * 1024  # bytes: a longer frame is a broken or hostile peer
MAX_CONNECTIONS = 256  # per client thread: lanes kept open, most recently used
MAX_SERVED = 256  # per aggregate: client connections kept, most recently used
SEND_PATIENCE = 0.2  # seconds an aggregate waits for a client to take any of its answer
ACCEPTS_PER_TURN = 64  # connections an aggregate takes at a time before its mailbox's turn

# Other users' connections, refused: each costs a counter, not a log line (on multiproc a log
# line is a message to Thespian's logger process).
_refusals = RefusalLog(__name__)


def log() -> logging.Logger:
    return logging.getLogger(__name__)


def available() -> bool:
    """Lanes need Linux's abstract Unix socket namespace."""
    return sys.platform.startswith("linux")


def name_for(system: str, database: str, stream_id: str) -> str:
    """The lane name the aggregate of ``stream_id`` listens on when it can, in the actor system
    ``system`` (see ``_thespian.system_key``) on ``database``."""
    text = f"{system}\0{database}\0{stream_id}"
    return f"\0backstage-lane-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of ``sock``."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    return int(_CREDS.unpack(creds)[1])


def same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of ``sock`` runs as this process's user."""
    return peer_uid(sock) == os.getuid()


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _frame_end(buffer: bytearray) -> int:
    """Where the frame at the start of ``buffer`` (its header read) ends."""
    (size,) = _HEADER.unpack_from(buffer)
    if size > MAX_FRAME:
        raise ValueError(f"a lane frame of {size} bytes")
    return _HEADER.size + size


def _send_all(sock: socket.socket, data: bytes, patience: float) -> None:
    """Send ``data`` on a non-blocking socket; give up when the peer takes nothing of it for
    ``patience`` seconds."""
    view = memoryview(data)
    poller: Any = None
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            if not poller.poll(patience * 1000):
                raise TimeoutError("the client takes nothing of its answer") from None


class LaneConnection:
    """One client's connection to an aggregate's lane; also the ``reply_to`` of the commands
    that came by it (never sent to another process)."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def frames(self) -> Iterator[Any]:
        """The complete requests in the buffer, unpickled."""
        while len(self.buffer) >= _HEADER.size:
            end = _frame_end(self.buffer)
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[_HEADER.size : end])
            del self.buffer[:end]
            yield pickle.loads(payload)


class LaneServer:
    """An aggregate process's listening socket and its clients' connections."""

    def __init__(self, name: str | None) -> None:
        """Listen on ``name`` if it is given and free, else on a random name."""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.name = self._bind(name)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.connections: dict[int, LaneConnection] = {}
        self.requests = 0
        self.closed = False
        # For hang_up, made now: it must not need a free descriptor when it runs. The write end
        # stays open, so the read end never becomes ready.
        self._quiet = os.pipe()
        # Dropped connections, shut down but not yet closed: Thespian may still watch their
        # descriptors until the actor's next message (see _drop).
        self._dropped: list[socket.socket] = []

    def _bind(self, name: str | None) -> str:
        if name is not None:
            try:
                self.listener.bind(name)
                return name
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        name = f"\0backstage-lane-{os.getpid()}-{secrets.token_hex(8)}"
        self.listener.bind(name)
        return name

    def filenos(self) -> list[int]:
        return [] if self.closed else [self.listener.fileno(), *self.connections]

    def describe(self) -> dict[str, Any]:
        return {
            "socket": "@" + self.name[1:],  # abstract: the way ss(8) shows it
            "connections": len(self.connections),
            "commands": self.requests,
        }

    def ready(self, filenos: list[int]) -> Iterator[tuple[LaneConnection, Any]]:
        """Accept new connections and read the ready ones: each complete request with the
        connection to answer on. A connection that sends what is not a request is closed."""
        while self._dropped:  # no longer watched: the actor handled a message since
            self._dropped.pop().close()
        for fileno in filenos:
            if fileno == self.listener.fileno():
                self._accept()
                continue
            connection = self.connections.pop(fileno, None)
            if connection is None:
                continue
            self.connections[fileno] = connection  # the most recently used last
            try:
                data = connection.sock.recv(1 << 16)
                if not data:
                    self._drop(connection)
                    continue
                connection.buffer += data
                requests = list(connection.frames())
            except BlockingIOError:
                continue
            except Exception as exc:  # unreadable, or not a pickle of ours
                log().warning("closing a lane connection that sent a bad request: %s", exc)
                self._drop(connection)
                continue
            for request in requests:
                self.requests += 1
                yield connection, request

    def answer(self, connection: LaneConnection, message: Any) -> None:
        if self.closed:
            return  # the client sees its connection end, and goes by the router
        try:
            _send_all(connection.sock, frame(message), SEND_PATIENCE)
        except (OSError, TimeoutError) as exc:
            log().info("a lane client went away before its answer: %s", exc)
            self._drop(connection)

    def close(self) -> None:
        """Close everything at once (outside an actor, or where nothing watches any longer)."""
        for sock in self._sockets():
            sock.close()
        if not self.closed:
            for end in self._quiet:
                os.close(end)
        self.connections.clear()
        self._dropped.clear()
        self.closed = True

    def hang_up(self) -> None:
        """Close the listener and every connection, but keep their descriptor numbers taken by a
        pipe that never becomes ready, until the process ends: for an actor on its way out.
        Thespian goes on watching the descriptors it was last given while it sends the actor's
        last messages, and a number freed here could be reused by one of those sends."""
        if self.closed:
            return
        for sock in self._sockets():
            # Closes the socket behind the number (its peer sees EOF); the number is the pipe's
            # now, so the socket object must never close it.
            os.dup2(self._quiet[0], sock.fileno(), inheritable=False)
            sock.detach()
        self.connections.clear()
        self._dropped.clear()
        self.closed = True

    def _sockets(self) -> list[socket.socket]:
        return [self.listener, *(c.sock for c in self.connections.values()), *self._dropped]

    def _accept(self) -> None:
        """Take the waiting connections, a bounded number per turn (the listener stays ready
        for the rest), refusing other users' at the cost of a close."""
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log().warning("lane accept failed: %s", exc)
                return
            uid = peer_uid(sock)
            if uid != os.getuid():
                sock.close()
                _refusals.refused("a lane connection from another user", f"uid {uid}")
                continue
            sock.setblocking(False)
            self.connections[sock.fileno()] = LaneConnection(sock)
            while len(self.connections) > MAX_SERVED:
                self._drop(next(iter(self.connections.values())))

    def _drop(self, connection: LaneConnection) -> None:
        """End a connection now (its client sees EOF) and stop watching it; its descriptor is
        closed at the next :meth:`ready`, when Thespian watches the new list (a number freed
        sooner could be reused by a socket of Thespian's while it still watches the old one)."""
        if self.connections.pop(connection.sock.fileno(), None) is None:
            return
        with contextlib.suppress(OSError):  # the peer may be gone already
            connection.sock.shutdown(socket.SHUT_RDWR)
        self._dropped.append(connection.sock)


class LaneClient:
    """One thread's connections to aggregates' lanes, most recently used kept open; they are
    closed when the client is (with its thread: keep it in a ``threading.local``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.connections: OrderedDict[str, socket.socket] = OrderedDict()
        self.calls = 0
        weakref.finalize(self, _close_all, self.connections)

    def call(self, name: str, request: Any, timeout: float) -> Any:
        """Send ``request`` on lane ``name`` and return its answer, or None when there is none
        within ``timeout`` or the lane is gone (the connection is then closed)."""
        sock = self.connections.pop(name, None)
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.connections[name] = sock
                sock.settimeout(timeout)
                sock.connect(name)
                if not same_user(sock):
                    raise ConnectionRefusedError("the lane belongs to another user")
                while len(self.connections) > MAX_CONNECTIONS:
                    self.connections.popitem(last=False)[1].close()
            else:
                self.connections[name] = sock  # the most recently used last
                sock.settimeout(timeout)
            sock.sendall(frame(request))
            answer = self._read(sock, time.monotonic() + timeout)
        except Exception as exc:  # refused, closed, timed out, or not an answer of ours
            log().debug("lane %r: %s", name[1:], exc)
            self.forget(name)
            return None
        self.calls += 1
        return answer

    def forget(self, name: str) -> None:
        sock = self.connections.pop(name, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        _close_all(self.connections)

    @staticmethod
    def _read(sock: socket.socket, deadline: float) -> Any:
        data = bytearray()
        needed = _HEADER.size
        while len(data) < needed:
            if data:  # a later part: only what is left of the time
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no answer in time")
                sock.settimeout(remaining)
            chunk = sock.recv(max(needed - len(data), 1 << 16))
            if not chunk:
                raise EOFError("the aggregate closed its lane")
            data += chunk
            if needed == _HEADER.size and len(data) >= _HEADER.size:
                needed = _frame_end(data)
        return pickle.loads(bytes(data[_HEADER.size : needed]))


def _close_all(connections: OrderedDict[str, socket.socket]) -> None:
    while connections:
        try:
            _, sock = connections.popitem()
        except KeyError:  # emptied meanwhile by its own thread
            return
        sock.close()
