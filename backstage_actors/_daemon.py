"""Starting, finding and stopping a Backstage daemon: an application on multiprocTCPBase.

``backstage start`` creates the actor system itself: Thespian's admin double-forks and outlives
the command, and so does every actor process. They all share the session the admin opens, so
whatever a crash leaves behind (even after a SIGKILL of the admin) is found by that session id
and ended by pid. A small state file per port records the app, the database, the admin's pid
and the session.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import _security, _thespian
from .application import Application
from .errors import BackstageError, StorageError, SystemNotRunning
from .router import Router
from .store import EventStore, normalise, redact

__all__ = [
    "DEFAULT_PORT",
    "AdminNotAnswering",
    "DaemonState",
    "daemon_processes",
    "home",
    "kill_leftovers",
    "load_app",
    "read_state",
]

DEFAULT_PORT = 1900
LOCAL = "127.0.0.1"  # the default --host: a daemon's files are named by its port alone there


def home() -> Path:
    """Where state, pid, log and secret files live: ``$BACKSTAGE_HOME`` or ``~/.backstage``."""
    return _security.home()


def default_port() -> int:
    return int(os.environ.get("BACKSTAGE_PORT", DEFAULT_PORT))


class DaemonState(dict[str, Any]):
    """The state file's content: app, app_directory (where it was started: its modules import
    from there), database, port, host, admin_pid, log_file, pid_file."""


def file_stem(port: int, host: str = LOCAL) -> str:
    """``daemon-PORT`` on 127.0.0.1, ``daemon-HOST-PORT`` elsewhere: several daemons of one
    machine (a cluster's members on 127.0.0.2-4, say) may share a port on different addresses."""
    return f"daemon-{port}" if host in (LOCAL, "localhost") else f"daemon-{host}-{port}"


def state_path(port: int, host: str = LOCAL) -> Path:
    return home() / f"{file_stem(port, host)}.json"


WILDCARDS = ("0.0.0.0", "::")  # a daemon bound there answers on 127.0.0.1 too


def read_state(port: int, host: str = LOCAL) -> DaemonState | None:
    """The state of the daemon on ``host:port`` (on 127.0.0.1: or one bound to every address)."""
    for where in (host, *(WILDCARDS if host in (LOCAL, "localhost") else ())):
        try:
            return DaemonState(json.loads(state_path(port, where).read_text()))
        except (OSError, ValueError):
            continue
    return None


def write_state(port: int, state: dict[str, Any], host: str = LOCAL) -> None:
    path = state_path(port, host)
    with os.fdopen(_security.open_private(path, os.O_WRONLY | os.O_TRUNC), "w") as file:
        file.write(json.dumps(state, indent=2))


@contextlib.contextmanager
def start_lock(port: int, host: str = LOCAL, timeout: float = 60.0) -> Any:
    """Held while one ``backstage start`` of ``host:port`` runs: a second start of the same
    daemon waits for the first, then finds it running (or crashed) in the state file, instead
    of racing it for the port and cleaning up "leftovers" that are the first one's processes.
    A POSIX record lock: the daemon's processes, forked meanwhile, do not inherit it."""
    fd = _security.open_private(home() / f"{file_stem(port, host)}.start", os.O_RDWR)
    _starter_fds.add(fd)  # (the daemon's processes, forked meanwhile, close it)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
            if time.monotonic() > deadline:
                raise SystemNotRunning(
                    f"another `backstage start` of port {port} is still starting after {timeout}s"
                )
            time.sleep(0.05)
        yield
    finally:
        _starter_fds.discard(fd)
        os.close(fd)


def remove_state(port: int, host: str = LOCAL) -> None:
    state = read_state(port, host)
    with contextlib.suppress(OSError):
        state_path(port, str(state.get("host", host)) if state else host).unlink()
    if state and state.get("pid_file"):
        with contextlib.suppress(OSError):
            Path(state["pid_file"]).unlink()


def add_import_directory(directory: str | None = None) -> str | None:
    """Make ``directory`` (default: the current one) importable first, like ``python -m``, unless
    everyone can write to it, or it is another user's: a module planted there would run as
    this user. The directory refused, if it was."""
    directory = os.path.realpath(directory or os.getcwd())
    if directory in sys.path:
        return None
    if not _security.safe_import_directory(directory):
        return directory
    sys.path.insert(0, directory)
    return None


def load_app(spec: str, directory: str | None = None) -> Any:
    """The Application named by ``module:attribute``, importable from ``directory`` (the one the
    daemon was started from; default the current one) if nobody else can write to it."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BackstageError(f"APP must look like module:attribute, not {spec!r}")
    refused = add_import_directory(directory)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, a syntax error, an exception while importing
        why = (
            f" ({refused} is not searched: another user could plant modules there)"
            if refused is not None and isinstance(exc, ImportError)
            else ""
        )
        raise BackstageError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{why}"
        ) from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Application):
        raise BackstageError(f"{spec} is not a backstage Application (got {type(app).__name__})")
    return app


def daemon_processes(port: int, host: str = LOCAL) -> list[int]:
    """Pids of the live processes of the daemon on ``port``.

    Thespian's admin starts a new session (``setsid``) and every actor process is forked inside
    it, so the session id recorded at start finds them all, orphans of a killed admin included.
    """
    return _session_processes(read_state(port, host))


def _session_processes(state: DaemonState | dict[str, Any] | None) -> list[int]:
    """The live processes of the daemon of ``state`` (see :func:`daemon_processes`)."""
    sid = state.get("sid") if state else None
    if not sid or not _same_boot(state):
        return []  # (after a reboot nothing of it is left, and its session id means nothing)
    # A session id is the pid of its first process, which Thespian's admin leaves at once (it
    # calls setsid(), forks and exits): alive, that pid was handed out again, to a process
    # that now leads a session of its own (a login, a tmux server): none of it is the daemon's.
    leader = _stat(int(sid))
    if leader is not None and leader[0] != "Z":
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return sorted(found)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _same_boot(state: DaemonState | dict[str, Any] | None) -> bool:
    recorded = state.get("boot_id") if state else None
    return recorded is None or recorded == _boot_id()


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, the process itself."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def kill_leftovers(port: int, timeout: float = 5.0, host: str = LOCAL) -> list[int]:
    """SIGTERM, then SIGKILL, every process of this daemon; returns the pids it found.

    The processes are listed again while they die: a supervisor that outlives its child for a
    moment forks a replacement, which must not survive as an orphan.
    """
    return _end_processes(lambda: daemon_processes(port, host), timeout)


def _end_processes(listed: Any, timeout: float) -> list[int]:
    """SIGTERM, then SIGKILL, every process ``listed()`` names, listing them again meanwhile."""
    found: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signalled: set[int] = set()
        deadline = time.monotonic() + timeout / 2
        while (pids := listed()) and time.monotonic() < deadline:
            for pid in pids:
                if pid not in signalled:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                    signalled.add(pid)
                if pid not in found:
                    found.append(pid)
            time.sleep(0.05)
        if not listed():
            break
    return sorted(found)


# Descriptors of this command that the daemon must not hold, closed in every process forked
# while they are open: its own stdout and stderr, kept aside while the actor system forks (whoever
# reads this command's output, a pipe, `$(backstage start ...)`, would wait forever), the log
# and /dev/null it points fds 0-2 at, the start lock's file. A fork keeps every fd open
# (close-on-exec does not apply), and the daemon's processes would hold them for their lives.
_starter_fds: set[int] = set()


def _close_starter_fds() -> None:
    for fd in _starter_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _starter_fds.clear()


os.register_at_fork(after_in_child=_close_starter_fds)


@contextlib.contextmanager
def redirected_output(log_file: str) -> Any:
    """Point fds 1 and 2 at ``log_file`` and fd 0 at /dev/null while the actor system forks: its
    processes outlive this command and must not hold on to its terminal or pipes."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(0), os.dup(1), os.dup(2)
    _starter_fds.update(saved)
    log = _security.open_private(log_file)  # never through a symlink
    _starter_fds.add(log)
    null = os.open(os.devnull, os.O_RDONLY)
    _starter_fds.add(null)
    try:
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        _starter_fds.difference_update((*saved, log, null))
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)
        os.close(log)
        os.close(null)


