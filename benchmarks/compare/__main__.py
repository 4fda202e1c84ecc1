"""`python -m benchmarks.compare`: girder against Celery, Dask, Ray and arq, in one command.

It starts one throw-away redis-server on a free loopback port, then runs every chosen system in
a process of its own (`benchmarks.compare.child`), one after the other, each with two worker
processes; relays each system's JSON lines to stdout; kills whatever a system left behind; then
runs the girder scaling series (1, 2, 4 worker processes; the embedded grid with 1 and 4
workers) and writes `docs/benchmarks.md` with its plots under `docs/img/`.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m benchmarks.compare                      # the full comparison
    .venv/bin/python -m benchmarks.compare --quick              # a smoke run (small sizes)
    .venv/bin/python -m benchmarks.compare --systems girder-redis,celery --workloads W1,W3
    .venv/bin/python -m benchmarks.compare --report-from run.jsonl   # only rewrite the page

A quick run, or a run of fewer systems or workloads, leaves the page alone unless `--docs yes`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.compare import report
from benchmarks.compare.workloads import W2, W3, WORKLOADS, Sizes
from benchmarks.harness import REPO, say
from girder.testing.redis_server import RedisServer


@dataclass(frozen=True)
class System:
    name: str
    module: str
    requires: tuple[str, ...]
    """Importable packages it needs; when one is missing the system is skipped."""


SYSTEMS: tuple[System, ...] = (
    System("girder-embedded", "girder_embedded", ("girder",)),
    System("girder-redis", "girder_redis", ("girder", "redis")),
    System("celery", "celery_peer", ("celery", "redis")),
    System("dask", "dask_peer", ("distributed",)),
    System("ray", "ray_peer", ("ray", "psutil")),
    System("arq", "arq_peer", ("arq",)),
)
BY_NAME = {s.name: s for s in SYSTEMS}
SCALING_REDIS = (1, 4)
"""Extra girder-redis worker counts for the scaling figure (2 comes from the comparison)."""
SCALING_EMBEDDED = (1, 4)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="girder against Celery, Dask, Ray and arq on this machine: one JSON line "
        "per (system, workload) on stdout, and docs/benchmarks.md.",
    )
    parser.add_argument(
        "--systems",
        default=",".join(BY_NAME),
        help=f"comma-separated, from: {', '.join(BY_NAME)} (default: all)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from: {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per workload (3)")
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds one run of one workload may take, and the time budget of its repeats "
        "(default 45; quick 20)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=8.0,
        help="seconds without progress that count as a deadlock, for the Redis-backed peers "
        "(default 8)",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the girder scaling series")
    parser.add_argument(
        "--docs",
        choices=("auto", "yes", "no"),
        default="auto",
        help="write docs/benchmarks.md and its plots: auto = only after a full run of "
        "everything (default)",
    )
    parser.add_argument("--jsonl", type=Path, help="also save the JSON lines to this file")
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="JSONL",
        help="write the page from a saved run (--jsonl) without running anything",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in BY_NAME]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(BY_NAME)}")
    names = {w.lower(): w for w in WORKLOADS}
    chosen = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    if bad := [w for w in chosen if w not in names]:
        parser.error(f"unknown workloads {bad}; choose from {list(WORKLOADS)}")
    args.workloads = [names[w] for w in chosen]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.time_limit is None:
        args.time_limit = 20.0 if args.quick else 45.0
    return args


def installed(system: System) -> list[str]:
    """The packages of `system` that are missing."""
    return [p for p in system.requires if importlib.util.find_spec(p) is None]


def emit(line: dict[str, Any], sink: list[dict[str, Any]], jsonl: Any) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if jsonl is not None:
        jsonl.write(text + "\n")
        jsonl.flush()
    sink.append(line)


class SystemRun:
    """One system's process, in a session of its own so that all it started can be killed."""

    def __init__(self, command: list[str], deadline: float) -> None:
        self.command = command
        self.deadline = deadline
        self.proc: subprocess.Popen[str] | None = None
        self.timed_out = False

    def lines(self) -> Any:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        timer = threading.Timer(self.deadline, self._expire)
        timer.daemon = True
        timer.start()
        try:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                text = raw.strip()
                if not text.startswith("{"):
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    say(f"  (not JSON: {text[:200]})")
            self.proc.wait()
        finally:
            timer.cancel()
            self.kill_group()

    def _expire(self) -> None:
        self.timed_out = True
        say(f"  the system's process passed its overall limit of {self.deadline:.0f} s: killing")
        self.kill_group(signal.SIGTERM)
        time.sleep(5)
        self.kill_group()

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signal every process left in the system's session (its workers, schedulers...)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)
        if signum == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


