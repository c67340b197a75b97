"""The package's public face: every name the README uses comes from ``backstage_actors`` itself,
``given`` works without pytest and without the runtime, and every public name says when to use it.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import backstage_actors
from backstage_actors import client, errors, testing

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# The seed's table: what an application is written with.
SEED = [
    "Aggregate",
    "Router",
    "Application",
    "EventHandler",
    "Projection",
    "ProcessManager",
    "Retry",
    "SKIP",
    "PARK",
    "STOP",
    "Middleware",
    "Metadata",
    "EventStore",
    "RecordedEvent",
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "RunningSystem",
    "BackstageError",
    "CommandRejected",
    "UnhandledCommand",
    "UnregisteredCommand",
    "WrongExpectedVersion",
    "DispatchTimeout",
    "ConsistencyTimeout",
    "SerializationError",
]


def test_the_seed_table_is_exported_from_the_package() -> None:
    missing = [name for name in SEED if name not in backstage_actors.__all__]
    assert missing == []
    for name in backstage_actors.__all__:
        assert getattr(backstage_actors, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from backstage_actors import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(backstage_actors.__all__)


def readme_imports() -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from backstage_actors... import`` in the README's code."""
    found = []
    for module, names in re.findall(r"from (backstage_actors[\w.]*) import ([^\n]+)", README):
        found.append((module, [n.strip() for n in names.strip("()").split(",") if n.strip()]))
    return found


def test_the_readme_imports_only_from_the_package_and_its_testing_module() -> None:
    imports = readme_imports()
    assert imports, "the README shows no imports"
    for module, names in imports:
        assert module in ("backstage_actors", "backstage_actors.testing"), (module, names)
        if module == "backstage_actors":
            assert set(names) <= set(backstage_actors.__all__), names


def test_errors_module_exports_unhandled_command() -> None:
    assert issubclass(errors.UnhandledCommand, errors.BackstageError)
    assert "UnhandledCommand" in errors.__all__


def test_running_system_lives_in_a_public_documented_module() -> None:
    assert backstage_actors.RunningSystem is client.RunningSystem
    assert client.RunningSystem.__module__ == "backstage_actors.client"
    assert client.__doc__ and "RunningSystem" in client.__doc__
    assert "RunningSystem" in client.__all__


def undocumented(objects: dict[str, object]) -> list[str]:
    missing = []
    for name, obj in objects.items():
        if not inspect.isclass(obj) and not inspect.isfunction(obj):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                function = member.fget if isinstance(member, property) else member
                if isinstance(function, (staticmethod, classmethod)):
                    function = function.__func__
                if inspect.isfunction(function) and not (function.__doc__ or "").strip():
                    if attr == "__init__" and (obj.__doc__ or "").strip():
                        continue  # the class's docstring says how to make one
                    missing.append(f"{name}.{attr}")
    return missing


def test_every_public_class_and_method_has_a_docstring() -> None:
    # The event store and its records are reworked on their own branch (issue 18), documented there.
    store = {"EventStore", "RecordedEvent", "Snapshot"}
    public = {n: getattr(backstage_actors, n) for n in backstage_actors.__all__ if n not in store}
    public.update({f"testing.{n}": getattr(testing, n) for n in testing.__all__})
    assert undocumented(public) == []


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter where ``import pytest`` fails, as where it is not installed."""
    prelude = "import sys\nsys.modules['pytest'] = None  # import pytest: ImportError\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_given_works_without_pytest() -> None:
    result = run_isolated(
        """
        import attrs
        from backstage_actors import Aggregate
        from backstage_actors.testing import given

        @attrs.frozen
        class Ring:
            bell_id: str

        @attrs.frozen
        class Rung:
            bell_id: str

        class Bell(Aggregate):
            def __init__(self):
                self.rung = False

            def execute(self, command):
                if self.rung:
                    raise ValueError("already rung")
                return Rung(command.bell_id)

            def apply(self, event):
                self.rung = True

        given([], aggregate=Bell).when(Ring("b")).then(Rung("b"))
        given([Rung("b")], aggregate=Bell).when(Ring("b")).then_raises(ValueError, "already")
        try:
            given([], aggregate=Bell).when(Ring("b")).then([])
        except AssertionError as exc:
            print("caught:", exc)
        import pytest  # the prelude really hid it
        """
    )
    assert "caught: Ring produced [Rung(bell_id='b')], expected []" in result.stdout, result.stderr
    assert result.stderr.strip().endswith(
        "ModuleNotFoundError: import of pytest halted; None in sys.modules"
    )


def test_importing_testing_does_not_import_the_runtime() -> None:
    result = run_isolated(
        """
        import backstage_actors.testing
        from backstage_actors import Router
        runtime = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("thespian", "supervisors")
            or name in ("backstage_actors._router_actor", "backstage_actors._aggregate_actor",
                        "backstage_actors.application", "backstage_actors.client")
        )
        print(runtime)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_pytest_plugin_is_a_module_of_its_own() -> None:
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("backstage") == "backstage_actors.pytest_plugin"
    assert not hasattr(testing, "backstage_system")


def test_the_readme_states_the_default_retry_policy_as_it_behaves() -> None:
    # test_handlers.py shows the behaviour: failures 1 and 2 retried, parked at the third.
    tries = backstage_actors.Subscriber.max_failures
    assert tries == 3
    assert f"try the event `max_failures = {tries}` times, that" in README
    assert "is retry it twice with exponential backoff" in README
