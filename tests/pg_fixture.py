"""A private PostgreSQL server for the test session (imported by conftest).

``initdb`` into a temp dir of its own (owned by the ``postgres`` user when the tests run as root,
mode 0700), the unix socket in that dir, no TCP listener (``listen_addresses=''``), ``pg_ctl start
-w``; stopped at the end of the session, also when the session fails. Each test that asks for
``pg_dsn`` gets a schema of its own on it (``search_path`` set in the DSN), so tests never see
each other's tables. Binaries come from ``pg_config --bindir``; without them the PostgreSQL tests
are skipped with the reason (``.ci/run`` installs the server package).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

__all__ = ["PrivateServer", "pg_dsn", "pg_server"]


def _bindir() -> Path | None:
    """``pg_config --bindir``, or the newest /usr/lib/postgresql/N/bin (Debian's layout)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """One PostgreSQL cluster in a temp dir, reachable only through its unix socket."""

    user = "postgres"

    def __init__(self, bindir: Path, listen: str | None = None) -> None:
        self.bindir = bindir
        self.listen = listen  # a TCP address to listen on too (a test's own network only)
        self.dir = Path(tempfile.mkdtemp(prefix="backstage-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.as_root = os.geteuid() == 0
        self.running = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        (self.dir / "owner").write_text(f"{os.getpid()}\n")  # see reap_orphans
        if self.as_root:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
        os.chmod(pwfile, 0o600)
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-instructions",
            "-E",
            "UTF8",
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        if self.listen is not None:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.listen}/24 scram-sha-256\n")
        self._start()

    def _start(self) -> None:
        """``pg_ctl start`` on the private socket only (no TCP listener unless ``listen``),
        waiting until ready."""
        options = (
            f"-c listen_addresses='{self.listen or ''}' -c unix_socket_directories={self.dir}"
            f" -p {self.port}"
            " -c max_connections=200 -c shared_buffers=32MB"
        )
        started = self._run(
            "pg_ctl",
            "start",
            "-w",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
        )
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}{self.log()}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))
            self.running = False

    def restart(self) -> None:
        """Stop the server (closing every connection) and start it again on the same socket."""
        self.stop()
        self._start()

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text()[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, schema: str | None = None, password: str | None = None) -> str:
        """A URL for the store: socket dir and port as query parameters, the schema (if any) as
        the connection's search_path."""
        query = {"host": str(self.dir), "port": str(self.port)}
        if schema:
            query["options"] = f"-csearch_path={schema}"
        secret = urllib.parse.quote(password if password is not None else self.password)
        return f"postgresql://{self.user}:{secret}@/postgres?{urllib.parse.urlencode(query)}"

    def new_schema(self) -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return schema


def reap_orphans(bindir: Path) -> None:
    """Stop and remove the servers of earlier sessions whose process is gone (killed before its
    teardown could run: SIGKILL, os._exit), so that none outlives its session for long."""
    for owner in Path(tempfile.gettempdir()).glob("backstage-pg-*/owner"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue  # its session is still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        orphan = PrivateServer(bindir)
        shutil.rmtree(orphan.dir, ignore_errors=True)
        orphan.dir, orphan.data, orphan.running = owner.parent, owner.parent / "data", True
        orphan.stop(mode="immediate")
        shutil.rmtree(orphan.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PrivateServer]:
    """The session's private PostgreSQL server (skipped when no PostgreSQL binaries exist)."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (pg_config --bindir); .ci/run installs them")
    reap_orphans(bindir)
    server = PrivateServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_dsn(pg_server: PrivateServer) -> str:
    """A DSN on a fresh schema of the private server: an empty store per test."""
    if not pg_server.running:
        pg_server.restart()
    return pg_server.dsn(pg_server.new_schema())