def run_system(
    system: System,
    args: argparse.Namespace,
    *,
    url: str,
    sizes: Sizes,
    logs: Path,
    workloads: list[str],
    workers: int = 2,
    phase: str = "compare",
) -> list[dict[str, Any]]:
    command = [
        sys.executable, "-m", "benchmarks.compare.child", system.module,
        "--redis", url,
        "--sizes", json.dumps(sizes.to_json()),
        "--runs", str(args.runs),
        "--time-limit", str(args.time_limit),
        "--stall", str(args.stall),
        "--workloads", ",".join(workloads),
        "--workers", str(workers),
        "--logs", str(logs / f"{system.name}-{workers}"),
    ]  # fmt: skip
    if args.quick:
        command.append("--quick")
    # A backstop only: every workload stops itself at its time limit.
    deadline = len(workloads) * 2 * (2 * args.time_limit + args.stall + 30) + 180
    run = SystemRun(command, deadline)
    lines = []
    for line in run.lines():
        line["phase"] = phase
        lines.append(line)
    code = run.proc.returncode if run.proc is not None else None
    seen = {line["workload"] for line in lines}
    for workload in workloads:
        if workload not in seen:
            status = "timeout" if run.timed_out else "error"
            lines.append(
                {
                    "bench": "compare",
                    "system": system.name,
                    "variant": None,
                    "workload": workload,
                    "status": status,
                    "workers": workers,
                    "runs": 0,
                    "note": f"the system's process ended (exit code {code}) before this "
                    f"workload reported; see stderr",
                    "phase": phase,
                    "quick": args.quick,
                }
            )
    return lines


def skipped_lines(
    system: System, missing: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    return [
        {
            "bench": "compare",
            "system": system.name,
            "variant": None,
            "workload": workload,
            "status": "skipped",
            "workers": 2,
            "runs": 0,
            "note": f"not installed: {', '.join(missing)} (pip install -e '.[bench]')",
            "phase": "compare",
            "quick": args.quick,
        }
        for workload in args.workloads
    ]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        lines = [json.loads(t) for t in args.report_from.read_text().splitlines() if t.strip()]
        meta = next((line for line in lines if line.get("bench") == "compare-meta"), None)
        if meta is None:
            raise SystemExit(f"{args.report_from} has no compare-meta line")
        saved = [line for line in lines if line.get("bench") == "compare"]
        report.write_page(saved, meta, REPO / "docs")
        say(f"wrote {REPO / 'docs' / 'benchmarks.md'}")
        return 0

    signal.signal(signal.SIGTERM, _terminate)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="girder-compare-"))
    jsonl = args.jsonl.open("w") if args.jsonl else None
    try:
        with RedisServer() as server:
            url = server.url
            say(f"redis-server {url}; logs in {logs}")
            meta = report.machine(url)
            for system in SYSTEMS:
                if system.name not in args.systems:
                    continue
                if missing := installed(system):
                    say(f"== {system.name}: skipped, not installed ({', '.join(missing)})")
                    for line in skipped_lines(system, missing, args):
                        emit(line, results, jsonl)
                    continue
                server.command("FLUSHALL")
                for line in run_system(
                    system, args, url=url, sizes=sizes, logs=logs, workloads=args.workloads
                ):
                    emit(line, results, jsonl)
            scaling_workloads = [w for w in (W2, W3) if w in args.workloads]
            if not args.no_scaling and scaling_workloads:
                for name, counts in (
                    ("girder-redis", SCALING_REDIS),
                    ("girder-embedded", SCALING_EMBEDDED),
                ):
                    if name not in args.systems:
                        continue
                    for workers in counts:
                        server.command("FLUSHALL")
                        for line in run_system(
                            BY_NAME[name], args, url=url, sizes=sizes, logs=logs,
                            workloads=scaling_workloads, workers=workers, phase="scaling",
                        ):  # fmt: skip
                            emit(line, results, jsonl)
        seconds = time.monotonic() - started
        command = "python -m benchmarks.compare" + (
            " " + shlex.join(argv if argv is not None else sys.argv[1:])
            if (argv if argv is not None else sys.argv[1:])
            else ""
        )
        meta |= {
            "bench": "compare-meta",
            "command": command.strip(),
            "seconds": round(seconds, 1),
            "runs": args.runs,
            "time_limit": args.time_limit,
            "stall": args.stall,
            "sizes": sizes.to_json(),
            "quick": args.quick,
        }
        if jsonl is not None:
            jsonl.write(json.dumps(meta) + "\n")
        full = (
            not args.quick
            and set(args.systems) == set(BY_NAME)
            and set(args.workloads) == set(WORKLOADS)
            and not args.no_scaling
        )
        if args.docs == "yes" or (args.docs == "auto" and full):
            report.write_page(results, meta, REPO / "docs")
            say(f"wrote {REPO / 'docs' / 'benchmarks.md'} and its plots")
        say(f"done in {seconds:.0f} s")
    finally:
        if jsonl is not None:
            jsonl.close()
        if not args.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
