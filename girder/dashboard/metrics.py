"""`/metrics`: the grid in the Prometheus text exposition format (version 0.0.4).

Rendered by hand from a `GridModel` (no client library needed at run time): requests by function and
outcome, latency histograms by function (claim to completion), work-list depths by node, and node
counts by kind and liveness, and each Redis server's memory, CPU time, commands and keys (labelled
by address, with whether it serves the grid's own slot). The counters count what the dashboard has
seen since it started (Prometheus handles the resets of a restarted dashboard as of any restarted
process).
"""

from __future__ import annotations

from collections import Counter

from girder.dashboard.model import LATENCY_BUCKETS, GridModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def render(model: GridModel) -> str:
    """The metrics of `model` as Prometheus text."""
    lines = [
        "# HELP girder_requests_total Requests by function and outcome "
        "(finished, failed, cached: served from the cache).",
        "# TYPE girder_requests_total counter",
    ]
    for (function, outcome), total in sorted(model.outcomes.items()):
        lines.append(f"girder_requests_total{_labels(function=function, outcome=outcome)} {total}")
    lines += [
        "# HELP girder_request_duration_seconds Time from claim to completion, by function.",
        "# TYPE girder_request_duration_seconds histogram",
    ]
    for function, counts in sorted(model.latency.items()):
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            labels = _labels(function=function, le=_number(bound))
            lines.append(f"girder_request_duration_seconds_bucket{labels} {_number(count)}")
        observed = _number(counts[-1])
        everything = _labels(function=function, le="+Inf")
        lines.append(f"girder_request_duration_seconds_bucket{everything} {observed}")
        lines.append(
            f"girder_request_duration_seconds_sum{_labels(function=function)} {_number(counts[-2])}"
        )
        lines.append(
            f"girder_request_duration_seconds_count{_labels(function=function)} {observed}"
        )
    lines += [
        "# HELP girder_queue_depth Length of each node's work list (stack or queue).",
        "# TYPE girder_queue_depth gauge",
    ]
    for name, node in sorted(model.nodes.items()):
        if node.alive:
            lines.append(f"girder_queue_depth{_labels(node=name, kind=node.kind)} {node.work}")
    lines += [
        "# HELP girder_nodes Nodes by kind and liveness.",
        "# TYPE girder_nodes gauge",
    ]
    kinds = Counter((node.kind, "true" if node.alive else "false") for node in model.nodes.values())
    for (kind, alive), count in sorted(kinds.items()):
        lines.append(f"girder_nodes{_labels(kind=kind, alive=alive)} {count}")
    lines += _server_lines(model)
    lines += [
        "# HELP girder_events_total Grid events the dashboard has read.",
        "# TYPE girder_events_total counter",
        f"girder_events_total {model.events_seen}",
    ]
    return "\n".join(lines) + "\n"


_SERVER_FIGURES = (
    ("memory_bytes", "gauge", "Bytes of memory the server uses (used_memory).", "memory"),
    ("cpu_seconds_total", "counter", "CPU time the server has used.", "cpu_seconds"),
    ("commands_total", "counter", "Commands the server has run.", "commands"),
    ("keys", "gauge", "Keys in the grid's database on the server.", "keys"),
)


def _server_lines(model: GridModel) -> list[str]:
    """Each server's figures, as the last sample of `StateBackend.servers` gave them."""
    lines: list[str] = []
    for name, kind, text, attribute in _SERVER_FIGURES:
        lines += [
            f"# HELP girder_redis_{name} {text} By server; grid_slot: it holds the live state.",
            f"# TYPE girder_redis_{name} {kind}",
        ]
        for load in model.servers:
            labels = _labels(server=load.address, grid_slot="true" if load.grid_slot else "false")
            lines.append(f"girder_redis_{name}{labels} {_number(getattr(load, attribute))}")
    return lines
