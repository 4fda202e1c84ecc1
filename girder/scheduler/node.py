"""What every node does: membership, heartbeats, recovery of dead nodes, and waiting for keys.

A node is a worker, a distributor or a client. It joins the backend with a lease and renews it;
it reaps dead nodes on start-up and periodically; and it turns notifications from its inbox into
outcomes for whoever inside it waits.

A node never trusts the backend to keep everything it was told. When the backend says it does not
know the node (the node was reaped while stalled, or a restart lost the state) or its clock went
back (a server restored from an older snapshot lost writes), the node joins again, gives back the
keys the backend thinks it runs but it does not (`StateBackend.reconcile`), and submits again
everything it still waits for. And a key awaited for long is submitted again now and then (less
often the longer it waits), so that a record or queue entry lost to eviction or garbage cannot
leave anyone waiting forever.
"""

from __future__ import annotations

import asyncio
import os
import socket
import traceback
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from girder import codeversion
from girder.backends.base import (
    Claimed,
    Completion,
    NewRequest,
    NodeKind,
    StateBackend,
    Submitted,
)
from girder.config import Settings
from girder.errors import (
    BackendError,
    BackendFull,
    BlobLost,
    Cancelled,
    GirderError,
    RequestError,
    SerializationError,
)
from girder.functions import GridFunction, Request
from girder.keys import SCALARS
from girder.log import debug_enabled, node_logger
from girder.scheduler.inflight import CallsInFlight
from girder.scheduler.lease import LeaseKeeper, lease_keeper
from girder.scheduler.pools import PoolWatch
from girder.scheduler.waiters import Batch, Feed, Submission, Waiters
from girder.security import require_secret
from girder.serialization import Blob, Codec, Outcome, RequestPayload


def _found_unknown(submitted: Submitted) -> bool:
    """Whether a submission made its key new: a key submitted again that the backend had lost
    (a key still awaited has a record: pending, running, or done and being delivered)."""
    return (
        not submitted.shared
        and submitted.outcome is None
        and submitted.cycle is None
        and submitted.partial is None
    )


def new_node_id(kind: NodeKind) -> str:
    """A grid-unique id like `worker-host-1234-5f3a`."""
    return f"{kind.value}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


MAX_CHAIN_LEVELS = 32
"""Levels of an error chain a request keeps (see `RequestError.pruned`)."""

_LONGEST_RECHECK = 60.0
"""The most seconds between two submissions of a key a node still waits for."""

_LOST_TRIES = 3
"""How many times a request whose stored bytes the backend lost is submitted again (`settle`)."""

_GIRDER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def error_lines(exc: BaseException) -> list[str]:
    """The traceback of `exc` as lines, for its failure record: the user's frames, without
    girder's own that called the function. A sub-request's `RequestError` (raised by
    `call_reentrant`) loses girder's frames at its end too, and ends with its own line alone:
    its causes keep their own tracebacks."""
    sub_request = isinstance(exc, RequestError)
    frames = _trimmed(traceback.extract_tb(exc.__traceback__), end=sub_request)
    if isinstance(exc, RequestError):
        kind = type(exc)
        lines = ["Traceback (most recent call last):\n", *frames.format()] if frames else []
        lines.append(f"{kind.__module__}.{kind.__qualname__}: {exc.request}: {exc.message}")
    else:
        report = traceback.TracebackException.from_exception(exc)
        report.stack = frames
        lines = list(report.format())
    return "".join(lines).rstrip("\n").split("\n")


def _trimmed(stack: traceback.StackSummary, *, end: bool) -> traceback.StackSummary:
    frames = list(stack)
    while frames and frames[0].filename.startswith(_GIRDER_DIR):
        frames.pop(0)
    while end and frames and frames[-1].filename.startswith(_GIRDER_DIR):
        frames.pop()
    return traceback.StackSummary.from_list(frames)


MAX_EVENT_CHAIN = 4000
"""The most characters of an error chain a FAILED grid event carries."""


