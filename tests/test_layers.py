"""The package's layers, read from its source: which module may import which, and where.

These are structure tests: each names a tangle the code had (issue 21) and fails if it comes back.
"""

from __future__ import annotations

import ast
from pathlib import Path

from backstage_actors import EventHandler, ProcessManager, Projection
from backstage_actors._event_bus import runtime_of
from backstage_actors._handler_actor import HandlerActor
from backstage_actors._process_manager_actor import ProcessManagerActor
from backstage_actors._projection_actor import ProjectionActor

PACKAGE = Path(__file__).resolve().parent.parent / "backstage_actors"

# In-function imports that stay, each for a reason given in a comment at the import:
LAZY_IMPORTS = {
    ("_shell.py", "readline"),  # optional: not every Python has it
    # Thespian's internals, read in one place (issue 21, item 4: helper `auth`'s branch).
    ("_thespian.py", "thespian.system.transport"),
    ("_thespian.py", "types"),
    ("_thespian.py", "thespian.system"),
    ("_thespian.py", "logging"),
    ("_thespian.py", "thespian.actors"),
    ("client.py", "thespian.actors"),
    ("_export.py", "pyarrow"),  # the optional extra `export`, needed for Parquet only
    ("_export.py", "pyarrow.parquet"),  # ExternalContext, with the internal read auth moves
}


def module_imports(path: Path) -> tuple[set[str], set[str]]:
    """``(module level, inside functions)`` imports of ``path``, as module names."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    inner: set[str] = set()

    def name(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = "." * node.level + (node.module or "")
        if node.module is None:  # from . import x
            return [base + alias.name for alias in node.names]
        return [base]

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(name(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inner.update(name(sub))
    return top, inner


def test_no_in_function_imports_hide_dependencies() -> None:
    hidden = set()
    for path in sorted(PACKAGE.glob("*.py")):
        _, inner = module_imports(path)
        hidden |= {(path.name, module) for module in inner}
    assert hidden - LAZY_IMPORTS == set()


def test_cli_and_shell_do_not_import_each_other() -> None:
    cli, _ = module_imports(PACKAGE / "cli.py")
    shell_top, shell_inner = module_imports(PACKAGE / "_shell.py")
    assert "._shell" in cli
    assert not {".cli", "backstage_actors.cli"} & (shell_top | shell_inner)


def test_the_router_dsl_imports_no_actor() -> None:
    top, inner = module_imports(PACKAGE / "router.py")
    imported = top | inner
    assert not any(m.startswith(("thespian", "supervisors")) for m in imported), imported
    assert not {"._router_actor", "._aggregate_actor", "._protocol"} & imported


def test_one_runtime_per_subscriber_kind() -> None:
    class Mail(EventHandler):
        name = "mail"

    class Board(Projection):
        name = "board"

    class Saga(ProcessManager):
        name = "saga"

    assert runtime_of(Mail) is HandlerActor
    assert runtime_of(Board) is ProjectionActor
    assert runtime_of(Saga) is ProcessManagerActor
    # The shared loop does not tell the kinds apart.
    shared = (PACKAGE / "_subscriber.py").read_text()
    for kind in ("EventHandler", "Projection", "ProcessManager"):
        assert f"isinstance(self.subscriber, {kind})" not in shared


def test_sibling_actors_are_named_in_one_place() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "_names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # `message.name == "events"`, `ChildSpec("store", ...)`, `locate(..., "router", ...)`
            compared_name = (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Attribute)
                and node.left.attr == "name"
            )
            if compared_name and any(
                isinstance(c, ast.Constant) and c.value in ("store", "router", "events")
                for c in node.comparators  # type: ignore[attr-defined]
            ):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in (
                "ChildSpec",
                "locate",
            ):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and arg.value in ("store", "router", "events"):
                        offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
