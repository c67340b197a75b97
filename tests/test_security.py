"""Another user of the host against a Backstage system: authenticated ports, private files,
bounded refusals. The attacker runs as ``nobody`` (``setpriv``); we run as root."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import _daemon, _lane, _security, _thespian
from backstage_actors._owner import OwnerLock
from backstage_actors._shard import shard_name, shard_of
from backstage_actors.application import default_shards
from backstage_actors.errors import BackstageError, StorageError
from backstage_actors.store._durability import Turns
from examples.bank.domain import Deposit

from .conftest import wait_until
from .dispatch_domain import Add, make_app
from .test_cli import BACKSTAGE, Backstage, running

pytestmark = pytest.mark.process

SETPRIV = shutil.which("setpriv")
# The attacker's interpreter: one that user nobody may run (not root's own installation).
PYTHON = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
as_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or PYTHON is None,
    reason="switching to user nobody needs root, setpriv and a system python3",
)

# Sent as nobody: a frame whose unpickling would create `target`, as Thespian frames a message;
# "forged" puts 32 bytes where the MAC goes. Prints what the port answered.
ATTACK = r"""
import os, pickle, socket, sys
host, port, target, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
class Boom:
    def __reduce__(self):
        return (os.system, ("touch " + target,))
payload = pickle.dumps(Boom())
if mode == "forged":
    payload = bytes(32) + payload
with socket.create_connection((host, port), 5) as sock:
    sock.sendall(b"%d>" % len(payload) + payload)
    sock.settimeout(5)
    try:
        print(repr(sock.recv(100)))
    except OSError as exc:
        print(exc)
"""

# Sent as nobody: connect and close (a lane's name, or a port with a garbage frame) until the
# time is up; prints how many.
FLOOD = r"""
import socket, sys, time
kind, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end, count = time.monotonic() + seconds, 0
while time.monotonic() < end:
    try:
        if kind == "lane":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect("\0" + target)
        else:
            with socket.create_connection(("127.0.0.1", int(target)), 1) as sock:
                sock.sendall(b"40>" + bytes(40))
        count += 1
    except OSError:
        pass
print(count)
"""


def nobody(script: str, *args: Any, wait: bool = True) -> Any:
    command = [SETPRIV or "setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    command += [PYTHON or "python3", "-I", "-c", script, *map(str, args)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd="/")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")


def port_of(address: str) -> int:
    return int(re.search(r":(\d+)\)", address).group(1))  # type: ignore[union-attr]


def aggregate_port(backstage: Backstage, stream_id: str) -> int:
    def find(node: dict[str, Any]) -> int | None:
        if node.get("name") == stream_id:
            return port_of(node["address"])
        return next((p for c in node.get("children", []) if (p := find(c))), None)

    port = find(backstage.json("tree"))
    assert port is not None, f"{stream_id} is not in the tree"
    return port


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (mode 1777) that nobody can write to; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="backstage-shared-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def daemon(
    tmp_path: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backstage]:
    """A bank daemon whose TMPDIR is a shared, world-writable directory."""
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.delenv("THESPLOG_FILE", raising=False)  # Backstage decides where it goes
    home = tmp_path / "home"
    with running(home) as backstage:
        backstage.send("OpenAccount", {"account_id": "alice", "owner": "Alice"})
        yield backstage


def log_of(backstage: Backstage) -> str:
    return (backstage.home / f"daemon-{backstage.port}.log").read_text()


@as_nobody
def test_another_user_cannot_run_code_through_the_admin_or_an_actor_port(
    daemon: Backstage, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    ports = {"admin": daemon.port, "aggregate": aggregate_port(daemon, "Account-alice")}
    for name, port in ports.items():
        for mode in ("plain", "forged"):
            attack = nobody(ATTACK, "127.0.0.1", port, target, mode)
            assert attack.returncode == 0, attack.stderr
            assert not target.exists(), f"a {mode} pickle to the {name} port ran"
    # The daemon keeps serving, and said who it refused (and nothing of what they sent).
    deposit = daemon.send("Deposit", {"account_id": "alice", "amount": 5})
    assert deposit["version"] == 2
    log = wait_until(lambda: (text := log_of(daemon)).count("refused 127.0.0.1:") >= 4 and text)
    assert "a frame that fails authentication" in log
    assert "touch" not in log and "Boom" not in log
    assert not target.exists()


@as_nobody
def test_the_same_attack_runs_code_in_plain_thespian(tmp_path: Path) -> None:
    """The attack above is real: without authentication it runs as the system's user."""
    target = tmp_path / "pwned"
    system = _thespian.start_actor_system("multiproc", authenticate=False)
    try:
        port = system.capabilities["Admin Port"]
        attack = nobody(ATTACK, "127.0.0.1", port, target, "plain")
        assert attack.returncode == 0, attack.stderr
        wait_until(target.exists, what="the attack's file")
    finally:
        system.shutdown()


