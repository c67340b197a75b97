"""Another user of the host plants files where a database in a shared directory (mode 1777,
like /tmp) will be, or where SQLite will put its ``-wal`` and ``-shm``: Backstage refuses them
rather than write its events into a file that user owns (and keeps open). The attacker runs as
``nobody``; we run as root."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import attrs
import pytest

from backstage_actors.errors import StorageError
from backstage_actors.store import EventStore

from .test_security import PYTHON, SETPRIV, as_nobody, nobody, shared_tmp  # noqa: F401

pytestmark = pytest.mark.process


@attrs.frozen
class PlantedFileSecretNoted:
    text: str


SECRET = "a-deposit-only-root-may-read"

# As nobody: create the file 0666, keep it open, say so; on a line from stdin print whether what
# was written into it since (through the descriptor, whoever owns the path now) holds argv[2].
KEEP_OPEN = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
os.fchmod(fd, 0o666)
print("planted", flush=True)
sys.stdin.readline()
os.lseek(fd, 0, os.SEEK_SET)
data = b""
while chunk := os.read(fd, 1 << 20):
    data += chunk
print(sys.argv[2].encode() in data, flush=True)
"""


def keep_open_as_nobody(path: Path) -> subprocess.Popen[str]:
    command = [SETPRIV or "setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    command += [PYTHON or "python3", "-I", "-c", KEEP_OPEN, str(path), SECRET]
    spy = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
    )
    assert spy.stdout is not None and spy.stdout.readline() == "planted\n"
    return spy


def spy_read_the_secret(spy: subprocess.Popen[str]) -> bool:
    answer, _ = spy.communicate("go\n", timeout=30)
    return answer.strip() == "True"


@as_nobody
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_database_file_planted_by_another_user_is_refused(
    shared_tmp: Path,  # noqa: F811
    suffix: str,
) -> None:
    database = shared_tmp / "bank.db"
    spy = keep_open_as_nobody(Path(f"{database}{suffix}"))
    try:
        with (
            pytest.raises(StorageError, match="not a plain file of this user's") as refused,
            EventStore(str(database)) as store,
        ):
            store.append("planted-1", [PlantedFileSecretNoted(SECRET)])
        assert f"bank.db{suffix} " in str(refused.value)
    finally:
        assert not spy_read_the_secret(spy), f"nobody read the events through bank.db{suffix}"


@as_nobody
def test_a_database_in_a_shared_directory_has_private_companions(
    shared_tmp: Path,  # noqa: F811
) -> None:
    """Its -wal and -shm are created first, 0600 and ours: the directory's sticky bit then keeps
    anyone else from replacing them while SQLite uses them."""
    database = shared_tmp / "bank.db"
    with EventStore(str(database)) as store:
        store.append("planted-2", [PlantedFileSecretNoted(SECRET)])
        for suffix in ("", "-wal", "-shm"):
            info = Path(f"{database}{suffix}").lstat()
            assert stat.S_ISREG(info.st_mode) and info.st_uid == 0, suffix
            assert stat.S_IMODE(info.st_mode) == 0o600, suffix
        assert [e.data for e in store.read_stream("planted-2")] == [PlantedFileSecretNoted(SECRET)]


def test_a_database_in_a_private_directory_is_opened_as_before(tmp_path: Path) -> None:
    with EventStore(str(tmp_path / "app.db")) as store:
        store.append("planted-3", [PlantedFileSecretNoted("x")])
    assert stat.S_IMODE((tmp_path / "app.db").stat().st_mode) == 0o600
