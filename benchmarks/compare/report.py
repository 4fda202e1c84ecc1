"""The generated page `docs/benchmarks.md` and its plots under `docs/img/`.

The page keeps the hand-written "how to run" part and adds the comparison measured by
`python -m benchmarks.compare`: the machine, the command, every system and workload with its
figure and its ratio to girder on Redis measured in the same run, the settings of every peer,
the girder scaling series, and two PNG plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare.common import REPEAT_BUDGET
from benchmarks.compare.workloads import (
    CACHE,
    DAG,
    DESCRIPTIONS,
    LOWER_IS_BETTER,
    W1,
    W2,
    W3,
    W4,
    Sizes,
)
from benchmarks.harness import REPO

BASELINE = "girder-redis"
PACKAGES = (
    "girder",
    "redis",
    "hiredis",
    "celery",
    "kombu",
    "dask",
    "distributed",
    "ray",
    "arq",
    "matplotlib",
)
RATIO_PLOT = "img/compare-ratios.png"
TIMES = "\N{MULTIPLICATION SIGN}"
SCALING_PLOT = "img/compare-scaling.png"

Line = dict[str, Any]


# -- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    with_path = Path("/proc/cpuinfo")
    if with_path.exists():
        for row in with_path.read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    path = Path("/proc/meminfo")
    if path.exists():
        for row in path.read_text().splitlines():
            if row.startswith("MemTotal:"):
                return round(int(row.split()[1]) / 2**20, 1)
    return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(redis_url: str) -> dict[str, Any]:
    """What the run was measured on."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version", "unknown"))
    finally:
        client.close()
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "packages": {p: _version(p) for p in PACKAGES},
        "commit": _girder_commit(),
    }