def test_a_client_with_a_wrong_secret_is_refused(daemon: Backstage) -> None:
    env = {**daemon.env(), "BACKSTAGE_SECRET": "ab" * 32}
    result = subprocess.run(
        [BACKSTAGE, "status", "--port", str(daemon.port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "refused this client's secret" in result.stderr
    with pytest.raises(_thespian.AuthenticationRefused, match="refused this client's secret"):
        _thespian.attach(daemon.port, secret=bytes(32))
    # The right secret (the daemon's home) still attaches.
    assert daemon.run("status").returncode == 0


def test_files_of_a_daemon_are_its_owners_alone(daemon: Backstage, shared_tmp: Path) -> None:
    daemon.send("Deposit", {"account_id": "alice", "amount": 5})
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in daemon.home.iterdir()}
    for name in ("bank.db", "bank.db-wal", "bank.db-shm", "bank.db.lock", "secret"):
        assert files.pop(name) == 0o600, name
    assert files and all(mode == 0o600 for mode in files.values()), files  # state, pid, logs
    assert (daemon.home / "thespian.log").exists()
    assert daemon.run("stop").returncode == 0
    leaked = [p for p in shared_tmp.rglob("*") if p.lstat().st_mode & 0o077]
    assert leaked == []


@pytest.mark.parametrize("base", ["simple", "multiproc"])
def test_an_in_process_database_is_private_whatever_the_umask(
    start_app: Any, tmp_path: Path
) -> None:
    previous = os.umask(0o022)
    try:
        system = start_app(make_app(), database=str(tmp_path / "app.db"))
        system.dispatch(Add("a", 1))
    finally:
        os.umask(previous)
    for name in ("app.db", "app.db-wal", "app.db-shm", "app.db.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


@as_nobody
def test_a_symlink_planted_where_thespian_logged_is_not_followed(
    daemon: Backstage, shared_tmp: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    # Thespian's default log is $TMPDIR/thespian.log; nobody plants a link there.
    planted = nobody(
        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", victim, shared_tmp / "thespian.log"
    )
    assert planted.returncode == 0, planted.stderr
    nobody(ATTACK, "127.0.0.1", daemon.port, tmp_path / "pwned", "plain")
    nobody(FLOOD, "port", daemon.port, 0.5)
    daemon.send("Deposit", {"account_id": "alice", "amount": 5})
    assert daemon.run("stop").returncode == 0
    assert victim.read_text() == "root's\n"


def test_a_symlink_where_a_log_goes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    (home / "thespian.log").symlink_to(victim)
    monkeypatch.setenv("BACKSTAGE_HOME", str(home))
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        _thespian.start_actor_system("multiproc").shutdown()  # (shut down if it ever starts)
    assert victim.read_text() == "root's\n"


@as_nobody
def test_a_flood_from_another_user_neither_delays_commands_nor_floods_the_log(
    daemon: Backstage, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _daemon.DaemonState(daemon.state())
    shard = shard_name(shard_of("Account-alice", default_shards("multiproc")))
    lane = _lane.name_for(f"ActorAddr-(T|:{daemon.port})", state["database"], shard)
    assert lane[1:] in Path("/proc/net/unix").read_text(), "the shard's lane is not listening"
    before = len(log_of(daemon))
    monkeypatch.setenv("BACKSTAGE_HOME", str(daemon.home))
    _, system = _daemon.attach(daemon.port)
    flooders = [
        nobody(FLOOD, "lane", lane[1:], 8, wait=False),
        nobody(FLOOD, "lane", lane[1:], 8, wait=False),
        nobody(FLOOD, "port", daemon.port, 8, wait=False),
        nobody(FLOOD, "port", aggregate_port(daemon, "Account-alice"), 8, wait=False),
    ]
    try:
        time.sleep(1)  # the flood is under way (not a synchronisation: a head start)
        for amount in range(1, 21):
            started = time.monotonic()
            result = system.dispatch(Deposit("alice", amount), timeout=10)
            assert time.monotonic() - started < 5, f"command {amount} waited behind the flood"
            assert result.version == amount + 1
        counts = [int(f.communicate(timeout=30)[0] or 0) for f in flooders]
    finally:
        for flooder in flooders:
            with contextlib.suppress(ProcessLookupError):
                flooder.kill()
            flooder.wait()
    assert sum(counts) > 1000, counts  # it was a flood
    log = log_of(daemon)[before:]
    assert log.count("refused") <= 4 * _security.RefusalLog("x").burst, log[-2000:]
    assert len(log) < 20_000


def test_a_port_whose_connection_queue_is_full_is_in_use_not_free() -> None:
    """Under a flood of connections the daemon's port stops completing new ones in time: the
    CLI must not take that for "no daemon runs here" (nor `start` for a free port)."""
    with socket.socket() as listener, contextlib.ExitStack() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepts: one connection fills its queue
        port = listener.getsockname()[1]
        for _ in range(3):
            sock = held.enter_context(socket.socket())
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        assert _thespian.port_in_use(port)
    assert not _thespian.port_in_use(port)  # closed: refused at once


@pytest.mark.parametrize("base", ["multiproc"])
def test_an_application_attaches_by_port_with_the_secret_of_its_home(
    start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = start_app(make_app())
    port = system.actor_system.capabilities["Admin Port"]
    attached = make_app().attach(port)
    assert attached.dispatch(Add("by-port", 2)).version == 1
    monkeypatch.setenv("BACKSTAGE_SECRET", "cd" * 32)  # another secret: refused, clearly
    with pytest.raises(_thespian.AuthenticationRefused):
        make_app().attach(port)


# -- files and directories another user of the host could plant (helper-24's review) -----------

PLANT_PACKAGE = r"""
import os, sys
os.makedirs(os.path.join(sys.argv[1], "examples"))
with open(os.path.join(sys.argv[1], "examples", "__init__.py"), "w") as f:
    f.write("import os\nopen(%r, 'w').write(str(os.getuid()))\n" % sys.argv[2])
"""


@as_nobody
def test_a_verb_run_from_a_shared_directory_imports_nothing_planted_there(
    tmp_path: Path, shared_tmp: Path
) -> None:
    marker = shared_tmp / "ran-as"
    with running(tmp_path / "home") as backstage:
        planted = nobody(PLANT_PACKAGE, shared_tmp, marker)
        assert planted.returncode == 0, planted.stderr
        # The owner looks at the daemon from the shared directory (`cd /tmp; backstage status`).
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("backstage")),
                "status",
                "--port",
                str(backstage.port),
            ],
            cwd=shared_tmp,
            env=backstage.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), f"a module planted by nobody ran as uid {marker.read_text()}"


@as_nobody
def test_a_link_planted_at_a_databases_owner_lock_is_not_followed(
    shared_tmp: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    database = shared_tmp / "bank.db"
    planted = nobody(
        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", victim, f"{database}.owner"
    )
    assert planted.returncode == 0, planted.stderr
    with pytest.raises(StorageError):
        OwnerLock(str(database), {"app": "bank"}).release()
    assert victim.read_text() == "root's\n"


@as_nobody
def test_a_lock_file_of_another_user_beside_a_database_is_refused(shared_tmp: Path) -> None:
    database = shared_tmp / "bank.db"
    for name in ("owner", "lock"):
        planted = nobody(
            "import os, sys; os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o666))",
            f"{database}.{name}",
        )
        assert planted.returncode == 0, planted.stderr
    with pytest.raises(StorageError, match="another user"):
        OwnerLock(str(database), {"app": "bank"})
    with pytest.raises(PermissionError, match="another user"):
        Turns(str(database)).open()


@as_nobody
def test_a_home_made_by_another_user_is_refused(
    shared_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file planted in it would name the session to kill and the pid file to remove."""
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    home = shared_tmp / "home"
    state = (
        '{"app": "examples.bank:app", "name": "bank", "port": 19799, "host": "127.0.0.1",'
        f' "admin_pid": 999999, "sid": {sleeper.pid}, "pid_file": "{victim}"}}'
    )
    planted = nobody(
        "import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777);"
        " open(os.path.join(sys.argv[1], 'daemon-19799.json'), 'w').write(sys.argv[2])",
        home,
        state,
    )
    assert planted.returncode == 0, planted.stderr
    try:
        monkeypatch.setenv("BACKSTAGE_HOME", str(home))
        with pytest.raises(BackstageError, match="must belong to this user"):
            _security.home()
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("backstage")),
                "stop",
                "--force",
                "--port",
                "19799",
            ],
            env={**os.environ, "BACKSTAGE_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and "must belong to this user" in result.stderr
        assert sleeper.poll() is None, f"stop killed another session: {result.stdout}"
        assert victim.exists(), "stop removed a file named by another user"
    finally:
        sleeper.kill()
        sleeper.wait()
