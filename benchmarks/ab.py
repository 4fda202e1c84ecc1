"""Before/after on a noisy machine: `distributed.py` run alternately on two or more checkouts.

Each round runs `<checkout>/benchmarks/distributed.py --runs R` once per checkout, in turn, so
that whatever else the machine does weighs on every checkout alike; the figures are medians of
all runs of all rounds. Make the checkouts with `git worktree add /tmp/before <commit>`.

    .venv/bin/python benchmarks/ab.py /tmp/before . --rounds 3
    .venv/bin/python benchmarks/ab.py /tmp/before . --workloads floor,W1

A checkout may carry environment variables for its runs after commas, to compare settings on
one checkout (say, grid events on and off):

    .venv/bin/python benchmarks/ab.py . .,GIRDER_EVENTS=false --workloads W1,W2
    .venv/bin/python benchmarks/ab.py . .,GIRDER_SPREAD_RESULTS=1 --workloads W1,W2 --cluster

It prints one JSON line per checkout and workload on stdout (`checkout`, `workload`, `median`,
`unit`, `samples`) and a side-by-side table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.harness` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import say

_FIGURES = (("p50_us", "us"), ("calls_per_second", "calls/s"), ("seconds", "s"))
"""The headline figure of a `distributed.py` line, by the first field it has."""


def headline(line: dict[str, object]) -> tuple[str, list[float]] | None:
    """The unit and per-run samples of one `distributed.py` JSON line."""
    for field, unit in _FIGURES:
        if field in line:
            per_run = line.get(f"{field}_per_run")
            samples = per_run if isinstance(per_run, list) else [line[field]]
            return unit, [float(value) for value in samples]
    return None


def readable(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def run_once(
    checkout: str, workloads: str, runs: int, *, cluster: bool = False
) -> list[dict[str, object]]:
    """One run of `checkout`'s distributed.py: `path[,NAME=VALUE...]`."""
    path, *assignments = checkout.split(",")
    env = {**os.environ, **dict(item.split("=", 1) for item in assignments)}
    script = Path(path) / "benchmarks" / "distributed.py"
    command = [sys.executable, str(script), "--workloads", workloads, "--runs", str(runs)]
    command += ["--cluster"] if cluster else []
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkouts", nargs="+", help="repository checkouts to compare (path[,NAME=VALUE...])"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload per round (3)")
    parser.add_argument("--workloads", default="floor,W1,W2,W3,W4")
    parser.add_argument(
        "--cluster", action="store_true", help="on a private Redis Cluster (distributed.py)"
    )
    args = parser.parse_args(argv)
    samples: dict[tuple[str, str], tuple[str, list[float]]] = {}
    for index in range(args.rounds):
        for checkout in args.checkouts:
            say(f"round {index + 1}/{args.rounds}: {checkout}")
            for line in run_once(checkout, args.workloads, args.runs, cluster=args.cluster):
                found = headline(line)
                if found is None:
                    continue
                unit, values = found
                key = (str(checkout), f"{line['workload']} {line.get('case', '')}".strip())
                samples.setdefault(key, (unit, []))[1].extend(values)
    for (checkout, workload), (unit, values) in samples.items():
        median = statistics.median(values)
        row = {"checkout": checkout, "workload": workload, "median": median, "unit": unit}
        print(json.dumps({**row, "samples": values}), flush=True)
    workloads = dict.fromkeys(workload for _, workload in samples)
    for workload in workloads:
        cells = [
            f"{checkout}: {readable(statistics.median(samples[str(checkout), workload][1]))}"
            for checkout in args.checkouts
            if (str(checkout), workload) in samples
        ]
        unit = next(unit for (_, w), (unit, _) in samples.items() if w == workload)
        say(f"{workload:40s} [{unit}]  " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
