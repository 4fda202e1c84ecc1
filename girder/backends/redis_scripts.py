"""The Lua scripts of `RedisBackend`: their arguments, their reply codes, and how they are built.

Neither side spells an argument position or a reply code as a number. Each script's arguments are
declared here by name; the built script starts with `local node, into = ARGV[3], ARGV[4]`-style
lines generated from that declaration, and `RedisBackend` passes arguments by the same names. The
reply codes are constants rendered into every script and imported by the Python side.

A built script is: what it uses of the key-name prelude (`RedisKeys.lua_prelude`), the reply
codes and the shared helpers (`common.lua`), then the argument lines and the script's own body.
Every script gets two keys of the grid in KEYS: `leases`, and `migrating`, which never exists.
They name the grid's hash slot, in which every key a script derives lives; the absent one makes
a migration of that slot redirect the call before the script runs (see `redis_keys`).

The scripts of a slot of their own (`SLOT_SCRIPTS`, files `slot_<name>.lua`) are the exception:
they touch only the keys they are given in `KEYS`, the bytes of one blob and what lies beside
them, one cached result moved to its key's slot, or a node's own inbox (see `redis_keys`), and
use nothing of the prelude.

Scripts whose reply depends on what they changed (claims, hand-outs, moves) are *journaled*:
their first arguments are a call token, the lowest token the calling node still waits for, and
whether the call is sent again. A call whose reply was lost is sent again with the same token and
gets the first run's reply back instead of claiming or moving again (see `common.lua`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from girder.backends.redis_keys import RedisKeys, lua_constants

SUBMITTED_QUEUED = 0
"""`submit`, per request: registered as a waiter (and queued unless it runs)."""
SUBMITTED_DONE = 1
"""`submit`, per request: already done; the cached outcome follows."""
SUBMITTED_CYCLE = 2
"""`submit`, per request: the new wait edge closed a cycle; its keys follow."""
SUBMITTED_LOOK_AGAIN = 3
"""`submit`, per request: no record, and a result moved to its key's slot since the caller
looked there (`spread_results`): nothing was done; look there again."""

_REPLY_CODES = {
    "SUBMITTED_QUEUED": SUBMITTED_QUEUED,
    "SUBMITTED_DONE": SUBMITTED_DONE,
    "SUBMITTED_CYCLE": SUBMITTED_CYCLE,
    "SUBMITTED_LOOK_AGAIN": SUBMITTED_LOOK_AGAIN,
}

STEP_DONE = 1
"""A record's step (`redis_records`): the key is done by this step, or was (with its outcome)."""
STEP_PENDING = 2
"""A record's step: the key is pending (a submission's, a requeue's, a cancelled pending key)."""
STEP_RUNNING = 3
"""A record's step: the key runs, under the owner that follows (or is done: nothing changed)."""
STEP_CLAIMED = 4
"""A record's step: the key now runs under the claiming node; its payload follows."""
STEP_GONE = 5
"""A record's step: the key has no record, or is done, or is another's to finish."""
STEP_CRASHED = 6
"""A record's step: the key reached its most crashes and now runs under the reaper."""
STEP_KEPT = 7
"""A record's step of a cancellation: the key stays (done, gone, or still needed)."""

_STEP_CODES = {
    "STEP_DONE": STEP_DONE,
    "STEP_PENDING": STEP_PENDING,
    "STEP_RUNNING": STEP_RUNNING,
    "STEP_CLAIMED": STEP_CLAIMED,
    "STEP_GONE": STEP_GONE,
    "STEP_CRASHED": STEP_CRASHED,
    "STEP_KEPT": STEP_KEPT,
}

MAX_SCRIPT_KEYS = 1000
"""The most request keys one script call submits, hands to one volunteer, trims from one member
or moves back from a departed node, so that no call holds Redis for more than a few ms."""

MAX_CANCEL_STEP = 200
"""The most keys one `cancel` call looks at (the rest waits in the job's `cancelling` list)."""

MAX_SUBMIT_KEYS = 250
"""The most requests one `submit` call carries: a submitted request costs more than a moved key
(about 13 us of Redis time against 1), and no call should hold Redis for more than a few ms."""

MAX_SCRIPT_BYTES = 512 * 1024
"""The most bytes of payloads one `submit` call carries (unless one payload alone is larger)."""

