"""The README's CLI session is reproducible as written: each ``$ backstage ...`` line runs against a
real daemon of the bank, and prints what the README shows (modulo pids, paths, port, timings).

The session is the first block after "## The CLI" that starts with ``$ backstage start``. Lines
after ``$ cat FILE`` are that file's content (the test writes it); lines after ``$ backstage
shell`` that start with ``backstage> `` are typed into the shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import free_port
from .test_cli import BACKSTAGE, ROOT, Backstage, shut_down

pytestmark = pytest.mark.process

README = (ROOT / "README.md").read_text()
PROMPT = "backstage> "
#: Where the README's session keeps its database; the test puts it in a temporary directory.
README_DIR = "/tmp/readme-bank"


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)  # what the README shows after it

    def args(self) -> list[str]:
        return shlex.split(self.command, comments=True)


def session() -> list[Step]:
    cli_section = README.split("\n## The CLI\n", 1)[1]
    block = re.search(r"^```\n(\$ backstage start .*?)^```", cli_section, flags=re.S | re.M)
    assert block is not None, "no session in the README's CLI section"
    steps: list[Step] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
        else:
            steps[-1].shown.append(line)
    return steps


def normalized(lines: list[str], backstage: Backstage, where: Path) -> list[str]:
    port = str(backstage.port)
    out = []
    for line in lines:
        line = line.replace(str(where / "readme-bank"), README_DIR)
        line = line.replace(str(backstage.home), "~/.backstage")
        line = re.sub(rf"(:|-|port ){port}\b", r"\g<1>1900", line)
        out.append(masked(line))
    return out


def masked(line: str) -> str:
    """``line`` without what differs from run to run: pids and timings."""
    line = re.sub(r"admin pid \d+", "admin pid N", line)
    line = re.sub(r"in [\d.]+s \([\d,.]+ commands/s\)", "in Ts (R commands/s)", line)
    return re.sub(r"handle [\d.]+ ms", "handle T ms", line).rstrip()


def run(backstage: Backstage, step: Step, where: Path) -> tuple[int, list[str]]:
    """Run one step in directory ``where``; ``(exit code, lines as a terminal shows them)``."""
    args = [a.replace(README_DIR, str(where / "readme-bank")) for a in step.args()]
    assert args[0] == "backstage", step.command
    typed = [line[len(PROMPT) :] for line in step.shown if line.startswith(PROMPT)]
    env = {
        **backstage.env(),
        "BACKSTAGE_PORT": str(backstage.port),  # as the README's reader sets no --port
        "PYTHONPATH": str(ROOT),  # `examples.bank:app` imports from the repository root
    }
    result = subprocess.run(
        [BACKSTAGE, *args[1:]],
        cwd=where,
        env=env,
        input="".join(f"{line}\n" for line in typed),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A terminal shows the typed lines after the prompts; a pipe shows the prompts alone.
    stdout = result.stdout.replace(PROMPT, "")
    # Progress bars (stderr) are drawn on terminals only: errors are what counts there.
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "{"))]
    return result.returncode, [line for line in stdout.splitlines() if line] + errors


def test_the_readme_cli_session_runs_as_written(tmp_path: Path) -> None:
    steps = session()
    assert steps[0].args()[:2] == ["backstage", "start"]
    assert any(s.args()[:2] == ["backstage", "shell"] for s in steps)
    home = tmp_path / "home"
    home.mkdir()
    backstage = Backstage(home, port=free_port())
    try:
        for step in steps:
            if step.command.startswith("cat "):
                (tmp_path / step.args()[1]).write_text("".join(f"{x}\n" for x in step.shown))
                continue
            expected = [masked(line) for line in step.shown if not line.startswith(PROMPT)]
            # What the saga does after a dispatch returned goes on for a moment: the README
            # shows the settled state, as a person typing sees it, so looking steps poll.
            looks = step.args()[1] in ("tree", "status", "events") and step is not steps[-1]
            deadline = time.monotonic() + (20 if looks else 0)
            while True:
                _, lines = run(backstage, step, tmp_path)
                actual = normalized(lines, backstage, tmp_path)
                if actual == expected or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            assert actual == expected, f"$ {step.command}"
    finally:
        shut_down(backstage)
