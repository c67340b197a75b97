"""The daemon's operations under faults, on real daemons of the bank (found by helper-33's
review; each test failed before its fix): two starts at once, stale state files whose ids were
handed out again, a root supervisor that gave up, a full disk at start, Thespian's logger
killed, the router killed under a dispatch_many, a shell and an attached program across a
restart, a strong dispatch with no bus, and a projection killed in its rebuild."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import process_alive, wait_until
from .test_cli import Backstage, attached_bank, finish, session_processes, shut_down

pytestmark = pytest.mark.process


def _kill_session(sid: int | None) -> None:
    if sid:
        for pid in session_processes(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sids(home: Path) -> set[int]:
    sids = set()
    for path in home.glob("daemon-*.json"):
        with contextlib.suppress(OSError, ValueError):
            sids.add(int(json.loads(path.read_text())["sid"]))
    return sids


def test_two_starts_at_once_on_one_home_leave_one_daemon_running(tmp_path: Path) -> None:
    """Two `backstage start` at once on one home and port: one starts, the other is refused,
    and the one that said it runs does run afterwards (the loser must not end it)."""
    for round_ in range(3):
        home = tmp_path / f"home-{round_}"
        home.mkdir(mode=0o700)
        backstage = Backstage(home)
        sids: set[int] = set()
        try:
            processes = [
                backstage.popen("start", "examples.bank:app", "--db", str(home / "bank.db"))
                for _ in range(2)
            ]
            results = [finish(p) for p in processes]
            sids = _sids(home)
            said = [(r.returncode, r.stdout, r.stderr) for r in results]
            assert sorted(r.returncode for r in results)[0] == 0, said
            assert sorted(r.returncode for r in results)[1] != 0, said
            state = backstage.state()
            assert process_alive(int(state["admin_pid"])), f"the daemon said to run is gone: {said}"
            loser = next(r for r in results if r.returncode != 0)
            assert (loser.returncode, "already runs" in loser.stderr) == (3, True), said
            opened = backstage.send("OpenAccount", {"account_id": "ann", "owner": "Ann"})
            assert opened["version"] == 1
        finally:
            shut_down(backstage) if (home / f"daemon-{backstage.port}.json").exists() else None
            for sid in sids:
                _kill_session(sid)


# -- a strong dispatch whose events were stored, when the bus cannot be found -----------------


def test_strong_dispatch_stored_but_bus_gone_says_stored_within_its_timeout(
    tmp_path: Path,
) -> None:
    """The events are stored; the bus is gone (stopping) or the root does not answer: the
    caller must hear "stored, but not processed" (ConsistencyTimeout), not SystemNotRunning
    (which reads as "nothing happened": a retry without a command id deposits twice), and
    within the timeout it gave."""
    import time

    import supervisors
    from backstage_actors.errors import ConsistencyTimeout
    from examples.bank import make_app
    from examples.bank.domain import Deposit, OpenAccount

    from .conftest import thespian_log_defs

    app = make_app(str(tmp_path / "bank.db"))
    system = app.start(base="multiproc", log_defs=thespian_log_defs(str(tmp_path / "a.log")))
    root_pid = int(system.tree()["pid"])
    try:
        system.dispatch(OpenAccount("rvq", "Rvq"), consistency="strong", timeout=30)
        # The root does not answer (SIGSTOP): the answer comes from the shard, the wait must
        # still end within the caller's timeout, saying the events were stored.
        os.kill(root_pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ConsistencyTimeout, match="were stored"):
                system.dispatch(Deposit("rvq", 1), consistency="strong", timeout=1.5)
            assert time.monotonic() - started < 3.5
        finally:
            os.kill(root_pid, signal.SIGCONT)
        # The bus is stopped (as in `backstage stop`, which stops it first).
        with system._endpoint() as endpoint:
            supervisors.terminate_child(endpoint, system.root, "events")
        with pytest.raises(ConsistencyTimeout, match="were stored"):
            system.dispatch(Deposit("rvq", 10), consistency="strong", timeout=5)
        amounts = [e.data.amount for e in list(system.store.read_stream("Account-rvq"))[1:]]
        assert amounts == [1, 10]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(root_pid, signal.SIGCONT)
        system.stop()


# -- a stale state file: its session id now belongs to someone else ----------------------------


def test_start_with_a_stale_state_file_kills_nothing_but_the_daemons(tmp_path: Path) -> None:
    """A crashed daemon (or a reboot) leaves its state file; the session id and admin pid
    recorded there are pids of processes long gone, which Linux hands out again: a new login,
    a tmux server, any daemon that calls setsid() gets that session id. `backstage start` must
    neither SIGKILL that unrelated session as "leftovers of a crashed daemon" nor take it for
    a daemon that "already runs"."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    started = backstage.start()
    assert started.returncode == 0, started.stderr
    state = backstage.state()
    # The daemon dies at once, every process of it (a power cut, an OOM kill of the session).
    for pid in session_processes(int(state["sid"])):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not session_processes(int(state["sid"])), what="the daemon's end")
    # Someone else now has a session whose id is the one the stale state file records.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        # (its pid may be the recorded admin's too: that does not make it the daemon's admin)
        stale = dict(state, sid=bystander.pid, admin_pid=bystander.pid)
        (home / f"daemon-{backstage.port}.json").write_text(json.dumps(stale))

        restarted = backstage.start()

        assert restarted.returncode == 0, restarted.stderr
        assert bystander.poll() is None, "backstage start killed an unrelated session"
        assert "leftover" not in restarted.stderr, restarted.stderr
    finally:
        bystander.kill()
        bystander.wait()
        shut_down(backstage)