def _girder_commit() -> str:
    """The girder commit measured (with "+dirty" when girder/ had uncommitted changes)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "girder") else "")


# -- figures ------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (
    (W1, "p50_us", "W1 p50"),
    (W1, "p99_us", "W1 p99"),
    (W2, "calls_per_second", "W2 calls/s"),
    (W3, "seconds", "W3 tree"),
    (W4, "seconds", "W4 chain"),
    (CACHE, "p50_us", "cache hit p50"),
    (DAG, "seconds", "sharing DAG"),
)


def headline(line: Line, field: str) -> float | None:
    value = line.get(field)
    if line.get("status") != "ok" or value is None:
        return None
    return float(value)


def ratio(workload: str, value: float | None, base: float | None) -> float | None:
    """How many times better girder (on Redis) did: peer / girder for times, girder / peer for
    rates. Above 1: girder did better."""
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return value / base if LOWER_IS_BETTER[workload] else base / value


def fmt_value(workload: str, field: str, value: float) -> str:
    if field.endswith("_us"):
        return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"
    if field == "calls_per_second":
        return f"{value:,.0f}/s"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 10:
        return f"{TIMES}{value:,.0f}"
    return f"{TIMES}{value:.1f}" if value >= 1 else f"{TIMES}{value:.2f}"


def status_text(line: Line, time_limit: float) -> str:
    status = line.get("status", "?")
    if status == "timeout":
        return f"**timeout** (> {time_limit:g} s)"
    if status == "deadlock":
        return "**deadlock**"
    if status == "aborted":
        return "**stopped** (too many processes)"
    if status == "n/a":
        return "n/a"
    if status == "skipped":
        return "not installed"
    return f"**{status}**"


def row_key(line: Line) -> tuple[str, str]:
    return (str(line["system"]), str(line.get("variant") or ""))


def compare_lines(results: Sequence[Line]) -> list[Line]:
    return [r for r in results if r.get("phase", "compare") == "compare"]


def rows(results: Sequence[Line]) -> list[tuple[str, str]]:
    """(system, variant) in the order they ran; a system's variant-free lines (W1, W2, cache)
    go on its first row."""
    order: list[tuple[str, str]] = []
    for line in compare_lines(results):
        key = row_key(line)
        if key[1] == "" and any(k[0] == key[0] for k in order):
            continue
        if key not in order:
            order.append(key)
    # A system measured with variants: its variant-free lines join its first variant's row.
    merged: list[tuple[str, str]] = []
    for key in order:
        if key[1] == "" and any(k[0] == key[0] and k[1] for k in order):
            continue
        merged.append(key)
    return merged


def find(results: Sequence[Line], system: str, variant: str, workload: str) -> Line | None:
    """The line of (system, variant, workload); variant-free workloads ignore the variant."""
    for line in compare_lines(results):
        if line["system"] != system or line["workload"] != workload:
            continue
        if (line.get("variant") or "") in (variant, ""):
            return line
    return None


def first_row_of(rows_: list[tuple[str, str]], key: tuple[str, str]) -> bool:
    return next(k for k in rows_ if k[0] == key[0]) == key


def row_label(key: tuple[str, str]) -> str:
    return f"{key[0]} · {key[1]}" if key[1] else key[0]


# -- the table ----------------------------------------------------------------------------------


def table(results: Sequence[Line], time_limit: float) -> str:
    all_rows = rows(results)
    head = "| system | " + " | ".join(c[2] for c in COLUMNS) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"
    out = [head, rule]
    for key in all_rows:
        cells = [f"**{row_label(key)}**" if key[0] == BASELINE else row_label(key)]
        for workload, field, _title in COLUMNS:
            line = find(results, key[0], key[1], workload)
            variant_free = line is not None and not line.get("variant")
            if line is None or (variant_free and not first_row_of(all_rows, key)):
                cells.append("")
                continue
            value = headline(line, field)
            if value is None:
                cells.append(status_text(line, time_limit))
                continue
            base_line = find(results, BASELINE, "", workload)
            base = headline(base_line, field) if base_line else None
            text = fmt_value(workload, field, value)
            if workload == DAG and line.get("executions") is not None:
                text += f", {line['executions']:,} runs"
            if workload == CACHE and line.get("memoization") is False:
                text += " †"
            if line.get("runs", 0) == 1 and workload in (W3, W4, DAG):
                text += " ¹"
            if key[0] != BASELINE:
                r = ratio(workload, value, base)
                text += f" ({fmt_ratio(r)})" if r is not None else ""
            cells.append(text)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# -- plots --------------------------------------------------------------------------------------


def plot_ratios(results: Sequence[Line], path: Path, time_limit: float) -> None:
    """One panel per workload: each peer's ratio to girder on Redis, on a log scale."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = [c for c in COLUMNS if c[1] != "p99_us"]
    all_rows = rows(results)
    peer_rows = [k for k in all_rows if k[0] != BASELINE]
    labels = [row_label(k) for k in peer_rows]
    colors = plt.get_cmap("tab10")
    systems = list(dict.fromkeys(k[0] for k in peer_rows))
    palette = {k: colors(systems.index(k[0]) % 10) for k in peer_rows}
    fig, axes = plt.subplots(2, 3, figsize=(13, 0.42 * len(peer_rows) * 2 + 2.5), sharey=True)
    for ax, (workload, field, title) in zip(axes.flat, panels, strict=False):
        base_line = find(results, BASELINE, "", workload)
        base = headline(base_line, field) if base_line else None
        shown: list[float] = []
        for pos, key in enumerate(peer_rows):
            line = find(results, key[0], key[1], workload)
            if line is None or (not line.get("variant") and not first_row_of(all_rows, key)):
                continue  # a variant-free figure: on the system's first row only
            value = ratio(workload, headline(line, field), base)
            status = str(line.get("status", "?"))
            if value is not None:
                closest = workload == CACHE and line.get("memoization") is False
                ax.barh(pos, value, color=palette[key], alpha=0.55 if closest else 0.9)
                note = fmt_ratio(value) + (" † closest equivalent" if closest else "")
                ax.text(value * 1.1, pos, note, va="center", fontsize=8)
                shown.append(value)
            elif status == "timeout" and base and LOWER_IS_BETTER[workload]:
                bound = time_limit / base
                ax.barh(pos, bound, color=palette[key], hatch="//", alpha=0.35)
                ax.text(bound * 1.1, pos, f"{status}: {TIMES}{bound:,.0f} or more", va="center",
                        fontsize=8, color="firebrick")  # fmt: skip
                shown.append(bound)
            else:
                text = "stopped by the harness" if status == "aborted" else status
                ax.text(1.1, pos, text, va="center", fontsize=8, color="firebrick")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        low = min([*shown, 0.5])
        high = max([*shown, 2.0])
        ax.set_xlim(max(low / 2, 1e-3), high * 15)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="major", alpha=0.25)
    for ax in axes.flat:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Each system against girder on Redis (2 worker processes), same run: "
        f"ratio above 1 ({TIMES}1, black line) means girder did better. Log scale.",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_points(results: Sequence[Line], system: str, workload: str) -> list[tuple[int, Line]]:
    points = {}
    for line in results:
        if line["system"] == system and line["workload"] == workload:
            points[int(line.get("workers", 2))] = line
    return sorted(points.items())