LOOK_AGAIN_MS = 500
"""A submission whose look in the keys' own slots came this long before the latest drop of a
moved result's record looks again (see submit.lua); under the moves' delay (1 s), so that a
look made before a copy was written is always caught."""

MOVE_MIN_TTL_MS = 5000
"""A cached result that expires sooner than this stays in the grid's slot (see complete.lua)."""

CLEAR_JOURNAL_MS = 600 * 1000
"""How long the journal of a `cache_clear` lives at most (its client deletes it when done)."""

DEPARTED_MEMORY_MS = 24 * 3600 * 1000
"""How long the grid remembers that a node departed (notifications for it are dropped)."""

REQUEST_ARGS = ("key", "payload", "name")
"""The arguments of one request in `submit`'s repeated tail, in order (`name`: its function's,
for the events; '' when they are off)."""

COMPLETION_ARGS = ("key", "outcome", "cache", "ttl_ms", "function")
"""The arguments of one completion in `complete`'s repeated tail, in order (`cache`: '0', '1',
or 'm' to cache and move; `ttl_ms` 0: no expiry)."""

_JOURNAL_ARGS = ("token", "low", "again")


def events_slack(events_max: int) -> int:
    """How many entries past `events_max` the event list may grow before its oldest are dropped
    (in one LTRIM, so that a publication rarely pays for trimming)."""
    return events_max // 10 + 1


@dataclass(frozen=True, slots=True)
class ScriptSpec:
    """A script's name and the names of its arguments, in order."""

    name: str
    args: tuple[str, ...] = ()
    rest: str | None = None
    """The name of a repeated tail of arguments; the script reads them from ARGV[FIRST_<REST>]."""
    journaled: bool = False

    @property
    def all_args(self) -> tuple[str, ...]:
        return (*_JOURNAL_ARGS, *self.args) if self.journaled else self.args

    def lua_arguments(self) -> str:
        """`local a, b = ARGV[1], ARGV[2]` for the declared arguments (and FIRST_<REST>)."""
        names = self.all_args
        lines = []
        if names:
            positions = ", ".join(f"ARGV[{i}]" for i in range(1, len(names) + 1))
            lines.append(f"local {', '.join(names)} = {positions}")
        if self.rest is not None:
            lines.append(f"local FIRST_{self.rest.upper()} = {len(names) + 1}")
        return "\n".join(lines) + "\n"


SPECS = {
    spec.name: spec
    for spec in (
        ScriptSpec(
            "submit",
            (
                "node",
                "into",
                "on_top",
                "waiter",
                "dispatch",
                "claim",
                "job",
                "looked_at",
                "own_inbox",
            ),
            rest="requests",
            journaled=True,
        ),
        ScriptSpec("claim", ("node",), journaled=True),
        ScriptSpec(
            "complete",
            ("node", "claim", "volunteer_at", "failures", "mover"),
            rest="completions",
            journaled=True,
        ),
        ScriptSpec("publish", ("node", "key", "outcome")),
        ScriptSpec("acknowledge", ("node", "received")),
        ScriptSpec("take", ("node",)),
        ScriptSpec("volunteer", ("distributor", "node")),
        ScriptSpec("hand_out", ("distributor", "even_share"), journaled=True),
        ScriptSpec("trim", ("distributor",), rest="members", journaled=True),
        ScriptSpec("steal", ("distributor", "member", "count"), journaled=True),
        ScriptSpec("join", ("node", "kind", "distributor", "ttl_ms", "own_inbox")),
        ScriptSpec("heartbeat", ("node", "ttl_ms", "counters", "low")),
        ScriptSpec("leave", ("node",)),
        ScriptSpec("reap", ("reaper", "max_crashes"), journaled=True),
        ScriptSpec("reconcile", ("node",), rest="keep", journaled=True),
        ScriptSpec("cancel", ("node", "job", "below"), rest="roots", journaled=True),
        ScriptSpec("ask_to_cancel", ("owner", "job")),
        ScriptSpec("nodes"),
        ScriptSpec("members", ("distributor",)),
        ScriptSpec("blob_hold", ("digest", "holder", "until_done")),
        ScriptSpec("blob_due", ("grace_ms", "until_ms", "limit")),
        ScriptSpec("blob_sweep", ("cutoff",), rest="digests"),
        ScriptSpec("blob_forget", ("cutoff", "deadline"), rest="digests"),
        ScriptSpec("blob_index", rest="digests"),
        ScriptSpec("cache_entries", rest="keys"),
        ScriptSpec("cache_drop", ("node", "fn_name", "every"), rest="keys", journaled=True),
        ScriptSpec("result_drop", ("node", "mover"), rest="moved", journaled=True),
        ScriptSpec("events_read", ("start", "count")),
        ScriptSpec(
            "shard_push", ("node", "into", "on_top", "dispatch", "count"), "rest", journaled=True
        ),
        ScriptSpec(
            "shard_claim",
            ("node", "count", "volunteer_at", "ndone", "ntold"),
            "rest",
            journaled=True,
        ),
        ScriptSpec("shard_events", ("node",), rest="events", journaled=True),
        ScriptSpec("shard_cursor", ("node", "job", "done"), rest="entries", journaled=True),
        ScriptSpec("shard_hand_out", ("distributor", "even_share"), "unclaimable", True),
        ScriptSpec("shard_dead", ("reaper",)),
        ScriptSpec("shard_reap", ("reaper",), rest="rest", journaled=True),
        ScriptSpec("shard_leave", ("node",), rest="pending"),
        ScriptSpec("shard_reconcile", ("node", "ndrop"), rest="rest", journaled=True),
        ScriptSpec("shard_functions"),
        ScriptSpec("shard_blob_sweep", ("cutoff", "nreferring"), rest="rest"),
    )
}


