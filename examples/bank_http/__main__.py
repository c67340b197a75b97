"""Serve the bank over HTTP with uvicorn.

python -m examples.bank_http --db bank.db             # embedded: the bank runs in this process
backstage start examples.bank:app --port 1900         # or beside a daemon:
python -m examples.bank_http --attach 1900
"""

from __future__ import annotations

import argparse

import uvicorn

from examples.bank import app as bank
from examples.bank import make_app

from . import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="bank.db", help="embedded: the bank's database")
    parser.add_argument("--base", choices=["simple", "multiproc"], default="multiproc")
    parser.add_argument("--attach", type=int, metavar="PORT", help="a daemon's admin port")
    parser.add_argument("--http-host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    options = parser.parse_args()
    if options.attach:
        system = bank.attach(port=options.attach)
    else:
        system = make_app(options.db).start(base=options.base)
    with system:
        uvicorn.run(create_app(system), host=options.http_host, port=options.http_port)


if __name__ == "__main__":
    main()
