"""The README never lies: its python blocks run, in order, in one namespace (like a session)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that create files create them here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (the tutorial's mkdtemp too)
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, block in enumerate(BLOCKS, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    assert len(BLOCKS) >= 6
    # The tutorial shows what it prints; check it does.
    printed = capsys.readouterr().out
    shown = re.search(r"That prints:\n\n```\n(.*?)```", README.read_text(), flags=re.S)
    assert shown is not None
    for line in shown.group(1).splitlines():
        assert line in printed
