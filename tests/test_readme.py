"""The README never lies: each of its python blocks runs, in order, in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("number", range(len(BLOCKS)), ids=lambda n: f"block{n + 1}")
def test_readme_python_block_runs(number: int, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that create files create them here
    code = compile(BLOCKS[number], f"README.md block {number + 1}", "exec")
    exec(code, {"__name__": f"readme_block_{number + 1}"})