@contextlib.contextmanager
def _bank_daemon(tmp_path: Path, account: str) -> Iterator[Backstage]:
    """A bank daemon in a home of its own, ``account`` opened; stopped (whatever is left of
    it) at the end."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    try:
        started = backstage.start()
        assert started.returncode == 0, started.stderr
        backstage.send("OpenAccount", {"account_id": account, "owner": account.upper()})
        yield backstage
    finally:
        shut_down(backstage)


# -- the application's root supervisor is gone, its admin is not ---------------------------------


def test_a_daemon_whose_root_supervisor_died_is_reported_and_started_again(
    tmp_path: Path,
) -> None:
    """The root supervisor ends (SIGKILL here; it also ends when it gives up after more than
    `restart_intensity` crashes of the store, the router or the bus) while Thespian's admin
    lives on holding the port. Nothing restarts the application: the verbs must say it
    stopped, at once, and `backstage start` must clean up and start it again, not refuse with
    "already runs" (before: every verb waited 6 s for "root supervisor does not answer", and
    only a `backstage stop` that waited out its whole timeout got the user out)."""
    import time

    with _bank_daemon(tmp_path, "rvr") as backstage:
        root = int(backstage.json("tree")["pid"])
        admin = int(backstage.state()["admin_pid"])
        os.kill(root, signal.SIGKILL)
        wait_until(lambda: not process_alive(root), what="the root's end")

        began = time.monotonic()
        status = backstage.run("status")
        assert status.returncode == 3, status
        assert "root supervisor" in status.stderr and "is gone" in status.stderr, status.stderr
        assert time.monotonic() - began < 5.0

        again = backstage.start()

        assert again.returncode == 0, again.stderr
        assert not process_alive(admin)
        deposited = backstage.send("Deposit", {"account_id": "rvr", "amount": 7}, "--strong")
        assert deposited["version"] == 2
        # The same again, ended by `backstage stop`: it ends what is left, at once.
        root, admin = int(backstage.json("tree")["pid"]), int(backstage.state()["admin_pid"])
        os.kill(root, signal.SIGKILL)
        wait_until(lambda: not process_alive(root), what="the root's end")
        began = time.monotonic()
        stopped = backstage.run("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert time.monotonic() - began < 10.0
        wait_until(lambda: not process_alive(admin), timeout=10, what="the admin's end")


# -- a full disk under BACKSTAGE_HOME while `backstage start` writes its state -------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Any:
    import subprocess

    path.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def _fill(directory: Path) -> Path:
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return ballast


def _sessions_of(database: Path) -> set[int]:
    """Sessions of live processes whose command line names ``database`` (a daemon's)."""
    from .test_cli import session_of

    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                named = str(database).encode() in (entry / "cmdline").read_bytes()
                if named and process_alive(int(entry.name)):
                    sid = session_of(int(entry.name))
                    if sid:
                        found.add(sid)
    return found


def test_start_that_cannot_write_its_state_file_leaves_no_daemon_behind(tmp_path: Path) -> None:
    """BACKSTAGE_HOME is full: `backstage start` gets the tree up, then cannot write the state
    file. It must fail clearly and stop what it started: before, the daemon lived on with an
    empty state file, unreachable by every verb ("no backstage daemon runs on port N"), its port
    "in use by another program" for the next start, and its database locked."""
    database = tmp_path / "data" / "bank.db"
    database.parent.mkdir(mode=0o700)
    with _tmpfs(tmp_path / "home", "1m") as home:
        backstage = Backstage(home)
        # What a home holds before a start: the secret, Thespian's log.
        from unittest import mock

        from backstage_actors import _security

        with mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(home)}):
            _security.secret()
        (home / "thespian.log").touch()
        ballast = _fill(home)
        try:
            failed = backstage.run("start", "examples.bank:app", "--db", str(database))
            assert failed.returncode != 0
            assert "No space left on device" in failed.stderr, failed.stderr
            wait_until(lambda: not _sessions_of(database), timeout=15, what="no daemon left")
            ballast.unlink()
            started = backstage.run("start", "examples.bank:app", "--db", str(database))
            assert started.returncode == 0, started.stderr
            assert (
                backstage.send("OpenAccount", {"account_id": "rvf", "owner": "F"})["version"] == 1
            )
        finally:
            with contextlib.suppress(Exception):
                shut_down(backstage)
            for sid in _sessions_of(database):
                _kill_session(sid)


