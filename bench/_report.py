"""One row per figure, each with the peer measured in the same run and the ratio between them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable

import attrs

__all__ = ["Row", "main", "render"]


@attrs.frozen
class Row:
    """A figure; ``higher_is_better`` says which way ``ratio`` (value / peer) should point."""

    figure: str
    value: float
    unit: str
    peer: str = ""
    peer_value: float | None = None
    target: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.peer_value:
            return None
        return self.value / self.peer_value


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(rows: Iterable[Row], markdown: bool = True) -> str:
    """The rows as a Markdown table (what the README shows)."""
    header = ["figure", "Backstage", "unit", "peer", "peer value", "ratio", "target"]
    lines = [header]
    for row in rows:
        ratio = row.ratio
        lines.append(
            [
                row.figure,
                _number(row.value),
                row.unit,
                row.peer or "-",
                _number(row.peer_value),
                f"{ratio:.2f}x" if ratio is not None else "-",
                row.target or "-",
            ]
        )
    if markdown:
        out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
        return "\n".join(out)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def main(rows: Callable[[bool], list[Row]], description: str | None) -> None:
    """What each benchmark module does when run by itself: ``--quick``, then print the table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(render(rows(options.quick)))