def error_chain(error: RequestError, levels: int = 8) -> str:
    """The readable chain of `error`, one level a line, causes indented (for grid events)."""
    lines: list[str] = []

    def walk(level: RequestError, depth: int) -> None:
        lines.append(f"{'  ' * depth}{level.request}: {level.message}")
        if depth + 1 < levels:
            for cause in level.causes.values():
                walk(cause, depth + 1)

    walk(error, 0)
    return "\n".join(lines)[:MAX_EVENT_CHAIN]


@dataclass(slots=True)
class NodeStats:
    """What a node did, for the demo and `girder status`."""

    ran: int = 0
    failed: int = 0
    cache_hits: int = 0
    shared: int = 0
    """Requests this node asked for that were already in flight (it joined their run)."""
    handed_out: int = 0
    stolen: int = 0
    lost: int = 0
    """Keys this node waited for that a later submission found unknown to the backend (evicted,
    or lost in a failover or restart): submitting them again brought them back."""

    def counters(self) -> dict[str, int]:
        """The counters a node publishes with its heartbeat (`girder status` shows them)."""
        return {
            "ran": self.ran,
            "failed": self.failed,
            "cache_hits": self.cache_hits,
            "shared": self.shared,
            "handed_out": self.handed_out,
            "stolen": self.stolen,
            "lost": self.lost,
        }


class Node:
    """The common life of a worker, distributor or client."""

    kind: ClassVar[NodeKind]

    def __init__(
        self,
        backend: StateBackend,
        settings: Settings,
        *,
        node_id: str | None = None,
        distributor: str | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.id = node_id or new_node_id(self.kind)
        self.distributor = distributor
        # In process nothing else reaches the state: signing it would only cost time.
        secret = settings.secret_bytes() if backend.shared else None
        self.codec = Codec(secret, settings.max_payload_bytes, settings.large_value_bytes)
        self.waiters = Waiters()
        self.stats = NodeStats()
        self.pools = PoolWatch(backend, settings.pool_wait, self._pool_unserved)
        self.log = node_logger(self.id, kind=self.kind.value)
        require_secret(settings, backend, self.log)
        codeversion.set_default(settings.auto_version)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease_keeper: LeaseKeeper | None = None
        self._clock = 0
        """The grid's clock at this node's last heartbeat (see `Beat`)."""
        self._lease_confirmed = 0.0
        """When (on the event loop's clock) the last heartbeat that found this node registered
        was sent, or the node joined: its lease runs for `heartbeat_ttl` from then at least."""
        self._beating = asyncio.Lock()
        """Held through a heartbeat and what it finds, so that two never overlap."""
        self.calls_in_flight = CallsInFlight()
        """The calls that complete or claim requests, held back while this node reconciles."""
        self.running = False
        """Between the end of `start` and the start of `stop`."""

    # -- life -------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this node started on; a node never started raises, saying so."""
        if self._loop is None:
            raise GirderError(
                f"{self.kind.value} {self.id} is not started: use the grid as "
                "`async with girder.Grid.local(...) as grid:` (or `await grid.start()`) first"
            )
        return self._loop

    async def start(self) -> None:
        """Join the grid, recover dead nodes' work, and start this node's loops."""
        self._loop = asyncio.get_running_loop()
        self._lease_confirmed = self._loop.time()
        await self.backend.join(self.id, self.kind, self.distributor, self.settings.heartbeat_ttl)
        await self.recover()
        self._lease_keeper = lease_keeper(self.settings, shared=self.backend.shared)
        if self._lease_keeper is not None:
            self._lease_keeper.add(self.id)
        self._spawn(self._heartbeat_loop, "heartbeat")
        self._spawn(self._listen_loop, "listen")
        self._start_loops()
        self.running = True
        self.log.info("node started", distributor=self.distributor)

    def _start_loops(self) -> None:
        """Start the loops particular to this kind of node."""

    async def stop(self) -> None:
        """Stop the loops and leave the grid, handing back whatever is still held."""
        self.running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pools.stop()
        try:
            await self._before_leaving()
        except Exception as exc:  # what it did not send, `leave` hands back to the grid
            self.log.warning("could not settle before leaving", error=repr(exc))
        if self._lease_keeper is not None:
            self._lease_keeper.discard(self.id)
        await self.backend.leave(self.id)
        self.log.info("node stopped")

    async def _before_leaving(self) -> None:
        """Send what this node still owes the backend (after its loops stopped)."""

    def _spawn(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        self._tasks.append(asyncio.create_task(self._forever(body, name), name=f"{self.id}:{name}"))

    async def _forever(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a loop body again after any failure, backing off up to a few seconds."""
        delay = 0.05
        while True:
            try:
                await body()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("loop failed, retrying", loop=name, error=repr(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + self.settings.reap_interval
        last_beat = loop.time()
        while True:
            await asyncio.sleep(interval)
            if loop.time() - last_beat > self.settings.heartbeat_ttl / 2:
                # This process stalled; so may have its neighbours. Let them beat before any
                # of them is judged dead.
                next_reap = max(next_reap, loop.time() + self.settings.heartbeat_ttl)
            last_beat = loop.time()
            try:
                async with self._beating:
                    await self._beat()
                if loop.time() >= next_reap:
                    next_reap = loop.time() + self.settings.reap_interval
                    await self.recover()
                    await self._submit_again_what_waits_long()
            except BackendFull as exc:
                self.refused(exc)
                raise

    def lease_may_have_lapsed(self) -> bool:
        """Whether this node may have outlived its lease: no heartbeat confirmed it for
        `heartbeat_ttl` (the process was stopped, its host suspended, its loop blocked). A
        clock compare: cheap enough before every request a worker starts."""
        return self.loop.time() - self._lease_confirmed > self.settings.heartbeat_ttl

    async def confirm_lease(self) -> None:
        """Heartbeat now, unless a heartbeat confirmed the lease meanwhile. A node that was
        reaped has dropped what was given to others and joined again when this returns."""
        async with self._beating:
            if self.lease_may_have_lapsed():
                await self._beat()

    async def _beat(self) -> None:
        """Renew the lease; rejoin and reconcile when the backend forgot this node or lost
        writes. A forgotten node drops what was given to others before it joins again: should
        that fail, the next heartbeat still finds it forgotten and tries again."""
        sent = self.loop.time()
        beat = await self.backend.heartbeat(
            self.id, self.settings.heartbeat_ttl, self.stats.counters()
        )
        went_back = beat.clock <= self._clock or (
            beat.own is not None and 0 < beat.own < self._clock
        )
        self._clock = beat.clock
        if beat.registered and not went_back and not beat.lost_writes:
            self._lease_confirmed = sent
            return
        self.log.warning(
            "backend lost state; joining again, reconciling and resubmitting",
            forgot_this_node=not beat.registered,
            clock_went_back=went_back,
            writes_may_be_lost=beat.lost_writes,
        )
        if not beat.registered:
            await self.forgotten()
        else:
            self.writes_lost()
        await self.backend.join(self.id, self.kind, self.distributor, self.settings.heartbeat_ttl)
        async with self.calls_in_flight.held_back():  # its claims all named (see inflight)
            given_back = await self.backend.reconcile(self.id, self.running_keys())
        if given_back:
            self.log.warning("gave back keys the backend thought ran here", count=given_back)
        await self.resubmit()
        self._lease_confirmed = sent

    def cancel_notice(self, key: str, job: str) -> None:
        """`key` was cancelled with `job`: whoever here waits for it gets `Cancelled` (a worker
        that runs it stops the run instead)."""
        source = self.waiters.source(key)
        readable = source.readable() if source is not None else f"request {key}"
        self.waiters.resolve(key, Outcome(error=Cancelled(readable, job)))

    def _pool_unserved(self, pool: str, pools: list[str]) -> None:
        """No distributor of `pool` was seen for `pool_wait` seconds: fail what waits there."""
        exist = ", ".join(repr(name) for name in pools) or "none (no distributor is running)"
        message = (
            f"no distributor serves the pool {pool!r} (none seen for "
            f"{self.settings.pool_wait:g} s, GIRDER_POOL_WAIT); the pools that exist: {exist}"
        )
        if not pools and not self.backend.shared:
            message += f" ({self.backend.url} lives in this process alone: Grid.local runs a grid)"
        failed = self.waiters.fail_into(
            pool, lambda request: Outcome(error=RequestError(request, message, kind="pool"))
        )
        if failed:
            self.log.error("no distributor serves the pool", pool=pool, pools=pools, failed=failed)

    def running_keys(self) -> list[str]:
        """The keys this node runs (a worker overrides it), for `reconcile`."""
        return []

    async def forgotten(self) -> None:
        """The backend no longer knew this node (its lease lapsed and it was reaped, or the
        backend lost its state); it joins again next. A worker overrides it to drop the runs
        and claims that were given to others meanwhile."""

    def writes_lost(self) -> None:
        """The backend lost writes but still knows this node (a failover, a restore); it
        reconciles next. A worker overrides it to drop the claims it has not started: a claim
        may be among the writes lost, its key pending on a work list again."""

    def refused(self, error: BackendFull) -> None:
        """The backend refuses this node's writes (a client overrides it to fail its calls)."""
        self.log.error("backend refuses writes", error=str(error))

    async def _submit_again_what_waits_long(self) -> None:
        """Submit again the keys awaited for long (see the module's docstring); a submission
        changes nothing for a key that is queued or running, and requeues one that was lost."""
        first = 2 * self.settings.heartbeat_ttl + self.settings.reap_interval
        now = self.loop.time()
        due = self.waiters.due(now, first, _LONGEST_RECHECK)
        if due:
            self.log.info("submitting again keys awaited for long", count=len(due))
            lost_before = self.stats.lost
            await self._store_blobs_again(due)
            await self._submit_and_route(due)
            if self.stats.lost > lost_before:
                # The backend loses what it was told (it evicts, or failed over): whatever
                # else this node waits for may be lost too, so it is not left to the backoff.
                self.log.warning(
                    "the backend had lost keys awaited; checking every awaited key again soon",
                    lost=self.stats.lost - lost_before,
                )
                self.waiters.check_all_by(now + first)

    async def _listen_loop(self) -> None:
        while True:
            notes = await self.backend.take_notifications(self.id, self.settings.idle_poll)
            for note in notes:
                if note.cancelled_by is not None:
                    self.cancel_notice(note.key, note.cancelled_by)
                elif note.partial:
                    self.partial(note.key, note.outcome)
                else:
                    self.waiters.resolve(note.key, self.decode_outcome(note.outcome, note.key))
            if notes:
                # Let the waiters just woken run (and send what they send next) before this
                # loop spends a round trip's worth of CPU waiting again.
                await asyncio.sleep(0)

    # -- recovery ---------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reap dead nodes; fail the requests that crashed their workers too often."""
        reaped = await self.backend.reap(self.id, self.settings.max_crashes)
        if reaped.dead:
            self.log.warning("reaped dead nodes", dead=list(reaped.dead), requeued=reaped.requeued)
        if reaped.crashed_out:
            readables = await self.readables(reaped.crashed_out)
            for key, readable in zip(reaped.crashed_out, readables, strict=True):
                error = RequestError(
                    readable,
                    f"the request killed its worker {self.settings.max_crashes} times "
                    "(GIRDER_MAX_CRASHES); it is not retried again",
                    kind="crashed",
                )
                self.log.error("request failed after crashes", key=key, request=readable)
                await self.finish(key, error.request.__str__, Outcome(error=error), cache=False)

    async def resubmit(self) -> None:
        """Submit again every key this node waits for (after the backend lost its state)."""
        submissions = self.waiters.submissions()
        await self._store_blobs_again(submissions)
        await self._submit_and_route(submissions)

    async def _store_blobs_again(self, submissions: list[Submission]) -> None:
        """Put the argument blobs of submissions again before they are submitted again: the
        backend may have lost them with the records (a blob still stored does not travel)."""
        for submission in submissions:
            if submission.blobs:
                await self.store_blobs(
                    submission.request.key, list(submission.blobs), until_done=True
                )

    # -- requests ---------------------------------------------------------------------------------

    def decode_outcome(self, data: bytes, key: str) -> Outcome:
        try:
            return self.codec.decode_outcome(data, key)
        except SerializationError as exc:
            self.log.error("undecodable outcome", key=key, error=str(exc))
            return Outcome(error=RequestError(f"request {key}", str(exc), kind="invalid"))

    def partial(self, key: str, data: bytes) -> None:
        """Feed a published partial answer to the streams here; one that cannot be decoded is
        dropped (the final outcome still comes)."""
        try:
            outcome = self.codec.decode_outcome(data, key)
        except SerializationError as exc:
            self.log.error("undecodable partial answer dropped", key=key, error=str(exc))
            return
        if not outcome.final:
            self.waiters.partial(key, outcome)

    async def peek(self, requests: Sequence[Request]) -> list[Outcome | None]:
        """The cached outcomes of `requests`, read without running or queueing anything (None:
        not cached, or not readable here). The reads are concurrent: one pipeline on Redis."""
        keys = [request.key for request in requests]
        found = await asyncio.gather(*(self.backend.result(key) for key in keys))
        outcomes: list[Outcome | None] = []
        for key, data in zip(keys, found, strict=True):
            outcome = None if data is None else self.decode_outcome(data, key)
            outcomes.append(outcome if outcome is not None and outcome.error is None else None)
        return outcomes

    async def pool_size(self) -> int:
        """How many live nodes the pool of this node has (at least 1): for a worker, itself and
        its fellow workers (a nested distributor counts as one)."""
        members = await self.backend.members(self.distributor or self.settings.pool)
        return max(1, len(members))

    async def readables(self, keys: Sequence[str]) -> list[str]:
        """Readable forms of stored requests (for error messages; never raises). A key without
        a payload (done: a done record keeps none; or unknown) reads as the key itself."""
        payloads = await self.backend.payloads(keys)
        names = []
        for key, data in zip(keys, payloads, strict=True):
            try:
                names.append(self.codec.decode_request(data, key).readable() if data else key)
            except SerializationError:
                names.append(f"request {key}")
        return names

    def completion(
        self,
        key: str,
        readable: Callable[[], str],
        outcome: Outcome,
        cache: bool,
        *,
        blobs: list[Blob] | None = None,
        function: GridFunction[..., Any] | None = None,
    ) -> Completion:
        """The completion to record for `outcome`; an outcome that cannot be encoded becomes
        a failure. `readable` names the request; it is only called when something fails.
        With `blobs`, a large value goes to a blob appended there: the caller stores it
        first (see `stored`). `function` (the one that ran) sets how long a cached outcome
        lives and whose it is."""
        try:
            data = self.codec.encode_outcome(outcome, key, readable, blobs)
        except SerializationError as exc:
            outcome = Outcome(error=RequestError(readable(), str(exc), kind="invalid"))
            data = self.codec.encode_outcome(outcome, key, readable)
        if not (cache and outcome.error is None and outcome.final):
            error = "" if outcome.error is None else error_chain(outcome.error)
            return Completion(key, data, False, error=error)
        if function is None:
            return Completion(key, data, True, ttl=self.settings.cache_ttl)
        ttl = self.settings.cache_ttl if function.ttl is None else function.ttl
        return Completion(key, data, True, ttl=ttl, function=function.name)

    async def stored(
        self, completion: Completion, readable: Callable[[], str], blobs: list[Blob]
    ) -> Completion:
        """Store the blob of a completion's large value; a failure to store it fails the
        request instead (never cached)."""
        try:
            await self.store_blobs(completion.key, blobs)
        except BackendError as exc:
            error = RequestError(
                readable(), f"its value could not be stored: {exc}", kind="backend"
            )
            return self.completion(completion.key, readable, Outcome(error=error), False)
        return completion

    async def store_blobs(
        self, holder: str, blobs: list[Blob], *, until_done: bool = False
    ) -> None:
        """Store `blobs` (large values, or with `until_done` arguments or partial answers, of
        request `holder`: see `StateBackend.put_blob`); empties the list."""
        try:
            for blob in blobs:
                await self.backend.put_blob(
                    blob.ref.digest, blob.data, holder=holder, until_done=until_done
                )
        finally:
            blobs.clear()

    async def load(self, outcome: Outcome, key: str, readable: Callable[[], str]) -> None:
        """Fetch the value of `outcome` from its blob, if it has one, in place (every waiter
        here shares the outcome: the value is fetched once). A blob whose bytes do not match
        its digest makes the outcome an error of this request alone (kind "invalid"). A blob
        that is gone (the backend lost it) makes it an error of kind "lost", and the cached
        outcome is forgotten, so that submitting the request again computes it again (see
        `settle`)."""
        ref = outcome.blob
        if ref is None:
            return
        try:
            loaded = self.codec.load_value(outcome, await self.backend.get_blob(ref.digest), key)
        except BlobLost as exc:
            self.log.warning("large value lost; forgetting its cached outcome", key=key)
            await self.backend.forget([key])
            loaded = Outcome(error=RequestError(readable(), str(exc), kind="lost"))
        except SerializationError as exc:
            self.log.error("large value refused", key=key, error=str(exc))
            loaded = Outcome(error=RequestError(readable(), str(exc), kind="invalid"))
        outcome.value, outcome.error, outcome.blob = loaded.value, loaded.error, None

    async def load_values(self, requests: Sequence[Request], batch: Batch) -> None:
        """Fetch the large values of a finished batch (see `load`): only a caller that takes
        the values does; knowing that a key is done costs no transfer."""
        for request, outcome in zip(requests, batch.outcomes, strict=True):
            if outcome is not None and outcome.blob is not None:
                await self.load(outcome, request.key, request.readable)

    async def answers(
        self,
        request: Request,
        submit: Callable[[Feed], Awaitable[None]],
        wait: Callable[[Feed], Awaitable[None]],
    ) -> AsyncGenerator[Outcome, None]:
        """The answers of a streamed request in order, their large values fetched (see
        `load`); `submit(feed)` submits it with its answers going to `feed`, `wait(feed)` waits
        for the next one. A partial answer whose bytes the backend lost is skipped (a later
        one replaces it, as for a reader that joins late); when the final answer is lost (or
        the end repeats a partial one that was), the request is submitted again, up to
        `_LOST_TRIES` times, and read on past the answers already given (see `settle`)."""
        feed = Feed(self.loop)
        await submit(feed)
        tries = given = 0  # `given`: the number of the last answer yielded
        skipped: Outcome | None = None  # the last answer taken, if it was lost
        while True:
            if not feed.ready():
                await wait(feed)
            outcome = feed.take()
            if outcome is None and skipped is not None:  # the end repeats a lost answer
                outcome = Outcome(error=skipped.error, final=True, answer=skipped.answer)
            elif outcome is not None:
                await self.load(outcome, request.key, request.readable)
            if outcome is None:
                return
            skipped = None
            if _is_lost(outcome) and tries < _LOST_TRIES:
                if not outcome.final:
                    skipped = outcome
                    continue
                tries += 1
                self.log.warning("streaming again a request whose answer was lost")
                feed = Feed(self.loop)
                feed.last = given  # what was given is not given again
                await submit(feed)
                continue
            yield outcome
            given = outcome.answer
            if outcome.final:
                return

    async def settle(
        self,
        requests: Sequence[Request],
        batch: Batch,
        again: Callable[[Sequence[Request]], Awaitable[Batch]],
    ) -> None:
        """Fetch the large values of a finished batch (see `load`), and submit again, through
        `again` (which submits and waits), the requests whose outcome says the backend lost
        bytes they need (kind "lost": a large argument's blob, or a cached value's). Whoever
        submits holds the arguments and puts their blobs again; a forgotten value is computed
        again. After `_LOST_TRIES` submissions a request keeps its "lost" error: bytes lost
        that often point to a backend that does not keep what it is given."""
        for _ in range(_LOST_TRIES):
            await self.load_values(requests, batch)
            lost = [index for index, outcome in enumerate(batch.outcomes) if _is_lost(outcome)]
            if not lost:
                return
            self.log.warning(
                "submitting again requests whose stored bytes were lost", count=len(lost)
            )
            fresh = await again([requests[index] for index in lost])
            for index, outcome in zip(lost, fresh.outcomes, strict=True):
                batch.outcomes[index] = outcome
        await self.load_values(requests, batch)

    async def publish(self, key: str, readable: Callable[[], str], outcome: Outcome) -> None:
        """Publish a partial answer of a key this node runs: to its waiters elsewhere through
        the backend, to the streams here at once."""
        blobs: list[Blob] = []
        data = self.codec.encode_outcome(outcome, key, readable, blobs)
        if blobs:
            await self.store_blobs(key, blobs, until_done=True)
        await self.backend.publish(self.id, key, data)
        self.waiters.partial(key, outcome)

    async def finish(
        self, key: str, readable: Callable[[], str], outcome: Outcome, *, cache: bool
    ) -> None:
        """Store an outcome this node computed, notify waiters, and wake local ones."""
        blobs: list[Blob] = []
        completion = self.completion(key, readable, outcome, cache, blobs=blobs)
        if blobs:
            completion = await self.stored(completion, readable, blobs)
        await self.backend.complete(
            self.id, key, completion.outcome, cache=completion.cache, error=completion.error
        )
        self.waiters.resolve(key, outcome)

    async def request(
        self,
        requests: Sequence[Request],
        *,
        job: str,
        into: str,
        on_top: bool,
        waiter: tuple[str, Callable[[], str]] | None = None,
        claim: int = 0,
        feed: Feed | None = None,
    ) -> Batch:
        """Submit requests and return the batch that their outcomes will fill.

        A request that cannot be encoded fails at once (its slot gets the error); the others
        are submitted. `waiter` is (key, readable form) of the request that waits, for cycles;
        a cycle fails the waiter: this raises `RequestError` naming the cycle. With `claim`,
        the same backend step claims up to that many of this node's requests (see `adopt`).
        With `feed` (a stream: one request), the answers go there as well, partial ones first.
        """
        batch = Batch(len(requests), self.loop)
        batch.feed = feed
        fresh: dict[str, Submission] = {}
        waiter_key = None if waiter is None else waiter[0]
        blobs: list[Blob] = []
        debug = debug_enabled()
        for index, request in enumerate(requests):
            try:
                key = request.key
                payload = RequestPayload(
                    request.function.ref,
                    request.function.short_name,
                    request.args,
                    dict(request.kwargs),
                    job,
                )
                data = self.codec.encode_request(payload, key, blobs)
                spilled: tuple[Blob, ...] = ()
                if blobs:  # large arguments: stored before the record that refers to them
                    spilled = tuple(blobs)
                    await self.store_blobs(key, blobs, until_done=True)
            except (SerializationError, BackendError) as exc:
                readable = request.readable()
                kind = "backend" if isinstance(exc, BackendError) else "invalid"
                batch.set(index, Outcome(error=RequestError(readable, str(exc), kind=kind)))
                self.log.warning("request rejected", request=readable, error=str(exc))
                continue
            root_of = job if waiter_key is None else None
            target = into if request.pool is None else request.pool  # routed: bottom of its queue
            if request.pool is not None:
                self.pools.check(target, self.loop)
            top = on_top and target == into
            submission = Submission(
                NewRequest(key, data, request.function.short_name),
                target,
                top,
                waiter_key,
                root_of,
                request,
            )
            if not payload.kwargs and all(type(arg) in SCALARS for arg in payload.args):
                submission.local = (payload, request.function)
            elif spilled:
                submission.blobs = spilled
            self.waiters.watch(submission, batch, index)
            fresh.setdefault(key, submission)
            if debug:
                self.log.debug(
                    "request submitted", request=request.readable(), key=key, job=job, to=target
                )
        if into != self.id:  # a pool's queue, not this node's own stack
            self.pools.check(into, self.loop)
        same = all(submission.into == into for submission in fresh.values())
        cycle = await self._submit_and_route(
            list(fresh.values()), same_target=same, claim=claim, fresh=True
        )
        if cycle is not None and waiter is not None:
            names = await self.readables(cycle)
            raise RequestError(
                waiter[1](),
                "cycle: " + " -> ".join(names) + " (the request needs itself)",
                kind="cycle",
            )
        return batch

    def adopt(self, claimed: list[Claimed]) -> None:
        """Take the requests claimed along with a submission (only a worker claims)."""
        if claimed:
            raise AssertionError(f"{self.kind.value} {self.id} claimed requests")

    async def _submit_and_route(
        self,
        submissions: list[Submission],
        *,
        same_target: bool = False,
        claim: int = 0,
        fresh: bool = False,
    ) -> tuple[str, ...] | None:
        """Submit to the backend, one call per target (work list, end, waiter); the first call
        also claims up to `claim` requests (see `adopt`). Delivers cached outcomes and returns
        the first wait-for cycle found, if any. `fresh` submissions (not submitted again)
        count in the node's requests shared while in flight."""
        if not submissions:
            return None
        groups = [submissions] if same_target else _by_target(submissions)
        groups.sort(key=lambda group: group[0].into != self.id)  # own stack first: it claims
        cycle: tuple[str, ...] | None = None
        for group in groups:
            found = await self._submit_group(group, claim, fresh)
            claim = 0
            cycle = cycle or found
        return cycle

    async def _submit_group(
        self, group: list[Submission], claim: int, fresh: bool
    ) -> tuple[str, ...] | None:
        """Submit submissions that share a target; deliver cached outcomes; return a cycle."""
        head = group[0]
        await self.calls_in_flight.opened()
        with self.calls_in_flight:
            found, claimed = await self.backend.submit_and_claim(
                self.id,
                [s.request for s in group],
                into=head.into,
                on_top=head.on_top,
                waiter_key=head.waiter_key,
                dispatch=not head.on_top,  # new work for a pool: straight to idle volunteers
                claim=claim,
                job=head.job,
            )
            self.adopt(claimed)
        cycle: tuple[str, ...] | None = None
        for submitted in found:
            if submitted.outcome is not None:
                self.stats.cache_hits += 1
                outcome = self.decode_outcome(submitted.outcome, submitted.key)
                self.waiters.resolve(submitted.key, outcome)
            elif submitted.partial is not None:  # joining a stream late: its latest answer
                self.partial(submitted.key, submitted.partial)
            if submitted.shared and fresh:
                self.stats.shared += 1
            elif not fresh and _found_unknown(submitted):
                self.stats.lost += 1
            if submitted.cycle is not None and cycle is None:
                cycle = submitted.cycle
        return cycle

    def stream_answer(self, readable: Callable[[], str], request: Request, outcome: Outcome) -> Any:
        """The value of one answer of a stream, or the `RequestError` that a batch of this one
        request would raise (see `raise_failures`)."""
        if outcome.error is None:
            return outcome.value
        batch = Batch(1, self.loop)
        batch.set(0, outcome)
        return self.raise_failures(readable, [request], batch)[0]

    @staticmethod
    def raise_failures(
        readable: Callable[[], str], requests: Sequence[Request], batch: Batch
    ) -> list[Any]:
        """The values of a finished batch, or a `RequestError` with every failure as a cause."""
        outcomes = batch.results()
        causes = {
            request.readable(): outcome.error.pruned(MAX_CHAIN_LEVELS - 1)
            for request, outcome in zip(requests, outcomes, strict=True)
            if outcome.error is not None
        }
        if causes:
            count = len(causes)
            noun = "sub-request" if count == 1 else "sub-requests"
            root = next(iter(causes.values())).root_causes()[0]
            raise RequestError(
                readable(),
                f"{count} {noun} failed; at the bottom: {root.request}: {root.message}",
                causes=causes,
                kind=root.kind,
                exc_type=root.exc_type,
            )
        return [outcome.value for outcome in outcomes]


def _by_target(submissions: list[Submission]) -> list[list[Submission]]:
    """Submissions grouped by where they go (work list, end, waiter or job), in first-seen
    order."""
    groups: dict[tuple[str, bool, str | None, str | None], list[Submission]] = {}
    for submission in submissions:
        target = (submission.into, submission.on_top, submission.waiter_key, submission.job)
        groups.setdefault(target, []).append(submission)
    return list(groups.values())


def _is_lost(outcome: Outcome | None) -> bool:
    """Whether `outcome` says the backend lost bytes its request needs (see `Node.settle`)."""
    return outcome is not None and outcome.error is not None and outcome.error.kind == "lost"