# -- Thespian's logger process of a daemon is killed ---------------------------------------------


def test_sigkill_of_the_daemons_logger_process_does_not_take_the_daemon_down(
    tmp_path: Path,
) -> None:
    """Thespian's admin restarts its logger process when it dies, but reads `self.logDefs`
    where it stored `self.logdefs`: the AttributeError ended the admin, and with it (every
    process dies with its admin) the whole daemon. One SIGKILL of a process that only writes
    log lines must not stop the application."""
    with _bank_daemon(tmp_path, "rvl") as backstage:
        admin = int(backstage.state()["admin_pid"])
        actors = {int(n["pid"]) for n in _walk(backstage.json("tree")) if n.get("pid")}
        children = [
            pid for pid in backstage.processes() if _ppid(pid) == admin and pid not in actors
        ]
        assert len(children) == 1, children  # the logger: the admin's child that is no actor
        logger = children[0]
        os.kill(logger, signal.SIGKILL)
        wait_until(lambda: not process_alive(logger), what="the logger's end")
        # A new logger is started; the daemon serves on, its log still written.
        wait_until(
            lambda: [p for p in backstage.processes() if _ppid(p) == admin and p not in actors],
            timeout=15,
            what="a new logger",
        )
        assert process_alive(admin), "the admin died with its logger"
        deposited = backstage.send("Deposit", {"account_id": "rvl", "amount": 3}, "--strong")
        assert deposited["version"] == 2
        assert backstage.run("status").returncode == 0


def _walk(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("children", []):
        yield from _walk(child)


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# -- dispatch_many (and `send --file`) while the router is killed -------------------------------


def test_dispatch_many_while_the_router_is_killed_gives_answers_not_a_thespian_error(
    tmp_path: Path,
) -> None:
    """A `dispatch_many` of many batches is being sent through the router when the router is
    SIGKILLed. Thespian's `tell` to the dead router raised `ActorSystemFailure: Error sending
    to ...: -SENDSTS_DEADTARGET` out of `dispatch_many`: not a BackstageError, every answer of
    the call lost, and `backstage send --file` died with a traceback half-way through its file
    (no report of what was stored). Each command must get an answer: its result, or a
    DispatchTimeout; the named ones sent again are stored once."""
    import sqlite3
    import threading

    from backstage_actors.command import DispatchResult
    from backstage_actors.errors import DispatchTimeout
    from examples.bank import make_app
    from examples.bank.domain import Deposit, OpenAccount

    from .conftest import thespian_log_defs

    database = tmp_path / "bank.db"
    app = make_app(str(database))
    system = app.start(base="multiproc", log_defs=thespian_log_defs(str(tmp_path / "a.log")))
    try:
        system.dispatch(OpenAccount("rvm", "M"), timeout=30)
        router = next(c for c in system.tree()["children"] if c["name"] == "router")
        count = 20_000
        commands = [Deposit("rvm", 1) for _ in range(count)]
        ids = [{"command_id": f"rvm-{n}"} for n in range(count)]

        def stored() -> int:
            with contextlib.closing(sqlite3.connect(database)) as db:
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])

        def killer() -> None:
            wait_until(lambda: stored() >= 1_000, 60, what="a thousand deposits stored")
            os.kill(int(router["pid"]), signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            results = system.dispatch_many(commands, metadata=ids, timeout=10, batch_size=100)
        finally:
            thread.join()
        assert all(isinstance(r, (DispatchResult, DispatchTimeout)) for r in results)
        # Sending the unanswered ones again (named) settles them; nothing is stored twice.
        again = [n for n, r in enumerate(results) if not isinstance(r, DispatchResult)]
        settled = system.dispatch_many(
            [commands[n] for n in again], metadata=[ids[n] for n in again], timeout=60
        )
        assert all(isinstance(r, DispatchResult) for r in settled)
        with contextlib.closing(sqlite3.connect(database)) as db:
            named = [
                json.loads(m).get("command_id")
                for (m,) in db.execute(
                    "SELECT metadata FROM events WHERE type = 'MoneyDeposited'"
                ).fetchall()
            ]
        assert sorted(named) == sorted(i["command_id"] for i in ids)
    finally:
        system.stop()


# -- a shell (one Session) outlives a restart of its daemon --------------------------------------


def test_a_shell_keeps_working_after_its_daemon_was_restarted(tmp_path: Path) -> None:
    """`backstage shell` keeps the daemon it attached to for its whole session. After a
    `backstage stop` and `backstage start` (another terminal, a deploy), every `send` of the
    open shell timed out ("may or may not have been executed": it was not) and every `status`
    said the root does not answer, until a `tree` happened to drop the stale handle. The
    shell must talk to the daemon that runs now."""
    from unittest import mock

    from backstage_actors.cli import Session, run

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    session = Session()
    port = str(backstage.port)
    try:
        started = backstage.start()
        assert started.returncode == 0, started.stderr
        with mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(home)}):
            opened = ["send", "OpenAccount", '{"account_id": "rvs", "owner": "S"}']
            assert run([*opened, "--port", port], session) == 0
            assert backstage.run("stop").returncode == 0
            restarted = backstage.start()
            assert restarted.returncode == 0, restarted.stderr

            deposit = ["send", "Deposit", '{"account_id": "rvs", "amount": 2}', "--timeout", "5"]
            assert run([*deposit, "--port", port], session) == 0
            assert run(["status", "--port", port], session) == 0
    finally:
        for _, system in session.attached.values():
            with contextlib.suppress(Exception):
                system.stop()
        shut_down(backstage)


