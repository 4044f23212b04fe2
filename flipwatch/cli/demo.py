"""`flipwatch demo`: train, calibrate and estimate on offline MNIST data.

By default through an embedded server driven over HTTP (the way a pipeline would use flipwatch);
with `--offline`, the estimator in-process with more held-out sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flipwatch.cli.estimator import guard


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="train, calibrate and estimate on offline MNIST data, through an embedded server",
    )
    demo.add_argument("--data-dir", type=Path, default=Path(".flipwatch/demo"))
    demo.add_argument("--steps", type=int, default=250)
    demo.add_argument("--window", type=int, default=1000, help="images per estimate window")
    demo.add_argument("--port", type=int, default=0, help="embedded server port (0: any free)")
    demo.add_argument(
        "--offline",
        action="store_true",
        help="skip the server: call the estimator in-process, with more held-out sets",
    )
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    demo.set_defaults(handler=run_demo_command)


@guard
def run_demo_command(args: argparse.Namespace) -> int:
    if args.offline:
        from flipwatch.demos.offline import run_demo

        return run_demo(cache_dir=args.data_dir, steps=args.steps, device=args.device)
    from flipwatch.cli.startup import embedded_server
    from flipwatch.demos.http import run_http_demo
    from flipwatch.service.core.logging import configure_logging

    # The demo's terminal is its table: the embedded server's access log (one line per request,
    # structlog's default goes to stdout) would bury it. Warnings still reach stderr.
    configure_logging("warning", "console")
    return run_http_demo(
        server_factory=embedded_server,
        data_dir=args.data_dir,
        port=args.port,
        steps=args.steps,
        window=args.window,
    )
