"""The `girder` command: a thin layer over the programmatic API.

Every option falls back to its `GIRDER_*` environment variable (see `girder.config.Settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from girder.demo import format_report, run_demo


def _demo(args: argparse.Namespace) -> int:
    report = asyncio.run(
        run_demo(
            workers=args.workers,
            jobs=args.jobs,
            level=args.level,
            fanout=args.fanout,
            msec=args.msec,
        )
    )
    print(format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="girder", description="An asyncio-native calculation grid."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the recursive bogosity demo on an embedded grid")
    demo.add_argument("--workers", type=int, default=4, help="workers (default 4)")
    demo.add_argument("--jobs", type=int, default=10, help="top-level jobs (default 10)")
    demo.add_argument("--level", type=int, default=3, help="recursion depth (default 3)")
    demo.add_argument("--fanout", type=int, default=3, help="sub-jobs per job (default 3)")
    demo.add_argument("--msec", type=int, default=2, help="work per job in ms (default 2)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `girder` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
