"""Every Redis key (and hash field) that `RedisBackend` uses, in one place.

All keys of a grid's own state start with `{<key_prefix>}:`. The braces make the prefix a Redis
Cluster hash tag, so that state lives in one slot and one Lua script may touch any of it. Only
the bytes of blobs live elsewhere, each blob in the slot of its digest (see below). The Lua
scripts spell no names themselves: each starts with `RedisKeys.lua_prelude()`, which renders this
same layout as Lua functions (`k_record(key)`, `k_work(node)`, ...) and constants.

Per request key:
    r:<key>            hash, the request's whole state in one key: F_STATUS (pending/running/done),
                       F_PAYLOAD (until done), F_OUTCOME and F_FUNCTION (when done: the id of its
                       function in `functions`), F_OWNER (when running), F_MOVER (when done:
                       the token of the move taking it to its own slot, see `redis_results`),
                       F_CRASHES (times its worker died running it), F_PARTIAL (the latest
                       partial outcome of a streaming run, until done); and an empty field per
                       member, named by a two-byte prefix and the member: F_WAITER <node> (a node
                       waiting for the outcome; F_OWN_WAITER <node> for one whose inbox is in
                       its own slot), F_ROOT <job> (a job that submitted the key at the
                       top level), F_WAITS <key> (a key this key waits for: a wait-for edge out of
                       it) and F_WAITED_BY <key> (a key waiting for this one: the same edge,
                       reversed; a waiting key of 64 characters without a member prefix, as request
                       keys are, is the field's name itself). A record may hold edges only (a
                       waiting key that has no record): it has no status, and goes when its last
                       edge does.
                       A done record is the cached result, and holds no member and no payload
                       (nothing runs it again; a submission that makes it pending again brings its
                       payload): the only state of the grid with an expiry (its TTL), so under a
                       volatile-* `maxmemory-policy` it is the only state Redis may evict (the
                       journal of a `cache_clear` expires too: it is fine to lose).
                       The payload and the outcome are *chunked*: a value of at most
                       CHUNKS * CHUNK_BYTES bytes is split into fields of CHUNK_BYTES (F_PAYLOAD,
                       F_PAYLOAD "2", ... F_PAYLOAD "<CHUNKS>"), a longer one is stored whole in
                       the first.
                       Why one key, and why chunks: a key costs Redis far more than a field
                       (its entry in the keyspace, its object, its name), and Redis keeps a
                       hash whose fields and values are all at most 64 bytes long
                       (`hash-max-listpack-value`) as one compact listpack, while one longer
                       name or value makes it a hashtable of several times the size.
Per blob (a large value or request's arguments, named by the SHA-256 of its bytes), in the
grid's slot:
    blobholders:<digest> set of request keys that stored the blob (whose records refer to it)
    blobuntildone:<digest> set of request keys that stored the blob for their arguments or a
                       partial answer: their records refer to it only until they are done
Per blob, in a slot of its own: these keys carry the hash tag `{<key_prefix>/<digest>}` instead
(`RedisKeys.blob` and below), so that on a Redis Cluster the bytes spread over the primaries
by their digest, while the index (`blobs`) and the holders stay in the grid's slot. Nothing
spells these names in Lua: the scripts of the blob's slot get them in KEYS.
    {<key_prefix>/<digest>}:blob      string: the bytes
    {<key_prefix>/<digest>}:blobgen   string: a token that every put or reuse of the blob
                       replaces (a sweep deletes the bytes only if it is still the one it read
                       before it found the blob unheld: see `RedisBackend.sweep_blobs`)
    {<key_prefix>/<digest>}:blobpart:<nonce> string: a large blob being written in parts
                       (expires if its writer dies; renamed to `blob` when whole)
Per cached result moved to its own slot (`Settings.spread_results`, see `redis_results`): the
hash tag `{<key_prefix>:<request key>}`, so that on a Redis Cluster cached results spread over
the primaries by their keys. Nothing spells this name in Lua: the scripts get it in KEYS.
    {<key_prefix>:<key>}:v   string: "<function id>:<outcome>" (the id as in `functions`), with
                       the TTL the done record had; the done record in the grid's slot goes once
                       this is written
Per request key whose record lives in its own slot (the records' steps, see `redis_records`):
the same hash tag. Nothing spells these names in Lua: the steps get them in KEYS.
    {<key_prefix>:<key>}:r   hash: the request's record, as `r:<key>` below, but that its
                       waiters are all F_OWN_WAITER (their inboxes are in their own slots)
    {<key_prefix>:<key>}:s:<token>  string: the reply of a record's step whose reply depends on
                       what it changed, kept STEP_JOURNAL_MS for a resend (see record_common.lua)
    {<key_prefix>:<key>}:migrating  never exists: the slot's migration probe (as `migrating`)
Per node whose notifications live in its own slot (`Settings.spread_notifications`, see
`redis_inboxes`): the hash tag `{<key_prefix>:node:<node>}`, so that on a Redis Cluster the
nodes' inboxes, and the waits on them, spread over the primaries. Nothing spells these names in
Lua: the grid's scripts report what is to be posted there, and the scripts of that slot get the
names in KEYS. The node's hash (`node:<node>`) says where its inbox is (F_OWN_INBOX).
    {<key_prefix>:node:<node>}:inbox      list: as `inbox:<node>` below, expiring (OWN_INBOX_TTL_MS
                       after the last post) so that one posted after the node left goes too
    {<key_prefix>:node:<node>}:taken      list: as `taken:<node>` below, expiring the same way
    {<key_prefix>:node:<node>}:posted     hash: the tokens of the latest posts to the inbox (a
                       post sent again after its reply was lost posts nothing twice), expiring
                       the same way
    {<key_prefix>:node:<node>}:migrating  never exists: declared by the slot's scripts, so a
                       migration of the slot redirects them before they run (as `migrating`)
Per job:
    cancelling:<job>   list: the keys a cancellation of the job still has to look at
Per node:
    work:<node>        list: the node's stack or queue; the right end is the top
    running:<node>     set of keys the node runs
    volunteers:<node>  list: a distributor's volunteer queue, oldest on the left
    volunteered:<node> set of distributors whose volunteer queues may hold the node
    inbox:<node>       list of notifications ("<len(key)>:<key><outcome>"), partial answers
                       ("~<len(key)>:<key><outcome>") and cancellation notices
                       ("!<len(key)>:<key><job>")
    taken:<node>       the notification a blocking wait moved out of the inbox (re-read by the
                       next drain, so a reply lost in transit loses no notification)
    wake:<node>        list holding at most one token: "the work list or volunteers got something"
    node:<node>        hash: F_KIND, F_DISTRIBUTOR (membership), F_COUNTERS (the node's
                       counters, JSON, from its last heartbeat), F_OWN_CLOCK (the clock its
                       last own heartbeat got: see heartbeat.lua), F_OWN_INBOX ('1' when
                       the node's notifications go to its own slot: see above)
    members:<node>     set of nodes whose distributor is this node
    journal:<node>     hash: call token -> the packed reply of a script call that claimed work,
                       kept until the node confirms the reply arrived (a resent call returns it
                       instead of claiming again)
    orphans:<node>     hash: a distributor's departed members whose lists were too long to
                       move back at once (its `trim` fetches the rest)
Per grid:
    leases             sorted set: node -> lease expiry in grid milliseconds (see timekeeper)
    pops               hash: node -> keys it claimed (or handed out) since its last trim
    clock              integer raised by every heartbeat: if it ever goes down, the server lost
                       writes (restored from an older snapshot) and the nodes reconcile
    corrupt            list: the last keys found holding garbage of the wrong type (deleted)
    departed           sorted set: node -> when it left or was reaped (notifications for it are
                       dropped; forgotten after a day, or when a node of that name joins)
    timekeeper         hash: server (server ms) and grid (grid ms) at the last heartbeat, join or
                       reap: the grid's clock runs with the server's, but at most a tick at a
                       time, so that a stalled server does not make every lease run out
    farewells          hash: departed node -> how many keys its `leave` handed back (what a
                       repeated `leave` answers; forgotten with `departed`)
    events             list of the grid's events, about `Settings.events_max` entries (the
                       oldest dropped first): one entry per script call that had events to
                       publish, the server's time (seconds \x1f microseconds) then its events,
                       joined by \x1e, each its fields joined by \x1f: kind, node, key, name,
                       parent, job, detail
    eventsbase         counter: the number of the first entry of `events` (entries dropped)
    eventswatched      string, expiring `Settings.events_watch` after the last read of
                       `events`: while it exists, scripts publish events; without it, none
    blobs              sorted set: digest -> when the blob was last put or checked (server ms)
    resultsdropped     string: the server time (ms) of the latest `result_drop` that deleted a
                       record whose result moved to its own slot (`spread_results`): a submission
                       whose look in the keys' slots came well before it looks again; and its
                       existence tells every process that results have moved (so that one
                       without the setting looks for them too)
    layout             string: "sharded" when the grid keeps its records in their own slots
                       (`Settings.layout`, see `sharded`); absent in the one-slot layout. Each
                       process checks it when it connects, and refuses a grid of the other
    migrating          never written: every script of the grid declares it in KEYS beside
                       `leases`, so that while the grid's slot is being migrated (a resharding)
                       the server answers TRYAGAIN or ASK instead of running the script (a key
                       declared but absent on a migrating slot redirects the call). A script run
                       on the source would stop at the first key already moved, its earlier
                       writes made (Redis has no rollback): the grid waits for the move instead
    functions          hash: the function table: FUNCTION_NAME <name> -> a short id, and
                       FUNCTION_ID <id> -> the name, for every function with a cached result
                       (made by the first one: a done record holds the id, a byte or two,
                       instead of a module path; never trimmed: one pair per function)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from girder.errors import ConfigurationError

RECORD = "r:"
WORK = "work:"
RUNNING_SET = "running:"
VOLUNTEERS = "volunteers:"
VOLUNTEERED = "volunteered:"
INBOX = "inbox:"
TAKEN = "taken:"
WAKE = "wake:"
NODE = "node:"
MEMBERS = "members:"
JOURNAL = "journal:"
CANCELLING = "cancelling:"
ORPHANS = "orphans:"
LEASES = "leases"
MIGRATING = "migrating"
POPS = "pops"
CLOCK = "clock"
CORRUPT = "corrupt"
DEPARTED = "departed"
FAREWELLS = "farewells"
TIMEKEEPER = "timekeeper"
EVENTS = "events"
EVENTS_BASE = "eventsbase"
EVENTS_WATCHED = "eventswatched"
BLOB = "blob"
BLOB_GEN = "blobgen"
BLOB_HOLDERS = "blobholders:"
BLOB_UNTIL_DONE = "blobuntildone:"
BLOB_PART = "blobpart:"
BLOBS = "blobs"
SPREAD_RESULT = "v"
OWN_RECORD = "r"
OWN_STEP = "s:"
RESULTS_DROPPED = "resultsdropped"
LAYOUT = "layout"
FUNCTIONS = "functions"

F_STATUS = "s"
F_PAYLOAD = "pl"
F_OUTCOME = "v"
F_OWNER = "o"
F_CRASHES = "c"
F_PARTIAL = "pt"
F_FUNCTION = "f"
F_SUBMITTED = "k"
"""In a pending record in its own slot (the sharded layout): the token of the submission that
made it, until it is claimed (see record_submit.lua)."""
F_MOVER = "m"
"""In a done record: the token of the one move that may take it to its key's own slot (see
`redis_results`)."""
F_WAITER = "w:"
"""The prefix of a waiter's field (`w:<node>`); no fixed field name holds a colon."""
F_OWN_WAITER = "i:"
"""The prefix of the field of a waiter whose inbox is in its own slot (`i:<node>`, see
`redis_inboxes`)."""
F_ROOT = "r:"
"""The prefix of a root's field (`r:<job>`)."""
F_WAITS = "a:"
"""The prefix of the field of a key the record's key waits for (`a:<key>`)."""
F_WAITED_BY = "b:"
"""The prefix of the field of a key waiting for the record's key (`b:<key>`), unless bare."""
F_KIND = "kind"
F_DISTRIBUTOR = "dist"
F_COUNTERS = "ctr"
F_OWN_CLOCK = "own"
F_OWN_INBOX = "ib"
OWN_INBOX = "inbox"
OWN_TAKEN = "taken"
OWN_POSTED = "posted"
FUNCTION_NAME = "n:"
"""In `functions`: the prefix of a function name's field (`n:<name>` -> its id)."""
FUNCTION_ID = "i:"
"""In `functions`: the prefix of a function id's field (`i:<id>` -> its name)."""