# -- a program attached to a daemon that is restarted ------------------------------------------


def test_an_attached_program_recovers_its_strong_dispatches_after_a_daemon_restart(
    tmp_path: Path,
) -> None:
    """A program (a web app: `examples.bank_http --attach`) attached to a daemon that is
    stopped and started again (a deploy) keeps the old root supervisor's address: plain
    dispatches find the new router by the dead letters, but every strong dispatch (and every
    `tree()`) failed from then on, until the program itself was restarted. The handle must
    find the application's new root."""
    from backstage_actors.errors import BackstageError
    from examples.bank.domain import Deposit, OpenAccount

    with attached_bank(tmp_path) as (backstage, system):
        system.dispatch(OpenAccount("rvt", "T"), consistency="strong", timeout=30)
        assert backstage.run("stop").returncode == 0
        assert backstage.start().returncode == 0

        outcomes: list[Any] = []
        for n in range(3):  # (the first may time out: the old root is asked first)
            try:
                result = system.dispatch(
                    Deposit("rvt", 1),
                    consistency="strong",
                    timeout=5,
                    metadata={"command_id": f"rvt-{n}"},
                )
                outcomes.append(result.version)
            except BackstageError as exc:
                outcomes.append(type(exc).__name__)
        assert isinstance(outcomes[-1], int), outcomes
        assert system.tree()["status"] == "running"


# -- a projection killed in the middle of its rebuild --------------------------------------------


def test_rebuild_finishes_when_the_projection_is_killed_in_the_middle(tmp_path: Path) -> None:
    """`backstage rebuild` (RunningSystem.rebuild) waits for the projection's progress; the
    projection's process is SIGKILLed half-way. Its next instance goes on from the checkpoint
    the rebuild reset, and catches up; but nobody told the caller, who waited out its whole
    timeout (600 s by default, the CLI has no other) for a "finished" that never came. The
    caller must get its answer once the rebuild is done."""
    import time

    from backstage_actors.command import DispatchResult
    from examples.bank import make_app
    from examples.bank.domain import Deposit, OpenAccount

    from .conftest import thespian_log_defs

    app = make_app(str(tmp_path / "bank.db"))
    system = app.start(base="multiproc", log_defs=thespian_log_defs(str(tmp_path / "a.log")))
    try:
        system.dispatch(OpenAccount("rvb", "B"), timeout=30)
        results = system.dispatch_many([Deposit("rvb", 1) for _ in range(6_000)], timeout=120)
        assert all(isinstance(r, DispatchResult) for r in results)
        last = system.settle(timeout=60)

        def balances_pid() -> int:
            return next(int(n["pid"]) for n in _walk(system.tree()) if n.get("name") == "balances")

        victim = balances_pid()
        killed: list[int] = []

        def progress(done: int, total: int) -> None:
            if not killed and 0 < done < total:
                os.kill(victim, signal.SIGKILL)
                killed.append(done)

        began = time.monotonic()
        count = system.rebuild("balances", progress=progress, timeout=60)

        assert killed, "the rebuild ended before it could be interrupted"
        assert count == last
        assert time.monotonic() - began < 30
        assert balances_pid() != victim
        with contextlib.closing(__import__("sqlite3").connect(tmp_path / "bank.db")) as db:
            assert db.execute("SELECT balance FROM balances").fetchall() == [(6_000,)]
    finally:
        system.stop()
