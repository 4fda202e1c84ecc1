"""The `girder` command: a thin layer over `girder.runner` and `girder.demo`.

Every option falls back to its `GIRDER_*` environment variable through `girder.config.Settings`
(`--backend` is GIRDER_BACKEND, `--pool` is GIRDER_POOL, and so on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from girder.config import Settings, load_settings
from girder.demo import format_report, run_demo
from girder.errors import ConfigurationError
from girder.runner import format_status, grid_status, run_distributor, run_worker
from girder.supervisor import run_up


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        backend=args.backend,
        pool=getattr(args, "pool", None),
        name=getattr(args, "name", None),
        parent=getattr(args, "parent", None),
        workers=getattr(args, "workers", None),
        concurrency=getattr(args, "concurrency", None),
        imports=getattr(args, "imports", None),
        log_level=args.log_level,
    )


def _demo(args: argparse.Namespace) -> int:
    report = asyncio.run(
        run_demo(
            workers=args.workers or 4,
            jobs=args.jobs,
            level=args.level,
            fanout=args.fanout,
            msec=args.msec,
        )
    )
    print(format_report(report))
    return 0


def _worker(args: argparse.Namespace) -> int:
    run_worker(_settings(args), argv=args.argv)
    return 0


def _distributor(args: argparse.Namespace) -> int:
    run_distributor(_settings(args))
    return 0


def _up(args: argparse.Namespace) -> int:
    return run_up(_settings(args))


def _status(args: argparse.Namespace) -> int:
    status = asyncio.run(grid_status(_settings(args)))
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from girder.dashboard.server import serve_dashboard  # noqa: PLC0415 -- needs the `dashboard` extra

    asyncio.run(serve_dashboard(_settings(args), host=args.host, port=args.port))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="backend URL (GIRDER_BACKEND; default memory://)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING... (GIRDER_LOG_LEVEL)")


def _worker_options(parser: argparse.ArgumentParser, pool_help: str) -> None:
    """The options of worker processes (shared by `worker` and `up`)."""
    parser.add_argument("--pool", help=pool_help)
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="a module defining grid functions (repeatable)",
    )
    parser.add_argument("--concurrency", type=int, help="batons per worker: functions at once")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="girder", description="An asyncio-native calculation grid."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the recursive bogosity demo on an embedded grid")
    demo.add_argument("--workers", type=int, help="workers (default 4)")
    demo.add_argument("--jobs", type=int, default=10, help="top-level jobs (default 10)")
    demo.add_argument("--level", type=int, default=3, help="recursion depth (default 3)")
    demo.add_argument("--fanout", type=int, default=3, help="sub-jobs per job (default 3)")
    demo.add_argument("--msec", type=int, default=2, help="work per job in ms (default 2)")
    demo.set_defaults(run=_demo)

    worker = commands.add_parser("worker", help="run one worker process")
    _common(worker)
    _worker_options(worker, pool_help="the distributor to join (GIRDER_POOL; default pool)")
    worker.add_argument("--name", help="this worker's id (default: generated)")
    worker.set_defaults(run=_worker)

    distributor = commands.add_parser("distributor", help="run one distributor process")
    _common(distributor)
    distributor.add_argument("--name", help="the distributor's name (default: the pool name)")
    distributor.add_argument("--parent", help="a distributor to volunteer at (nesting)")
    distributor.set_defaults(run=_distributor)

    up = commands.add_parser("up", help="a distributor and N worker processes on this machine")
    _common(up)
    up.add_argument("--workers", type=int, help="worker processes (GIRDER_WORKERS; default 4)")
    _worker_options(up, pool_help="the pool's name (GIRDER_POOL; default pool)")
    up.set_defaults(run=_up)

    status = commands.add_parser("status", help="nodes, liveness, queues, cache size")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)

    dashboard = commands.add_parser("dashboard", help="serve the live dashboard and /metrics")
    _common(dashboard)
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any "
        "other than loopback needs the token printed at start)",
    )
    dashboard.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    dashboard.set_defaults(run=_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `girder` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what starts a supervised worker's node again
    try:
        code: int = args.run(args)
    except ConfigurationError as exc:
        print(f"girder {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