def log_defs(log_file: str) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": log_file, "formatter": "line"}
        },
        "root": {"handlers": ["file"], "level": "INFO"},
    }


def start_daemon(
    app_spec: str,
    port: int,
    database: str | None,
    host: str = "127.0.0.1",
    log_file: str | None = None,
    pid_file: str | None = None,
    timeout: float = 60.0,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    join: str | None = None,
    roles: tuple[str, ...] = ("aggregates", "subscribers"),
    shards: int | None = None,
) -> DaemonState:
    """Start ``app_spec`` as a daemon on ``host:port``; returns its state once the tree is up.
    With ``join`` (``HOST:PORT`` of the leader's admin) it is a member of that cluster;
    ``shards`` overrides the application's number of shard processes."""
    app = load_app(app_spec)
    if shards is not None:
        app.shards = shards
    database = normalise(database or app.database)
    log_file = os.path.abspath(log_file or home() / f"{file_stem(port, host)}.log")
    pid_file = os.path.abspath(pid_file or home() / f"{file_stem(port, host)}.pid")
    previous = os.umask(0o077)  # every file of the daemon's processes is its owner's alone
    try:
        _check_database(database)  # (after the umask: this may create the database)
        with redirected_output(log_file):
            system = app.start(
                base="multiproc",
                port=port,
                database=database,
                host=host,
                log_defs=log_defs(log_file),
                timeout=timeout,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                **({"join": join, "roles": roles} if join else {}),
            )
    finally:
        os.umask(previous)
    root_pid = int(system.tree()["pid"])
    admin_pid = _ppid(root_pid)
    state = DaemonState(
        app=app_spec,
        app_directory=os.path.realpath(os.getcwd()),
        name=app.name,
        database=database,
        port=port,
        host=host,
        admin_pid=admin_pid,
        admin_started=_start_time(admin_pid),  # (pids are handed out again)
        root_pid=root_pid,
        root_started=_start_time(root_pid),
        boot_id=_boot_id(),
        sid=os.getsid(root_pid),
        log_file=log_file,
        pid_file=pid_file,
        started_at=time.time(),
        join=join,
        roles=list(roles) if join else None,
    )
    try:
        write_state(port, state, host)
        with os.fdopen(_security.open_private(pid_file, os.O_WRONLY | os.O_TRUNC), "w") as file:
            file.write(f"{state['admin_pid']}\n")
    except OSError as exc:
        # Without its state file no verb finds the daemon, and nothing would ever stop it:
        # stop it now, by its session, and say why (a full disk, say).
        _end_processes(lambda: _session_processes(state), 5.0)
        with contextlib.suppress(OSError):
            state_path(port, host).unlink()
        raise StorageError(
            f"cannot write the daemon's state in {home()}: {exc}; the daemon was stopped"
        ) from None
    return state