@dataclass(frozen=True, slots=True)
class Script:
    """A built script: its spec, full source and SHA1 (for EVALSHA)."""

    spec: ScriptSpec
    source: str
    sha: str


SLOT_SCRIPTS = (
    "blob_store",
    "blob_reuse",
    "blob_publish",
    "blob_drop",
    "result_unset",
    "inbox_post",
    "inbox_settle",
    "inbox_take",
)
"""The scripts that run in a slot of their own: a blob's, a moved result's, or a node's own
inbox's."""

OWN_INBOX_TTL_MS = 3600 * 1000
"""How long a node's own inbox (and taken list) lives after the last post to it, or the last
take from it: the node deletes both when it leaves, and so does the reaper of a dead node; this
bounds what a post that comes after those (or a process that dies between) leaves behind. A
live node takes from its inbox every `idle_poll`; a notification lost to the expiry all the
same is made up by the waiter's own checks (it submits again what it waited long for)."""


RECORD_SPECS = {
    spec.name: spec
    for spec in (
        ScriptSpec("record_submit", ("again", "node", "job", "waiter", "payload", "token")),
        ScriptSpec("record_claim", ("node",)),
        ScriptSpec("record_complete", ("again", "node", "outcome", "cache", "ttl_ms", "fn")),
        ScriptSpec("record_requeue", ("owner", "max_crashes")),
        ScriptSpec("record_hand_over", ("from", "to")),
        ScriptSpec("record_drop", ("again", "fn")),
        ScriptSpec("record_publish", ("node", "outcome")),
        ScriptSpec("record_cancel", ("again", "drop", "job")),
        ScriptSpec("record_edges"),
        ScriptSpec("record_orphan", ("status", "mark")),
    )
}
"""The records' steps of the sharded layout: scripts of one request key's own slot, over its
record alone (KEYS[1]; KEYS[2] is the slot's migration probe; KEYS[3], for those with an
`again` argument, the call's journal entry: see `redis_records`). The grid's steps of that
layout are among `SPECS` (`shard_<name>`)."""

STEP_JOURNAL_MS = 30 * 1000
"""How long a record's step keeps its reply for a resend (see record_common.lua): past the
longest a lost reply waits for its resend but an outage; after one longer, a resend answers
what the first run left, and what it missed is made up by the waiters' resubmissions."""

_RECORD_OVERRIDES = ("note_corrupt", "read_record")
"""common.lua's helpers that name the grid's keys, which record_common.lua replaces."""