CHUNK_BYTES = 64
"""The most bytes of one chunk of a chunked value: Redis's default `hash-max-listpack-value`."""
CHUNKS = 8
"""The most chunks of a chunked value; a value over CHUNKS * CHUNK_BYTES is stored whole."""

PENDING = "p"
RUNNING = "r"
DONE = "d"

_PER_ID = {
    "record": RECORD,
    "work": WORK,
    "running": RUNNING_SET,
    "volunteers": VOLUNTEERS,
    "volunteered": VOLUNTEERED,
    "inbox": INBOX,
    "taken": TAKEN,
    "wake": WAKE,
    "node": NODE,
    "members": MEMBERS,
    "journal": JOURNAL,
    "orphans": ORPHANS,
    "cancelling": CANCELLING,
    "blob_holders": BLOB_HOLDERS,
    "blob_until_done": BLOB_UNTIL_DONE,
}
_GLOBAL = {
    "LEASES": LEASES,
    "POPS": POPS,
    "CLOCK": CLOCK,
    "CORRUPT": CORRUPT,
    "DEPARTED": DEPARTED,
    "FAREWELLS": FAREWELLS,
    "TIMEKEEPER": TIMEKEEPER,
    "EVENTS": EVENTS,
    "EVENTS_BASE": EVENTS_BASE,
    "EVENTS_WATCHED": EVENTS_WATCHED,
    "BLOBS": BLOBS,
    "FUNCTIONS": FUNCTIONS,
    "RESULTS_DROPPED": RESULTS_DROPPED,
}
_CONSTANTS = {
    "F_STATUS": F_STATUS,
    "F_PAYLOAD": F_PAYLOAD,
    "F_OUTCOME": F_OUTCOME,
    "F_OWNER": F_OWNER,
    "F_CRASHES": F_CRASHES,
    "F_PARTIAL": F_PARTIAL,
    "F_FUNCTION": F_FUNCTION,
    "F_MOVER": F_MOVER,
    "F_SUBMITTED": F_SUBMITTED,
    "F_WAITER": F_WAITER,
    "F_OWN_WAITER": F_OWN_WAITER,
    "F_ROOT": F_ROOT,
    "F_WAITS": F_WAITS,
    "F_WAITED_BY": F_WAITED_BY,
    "F_KIND": F_KIND,
    "F_DISTRIBUTOR": F_DISTRIBUTOR,
    "F_COUNTERS": F_COUNTERS,
    "F_OWN_CLOCK": F_OWN_CLOCK,
    "F_OWN_INBOX": F_OWN_INBOX,
    "FUNCTION_NAME": FUNCTION_NAME,
    "FUNCTION_ID": FUNCTION_ID,
    "PENDING": PENDING,
    "RUNNING": RUNNING,
    "DONE": DONE,
}


def chunk_fields(field: str) -> tuple[str, ...]:
    """The fields that hold the chunks of a chunked value of `field`, in order."""
    return (field, *(f"{field}{index}" for index in range(2, CHUNKS + 1)))


def chunked(field: str, value: bytes) -> dict[str, bytes]:
    """The fields (of `chunk_fields(field)`) that store `value`; the others must be absent."""
    if len(value) <= CHUNK_BYTES or len(value) > CHUNKS * CHUNK_BYTES:
        return {field: value}
    names = chunk_fields(field)
    return {
        names[index]: value[start : start + CHUNK_BYTES]
        for index, start in enumerate(range(0, len(value), CHUNK_BYTES))
    }


def unchunked(replies: Sequence[bytes | None]) -> bytes | None:
    """The value whose chunks are `replies` (an HMGET of `chunk_fields`), or None without one."""
    parts: list[bytes] = []
    for part in replies:
        if part is None:
            break
        parts.append(part)
    return b"".join(parts) if parts else None


_NOT_IN_DIGEST = re.compile(r"[{}/]")


def _glob_escaped(text: str) -> str:
    """`text` with the special characters of a SCAN pattern escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal (every byte escaped, so any prefix is safe)."""
    return '"' + "".join(f"\\{byte:03d}" for byte in text.encode()) + '"'


class RedisKeys:
    """The key names of one grid, under `{prefix}:`."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"key_prefix {prefix!r} must be non-empty and contain no braces "
                "(it becomes the Redis Cluster hash tag)"
            )
        self.prefix = prefix
        self.base = "{" + prefix + "}:"
        self.leases = self.base + LEASES
        self.migrating = self.base + MIGRATING
        self.pops = self.base + POPS
        self.corrupt = self.base + CORRUPT
        self.blobs = self.base + BLOBS
        self.functions = self.base + FUNCTIONS
        self.results_dropped = self.base + RESULTS_DROPPED
        self.layout = self.base + LAYOUT
        self.departed = self.base + DEPARTED

    def record(self, key: str) -> str:
        return self.base + RECORD + key

    def work(self, node: str) -> str:
        return self.base + WORK + node

    def volunteers(self, distributor: str) -> str:
        return self.base + VOLUNTEERS + distributor

    def blob_holders(self, digest: str) -> str:
        return self.base + BLOB_HOLDERS + digest

    def blob_until_done(self, digest: str) -> str:
        return self.base + BLOB_UNTIL_DONE + digest

    def cancelling(self, job: str) -> str:
        return self.base + CANCELLING + job

    def running(self, node: str) -> str:
        return self.base + RUNNING_SET + node

    def inbox(self, node: str) -> str:
        return self.base + INBOX + node

    def taken(self, node: str) -> str:
        return self.base + TAKEN + node

    def wake(self, node: str) -> str:
        return self.base + WAKE + node

    def work_pattern(self) -> str:
        """A SCAN pattern that matches every work list of this grid."""
        return self.pattern()[:-1] + WORK + "*"

    def journal(self, node: str) -> str:
        return self.base + JOURNAL + node

    def blob(self, digest: str) -> str:
        """The bytes of blob `digest`, in the slot of its digest (not the grid's)."""
        return self._blob_tag(digest) + BLOB

    def blob_gen(self, digest: str) -> str:
        """The generation token of blob `digest`, beside its bytes."""
        return self._blob_tag(digest) + BLOB_GEN

    def blob_part(self, digest: str, nonce: str) -> str:
        """A part-written blob `digest`, beside its bytes."""
        return self._blob_tag(digest) + BLOB_PART + nonce

    @staticmethod
    def is_digest(digest: str) -> bool:
        """Whether `digest` can name a blob: a non-empty string without braces or '/' (a
        SHA-256 in hex always can; a member forged into the index may not)."""
        return bool(digest) and not _NOT_IN_DIGEST.search(digest)

    def _blob_tag(self, digest: str) -> str:
        if not self.is_digest(digest):
            raise ValueError(
                f"a blob digest is a non-empty string without braces or '/': {digest!r}"
            )
        return "{" + self.prefix + "/" + digest + "}:"

    def blob_pattern(self) -> str:
        """A SCAN pattern that matches every blob key of this grid (and maybe some of a grid
        whose prefix starts with this one's and a '/': `is_blob_key` tells them apart)."""
        return _glob_escaped("{" + self.prefix + "/") + "*"

    def is_blob_key(self, name: str) -> bool:
        """Whether `name` is a blob key of this grid (`blob`, `blobgen` or `blobpart:...`)."""
        tag = "{" + self.prefix + "/"
        if not name.startswith(tag):
            return False
        digest, close, rest = name[len(tag) :].partition("}:")
        return (
            bool(close)
            and bool(digest)
            and not _NOT_IN_DIGEST.search(digest)
            and (rest in (BLOB, BLOB_GEN) or rest.startswith(BLOB_PART))
        )

    def bytes_digest(self, name: str) -> str | None:
        """The digest of the blob whose bytes key (`blob`) `name` is; None for any other."""
        if not self.is_blob_key(name) or not name.endswith("}:" + BLOB):
            return None
        return name[len("{" + self.prefix + "/") : -len("}:" + BLOB)]

    def result(self, key: str) -> str:
        """The cached result of request `key` moved to the slot of its own key (not the
        grid's): see `redis_results`."""
        return "{" + self.prefix + ":" + key + "}:" + SPREAD_RESULT

    def own_record(self, key: str) -> str:
        """Request `key`'s record in the slot of its own key (not the grid's), beside its moved
        result: what the records' steps work on (see `redis_records`)."""
        return "{" + self.prefix + ":" + key + "}:" + OWN_RECORD

    def own_record_pattern(self) -> str:
        """A SCAN pattern that matches every record in its own slot of this grid (and those of
        a grid whose prefix is this one's, a ':' and more: `own_record_key` cannot tell)."""
        return _glob_escaped("{" + self.prefix + ":") + "*}:" + OWN_RECORD

    def own_record_key(self, name: str) -> str | None:
        """The request key whose record in its own slot `name` is; None for any other name."""
        head, tail = "{" + self.prefix + ":", "}:" + OWN_RECORD
        if not name.startswith(head) or not name.endswith(tail) or len(name) == len(head + tail):
            return None
        key = name[len(head) : -len(tail)]
        return None if key.startswith("node:") else key

    def own_step(self, key: str, token: str) -> str:
        """The journal entry of a record's step (its reply, kept a while for a resend)."""
        return "{" + self.prefix + ":" + key + "}:" + OWN_STEP + token

    def own_step_pattern(self) -> str:
        """A SCAN pattern that matches every journal entry of a record's step of this grid."""
        return _glob_escaped("{" + self.prefix + ":") + "*}:" + OWN_STEP + "*"

    def own_record_migrating(self, key: str) -> str:
        """A key of request `key`'s own slot that never exists (the slot's migration probe)."""
        return "{" + self.prefix + ":" + key + "}:" + MIGRATING

    def result_pattern(self) -> str:
        """A SCAN pattern that matches every moved result of this grid (and those of a grid
        whose prefix is this one's, a ':' and more: `result_key` cannot tell them apart)."""
        return _glob_escaped("{" + self.prefix + ":") + "*}:" + SPREAD_RESULT

    def result_key(self, name: str) -> str | None:
        """The request key whose moved result `name` is; None for any other name."""
        head, tail = "{" + self.prefix + ":", "}:" + SPREAD_RESULT
        if not name.startswith(head) or not name.endswith(tail) or len(name) == len(head + tail):
            return None
        return name[len(head) : -len(tail)]

    def _node_tag(self, node: str) -> str:
        return "{" + self.prefix + ":node:" + node + "}:"

    def own_inbox(self, node: str) -> str:
        """Node's inbox in its own slot (not the grid's): see `redis_inboxes`."""
        return self._node_tag(node) + OWN_INBOX

    def own_taken(self, node: str) -> str:
        """Node's `taken` list beside its own inbox."""
        return self._node_tag(node) + OWN_TAKEN

    def own_posted(self, node: str) -> str:
        """The tokens of the recent posts to node's own inbox (see inbox_post.lua)."""
        return self._node_tag(node) + OWN_POSTED

    def own_migrating(self, node: str) -> str:
        """A key of node's own slot that never exists (the slot's migration probe)."""
        return self._node_tag(node) + MIGRATING

    def own_inbox_pattern(self) -> str:
        """A SCAN pattern that matches every key of the nodes' own slots of this grid (and
        maybe some of a grid whose prefix is this one's, ':node:' and more)."""
        return _glob_escaped("{" + self.prefix + ":node:") + "*"

    def is_own_inbox_key(self, name: str) -> bool:
        """Whether `name` is a key of a node's own inbox of this grid (the inbox, its taken
        list, its posted tokens)."""
        head = "{" + self.prefix + ":node:"
        return name.startswith(head) and name.endswith(
            tuple("}:" + part for part in (OWN_INBOX, OWN_TAKEN, OWN_POSTED))
        )

    def pattern(self, part: str = "") -> str:
        """A SCAN pattern that matches every key of this grid (that starts with `part` after
        the prefix, e.g. `RECORD`) and nothing else."""
        return _glob_escaped(self.base + part) + "*"

    def lua_prelude(self) -> str:
        """Lua definitions of the same names, for the start of every script."""
        lines = [f"local PREFIX = {_lua_string(self.base)}"]
        lines += [
            f"local function k_{name}(id) return PREFIX .. {_lua_string(part)} .. id end"
            for name, part in _PER_ID.items()
        ]
        lines += [
            f"local K_{name} = PREFIX .. {_lua_string(part)}" for name, part in _GLOBAL.items()
        ]
        return "\n".join(lines) + "\n" + lua_constants()


def lua_constants() -> str:
    """Lua definitions of the field names, statuses and chunk fields, which name no key: what
    the scripts of a request key's own slot use of `RedisKeys.lua_prelude` (see
    `redis_records`)."""
    lines = [f"local {name} = {_lua_string(value)}" for name, value in _CONSTANTS.items()]
    lines += [f"local CHUNK_BYTES = {CHUNK_BYTES}", f"local CHUNKS = {CHUNKS}"]
    lines += [  # constants: a table of literals costs a script far less than building one
        f"local {name}_FIELDS = {{{', '.join(map(_lua_string, chunk_fields(field)))}}}"
        for name, field in (("PAYLOAD", F_PAYLOAD), ("OUTCOME", F_OUTCOME))
    ]
    return "\n".join(lines) + "\n"
