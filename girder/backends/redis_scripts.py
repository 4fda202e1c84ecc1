"""The Lua scripts of `RedisBackend`: their arguments, their reply codes, and how they are built.

Neither side spells an argument position or a reply code as a number. Each script's arguments are
declared here by name; the built script starts with `local node, into = ARGV[3], ARGV[4]`-style
lines generated from that declaration, and `RedisBackend` passes arguments by the same names. The
reply codes are constants rendered into every script and imported by the Python side.

A built script is: the key-name prelude (`RedisKeys.lua_prelude`), the reply codes, the shared
helpers (`common.lua`), the argument lines, then the script's own body. Every script gets the grid's
anchor key as KEYS[1]: it names the grid's hash slot, in which every key a script derives lives.

Scripts whose reply depends on what they changed (claims, hand-outs, moves) are *journaled*:
their first two arguments are a call token and the lowest token the calling node still waits
for. A call whose reply was lost can be sent again with the same token and gets the first call's
reply back instead of claiming or moving again (see `common.lua`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from girder.backends.redis_keys import RedisKeys

SUBMITTED_QUEUED = 0
"""`submit`, per request: registered as a waiter (and queued unless it runs)."""
SUBMITTED_DONE = 1
"""`submit`, per request: already done; the cached outcome follows."""
SUBMITTED_CYCLE = 2
"""`submit`, per request: the new wait edge closed a cycle; its keys follow."""

_REPLY_CODES = {
    "SUBMITTED_QUEUED": SUBMITTED_QUEUED,
    "SUBMITTED_DONE": SUBMITTED_DONE,
    "SUBMITTED_CYCLE": SUBMITTED_CYCLE,
}

MAX_SCRIPT_KEYS = 1000
"""The most request keys one script call submits, hands to one volunteer, trims from one member
or moves back from a departed node, so that no call holds Redis for more than a few ms."""

MAX_SCRIPT_BYTES = 512 * 1024
"""The most bytes of payloads one `submit` call carries (unless one payload alone is larger)."""

DEPARTED_MEMORY_MS = 24 * 3600 * 1000
"""How long the grid remembers that a node departed (notifications for it are dropped)."""

_JOURNAL_ARGS = ("token", "low")


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
            ("node", "into", "on_top", "waiter", "dispatch", "claim"),
            rest="requests",
            journaled=True,
        ),
        ScriptSpec("claim", ("node",), journaled=True),
        ScriptSpec(
            "complete", ("node", "claim", "volunteer_at"), rest="completions", journaled=True
        ),
        ScriptSpec("acknowledge", ("node", "received")),
        ScriptSpec("take", ("node",)),
        ScriptSpec("volunteer", ("distributor", "node")),
        ScriptSpec("hand_out", ("distributor", "even_share"), journaled=True),
        ScriptSpec("trim", ("distributor",), rest="members", journaled=True),
        ScriptSpec("steal", ("distributor", "member", "count"), journaled=True),
        ScriptSpec("join", ("node", "kind", "distributor", "ttl_ms")),
        ScriptSpec("heartbeat", ("node", "ttl_ms")),
        ScriptSpec("leave", ("node",)),
        ScriptSpec("reap", ("reaper", "max_crashes"), journaled=True),
        ScriptSpec("reconcile", ("node",), rest="keep", journaled=True),
        ScriptSpec("nodes"),
        ScriptSpec("members", ("distributor",)),
    )
}


@dataclass(frozen=True, slots=True)
class Script:
    """A built script: its spec, full source and SHA1 (for EVALSHA)."""

    spec: ScriptSpec
    source: str
    sha: str


def _lua_constants() -> str:
    lines = [f"local {name} = {value}" for name, value in _REPLY_CODES.items()]
    lines.append(f"local MAX_SCRIPT_KEYS = {MAX_SCRIPT_KEYS}")
    lines.append(f"local DEPARTED_MEMORY_MS = {DEPARTED_MEMORY_MS}")
    return "\n".join(lines) + "\n"


def build_scripts(keys: RedisKeys) -> dict[str, Script]:
    """Every script of the grid whose key names are `keys`."""
    folder = resources.files("girder.backends").joinpath("lua")
    head = keys.lua_prelude() + _lua_constants() + folder.joinpath("common.lua").read_text()
    scripts = {}
    for name, spec in SPECS.items():
        body = folder.joinpath(f"{name}.lua").read_text()
        source = head + spec.lua_arguments() + body
        scripts[name] = Script(spec, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts
