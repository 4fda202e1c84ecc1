"""`SpreadResults`: cached results moved out of the grid's slot into the slots of their own keys.

On with `Settings.spread_results`. A grid's state lives in one hash slot (see `redis_keys`), so
on a Redis Cluster one primary holds every cached result and answers every cache hit. With this
on, each cached result moves to `{<key_prefix>:<request key>}:v`, a slot of its own key: the
results, and the lookups of cached keys, spread over every primary by their keys. The live
state (pending and running records, queues, waiters) stays in the grid's slot, so the work of
new requests does not spread: see docs/scaling.md for what this buys and costs.

No script can touch both slots, so a move is three steps, the first in the completion itself,
the others in the background, by the process that completed the keys (the keys of one
completion call at a time):

1. grid slot, in the `complete` script: mark each record it caches with the move's token and
   report it (only the completion that makes a key done does: two processes may complete the
   same key, a worker that woke past its lease, say, and only one moves it);
2. each key's slot: write the copy, with the record's time to live, unless a copy is there
   (`SET NX`: one that another process moved after the key was cleared and computed again is
   newer than what step 1 read);
3. `DROP_DELAY_S` later, grid slot (`result_drop`, journaled under the node that completed the
   keys): delete each record if it is still the result that step 1 read and marked (the token,
   the SHA-1 of its outcome); for a key whose record went or changed meanwhile (a
   `cache_clear`, an expiry), delete the copy if it is still the one step 2 wrote.

A crash between the steps leaves a result in two places (the same outcome), or in the grid's
slot only: both are cached results, found by every read. A submission looks at the key's own
slot first (and asks the grid's server its time meanwhile) and sends the grid only the keys
not found there. The delay before step 3 is for the submission whose look came just before
step 2: its script still finds the record. One whose look and script are further apart (a
process stopped, or held back by a reconcile, in between) would find no record and compute the
key again; so step 3 notes the server's time of its drop, and the submit script tells a
caller whose look came `LOOK_AGAIN_MS` or more before the latest drop to look again for the
keys that have no record (it does nothing for them), instead of queueing them (the look is
made again if the time came late, so that the time is never later than the look).

A clear by another process that overlaps a move can leave the copy of a cleared result until
step 3 (for good only if the mover dies, or its node leaves, before step 3: the copy then
expires with the result's TTL, or goes with the next clear).

A process without the setting moves nothing (`moves=False`), but once it has seen that the
grid has moved results (`resultsdropped` exists: `RedisBackend` asks when it connects and at
each heartbeat) it finds, counts and clears them like the others.

A result whose value is a blob stays in the grid's slot: the blob's holder is its record, and a
sweep would take the bytes from a record that moved (see `redis_blobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from girder.backends.base import CacheUsage, Completion
from girder.backends.redis_access import RedisAccess
from girder.backends.redis_keys import FUNCTION_ID, FUNCTION_NAME, RedisKeys
from girder.backends.resp import Command, Pipelined, ReplyError
from girder.errors import BackendError
from girder.log import get_logger

_log = get_logger()

DROP_DELAY_S = 1.0
"""How long after its copies are written a move deletes the records in the grid's slot: a
submission that looked for a copy just before it was written still finds the record."""
_SCAN_COUNT = 1000


@dataclass
class _Copied:
    """A move whose copies are written: its last step is due at `due` (monotonic time)."""

    node: str
    mover: str
    """The token that marks the records of this move (see complete.lua)."""
    due: float
    copies: dict[str, bytes] = field(default_factory=dict)
    """Key -> the value its copy got."""
    moved: list[str | bytes] = field(default_factory=list)
    """The arguments of `result_drop`: key, SHA-1 of its outcome, ..."""


class SpreadResults:
    """Moves, reads, counts and clears the cached results of a grid kept in their own slots."""

    def __init__(self, keys: RedisKeys, access: RedisAccess, *, moves: bool = True) -> None:
        """`moves`: this process moves the results it completes (`spread_results`); without
        it, it only finds, counts and clears those that others moved."""
        self._keys = keys
        self._access = access
        self._moves = moves
        self._marked: deque[tuple[str, str, Sequence[Any]]] = deque()
        """Moves whose records a completion marked, not copied yet: (the node that completed
        them, the token, what `complete` reported). A move's last step is journaled under the
        node that completed its keys."""
        self._copied: deque[_Copied] = deque()
        """Moves whose copies are written, waiting for their last step, oldest first."""
        self._holders: set[str] = set()
        """Keys whose outcome this process stored as a blob: they never move."""
        self._mover: asyncio.Task[None] | None = None
        self._busy: str | None = None
        """The node whose keys a step is moving right now."""
        self._wake = asyncio.Event()
        self._step_over = asyncio.Event()
        self._copying_done = asyncio.Event()
        self._idle = asyncio.Event()
        self._copying_done.set()
        self._idle.set()

    # -- moving -----------------------------------------------------------------------------------

    def hold(self, key: str) -> None:
        """`key`'s outcome is (about to be) a blob reference: its record stays."""
        if self._moves:
            self._holders.add(key)

    def moving(self, completions: Sequence[Completion]) -> list[bool]:
        """Which of these completions move their cached results (those held as blobs stay;
        every completion forgets its hold)."""
        moving = []
        for completion in completions:
            held = completion.key in self._holders
            self._holders.discard(completion.key)
            moving.append(completion.cache and self._moves and not held)
        return moving

    def marked(self, node: str, mover: str, moved: Sequence[Any]) -> None:
        """`node`'s completion marked these records with the token `mover` (step 1): copy
        them, in the background. `moved`: key, function id, ttl_ms, outcome, ..."""
        self._marked.append((node, mover, moved))
        self._copying_done.clear()
        self._idle.clear()
        self._wake.set()
        if self._mover is None:
            self._mover = asyncio.get_running_loop().create_task(self._move_all())

    async def copied(self) -> None:
        """Wait until every key this process completed is copied to its own slot (or stays):
        a clear, a count or a forget that comes after sees every copy."""
        await self._copying_done.wait()

    async def settled(self) -> None:
        """Wait until this process has no move under way, last steps included."""
        await self._idle.wait()

    async def release(self, node: str) -> None:
        """`node` leaves: forget its moves not done (their results stay in the grid's slot too:
        their last steps would write into the journal of a node that left)."""
        self._marked = deque(marked for marked in self._marked if marked[0] != node)
        self._copied = deque(copied for copied in self._copied if copied.node != node)
        while self._busy == node:
            self._step_over.clear()
            await self._step_over.wait()
        self._update_events()

    async def close(self) -> None:
        """Stop moving: what is left stays in the grid's slot (still cached, just not spread)."""
        mover, self._mover = self._mover, None
        if mover is not None:
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mover
        self._marked.clear()
        self._copied.clear()
        self._update_events()

    def _update_events(self) -> None:
        if not self._marked and self._busy is None:
            self._copying_done.set()
        if not self._marked and not self._copied and self._busy is None:
            self._idle.set()

    async def _move_all(self) -> None:
        """Copy what waits, batch by batch; run each batch's last step `DROP_DELAY_S` after
        its copies were written."""
        try:
            while self._marked or self._copied:
                if self._marked:
                    node, mover, moved = self._marked.popleft()
                    await self._step(node, len(moved) // 4, self._copy(node, mover, moved))
                    continue
                wait = self._copied[0].due - monotonic()
                if wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                copied = self._copied.popleft()
                await self._step(copied.node, len(copied.copies), self._drop(copied))
        finally:
            self._mover = None
            self._update_events()

    async def _step(self, node: str, count: int, step: Awaitable[None]) -> None:
        self._busy = node
        try:
            await step
        except (BackendError, ReplyError) as exc:
            _log.warning("cached results stay in the grid's slot", keys=count, error=str(exc))
        finally:
            self._busy = None
            self._step_over.set()
            self._update_events()

    async def _copy(self, node: str, mover: str, moved: Sequence[Any]) -> None:
        """Step 2 of the module docstring, for the records `node`'s completion marked."""
        copied = _Copied(node, mover, monotonic() + DROP_DELAY_S)
        writes = []
        for i in range(0, len(moved), 4):
            key, function, ttl_ms, outcome = moved[i].decode(), *moved[i + 1 : i + 4]
            copied.copies[key] = value = function + b":" + outcome
            copied.moved += (key, hashlib.sha1(outcome).hexdigest())
            writes.append(self._write(key, value, ttl_ms))
        if writes:
            await asyncio.gather(*writes)
            self._copied.append(copied)

    async def _drop(self, copied: _Copied) -> None:
        """Step 3 of the module docstring."""
        node = copied.node
        stale = await self._access.journaled("result_drop", node, node, copied.mover, *copied.moved)
        for key in stale:
            text = key.decode()
            await self._access.slot_script(
                "result_unset", (self._keys.result(text),), copied.copies[text]
            )

    async def _write(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Step 2 for one key (a key that holds anything already keeps it: `SET NX`)."""
        name = self._keys.result(key)
        command = ("SET", name, value, "NX", *(("PX", ttl_ms) if ttl_ms >= 0 else ()))
        await self._execute(self._access.at(name), "spread_results", command)

    # -- reading ----------------------------------------------------------------------------------

    async def lookup(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The outcomes of those of `keys` whose results moved to their own slots (one round
        trip per server, the reads of a server pipelined)."""
        unique = list(dict.fromkeys(keys))
        values = await asyncio.gather(*(self._get(key) for key in unique))
        return {key: value for key, value in zip(unique, values, strict=True) if value is not None}

    async def _get(self, key: str) -> bytes | None:
        name = self._keys.result(key)
        value = await self._execute(self._access.at(name), "lookup", ("GET", name))
        if not isinstance(value, bytes):
            return None  # none, or garbage of another type in its place
        function, colon, outcome = value.partition(b":")
        return outcome if colon and function.isdigit() else None

    async def _names(self, what: str) -> AsyncIterator[list[str]]:
        """The names of every moved result of the grid, in SCAN batches per server (a name
        may come twice)."""
        pattern = self._keys.result_pattern()
        for server in await self._access.servers():
            cursor = b"0"
            while True:
                scan: Command = ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
                cursor, found = await self._execute(server, what, scan)
                names = [name.decode(errors="replace") for name in found]
                if names:
                    yield [name for name in names if self._keys.result_key(name) is not None]
                if cursor == b"0":
                    break

    async def _execute(self, client: Pipelined, what: str, command: Command) -> Any:
        """One command on `client`, retried through outages (and through the error replies of
        a server that will answer later: a failover under way is not a miss). A WRONGTYPE
        reply (garbage where a copy goes) is its value; other error replies raise
        `BackendError`."""

        async def attempt() -> Any:
            [reply] = await client.pipeline([command])
            if isinstance(reply, ReplyError) and not str(reply).startswith("WRONGTYPE"):
                raise reply
            return reply

        return await self._access.retrying(what, attempt)

    async def usage(self, seen: set[str], usage: dict[str, CacheUsage]) -> None:
        """Add the moved results whose keys are not in `seen` to `usage` (function name ->
        entries and bytes of outcome), and their keys to `seen`."""
        names: dict[bytes, str] = {}
        async for batch in self._names("cache_stats"):
            values = await asyncio.gather(
                *(
                    self._execute(self._access.at(name), "cache_stats", ("GET", name))
                    for name in batch
                )
            )
            for name, value in zip(batch, values, strict=True):
                key = self._keys.result_key(name)
                if key is None or key in seen or not isinstance(value, bytes) or b":" not in value:
                    continue
                seen.add(key)
                function, _, outcome = value.partition(b":")
                if function not in names:
                    names[function] = await self._function_name(function)
                found = usage.get(names[function], CacheUsage())
                usage[names[function]] = CacheUsage(found.entries + 1, found.bytes + len(outcome))

    async def _function_name(self, function: bytes) -> str:
        """The name of the function whose id is `function` (an unknown id stands for itself,
        as in cache_entries.lua)."""
        name = await self._grid_get(FUNCTION_ID + function.decode(errors="replace"))
        return name.decode(errors="replace") if name else function.decode(errors="replace")

    async def _grid_get(self, field: str) -> bytes | None:
        table = self._keys.functions
        value = await self._execute(self._access.at(table), "cache", ("HGET", table, field))
        return value if isinstance(value, bytes) else None

    # -- clearing ---------------------------------------------------------------------------------

    async def clear(self, function: str | None) -> set[str]:
        """Delete the moved results (of `function` only, unless None); their keys."""
        head = b""
        if function is not None:
            found = await self._grid_get(FUNCTION_NAME + function)
            if found is None:
                return set()  # no result of that function was ever cached
            head = found + b":"
        dropped: set[str] = set()
        async for batch in self._names("cache_clear"):
            keys = [key for key in map(self._keys.result_key, batch) if key is not None]
            dropped |= await self._delete(keys, head)
        return dropped

    async def forget(self, keys: Sequence[str]) -> set[str]:
        """Delete the moved results of `keys`; the keys that had one."""
        return await self._delete(keys, b"")

    async def _delete(self, keys: Sequence[str], head: bytes) -> set[str]:
        """Delete the moved results of `keys` whose values start with `head`; the keys that
        had one. Each is read, then deleted if it still holds what was read, so that a step
        sent again after its reply was lost counts the same."""
        names = [self._keys.result(key) for key in keys]
        values = await asyncio.gather(
            *(self._execute(self._access.at(name), "cache_clear", ("GET", name)) for name in names)
        )
        dropped = {
            key: value
            for key, value in zip(keys, values, strict=True)
            if isinstance(value, bytes) and value.startswith(head)
        }
        await asyncio.gather(
            *(
                self._access.slot_script("result_unset", (self._keys.result(key),), value)
                for key, value in dropped.items()
            )
        )
        return set(dropped)

    async def flush(self) -> None:
        """Delete every moved result of the grid, on every server."""
        await self.close()
        async for batch in self._names("flush"):
            await asyncio.gather(
                *(self._execute(self._access.at(name), "flush", ("UNLINK", name)) for name in batch)
            )
