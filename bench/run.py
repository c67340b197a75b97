"""Every benchmark in one table: ``python -m bench.run [--quick]``.

Each module runs in a fresh interpreter, so that one module's actor systems, caches and peak
memory never reach the next. The table (Markdown) goes to stdout, preceded by the machine it
ran on; progress goes to the log (stderr).
"""

from __future__ import annotations

import argparse
import logging
import pkgutil
import sys
import time
from pathlib import Path

from ._common import in_fresh_process, machine, module_rows
from ._report import Row, render

__all__ = ["MODULES", "main"]

_FIRST = ("bench_store", "bench_dispatch", "bench_handlers", "bench_cli", "bench_supervision")
#: Every ``bench/bench_*.py`` (each has ``rows(quick)``): these first, any other after them.
MODULES = tuple(
    sorted(
        (
            m.name
            for m in pkgutil.iter_modules([str(Path(__file__).parent)])
            if m.name.startswith("bench_")
        ),
        key=lambda name: (_FIRST.index(name) if name in _FIRST else len(_FIRST), name),
    )
)

log = logging.getLogger("bench.run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    parser.add_argument(
        "--only", nargs="+", choices=MODULES, metavar="MODULE", help=f"a subset of {MODULES}"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each module's progress")
    options = parser.parse_args(argv)
    level = logging.INFO if options.verbose else logging.WARNING
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows: list[Row] = []
    failed: list[str] = []
    started = time.perf_counter()
    for module in options.only or MODULES:
        start = time.perf_counter()
        try:
            rows += in_fresh_process(module_rows, module, options.quick, level)
        except Exception:
            log.exception("%s failed", module)
            failed.append(module)
        log.info("%s: %.0fs", module, time.perf_counter() - start)
    total = time.perf_counter() - started
    mode = "quick" if options.quick else "full"
    print(f"Machine: {machine()}\n")
    print(render(rows))
    print(f"\n{mode} run in {total:.0f}s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
