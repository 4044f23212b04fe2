"""The `flipwatch` command: every subcommand and the start-up code of every process live here.

- `estimator.py`: estimate, calibrate (the estimator from a shell)
- `demo.py`: demo (offline or through an embedded server)
- `api.py`: api, migrate, api-key
- `worker.py`: worker, serve
- `startup.py`: building the app, the dispatcher and the in-process worker
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flipwatch.cli import api, demo, estimator, worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flipwatch",
        description="Estimate an image classifier's accuracy without labels (Weighted Flips).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (estimator, demo, api, worker):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
