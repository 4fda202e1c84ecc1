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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from girder.backends.base import Claimed, Completion, NewRequest, NodeKind, StateBackend
from girder.config import Settings
from girder.errors import BackendFull, Cancelled, RequestError, SerializationError
from girder.functions import Request
from girder.keys import SCALARS
from girder.log import configure, node_logger
from girder.scheduler.lease import LeaseKeeper, lease_keeper
from girder.scheduler.waiters import Batch, Feed, Submission, Waiters
from girder.security import require_secret
from girder.serialization import Codec, Outcome, RequestPayload


def new_node_id(kind: NodeKind) -> str:
    """A grid-unique id like `worker-host-1234-5f3a`."""
    return f"{kind.value}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


MAX_CHAIN_LEVELS = 32
"""Levels of an error chain a request keeps (see `RequestError.pruned`)."""

_LONGEST_RECHECK = 60.0
"""The most seconds between two submissions of a key a node still waits for."""

_SCHEDULER_DIR = os.path.dirname(os.path.abspath(__file__))


def error_lines(exc: BaseException) -> list[str]:
    """The traceback of `exc` as lines, without the scheduler's own frames at its start."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_SCHEDULER_DIR):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return "".join(lines).rstrip("\n").split("\n")


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
    cache_hits: int = 0
    handed_out: int = 0
    stolen: int = 0


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
        self.codec = Codec(secret, settings.max_payload_bytes)
        self.waiters = Waiters()
        self.stats = NodeStats()
        configure(settings.log_level)
        self.log = node_logger(self.id, kind=self.kind.value)
        require_secret(settings, backend, self.log)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease_keeper: LeaseKeeper | None = None
        self._clock = 0
        """The grid's clock at this node's last heartbeat (see `Beat`)."""

    # -- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the grid, recover dead nodes' work, and start this node's loops."""
        self._loop = asyncio.get_running_loop()
        await self.backend.join(self.id, self.kind, self.distributor, self.settings.heartbeat_ttl)
        await self.recover()
        self._lease_keeper = lease_keeper(self.settings, shared=self.backend.shared)
        if self._lease_keeper is not None:
            self._lease_keeper.add(self.id)
        self._spawn(self._heartbeat_loop, "heartbeat")
        self._spawn(self._listen_loop, "listen")
        self._start_loops()
        self.log.info("node started", distributor=self.distributor)

    def _start_loops(self) -> None:
        """Start the loops particular to this kind of node."""

    async def stop(self) -> None:
        """Stop the loops and leave the grid, handing back whatever is still held."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
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
                await self._beat()
                if loop.time() >= next_reap:
                    next_reap = loop.time() + self.settings.reap_interval
                    await self.recover()
                    await self._submit_again_what_waits_long()
            except BackendFull as exc:
                self.refused(exc)
                raise

    async def _beat(self) -> None:
        """Renew the lease; rejoin and reconcile when the backend forgot this node or lost
        writes."""
        beat = await self.backend.heartbeat(self.id, self.settings.heartbeat_ttl)
        went_back = beat.clock <= self._clock
        self._clock = beat.clock
        if beat.registered and not went_back:
            return
        self.log.warning(
            "backend lost state; joining again, reconciling and resubmitting",
            forgot_this_node=not beat.registered,
            clock_went_back=went_back,
        )
        await self.backend.join(self.id, self.kind, self.distributor, self.settings.heartbeat_ttl)
        given_back = await self.backend.reconcile(self.id, self.running_keys())
        if given_back:
            self.log.warning("gave back keys the backend thought ran here", count=given_back)
        await self.resubmit()

    def cancel_notice(self, key: str, job: str) -> None:
        """`key` was cancelled with `job`: whoever here waits for it gets `Cancelled` (a worker
        that runs it stops the run instead)."""
        source = self.waiters.source(key)
        readable = source.readable() if source is not None else f"request {key}"
        self.waiters.resolve(key, Outcome(error=Cancelled(readable, job)))

    def running_keys(self) -> list[str]:
        """The keys this node runs (a worker overrides it), for `reconcile`."""
        return []

    def refused(self, error: BackendFull) -> None:
        """The backend refuses this node's writes (a client overrides it to fail its calls)."""
        self.log.error("backend refuses writes", error=str(error))

    async def _submit_again_what_waits_long(self) -> None:
        """Submit again the keys awaited for long (see the module's docstring); a submission
        changes nothing for a key that is queued or running, and requeues one that was lost."""
        first = 2 * self.settings.heartbeat_ttl + self.settings.reap_interval
        due = self.waiters.due(asyncio.get_running_loop().time(), first, _LONGEST_RECHECK)
        if due:
            self.log.info("submitting again keys awaited for long", count=len(due))
            await self._submit_and_route(due)

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
        await self._submit_and_route(self.waiters.submissions())

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

    async def readables(self, keys: Sequence[str]) -> list[str]:
        """Readable forms of stored requests (for error messages; never raises)."""
        payloads = await self.backend.payloads(keys)
        names = []
        for key, data in zip(keys, payloads, strict=True):
            try:
                names.append(self.codec.decode_request(data, key).readable() if data else key)
            except SerializationError:
                names.append(f"request {key}")
        return names

    def completion(
        self, key: str, readable: Callable[[], str], outcome: Outcome, cache: bool
    ) -> Completion:
        """The completion to record for `outcome`; an outcome that cannot be encoded becomes
        a failure. `readable` names the request; it is only called when something fails."""
        try:
            data = self.codec.encode_outcome(outcome, key, readable)
        except SerializationError as exc:
            outcome = Outcome(error=RequestError(readable(), str(exc), kind="invalid"))
            data = self.codec.encode_outcome(outcome, key, readable)
        error = "" if outcome.error is None else error_chain(outcome.error)
        return Completion(key, data, cache and outcome.error is None and outcome.final, error)

    async def publish(self, key: str, readable: Callable[[], str], outcome: Outcome) -> None:
        """Publish a partial answer of a key this node runs: to its waiters elsewhere through
        the backend, to the streams here at once."""
        data = self.codec.encode_outcome(outcome, key, readable)
        await self.backend.publish(self.id, key, data)
        self.waiters.partial(key, outcome)

    async def finish(
        self, key: str, readable: Callable[[], str], outcome: Outcome, *, cache: bool
    ) -> None:
        """Store an outcome this node computed, notify waiters, and wake local ones."""
        completion = self.completion(key, readable, outcome, cache)
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
        assert self._loop is not None, "node not started"
        batch = Batch(len(requests), self._loop)
        batch.feed = feed
        fresh: dict[str, Submission] = {}
        waiter_key = None if waiter is None else waiter[0]
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
                data = self.codec.encode_request(payload, key)
            except SerializationError as exc:
                readable = request.readable()
                batch.set(index, Outcome(error=RequestError(readable, str(exc), kind="invalid")))
                self.log.warning("request rejected", request=readable, error=str(exc))
                continue
            root_of = job if waiter_key is None else None
            target = into if request.pool is None else request.pool  # routed: bottom of its queue
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
            self.waiters.watch(submission, batch, index)
            fresh.setdefault(key, submission)
        same = all(submission.into == into for submission in fresh.values())
        cycle = await self._submit_and_route(list(fresh.values()), same_target=same, claim=claim)
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
        self, submissions: list[Submission], *, same_target: bool = False, claim: int = 0
    ) -> tuple[str, ...] | None:
        """Submit to the backend, one call per target (work list, end, waiter); the first call
        also claims up to `claim` requests (see `adopt`). Delivers cached outcomes and returns
        the first wait-for cycle found, if any."""
        if not submissions:
            return None
        groups = [submissions] if same_target else _by_target(submissions)
        groups.sort(key=lambda group: group[0].into != self.id)  # own stack first: it claims
        cycle: tuple[str, ...] | None = None
        for group in groups:
            found = await self._submit_group(group, claim)
            claim = 0
            cycle = cycle or found
        return cycle

    async def _submit_group(self, group: list[Submission], claim: int) -> tuple[str, ...] | None:
        """Submit submissions that share a target; deliver cached outcomes; return a cycle."""
        head = group[0]
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
            if submitted.cycle is not None and cycle is None:
                cycle = submitted.cycle
        return cycle

    def stream_answer(self, readable: Callable[[], str], request: Request, outcome: Outcome) -> Any:
        """The value of one answer of a stream, or the `RequestError` that a batch of this one
        request would raise (see `raise_failures`)."""
        if outcome.error is None:
            return outcome.value
        assert self._loop is not None
        batch = Batch(1, self._loop)
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