def plot_scaling(results: Sequence[Line], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, style in (("girder-redis", "o-"), ("girder-embedded", "s--")):
        for ax, workload, field in ((left, W2, "calls_per_second"), (right, W3, "seconds")):
            points = [
                (w, headline(line, field)) for w, line in scaling_points(results, system, workload)
            ]
            points = [(w, v) for w, v in points if v is not None]
            if points:
                ax.plot([w for w, _ in points], [v for _, v in points], style, label=system)
                for w, v in points:
                    ax.annotate(
                        f"{v:,.0f}" if field == "calls_per_second" else f"{v:.3f} s",
                        (w, v),
                        textcoords="offset points",
                        xytext=(4, 6),
                        fontsize=8,
                    )
    left.set_title("W2: trivial calls at once (calls/s, higher is better; log)", fontsize=10)
    right.set_title("W3: nested tree (seconds, lower is better; log)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("workers (worker processes for girder-redis)")
        ax.set_xticks([1, 2, 4])
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the page -----------------------------------------------------------------------------------

HOW_TO_RUN = """\
# Benchmarks

girder aims for a per-request overhead far below the "several milliseconds" that the original
girder set as its goal. The hot paths are computing keys, serializing, round trips to the
backend, and creating tasks and futures. The benchmarks in the repository's `benchmarks/` folder
measure them.

## Running them

From a checkout, with girder installed (see [Getting started](getting-started.md#install)):

```bash
python benchmarks/embedded.py            # the full run takes a few minutes
python benchmarks/embedded.py --quick    # a smoke run of a few seconds
```

`embedded.py` measures the embedded grid: `Grid.local` with the in-memory backend, in one process,
so no server is needed. Every configuration it measures prints one JSON line on stdout, and a
readable summary goes to stderr. Save stdout from two runs to compare them line by line:

```bash
python benchmarks/embedded.py > before.jsonl
# ... change something ...
python benchmarks/embedded.py > after.jsonl
```

### girder against Celery, Dask, Ray and arq

`benchmarks/compare/` runs the same workloads on girder and on its peers, on this machine, in one
command. The peers are optional dependencies, in the `bench` extra; `redis-server` must be on
`PATH` (the harness starts a throw-away one on a free loopback port and never touches a running
server). A peer that is not installed is skipped, with a note in the output.

```bash
pip install -e '.[bench]'
python -m benchmarks.compare                   # everything (about a quarter of an hour)
python -m benchmarks.compare --quick           # small sizes: a smoke run of a few minutes
python -m benchmarks.compare --systems girder-redis,dask --workloads W1,W3 --runs 5
python -m benchmarks.compare --jsonl run.jsonl # also keep the JSON lines in a file
python -m benchmarks.compare --report-from run.jsonl   # rewrite this page from a saved run
```

It prints one JSON line per system, variant and workload on stdout (`system`, `variant`,
`workload`, `status`, the figures as medians over the runs, and every run's figures), with
progress on stderr. A full run of every system and workload rewrites the section below and its
two plots; a partial or `--quick` run leaves them alone unless `--docs yes` is given.

## Results

Recorded results of `embedded.py` and `distributed.py`, and the machine each was measured on, are
kept in `benchmarks/README.md` in the repository. The comparison below is generated: it is
exactly what the command printed on the machine it names, so read it as a snapshot and re-run it
on your own machine.
"""


def _settings_of(results: Sequence[Line]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for line in compare_lines(results):
        if "settings" in line and line["system"] not in settings:
            settings[line["system"]] = line["settings"]
    return settings


def _settings_md(settings: dict[str, Any]) -> str:
    out = []
    for system, values in settings.items():
        out.append(f"- **{system}**")
        for name, value in values.items():
            if isinstance(value, dict):
                for sub, text in value.items():
                    out.append(f"    - {name}, `{sub}`: {text}")
            else:
                out.append(f"    - {name}: {value}")
    return "\n".join(out)


def _failures_md(results: Sequence[Line]) -> str:
    out = []
    for line in compare_lines(results):
        if line.get("status") in ("timeout", "deadlock", "aborted", "error"):
            label = row_label(row_key(line))
            out.append(
                f"- {label}, {line['workload']}: **{line['status']}**. {line.get('note', '')}"
            )
    return "\n".join(out) if out else "- none"


def _notes_md(results: Sequence[Line]) -> str:
    out = []
    for line in compare_lines(results):
        label = row_label(row_key(line))
        if line.get("status") == "ok" and line.get("note"):
            out.append(f"- {label}, {line['workload']}: {line['note']}")
        per_run = line.get("seconds_per_run") or []
        if len(per_run) > 1 and min(per_run) > 0 and max(per_run) / min(per_run) > 3:
            runs = ", ".join(f"{s:.3f}" for s in per_run)
            out.append(f"- {label}, {line['workload']}: the runs took {runs} s.")
        if line.get("variant") == "ray.get" and line.get("ray_worker_processes_max", 0) > 2:
            out.append(
                f"- {label}, {line['workload']}: up to {line['ray_worker_processes_max']} Ray "
                f"worker processes were alive ({line.get('ray_worker_rss_gib_max', '?')} GiB "
                "resident): a task blocked in `ray.get` lends its CPU slot back and Ray starts "
                "a new worker process for the next task; later runs reuse the idle ones."
            )
        if line.get("workload") == CACHE and line.get("measured"):
            out.append(f"- † {line['system']}, cache: measured {line['measured']}.")
    return "\n".join(out)


def _scaling_table(results: Sequence[Line]) -> str:
    out = ["| grid | workers | W2 calls/s | W3 tree |", "| --- | ---: | ---: | ---: |"]
    for system in ("girder-redis", "girder-embedded"):
        w2 = dict(scaling_points(results, system, W2))
        w3 = dict(scaling_points(results, system, W3))
        for workers in sorted(set(w2) | set(w3)):
            cells = []
            for line, field, workload in ((w2.get(workers), "calls_per_second", W2),
                                          (w3.get(workers), "seconds", W3)):  # fmt: skip
                value = headline(line, field) if line else None
                if value is not None:
                    cells.append(fmt_value(workload, field, value))
                else:
                    cells.append(line.get("status", "") if line else "")
            out.append(f"| {system} | {workers} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def page(results: Sequence[Line], meta: dict[str, Any]) -> str:
    sizes = Sizes.from_json(meta["sizes"])
    limit = float(meta["time_limit"])
    packages = ", ".join(f"{p} {v}" for p, v in meta["packages"].items())
    workloads = "\n".join(
        f"| {w} | {sizes.case(w)} | {DESCRIPTIONS[w]} |" for w in (W1, W2, W3, W4, CACHE, DAG)
    )
    dag = sizes.dag
    quick = " (**a `--quick` run: small sizes, not for comparison**)" if meta.get("quick") else ""
    return f"""{HOW_TO_RUN}
## girder against the field

Measured on {meta["date"]}{quick}, girder commit {meta.get("commit", "not recorded")}, with

```bash
{meta["command"]}
```

which took {meta["seconds"] / 60:.0f} minutes.

- **Machine**: {meta["cpus"]} cores ({meta["cpu_model"]}), {meta["memory_gib"]} GiB of memory,
  {meta["os"]}; a shared machine, so other work ran beside the benchmark and the figures move
  from run to run. Every ratio compares figures measured in the same run.
- **Python** {meta["python"]}; **Redis server** {meta["redis_server"]} on loopback TCP, one
  throw-away server for every system, emptied between systems.
- **Packages**: {packages}.
- Every system gets **two worker processes** on this machine. Each workload ran up to
  {meta["runs"]} times (no new run starts after {REPEAT_BUDGET:g} s of runs); the figures are
  medians. A run has a hard limit of {limit:g} s; a Redis-backed peer in which nothing changes
  for {meta["stall"]:g} s is declared deadlocked. Either way the system is reset (its workers
  killed and restarted), the status is recorded, and the workload is not run again.

### The workloads

| | size | what is measured |
| --- | --- | --- |
{workloads}

The sharing DAG: top(i) needs mid(i .. i+{dag.fanout - 1} mod {dag.mids}), mid(j) needs
leaf(j .. j+{dag.fanout - 1} mod {dag.leaves}): {dag.naive_executions:,} executions when every call
recomputes what it needs, {dag.distinct_nodes:,} distinct nodes. Every node burns
{dag.work_ms:g} ms of CPU and counts its execution (a Redis `INCR`, the same in every system).

### Figures and ratios

Each cell is the median figure and, in brackets, its ratio to **girder-redis** (girder with a
distributor and two `girder worker` processes on Redis) measured in the same run: the peer's time
divided by girder's, or girder's rate divided by the peer's. **Above 1, girder did better.**
girder-embedded (one process, in-memory backend) is not a peer but the floor without a network.
"runs" in the DAG column counts function executions. ¹ one run only. † not memoization: the
closest equivalent, see the notes. W1, W2 and the cache hit make no nested calls: they are on
the first row of each system.

{table(results, limit)}

![Each peer's ratio to girder on Redis, per workload]({RATIO_PLOT})

### Timeouts and deadlocks

{_failures_md(results)}

### Notes

{_notes_md(results) or "- none"}

### Settings of each system

Each peer runs in the fastest configuration found for it on this machine that is still an
honest, documented way to use it.

- **Nesting.** girder has one way: `girder.call_reentrant`, and a waiting request parks a
  coroutine. Celery is measured twice: with its recommended rewrite as a canvas built by the
  client (the graph is spelled out before it runs), and with `.get()` inside a task, which
  deadlocks as soon as every worker process waits. Ray is measured with `ray.get` inside tasks
  and with `ObjectRef`s passed as arguments. arq has only "enqueue, then poll", measured with
  arq's default `max_jobs=10` and with `max_jobs=1100`.
- **Sharing.** girder runs each distinct request once and serves the rest from the in-flight
  table and the cache. Dask names a task by its function and arguments and runs one task per
  name while its futures are held, so it also skips part of the repeated work. Celery, Ray and
  arq run every call they are given.
- **arq 0.25.** Every later arq caps redis-py below 6, which Celery 5.5 or later (through kombu)
  does not allow, so the `bench` extra resolves to arq 0.25.0. Two adaptations, both in
  arq's favour: results are polled the way arq 0.26 and later do it (0.25's `Job.result` has a
  race that raises `ResultNotFound`), and the worker's connection cap is lifted (redis-py 6 and
  later cap an asyncio pool at 100 connections, below 1,100 jobs at once).
- **The Ray guard.** A nested Ray workload is stopped by the harness once Ray runs 80 worker
  processes (about 7 GiB here): the machine is shared. It is recorded as stopped, not as a
  figure.
- Dask and Ray do not use Redis; their DAG functions still count executions there.

{_settings_md(_settings_of(results))}

### Scaling

girder on Redis with 1, 2 and 4 `girder worker` processes (and one distributor), and the
embedded grid with 1, 2 and 4 workers (coroutines in one process, so more workers cannot use a
second core). The machine has {meta["cpus"]} cores, shared by the client, the distributor, the
workers and Redis.

{_scaling_table(results)}

![girder scaling: W2 and W3 against the number of workers]({SCALING_PLOT})
"""


def write_page(results: Sequence[Line], meta: dict[str, Any], docs: Path) -> None:
    plot_ratios(results, docs / RATIO_PLOT, float(meta["time_limit"]))
    plot_scaling(results, docs / SCALING_PLOT)
    (docs / "benchmarks.md").write_text(page(results, meta))