def build_slot_scripts() -> dict[str, Script]:
    """The scripts of `SLOT_SCRIPTS`, as they are (their keys come in `KEYS`), and the records'
    steps of the sharded layout (`RECORD_SPECS`), built like the grid's scripts but from what
    names no key: the field names and codes, record_common.lua, and the helpers of common.lua
    it does not replace."""
    folder = resources.files("girder.backends").joinpath("lua")
    scripts = {}
    for name in SLOT_SCRIPTS:
        source = folder.joinpath(f"slot_{name}.lua").read_text()
        scripts[name] = Script(ScriptSpec(name), source, hashlib.sha1(source.encode()).hexdigest())
    codes = "".join(f"local {name} = {value}\n" for name, value in _STEP_CODES.items())
    codes += f"local STEP_JOURNAL_MS = {STEP_JOURNAL_MS}\n"
    own = _definitions(lua_constants() + codes + folder.joinpath("record_common.lua").read_text())
    shared = [
        (name, text)
        for name, text in _definitions(folder.joinpath("common.lua").read_text())
        if name not in _RECORD_OVERRIDES
    ]
    for name, spec in RECORD_SPECS.items():
        body = spec.lua_arguments() + folder.joinpath(f"{name}.lua").read_text()
        source = _needed(own + shared, body) + body
        scripts[name] = Script(spec, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts


def _lua_constants(grid_tick_ms: int, events_max: int, events_watch_ms: int) -> str:
    lines = [f"local {name} = {value}" for name, value in _REPLY_CODES.items()]
    lines.append(f"local EVENTS_MAX = {events_max}")
    lines.append(f"local EVENTS_WATCH_MS = {events_watch_ms}")
    lines.append(f"local EVENTS_SLACK = {events_slack(events_max)}")
    lines.append(f"local GRID_TICK_MS = {grid_tick_ms}")
    lines.append(f"local MAX_SCRIPT_KEYS = {MAX_SCRIPT_KEYS}")
    lines.append(f"local DEPARTED_MEMORY_MS = {DEPARTED_MEMORY_MS}")
    lines.append(f"local CLEAR_JOURNAL_MS = {CLEAR_JOURNAL_MS}")
    lines.append(f"local MOVE_MIN_TTL_MS = {MOVE_MIN_TTL_MS}")
    lines.append(f"local LOOK_AGAIN_MS = {LOOK_AGAIN_MS}")
    lines.append(f"local MAX_CANCEL_STEP = {MAX_CANCEL_STEP}")
    lines.append(f"local REQUEST_ARGS = {len(REQUEST_ARGS)}")
    lines.append(f"local COMPLETION_ARGS = {len(COMPLETION_ARGS)}")
    return "\n".join(lines) + "\n"


_DEFINITION = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _definitions(source: str) -> list[tuple[str, str]]:
    """The top-level definitions of a Lua source, as (name, text) in order: each runs from its
    `local [function] name` line (with the comment lines just above it) to the next one."""
    starts = [match.start() for match in _DEFINITION.finditer(source)]
    chunks = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(source)
        text = source[start:end]
        name = _DEFINITION.match(text)
        assert name is not None
        chunks.append((name.group(1), text))
    return chunks


def _needed(definitions: list[tuple[str, str]], body: str) -> str:
    """The definitions that `body` uses, directly or through each other, in their order.

    Redis runs a script's whole text at every call, and every `local function` there is a new
    closure each time: a script that carried every helper would pay for all of them."""
    texts = dict(definitions)
    wanted: set[str] = set()
    pending = [body]
    while pending:
        for name in set(_NAME.findall(pending.pop())) & texts.keys() - wanted:
            wanted.add(name)
            pending.append(texts[name])
    return "".join(text for name, text in definitions if name in wanted)


def build_scripts(
    keys: RedisKeys, grid_tick_ms: int = 2000, events_max: int = 0, events_watch_ms: int = 30_000
) -> dict[str, Script]:
    """Every script of the grid whose key names are `keys`. `grid_tick_ms` is the most the
    grid's clock advances between two heartbeats (see `grid_time` in common.lua): twice the
    heartbeat interval. `events_max` caps the event stream (0: publish no events);
    `events_watch_ms` is how long a read of the events keeps them published."""
    folder = resources.files("girder.backends").joinpath("lua")
    constants = _lua_constants(grid_tick_ms, events_max, events_watch_ms)
    common = keys.lua_prelude() + constants + folder.joinpath("common.lua").read_text()
    definitions = _definitions(common)
    scripts = {}
    for name, spec in SPECS.items():
        body = spec.lua_arguments() + folder.joinpath(f"{name}.lua").read_text()
        source = _needed(definitions, body) + body
        scripts[name] = Script(spec, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts
