"""The `girder` command: a thin layer over `girder.runner` and `girder.demo`.

Every option falls back to its `GIRDER_*` environment variable through `girder.config.Settings`
(`--backend` is GIRDER_BACKEND, `--pool` is GIRDER_POOL, and so on). A failure prints one line,
`girder COMMAND: what went wrong`; `--debug` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from girder import __version__
from girder.backends.base import NodeKind
from girder.cache_admin import cache_clear, cache_stats, format_cache_stats
from girder.config import Settings, load_settings, warn_unknown_variables
from girder.demo import format_report, run_demo
from girder.errors import ConfigurationError, GirderError, RequestError
from girder.log import configure, log_to_files
from girder.runner import format_status, grid_status, run_distributor, run_worker, watch_status
from girder.scheduler.node import new_node_id
from girder.supervisor import run_up
from girder.watchdog import supervised


def _settings(args: argparse.Namespace) -> Settings:
    """The command's settings; girder's own process, so it also sets up girder's logging."""
    settings = load_settings(
        warn=False,
        backend=getattr(args, "backend", None),
        pool=getattr(args, "pool", None),
        name=getattr(args, "name", None),
        parent=getattr(args, "parent", None),
        workers=getattr(args, "workers", None),
        concurrency=getattr(args, "concurrency", None),
        imports=getattr(args, "imports", None),
        log_level=getattr(args, "log_level", None),
        log_dir=getattr(args, "log_dir", None),
    )
    configure(settings.log_level, settings.log_format)
    warn_unknown_variables()
    return settings


def _demo(args: argparse.Namespace) -> int:
    _settings(args)
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


def _shared_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command whose processes share the grid's state: never in memory."""
    settings = _settings(args)
    if urlsplit(settings.backend).scheme == "memory":
        raise ConfigurationError(
            f"the backend {settings.backend} lives inside one process, where no other process "
            "can reach it; pass the URL of a Redis server that every process of the grid "
            "reaches: --backend redis://HOST:6379/0 (or GIRDER_BACKEND)"
        )
    return settings


def _worker(args: argparse.Namespace) -> int:
    run_worker(_with_log_files(_shared_settings(args), NodeKind.WORKER), argv=args.argv)
    return 0


def _distributor(args: argparse.Namespace) -> int:
    settings = _shared_settings(args)
    run_distributor(_with_log_files(settings, NodeKind.DISTRIBUTOR, settings.name or settings.pool))
    return 0


def _with_log_files(settings: Settings, kind: NodeKind, name: str | None = None) -> Settings:
    """With `log_dir`: the node's output goes to its files, so the node needs its name now (it
    is kept in GIRDER_NAME for a supervised worker's node, which must use the same)."""
    if settings.log_dir is None:
        return settings
    name = name or settings.name or new_node_id(kind)
    if not supervised():  # a supervised node writes to the files its supervisor opened
        log_to_files(settings.log_dir, name)
    os.environ["GIRDER_NAME"] = name
    return settings.with_overrides(name=settings.name or name)


def _up(args: argparse.Namespace) -> int:
    private = args.backend is None and not os.environ.get("GIRDER_BACKEND")
    settings = _settings(args) if private else _shared_settings(args)
    return run_up(settings, private=private, directory=args.private_dir)


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.watch is None:
        status = asyncio.run(grid_status(settings))
        print(json.dumps(status, indent=1) if args.json else format_status(status))
        return 0
    if args.watch <= 0:
        raise ConfigurationError(f"--watch takes a number of seconds above 0, not {args.watch:g}")
    clear = sys.stdout.isatty() and not args.json

    def show(status: dict[str, object]) -> None:
        if args.json:
            print(json.dumps(status), flush=True)  # one line per refresh
            return
        print("\x1b[H\x1b[2J" if clear else f"-- {time.strftime('%H:%M:%S')}")
        print(format_status(status), flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the watch
        asyncio.run(watch_status(settings, args.watch, show))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from girder.dashboard.server import serve_dashboard  # noqa: PLC0415 -- needs the `dashboard` extra

    asyncio.run(serve_dashboard(_shared_settings(args), host=args.host, port=args.port))
    return 0


def _debug_option(parser: argparse.ArgumentParser, default: object) -> None:
    # Before or after the command; a command's parser must not reset what the main one set.
    parser.add_argument(
        "--debug", action="store_true", default=default, help="print tracebacks of failures"
    )


def _cache_stats(args: argparse.Namespace) -> int:
    stats = asyncio.run(cache_stats(_settings(args)))
    print(json.dumps(stats, indent=1) if args.json else format_cache_stats(stats))
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    dropped = asyncio.run(cache_clear(_settings(args), args.function))
    whose = f" of {args.function}" if args.function else ""
    print(f"deleted {dropped} cached results{whose}")
    return 0


def _cache_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", help="the result cache: stats, clear")
    actions = cache.add_subparsers(dest="action", required=True)
    stats = actions.add_parser("stats", help="cached results: entries and bytes per function")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_cache_stats)
    clear = actions.add_parser("clear", help="delete cached results (running work stays)")
    _common(clear)
    clear.add_argument(
        "--function", metavar="NAME", help="only this function's (its full name, as stats lists)"
    )
    clear.set_defaults(run=_cache_clear)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="backend URL (GIRDER_BACKEND; default memory://)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING... (GIRDER_LOG_LEVEL)")


def _log_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="write each node's stdout and stderr to DIR/<node>.out and .err (GIRDER_LOG_DIR)",
    )


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _debug_option(parser, default=False)
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
    _log_dir(worker)
    worker.set_defaults(run=_worker)

    distributor = commands.add_parser("distributor", help="run one distributor process")
    _common(distributor)
    distributor.add_argument("--name", help="the distributor's name (default: the pool name)")
    distributor.add_argument("--parent", help="a distributor to volunteer at (nesting)")
    _log_dir(distributor)
    distributor.set_defaults(run=_distributor)

    up = commands.add_parser(
        "up",
        help="a distributor and N worker processes on this machine (without a backend: on a "
        "private redis-server)",
    )
    _common(up)
    up.add_argument("--workers", type=int, help="worker processes (GIRDER_WORKERS; default 4)")
    _worker_options(up, pool_help="the pool's name (GIRDER_POOL; default pool)")
    _log_dir(up)
    up.add_argument(
        "--private-dir",
        type=Path,
        help="without a backend: the new directory of the private redis-server's socket "
        "(default: a temporary one)",
    )
    up.set_defaults(run=_up)

    status = commands.add_parser("status", help="nodes, liveness, queues, cache size")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="show the status again every SECONDS (default 2) until Ctrl-C",
    )
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
    _cache_commands(commands)
    for command in commands.choices.values():
        _debug_option(command, default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `girder` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what starts a supervised worker's node again
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"girder {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1
    return code


def _one_line(exc: Exception) -> str:
    """`exc` as one line: its message (a girder error's message says what to do), or its type
    and message for anything else. A failed request's headline (`--debug` shows the rest)."""
    text = " ".join((exc.args[0] if isinstance(exc, RequestError) else str(exc)).split())
    if isinstance(exc, GirderError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
