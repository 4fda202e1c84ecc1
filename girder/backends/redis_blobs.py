"""`RedisBlobs`: the blobs of a `RedisBackend`, their bytes spread over the slots by digest.

A blob's holders and its entry in the grid's index (`blobs`) live in the grid's slot; its bytes,
with a generation token beside them, in the slot of its digest (see `redis_keys`), so that on a
Redis Cluster the bulk of a grid's memory spreads over the primaries. No script can touch both
slots, so a put and a sweep are steps, each one script in one slot, in an order that keeps two
rules through any crash between them and any interleaving of puts and sweeps:

- a blob some record holds has its bytes (once its put returned);
- bytes that exist have an index entry (so a sweep finds them in the end).

Put: (1) grid slot (`blob_hold`): add the holder, start the grace period, index the digest;
(2) blob slot: write the bytes (`blob_store`, or `blob_publish` for one written in parts) or
reuse stored ones (`blob_reuse`), replacing the generation token with a new one either way.

Sweep, per batch of due digests: (0) blob slots: read each generation; (1) grid slot
(`blob_sweep`): forget the holders that let go, and pick the digests still due and unheld,
leaving them indexed; (2) blob slots (`blob_drop`): delete the bytes only if the generation is
still the one read in (0); (3) grid slot (`blob_forget`): drop the digests whose bytes are gone
from the index, unless something held them again.

Why that is safe. A put's step (2) comes after its step (1). If a put's step (1) ran before the
sweep's step (1), the digest is no longer due (its grace started again), or the put is older
than the grace and done (its record holds the blob: it is not picked; see Time for a put that
is not done). If it ran after, its step (2) also comes after the sweep's step (0), so the
generation changed and step (2) of the sweep leaves the bytes, unless that ran first: then
the put finds no bytes to reuse and writes them again, and the sweep's step (3) sees the holder
and keeps the index entry. A crash after step (1) or (2) of a sweep leaves an index entry
whose bytes may be gone: the next sweep finds it unheld again and finishes. A put that died
after step (1) left a holder without a record, forgotten after the grace period. Generation
tokens are random, so a generation read once is never seen again after a change.

Time. A sweep finds a blob due only `grace` after its last put's step (1), and gives up a
holder without a record only then. A put whose steps took longer than `HOLD_WINDOW_S` runs
them again, and a sweep's step (3) does nothing past `HOLD_WINDOW_S` after its step (1) (server
time). With a grace over twice that (girder's: 600 s against 60), no sweep gives up the holder
of a put between its steps, and no step (3) acts on what a sweep decided before such a put's
step (2): without those bounds, a put stalled between its steps for longer than the grace (an
outage of the blob's primary) could return with its holder given up, or with bytes that an
overlapping sweep left unindexed. As on one slot, a holder has `grace` to write its record
after the put returns.

On a single server (or one under Sentinel) every slot is the same server: the same steps run
there.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from time import monotonic
from typing import Any

from girder.backends.redis_access import RedisAccess
from girder.backends.redis_keys import RedisKeys
from girder.backends.resp import Command, Pipelined, ReplyError

BLOB_CHUNK_BYTES = 8 * 1024 * 1024
"""The most bytes of a blob one command carries. A larger blob is written in parts (SETRANGE
on a part key that expires if its writer dies, then published whole by `blob_publish`) and read
in parts (GETRANGE), so that other commands on the shared connection (heartbeats, claims) pass
between the parts instead of waiting behind the whole transfer."""

BLOB_PART_TTL_MS = 600_000
"""How long the parts of a blob whose writer died stay before they expire."""

HOLD_WINDOW_S = 60.0
"""The longest the two steps of a put, or the steps 1 to 3 of a sweep, may take: a put that took
longer runs them again; a sweep's step 3 that would run later does nothing (the next sweep
finishes). So a sweep gives up a holder whose put is still between its steps only if its grace
is under this (girder's is 600 s; see the module docstring)."""
HOLD_WINDOW_MS = round(HOLD_WINDOW_S * 1000)

SWEEP_STEP = 100
"""The most blobs one step of a sweep looks at."""

_SCAN_COUNT = 1000


Referring = Callable[[Sequence[str]], Awaitable[list[str]]]
"""Of the holders of some digests, those that still refer to them: 'h' <key> (its record
exists), 'u' <key> (it holds a blob until done, and is not done)."""


class RedisBlobs:
    """put/get/sweep/list/flush of a grid's blobs (see the module docstring)."""

    def __init__(
        self, keys: RedisKeys, access: RedisAccess, referring: Referring | None = None
    ) -> None:
        """`referring`: in the sharded layout, where the holders' records are not in the
        grid's slot, what says which holders of some digests still refer to them (see
        shard_blob_sweep.lua)."""
        self._keys = keys
        self._access = access
        self._referring = referring

    # -- put and get ------------------------------------------------------------------------------

    async def put(self, digest: str, data: bytes, holder: str, until_done: bool) -> None:
        role = "1" if until_done else ""
        while True:
            started = monotonic()
            await self._put_once(digest, data, holder, role)
            if monotonic() - started <= HOLD_WINDOW_S:
                return
            # Slower than the window (an outage, a huge blob): a sweep may have given the holder
            # up between the steps. The steps again, quickly now that the bytes are stored.

    async def _put_once(self, digest: str, data: bytes, holder: str, role: str) -> None:
        token = uuid.uuid4().hex
        keys = (self._keys.blob(digest), self._keys.blob_gen(digest))
        new = await self._access.run("blob_hold", digest, holder, role)
        if not new and await self._access.slot_script("blob_reuse", keys, token):
            return  # stored already: the bytes need not travel
        if len(data) <= BLOB_CHUNK_BYTES:
            await self._access.slot_script("blob_store", keys, data, token)
            return
        while True:
            part = self._keys.blob_part(digest, uuid.uuid4().hex)
            for start in range(0, len(data), BLOB_CHUNK_BYTES):
                await self._put_part(part, start, data[start : start + BLOB_CHUNK_BYTES])
            if await self._access.slot_script("blob_publish", (*keys, part), token):
                return

    async def _put_part(self, part: str, start: int, chunk: bytes) -> None:
        """Write one part of a blob (both commands are safe to send again)."""
        commands: list[Command] = [
            ("SETRANGE", part, start, chunk),
            ("PEXPIRE", part, BLOB_PART_TTL_MS),
        ]
        client = self._access.at(part)
        for reply in await self._access.retrying("put_blob", lambda: client.pipeline(commands)):
            if isinstance(reply, ReplyError):  # out of memory, say
                raise self._access.error("put_blob", reply)

    async def get(self, digest: str) -> bytes | None:
        name = self._keys.blob(digest)
        client = self._access.at(name)
        first: list[Command] = [("STRLEN", name), ("GETRANGE", name, 0, BLOB_CHUNK_BYTES - 1)]
        size, head = await self._access.retrying("get_blob", lambda: client.pipeline(first))
        if not isinstance(size, int) or not size or isinstance(head, ReplyError):
            return None  # none, or garbage of another type in its place
        parts = [head]
        for start in range(BLOB_CHUNK_BYTES, size, BLOB_CHUNK_BYTES):
            end = min(size, start + BLOB_CHUNK_BYTES) - 1
            parts.append(await self._execute(client, "get_blob", "GETRANGE", name, start, end))
        return b"".join(parts)

    async def sizes(self) -> dict[str, int]:
        """Every stored blob: digest -> size in bytes."""
        digests = await self._access.retrying(
            "blobs",
            lambda: self._access.at(self._keys.blobs).execute("ZRANGE", self._keys.blobs, 0, -1),
        )
        names, _ = self._digests(digests)
        found = await asyncio.gather(*(self._size(name) for name in names))
        return {name: size for name, size in zip(names, found, strict=True) if size}

    async def _size(self, digest: str) -> int:
        name = self._keys.blob(digest)
        size = await self._access.retrying(
            "blobs", lambda: self._access.at(name).pipeline([("STRLEN", name)])
        )
        return size[0] if isinstance(size[0], int) else 0

    # -- sweep ------------------------------------------------------------------------------------

    async def sweep(self, grace_ms: int) -> int:
        deleted, until = 0, ""
        while True:
            until, due = await self._access.run("blob_due", grace_ms, until, SWEEP_STEP)
            digests, forged = self._digests(due)
            if forged:  # no bytes can live under such a name: only the index entry goes
                await self._execute(
                    self._access.at(self._keys.blobs),
                    "sweep_blobs",
                    "ZREM",
                    self._keys.blobs,
                    *forged,
                )
            if digests:
                deleted += await self._sweep_step(until, digests)
            if len(due) < SWEEP_STEP:
                return deleted

    def _digests(self, members: Sequence[bytes]) -> tuple[list[str], list[bytes]]:
        """The members of the index that name blobs, decoded; and those that cannot (forged:
        not UTF-8, or with braces or '/'), as they are."""
        digests: list[str] = []
        forged: list[bytes] = []
        for member in members:
            try:
                digest = member.decode()
            except UnicodeDecodeError:
                digest = ""
            if self._keys.is_digest(digest):
                digests.append(digest)
            else:
                forged.append(member)
        return digests, forged

    async def _sweep_step(self, cutoff: bytes, digests: list[str]) -> int:
        generations = await self.generations(digests)
        deadline, unheld = await self.unheld(cutoff, digests)
        gone = [
            digest
            for digest, dropped in zip(
                unheld,
                await asyncio.gather(*(self.drop(d, generations[d]) for d in unheld)),
                strict=True,
            )
            if dropped
        ]
        return await self.forget(cutoff, deadline, gone)

    async def generations(self, digests: Sequence[str]) -> dict[str, bytes]:
        """Sweep step 0: each blob's generation token (b"" for none)."""
        found = await asyncio.gather(*(self._generation(digest) for digest in digests))
        return dict(zip(digests, found, strict=True))

    async def _generation(self, digest: str) -> bytes:
        name = self._keys.blob_gen(digest)
        [reply] = await self._access.retrying(
            "sweep_blobs", lambda: self._access.at(name).pipeline([("GET", name)])
        )
        return reply if isinstance(reply, bytes) else b""

    async def unheld(self, cutoff: bytes, digests: Sequence[str]) -> tuple[int, list[str]]:
        """Sweep step 1 (grid slot): which of `digests` are still due and held by nobody; and
        the deadline of step 3 (server ms)."""
        if self._referring is None:
            now, unheld = await self._access.run("blob_sweep", cutoff, *digests)
        else:
            referring = await self._referring(digests)
            now, unheld = await self._access.run(
                "shard_blob_sweep", cutoff, len(referring), *referring, *digests
            )
        return int(now) + HOLD_WINDOW_MS, [digest.decode() for digest in unheld]

    async def drop(self, digest: str, generation: bytes) -> bool:
        """Sweep step 2 (blob slot): delete the bytes if the generation is still `generation`;
        whether they are gone."""
        keys = (self._keys.blob(digest), self._keys.blob_gen(digest))
        return bool(await self._access.slot_script("blob_drop", keys, generation))

    async def forget(self, cutoff: bytes, deadline: int, digests: Sequence[str]) -> int:
        """Sweep step 3 (grid slot): drop from the index those of `digests` nobody held again,
        unless it runs after `deadline` (server ms: then the next sweep does); how many."""
        if not digests:
            return 0
        return int(await self._access.run("blob_forget", cutoff, deadline, *digests))

    # -- flush ------------------------------------------------------------------------------------

    async def reindex(self) -> int:
        """Index the stored bytes that the index does not name (their entry was lost with the
        grid's primary in a failover, while they stayed on theirs), as if put now: a sweep
        then finds them, and deletes them after the grace period unless a record holds them.
        A scan of every server: for after lost writes, not for every sweep."""
        digests: list[str] = []
        for server in await self._access.servers():
            cursor = b"0"
            while True:
                scan = ("SCAN", cursor, "MATCH", self._keys.blob_pattern(), "COUNT", _SCAN_COUNT)
                cursor, found = await self._execute(server, "reindex", *scan)
                for name in found:
                    digest = self._keys.bytes_digest(name.decode(errors="replace"))
                    if digest is not None:
                        digests.append(digest)
                if cursor == b"0":
                    break
        unique = sorted(set(digests))  # SCAN may name a key twice
        added = 0
        for start in range(0, len(unique), SWEEP_STEP):
            added += int(await self._access.run("blob_index", *unique[start : start + SWEEP_STEP]))
        return added

    async def flush(self) -> None:
        """Delete the blob keys of the grid on every server (its index and holders go with the
        rest of the grid's slot)."""
        pattern = self._keys.blob_pattern()
        for server in await self._access.servers():
            cursor = b"0"
            while True:
                scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
                cursor, found = await self._execute(server, "flush", *scan)
                names = [name.decode() for name in found]
                await asyncio.gather(
                    *(self._unlink(name) for name in names if self._keys.is_blob_key(name))
                )
                if cursor == b"0":
                    break

    async def _unlink(self, name: str) -> None:
        await self._execute(self._access.at(name), "flush", "UNLINK", name)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _execute(self, client: Pipelined, what: str, *command: str | bytes | int) -> Any:
        """One command on `client`, retried through outages."""
        return await self._access.retrying(what, lambda: client.execute(*command))
