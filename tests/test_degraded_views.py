"""What the views of a degraded daemon (a part of its tree does not answer: the router stopped by
SIGSTOP here) say: ``status`` names the part and exits 4 after its report, with the same JSON
fields as when healthy (the router's counts null) and no Python ``None`` in its text; ``tree``
shows the part as unresponsive; ``top`` says ``degraded`` and names it; the shell's ``status``
exits 4 and the shell goes on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from supervisors import walk

from .test_cli import finish, frozen, running

pytestmark = pytest.mark.process


def test_the_views_of_a_daemon_whose_router_does_not_answer(tmp_path: Path) -> None:
    with running(tmp_path) as backstage:
        healthy = backstage.json("status")
        router = next(n["pid"] for n in walk(backstage.json("tree")) if n["kind"] == "router")
        with frozen(router):
            # Independent invocations at once: each waits the tree's 5 s for the router.
            shell = backstage.popen("shell", stdin=subprocess.PIPE)
            as_json, text, tree, top = backstage.run_all(
                [["status", "--json"], ["status"], ["tree", "--json"], ["top"]]
            )
            shell_done = finish(shell, "status\nevents --limit 1\nexit\n")

    assert as_json.returncode == 4, as_json.stderr
    report = json.loads(as_json.stdout)
    assert sorted(report) == sorted(healthy)
    assert report["status"] == "degraded"
    assert report["not_answering"] == [{"name": "router", "kind": "router", "pid": router}]
    assert report["aggregates"] == {"live": None, "max_live": None, "passivated": None}
    assert [sorted(s) for s in report["subscribers"]] == [sorted(s) for s in healthy["subscribers"]]

    assert text.returncode == 4, text.stderr
    assert f"not answering: router [router] pid {router}" in text.stdout
    assert "aggregates: ? live (cap ?), ? passivated" in text.stdout, text.stdout
    assert "None" not in text.stdout

    assert tree.returncode == 0, tree.stderr
    [silent] = [n for n in walk(json.loads(tree.stdout)) if n["status"] == "unresponsive"]
    assert (silent["name"], silent["pid"]) == ("router", router)

    assert top.returncode == 0, top.stderr
    assert "backstage:bank degraded" in top.stdout, top.stdout
    assert f"not answering: router [router] pid {router}" in top.stdout
    assert "aggregates: ? live (cap ?), ? passivated" in top.stdout

    # The shell: its `status` fails (exit 4, said on stderr) and the next verb still runs.
    assert shell_done.returncode == 0, shell_done.stderr
    assert "is degraded: router [router]" in shell_done.stderr
    assert shell_done.stdout.index("degraded") < shell_done.stdout.index("no events")