def _check_database(database: str) -> None:
    try:
        EventStore(database).close()
    except BackstageError as exc:
        raise StorageError(f"cannot open the database {redact(database)}: {exc}") from None


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else -1


def admin_alive(state: DaemonState | None) -> bool:
    """Whether the daemon's admin process is alive (its port may outlive it in an orphan)."""
    pid = state.get("admin_pid") if state else None
    if not pid:
        return False
    fields = _stat(int(pid))
    if fields is None or fields[0] == "Z" or not _same_boot(state):
        return False
    started = state.get("admin_started") if state else None
    return started is None or _start_time(int(pid)) == started  # not another process's pid


def root_alive(state: DaemonState | None) -> bool:
    """Whether the application's root supervisor lives (nothing restarts it: when it gives up
    or is killed, the admin lives on with nothing in it). True when the state does not say."""
    pid = state.get("root_pid") if state else None
    if not pid:
        return True
    fields = _stat(int(pid))
    if fields is None or fields[0] == "Z":
        return False
    started = state.get("root_started") if state else None
    return started is None or _start_time(int(pid)) == started


def running(state: DaemonState | None) -> bool:
    """Whether the daemon of ``state`` runs: its admin and its application's root."""
    return admin_alive(state) and root_alive(state)


class AdminNotAnswering(BackstageError):
    """The daemon's admin accepts connections but does not answer (stopped, or overloaded):
    its processes run, and nothing can be asked of them through it (``stop`` kills them)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; `backstage stop` ends its processes")
        self.reason = reason


def _unanswered(where: str, state: DaemonState | None, patience: float) -> str:
    """Why nothing can be asked of the daemon on ``where`` (its admin said nothing in time)."""
    admin = int(state["admin_pid"]) if state and state.get("admin_pid") else None
    why = "it is stopped by a signal: SIGCONT resumes it" if admin and frozen(admin) else ""
    return (
        f"the daemon on {where} does not answer: its admin"
        + (f" (pid {admin})" if admin else "")
        + f" accepts connections but said nothing within {patience:.1f}s"
        + f" ({why or 'it is stopped or overloaded'})"
    )


def frozen(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (SIGSTOP, SIGTSTP: ``T`` in its stat)."""
    fields = _stat(pid)
    return fields is not None and fields[0] in ("T", "t")


def attach(
    port: int, need_app: bool = True, host: str = LOCAL, patience: float = 5.0
) -> tuple[Any, Any]:
    """``(app, running_system)`` for the daemon on ``host:port``; SystemNotRunning if none,
    :class:`AdminNotAnswering` if its admin says nothing within ``patience`` seconds.

    Without ``need_app`` (verbs that only look inside or stop: tree, status, stop) the app's
    module need not import here: a stand-in with the daemon's name and database serves. A
    daemon this machine has no state file for (another host's) is asked who it is: Thespian's
    status of its admin names the application's root; its module must then import here for
    the verbs that need it (``send``), from the state of a local daemon of the same name.
    """
    where = f"port {port}" if host in (LOCAL, "localhost") else f"{host}:{port}"
    state = read_state(port, host)
    # A state file whose admin is gone is a crash, whether or not an orphan still holds the port.
    if state is not None and not admin_alive(state):
        raise SystemNotRunning(
            f"the daemon on {where} crashed (its admin, pid {state['admin_pid']}, is gone); "
            "`backstage start` cleans up and starts it again"
        )
    if state is not None and not root_alive(state):
        raise SystemNotRunning(
            f"the application on {where} stopped: its root supervisor (pid {state['root_pid']}) "
            f"is gone (it gave up after too many crashes, or was killed; see "
            f"{state.get('log_file')}); `backstage start` cleans up and starts it again"
        )
    if not _thespian.port_in_use(port, host) or (state is None and host in (LOCAL, "localhost")):
        raise SystemNotRunning(
            f"no backstage daemon runs on {where} (start one with `backstage start APP`)"
        )
    try:
        actor_system = _thespian.attach(
            port, state.get("host", host) if state else host, patience=patience
        )
    except _thespian.NotAnswering:
        raise AdminNotAnswering(_unanswered(where, state, patience)) from None
    except Exception as exc:  # nothing there, or a system with another secret: it says which
        raise SystemNotRunning(f"cannot attach to the daemon on {where}: {exc}") from None
    # (On an error the handle is dropped, never shut down: that would stop the daemon.)
    state = state or described(actor_system, where)
    try:
        if not state["app"]:
            raise BackstageError(
                f"{where} runs {state['name']}, and no daemon of this machine says which "
                "module holds it"
            )
        app = load_app(state["app"], state.get("app_directory"))
    except BackstageError as exc:
        if need_app:
            raise BackstageError(f"{exc} (run this where the daemon's app imports)") from None
        app = stand_in(state)
    database = state.get("database")
    return app, app.attach(actor_system, database=database, port=port, host=host)


def described(actor_system: Any, where: str) -> DaemonState:
    """What a daemon without a local state file runs, from its admin's status: the application
    (the root's global name ``backstage:NAME``); its module from a local daemon of that name."""
    status = _thespian.admin_status(actor_system)
    names = [n for n in (status.globalActors if status else {}) if n.startswith("backstage:")]
    if not names:
        raise SystemNotRunning(f"no backstage application runs on {where}")
    name = names[0].partition(":")[2]
    module = next((s["app"] for s in local_states() if s.get("name") == name and s.get("app")), "")
    return DaemonState(app=module, name=name, database=None)


def local_states() -> list[DaemonState]:
    """The state of every daemon this machine's ``BACKSTAGE_HOME`` knows."""
    found = []
    for path in sorted(home().glob("daemon-*.json")):
        try:
            found.append(DaemonState(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def stand_in(state: DaemonState) -> Any:
    """An application with the daemon's name and database and no routes: enough to find its
    tree, read its store and stop it from a directory where its module does not import."""
    database = state.get("database") or "backstage.db"  # (attach asks the running store)
    app = Application(str(state["name"]), router=Router(), database=str(database))
    app.stand_in = True  # type: ignore[attr-defined]
    return app
